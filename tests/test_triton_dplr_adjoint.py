"""The diagonal-plus-low-rank chunk core of the Triton backend and its adjoint kernels
(backends/triton/chunk_dplr_core.py.j2, chunk_dplr_core.md):
S_t = diag(exp d_t) S_{t-1} - e_t u_t^T + k_t v_t^T, u_t = kp_t^T diag(exp(d_t - unseen_t)) S_{t-1},
o_t = S_t^T q_t, with no, a scalar or a key-wise log decay d and unseen part.

A Triton call of rwkv7 that needs a gradient (seqc/autograd.py) runs the torch module's
prelude under autograd with this core in place of the torch `_chunk_dplr`; here the core is
checked on its own against the torch `_chunk_dplr`'s autograd (fp64, rtol 1e-10) and through
whole specs against the reference's autograd (fp32, rtol 1e-4): T not a multiple of the chunk,
odd K and V (padded lanes), initial and final states, strong and -inf log decays.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import functools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import seqc  # noqa: E402
from test_triton_chunk_adjoint import (  # noqa: E402
    assert_resets_equal_the_reference, assert_trains_through_core, without_parallel_cores)

pytestmark = pytest.mark.triton
DPLR_SPECS = ["rwkv7"]
# (log decay, unseen): rwkv7's key-wise decay its key does not see, a scalar one seen (comba's
# before it proved the delta rule with two keys),
# a key-wise decay seen, a scalar one unseen, no decay
GATES = [("keywise", "all"), ("scalar", "none"), ("keywise", "none"), ("scalar", "all"),
         ("none", "none"), ("keywise", "half")]


@functools.lru_cache(maxsize=None)
def modules():
    program = seqc.load("rwkv7")
    return program.kernel("triton").module, program.kernel("torch").module


def core_inputs(decay, unseen, B=1, T=37, H=2, K=5, V=3, dtype=torch.float64, seed=0,
                strength=1.0):
    """q, the erase direction e = a * kk, the key kk (unit norm), the write key k, v, the log
    decay, its unseen part, S_0."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    kk = F.normalize(randn(B, T, H, K), dim=-1)
    e = torch.sigmoid(randn(B, T, H, K)) * kk
    shape = {"none": None, "scalar": (B, T, H), "keywise": (B, T, H, K)}[decay]
    g = None if shape is None else F.logsigmoid(randn(*shape)) * strength
    un = {"none": None, "all": g, "half": None if g is None else g / 2}[unseen]
    tensors = [randn(B, T, H, K), e, kk, randn(B, T, H, K) / K ** 0.5, randn(B, T, H, V), g, un,
               0.5 * randn(B, H, K, V)]
    return [None if t is None else t.to(dtype) for t in tensors]


def core_gradients(core, tensors, chunk_size, seed=1):
    leaves = [None if t is None else t.clone().requires_grad_() for t in tensors]
    q, e, kk, k, v, g, un, s0 = leaves
    (o,), final = core([q], e, kk, [k], [v], g, un, s0, chunk_size)
    gen = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)).sum() \
        + (final * torch.randn(final.shape, generator=gen, dtype=torch.float64)
           .to(o.dtype)).sum()
    names = ["o", "final state", "dq", "de", "dkk", "dk", "dv", "dg", "dunseen", "ds0"]
    names = [n for n, t in zip(names, [o, final, *leaves]) if t is not None]
    return dict(zip(names, [o.detach(), final.detach(),
                            *torch.autograd.grad(loss, [t for t in leaves if t is not None])]))


def assert_all_close(got, want, rtol):
    assert list(got) == list(want)
    for name in want:
        a, b = got[name].to(want[name].dtype), want[name]
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * max(1.0, b.abs().max().item()),
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("decay,unseen", GATES)
def test_core_adjoint_matches_torch_autograd_fp64(decay, unseen):
    """T = 37 in chunks of 16 (the last one ragged), K = 5 and V = 3 in blocks of 16."""
    triton_module, torch_module = modules()
    tensors = core_inputs(decay, unseen)
    got = core_gradients(triton_module.chunk_dplr_core, tensors, 16)
    want = core_gradients(torch_module._chunk_dplr, tensors, 16)
    assert_all_close(got, want, 1e-10)


@pytest.mark.parametrize("decay,unseen", [("keywise", "all"), ("scalar", "none")])
def test_core_adjoint_strong_decays_fp32(decay, unseen):
    """Log decays near -8 a step (a chunk of 16 cumulates to about -130): fp32 against fp64."""
    triton_module, torch_module = modules()
    tensors = core_inputs(decay, unseen, dtype=torch.float32, seed=3, strength=8.0)
    got = core_gradients(triton_module.chunk_dplr_core, tensors, 16)
    want = core_gradients(torch_module._chunk_dplr,
                          [None if t is None else t.double() for t in tensors], 16)
    assert_all_close(got, want, 1e-4)


@pytest.mark.parametrize("name", DPLR_SPECS)
def test_dplr_specs_train_through_the_adjoint_kernels(name, monkeypatch):
    """Forced `chunk_dplr` in a module with no parallel form (the stdlib modules have it and
    train on chunk_dplr_parallel_core, a forced `chunk_dplr` included)."""
    without_parallel_cores(monkeypatch, name)
    assert_trains_through_core(name, "chunk_dplr_core", "_DplrCore", mode="chunk_dplr")


@pytest.mark.parametrize("name", DPLR_SPECS)
def test_minus_infinity_log_decays(name, monkeypatch):
    """rwkv7's key-wise decay is reset on one lane only (its key reads the state before it);
    through chunk_dplr_core (the parallel core's resets: test_triton_chunk_dplr_parallel_core.py)."""
    without_parallel_cores(monkeypatch, name)
    assert_resets_equal_the_reference(name)
