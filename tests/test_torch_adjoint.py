"""The torch backend's derived adjoint cores (`prog.kernel("torch")`, the default; off with
`adjoint=False`; backends/torch/chunk_adjoint.md, scan_adjoint.md): the recurrence runs with no
autograd graph and its backward is the adjoint recurrence computed directly. Gradients must
equal plain autograd through the ops (fp64) for every stdlib chunk and scan spec, with initial
states, slabs and partial chunks; -inf gates;
the core must really replace autograd (its backward runs, and it saves a fraction of the bytes).
"""
import pytest
import torch

from oracles import random_inputs, random_state
from test_gradients import gradients_of

CHUNK_SPECS = ["simple_gla", "retnet", "linear_attn", "mamba2", "gla", "hgrn2", "mlstm", "rwkv6"]
SCAN_SPECS = ["hgrn", "lru", "mamba", "mingru", "minlstm", "rglru", "mlstm"]
SLAB = 16       # steps a slab in these tests (the emitted default is about 1024)


def torch_kernel(name, monkeypatch, **options):
    import seqc
    fn = seqc.load(name).kernel("torch", chunk_size=8, **options)
    monkeypatch.setattr(fn.module, "_slab_steps", lambda dims, chunk_size: SLAB)
    return fn


@pytest.mark.parametrize("name,core", [(n, "_ChunkAdjoint") for n in CHUNK_SPECS]
                         + [(n, "_ScanAdjoint") for n in SCAN_SPECS])
def test_adjoint_gradients_equal_autograd(name, core, monkeypatch):
    x, p = random_inputs(name, 2, 37, 2, dtype=torch.float64, seed=3)
    s = {n: t.double() for n, t in random_state(name, 2, 2, seed=3).items()}
    fn = torch_kernel(name, monkeypatch, adjoint=True)
    function = getattr(fn.module, core)
    backward = function.backward
    calls = []
    monkeypatch.setattr(function, "backward",
                        staticmethod(lambda ctx, *g: calls.append(1) or backward(ctx, *g)))
    got = gradients_of(fn, x, p, s)
    assert len(calls) == -(-37 // SLAB), "the adjoint's backward runs once a slab"
    want = gradients_of(torch_kernel(name, monkeypatch, adjoint=False), x, p, s)
    for n, g in want.items():
        assert got[n] is not None, n
        torch.testing.assert_close(got[n], g, rtol=1e-12, atol=1e-12,
                                   msg=lambda m: f"gradient of {n}: {m}")


def roles(T, keywise, seed, resets=()):
    gen = torch.Generator().manual_seed(seed)
    B, H, K, V = 2, 2, 5, 3
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    q, k, v = randn(B, T, H, K), randn(B, T, H, K), randn(B, T, H, V)
    g = torch.nn.functional.logsigmoid(randn(B, T, H, *((K,) if keywise else ())) + 2)
    for t in resets:
        g[:, t] = float("-inf")
    return q, k, v, g, randn(B, H, K, V)


@pytest.mark.parametrize("keywise", [False, True], ids=["scalar", "key-wise"])
@pytest.mark.parametrize("resets", [(), (0, 5, 6, 19)], ids=["finite", "-inf gates"])
def test_core_gradients_equal_autograd_of_chunk(keywise, resets):
    """The core against autograd of the module's own `_chunk`, gate gradients included; T = 21
    over chunks of 8 (a partial last chunk), -inf gates at a chunk's start, inside, and twice
    in a row."""
    import seqc
    module = seqc.load("gla" if keywise else "simple_gla").kernel("torch").module
    tensors = roles(21, keywise, seed=5, resets=resets)
    gen = torch.Generator().manual_seed(6)

    def grads(core):
        leaves = [t.clone().requires_grad_() for t in tensors]
        q, k, v, g, s = leaves
        (o,), final = core([q], [k], [v], g, s, 8)
        loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() \
            + (final * torch.randn(final.shape, generator=gen, dtype=o.dtype)).sum()
        loss.backward()
        return [o.detach(), final.detach()] + [t.grad for t in leaves]

    gen.manual_seed(6)
    got = grads(module._chunk_adjoint)
    gen.manual_seed(6)
    want = grads(module._chunk)
    names = ["reads", "final state", "dq", "dk", "dv", "dg", "d initial state"]
    for name, a, b in zip(names, got, want):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11, msg=lambda m: f"{name}: {m}")
    if resets:
        assert (got[5][:, list(resets)] == 0).all(), "a -inf gate gets no gradient"


def saved_bytes(fn, x, p):
    total = []

    def pack(t):
        total.append(t.untyped_storage().nbytes())
        return t
    leaves = {n: t.clone().requires_grad_() for n, t in {**x, **p}.items()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(**leaves, output_final_state=True)
    return sum(total), out


@pytest.mark.parametrize("name", ["simple_gla", "gla", "hgrn"])
def test_adjoint_saves_a_fraction_of_autograd(name, monkeypatch):
    """At T = 256 (one slab of 256 steps, chunks of 8) the adjoint's saved bytes are at most a
    third of autograd's (each saved storage counted once per save: an upper bound for both)."""
    assert_saves_a_third(name)


def assert_saves_a_third(name):
    """The adjoint's saved bytes at most a third of autograd's, its outputs autograd's."""
    import seqc
    x, p = random_inputs(name, 1, 256, 2, seed=1)
    plain = seqc.load(name).kernel("torch", chunk_size=8, adjoint=False)
    adjoint = seqc.load(name).kernel("torch", chunk_size=8, adjoint=True)
    want, _ = saved_bytes(plain, x, p)
    got, out = saved_bytes(adjoint, x, p)
    assert got <= want / 3, (got, want)
    with torch.no_grad():
        want_out = plain(**x, **p)
        for n in want_out.keys():
            torch.testing.assert_close(out[n], want_out[n], rtol=1e-5, atol=1e-6)


def test_adjoint_is_inert_without_autograd():
    """Without autograd the option changes nothing: the module's own forms run."""
    import seqc
    x, p = random_inputs("gla", 1, 20, 2, seed=4)
    with torch.no_grad():
        got = seqc.load("gla").kernel("torch", chunk_size=8, adjoint=True)(**x, **p)
        want = seqc.load("gla").kernel("torch", chunk_size=8, adjoint=False)(**x, **p)
    torch.testing.assert_close(got.o, want.o, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["mingru", "mamba"])
def test_scan_adjoint_keeps_no_roles(name):
    """The scan adjoint forms its roles (mingru's `1 - z`, `z xh`; mamba's `exp(dt A)`,
    `dt x B` over [D, N]) inside `_ScanAdjoint` and again in backward: at T = 256 it saves at
    most a sixth of autograd's bytes (keeping the roles, as main did, it saved 0.20-0.21x)."""
    import seqc
    x, p = random_inputs(name, 1, 256, 2, seed=1)
    want, _ = saved_bytes(seqc.load(name).kernel("torch", chunk_size=8, adjoint=False), x, p)
    got, _ = saved_bytes(seqc.load(name).kernel("torch", chunk_size=8, adjoint=True), x, p)
    assert got <= want / 6, (got, want)


@pytest.mark.parametrize("name", ["mingru", "mamba"])
def test_scan_adjoint_gradcheck(name, monkeypatch):
    """torch.autograd.gradcheck of the whole module (adjoint on) on a tiny fp64 case: T = 7 in
    slabs of 4 steps, chunks of 2 (a partial chunk and a partial slab), an initial state."""
    import seqc
    x, p = random_inputs(name, 1, 7, 1, {d: 2 for d in ("D", "N")}, dtype=torch.float64, seed=4)
    s = random_state(name, 1, 1, {d: 2 for d in ("D", "N")}, seed=4)
    fn = seqc.load(name).kernel("torch", chunk_size=2, adjoint=True)
    monkeypatch.setattr(fn.module, "_slab_steps", lambda dims, chunk_size: 4)
    names, state = list({**x, **p}), list(s)

    def outputs(*tensors):
        given = dict(zip(names, tensors[:len(names)]))
        initial = dict(zip(state, tensors[len(names):]))
        out = fn(**given, initial_state=initial, output_final_state=True)
        return tuple(out[n] for n in out.keys()) + tuple(out.final_state.values())
    leaves = [t.clone().requires_grad_() for t in [*x.values(), *p.values()]]
    leaves += [t.double().requires_grad_() for t in s.values()]
    assert torch.autograd.gradcheck(outputs, leaves, eps=1e-6, atol=1e-7)
