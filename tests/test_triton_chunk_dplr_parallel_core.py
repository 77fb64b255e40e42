"""The parallel diagonal-plus-low-rank core of the Triton backend, training in the
`chunk_dplr_parallel` mode (backends/triton/chunk_dplr_parallel_core.py.j2,
chunk_dplr_parallel_core.md): forward UT factors per chunk, a state pass keeping the chunk
states and the pseudo-values, an output kernel parallel over chunks; backward the chunk's own
reads, the reverse adjoint state pass, the UT backward on the values, the keys' gradients through
the chunk states (their own kernel beyond 64 value lanes) and a keys kernel parallel over
(chunks, batch x head) for each of the four scores (one kernel for all four beside scalar
gates), the gates' gradients by the reverse cumsum inside each chunk.

Checked on its own against the torch `_chunk_dplr`'s autograd (fp64, rtol 1e-10: the same sums
in another order) with T = 37 (the last chunk ragged), chunks of 16 and 32 (sub-chunks of 16:
the re-anchored path below the diagonal), odd dims and dims beyond one block (K = 20: two key
blocks of 16; V = 66: two value blocks), every kind of decay and unseen part, an initial state
and the final state's gradient, -inf and very negative log decays; and through rwkv7 against the
reference's autograd (fp32, rtol 1e-4; comba, a scalar decay seen, proves the two-key delta rule
now: tests/test_two_key_delta.py).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import functools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from test_triton_chunk_adjoint import (  # noqa: E402
    assert_resets_equal_the_reference, assert_trains_through_core, counted_training_step)
from test_triton_chunk_parallel_core import (  # noqa: E402
    parallel_core_backwards as chunk_parallel_core_backwards)
from test_triton_dplr_adjoint import (  # noqa: E402
    DPLR_SPECS, assert_all_close, core_gradients, core_inputs, modules)
from training_cores import assert_training_follows_the_mode, set_log_decay  # noqa: E402

pytestmark = pytest.mark.triton
MODE = "chunk_dplr_parallel"


def parallel_core(dtype, **options):
    return functools.partial(modules()[0].chunk_dplr_parallel_core, dot_dtype=dtype, **options)


def parallel_core_backwards(name):
    """The calls of `name`'s _ChunkDplrParallelCore.backward inside the block (a list)."""
    return chunk_parallel_core_backwards(name, "_ChunkDplrParallelCore")


@pytest.mark.parametrize("decay, unseen, K, V, chunk", [
    ("keywise", "half", 5, 3, 32),         # part of a key-wise decay unseen; sub-chunks of 16
    ("scalar", "all", 20, 66, 32)])        # two key blocks of 16, two value blocks
def test_core_adjoint_matches_torch_autograd_fp64(decay, unseen, K, V, chunk):
    """Every output, the final state and every gradient (q, the erase direction, the reading
    and write keys, v, the log decay, its unseen part, the initial state) under a random
    incoming gradient of o and of the final state. (rwkv7's gates, a key-wise decay all unseen:
    the -inf test below; a scalar one seen: comba's before it proved the delta rule. Every gate kind was checked
    the same way while the kernels were written, fp64 errors 2e-16 to 7e-16.)"""
    tensors = core_inputs(decay, unseen, K=K, V=V)
    got = core_gradients(parallel_core(torch.float64), tensors, chunk)
    want = core_gradients(modules()[1]._chunk_dplr, tensors, chunk)
    assert_all_close(got, want, 1e-10)


@pytest.mark.parametrize("decay, unseen", [("keywise", "all")])
def test_minus_infinity_and_very_negative_log_decays(decay, unseen):
    """-inf at step 0 (the first chunk's first step), 5, 16 (a chunk's first step) and 36 (the
    last), on one key lane when key-wise (with the unseen part: rwkv7's key reads the state
    before the reset), and log decays near -8 a step elsewhere (a chunk of 16 cumulates to about
    -130): finite, equal to the torch autograd in fp64, and fp32 (ieee dots) within 1e-4."""
    tensors = core_inputs(decay, unseen, seed=3, strength=8.0)
    set_log_decay(tensors[5], (0, 5, 16, 36), float("-inf"))
    if unseen == "all":
        tensors[6] = tensors[5]
    want = core_gradients(modules()[1]._chunk_dplr, tensors, 16)
    got = core_gradients(parallel_core(torch.float64), tensors, 16)
    assert_all_close(got, want, 1e-10)
    single = [None if t is None else t.float() for t in tensors]
    got = core_gradients(parallel_core(None, precision="ieee"), single, 16)
    assert_all_close(got, want, 1e-4)


@pytest.mark.parametrize("name", DPLR_SPECS)
def test_dplr_specs_train_through_the_parallel_core(name):
    """`mode=None` trains in chunk_dplr_parallel (its core fits a GPU, chunk_dplr_core's does
    not): the backward is _ChunkDplrParallelCore's, gradients of every input, param and initial
    state equal the reference's (fp32, rtol 1e-4; T = 37 in chunks of 16, dims of 5)."""
    assert_trains_through_core(name, "chunk_dplr_core", "_ChunkDplrParallelCore")


def test_minus_infinity_log_decays_through_rwkv7():
    """-inf at steps 3, 16, 20 and 36 on one key lane through the parallel core's adjoint."""
    with parallel_core_backwards("rwkv7") as calls:
        assert_resets_equal_the_reference("rwkv7")
    assert len(calls) == 1


def test_training_follows_the_mode():
    """chunk_dplr_parallel (mode=None at any B x H, or forced) trains on the parallel core with
    the call's 16-bit dtype for its dots; so does a forced `chunk_dplr` (its forward stays the
    single kernel: seqc/autograd.py `single_to_parallel`); a forced `fused_recurrent` on no core."""
    assert_training_follows_the_mode("rwkv7", "chunk_dplr_core", "chunk_dplr", MODE)


def test_bf16_training_dots_in_bf16():
    """A bf16 call: the kernels get q, e, kp, k, v in bf16 (rounded once) and keep the factors
    they form (A, M, w, the pseudo-values) in bf16, and the chunk states h (the running state
    fp32 in the state pass); gradients within bf16 rounding of the fp32 ones."""
    tensors = core_inputs("keywise", "all", dtype=torch.float32, K=16, V=16, seed=4)
    q, e, kk, k, v, g, un, s0 = tensors
    q = q.clone().requires_grad_()
    (o,), final = parallel_core(torch.bfloat16)([q], e, kk, [k], [v], g, un, s0, 16)
    saved = o.grad_fn.next_functions[0][0].saved_tensors
    assert [t.dtype for t in saved[:5]] == [torch.bfloat16] * 5         # q, e, kp, k, v
    assert [t.dtype for t in saved[8:12]] == [torch.bfloat16] * 4       # A, M, w, u
    assert saved[7].dtype == torch.bfloat16 and o.dtype == torch.float32  # h
    got = core_gradients(parallel_core(torch.bfloat16), tensors, 16)
    want = core_gradients(parallel_core(None, precision="ieee"), tensors, 16)
    for name in want:
        a, b = got[name], want[name]
        assert a.dtype == torch.float32, name
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.03 * max(1.0, b.abs().max().item()),
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("name, bounds", [("rwkv7", (3.9, 10.3))])
def test_traffic(name, bounds):
    """Bytes the kernels move during the training forward and `loss.backward()` against the
    call's compulsory bytes, dims of 32, T = 64 (one chunk), fp32, an initial state: measured
    forward 3.88x, backward 10.26x (comba's were 4.16x and 9.27x while it ran here; 11.38x and
    13.62x before the sides
    formed the state reads and comba's keys and local reads took scalar kernels; docs/benchmarks.md, "Backward
    traffic of chunk_dplr_parallel: the state reads in the keys kernels", has them at dims 64,
    T = 128, and says where the bytes go; scripts/kernel_traffic.py counts them per kernel and
    buffer)."""
    program = seqc.load(name)
    with parallel_core_backwards(name) as calls:
        forward, backward, compulsory = counted_training_step(
            program, {"B": 1, "T": 64, "H": 2, **{d.name: 32 for d in program.spec.dims}})
    assert len(calls) == 1
    assert forward / compulsory <= bounds[0], f"forward {forward / compulsory:.2f}x"
    assert backward / compulsory <= bounds[1], f"backward {backward / compulsory:.2f}x"


def test_gpu_check_lists_the_training_kernels(tmp_path, monkeypatch):
    """`seqc gpu-check` records the parallel core's launches under `chunk_dplr_parallel
    training` / `chunk_dplr_parallel backward` at their grids (without compiling: cached_only;
    the torch module runs time in slabs of 1024 steps, 16 chunks of 64; rwkv7's side kernels
    form the state reads themselves at V = 64: no `_dpc_bwd_reads_kernel`)."""
    from seqc.gpu_jobs import DEFAULT_SHAPE, spec_jobs
    from seqc.gpu_workers import run_jobs
    monkeypatch.setenv("SEQC_CACHE_DIR", str(tmp_path / "cache"))
    jobs = spec_jobs(seqc.load("rwkv7"), {"*": 64}, DEFAULT_SHAPE, [90], ["bf16"])
    for job in jobs:
        job.cached_only = True
        job.modes = [MODE]
    launches = [(c.result["mode"], c.result["kernel"], c.result["grid"])
                for c in run_jobs(jobs, workers=1, timeout=300)]
    training = [launch for launch in launches if launch[0].endswith((" training", " backward"))]
    assert sorted(training) == sorted([
        (f"{MODE} training", "_dpc_prepare_kernel", [16, 64]),
        (f"{MODE} training", "_dpc_state_kernel", [1, 64]),
        (f"{MODE} training", "_dpc_output_kernel", [2, 16, 64]),
        (f"{MODE} backward", "_dpc_bwd_local_kernel", [16, 64]),
        (f"{MODE} backward", "_dpc_bwd_state_kernel", [1, 64]),
        (f"{MODE} backward", "_dpc_bwd_ut_kernel", [16, 64]),
    ] + [(f"{MODE} backward", "_dpc_bwd_side_kernel", [16, 64])] * 4), launches


def test_the_training_kernels_fit_sm_90a_at_k_v_64():
    """`seqc gpu-check` (the suite's gpu-check cache: tests/test_gpu_fitness_families.py compiles
    the same kernels, read back here), rwkv7 in chunk_dplr_parallel (comba's training kernels are
    these with a scalar decay; docs/benchmarks.md has both at 64 and 128 on sm_80 and sm_90a):
    every training kernel compiles for sm_90a at K = V = 64 on bf16 with 0 spill bytes, shared
    memory within the limit, tensor-core instructions and bf16 operands in its dots; all but the
    state passes run at least 2 x 132 programs at B=4, T=4096, H=16."""
    from seqc.gpu_jobs import DEFAULT_SHAPE, spec_jobs
    from seqc.gpu_workers import run_jobs
    jobs = spec_jobs(seqc.load("rwkv7"), {"*": 64}, DEFAULT_SHAPE, [90], ["bf16"])
    for job in jobs:
        job.modes = [MODE]
    checks = [c for c in run_jobs(jobs, workers=1, timeout=900)
              if c.result["mode"].endswith((" training", " backward"))]
    assert len(checks) == 10
    for check in checks:
        assert check.problems() == [] and check.spill == 0, check.result
        assert check.tensor_core > 0 and check.dot16 == "bf16", check.result
        if "state" not in check.result["kernel"]:
            assert check.result["programs"] >= 2 * 132, check.result
