"""Every front-end error, through the CLI: `file:line:col`, the caret (column and width), the
message, the help, exit code 1, no traceback and no path of the installed package in the text."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import seqc
from seqc.cli import main
from seqc.errors import SpecError

PACKAGE_DIR = str(Path(seqc.__file__).resolve().parent)

GLA = """model gla
dims K, V
input q[K], k[K], v[V]
input g[K] in (-inf, 0)
state S[K, V] = 0
S = exp(g) * S + k * v
output o = (K ** -0.5) * q @ S
"""


def gla_with(line: int, text: str) -> str:
    """The GLA spec with line `line` (1-based) replaced by `text`."""
    lines = GLA.splitlines()
    lines[line - 1] = text
    return "\n".join(lines) + "\n"


def run_check(tmp_path, monkeypatch, capsys, source, name="spec.seq"):
    """`seqc check NAME` in tmp_path; returns (exit code, stderr) after the common assertions."""
    path = tmp_path / name
    if isinstance(source, bytes):
        path.write_bytes(source)
    elif source is not None:
        path.write_text(source, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code = main(["check", name])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert "Traceback" not in err
    assert PACKAGE_DIR not in err and "site-packages" not in err and "/seqc/" not in err
    return err


def blocks(err: str) -> list[list[str]]:
    """The rendered diagnostics, one list of lines each (the `N errors` footer dropped)."""
    result = []
    for line in err.rstrip("\n").splitlines()[:-1]:
        if not line.startswith(" "):
            result.append([])
        result[-1].append(line)
    return result


def expect(err, line, col, width, message, help=None, source_line=None, file="spec.seq",
           count=1):
    """The only (or first) diagnostic is at line:col with a caret `width` wide."""
    found = blocks(err)
    assert len(found) == count, err
    assert err.rstrip().endswith(f"{count} error{'s' if count > 1 else ''}")
    head, *rest = found[0]
    assert head == f"{file}:{line}:{col}: error: {message}"
    if source_line is not None:
        assert rest[0] == "    " + source_line
        assert rest[1] == "    " + " " * (col - 1) + "^" * width
        rest = rest[2:]
    elif rest and rest[0].startswith("    "):
        assert rest[1].strip() == "^" * width
        rest = rest[2:]
    assert rest == ([f"  = help: {help}"] if help else [])


@pytest.fixture
def check_source(tmp_path, monkeypatch, capsys):
    return lambda source, name="spec.seq": run_check(tmp_path, monkeypatch, capsys, source, name)


# ---- syntax ----------------------------------------------------------------------------------

def test_syntax_error_at_end_of_line(check_source):
    err = check_source(gla_with(3, "input q[K], k[K"))
    expect(err, 3, 16, 1, "syntax error: unexpected end of line", "expected `,` or `]`",
           "input q[K], k[K")


def test_syntax_error_unexpected_token(check_source):
    err = check_source(gla_with(7, "output o = q @@ S"))
    expect(err, 7, 15, 1, "syntax error: unexpected `@`",
           "expected `(`, `-`, a name or a number", "output o = q @@ S")


def test_syntax_error_unexpected_character(check_source):
    err = check_source(gla_with(6, "S = S; S"))
    expect(err, 6, 6, 1, "syntax error: unexpected character `;`",
           "expected `(`, `**`, `*`, `+`, `-`, `/`, `@`, `as` or the end of the line", "S = S; S")


def test_syntax_error_expects_only_what_can_follow(check_source):
    err = check_source(gla_with(7, "output o = q q"))    # LALR alone would also offer `)` and `,`
    expect(err, 7, 14, 1, "syntax error: unexpected `q`",
           "expected `(`, `**`, `*`, `+`, `-`, `/`, `@`, `as` or the end of the line", "output o = q q")


def test_syntax_error_in_a_range(check_source):
    err = check_source(gla_with(4, "input g[K] in 0"))
    expect(err, 4, 15, 1, "syntax error: unexpected `0`", "expected `(`", "input g[K] in 0")


def test_unprintable_character(check_source):
    err = check_source(gla_with(7, "output o = q\x01 @ S"))
    expect(err, 7, 13, 1, "syntax error: unexpected character U+0001",
           "expected `(`, `**`, `*`, `+`, `-`, `/`, `@`, `as` or the end of the line")


def test_output_without_value(check_source):
    err = check_source(gla_with(7, "output o"))
    expect(err, 7, 9, 1, "syntax error: unexpected end of line", "expected `=` or `[`",
           "output o")


def test_every_syntax_error_of_a_file(check_source):
    source = "model m\ndims K, \ninput q[K\nlet x = 1 +\noutput o = (q\nS = = 1\n"
    err = check_source(source)
    heads = [b[0] for b in blocks(err)]
    assert [h.split(": ")[0] for h in heads] == \
        ["spec.seq:2:8", "spec.seq:3:10", "spec.seq:4:12", "spec.seq:5:14", "spec.seq:6:5"]


# ---- names -----------------------------------------------------------------------------------

def test_unknown_name_suggests_closest(check_source):
    err = check_source(gla_with(6, "S = exp(g) * S + kk * v"))
    expect(err, 6, 18, 2, "unknown name `kk`", "did you mean `k`?", "S = exp(g) * S + kk * v")


def test_unknown_name_without_suggestion(check_source):
    err = check_source(gla_with(7, "output o = zebra"))
    expect(err, 7, 12, 5, "unknown name `zebra`", None, "output o = zebra")


def test_one_unknown_name_in_a_long_expression_is_one_error(check_source):
    body = "output o = q @ S + (zz * q + exp(zz) - zz @ S * K + sum(zz * k, K) * max(zz, q))"
    err = check_source(gla_with(7, body))
    expect(err, 7, 21, 2, "unknown name `zz`", None, body)


def test_a_bad_let_does_not_cascade(check_source):
    source = gla_with(7, "let y = zz * q\noutput o = (y + y) @ S")
    err = check_source(source)
    expect(err, 7, 9, 2, "unknown name `zz`")


def test_use_before_declaration(check_source):
    source = GLA.replace("input g[K] in (-inf, 0)\n", "") + "input g[K] in (-inf, 0)\n"
    err = check_source(source)
    expect(err, 5, 9, 1, "`g` is used before its declaration (line 7)",
           "move the declaration above its first use", "S = exp(g) * S + k * v")


def test_dim_used_before_declaration(check_source):
    err = check_source("model m\ninput q[K]\noutput o = q\ndims K\n")
    expect(err, 2, 9, 1, "dim `K` is used before its declaration (line 4)",
           "declare the dims first, after `model`", "input q[K]")


def test_let_assigned_twice(check_source):
    err = check_source(gla_with(6, "let a = k\nlet a = q\nS = S + a * v"))
    expect(err, 7, 1, 9, "`a` is assigned twice",
           "`let` names are immutable (first assigned at line 6); use a new name", "let a = q")


def test_assign_to_input(check_source):
    err = check_source(gla_with(6, "q = k"))
    expect(err, 6, 1, 5, "cannot assign to input `q`",
           "only states are updated; use `let` for a new local value", "q = k")


def test_assign_to_unknown_state(check_source):
    err = check_source(gla_with(6, "Z = exp(g) * S + k * v\nS = S + k * v"))
    expect(err, 6, 1, 22, "assignment to unknown state `Z`",
           "declare it: `state Z[...] = 0`, or use `let`", "Z = exp(g) * S + k * v")


def test_output_never_defined(check_source):
    err = check_source(gla_with(7, "let o = q @ S"))
    expect(err, 1, 7, 3, "the spec defines no output", "add a line such as `output o = q @ S`",
           "model gla")


def test_a_model_without_inputs(check_source):
    """Nothing would say how long the sequence is (a randomly edited maxplus spec found this)."""
    err = check_source("model maxplus\ndims D\nstate m[D] = -inf\noutput y = m\n")
    expect(err, 1, 7, 7, "model `maxplus` has no input: the batch and the sequence length come "
           "from the inputs", "declare what arrives at each step, e.g. `input x[D]`",
           "model maxplus")


def test_output_defined_twice(check_source):
    err = check_source(GLA + "output o = k @ S\n")
    expect(err, 8, 1, 16, "output `o` is defined twice", "first defined at line 7",
           "output o = k @ S")


def test_output_read_in_the_step(check_source):
    err = check_source(GLA + "output p = o * 2\n")
    expect(err, 8, 12, 1, "output `o` cannot be read inside the step",
           "compute it with `let` and use the `let` name", "output p = o * 2")


@pytest.mark.parametrize("line, text, col, name", [
    (2, "dims K, V, B", 12, "B"),
    (2, "dims K, V, T", 12, "T"),
])
def test_implicit_dims_are_reserved(check_source, line, text, col, name):
    err = check_source(gla_with(line, text))
    expect(err, line, col, 1, f"`{name}` is reserved (batch, time and heads are implicit dims)",
           "choose another name, e.g. `D` or `N`", text)


def test_implicit_dim_names_may_name_tensors(check_source):
    """B, T, H are reserved as dims only: a tensor may be called B (Mamba's B and C)."""
    import seqc
    program = seqc.compile("model m\ndims N\ninput B[N], C[N]\nstate h[N] = 0\nh = h + B\n"
                           "output y = C @ h\n")
    assert [t.name for t in program.spec.inputs] == ["B", "C"]


@pytest.mark.parametrize("name", ["exp", "sum", "logaddexp", "model", "dims", "input", "param",
                                  "state", "let", "output", "in", "inf", "lambda", "import",
                                  "class", "None", "True", "match", "def", "return"])
def test_reserved_words(check_source, name):
    err = check_source(gla_with(6, f"let {name} = k\nS = S + k * v"))
    expect(err, 6, 1, len(f"let {name} = k"),
           f"`{name}` is a reserved word and cannot be a name", None, f"let {name} = k")


def test_reserved_input_name_uses_the_right_article(check_source):
    err = check_source(gla_with(4, "input import[K]\nlet g = k"))
    expect(err, 4, 7, 6, "`import` is a reserved word and cannot be an input name", None,
           "input import[K]")


def test_reserved_declaration_does_not_cascade(check_source):
    err = check_source(gla_with(4, "input lambda[K]\nlet g = lambda * k"))
    expect(err, 4, 7, 6, "`lambda` is a reserved word and cannot be an input name")


# ---- dims and shapes -------------------------------------------------------------------------

def test_unknown_dim(check_source):
    err = check_source(gla_with(3, "input q[K], k[Kx], v[V]"))
    expect(err, 3, 15, 2, "unknown dim `Kx`", "did you mean `K`?", "input q[K], k[Kx], v[V]")


def test_unknown_dim_without_suggestion(check_source):
    err = check_source(gla_with(3, "input q[K], k[K], v[Zeta]"))
    expect(err, 3, 21, 4, "unknown dim `Zeta`", "declare it first: `dims Zeta`",
           "input q[K], k[K], v[Zeta]")


def test_elementwise_assignment_dim_mismatch(check_source):
    err = check_source(gla_with(6, "S = exp(g) * k"))
    expect(err, 6, 5, 10, "the new value of `S` has dims [K] but the state has [K, V]",
           "the value lacks `V`", "S = exp(g) * k")


def test_matmul_dim_mismatch_names_both(check_source):
    err = check_source(gla_with(7, "output o = v @ S"))
    expect(err, 7, 12, 5, "`@` contracts the last dim of the left side with the first dim of the "
           "right side, but they are `V` and `K`", "left has dims [V], right has [K, V]",
           "output o = v @ S")


def test_matmul_with_a_scalar(check_source):
    err = check_source(gla_with(7, "output o = q @ 2"))
    expect(err, 7, 16, 1, "`@` needs a tensor on each side, not a scalar",
           "use `*` to scale by a scalar", "output o = q @ 2")


def test_reduction_over_a_dim_the_argument_lacks(check_source):
    err = check_source(gla_with(7, "output o = sum(q, V)"))
    expect(err, 7, 19, 1, "`sum` over `V`, but its argument has dims [K]", "reduce over `K`",
           "output o = sum(q, V)")


def test_reduction_over_a_name_that_is_not_a_dim(check_source):
    err = check_source(gla_with(7, "output o = norm(q, Kk)"))
    expect(err, 7, 20, 2, "`norm` reduces over a dim, and `Kk` is not a declared dim",
           "did you mean `K`?", "output o = norm(q, Kk)")


def test_declared_output_dims_mismatch(check_source):
    err = check_source(gla_with(7, "output o[K] = q @ S"))
    expect(err, 7, 15, 5, "output `o` is declared [K] but its value has dims [V]",
           "reduce or remove `V`; the value lacks `K`", "output o[K] = q @ S")


SQUARE = "model m\ndims D\ninput h[D]\nparam R[D, D]\nstate s[D]\ns = R @ s + h\n"


@pytest.mark.parametrize("text, col", [("output o = R", 12), ("output o[D, D] = R", 18),
                                       ("let x = R\noutput o = x @ h", 9),
                                       ("output o = R * 2", 12), ("output o = sum(R, D)", 16)])
def test_square_param_only_with_matmul(check_source, text, col):
    err = check_source(SQUARE + text + "\n")
    expect(err, 7, col, 1, "a square matrix [D, D] can only be used with `@`")


def test_square_param_with_matmul_is_fine(tmp_path, monkeypatch, capsys):
    (tmp_path / "ok.seq").write_text(SQUARE + "output o = h @ R @ R\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "ok.seq"]) == 0
    assert capsys.readouterr().err == ""


# ---- functions -------------------------------------------------------------------------------

def test_wrong_arity(check_source):
    err = check_source(gla_with(6, "S = exp(g, k) * S + k * v"))
    expect(err, 6, 5, 9, "`exp` takes 1 argument, not 2", None, "S = exp(g, k) * S + k * v")


def test_binary_function_arity(check_source):
    err = check_source(gla_with(7, "output o = max(q @ S)"))
    expect(err, 7, 12, 10, "`max` takes 2 arguments, not 1", None, "output o = max(q @ S)")


def test_reduction_without_dim(check_source):
    err = check_source(gla_with(7, "output o = sum(q @ S)"))
    expect(err, 7, 12, 10, "`sum` takes an expression and the dim to reduce, as in `sum(x, K)`",
           None, "output o = sum(q @ S)")


def test_unknown_function_suggests(check_source):
    err = check_source(gla_with(6, "S = exq(g) * S + k * v"))
    expect(err, 6, 5, 6, "unknown function `exq`", "did you mean `exp`?", "S = exq(g) * S + k * v")


def test_unknown_function(check_source):
    err = check_source(gla_with(6, "S = frobnicate(g) * S + k * v"))
    expect(err, 6, 5, 13, "unknown function `frobnicate`",
           "the functions are listed in docs/language.md", "S = frobnicate(g) * S + k * v")


# ---- numbers ---------------------------------------------------------------------------------

def test_number_too_large(check_source):
    err = check_source(gla_with(7, "output o = 1e400 * q @ S"))
    expect(err, 7, 12, 5, "number `1e400` is too large",
           "numbers must fit a 64-bit float (at most about 1.8e308)", "output o = 1e400 * q @ S")


# ---- files -----------------------------------------------------------------------------------

def test_empty_file(check_source):
    err = check_source("")
    expect(err, 1, 1, 1, "the spec is empty", "a spec starts with `model NAME`; see docs/language.md")


def test_only_comments(check_source):
    err = check_source("# nothing here\n\n   # still nothing\n")
    expect(err, 1, 1, 1, "the spec is empty", "a spec starts with `model NAME`; see docs/language.md",
           "# nothing here")


def test_not_utf8(check_source):
    err = check_source(b"model m\n# caf\xc3\xa9 \xff\n")
    expect(err, 2, 8, 1, "the file is not valid UTF-8 (byte 0xff)", "save the spec as UTF-8",
           "# caf\u00e9 \ufffd")


def test_byte_order_mark_is_skipped(check_source):
    err = check_source(b"\xef\xbb\xbf" + gla_with(7, "output o = zz").encode())
    expect(err, 7, 12, 2, "unknown name `zz`", None, "output o = zz")


def test_missing_file(check_source):
    err = check_source(None, "missing.seq")
    expect(err, 1, 1, 1, "no such file", file="missing.seq")


def test_missing_stdlib_name(check_source):
    err = check_source(None, "glaa")
    head = blocks(err)[0]
    assert head[0] == "glaa:1:1: error: no file or stdlib spec named `glaa`"
    assert head[1].startswith("  = help: `seqc list` shows the stdlib: ") and "gla," in head[1]


def test_directory(check_source, tmp_path):
    (tmp_path / "adir.seq").mkdir()
    err = check_source(None, "adir.seq")
    expect(err, 1, 1, 1, "is a directory, not a .seq file", file="adir.seq")


def test_not_a_regular_file(check_source):
    err = check_source(None, "/dev/zero")
    expect(err, 1, 1, 1, "is not a regular file", file="/dev/zero")


def test_file_too_large(check_source):
    err = check_source("# padding\n" * 200_000)
    expect(err, 1, 1, 1, "file is too large (more than 1000000 bytes)")


def test_unreadable_file(check_source, tmp_path, monkeypatch):
    (tmp_path / "secret.seq").write_text(GLA, encoding="utf-8")
    (tmp_path / "secret.seq").chmod(0)
    if os.geteuid() == 0:       # root reads every file: refuse this one as the OS would
        real_open = Path.open

        def refusing_open(self, *args, **kwargs):
            if self.name == "secret.seq":
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)
        monkeypatch.setattr(Path, "open", refusing_open)
    err = check_source(None, "secret.seq")
    expect(err, 1, 1, 1, "cannot read the file (Permission denied)", file="secret.seq")


def test_extremely_long_line(check_source):
    err = check_source(gla_with(7, "output o = " + " + ".join(["q @ S"] * 20_000)))
    expect(err, 7, 1, 1, f"line is too long ({11 + 20_000 * 8 - 3} characters; at most 20000)",
           "split the expression with `let`")
    assert all(len(line) < 200 for line in err.splitlines())


def test_parentheses_1000_deep(check_source):
    text = "output o = " + "(" * 1000 + "q @ S" + ")" * 1000
    err = check_source(gla_with(7, text))
    expect(err, 7, 76, 1, "expression nested more than 64 parentheses deep",
           "split the expression with `let`")


def test_3000_term_sum_fits_the_line_but_not_the_depth(check_source):
    text = "S = " + " + ".join(["S"] * 3000)
    assert len(text) < 20_000
    err = check_source(gla_with(6, text))
    expect(err, 6, 1, 160, "expression is too deep (3000 levels; at most 200)",
           "split the expression with `let`")   # the caret is cut to the excerpt's 160 columns


@pytest.mark.parametrize("text", ["-" * 1000 + "q @ S", "q" + " ** q" * 1000 + " @ S",
                                  "exp(" * 60 + "q @ S" + ")" * 60 + " + 0" * 200])
def test_other_deep_expressions(check_source, text):
    err = check_source(gla_with(7, "output o = " + text))
    assert "expression is too deep" in blocks(err)[0][0]


# ---- all errors at once ----------------------------------------------------------------------

def test_five_independent_mistakes_give_five_errors(check_source):
    source = """model m
dims K, V
input q[K], k[K], v[V], x[Q]
state S[K, V]
let a = k
let a = q
S = S + k * vv
q = k
output o = v @ S
"""
    err = check_source(source)
    heads = [b[0] for b in blocks(err)]
    assert heads == [
        "spec.seq:3:27: error: unknown dim `Q`",
        "spec.seq:6:1: error: `a` is assigned twice",
        "spec.seq:7:13: error: unknown name `vv`",
        "spec.seq:8:1: error: cannot assign to input `q`",
        "spec.seq:9:12: error: `@` contracts the last dim of the left side with the first dim of "
        "the right side, but they are `V` and `K`",
    ]
    assert err.rstrip().endswith("5 errors")


def test_api_raises_spec_error_with_all_diagnostics():
    source = gla_with(6, "S = exq(g) * S + kk * v") + "output o = q\n"
    with pytest.raises(SpecError) as caught:
        seqc.compile(source, "x.seq")
    assert [(d.span.line, d.span.col) for d in caught.value.diagnostics] == \
        [(6, 5), (6, 18), (8, 1)]


def test_cli_subprocess_exit_code_and_no_traceback(tmp_path):
    (tmp_path / "bad.seq").write_text(gla_with(6, "S = exp(g) * S + kk * v"), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "seqc.cli", "check", "bad.seq"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("bad.seq:6:18: error: unknown name `kk`\n")
    assert "Traceback" not in result.stderr and PACKAGE_DIR not in result.stderr


def test_cli_reports_every_file_and_fails_if_any_fails(tmp_path, monkeypatch, capsys):
    (tmp_path / "bad.seq").write_text(gla_with(7, "output o = zz"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "gla", "bad.seq", "mamba"]) == 1
    out, err = capsys.readouterr()
    assert "gla.seq: ok" in out and "mamba.seq: ok" in out
    assert err.startswith("bad.seq:7:12: error: unknown name `zz`")


# ---- dims no call can bind -------------------------------------------------------------------

UNBOUND = "model m\ndims D, N\ninput x[D]\nstate h[D] = 0\nh = 0.5 * h + x\noutput y = h\n"


def test_a_dim_nothing_uses_is_an_error_naming_what_could_bind_it(check_source):
    err = check_source(UNBOUND)
    expect(err, 2, 9, 1, "dim `N` is declared, but no input or param has it, so no call can give "
           "its size", "give an input or a param the dim (e.g. `input x[N]` or `param w[N]`), "
           "or remove it", "dims D, N")


def test_a_dim_only_states_use_is_an_error(check_source):
    err = check_source(UNBOUND.replace("state h[D]", "state h[D, N]").replace("output y = h",
                                                                              "output y = sum(h, N)"))
    expect(err, 2, 9, 1, "dim `N` is used by state `h`, but no input or param has it, so no call "
           "can give its size", "give an input or a param the dim (e.g. `input x[N]` or "
           "`param w[N]`)", "dims D, N")


def test_a_dim_only_the_step_reads_is_an_error(check_source):
    err = check_source(UNBOUND.replace("+ x", "+ N * x"))
    expect(err, 2, 9, 1, "dim `N` is used by the step, but no input or param has it, so no call "
           "can give its size", "give an input or a param the dim (e.g. `input x[N]` or "
           "`param w[N]`)", "dims D, N")


def test_a_dim_a_param_binds_is_accepted():
    seqc.compile(UNBOUND.replace("input x[D]", "input x[D]\nparam w[N]"))
