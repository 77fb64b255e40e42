"""Property tests of the front end: any text ends in a checked spec or a located SpecError, never
another exception; and no identifier that is unsafe in generated Python reaches a checked IR."""
from __future__ import annotations

import keyword
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from seqc import ir
from seqc.check import RESERVED, check
from seqc.errors import SpecError
from seqc.parse import parse
from seqc.pretty import pretty
from seqc.resources import stdlib_dir, stdlib_names

SAFE = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
SOURCES = [(stdlib_dir() / f"{n}.seq").read_text(encoding="utf-8") for n in stdlib_names()]
FAST = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))

TOKENS = ["model", "dims", "input", "param", "state", "let", "output", "in", "inf", "-inf",
          "K", "V", "D", "B", "T", "H", "q", "k", "v", "S", "g", "x", "exp", "sum", "max", "norm",
          "l2norm", "logaddexp", "lambda", "__import__", "os", "None", "0", "1", "0.5", "1e-6",
          "1e400", ".5", "3.", "(", ")", "[", "]", ",", "=", "+", "-", "*", "/", "@", "**", "#",
          "\n", "\n", "\n", " ", "\t", "\r", "\f", "\x00", "\u2028", "é", "λ", "𝑥", "`", "'", '"',
          ";", ":", "{", "}", "\\", "$", "!", "_", "__", "💥", "\ufeff", "K ** -0.5"]


def assert_located(source: str) -> None:
    """parse + check either succeed (and the result is safe and round-trips) or fail located."""
    try:
        checked = check(parse(source, "fuzz.seq"))
    except SpecError as error:
        assert error.diagnostics
        n_lines = max(1, len(source.split("\n")))
        for diagnostic in error.diagnostics:
            assert diagnostic.span.line >= 1 and diagnostic.span.col >= 1, diagnostic
            assert diagnostic.span.line <= n_lines, diagnostic
            assert diagnostic.span.file == "fuzz.seq"
            text = diagnostic.render(error.source)
            assert text.startswith(f"fuzz.seq:{diagnostic.span.line}:{diagnostic.span.col}: ")
            assert "Traceback" not in text
        error.render()
        return
    assert_safe(checked.spec)
    assert_dims_bound(checked.spec)
    assert parse(pretty(checked.spec)) == checked.spec


def assert_dims_bound(spec: ir.Spec) -> None:
    """Every dim of a checked spec gets its size from an input or a param at call time."""
    bound = {d for t in spec.inputs + spec.params for d in t.dims}
    assert {d.name for d in spec.dims} <= bound, pretty(spec)


def identifiers(spec: ir.Spec):
    """Every name a spec declares or reads (the model's name may be a function's: it names
    nothing in an expression; `head` is the built-in head index, read, never declared)."""
    if spec.name not in ir.FUNCS:
        yield spec.name
    yield from (d.name for d in spec.dims)
    for tensor in spec.tensors:
        yield tensor.name
        yield from tensor.dims
    for statement in spec.body:
        yield getattr(statement, "name", None) or statement.state
        yield from getattr(statement, "declared_dims", None) or ()
        for node in ir.walk(statement.value):
            if isinstance(node, ir.Name) and node.id != ir.HEAD:
                yield node.id
            elif isinstance(node, ir.Call):
                assert node.func in ir.FUNCS or node.func == ir.RELABEL and node.relabel, node
                if node.dim is not None:
                    yield node.dim
                yield from node.relabel or ()


def assert_safe(spec: ir.Spec) -> None:
    for name in identifiers(spec):
        assert SAFE.match(name) and len(name) <= 64, name
        assert name not in RESERVED and not keyword.iskeyword(name), name


# ---- random token soup ---------------------------------------------------------------------------

@FAST
@given(st.lists(st.sampled_from(TOKENS), max_size=60), st.lists(st.sampled_from(["", " "]),
                                                                 min_size=60, max_size=60))
def test_token_soup(tokens, separators):
    assert_located("".join(t + s for t, s in zip(tokens, separators)))


@FAST
@given(st.text(max_size=200))
def test_arbitrary_text(text):
    assert_located(text)


@FAST
@given(st.sampled_from(SOURCES), st.text(max_size=30))
def test_stdlib_with_arbitrary_text_appended(source, text):
    assert_located(source + text)


# ---- mutated stdlib specs ------------------------------------------------------------------------

def _mutate(lines: list[str], data) -> list[str]:
    kind = data.draw(st.sampled_from(["delete", "duplicate", "swap", "token", "char", "truncate",
                                      "replace_word", "dim"]))
    if not lines:
        return [data.draw(st.sampled_from(TOKENS))]
    i = data.draw(st.integers(0, len(lines) - 1))
    if kind == "dim":       # a new dim, maybe given to a state only: no call could bind it
        return lines[:i] + [data.draw(st.sampled_from(["dims N", "dims N\nstate extra[N] = 0"]))] \
            + lines[i:]
    if kind == "delete":
        return lines[:i] + lines[i + 1:]
    if kind == "duplicate":
        return lines[:i + 1] + lines[i:]
    if kind == "swap":
        j = data.draw(st.integers(0, len(lines) - 1))
        lines = list(lines)
        lines[i], lines[j] = lines[j], lines[i]
        return lines
    line = lines[i]
    at = data.draw(st.integers(0, len(line)))
    if kind == "token":
        line = line[:at] + data.draw(st.sampled_from(TOKENS)) + line[at:]
    elif kind == "char":
        line = line[:at] + data.draw(st.characters()) + line[at:]
    elif kind == "truncate":
        line = line[:at]
    else:
        words = re.findall(r"[A-Za-z_]\w*", line)
        if words:
            line = line.replace(data.draw(st.sampled_from(words)), data.draw(st.sampled_from(TOKENS)), 1)
    return lines[:i] + [line] + lines[i + 1:]


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(SOURCES), st.data())
def test_mutated_stdlib(source, data):
    lines = source.split("\n")
    for _ in range(data.draw(st.integers(1, 4))):
        lines = _mutate(lines, data)
    text = "\n".join(lines)
    if data.draw(st.booleans()):
        text = text[:data.draw(st.integers(0, len(text)))]
    assert_located(text)


# ---- identifiers that must never pass ------------------------------------------------------------

UNSAFE = ["__import__", "_x", "__class__", "os.system", "é", "naïve", "λ", "𝑥", "x́", "`x`", "'x'",
          '"x"', "x-y", "x y", "x;y", "x\x00", "1x", "x$", "exec(", "lambda", "import", "None",
          "True", "class", "match", "exp", "sum", "in", "inf", "model", "K" * 65]


@pytest.mark.parametrize("bad", UNSAFE)
@pytest.mark.parametrize("template", [
    "model {bad}\ndims K\ninput q[K]\noutput o = q\n",
    "model m\ndims K, {bad}\ninput q[K]\noutput o = q\n",
    "model m\ndims K\ninput q[K], {bad}[K]\noutput o = q\n",
    "model m\ndims K\ninput q[K]\nparam {bad}\noutput o = q\n",
    "model m\ndims K\ninput q[K]\nstate {bad}[K]\noutput o = q\n",
    "model m\ndims K\ninput q[K]\nlet {bad} = q\noutput o = q\n",
    "model m\ndims K\ninput q[K]\noutput {bad} = q\n",
    "model m\ndims K\ninput q[K]\noutput o = q * {bad}\n",
    "model m\ndims K\ninput q[K]\noutput o = sum(q, {bad})\n",
    "model m\ndims K\ninput q[K]\noutput o[{bad}] = q\n",
])
def test_unsafe_identifiers_never_pass(template, bad):
    if template.startswith("model {bad}") and bad in ir.FUNCS:
        pytest.skip("a model may be named after a function (stdlib's `logsumexp`): the name "
                    "is no value of an expression")
    source = template.format(bad=bad)
    with pytest.raises(SpecError) as caught:
        check(parse(source, "x.seq"))
    assert all(d.span.line >= 1 and d.span.col >= 1 for d in caught.value.diagnostics)


@FAST
@given(st.text(min_size=1, max_size=12))
def test_random_identifiers_are_safe_or_refused(name):
    for template in ("model m\ndims K\ninput q[K]\nlet {n} = q\noutput o = {n}\n",
                     "model m\ndims K\ninput q[K], {n}[K]\noutput o = q * {n}\n"):
        try:
            checked = check(parse(template.format(n=name), "x.seq"))
        except SpecError:
            continue
        assert_safe(checked.spec)


@pytest.mark.parametrize("bad", [b for b in UNSAFE if b not in ir.FUNCS])
def test_unsafe_function_names_never_pass(bad):
    with pytest.raises(SpecError):
        check(parse(f"model m\ndims K\ninput q[K]\noutput o = {bad}(q)\n", "x.seq"))


@pytest.mark.parametrize("implicit", ["B", "T", "H"])
def test_implicit_dims_cannot_be_declared_as_dims(implicit):
    with pytest.raises(SpecError):
        check(parse(f"model m\ndims K, {implicit}\ninput q[K]\noutput o = q\n", "m.seq"))
