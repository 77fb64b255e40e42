"""`seqc bench` as a user calls it: a table of medians and ratios (timings themselves are never
asserted: speed lives in docs/benchmarks.md, not in unit tests)."""
import re

import pytest

import seqc.bench
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


def test_bench_without_shape_sizes_the_spec_s_own_dims(monkeypatch, capsys):
    """mamba2's dims are N, P: the default shape must not name K, V."""
    monkeypatch.setattr(seqc.bench, "DEFAULT_SIZES", {"B": 1, "T": 8, "H": 1})
    monkeypatch.setattr(seqc.bench, "DEFAULT_DIM", 4)
    monkeypatch.setattr(seqc.bench, "measure_peak", lambda torch: 1.0)
    assert main(["bench", "mamba2", "--backends", "torch", "--repeats", "1"]) == 0
    assert "seqc bench mamba2  --shape B=1,T=8,H=1,N=4,P=4  (" in capsys.readouterr().out
    assert parse_shape(None, ("N", "P")) == {"B": 1, "T": 8, "H": 1, "N": 4, "P": 4}


def test_bench_prints_the_ratio_footnote_once(monkeypatch, capsys):
    monkeypatch.setattr(seqc.bench, "measure_peak", lambda torch: 1.0)
    for spec in ("simple_gla", "gla"):       # with an fla baseline, and without
        assert main(["bench", spec, "--backends", "torch", *TINY]) == 0
        assert capsys.readouterr().out.count("`x vs R` =") == 1


def _negated_kernel(monkeypatch, wrong: str):
    from seqc.api import Program
    from seqc.kernel import KernelOutput
    real = Program.kernel

    def kernel(self, backend="reference", **options):
        fn = real(self, backend, **options)
        if backend != wrong:
            return fn
        def negated(**call):
            out = fn(**call)
            return KernelOutput({n: -3 * out[n] for n in out.keys()}, None)
        return negated
    monkeypatch.setattr(Program, "kernel", kernel)


@pytest.mark.parametrize("backends", ["reference,torch", "torch"])
def test_bench_refuses_to_time_a_runner_that_disagrees_with_the_reference(backends, monkeypatch,
                                                                          capsys):
    monkeypatch.setattr(seqc.bench, "measure_peak", lambda torch: 1.0)
    _negated_kernel(monkeypatch, "torch")
    assert main(["bench", "gla", "--backends", backends, *TINY]) == 1
    out, err = capsys.readouterr()
    assert "| torch |" not in out
    assert "torch: output `o` is off by 4 of the reference's magnitude (tolerance 0.0001)" in err


def test_bench_refuses_a_wrong_baseline(monkeypatch, capsys):
    import seqc.baselines
    label, make = seqc.baselines.BASELINES["simple_gla"]
    monkeypatch.setitem(seqc.baselines.BASELINES, "simple_gla",
                        (label, lambda t, sizes: (lambda fn=make(t, sizes): 1.01 * fn())))
    monkeypatch.setattr(seqc.bench, "measure_peak", lambda torch: 1.0)
    assert main(["bench", "simple_gla", "--backends", "torch", *TINY]) == 1
    assert f"{label}: output `o` is off by 0.01" in capsys.readouterr().err


def test_bench_checks_every_fla_baseline_it_times(monkeypatch, capsys):
    """deltanet's baseline once scaled q by K^-1/2 twice (fla's delta_rule_chunkwise scales it
    itself): the check before timing is what catches such an adapter."""
    monkeypatch.setattr(seqc.bench, "measure_peak", lambda torch: 1.0)
    assert main(["bench", "deltanet", "--backends", "torch", "--shape", "B=1,T=32,H=1,K=8,V=8",
                 "--repeats", "1"]) == 0, capsys.readouterr().err
    assert "| fla delta_rule_chunkwise |" in capsys.readouterr().out
