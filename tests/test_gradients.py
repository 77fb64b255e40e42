"""Gradients of the torch backend: torch.autograd.gradcheck in fp64 on tiny shapes for one spec of
each family, and gradients equal to the reference backend's on every stdlib spec.

Tolerance for the backend-vs-reference gradients (fp32): rtol = 1e-4 relative to the largest
gradient of the tensor (atol = rtol * max(1, max |grad|)); gradients of a chunked form sum the
same terms in another order, so they differ by rounding a little more than the forward does.
"""
import functools

import pytest
import torch

from oracles import SPECS, random_inputs, random_state

NAMES = sorted(SPECS)
GRAD_RTOL = 1e-4
ONE_PER_FAMILY = {"chunk": "gla", "chunk (scalar decay)": "simple_gla",
                  "chunk_delta": "gated_deltanet", "chunk_delta (two steps)": "deltaproduct",
                  "chunk_delta (key-wise)": "kda", "chunk_dplr": "rwkv7",
                  "scan": "hgrn", "semiring": "logsumexp", "sequential": "gru"}


@functools.lru_cache(maxsize=None)
def kernel(name, backend, **options):
    import seqc
    return seqc.load(name).kernel(backend=backend, **options)


@pytest.mark.parametrize("family", sorted(ONE_PER_FAMILY))
def test_gradcheck(family):
    name = ONE_PER_FAMILY[family]
    dims = {d: 3 for d in SPECS[name].dims}
    x, p = random_inputs(name, 1, 5, 1, dims=dims, dtype=torch.float64, seed=1)
    s = {n: t.double() for n, t in random_state(name, 1, 1, dims=dims, seed=1).items()}
    names = list(x) + list(p)
    fn = kernel(name, "torch", chunk_size=2)

    def f(*tensors):
        values = dict(zip(names, tensors[:len(names)]))
        state = dict(zip(s, tensors[len(names):]))
        out = fn(**values, initial_state=state, output_final_state=True)
        return (*(out[n] for n in out.keys()), *out.final_state.values())

    leaves = [t.clone().requires_grad_() for t in (*x.values(), *p.values(), *s.values())]
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


def gradients(name, backend, x, p, s):
    return gradients_of(kernel(name, backend, **({"chunk_size": 16} if backend == "torch" else {})),
                        x, p, s)


def gradients_of(fn, x, p, s):
    """Gradients of inputs, params and initial state under a random incoming gradient on every
    output and every finite final state (a fixed seed)."""
    leaves = {n: t.clone().requires_grad_() for n, t in {**x, **p}.items()}
    state = {n: t.clone().requires_grad_() for n, t in s.items()} if s else None
    out = fn(**leaves, initial_state=state, output_final_state=True)
    gen = torch.Generator().manual_seed(7)
    loss = sum((out[n] * torch.randn(out[n].shape, generator=gen)).sum() for n in out.keys())
    loss = loss + sum((v * torch.randn(v.shape, generator=gen)).sum()
                      for v in out.final_state.values() if torch.isfinite(v).all())
    loss.backward()
    grads = {n: t.grad for n, t in leaves.items()}
    grads.update({f"initial {n}": t.grad for n, t in (state or {}).items()})
    return grads


@pytest.mark.parametrize("init", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_reference(name, init):
    x, p = random_inputs(name, 2, 37, 2, seed=2)
    s = random_state(name, 2, 2, seed=2) if init else None
    got = gradients(name, "torch", x, p, s)
    want = gradients(name, "reference", x, p, s)
    for n, g in want.items():
        assert got[n] is not None and g is not None, n
        assert torch.isfinite(got[n]).all(), f"gradient of {n} is not finite"
        scale = max(1.0, g.abs().max().item())
        torch.testing.assert_close(got[n], g, rtol=GRAD_RTOL, atol=GRAD_RTOL * scale,
                                   msg=lambda m: f"gradient of {n}: {m}")
