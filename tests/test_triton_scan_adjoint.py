"""The elementwise scan core of the Triton backend and its adjoint kernels (backends/triton/
scan_core.py.j2, scan_core.md): h_t = a_t * h_{t-1} + b_t over every lane of a state.

A Triton call of a spec with a scan group that needs a gradient (seqc/autograd.py) runs the
torch module's prelude under autograd with this core in place of the torch `_scan`; here the
core is checked on its own against the torch `_scan`'s autograd (fp64, rtol 1e-10) and through
whole specs against the reference's autograd (fp32, rtol 1e-4 as in test_gradients.py): T not a
multiple of the block, odd state sizes (padded lanes), initial and final states, zero
coefficients (exp(-inf) gates). The backward's memory traffic is counted under the interpreter.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import functools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from oracles import SPECS, random_inputs, random_state  # noqa: E402
from test_triton_chunk_adjoint import (  # noqa: E402
    assert_call_equals_the_reference, assert_trains_through_core, counted_training_step)

pytestmark = pytest.mark.triton
SCAN_SPECS = ["hgrn", "lru", "mamba", "mingru", "minlstm", "rglru"]
# [B, H, T, *state dims]: a vector state, a matrix state (mamba's [D, N]), a scalar state, and
# more lanes than one lane block holds (two programs along the lanes, the last one ragged)
SHAPES = [(1, 2, 37, 5), (2, 1, 21, 3, 4), (1, 1, 17), (1, 1, 9, 130)]


@functools.lru_cache(maxsize=None)
def modules():
    program = seqc.load("hgrn")
    return program.kernel("triton").module, program.kernel("torch").module


def core_inputs(shape, dtype=torch.float64, seed=0, zeros=()):
    """a in (0, 1) (0 at the steps `zeros`), b and h0 normal."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=gen, dtype=torch.float64)
    for t in zeros:
        if t < shape[2]:
            a[:, :, t] = 0.0
    b = torch.randn(shape, generator=gen, dtype=torch.float64)
    h0 = 0.5 * torch.randn(shape[:2] + shape[3:], generator=gen, dtype=torch.float64)
    return [x.to(dtype) for x in (a, b, h0)]


def core_gradients(core, tensors, chunk_size, seed=1):
    a, b, h0 = (t.clone().requires_grad_() for t in tensors)
    h, final = core(a, b, h0, chunk_size)
    gen = torch.Generator().manual_seed(seed)
    loss = (h * torch.randn(h.shape, generator=gen, dtype=torch.float64).to(h.dtype)).sum() \
        + (final * torch.randn(final.shape, generator=gen, dtype=torch.float64)
           .to(h.dtype)).sum()
    return [h.detach(), final.detach(), *torch.autograd.grad(loss, [a, b, h0])]


def assert_core_close(got, want, rtol, what):
    for name, x, y in zip(["h", "final state", "da", "db", "dh0"], got, want):
        x, y = x.double(), y.double()
        assert torch.isfinite(x).all(), f"{what}: {name} not finite"
        torch.testing.assert_close(x, y, rtol=rtol, atol=rtol * max(1.0, y.abs().max().item()),
                                   msg=lambda m: f"{what}: {name}: {m}")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_core_adjoint_matches_torch_autograd_fp64(shape):
    """T = 37, 21, 17, 9 in blocks of 16 (the last one ragged; T < one block for 9)."""
    triton_module, torch_module = modules()
    tensors = core_inputs(shape, zeros=(3, 16))
    got = core_gradients(triton_module.scan_core, tensors, 16)
    want = core_gradients(torch_module._scan, tensors, 16)
    assert_core_close(got, want, 1e-10, f"shape {shape}")


def test_core_adjoint_without_the_final_state_gradient():
    """Only the h_t are used (the final state gets no gradient): the adjoint starts from 0."""
    triton_module, torch_module = modules()
    results = []
    for core in (triton_module.scan_core, torch_module._scan):
        a, b, h0 = (t.clone().requires_grad_() for t in core_inputs((1, 2, 37, 5), seed=4))
        h, _ = core(a, b, h0, 16)
        results.append(torch.autograd.grad((h * h).sum(), [a, b, h0]))
    assert_core_close(*results, 1e-10, "no final-state gradient")


def test_core_fp32_against_fp64():
    """fp32 (fp32 accumulators) against the fp64 torch autograd."""
    triton_module, torch_module = modules()
    tensors = core_inputs((2, 2, 45, 7), seed=2)
    got = core_gradients(triton_module.scan_core, [t.float() for t in tensors], 16)
    want = core_gradients(torch_module._scan, tensors, 16)
    assert_core_close(got, want, 1e-5, "fp32")


@pytest.mark.parametrize("name", SCAN_SPECS + ["mlstm"])
def test_scan_specs_train_through_the_adjoint_kernels(name):
    """Every scan spec, and mlstm (its normaliser is a scan group beside its chunk group)."""
    assert_trains_through_core(name, "scan_core", "_ScanCore")


ZERO_TRANSITIONS = {            # the input that makes the coefficient 0, and its value
    "hgrn": ("g", float("-inf")),          # exp(g)
    "mingru": ("xz", float("inf")),        # 1 - sigmoid(xz)
    "minlstm": ("xf", float("-inf")),      # f / (f + i), f = sigmoid(xf)
}


@pytest.mark.parametrize("name", sorted(ZERO_TRANSITIONS))
def test_zero_transitions(name):
    """A coefficient of exactly 0 (the state forgotten) at step 3 (inside the first block), 16
    (a block's first step), 20 and 36 (the last step), on one lane: outputs, final state and
    every gradient finite and equal to the reference's."""
    program = seqc.load(name)
    dims = {d: 5 for d in SPECS[name].dims}
    x, p = random_inputs(name, 1, 37, 2, dims=dims, seed=13)
    s = random_state(name, 1, 2, dims=dims, seed=13)
    tensor, value = ZERO_TRANSITIONS[name]
    for t in (3, 16, 20, 36):
        x[tensor][0, t, 1, 2] = value
    kernel = program.kernel("triton", chunk_size=16)
    assert_call_equals_the_reference(program, kernel, x, p, s, f"{name} with zero transitions")


# forward bound: lru's coefficient is a param, read once by the call but once a step by the core
TRAFFIC_SPECS = {"hgrn": 1.3, "minlstm": 1.3, "lru": 1.55}


@pytest.mark.parametrize("name", sorted(TRAFFIC_SPECS))
def test_backward_traffic_within_two_and_a_half_forward_compulsory(name):
    """Bytes the Triton kernels load and store during `loss.backward()` against the forward
    call's compulsory traffic (inputs and params read once, outputs and final state written
    once), D = 16, T = 128 in blocks of 64, with an initial state."""
    program = seqc.load(name)
    forward, backward, compulsory = counted_training_step(
        program, {"B": 1, "T": 128, "H": 2, **{d.name: 16 for d in program.spec.dims}})
    assert backward / compulsory <= 2.5, f"{name}: backward {backward / compulsory:.2f}x"
    assert forward / compulsory <= TRAFFIC_SPECS[name], \
        f"{name}: training forward {forward / compulsory:.2f}x"


def test_mamba_backward_traffic_against_the_core_compulsory():
    """mamba's scan roles are [D, N] a step (exp(dt A), dt x B), computed by its prelude from
    [D] and [N] inputs: against the core's own compulsory traffic (a, b and the initial state
    read, every h_t and the final state written once) the backward moves at most 2.5x."""
    program = seqc.load("mamba")
    B, T, H, D, N = 1, 128, 2, 8, 4
    forward, backward, _ = counted_training_step(program, dict(B=B, T=T, H=H, D=D, N=N))
    core = 4 * (3 * B * H * T * D * N + 2 * B * H * D * N)
    assert backward / core <= 2.5, f"backward {backward / core:.2f}x the core's compulsory"
    assert forward / core <= 1.3, f"forward {forward / core:.2f}x the core's compulsory"
