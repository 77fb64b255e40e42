"""The torch backend's derived adjoint of the coupled scan (`_coupled_scan_adjoint`, the default;
off with `adjoint=False`; backends/torch/coupled_scan_adjoint.md): the forward keeps no graph and
the backward is the coupled scan run in reverse with the couplings transposed. Its gradients must
equal autograd through the ops of `_coupled_scan` (fp64, 1e-12) for every coupled spec of
test_torch_coupled (no stdlib spec is coupled), with initial states, incoming final-state
gradients, slabs, a partial last chunk and odd dims; the core must really replace autograd (its
backward runs, it saves at most a third of autograd's bytes).
"""
import pytest
import torch

from test_gradients import gradients_of
from test_torch_adjoint import saved_bytes
from test_torch_coupled import SPECS, call, program
from test_torch_delta_adjoint import assert_gradients_equal, counting_backward
from test_torch_semiring_adjoint import assert_gradcheck

CORE = "_CoupledScanAdjoint"
SLAB = 16


def kernel(name, monkeypatch, **options):
    fn = program(name).kernel("torch", chunk_size=8, **options)
    monkeypatch.setattr(fn.module, "_slab_steps", lambda dims, chunk_size: SLAB)
    return fn


@pytest.mark.parametrize("initial", [True, False], ids=["initial state", "declared"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_adjoint_gradients_equal_autograd(name, initial, monkeypatch):
    """T = 37 in slabs of 16 steps and chunks of 8 (a partial last chunk in the last slab);
    B = 2, H = 3, D = 5, E = 2; a loss on every output and every final state."""
    x, s = call(name, 37, torch.float64, initial, seed=2)
    fn = kernel(name, monkeypatch, adjoint=True)
    calls = counting_backward(fn.module, monkeypatch, CORE)
    got = gradients_of(fn, x, {}, s)
    assert len(calls) == -(-37 // SLAB), "the adjoint's backward runs once a slab"
    want = gradients_of(kernel(name, monkeypatch, adjoint=False), x, {}, s)
    unread = {n for n, g in want.items() if g is None}      # lag's v: no state reads it
    assert unread == {n for n, g in got.items() if g is None}
    assert_gradients_equal(got, {n: g for n, g in want.items() if n not in unread})


@pytest.mark.parametrize("chunk_size", [1, 3])
@pytest.mark.parametrize("name", ["momentum", "cross"])
def test_any_chunk_size(name, chunk_size):
    """Chunks of one step and of 3 (T = 11: a partial last one)."""
    x, s = call(name, 11, torch.float64, True, seed=3)
    kernel = lambda adjoint: program(name).kernel("torch", chunk_size=chunk_size, adjoint=adjoint)
    assert_gradients_equal(gradients_of(kernel(True), x, {}, s),
                           gradients_of(kernel(False), x, {}, s))


@pytest.mark.parametrize("name", ["momentum", "lag"])
def test_core_gradients_equal_autograd_of_coupled_scan(name):
    """The core against autograd of `_coupled_scan` itself on random roles: every coupling's,
    offset's and state's gradient, a structural zero staying None, T = 21 over chunks of 8."""
    module = program(name).kernel("torch").module
    gen = torch.Generator().manual_seed(4)
    shape = (2, 3, 21, 5)
    absent = {"momentum": {(0, 1)}, "lag": {(1, 1)}}[name]
    coupling = [[None if (i, j) in absent else 0.9 * torch.rand(shape, generator=gen,
                                                                 dtype=torch.float64)
                 for j in range(2)] for i in range(2)]
    offset = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2)]
    state = [torch.randn(2, 3, 5, generator=gen, dtype=torch.float64) for _ in range(2)]
    weights = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2)]
    last_weights = [torch.randn(2, 3, 5, generator=gen, dtype=torch.float64) for _ in range(2)]

    def results(core):
        leaves = [t.clone().requires_grad_() for t in
                  [x for row in coupling for x in row if x is not None] + offset + state]
        rows = iter(leaves)
        given = [[None if x is None else next(rows) for x in row] for row in coupling]
        h, last = core(given, leaves[-4:-2], leaves[-2:], 8)
        loss = sum((a * w).sum() for a, w in zip(h + last, weights + last_weights))
        loss.backward()
        return [a.detach() for a in h + last] + [t.grad for t in leaves]

    for a, b in zip(results(module._coupled_scan_adjoint), results(module._coupled_scan)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gradcheck():
    x, s = call("cross", 5, torch.float64, True, seed=1)
    x = {n: t[:1, :, :1, :2].clone() for n, t in x.items()}          # B = H = 1, D = 2
    s = {n: t[:1, :1, :2].clone() for n, t in s.items()}
    fn = program("cross").kernel("torch", chunk_size=2)
    assert CORE in fn.module.__dict__
    assert_gradcheck(fn, x, s)


@pytest.mark.parametrize("name", ["momentum", "cross"])
def test_adjoint_saves_a_fraction_of_autograd(name):
    """At T = 256 (one slab, chunks of 8) the adjoint's saved bytes are at most a third of
    autograd's (each saved storage counted once per save: an upper bound for both)."""
    x, _ = call(name, 256, torch.float32, False, seed=1)
    want, _ = saved_bytes(program(name).kernel("torch", chunk_size=8, adjoint=False), x, {})
    got, out = saved_bytes(program(name).kernel("torch", chunk_size=8), x, {})
    assert got <= want / 3, (got, want)
    with torch.no_grad():
        plain = program(name).kernel("torch", chunk_size=8, adjoint=False)(**x)
    for n in plain.keys():
        torch.testing.assert_close(out[n], plain[n], rtol=1e-5, atol=1e-6)


def test_double_backward_through_the_adjoint_raises():
    """Once differentiable: a second derivative raises rather than come back without the core's
    terms; `adjoint=False` gives one."""
    x, _ = call("momentum", 9, torch.float32, False, seed=5)

    def second_derivative(**options):
        leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
        out = program("momentum").kernel("torch", chunk_size=4, **options)(**leaves)
        first = torch.autograd.grad(out.y.square().sum(), list(leaves.values()),
                                    create_graph=True)
        sum(g.square().sum() for g in first).backward()

    with pytest.raises(RuntimeError, match="once_differentiable"):
        second_derivative()
    second_derivative(adjoint=False)
