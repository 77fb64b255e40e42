"""`seqc bench` as a user calls it: a table of medians and ratios (timings themselves are never
asserted: speed lives in docs/benchmarks.md, not in unit tests)."""
import re

import pytest

from seqc.bench import parse_shape
from seqc.cli import main

TINY = ["--shape", "B=1,T=40,H=1,K=8,V=8", "--repeats", "2"]


def test_bench_prints_every_runner_with_ratios_against_reference_and_fla(capsys):
    assert main(["bench", "simple_gla", "--backends", "reference,torch", *TINY]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| runner")}
    assert set(rows) == {"reference", "torch", "fla naive_chunk_simple_gla"}
    assert "x vs reference" in out and "x vs fla naive_chunk_simple_gla" in out
    assert re.search(r"measured fp32 matmul peak .*: [0-9.]+ GFLOP/s", out)
    for line in rows.values():
        cells = [c.strip() for c in line.split("|")[2:-1]]
        assert float(cells[0]) > 0 and int(cells[1]) >= 1


def test_bench_without_a_known_baseline_compares_with_the_reference_only(capsys):
    assert main(["bench", "hgrn", "--backends", "reference,torch", "--shape",
                 "B=1,T=20,H=1,D=4", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| torch |" in out and "fla" not in out.split("x vs reference")[1].splitlines()[0]


def test_bench_rejects_unknown_dims_and_bad_sizes(capsys):
    assert main(["bench", "gla", "--shape", "B=1,X=3"]) == 1
    assert "unknown dim X" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not NAME=POSITIVE_INTEGER"):
        parse_shape("K=0", ("K",))


def test_shape_defaults_every_spec_dim_to_64():
    assert parse_shape("T=8", ("K", "V")) == {"B": 2, "T": 8, "H": 4, "K": 64, "V": 64}


def test_bench_plot_writes_a_png_with_one_bar_a_runner(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    assert main(["bench", "simple_gla", "--backends", "torch", *TINY, "--plot", str(path)]) == 0
    assert f"plot written to {path}" in capsys.readouterr().out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
