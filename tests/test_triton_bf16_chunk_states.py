"""The chunk states of a 16-bit training step in the dot dtype (chunk_parallel_core.md and
chunk_delta_parallel_core.md, "dtypes"): with 16-bit dots the forward state pass stores the
boundary states h [B, H, NT, K, V] and the adjoint pass the state gradients dh in that dtype
(the running state held in fp32, each boundary's copy rounded by its store), as fla's
chunk_fwd_h / chunk_bwd_dh do; an fp32 call keeps fp32 states; the final state and the initial
state's gradient stay fp32.

Under the interpreter (which computes bf16 as a GPU does), tiny shapes, T spanning several
chunks (the states of every chunk but the first are read back): the dtypes of the state buffers
each state pass is launched with, every output and gradient of a bf16 core within 2% of the
magnitude of an fp32 (ieee) core's on the same bf16-exact values, for each backward path (fused,
fused key-wise, wide, the dv and dq/dk kernels; the delta core's fused keys kernel and its dq/dw
chunk kernel), and the bytes a bf16 training step adds from T to 2T (benchmarks/fla_traffic.py
--slope) at dims 32.
"""
import functools
import importlib.util
import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import test_triton_chunk_adjoint as chunk  # noqa: E402
import test_triton_delta_adjoint as delta  # noqa: E402
from training_cores import recorded_launches  # noqa: E402

pytestmark = pytest.mark.triton
BF16, FP32 = torch.bfloat16, torch.float32


def bf16_exact(tensors):
    """The inputs rounded to bf16 and held in fp32: both calls see the same values."""
    return [None if t is None else t.to(BF16).float() for t in tensors]


def assert_within_bf16(got, want, labels):
    """Each result finite, in the fp32 call's dtype, within 2% of the magnitude of its fp32."""
    for label, a, b in zip(labels, got, want):
        assert a.dtype == b.dtype == FP32, label
        assert torch.isfinite(a).all(), label
        assert (a - b).abs().max() <= 0.02 * b.abs().max(), label


@pytest.mark.parametrize("decay, K, V", [
    ("none", 16, 16), ("scalar", 16, 16), ("keywise", 16, 16),      # fused, fused key-wise
    ("scalar", 16, 100),                                             # wide
    ("scalar", 16, 130), ("keywise", 16, 130)])                      # the dv and dq/dk kernels
def test_chunk_parallel_states_in_the_dot_dtype(decay, K, V):
    module = chunk.modules()[0]
    tensors = bf16_exact(chunk.core_inputs(decay, T=50, K=K, V=V, dtype=FP32, seed=4))
    results = {}
    for dot in (BF16, None):
        core = functools.partial(module.chunk_parallel_core, dot_dtype=dot, precision="ieee")
        with recorded_launches(module, "_cp_state_pass_kernel",
                               lambda args: args[5].dtype) as seen:
            results[dot] = chunk.core_gradients(core, tensors, 16)
        assert seen == [BF16 if dot else FP32] * 2, dot           # h forward, dh backward
    assert_within_bf16(results[BF16], results[None], chunk.names(decay))


@pytest.mark.parametrize("decay, K, V", [("scalar", 16, 16), ("keywise", 16, 16),
                                         ("scalar", 70, 70)])
def test_chunk_delta_parallel_states_in_the_dot_dtype(decay, K, V):
    """K = 16 with a scalar gate: the fused keys kernel; key-wise: the dq/dw chunk kernel and
    the WY backward; K = V = 70: the local dv kernel, the dq/dw kernel over value blocks of 16
    (bf16; 32 fp32) and the WY backward."""
    module = delta.modules()[0]
    tensors = bf16_exact(delta.core_inputs(decay, T=50, K=K, V=V, dtype=FP32, seed=4))
    results = {}
    for dot in (BF16, None):
        core = functools.partial(module.chunk_delta_parallel_core, dot_dtype=dot,
                                 precision="ieee")
        with recorded_launches(module, "_cdp_state_kernel", lambda args: args[5].dtype) as h, \
                recorded_launches(module, "_cdp_bwd_state_kernel",
                                  lambda args: args[9].dtype) as dh:
            results[dot] = delta.core_gradients(core, tensors, 16)
        assert h + dh == [BF16 if dot else FP32] * 2, dot
    assert_within_bf16(results[BF16], results[None], delta.names(decay))


def test_bf16_training_step_slope_bytes():
    """simple_gla at dims 32, bf16, the steps from T = 64 to 128 (one chunk of 64 more): the
    Triton kernels of a training step move at most 4.9x the compulsory bytes they add (4.67x:
    forward 2.02x, backward 2.65x; with fp32 chunk states 5.29x: 2.26x, 3.02x)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fla_traffic.py"
    spec = importlib.util.spec_from_file_location("fla_traffic", path)
    traffic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(traffic)
    (row,) = [r for r in traffic.slope_rows("simple_gla", 32, 64, BF16, fla=False)
              if r["runner"] == "seqc chunk_parallel"]
    assert row["fwd"] + row["bwd"] <= 4.9
