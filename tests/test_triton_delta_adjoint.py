"""The delta-rule chunk core of the Triton backend and its adjoint kernels (backends/triton/
chunk_delta_core.py.j2, chunk_delta_core.md): S_t = D_t S_{t-1} + w_t (v_t - (D_t S_{t-1})^T k_t)^T,
o_t = S_t^T q_t, with D_t = exp(g_t) for no, a scalar or a key-wise log decay g.

A Triton call of deltanet, gated_deltanet or kda that needs a gradient (seqc/autograd.py)
runs the torch module's prelude under autograd with this core in place of the torch
`_chunk_delta`; here the core is checked on its own against the torch `_chunk_delta`'s autograd
(fp64, rtol 1e-10) and through whole specs against the reference's autograd (fp32, rtol 1e-4 as
in test_gradients.py): T not a multiple of the chunk, odd K and V (padded lanes), initial and
final states, strong and -inf log decays. The backward's memory traffic is counted under the
interpreter.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import functools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import seqc  # noqa: E402
from test_triton_chunk_adjoint import (  # noqa: E402
    assert_resets_equal_the_reference, assert_results_match, assert_trains_through_core,
    counted_training_step, log_decay, normal_sampler, without_parallel_cores)

pytestmark = pytest.mark.triton
DELTA_SPECS = ["deltanet", "gated_deltanet", "kda"]
DECAYS = ["none", "scalar", "keywise"]


@functools.lru_cache(maxsize=None)
def modules():
    program = seqc.load("gated_deltanet")
    return program.kernel("triton").module, program.kernel("torch").module


def core_inputs(decay, B=1, T=37, H=2, K=5, V=3, dtype=torch.float64, seed=0, strength=1.0):
    """q, the erase key k (unit norm), the write key w = beta k, v, the log decay, S_0."""
    randn = normal_sampler(seed)
    q, k = randn(B, T, H, K), F.normalize(randn(B, T, H, K), dim=-1)
    w = torch.sigmoid(randn(B, T, H, 1)) * k
    g = log_decay(decay, randn, B, T, H, K, strength)
    tensors = [q, k, w, randn(B, T, H, V), g, 0.5 * randn(B, H, K, V)]
    return [None if t is None else t.to(dtype) for t in tensors]


def core_gradients(core, tensors, chunk_size, seed=1):
    leaves = [None if t is None else t.clone().requires_grad_() for t in tensors]
    q, k, w, v, g, s0 = leaves
    (o,), final = core([q], [k], [w], [v], g, s0, chunk_size)
    gen = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)).sum() \
        + (final * torch.randn(final.shape, generator=gen, dtype=torch.float64)
           .to(o.dtype)).sum()
    return [o.detach(), final.detach(),
            *torch.autograd.grad(loss, [t for t in leaves if t is not None])]


def names(decay):
    return ["o", "final state", "dq", "dk", "dw", "dv"] + (["dg"] if decay != "none" else []) \
        + ["ds0"]


@pytest.mark.parametrize("decay", DECAYS)
def test_core_adjoint_matches_torch_autograd_fp64(decay):
    """T = 37 in chunks of 16 (the last one ragged), K = 5 and V = 3 in blocks of 16."""
    triton_module, torch_module = modules()
    tensors = core_inputs(decay)
    got = core_gradients(triton_module.chunk_delta_core, tensors, 16)
    want = core_gradients(torch_module._chunk_delta, tensors, 16)
    assert_results_match(got, want, names(decay), 1e-10)


@pytest.mark.parametrize("decay", ["scalar", "keywise"])
def test_core_adjoint_strong_decays_fp32(decay):
    """Log decays near -8 a step (a chunk of 16 cumulates to about -130): fp32 against fp64."""
    triton_module, torch_module = modules()
    tensors = core_inputs(decay, dtype=torch.float32, seed=3, strength=8.0)
    got = core_gradients(triton_module.chunk_delta_core, tensors, 16)
    want = core_gradients(torch_module._chunk_delta,
                          [None if t is None else t.double() for t in tensors], 16)
    assert_results_match(got, want, names(decay), 1e-4)


@pytest.mark.parametrize("name", DELTA_SPECS)
def test_delta_specs_train_through_the_adjoint_kernels(name, monkeypatch):
    """Forced `chunk_delta` in a module with no parallel form (the stdlib modules have it, and
    train on chunk_delta_parallel_core, forced `chunk_delta` included)."""
    without_parallel_cores(monkeypatch, name)
    assert_trains_through_core(name, "chunk_delta_core", "_DeltaCore", mode="chunk_delta")


@pytest.mark.parametrize("name", ["gated_deltanet", "kda"])
def test_minus_infinity_log_decays(name, monkeypatch):
    """kda's key-wise decay is reset on one lane only."""
    without_parallel_cores(monkeypatch, name)
    assert_resets_equal_the_reference(name, mode="chunk_delta")


def step_inputs(decay, J=2, B=1, T=19, H=2, K=5, V=3, seed=4):
    """q, then J erase keys, write keys and values a token, a scalar log decay with -inf at
    steps 3 and 16 (a chunk's first token at 8 tokens a chunk of 16 steps), S_0; fp64."""
    randn = normal_sampler(seed)
    keys = [F.normalize(randn(B, T, H, K), dim=-1) for _ in range(J)]
    writes = [torch.sigmoid(randn(B, T, H, 1)) * k for k in keys]
    values = [randn(B, T, H, V) for _ in range(J)]
    g = None
    if decay:
        g = F.logsigmoid(randn(B, T, H))
        g[0, 3, 1] = g[0, 16, 0] = float("-inf")
    return randn(B, T, H, K), keys, writes, values, g, 0.5 * randn(B, H, K, V)


def step_gradients(core, tensors, chunk_size, seed=1):
    q, keys, writes, values, g, s0 = tensors
    leaves = [t.clone().requires_grad_() for t in [q, *keys, *writes, *values, s0]]
    g = None if g is None else g.clone().requires_grad_()
    J = len(keys)
    q_, ks, ws, vs, s0_ = leaves[0], leaves[1:1 + J], leaves[1 + J:1 + 2 * J], \
        leaves[1 + 2 * J:1 + 3 * J], leaves[-1]
    (o,), final = core([q_], ks, ws, vs, g, s0_, chunk_size)
    gen = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() \
        + (final * torch.randn(final.shape, generator=gen, dtype=o.dtype)).sum()
    wanted = leaves + ([] if g is None else [g])
    return [o.detach(), final.detach(), *torch.autograd.grad(loss, wanted)]


@pytest.mark.parametrize("decay", [False, True])
def test_several_delta_steps_a_token_match_torch_autograd_fp64(decay):
    """Two delta steps a token (deltaproduct; with a scalar decay and -inf resets, as a gated
    DeltaProduct) through the core as the delta rule over T * 2 steps: T = 19 tokens in chunks of
    16 steps, against the torch `_chunk_delta`'s two-step form."""
    triton_module, torch_module = modules()
    tensors = step_inputs(decay)
    got = step_gradients(triton_module.chunk_delta_core, tensors, 16)
    want = step_gradients(torch_module._chunk_delta, tensors, 8)
    assert_results_match(got, want, [f"result {i}" for i in range(len(want))], 1e-10)


def test_deltaproduct_trains_through_the_adjoint_kernels(monkeypatch):
    """deltaproduct (two delta steps a token) trains through the delta core, its steps
    interleaved (chunk_delta_core.md), no torch recomputation."""
    without_parallel_cores(monkeypatch, "deltaproduct")
    assert_trains_through_core("deltaproduct", "chunk_delta_core", "_DeltaCore", mode="chunk_delta")


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet"])
def test_backward_traffic_within_two_and_a_half_forward_compulsory(name, monkeypatch):
    """Bytes the Triton kernels load and store during `loss.backward()` against the forward
    call's compulsory traffic (inputs read once, outputs and final state written once), dims of
    32, T = 128 in chunks of 64, with an initial state. The training forward reads the write key
    w = beta k besides k (a [K] role a token where the call reads one beta) and stores a state a
    chunk: 1.32x here (1.39x at dims of 64)."""
    without_parallel_cores(monkeypatch, name)
    program = seqc.load(name)
    forward, backward, compulsory = counted_training_step(
        program, {"B": 1, "T": 128, "H": 2, **{d.name: 32 for d in program.spec.dims}},
        mode="chunk_delta")
    assert backward / compulsory <= 2.5, f"{name}: backward {backward / compulsory:.2f}x"
    assert forward / compulsory <= 1.45, f"{name}: training forward {forward / compulsory:.2f}x"


def test_deltaproduct_traffic_reads_its_query_once_a_token(monkeypatch):
    """deltaproduct's two steps a token run as 2T delta steps, but the query, the output and
    their gradients stay one a token (the kernels' STEPS): dims of 32, T = 128 in chunks of 64
    steps, backward 2.51x the call's compulsory bytes (2.97x with a zero query on every other
    step), forward 1.45x (1.75x)."""
    without_parallel_cores(monkeypatch, "deltaproduct")
    program = seqc.load("deltaproduct")
    forward, backward, compulsory = counted_training_step(
        program, {"B": 1, "T": 128, "H": 2, **{d.name: 32 for d in program.spec.dims}},
        mode="chunk_delta")
    assert backward / compulsory <= 2.55, f"backward {backward / compulsory:.2f}x"
    assert forward / compulsory <= 1.5, f"training forward {forward / compulsory:.2f}x"
