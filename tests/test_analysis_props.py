"""Property tests: the analysis' verdicts agree with numbers.

Random update expressions (affine in the state and not) are analysed; the verdict must agree with
a numeric affinity test, and for a scan the Plan's coefficient and offset, combined in a random
tree order by the proof's combine, must give the step loop's final state. Every combine is checked
associative, with a two-sided identity, on random values (fp64).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqc
from seqc import ir
from seqc.analysis.proof import COMBINES

FUNCS = {"tanh": np.tanh, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "abs": np.abs,
         "sigmoid": lambda a: 1 / (1 + np.exp(-a)), "logsigmoid": lambda a: -np.logaddexp(0, -a),
         "max": np.maximum, "min": np.minimum, "logaddexp": np.logaddexp}
OPS = {ir.Op.ADD: np.add, ir.Op.SUB: np.subtract, ir.Op.MUL: np.multiply,
       ir.Op.DIV: np.divide, ir.Op.POW: np.power}


def evaluate(node: ir.Expr, env: dict):
    """An elementwise expression (no `@`, no reductions) on numpy values."""
    if isinstance(node, ir.Num):
        return node.value
    if isinstance(node, ir.Name):
        if node.ref is not None and node.ref.kind == "state":
            return env[(node.id, node.ref.version)]
        return env[node.id]
    if isinstance(node, ir.Unary):
        return -evaluate(node.operand, env)
    if isinstance(node, ir.Binary):
        return OPS[node.op](evaluate(node.left, env), evaluate(node.right, env))
    return FUNCS[node.func](*(evaluate(a, env) for a in node.args))


def step(spec: ir.Spec, env: dict, states: dict) -> dict:
    """One step of the spec as written: the sequential loop's body."""
    env = dict(env)
    versions = {s: 0 for s in states}
    env.update({(s, 0): v for s, v in states.items()})
    for statement in spec.body:
        if isinstance(statement, ir.Let):
            env[statement.name] = evaluate(statement.value, env)
        elif isinstance(statement, ir.Update):
            versions[statement.state] += 1
            env[(statement.state, versions[statement.state])] = evaluate(statement.value, env)
    return {s: env[(s, versions[s])] for s in states}


def tree_reduce(combine, elements, rng):
    """Combine a run of elements, earliest first, splitting at random points."""
    if len(elements) == 1:
        return elements[0]
    cut = int(rng.integers(1, len(elements)))
    return combine.apply(tree_reduce(combine, elements[:cut], rng),
                         tree_reduce(combine, elements[cut:], rng))


# ---- random updates --------------------------------------------------------------------------------

LEAVES = st.sampled_from(["h", "h", "x", "y", "0.5", "2"])


def _extend(children):
    return st.one_of(
        st.tuples(children, st.sampled_from(["+", "-", "*"]), children)
        .map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        children.map(lambda a: f"tanh({a})"),
        children.map(lambda a: f"exp(tanh({a}))"),
        st.tuples(children, children).map(lambda t: f"({t[0]} / (2 + tanh({t[1]})))"),
        children.map(lambda a: f"({a}) ** 2"),
    )


UPDATES = st.recursive(LEAVES, _extend, max_leaves=7)


def _program(update: str):
    source = (f"model r\ndims D\ninput x[D], y[D]\nstate h[D] = 0\nh = {update} + 0.5 * x\n"
              "output o = h\n")
    return seqc.compile(source, "random.seq")


def _numerically_affine(spec, rng) -> bool:
    for _ in range(3):
        env = {"x": rng.normal(size=5), "y": rng.normal(size=5)}
        h1, h2, lam = rng.normal(size=5), rng.normal(size=5), 0.3
        mixed = step(spec, env, {"h": lam * h1 + (1 - lam) * h2})["h"]
        expected = lam * step(spec, env, {"h": h1})["h"] + (1 - lam) * step(spec, env, {"h": h2})["h"]
        if not np.allclose(mixed, expected, rtol=1e-9, atol=1e-9):
            return False
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(UPDATES, st.integers(0, 2**32 - 1))
def test_verdict_agrees_with_numbers(update, seed):
    program = _program(update)
    rng = np.random.default_rng(seed)
    analysis = program.analysis
    kind = analysis.kind("h")
    assert kind in ("scan", "sequential")
    assert (kind == "scan") == _numerically_affine(program.spec, rng), (update, kind)
    if kind == "sequential":
        assert analysis.proof("h").reason.span.line == 5
        return
    group = analysis.plan.groups[0]
    inputs = [{"x": rng.normal(size=5), "y": rng.normal(size=5)} for _ in range(9)]
    elements = [(np.broadcast_to(evaluate(group.coefficient["h"], env), (5,)).astype(float),
                 np.broadcast_to(evaluate(group.offset["h"], env), (5,)).astype(float))
                 for env in inputs]
    h0 = rng.normal(size=5)
    h = h0
    for env in inputs:
        h = step(program.spec, env, {"h": h})["h"]
    a, b = tree_reduce(analysis.proof("h").combine, elements, rng)
    np.testing.assert_allclose(a * h0 + b, h, rtol=1e-9, atol=1e-9)


# ---- stdlib specs through their combines -----------------------------------------------------------

def _draw(tensor: ir.Tensor, rng, size):
    low, high = (-1.0, 1.0) if tensor.range is None else (tensor.range.low, tensor.range.high)
    low, high = max(low, -2.0), min(high, 2.0)
    if tensor.range is not None and tensor.range.low >= 0:
        low = max(low, 0.05)
    if tensor.range is not None and tensor.range.high <= 1 and tensor.range.low >= 0:
        high = 0.95
    return rng.uniform(low, high, size=size)


@pytest.mark.parametrize("name", ["hgrn", "mingru", "minlstm", "lru", "rglru", "maxplus",
                                  "logsumexp"])
def test_stdlib_combine_equals_loop(name):
    program = seqc.load(name)
    spec, analysis = program.spec, program.analysis
    rng = np.random.default_rng(0)
    [state] = [t.name for t in spec.states]
    group, combine = analysis.plan.groups[0], analysis.proof(state).combine
    params = {t.name: _draw(t, rng, 4) for t in spec.params}
    steps = [{**params, **{t.name: _draw(t, rng, 4) for t in spec.inputs}} for _ in range(11)]
    h0 = rng.normal(size=4)
    h = h0
    elements = []
    for env in steps:
        for let in analysis.plan.prelude:
            env[let.name] = evaluate(let.value, env)
        if group.kind == "scan":
            pieces = (group.coefficient[state], group.offset[state])
        else:
            pieces = (group.coefficient, group.offset)
        elements.append(tuple(np.broadcast_to(evaluate(p, env), (4,)).astype(float)
                              for p in pieces))
        h = step(spec, env, {state: h})[state]
    a, b = tree_reduce(combine, elements, rng)
    final = a * h0 + b if group.kind == "scan" else combine.apply((np.zeros(4), h0), (a, b))[1]
    np.testing.assert_allclose(final, h, rtol=1e-9, atol=1e-9)


# ---- associativity -------------------------------------------------------------------------------

def _element(name: str, rng):
    if name == "coupled":
        return rng.normal(size=(4, 3, 3)), rng.normal(size=(4, 3))
    if name == "chunk":
        return rng.uniform(0.1, 1.0, size=3), rng.normal(size=(3, 2))
    if name == "chunk_delta":
        k = rng.normal(size=3)
        k /= np.linalg.norm(k)
        decay = rng.uniform(0.1, 1.0)
        return decay * (np.eye(3) - rng.uniform() * np.outer(k, k)), rng.normal(size=(3, 2))
    if name == "chunk_dplr":
        e, k = rng.normal(size=3), rng.normal(size=3)
        return np.diag(rng.uniform(0.1, 1.0, size=3)) - np.outer(e, k), rng.normal(size=(3, 2))
    return rng.normal(size=4), rng.normal(size=4)


@pytest.mark.parametrize("name", sorted(COMBINES))
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_combine_is_associative_with_identity(name, seed):
    combine = COMBINES[name]
    rng = np.random.default_rng(seed)
    a, b, c = (_element(name, rng) for _ in range(3))
    left = combine.apply(combine.apply(a, b), c)
    right = combine.apply(a, combine.apply(b, c))
    for x, y in zip(left, right):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9)
    identity = combine.identity(a)
    for x, y, z in zip(combine.apply(identity, a), combine.apply(a, identity), a):
        np.testing.assert_allclose(x, z, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(y, z, rtol=1e-12, atol=1e-12)
