"""The torch backend's derived adjoint of the semiring scan (`_semiring_scan_adjoint`, the
default; off with `adjoint=False`; backends/torch/semiring_adjoint.md): the forward keeps no graph
and the backward is the reverse linear scan through `add`'s weights. Its gradients must equal
autograd through the ops of `_semiring_scan` (fp64, 1e-12) for maxplus and logsumexp with initial
states or the declared `-inf`, `-inf` coefficients (hard resets) and offsets, slabs, a partial
last chunk and odd dims; at ties max-plus's must equal autograd through the step loop (the
reference backend), and where both of logsumexp's terms are `-inf` they take the max's rule
(autograd gives NaN there); the core must really replace autograd (its backward runs, it saves
at most a third of autograd's bytes).
"""
import pytest
import torch

import seqc
from oracles import random_inputs, random_state
from test_gradients import gradients_of
from test_torch_adjoint import assert_saves_a_third, torch_kernel
from test_torch_delta_adjoint import assert_gradients_equal, counting_backward

SPECS = {"maxplus": ("a", "x"), "logsumexp": ("la", "lb")}     # (coefficient, offset) inputs
ODD = {"D": 5}
CORE = "_SemiringScanAdjoint"


def call(name, T, initial, seed=3):
    x, p = random_inputs(name, 2, T, 2, ODD, dtype=torch.float64, seed=seed)
    s = {n: t.double() for n, t in random_state(name, 2, 2, ODD, seed=seed).items()}
    return x, p, s if initial else None


@pytest.mark.parametrize("where", ["none", "coefficient", "offset"])
@pytest.mark.parametrize("initial", [True, False], ids=["initial state", "declared -inf"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_adjoint_gradients_equal_autograd(name, initial, where, monkeypatch):
    """T = 37 in slabs of 16 steps and chunks of 8 (a partial last chunk in the last slab);
    `-inf` coefficients (hard resets) or offsets (no candidate) at a slab's and a chunk's start,
    inside a chunk, twice in a row, the last step. Never both at one step, nor an offset's `-inf`
    from a `-inf` state: both terms `-inf` is a tie (test_both_terms_minus_inf_...)."""
    x, p, s = call(name, 37, initial)
    positions = {"none": [], "coefficient": [0, 9, 16, 17, 30, 36],
                 "offset": [9, 16, 20, 21, 30, 36]}[where]
    if positions:
        x[SPECS[name][where == "offset"]][:, positions] = float("-inf")
    fn = torch_kernel(name, monkeypatch, adjoint=True)
    calls = counting_backward(fn.module, monkeypatch, CORE)
    got = gradients_of(fn, x, p, s)
    assert len(calls) == -(-37 // 16), "the adjoint's backward runs once a slab"
    assert_gradients_equal(got, gradients_of(torch_kernel(name, monkeypatch, adjoint=False),
                                             x, p, s))
    if where == "coefficient":
        assert (got[SPECS[name][0]][:, positions] == 0).all(), "a -inf coefficient gets nothing"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_minus_inf_offsets_at_a_chunks_start(name, monkeypatch):
    """Two `-inf` offsets opening a chunk (steps 16, 17): the chunk's own scan from no state
    meets two `-inf` terms there, so autograd through the chunked ops gives logsumexp NaN, a
    tie the step loop never sees; the adjoint equals autograd through the step loop."""
    x, p, s = call(name, 37, True)
    x[SPECS[name][1]][:, [16, 17]] = float("-inf")
    got = gradients_of(torch_kernel(name, monkeypatch, adjoint=True), x, p, s)
    assert_gradients_equal(got, reference_gradients(name, x, p, s))


@pytest.mark.parametrize("chunk_size", [1, 3])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_any_chunk_size(name, chunk_size):
    """Chunks of one step (no position inside a chunk) and of 3 (T = 11: a partial last one)."""
    x, p, s = call(name, 11, True)
    kernel = lambda adjoint: seqc.load(name).kernel("torch", chunk_size=chunk_size,
                                                    adjoint=adjoint)
    assert_gradients_equal(gradients_of(kernel(True), x, p, s),
                           gradients_of(kernel(False), x, p, s))


def reference_gradients(name, x, p, s):
    return gradients_of(seqc.load(name).kernel("reference"), x, p, s)


def test_maxplus_ties_take_the_step_loops_rule(monkeypatch):
    """Integer inputs tie often (`m + a = x` exactly): the adjoint splits each tie 1/2 to each
    term, as autograd through the step loop does; autograd through the chunked ops does not."""
    x, p, s = call("maxplus", 37, True)
    x = {n: t.mul(1.5).round() for n, t in x.items()}
    s = {n: t.mul(3).round() for n, t in s.items()}
    with torch.no_grad():
        h = seqc.load("maxplus").kernel("reference")(**x, initial_state=s).y
    carried = torch.cat([s["m"][:, None], h[:, :-1]], 1) + x["a"]
    assert (carried == x["x"]).sum() > 20, "the inputs tie"
    got = gradients_of(torch_kernel("maxplus", monkeypatch, adjoint=True), x, p, s)
    assert_gradients_equal(got, reference_gradients("maxplus", x, p, s))
    chunked = gradients_of(torch_kernel("maxplus", monkeypatch, adjoint=False), x, p, s)
    assert not torch.equal(chunked["x"], got["x"]), "the chunked ops split ties otherwise"


def test_both_terms_minus_inf_take_the_max_rule(monkeypatch):
    """Left padding: offsets `-inf` for the first 3 steps from the declared `-inf` state. Autograd
    of logsumexp gives NaN there (exp(-inf - -inf)); the adjoint's gradients are finite, equal
    the step loop's from step 3 on, and before it equal max-plus's (whose tie rule is the same
    1/2, and whose padded steps see the same incoming gradients)."""
    grads = {}
    for name in SPECS:
        x, p, _ = call(name, 37, False)
        x[SPECS[name][1]][:, :3] = float("-inf")
        got = gradients_of(torch_kernel(name, monkeypatch, adjoint=True), x, p, None)
        want = reference_gradients(name, x, p, None)
        for n, g in got.items():
            assert torch.isfinite(g).all(), (name, n)
            torch.testing.assert_close(g[:, 3:], want[n][:, 3:], rtol=1e-12, atol=1e-12)
        grads[name] = [got[n][:, :3] for n in SPECS[name]]
        if name == "logsumexp":
            assert want["la"][:, :3].isnan().all(), "autograd's gradient is NaN there"
    for a, b in zip(grads["logsumexp"], grads["maxplus"]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_gradcheck(name):
    x, p, s = call(name, 5, True, seed=1)
    x = {n: t[:1, :, :1, :3].clone() for n, t in x.items()}        # B = H = 1, D = 3
    s = {n: t[:1, :1, :3].clone() for n, t in s.items()}
    fn = seqc.load(name).kernel("torch", chunk_size=2)
    assert CORE in fn.module.__dict__
    assert_gradcheck(fn, x, s)


def assert_gradcheck(fn, x, s):
    """torch.autograd.gradcheck of every output and final state in the call's tensors `x` and
    initial states `s`."""
    def f(*tensors):
        out = fn(**dict(zip(x, tensors)), initial_state=dict(zip(s, tensors[len(x):])),
                 output_final_state=True)
        return (*(out[n] for n in out.keys()), *out.final_state.values())

    leaves = [t.clone().requires_grad_() for t in (*x.values(), *s.values())]
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_adjoint_saves_a_fraction_of_autograd(name):
    """At T = 256 (one slab, chunks of 8) the adjoint's saved bytes are at most a third of
    autograd's (each saved storage counted once per save: an upper bound for both)."""
    assert_saves_a_third(name)


def test_double_backward_through_the_adjoint_raises():
    """Once differentiable: a second derivative raises; `adjoint=False` gives one."""
    from test_once_differentiable import second_derivative
    with pytest.raises(RuntimeError, match="once_differentiable"):
        second_derivative(seqc.load("logsumexp").kernel("torch", chunk_size=4), "logsumexp")
    second_derivative(seqc.load("logsumexp").kernel("torch", chunk_size=4, adjoint=False),
                      "logsumexp")
