"""The CLI items of issue 12: --version, -b's choices in its help, bench progress on a pipe, and
--plot without matplotlib failing before the benchmark runs."""
import importlib.util

import pytest

import seqc
import seqc.bench as bench
from seqc.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"seqc {seqc.__version__}"


def test_compile_help_lists_the_backends(capsys):
    with pytest.raises(SystemExit):
        main(["compile", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "one of reference, torch, triton (default: reference)" in help_text


def test_progress_on_a_pipe_is_one_flushed_line_a_step(capsys):
    """capsys' stderr is no terminal: each step is a line of its own (a `\\r` bar was one line)."""
    progress = bench.Progress(3, enabled=True)
    for label in ("warm-up torch", "torch", "torch"):
        progress.step(label)
        assert capsys.readouterr().err.endswith(f"{label}\n")
    progress.close()
    assert capsys.readouterr().err == ""


def test_progress_on_a_terminal_redraws_in_place(capsys):
    progress = bench.Progress(2, enabled=True, terminal=True)
    progress.step("torch")
    progress.step("torch")
    progress.close()
    err = capsys.readouterr().err
    assert err.count("\r") == 2 and err.count("\n") == 1


def test_plot_without_matplotlib_fails_before_the_benchmark(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))

    def must_not_run(*args, **kwargs):
        raise AssertionError("the benchmark ran before --plot was found impossible")

    monkeypatch.setattr(bench, "build_runners", must_not_run)
    code = main(["bench", "simple_gla", "--shape", "B=1,T=8,H=1,K=4,V=4",
                 "--plot", str(tmp_path / "p.png")])
    assert code == 1
    assert "--plot needs matplotlib" in capsys.readouterr().err
