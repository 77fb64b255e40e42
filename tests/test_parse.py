"""The front end on good input: every stdlib spec parses, checks clean and round-trips through
the pretty-printer; random expressions round-trip too (precedence and associativity)."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from seqc import ir
from seqc.check import check
from seqc.parse import parse
from seqc.pretty import expr as pretty_expr, pretty
from seqc.resources import stdlib_dir, stdlib_names

STDLIB = stdlib_names()


def _source(name: str) -> str:
    return (stdlib_dir() / f"{name}.seq").read_text(encoding="utf-8")


def test_stdlib_is_there():
    assert len(STDLIB) >= 20
    assert "gla" in STDLIB


@pytest.mark.parametrize("name", STDLIB)
def test_stdlib_round_trips(name):
    spec = parse(_source(name), f"{name}.seq")
    assert parse(pretty(spec), "pretty.seq") == spec
    assert pretty(parse(pretty(spec))) == pretty(spec)


@pytest.mark.parametrize("name", STDLIB)
def test_stdlib_checks_clean(name):
    checked = check(parse(_source(name), f"{name}.seq"))
    assert checked.warnings == (), [w.render(_source(name)) for w in checked.warnings]
    assert checked.spec.name == name
    assert checked.spec.outputs


@pytest.mark.parametrize("name", STDLIB)
def test_checked_ir_round_trips(name):
    checked = check(parse(_source(name), f"{name}.seq")).spec
    assert parse(pretty(checked)) == checked


@pytest.mark.parametrize("name", STDLIB)
def test_checker_types_every_expression(name):
    spec = check(parse(_source(name))).spec
    for statement in spec.body:
        for node in ir.walk(statement.value):
            assert node.dims is not None
            if isinstance(node, ir.Name):
                assert node.ref is not None


def test_spans_point_into_the_source():
    spec = parse(_source("gla"), "gla.seq")
    update = next(s for s in spec.body if isinstance(s, ir.Update))
    assert (update.span.file, update.span.line, update.span.col) == ("gla.seq", 13, 1)
    names = [n for n in ir.walk(update.value) if isinstance(n, ir.Name)]
    assert [(n.id, n.span.col, n.span.end_col) for n in names] == \
        [("g", 9, 10), ("S", 14, 15), ("k", 18, 19), ("v", 22, 23)]


def test_precedence_and_associativity():
    def value(text):
        return parse(f"model m\ndims K\ninput a[K], b[K], c[K]\noutput o = {text}\n").body[0].value

    assert value("-a ** 2") == value("-(a ** 2)")
    assert value("a ** b ** c") == value("a ** (b ** c)")
    assert value("a - b - c") == value("(a - b) - c")
    assert value("a * b @ c") == value("(a * b) @ c")
    assert value("a + b * c") == value("a + (b * c)")
    assert value("2 ** -a") == ir.Binary(ir.Op.POW, ir.Num(2.0), ir.Unary(ir.Op.NEG, ir.Name("a")))
    assert value("(a - b) - c") != value("a - (b - c)")


def test_state_updates_see_versions():
    spec = check(parse("model m\ndims K\ninput a[K]\nstate S[K]\nS = S * a\nS = S + a\n"
                       "output o = S\n")).spec
    first, second, out = spec.body
    assert [n.ref.version for n in ir.walk(first.value) if isinstance(n, ir.Name) and n.id == "S"] \
        == [0]
    assert [n.ref.version for n in ir.walk(second.value) if isinstance(n, ir.Name)
            and n.id == "S"] == [1]
    assert out.value.ref.version == 2


def test_declarations_round_trip():
    source = ("model m\ndims K, V\ninput q[K], g in (-inf, 0)\nparam A[K] in (-3.5, 1e-06)\n"
              "state S[K, V] = -inf, m = 0\nS = q * S + g\nm = m + g\noutput o[K, V] = S\n")
    spec = parse(source)
    assert spec.tensor("g").range == ir.Range(-math.inf, 0.0)
    assert spec.tensor("A").range == ir.Range(-3.5, 1e-6)
    assert spec.tensor("S").init == -math.inf
    assert spec.outputs[0].declared_dims == ("K", "V")
    assert parse(pretty(spec)) == spec


def test_crlf_and_comments():
    source = _source("gla").replace("\n", "\r\n") + "# trailing comment without newline"
    assert parse(source) == parse(_source("gla"))


# ---- random expressions round-trip ---------------------------------------------------------------

NAMES = ("a", "b", "c", "K")
_leaves = st.one_of(
    st.sampled_from(NAMES).map(ir.Name),
    st.floats(min_value=0, max_value=1e300, allow_nan=False, allow_infinity=False).map(ir.Num),
)


def _grow(children):
    binary = st.builds(ir.Binary, st.sampled_from([op for op in ir.Op if op is not ir.Op.NEG]),
                       children, children)
    neg = st.builds(lambda e: ir.Unary(ir.Op.NEG, e), children)
    unary_call = st.builds(lambda f, e: ir.Call(f, (e,)), st.sampled_from(ir.UNARY_FUNCS), children)
    binary_call = st.builds(lambda f, x, y: ir.Call(f, (x, y)), st.sampled_from(ir.BINARY_FUNCS),
                            children, children)
    reduce = st.builds(lambda f, e: ir.Call(f, (e,), "K"), st.sampled_from(ir.REDUCE_FUNCS),
                       children)
    return st.one_of(binary, neg, unary_call, binary_call, reduce)


EXPRESSIONS = st.recursive(_leaves, _grow, max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(EXPRESSIONS)
def test_random_expressions_round_trip(expression):
    text = pretty_expr(expression)
    parsed = parse(f"model m\ndims K\ninput a[K], b[K], c[K]\noutput o = {text}\n").body[0].value
    assert parsed == expression, text
