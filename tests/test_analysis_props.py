"""Property tests: the analysis' verdicts agree with numbers.

Random update expressions (affine in the state and not) are analysed; the verdict must agree with
a numeric affinity test, and for a scan the Plan's coefficient and offset, combined in a random
tree order by the proof's combine, must give the step loop's final state. Every combine is checked
associative, with a two-sided identity, on random values (fp64), and against the step loop of its
kind twice: on random steps, and on the Plan's summaries of a real run of every stdlib spec (and
the coupled example), compared with the reference backend's final state. Context parallelism
runs these combines across processes: a combine that is associative but wrong (an earlier run's
offset never decayed) fails both.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqc
from seqc import ir
from seqc.analysis.proof import COMBINES
from seqc.context_summary import Roles, step_elements, to_layout

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
    if name == "chunk_delta":       # the erase key p apart from the write key k (Comba)
        k, p = rng.normal(size=3), rng.normal(size=3)
        k, p = k / np.linalg.norm(k), p / np.linalg.norm(p)
        decay = rng.uniform(0.1, 1.0)
        return decay * (np.eye(3) - rng.uniform() * np.outer(k, p)), rng.normal(size=(3, 2))
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


# ---- every combine against the step loop of its kind ------------------------------------------
#
# An element summarises a run of steps as the map it applies to the state; `summary_applied`
# applies one to an initial state. A random tree of combines over the elements of single steps
# must give what the step loop gives. The loop of each kind is written from its math in
# seqc/plan.py, never from the combine.

def summary_applied(combine, summary, state):
    """The state after the run a summary stands for, started from `state`."""
    return combine.apply((combine.identity(summary)[0], state), summary)[1]


def _householders(keys, betas, writes=None):
    """(I - beta_J w_J k_J^T) ... (I - beta_1 w_1 k_1^T), with beta scalar or key-wise, k the
    erase keys and w the write keys (the erase keys themselves when `writes` is None)."""
    eye = np.broadcast_to(np.eye(keys[0].shape[-1]), keys[0].shape + keys[0].shape[-1:])
    product = eye
    for k, beta, w in zip(keys, betas, keys if writes is None else writes):
        product = (eye - (beta * w)[..., :, None] * k[..., None, :]) @ product
    return product


class Loops:
    """Per kind: a random step, its state update as the spec's family states it, and the
    step's summary (the element a backend builds for one step)."""

    @staticmethod
    def scan(rng):
        return dict(a=rng.uniform(-1.5, 1.5, 4), b=rng.normal(size=4)), rng.normal(size=4)

    @staticmethod
    def scan_step(s, h):
        return s["a"] * h + s["b"]

    @staticmethod
    def scan_element(s):
        return s["a"], s["b"]

    @staticmethod
    def coupled(rng):
        return dict(a=rng.normal(size=(4, 3, 3)) / 2, b=rng.normal(size=(4, 3))), \
            rng.normal(size=(4, 3))

    @staticmethod
    def coupled_step(s, h):
        return np.einsum("dij,dj->di", s["a"], h) + s["b"]

    @staticmethod
    def coupled_element(s):
        return s["a"], s["b"]

    @staticmethod
    def chunk(rng):
        return dict(log_decay=-rng.uniform(0, 1, 3), keys=rng.normal(size=(2, 3)),
                    values=rng.normal(size=(2, 2))), rng.normal(size=(3, 2))

    @staticmethod
    def chunk_step(s, h):
        return np.exp(s["log_decay"])[:, None] * h + s["keys"].T @ s["values"]

    @staticmethod
    def chunk_element(s):
        return np.exp(s["log_decay"]), s["keys"].T @ s["values"]

    @staticmethod
    def chunk_delta(rng):
        """Two steps a token; the second's write key apart from its erase key (Comba's
        I - beta k p^T), the first's the erase key itself."""
        keys, writes = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
        keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
        writes /= np.linalg.norm(writes, axis=-1, keepdims=True)
        writes[0] = keys[0]
        return dict(log_decay=-rng.uniform(0, 1, 3), keys=keys, writes=writes,
                    betas=rng.uniform(0, 1, 2), values=rng.normal(size=(2, 2))), \
            rng.normal(size=(3, 2))

    @staticmethod
    def chunk_delta_step(s, h):
        h = np.exp(s["log_decay"])[:, None] * h
        for k, w, beta, v in zip(s["keys"], s["writes"], s["betas"], s["values"]):
            h = h + beta * np.outer(w, v - k @ h)
        return h

    @staticmethod
    def chunk_delta_element(s):
        transition = _householders(list(s["keys"]), list(s["betas"]), list(s["writes"]))
        offset = np.zeros((3, 2))
        for k, w, beta, v in zip(s["keys"], s["writes"], s["betas"], s["values"]):
            offset = offset + beta * np.outer(w, v - k @ offset)
        return transition @ np.diag(np.exp(s["log_decay"])), offset

    @staticmethod
    def chunk_dplr(rng):
        return dict(log_decay=-rng.uniform(0, 1, 3), unseen=-rng.uniform(0, 1, 3),
                    erase=rng.normal(size=3) / 2, key=rng.normal(size=3) / 2,
                    keys=rng.normal(size=(2, 3)), values=rng.normal(size=(2, 2))), \
            rng.normal(size=(3, 2))

    @staticmethod
    def chunk_dplr_step(s, h):
        seen = np.exp(s["log_decay"] - s["unseen"])[:, None] * h
        return (np.exp(s["log_decay"])[:, None] * h - np.outer(s["erase"], s["key"] @ seen)
                + s["keys"].T @ s["values"])

    @staticmethod
    def chunk_dplr_element(s):
        decay = np.exp(s["log_decay"])
        seen = s["key"] * np.exp(s["log_decay"] - s["unseen"])
        return np.diag(decay) - np.outer(s["erase"], seen), s["keys"].T @ s["values"]

    @staticmethod
    def maxplus(rng):
        return dict(a=rng.normal(size=4), b=rng.normal(size=4)), rng.normal(size=4)

    @staticmethod
    def maxplus_step(s, h):
        return np.maximum(h + s["a"], s["b"])

    @staticmethod
    def maxplus_element(s):
        return s["a"], s["b"]

    logsumexp = maxplus

    @staticmethod
    def logsumexp_step(s, h):
        return np.logaddexp(h + s["a"], s["b"])

    logsumexp_element = maxplus_element


@pytest.mark.parametrize("kind", sorted(COMBINES))
@settings(max_examples=60, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 12))
def test_a_random_tree_of_combines_reproduces_the_step_loop(kind, seed, steps):
    combine = COMBINES[kind]
    rng = np.random.default_rng(seed)
    step_of = getattr(Loops, f"{kind}_step")
    element_of = getattr(Loops, f"{kind}_element")
    transitions = []
    for _ in range(steps):
        transition, h0 = getattr(Loops, kind)(rng)
        transitions.append(transition)
    h = h0
    for transition in transitions:
        h = step_of(transition, h)
    summary = tree_reduce(combine, [element_of(t) for t in transitions], rng)
    np.testing.assert_allclose(summary_applied(combine, summary, h0), h, rtol=1e-9, atol=1e-9)


# ---- summaries of real spec runs -------------------------------------------------------------
#
# Each stdlib spec (and the coupled example) runs through the reference step loop in fp64 from a
# random state; the Plan's role expressions, evaluated on the same inputs, give one summary a
# step; a random tree of the proof's combine over them must land on the loop's final state.

REAL_RUNS = [name for name in seqc.resources.stdlib_names()
             if name not in ("gru", "lstm")] + ["examples/04_coupled_states/momentum.seq"]
SIZES = {"B": 1, "T": 9, "H": 2, "K": 3, "V": 4, "D": 3, "N": 3, "P": 4}


# The Plan's role expressions and one summary a step come from seqc/context_parallel.py, which
# combines such summaries across ranks.

@pytest.mark.parametrize("name", REAL_RUNS)
def test_combines_over_a_real_run_reproduce_the_reference_loop(name):
    import torch

    from seqc.inputs import random_call
    program = seqc.load(name)
    spec, analysis = program.spec, program.analysis
    sizes = {k: v for k, v in SIZES.items() if k in ("B", "T", "H") or k in
             {d.name for d in spec.dims}}
    tensors, initial = random_call(spec, sizes, torch.float64, seed=3, with_initial_state=True)
    initial = {n: s.double() for n, s in initial.items()}
    run = program.kernel("reference")(**tensors, initial_state=initial, output_final_state=True)
    roles = Roles(analysis.plan, tensors, sizes)
    checked = 0
    for group in analysis.plan.groups:
        if group.kind == "sequential":
            continue
        combine = analysis.proof(group.states[0]).combine
        pieces = [p.numpy() for p in step_elements(group, roles, spec)]
        elements = [tuple(p[:, t] for p in pieces) for t in range(sizes["T"])]
        summary = tree_reduce(combine, elements, np.random.default_rng(7))
        start = to_layout(group, spec, {n: s.numpy() for n, s in initial.items()})
        final = to_layout(group, spec, {n: s.numpy() for n, s in run.final_state.items()})
        np.testing.assert_allclose(summary_applied(combine, summary, start), final,
                                   rtol=1e-9, atol=1e-9, err_msg=f"{name}: {group.states}")
        checked += 1
    assert checked == len(analysis.plan.groups)
