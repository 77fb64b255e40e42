"""The parallel chunk core of the Triton backend, training in the `chunk_parallel` mode
(backends/triton/chunk_parallel_core.py.j2, chunk_parallel_core.md): forward state pass + output
kernel keeping the chunk states (in the dot dtype), backward an adjoint state pass and dv,
dq/dk/dg kernels (or one fused kernel: a scalar gate or none at K, V <= 64, key-wise at
V <= 128, the wide one for a scalar gate or none at V <= 128) parallel over chunks, gate
gradients by the reverse cumsum inside each chunk.

Checked on its own against the torch `_chunk`'s autograd (fp64, rtol 1e-10: the same sums in
another order) with chunks of 32 (sub-chunks of 16: the key-wise off-diagonal path) and dims
beyond one block (K = 70, V = 66: several key and value blocks, the scalar gate's per-key-block
gradient shares summed), and through whole specs against the reference's autograd (fp32, rtol
1e-4), with -inf log decays (hard resets) inside a chunk and at a chunk's first step.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import contextlib  # noqa: E402
import functools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from test_triton_chunk_adjoint import (  # noqa: E402
    assert_resets_equal_the_reference, assert_trains_through_core, core_gradients, core_inputs,
    assert_results_match, counted_training_step, modules, names)
from training_cores import (  # noqa: E402
    assert_training_follows_the_mode, recorded_launches)

pytestmark = pytest.mark.triton
PARALLEL_SPECS = ["simple_gla", "retnet", "mamba2", "linear_attn", "gla", "hgrn2"]


def parallel_core(dtype):
    return functools.partial(modules()[0].chunk_parallel_core, dot_dtype=dtype)


@contextlib.contextmanager
def parallel_core_backwards(name, core="_ChunkParallelCore"):
    """The calls of `name`'s `core` (an autograd.Function of its Triton module) backward inside
    the block (a list)."""
    function = getattr(seqc.load(name).kernel("triton").module, core)
    backward, calls = function.backward, []

    def counted(ctx, *grads):
        calls.append(ctx.settings)
        return backward(ctx, *grads)

    function.backward = staticmethod(counted)
    try:
        yield calls
    finally:
        function.backward = staticmethod(backward)


@pytest.mark.parametrize("decay, K, V, chunk", [
    (decay, 5, 3, 32) for decay in ("none", "scalar", "keywise")] + [
    ("scalar", 5, 3, 64), ("none", 70, 66, 16), ("scalar", 70, 66, 16), ("keywise", 20, 40, 16),
    ("keywise", 20, 66, 16), ("keywise", 5, 130, 16), ("scalar", 5, 130, 16)])
def test_core_adjoint_matches_torch_autograd_fp64(decay, K, V, chunk):
    """T = 37: the last chunk ragged; every output, the final state and every gradient. K, V
    of at most 64 with a scalar gate or none run the fused backward kernel (chunks of 64: one
    chunk, no adjoint state pass step); K = 70 with V = 66 the wide fused kernel (five key blocks
    of 16, V one block of 128); a key-wise gate with V up to 64 the key-wise fused kernel (K =
    20: two key blocks of 16) and with V up to 128 (V = 66: one value block of 128); the dv and
    dq/dk kernels above (V = 130)."""
    tensors = core_inputs(decay, K=K, V=V)
    got = core_gradients(parallel_core(torch.float64), tensors, chunk)
    want = core_gradients(modules()[1]._chunk, tensors, chunk)
    assert_results_match(got, want, [f"{decay}: {n}" for n in names(decay)], 1e-10)


@pytest.mark.parametrize("decay", ["scalar", "keywise"])
def test_core_adjoint_strong_decays_fp32(decay):
    """Log gates near -8 a step, chunks of 32: every exponent formed stays <= 0 (re-anchored
    sub-chunks for the key-wise gate), nothing overflows."""
    tensors = core_inputs(decay, dtype=torch.float32, seed=3, strength=8.0)
    got = core_gradients(functools.partial(parallel_core(None), precision="ieee"), tensors, 32)
    want = core_gradients(modules()[1]._chunk,
                          [None if t is None else t.double() for t in tensors], 32)
    assert_results_match(got, want, names(decay), 1e-4)


@pytest.mark.parametrize("name", PARALLEL_SPECS)
def test_chunk_parallel_specs_train_through_the_parallel_core(name):
    """`mode=None` at this small shape runs chunk_parallel (few programs), so training runs its
    core: the backward is _ChunkParallelCore's, gradients of every input, param and initial state
    equal the reference's."""
    assert_trains_through_core(name, "chunk_core", "_ChunkParallelCore")


@pytest.mark.parametrize("name", ["gla", "simple_gla"])
def test_minus_infinity_log_decays(name):
    """-inf at steps 3 and 20 (inside chunks), 16 (a chunk's first step) and 36 (the last),
    through the parallel core's adjoint."""
    with parallel_core_backwards(name) as calls:
        assert_resets_equal_the_reference(name, mode="chunk_parallel")
    assert len(calls) == 1


def test_training_follows_the_mode():
    """chunk_parallel (forced, or mode=None at any B x H: the GPU-fit core, even where the
    forward alone would pick `chunk`) trains on the parallel core with the call's 16-bit dtype
    for its dots; so does a forced `chunk` (chunk_core's kernels do not fit a GPU: the
    single-kernel forward, the parallel core's training)."""
    assert_training_follows_the_mode("simple_gla", "chunk_core", "chunk", "chunk_parallel")


def test_bf16_training_dots_in_bf16():
    """A bf16 call: the core's kernels get q, k, v and do in bf16 (rounded once), gradients
    within bf16 rounding of the fp32 ones."""
    module = modules()[0]
    tensors = core_inputs("scalar", dtype=torch.float32, K=16, V=16, seed=4)
    with recorded_launches(module, "_cp_state_pass_kernel", lambda args: args[0].dtype) as seen:
        got = core_gradients(parallel_core(torch.bfloat16), tensors, 16)
    assert seen == [torch.bfloat16, torch.bfloat16]        # forward k, backward q
    want = core_gradients(parallel_core(None), tensors, 16)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), rtol=0.05,
                                   atol=0.02 * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("name, dims, bound, forward_bound", [
    ("linear_attn", 64, 2.5, 1.81), ("simple_gla", 64, 2.502, 1.81), ("gla", 64, 3.25, 2.0),
    ("linear_attn", 128, 3.167, 2.51), ("simple_gla", 128, 3.167, 2.51)])
def test_backward_traffic(name, dims, bound, forward_bound):
    """Bytes the kernels load and store during `loss.backward()` against the forward call's
    compulsory traffic, T = 128 in chunks of 64, one head (the ratio does not depend on B or H),
    fp32, with an initial state (chunk_parallel_core.md, "Traffic": at dims 64 the adjoint state
    pass and the fused kernel move 2.50x without a gate, 2.5016x with the scalar gate's own bytes;
    before the fused kernel 3.4x; with a key-wise gate the key-wise fused kernel 3.25x, 4.67x
    before it; at dims 128 the wide kernel 3.1664x, 3.50x before its first sweep summed the
    scores and the adjoint pass took V as one block; the single-program chunk_core moves 1.9x
    but runs B x H programs; forward at dims 128 2.50x with the forward state pass in one value
    block of 128, 2.67x with two of 64). gla at 128 (3.57x) costs a minute under the interpreter: not here."""
    program = seqc.load(name)
    with parallel_core_backwards(name) as calls:
        forward, backward, compulsory = counted_training_step(
            program, {"B": 1, "T": 128, "H": 1, **{d.name: dims for d in program.spec.dims}},
            mode="chunk_parallel")
    assert len(calls) == 1
    assert backward / compulsory <= bound, f"{name}: backward traffic {backward / compulsory:.4f}x"
    assert forward / compulsory <= forward_bound, \
        f"{name}: forward traffic {forward / compulsory:.2f}x"


def test_gpu_check_lists_the_training_kernels(tmp_path, monkeypatch):
    """`seqc gpu-check` records a training call (forward + backward) per set of cores the modes
    train with: here, without compiling (cached_only), the parallel core's launches under
    `chunk_parallel training` / `chunk_parallel backward` (the state pass twice: forward and
    reversed, two compiles), once, at their grids (the torch module runs time in slabs of 1024
    steps: 16 chunks of 64): a forced `chunk` trains on the same core, so chunk_core is not
    launched; and the fused recurrent kernel's generated backward."""
    from seqc.gpu_jobs import DEFAULT_SHAPE, spec_jobs
    from seqc.gpu_workers import run_jobs
    monkeypatch.setenv("SEQC_CACHE_DIR", str(tmp_path / "cache"))
    jobs = spec_jobs(seqc.load("simple_gla"), {"*": 64}, DEFAULT_SHAPE, [90], ["bf16"])
    for job in jobs:
        job.cached_only = True
    launches = [(c.result["mode"], c.result["kernel"], c.result["grid"])
                for c in run_jobs(jobs, workers=1, timeout=300)]
    training = [launch for launch in launches if launch[0].endswith((" training", " backward"))]
    assert sorted(training) == sorted([
        ("fused_recurrent training", "fused_recurrent_kernel", [1, 64]),
        ("fused_recurrent backward", "fused_recurrent_bwd_kernel", [1, 64]),
        ("chunk_parallel training", "_cp_state_pass_kernel", [1, 1, 64]),
        ("chunk_parallel training", "_cp_fwd_output_kernel", [1, 16, 64]),
        ("chunk_parallel backward", "_cp_state_pass_kernel", [1, 1, 64]),
        ("chunk_parallel backward", "_cp_bwd_fused_kernel", [16, 64]),
    ]), launches
