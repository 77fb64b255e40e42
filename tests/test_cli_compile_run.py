"""`seqc compile`, `seqc run` and `seqc list` as a user calls them."""
import ast
import subprocess
import sys
import types

import pytest

from seqc.cli import main
from seqc.resources import stdlib_names


def seqc(*args):
    return subprocess.run([sys.executable, "-m", "seqc.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_compile_to_stdout_is_a_standalone_module():
    result = seqc("compile", "stdlib/gla.seq")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# Emitted by seqc")
    ast.parse(result.stdout)


def test_compile_to_a_file(tmp_path):
    out = tmp_path / "gla_ref.py"
    assert main(["compile", "gla", "-b", "reference", "-o", str(out)]) == 0
    namespace = {}
    exec(compile(out.read_text(), str(out), "exec"), namespace)
    assert callable(namespace["run"])


def test_compile_reports_spec_errors_and_unknown_backends(tmp_path, capsys):
    bad = tmp_path / "bad.seq"
    bad.write_text("model m\ndims K\ninput x[K]\noutput o = y\n")
    assert main(["compile", str(bad)]) == 1
    assert "bad.seq:4:12: error: unknown name `y`" in capsys.readouterr().err
    assert main(["compile", "gla", "-b", "cuda"]) == 1
    assert "unknown backend `cuda`" in capsys.readouterr().err


def _rows(out: str) -> dict[tuple[str, str], list[str]]:
    """(backend, tensor) -> [max abs err, rel err, verdict] from `seqc run`'s table."""
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) >= 6 and cells[1] in ("out", "state"):
            rows[(cells[0], f"{cells[1]} {cells[2]}")] = cells[3:6]
    return rows


def test_run_prints_an_error_table_and_exits_0_when_all_agree():
    """By default every backend runs (triton under its interpreter: nothing imported it yet)."""
    result = seqc("run", "stdlib/mamba2.seq", "--dims", "N=4,P=5", "--steps", "9")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _rows(result.stdout)
    assert set(rows) == {(b, t) for b in ("reference", "torch", "triton")
                         for t in ("out y", "state h")}
    for backend, tensor in rows:
        if backend != "reference":
            assert 0 < float(rows[(backend, tensor)][1]) < 1e-5
        assert rows[(backend, tensor)][2] == "ok"


def test_the_default_backends_are_those_that_can_run(monkeypatch):
    import seqc.run as run_module
    monkeypatch.setattr(run_module, "triton_can_run", lambda: False)
    assert run_module.available_backends() == ["reference", "torch"]
    monkeypatch.undo()
    imported = sys.modules.get("triton", types.ModuleType("triton"))
    monkeypatch.setitem(sys.modules, "triton", imported)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_module.available_backends() == ["reference", "torch"]   # imported, not interpreted
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert run_module.available_backends() == ["reference", "torch", "triton"]


def _scaled(kernel, factor):
    """A kernel whose outputs and final states are `factor` times the real one's."""
    from seqc.kernel import KernelOutput

    def run(**call):
        out = kernel(**call)
        final = {n: factor * s for n, s in out.final_state.items()} if out.final_state else None
        return KernelOutput({n: factor * out[n] for n in out.keys()}, final)
    return run


@pytest.mark.parametrize("wrong", ["reference", "torch"])
def test_run_by_default_exits_1_and_shows_the_error_of_a_wrong_backend(wrong, monkeypatch, capsys):
    from seqc.api import Program
    real = Program.kernel
    monkeypatch.setattr(Program, "kernel", lambda self, backend="reference", **options:
                        _scaled(real(self, backend, **options), -3.0) if backend == wrong
                        else real(self, backend, **options))
    assert main(["run", "gla", "--steps", "5", "--dims", "K=4,V=4"]) == 1
    rows = _rows(capsys.readouterr().out)
    assert ("torch", "out o") in rows and ("triton", "out o") in rows     # the default: all three
    # -3x against x: off by 4x the reference's magnitude; x against a -3x reference: by 4/3 of it
    expected = {"reference": 0.0, "torch": 4.0, "triton": 0.0} if wrong == "torch" else \
        {"reference": 0.0, "torch": 4 / 3, "triton": 4 / 3}
    for (backend, tensor), (_, relative, verdict) in rows.items():
        assert float(relative) == pytest.approx(expected[backend], rel=1e-3, abs=1e-5), \
            (backend, tensor)
        assert verdict == ("ok" if expected[backend] == 0 else "MISMATCH")


def test_run_exits_1_on_a_backend_that_fails(capsys):
    assert main(["run", "gla", "--backends", "reference,nope", "--steps", "3"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_python_m_seqc_cli_reports_a_mistake_without_a_traceback():
    result = seqc("run", "gla", "--dims", "K=0")
    assert result.returncode == 1
    assert "seqc run: error: bad size `K=0`" in result.stderr and "Traceback" not in result.stderr


def test_run_rejects_bad_sizes(capsys):
    assert main(["run", "gla", "--dims", "K=0"]) == 1
    assert "bad size `K=0`" in capsys.readouterr().err


def test_run_flags_a_mismatch(monkeypatch, capsys):
    import seqc.run as run_module
    monkeypatch.setattr(run_module, "compare", lambda got, want: (1.0, 1.0))
    assert main(["run", "gla", "--steps", "2"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_list_names_every_stdlib_spec_with_a_summary(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == stdlib_names()
    assert all(len(line.split()) > 1 for line in lines)
    assert len(lines) >= 18
