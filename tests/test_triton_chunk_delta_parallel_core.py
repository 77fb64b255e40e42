"""The parallel delta-rule core of the Triton backend, training in the `chunk_delta_parallel`
mode (backends/triton/chunk_delta_parallel_core.py.j2, chunk_delta_parallel_core.md): forward
WY factors per chunk, a state pass keeping the chunk states (DOT) and the new values, an output
kernel parallel over chunks; backward a local dv kernel, the reverse adjoint state pass, a dq/dw
kernel parallel over (key blocks, chunks, batch x head) and the WY backward (or, up to 64 key
lanes with no or a scalar gate, one kernel for both), the gates' gradients by the reverse cumsum
inside each chunk.

Checked on its own against the torch `_chunk_delta`'s autograd (fp64, rtol 1e-10: the same sums
in another order) with T = 37 (the last chunk ragged), chunks of 16 and 32 (sub-chunks of 16:
the key-wise off-diagonal path), dims beyond one block (K = 70, V = 66; key-wise K = 20, two
blocks of 16), an initial state and the final state's gradient, -inf log decays; two delta steps
a token; and through every delta spec against the reference's autograd (fp32, rtol 1e-4). No
or a scalar gate at K = 5 takes the adjoint state pass that forms the local dv itself, at K = 70
the local dv kernel.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import functools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from test_triton_chunk_adjoint import (  # noqa: E402
    assert_resets_equal_the_reference, assert_results_match, assert_trains_through_core,
    counted_training_step)
from test_triton_chunk_parallel_core import (  # noqa: E402
    parallel_core_backwards as chunk_parallel_core_backwards)
from test_triton_delta_adjoint import (  # noqa: E402
    core_gradients, core_inputs, modules, names, step_gradients, step_inputs)
from training_cores import (  # noqa: E402
    assert_training_follows_the_mode, recorded_launches, set_log_decay)

pytestmark = pytest.mark.triton
DELTA_SPECS = ["deltanet", "gated_deltanet", "kda", "deltaproduct"]


def parallel_core(dtype, **options):
    return functools.partial(modules()[0].chunk_delta_parallel_core, dot_dtype=dtype, **options)


def parallel_core_backwards(name):
    """The calls of `name`'s _ChunkDeltaParallelCore.backward inside the block (a list)."""
    return chunk_parallel_core_backwards(name, "_ChunkDeltaParallelCore")


@pytest.mark.parametrize("decay, K, V, chunk", [
    ("none", 5, 3, 32), ("scalar", 5, 3, 32), ("keywise", 5, 3, 16), ("keywise", 5, 3, 32),
    ("none", 70, 66, 16), ("scalar", 70, 66, 16), ("keywise", 20, 66, 32),
    ("scalar", 130, 40, 16), ("keywise", 130, 40, 16)])
def test_core_adjoint_matches_torch_autograd_fp64(decay, K, V, chunk):
    """Every output, the final state and every gradient (q, the erase and write keys, v, the
    log decay, the initial state) under a random incoming gradient of o and of the final state.
    K = 70 is two key blocks of 64 (the scalar gate's per-block gradient shares summed), V = 66
    two value blocks; a key-wise K = 20 two blocks of 16; K = 130 holds 256 key lanes in the
    state passes, whose adjoint runs value blocks of 32 (16 beside a key-wise gate)."""
    tensors = core_inputs(decay, K=K, V=V)
    got = core_gradients(parallel_core(torch.float64), tensors, chunk)
    want = core_gradients(modules()[1]._chunk_delta, tensors, chunk)
    assert_results_match(got, want, [f"{decay}: {n}" for n in names(decay)], 1e-10)


def test_fused_keys_kernel_matches_the_two_kernels(monkeypatch):
    """Up to 64 key lanes with no or a scalar gate, one kernel forms dq, dk, dw, dv and dg
    (_cdp_bwd_keys_kernel: dL = -dv vn^T, chunk_delta_parallel_core_keys.md); with it turned
    off, the dq/dw kernel and the WY backward: the same results (fp64, rtol 1e-10), -inf log
    decays at a chunk's first and last steps, T = 20 (the last chunk ragged)."""
    module = modules()[0]
    tensors = core_inputs("scalar", T=20, seed=7)
    set_log_decay(tensors[4], (0, 15, 16), float("-inf"))
    with recorded_launches(module, "_cdp_bwd_keys_kernel", len) as fused:
        got = core_gradients(parallel_core(torch.float64), tensors, 16)
    blocks = module._cdp_blocks
    monkeypatch.setattr(module, "_cdp_blocks", lambda *a: {**blocks(*a), "fuse_keys": False})
    with recorded_launches(module, "_cdp_bwd_wy_kernel", len) as apart:
        want = core_gradients(parallel_core(torch.float64), tensors, 16)
    assert len(fused) == 1 and len(apart) == 1
    assert_results_match(got, want, names("scalar"), 1e-10)


@pytest.mark.parametrize("decay", ["scalar", "keywise"])
def test_minus_infinity_and_very_negative_log_decays(decay):
    """-inf at step 0 (the first chunk's first step), 5, 16 (a chunk's first step) and 36
    (the last), on one key lane when key-wise, and log decays near -8 a step elsewhere (a chunk
    of 16 cumulates to about -130): finite, equal to the torch autograd in fp64, and fp32 (ieee
    dots) within 1e-4 of it."""
    tensors = core_inputs(decay, seed=3, strength=8.0)
    set_log_decay(tensors[4], (0, 5, 16, 36), float("-inf"))
    want = core_gradients(modules()[1]._chunk_delta, tensors, 16)
    got = core_gradients(parallel_core(torch.float64), tensors, 16)
    assert_results_match(got, want, names(decay), 1e-10)
    single = [None if t is None else t.float() for t in tensors]
    got = core_gradients(parallel_core(None, precision="ieee"), single, 16)
    assert_results_match(got, want, names(decay), 1e-4)


@pytest.mark.parametrize("decay", [False, True])
def test_two_delta_steps_a_token_match_torch_autograd_fp64(decay):
    """Two delta steps a token (deltaproduct; with a scalar decay and -inf resets) as the delta
    rule over T * 2 steps, the query and its gradient on each token's last step: T = 19 tokens
    in chunks of 16 steps, against the torch `_chunk_delta`'s two-step form."""
    tensors = step_inputs(decay)
    got = step_gradients(parallel_core(torch.float64), tensors, 16)
    want = step_gradients(modules()[1]._chunk_delta, tensors, 8)
    assert_results_match(got, want, [f"result {i}" for i in range(len(want))], 1e-10)


@pytest.mark.parametrize("name", DELTA_SPECS)
def test_delta_specs_train_through_the_parallel_core(name):
    """`mode=None` trains in chunk_delta_parallel (its core fits a GPU, chunk_delta_core's
    does not): the backward is _ChunkDeltaParallelCore's, gradients of every input, param and
    initial state equal the reference's (fp32, rtol 1e-4)."""
    assert_trains_through_core(name, "chunk_delta_core", "_ChunkDeltaParallelCore")


@pytest.mark.parametrize("name", ["gated_deltanet", "kda"])
def test_minus_infinity_log_decays_through_whole_specs(name):
    """-inf at steps 3, 16, 20 and 36 (kda: on one lane) through the parallel core's adjoint."""
    with parallel_core_backwards(name) as calls:
        assert_resets_equal_the_reference(name)
    assert len(calls) == 1


def test_training_follows_the_mode():
    """chunk_delta_parallel (mode=None at any B x H, or forced) trains on the parallel core with
    the call's 16-bit dtype for its dots, and so does a forced `chunk_delta`; a forced
    `fused_recurrent` on no core."""
    assert_training_follows_the_mode("gated_deltanet", "chunk_delta_core", "chunk_delta", "chunk_delta_parallel")


@pytest.mark.parametrize("decay", ["scalar", "keywise"])
def test_bf16_training_dots_in_bf16(decay):
    """A bf16 call: the core's kernels get q, k, w, v and do in bf16 (rounded once), the factors
    they form rounded to bf16 once; gradients within bf16 rounding of the fp32 ones."""
    module = modules()[0]
    tensors = core_inputs(decay, dtype=torch.float32, K=16, V=16, seed=4)
    def k_and_w(args):
        return args[0].dtype, args[5].dtype

    with recorded_launches(module, "_cdp_prepare_kernel", k_and_w) as seen:
        got = core_gradients(parallel_core(torch.bfloat16), tensors, 32)
    assert seen == [(torch.bfloat16, torch.bfloat16)]
    want = core_gradients(parallel_core(None, precision="ieee"), tensors, 32)
    for label, a, b in zip(names(decay), got, want):
        assert a.dtype == torch.float32, label
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.03 * max(1.0, b.abs().max().item()),
                                   msg=lambda m: f"{label}: {m}")


@pytest.mark.parametrize("name, backward_bound", [("gated_deltanet", 5.21), ("kda", 6.66),
                                                   ("comba", 4.85)])
def test_traffic(name, backward_bound):
    """Bytes the kernels move during the training forward and `loss.backward()` against the
    call's compulsory bytes, dims of 64, T = 128 in chunks of 64, fp32, an initial state:
    measured forward 3.59x and 3.66x, backward 5.20x and 6.65x (comba, its write key apart from
    its erase key: 2.99x and 4.84x, 4.34x before its beta went into the core: the fold kernel
    after the fused keys kernel reads dw and the write key and writes the key's gradient, in
    place of `beta * k` and its backward on the torch side, which this count leaves out; against 4.53x and 7.97x in chunk_dplr_parallel before it
    proved the delta rule; kda 8.48x before its dq/dw
    kernel took one program a chunk over the key blocks, do, vn, dvn read once, and formed dv
    and d(Gamma k) in place of dW; 8.65x before the WY
    backward formed dL = -dv vn^T without dTm; 6.42x before one kernel formed
    the keys' gradients of a scalar gate; 4.19x, 4.16x and 7.60x, 9.65x before the state passes
    took 64 value lanes at K <= 64, the adjoint state pass formed the local dv and the state
    passes a scalar gate's factors). Over issue 11's 2.5x: chunk_delta_parallel_core.md, "Traffic", says where the bytes
    go and what fla's structure moves."""
    program = seqc.load(name)
    with parallel_core_backwards(name) as calls:
        forward, backward, compulsory = counted_training_step(
            program, {"B": 1, "T": 128, "H": 2, **{d.name: 64 for d in program.spec.dims}})
    assert len(calls) == 1
    assert backward / compulsory <= backward_bound, f"backward {backward / compulsory:.2f}x"
    assert forward / compulsory <= 3.7, f"forward {forward / compulsory:.2f}x"


def test_gpu_check_lists_the_training_kernels(tmp_path, monkeypatch):
    """`seqc gpu-check` records the parallel core's launches under `chunk_delta_parallel
    training` / `chunk_delta_parallel backward` at their grids (without compiling:
    cached_only; the torch module runs time in slabs of 1024 steps, 16 chunks of 64). A
    scalar gate's backward launches no local dv kernel: the adjoint state pass forms it; and
    one kernel for the keys' gradients (K = 64)."""
    from seqc.gpu_jobs import DEFAULT_SHAPE, spec_jobs
    from seqc.gpu_workers import run_jobs
    monkeypatch.setenv("SEQC_CACHE_DIR", str(tmp_path / "cache"))
    jobs = spec_jobs(seqc.load("gated_deltanet"), {"*": 64}, DEFAULT_SHAPE, [90], ["bf16"])
    for job in jobs:
        job.cached_only = True
        job.modes = ["chunk_delta_parallel"]
    launches = [(c.result["mode"], c.result["kernel"], c.result["grid"])
                for c in run_jobs(jobs, workers=1, timeout=300)]
    training = [launch for launch in launches if launch[0].endswith((" training", " backward"))]
    assert sorted(training) == sorted([
        ("chunk_delta_parallel training", "_cdp_prepare_kernel", [16, 64]),
        ("chunk_delta_parallel training", "_cdp_state_kernel", [1, 64]),
        ("chunk_delta_parallel training", "_cp_fwd_output_kernel", [1, 16, 64]),
        ("chunk_delta_parallel backward", "_cdp_bwd_state_kernel", [2, 64]),
        ("chunk_delta_parallel backward", "_cdp_bwd_keys_kernel", [16, 64]),
    ]), launches
