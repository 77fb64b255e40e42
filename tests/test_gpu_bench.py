"""scripts/gpu.sh and seqc.gpu_bench, tested by their dry run (CPU, Triton interpreter, tiny
shape): the GPU run itself needs CUDA."""
import re
import subprocess
from pathlib import Path

import pytest

from seqc import gpu_bench, gpu_modes

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.triton
def test_gpu_script_dry_run_runs_its_three_steps_and_prints_the_tables():
    done = subprocess.run(["bash", "scripts/gpu.sh", "--dry-run"], cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "== 1/3 Triton tests (dry run: interpreter, simple_gla only)" in out
    assert re.search(r"\b[1-9]\d* passed", out) and " failed" not in out
    assert "== 2/3 seqc Triton vs fla (dry run)" in out
    against_fla = out.split("== 3/3")[0]
    rows = [line for line in against_fla.splitlines() if line.startswith("| simple_gla |")
            or line.startswith("| gated_deltanet |")]
    assert len(rows) == 2 and not any("MISMATCH" in r for r in rows)
    assert "fla chunk_gated_delta_rule (interpreted)" in rows[1]
    assert "== 3/3 every Triton mode (dry run: simple_gla, chunk and chunk_parallel)" in out
    sweep = [line.split("|") for line in out.splitlines()
             if line.startswith("| simple_gla | B=1,T=64,H=2,K=16,V=16 |")]
    assert [cells[3].strip() for cells in sweep] == ["chunk", "chunk_parallel"]
    # the GPU model's forward beside each measured one (a child process under the interpreter)
    assert "model: h100 at bf16, forward" in out and "the GPU model failed" not in out
    assert all(float(cells[7]) > 0 and float(cells[8]) > 0 for cells in sweep)


@pytest.mark.triton
def test_a_mismatch_fails_loudly(monkeypatch, capsys):
    label, make = gpu_bench.FLA_TRITON["simple_gla"]

    def off_by_a_bit(tensors, sizes):
        fn = make(tensors, sizes)
        return lambda: gpu_bench._first(fn()) * 1.01
    monkeypatch.setitem(gpu_bench.FLA_TRITON, "simple_gla", (label, off_by_a_bit))
    assert gpu_bench.main(["--dry-run", "--specs", "simple_gla"]) == 1
    captured = capsys.readouterr()
    assert "| simple_gla |" in captured.out and "MISMATCH" in captured.out
    assert "MISMATCH: seqc's Triton output or gradient differs from fla's for simple_gla" \
        in captured.err


def test_a_gradient_mismatch_fails_loudly(monkeypatch, capsys):
    """The same forward with a gradient twice as large: only the gradient check sees it."""
    label, make = gpu_bench.FLA_TRITON["simple_gla"]

    def twice_the_gradient(tensors, sizes):
        fn = make(tensors, sizes)

        def run():
            out = gpu_bench._first(fn())
            return out.detach() + 2 * (out - out.detach())
        return run
    monkeypatch.setitem(gpu_bench.FLA_TRITON, "simple_gla", (label, twice_the_gradient))
    assert gpu_bench.main(["--dry-run", "--specs", "simple_gla"]) == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if "| simple_gla |" in line)
    forward, gradient = (float(cell.split()[0]) for cell in row.split("|")[3:5])
    assert forward < 1e-5 and gradient > 0.3


def test_without_cuda_it_asks_for_the_dry_run(capsys):
    assert gpu_bench.main(["--specs", "simple_gla"]) == 2
    assert "no CUDA device; use --dry-run" in capsys.readouterr().err
    assert gpu_bench.main(["--dry-run", "--specs", "mlstm"]) == 2
    assert "no fla Triton op known for mlstm" in capsys.readouterr().err


def test_the_mode_sweep_names_a_rule_that_picks_a_slower_mode():
    def row(mode, chosen, fwd, fwdbwd):
        return dict(spec="gla", sizes=dict(B=4, H=16), mode=mode, chosen=chosen, fwd=fwd,
                    fwdbwd=fwdbwd, error=0.0, mismatch=False)
    rows = [row("chunk", True, 1e-3, 4e-3), row("chunk_parallel", False, 2e-3, 3e-3)]
    found = gpu_modes.verdicts(rows)
    assert found == ["gla at B=4,H=16: mode=None runs chunk (4.000 ms fwdbwd); chunk_parallel "
                     "took 3.000 ms (1.33x faster)"]
    assert gpu_modes.verdicts(rows[:1]) == []
