"""`seqc compile`, `seqc run` and `seqc list` as a user calls them."""
import ast
import subprocess
import sys

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


def test_run_prints_an_error_table_and_exits_0_when_all_agree():
    result = seqc("run", "stdlib/mamba2.seq", "--dims", "N=4,P=5", "--steps", "9")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reference    out y" in result.stdout and "ok" in result.stdout


def test_run_exits_1_on_a_backend_that_fails(capsys):
    assert main(["run", "gla", "--backends", "reference,nope", "--steps", "3"]) == 1
    assert "FAILED" in capsys.readouterr().out


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
