"""`seqc check` (text and --json), `seqc ir` and `seqc list`; and `seqc check` stays light: it
imports neither torch nor triton."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from seqc.cli import main
from seqc.parse import parse
from seqc.resources import stdlib_dir, stdlib_names

REPO = Path(__file__).resolve().parents[1]
BAD = "model bad\ndims K\ninput q[K]\noutput o = q * qq + zz\n"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_text_ok(capsys):
    code, out, err = run(capsys, "check", "gla")
    assert code == 0
    assert out.startswith("gla.seq: ok: model `gla`")
    assert err == ""


def test_check_json_ok_and_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "bad.seq").write_text(BAD, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "check", "--json", "gla", "bad.seq", "missing.seq")
    assert code == 1
    assert err == ""
    objects = [json.loads(line) for line in out.splitlines()]
    assert len(objects) == 3
    for obj in objects:
        assert set(obj) >= {"model", "file", "ok", "states", "diagnostics"}
        assert isinstance(obj["states"], dict) and isinstance(obj["diagnostics"], list)
    gla, bad, missing = objects
    assert (gla["model"], gla["file"], gla["ok"], gla["diagnostics"]) == ("gla", "gla", True, [])
    assert bad["file"] == "bad.seq" and bad["ok"] is False
    assert [(d["line"], d["col"], d["message"]) for d in bad["diagnostics"]] == \
        [(4, 16, "unknown name `qq`"), (4, 21, "unknown name `zz`")]
    assert bad["diagnostics"][0]["help"] == "did you mean `q`?"
    assert all(d["severity"] == "error" for d in bad["diagnostics"])
    assert missing["ok"] is False
    assert [(d["line"], d["col"], d["message"]) for d in missing["diagnostics"]] == \
        [(1, 1, "no such file")]


@pytest.mark.parametrize("name", stdlib_names())
def test_check_json_every_stdlib_spec(capsys, name):
    code, out, _ = run(capsys, "check", "--json", name)
    assert code == 0
    obj = json.loads(out)
    assert obj["ok"] is True and obj["model"] == name and obj["diagnostics"] == []


def test_check_json_is_one_line_per_file(capsys):
    code, out, _ = run(capsys, "check", "--json", "gla", "mamba", "lstm")
    assert code == 0
    assert len(out.splitlines()) == 3


def test_ir_prints_seqc_that_parses_back(capsys):
    code, out, err = run(capsys, "ir", "gla")
    assert code == 0 and err == ""
    assert parse(out) == parse((stdlib_dir() / "gla.seq").read_text(encoding="utf-8"))


def test_ir_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "bad.seq").write_text(BAD, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "ir", "bad.seq")
    assert code == 1 and out == ""
    assert err.startswith("bad.seq:4:16: error: unknown name `qq`")


def test_list(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert names == stdlib_names()
    assert all(len(line.split(None, 1)) == 2 for line in out.splitlines())   # each has a summary


def test_no_arguments_prints_help(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and "check" in out


def test_check_does_not_import_torch_or_triton():
    script = ("import sys\nfrom seqc.cli import main\n"
              "code = main(['check', 'stdlib/gla.seq', 'lstm', 'mamba2'])\n"
              "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'triton'))\n"
              "assert not heavy, heavy\nsys.exit(code)\n")
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", script], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "torch" not in imported and "triton" not in imported


def test_check_json_does_not_import_torch_or_triton():
    script = ("import sys, io, contextlib\nfrom seqc.cli import main\n"
              "with contextlib.redirect_stdout(io.StringIO()):\n"
              "    main(['check', '--json', 'gla'])\n"
              "assert 'torch' not in sys.modules and 'triton' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_error_example_of_language_md_is_what_seqc_check_prints(tmp_path, capsys):
    """docs/language.md shows the error for its first example with `kk` for `k`."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "language.md").read_text()
    blocks = doc.split("```\n")[1::2]
    spec = next(b for b in blocks if b.startswith("# Gated Linear Attention"))
    shown = next(b for b in blocks if b.startswith("gla.seq:"))
    path = tmp_path / "gla.seq"
    path.write_text(spec.replace("+ k * v", "+ kk * v"))
    assert main(["check", str(path)]) == 1
    assert capsys.readouterr().err.replace(str(path), "gla.seq") == shown
