"""The torch backend's derived adjoints of the delta rule and of the diagonal-plus-low-rank form
(`_chunk_delta_adjoint`, `_chunk_dplr_adjoint`, the default; off with `adjoint=False`;
backends/torch/chunk_delta_adjoint.md, chunk_dplr_adjoint.md): the forward keeps no graph and the
backward is the adjoint recurrence written out. Their gradients must equal autograd through the
ops of `_chunk_delta` / `_chunk_dplr` (fp64, 1e-12) for every stdlib delta and DPLR spec and the
value-side forms, with initial states, slabs, partial chunks, odd dims and -inf gates; the cores
must really replace autograd (their backward runs, and they save at most a third of autograd's
bytes).
"""
import pytest
import torch
import torch.nn.functional as F

import seqc
from oracles import random_inputs, random_state
from test_gradients import gradients_of
from test_torch_adjoint import assert_saves_a_third, torch_kernel
from seqc.inputs import random_call
from test_value_side import DECAYS, RWKV7_WX, SIZES, call, delta_wx, program

DELTA_SPECS = ["deltanet", "gated_deltanet", "kda", "deltaproduct", "comba"]
DPLR_SPECS = ["rwkv7"]
CORES = {**{n: "_ChunkDeltaAdjoint" for n in DELTA_SPECS}, **{n: "_ChunkDplrAdjoint" for n in DPLR_SPECS}}
ODD = {"K": 5, "V": 3}
TOL = {"rtol": 1e-12, "atol": 1e-12}


def counting_backward(module, monkeypatch, core="_ChunkDeltaAdjoint"):
    """A list that grows by one each time the core's backward runs."""
    function = getattr(module, core)
    backward = function.backward
    calls = []
    monkeypatch.setattr(function, "backward",
                        staticmethod(lambda ctx, *g: calls.append(1) or backward(ctx, *g)))
    return calls


def assert_gradients_equal(got, want):
    for n, g in want.items():
        assert got[n] is not None, n
        assert torch.isfinite(got[n]).all(), n
        torch.testing.assert_close(got[n], g, **TOL, msg=lambda m: f"gradient of {n}: {m}")


@pytest.mark.parametrize("resets", [(), (0, 9, 16, 17, 30)], ids=["finite", "-inf gates"])
@pytest.mark.parametrize("dims", [None, ODD], ids=["dims 8x12", "dims 5x3"])
@pytest.mark.parametrize("name", DELTA_SPECS + DPLR_SPECS)
def test_adjoint_gradients_equal_autograd(name, dims, resets, monkeypatch):
    """T = 37 in slabs of 16 steps and chunks of 8 (a partial last chunk in the last slab), an
    initial state; -inf gates at a slab's and a chunk's start, inside a chunk, twice in a row."""
    if resets and name in ("deltanet", "deltaproduct"):
        pytest.skip("no gate")
    x, p = random_inputs(name, 2, 37, 2, dims, dtype=torch.float64, seed=3)
    s = {n: t.double() for n, t in random_state(name, 2, 2, dims, seed=3).items()}
    for t in resets:
        x["g"][:, t] = float("-inf")
    fn = torch_kernel(name, monkeypatch, adjoint=True)
    calls = counting_backward(fn.module, monkeypatch, CORES[name])
    got = gradients_of(fn, x, p, s)
    assert len(calls) == -(-37 // 16), "the adjoint's backward runs once a slab"
    want = gradients_of(torch_kernel(name, monkeypatch, adjoint=False), x, p, s)
    assert_gradients_equal(got, want)
    if resets:
        assert (got["g"][:, list(resets)] == 0).all(), "a -inf gate gets no gradient"


@pytest.mark.parametrize("decay", DECAYS)
def test_value_side_adjoint_equals_autograd(decay, monkeypatch):
    """W[V, K] updated and read as `W @ k`: the core runs on the transposed state (test_value_side)."""
    source = delta_wx(decay)
    tensors, initial = call(source)

    def kernel(adjoint):
        return program(source).kernel("torch", chunk_size=4, adjoint=adjoint)

    fn = kernel(True)
    calls = counting_backward(fn.module, monkeypatch)
    got = gradients_of(fn, tensors, {}, initial)
    assert calls, "the adjoint's backward runs"
    assert_gradients_equal(got, gradients_of(kernel(False), tensors, {}, initial))


def test_value_side_dplr_adjoint_equals_autograd(monkeypatch):
    """RWKV-7 with S[V, K] read as `S @ r` (test_value_side): the core on the transposed state."""
    tensors, initial = random_call(program(RWKV7_WX).spec, SIZES, torch.float64, seed=2,
                                   with_initial_state=True)
    tensors["kk"] = F.normalize(tensors["kk"], dim=-1)
    initial = {n: s.double() for n, s in initial.items()}

    def kernel(adjoint):
        return program(RWKV7_WX).kernel("torch", chunk_size=4, adjoint=adjoint)

    fn = kernel(True)
    calls = counting_backward(fn.module, monkeypatch, "_ChunkDplrAdjoint")
    got = gradients_of(fn, tensors, {}, initial)
    assert calls, "the adjoint's backward runs"
    assert_gradients_equal(got, gradients_of(kernel(False), tensors, {}, initial))


def core_results(core, run, tensors):
    """The reads and final state of `run(core, *leaves)` and the gradients of its tensors (the
    leaves; None stays None) under random incoming gradients on both results."""
    leaves = [None if t is None else t.clone().requires_grad_() for t in tensors]
    (o,), final = run(core, *leaves)
    gen = torch.Generator().manual_seed(6)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() \
        + (final * torch.randn(final.shape, generator=gen, dtype=o.dtype)).sum()
    loss.backward()
    return [o.detach(), final.detach()] + [t.grad for t in leaves if t is not None]


def assert_cores_agree(adjoint, plain, run, tensors):
    """The adjoint core's results equal autograd of the plain one's (1e-11); returns them."""
    got, want = core_results(adjoint, run, tensors), core_results(plain, run, tensors)
    for i, (a, b) in enumerate(zip(got, want)):
        assert torch.isfinite(a).all(), i
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11, msg=lambda m: f"result {i}: {m}")
    return got


def core_roles(T, decay, steps, seed, resets=()):
    """Random roles of the core in the call layout, odd dims (K = 5, V = 3), l2-normalised
    erase keys and write keys beta * k; -inf log decays at `resets`."""
    gen = torch.Generator().manual_seed(seed)
    B, H, K, V = 2, 2, 5, 3
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    q = randn(B, T, H, K)
    keys = [F.normalize(randn(B, T, H, K), dim=-1) for _ in range(steps)]
    writes = [torch.sigmoid(randn(B, T, H, 1)) * k for k in keys]
    values = [randn(B, T, H, V) for _ in range(steps)]
    g = None
    if decay != "none":
        g = F.logsigmoid(randn(B, T, H, *((K,) if decay == "keywise" else ())) + 2)
        for t in resets:
            g[:, t] = float("-inf")
    return [q, g, randn(B, H, K, V)] + keys + writes + values


@pytest.mark.parametrize("decay,steps", [("none", 1), ("scalar", 1), ("keywise", 1),
                                         ("scalar", 2), ("none", 3)])
@pytest.mark.parametrize("resets", [(), (0, 5, 6, 19)], ids=["finite", "-inf gates"])
def test_core_gradients_equal_autograd_of_chunk_delta(decay, steps, resets):
    """The core against autograd of the module's own `_chunk_delta`, gate gradients included:
    T = 21 over chunks of 8 (a partial last chunk), J delta steps a token, -inf gates at a
    chunk's start, inside, and twice in a row."""
    if resets and decay == "none":
        pytest.skip("no gate")
    module = seqc.load("kda" if decay == "keywise" else "gated_deltanet").kernel("torch").module
    tensors = core_roles(21, decay, steps, seed=5, resets=resets)

    def run(core, q, g, s, *rest):
        J = len(rest) // 3
        return core([q], rest[:J], rest[J:2 * J], rest[2 * J:], g, s, 8)

    got = assert_cores_agree(module._chunk_delta_adjoint, module._chunk_delta, run, tensors)
    if resets:
        assert (got[3][:, list(resets)] == 0).all(), "a -inf gate gets no gradient"


@pytest.mark.parametrize("name", ["gated_deltanet", "kda", "deltaproduct", "rwkv7", "comba"])
def test_adjoint_saves_a_fraction_of_autograd(name):
    """At T = 256 (one slab, chunks of 8) the adjoint's saved bytes are at most a third of
    autograd's (each saved storage counted once per save: an upper bound for both)."""
    assert_saves_a_third(name)


def dplr_roles(T, decay, unseen, seed, resets=()):
    """Random roles of the DPLR core in the call layout, odd dims (K = 5, V = 3): the erase
    direction a * kk and the key kk (RWKV-7's), one write; log decays -inf at `resets`; the
    unseen part of each step's decay none, the whole of it (RWKV-7) or a part of its own."""
    gen = torch.Generator().manual_seed(seed)
    B, H, K, V = 2, 2, 5, 3
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    kk = F.normalize(randn(B, T, H, K), dim=-1)
    erase = torch.sigmoid(randn(B, T, H, K)) * kk
    g = None
    if decay != "none":
        g = F.logsigmoid(randn(B, T, H, *((K,) if decay == "keywise" else ())) + 2)
        for t in resets:
            g[:, t] = float("-inf")
    hidden = {"none": None, "all": g, "part": None if g is None else 0.5 * g}[unseen]
    return [randn(B, T, H, K), erase, kk, randn(B, T, H, K), randn(B, T, H, V), g, hidden,
            randn(B, H, K, V)]


@pytest.mark.parametrize("decay,unseen", [("none", "none"), ("scalar", "none"),
                                          ("scalar", "all"), ("keywise", "all"),
                                          ("keywise", "part"), ("keywise", "none")])
@pytest.mark.parametrize("resets", [(), (0, 5, 6, 19)], ids=["finite", "-inf gates"])
def test_core_gradients_equal_autograd_of_chunk_dplr(decay, unseen, resets):
    """The DPLR core against autograd of the module's own `_chunk_dplr`, gate gradients
    included: T = 21 over chunks of 8, -inf gates at a chunk's start, inside, twice in a row."""
    if resets and decay == "none":
        pytest.skip("no gate")
    module = seqc.load("rwkv7").kernel("torch").module
    tensors = dplr_roles(21, decay, unseen, seed=5, resets=resets)

    def run(core, q, e, kappa, k, v, g, hidden, s):
        return core([q], e, kappa, [k], [v], g, hidden, s, 8)

    got = assert_cores_agree(module._chunk_dplr_adjoint, module._chunk_dplr, run, tensors)
    if resets:
        assert (got[7][:, list(resets)] == 0).all(), "a -inf gate gets no gradient"


@pytest.mark.parametrize("name", ["gated_deltanet", "rwkv7"])
def test_double_backward_through_the_adjoint_raises(name):
    """Once differentiable, as docs/backends.md says: a second derivative raises rather than
    come back without the core's terms; autograd through the ops (`adjoint=False`) gives one."""
    from test_once_differentiable import second_derivative
    with pytest.raises(RuntimeError, match="once_differentiable"):
        second_derivative(seqc.load(name).kernel("torch", chunk_size=4), name)
    second_derivative(seqc.load(name).kernel("torch", chunk_size=4, adjoint=False), name)
