"""scripts/gpu.sh and seqc.gpu_bench, tested by their dry run (CPU, Triton interpreter, tiny
shape): the GPU run itself needs CUDA."""
import re
import subprocess
from pathlib import Path

import pytest

from seqc import baselines, gpu_bench

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.triton
def test_gpu_script_dry_run_runs_both_steps_and_prints_the_table():
    done = subprocess.run(["bash", "scripts/gpu.sh", "--dry-run"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "== 1/2 Triton tests (dry run: interpreter, simple_gla only)" in out
    assert re.search(r"\b[1-9]\d* passed", out) and " failed" not in out
    assert "== 2/2 seqc Triton vs fla (dry run)" in out
    rows = [line for line in out.splitlines() if line.startswith("| simple_gla |")
            or line.startswith("| gated_deltanet |")]
    assert len(rows) == 2 and not any("MISMATCH" in r for r in rows)
    assert "stands in for fla chunk_gated_delta_rule" in rows[1]


@pytest.mark.triton
def test_a_mismatch_fails_loudly(monkeypatch, capsys):
    label, make = baselines.BASELINES["simple_gla"]

    def off_by_a_bit(tensors, sizes):
        fn = make(tensors, sizes)
        return lambda: gpu_bench._first(fn()) * 1.01
    monkeypatch.setitem(baselines.BASELINES, "simple_gla", (label, off_by_a_bit))
    assert gpu_bench.main(["--dry-run", "--specs", "simple_gla"]) == 1
    captured = capsys.readouterr()
    assert "| simple_gla |" in captured.out and "MISMATCH" in captured.out
    assert "MISMATCH: seqc's Triton output or gradient differs from fla's for simple_gla" \
        in captured.err


def test_a_gradient_mismatch_fails_loudly(monkeypatch, capsys):
    """The same forward with a gradient twice as large: only the gradient check sees it."""
    label, make = baselines.BASELINES["simple_gla"]

    def twice_the_gradient(tensors, sizes):
        fn = make(tensors, sizes)

        def run():
            out = gpu_bench._first(fn())
            return out.detach() + 2 * (out - out.detach())
        return run
    monkeypatch.setitem(baselines.BASELINES, "simple_gla", (label, twice_the_gradient))
    assert gpu_bench.main(["--dry-run", "--specs", "simple_gla"]) == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if "| simple_gla |" in line)
    forward, gradient = (float(cell.split()[0]) for cell in row.split("|")[3:5])
    assert forward < 1e-5 and gradient > 0.3


def test_without_cuda_it_asks_for_the_dry_run(capsys):
    assert gpu_bench.main(["--specs", "simple_gla"]) == 2
    assert "no CUDA device; use --dry-run" in capsys.readouterr().err
    assert gpu_bench.main(["--dry-run", "--specs", "mlstm"]) == 2
    assert "no fla Triton op known for mlstm" in capsys.readouterr().err
