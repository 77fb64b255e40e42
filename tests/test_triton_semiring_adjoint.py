"""The semiring scan core of the Triton backend and its adjoint kernels (backends/triton/
semiring_scan_core.py.j2, semiring_scan_core.md): h_t = add(h_{t-1} + a_t, b_t) per lane, add
logaddexp (logsumexp) or max (maxplus); the adjoint is the linear scan
lambda_t = dh_t + w_{t+1} lambda_{t+1} with w the softmax weight or the argmax indicator.

Checked on its own against the torch `_semiring_scan`'s autograd (fp64, rtol 1e-10) and through
whole specs against the reference's autograd (fp32, rtol 1e-4): T not a multiple of the block,
odd lane counts, initial states finite and -inf, -inf coefficients (resets) and ties of max-plus.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import functools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from oracles import SPECS, random_inputs, random_state  # noqa: E402
from test_gradients import gradients_of  # noqa: E402
from test_triton_chunk_adjoint import assert_trains_through_core  # noqa: E402
from test_triton_gradients import assert_gradients_equal  # noqa: E402

pytestmark = pytest.mark.triton
SEMIRING_SPECS = ["logsumexp", "maxplus"]
ADD = {"logsumexp": torch.logaddexp, "maxplus": torch.maximum}


@functools.lru_cache(maxsize=None)
def modules(name):
    program = seqc.load(name)
    return program.kernel("triton").module, program.kernel("torch").module


def core_inputs(B=1, H=2, T=37, D=5, seed=0, minus_inf_state=False):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    a, b = randn(B, H, T, D), randn(B, H, T, D)
    a[0, 1, 5, 2] = a[0, 0, 20, 0] = float("-inf")         # resets on one lane
    s0 = torch.full((B, H, D), float("-inf"), dtype=torch.float64) if minus_inf_state \
        else randn(B, H, D)
    return a, b, s0


def core_gradients(core, name, tensors, chunk_size, seed=1):
    leaves = [t.clone().requires_grad_() for t in tensors]
    h, final = core(*leaves, chunk_size, ADD[name])
    gen = torch.Generator().manual_seed(seed)
    loss = (h * torch.randn(h.shape, generator=gen, dtype=h.dtype)).sum() \
        + (final * torch.randn(final.shape, generator=gen, dtype=h.dtype)).sum()
    return [h.detach(), final.detach(), *torch.autograd.grad(loss, leaves)]


@pytest.mark.parametrize("minus_inf_state", [False, True])
@pytest.mark.parametrize("name", SEMIRING_SPECS)
def test_core_adjoint_matches_torch_autograd_fp64(name, minus_inf_state):
    """T = 37 in blocks of 16, 5 lanes in a block of 16; the state from -inf (the specs'
    default) or finite, -inf coefficients on one lane."""
    triton_module, torch_module = modules(name)
    tensors = core_inputs(minus_inf_state=minus_inf_state)
    got = core_gradients(triton_module.semiring_scan_core, name, tensors, 16)
    want = core_gradients(torch_module._semiring_scan, name, tensors, 16)
    for what, a, b in zip(["h", "final", "da", "db", "ds0"], got, want):
        assert not torch.isnan(a).any(), what
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"{what}: {m}")


def test_max_plus_ties_split_the_gradient_as_torch_maximum():
    """a = 0 and b equal to the state: every step ties, and the gradient goes half to each
    term (torch.maximum's rule, the reference's), through the Triton call."""
    program = seqc.load("maxplus")
    B, T, H, D = 1, 21, 2, 3
    x = {"a": torch.zeros(B, T, H, D), "x": torch.ones(B, T, H, D)}
    s = {"m": torch.ones(B, H, D)}
    got = gradients_of(program.kernel("triton", chunk_size=16), x, {}, s)
    want = gradients_of(program.kernel("reference"), x, {}, s)
    assert_gradients_equal(got, want, "maxplus with ties")


@pytest.mark.parametrize("name", SEMIRING_SPECS)
def test_semiring_specs_train_through_the_adjoint_kernels(name):
    assert_trains_through_core(name, "semiring_scan_core", "_SemiringCore")


@pytest.mark.parametrize("name", SEMIRING_SPECS)
def test_minus_infinity_coefficients(name):
    """-inf coefficients (the carried term dropped) at steps 3, 16, 20 and 36 on one lane:
    gradients finite and equal to the reference's."""
    program = seqc.load(name)
    dims = {d: 5 for d in SPECS[name].dims}
    x, p = random_inputs(name, 1, 37, 2, dims=dims, seed=13)
    s = random_state(name, 1, 2, dims=dims, seed=13)
    coefficient = "la" if name == "logsumexp" else "a"
    for t in (3, 16, 20, 36):
        x[coefficient][0, t, 1, 2] = float("-inf")
    got = gradients_of(program.kernel("triton", chunk_size=16), x, p, s)
    want = gradients_of(program.kernel("reference"), x, p, s)
    assert_gradients_equal(got, want, f"{name} with -inf coefficients")
