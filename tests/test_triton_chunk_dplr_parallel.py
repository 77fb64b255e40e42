"""The three-kernel diagonal-plus-low-rank form `chunk_dplr_parallel`
(backends/triton/chunk_dplr_parallel.md) against the reference, under the Triton interpreter:
rwkv7 (key-wise decay, the key reading the state before it; comba, a scalar decay the key
sees, proves the two-key delta rule now: test_triton_chunk_delta_parallel.py); ragged lengths, odd dims, chunks of one, two and four sub-chunks of
16 (the block merge of the UT inverse), key and value blocks split, initial and final states,
hard resets (-inf log decays) and very negative gates, fp32, fp64 and bf16 inputs (bf16 operands
go into tl.dot as they are, the reference runs on the same bf16 values in fp32: the tolerance
covers the bf16 roundings of the stored w, u0, u, decayed keys, the inverse and the state before
their dots)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from oracles import random_inputs, random_state  # noqa: E402
from training_cores import check_mode, check_trains_on_core, modes_run  # noqa: E402

pytestmark = pytest.mark.triton
SUPPORTED = ["rwkv7"]
MODE = "chunk_dplr_parallel"


def check(name, T, dims, dtype=torch.float32, gates=(), seed=0, tol=None, **options):
    check_mode(name, MODE, T, dims, dtype, gates, seed, tol, **options)


@pytest.mark.parametrize("name,T,chunk", [("rwkv7", 1, 64), ("rwkv7", 37, 16), ("rwkv7", 45, 32),
                                          ("rwkv7", 70, 64)])
def test_odd_dims_ragged_lengths(name, T, chunk):
    """K = 5, V = 20, chunks of 16 (one sub-chunk of the key-wise scores), 32 (two) and 64
    (four); the last chunk ragged; an initial state
    and the final one; precision "ieee" (fp32 at 1e-4)."""
    check(name, T, {"K": 5, "V": 20}, chunk_size=chunk, precision="ieee")


@pytest.mark.parametrize("name", SUPPORTED)
def test_fp64(name):
    """An fp64 call runs in fp64 throughout (dots in "ieee"): within 1e-10 of the fp64
    reference."""
    check(name, 21, {"K": 5, "V": 20}, dtype=torch.float64, chunk_size=16)


@pytest.mark.parametrize("name,dtype", [("rwkv7", torch.float32), ("rwkv7", torch.bfloat16)])
def test_key_and_value_blocks_split(name, dtype):
    """K = 20 (two key blocks of 16 in the per-chunk and output kernels, the second ragged; all
    of it in the state pass), V = 20 as two value blocks of 16 (block_split=16): two state-pass
    programs, a two-step value loop for u0."""
    check(name, 21, {"K": 20, "V": 20}, dtype=dtype, block_split=16, chunk_size=32,
          precision="ieee")


@pytest.mark.parametrize("name,chunk,steps", [("rwkv7", 16, (3, 16, 20, 36)),
                                               ("rwkv7", 64, (15, 16, 40, 64))])
def test_hard_resets_at_and_inside_chunks(name, chunk, steps):
    """-inf log decays (rwkv7: on key lane 2) inside a sub-chunk, at a sub-chunk's first step
    (16 with chunks of 64), at a chunk's first step (16 / 64) and at the last step: nothing
    decays across them, in L, R, w, the decayed keys, the chunk decay and the outputs, and no
    NaN forms (rwkv7's key reads the state before the reset: Rb = R - 1 there)."""
    check(name, 70 if chunk == 64 else 37, {"K": 5, "V": 20}, gates=[(steps, float("-inf"))],
          seed=13, chunk_size=chunk, precision="ieee")


@pytest.mark.parametrize("name", SUPPORTED)
def test_very_negative_gates(name):
    """Finite gates of -200 and -1000 (2^(gate log2 e) underflows to 0 in fp32) inside chunks and
    at a sub-chunk's first step: the log-space cumsums keep every exponent <= 0, no NaN or inf."""
    check(name, 40, {"K": 5, "V": 20}, gates=[((5, 6, 33), -200.0), ((16, 20), -1000.0)],
          seed=7, chunk_size=32, precision="ieee")


@pytest.mark.parametrize("name", SUPPORTED)
def test_bf16_inputs(name):
    """bf16 inputs, 16-bit operands into tl.dot, bf16 scratch buffers: within 3e-2 of the
    magnitude."""
    check(name, 40, {"K": 16, "V": 16}, dtype=torch.bfloat16, chunk_size=32,
          gates=[((20,), float("-inf"))])


def test_tf32_by_default_on_fp32():
    """fp32 inputs without `precision`: dots in "tf32" (10-bit mantissas), within 2e-2."""
    check("rwkv7", 33, {"K": 16, "V": 16}, chunk_size=32, tol=2e-2)


def test_offered_for_the_dplr_kinds_only():
    """rwkv7 gets the mode beside its single kernel; the delta rule (comba's two keys too) does
    not."""
    for name in SUPPORTED:
        module = seqc.load(name).kernel("triton").module
        assert module.MODES == ("fused_recurrent", MODE, "chunk_dplr"), name
        assert module.PARALLEL_MODE == MODE and module.DEFAULT_MODE == "chunk_dplr"
    for name in ("gated_deltanet", "comba"):
        assert MODE not in seqc.load(name).kernel("triton").module.MODES


def test_default_mode_by_programs_against_sms():
    """mode=None: `chunk_dplr_parallel` when the single kernel would run fewer than 132 / 2
    programs (B x H x value blocks) and the state pass at least as many, else `chunk_dplr`
    (docs/backends.md). The single kernel's value blocks are 32 lanes, 64 beside a key dim over
    64 (blockwise.md, "Blocks"); the state pass's 64, 32 beside a key dim over 64: at K <= 64,
    once V is over 32, the single kernel has the more programs and the forward stays
    `chunk_dplr`; beside a key dim over 64 the state pass has twice its programs (training runs
    on the parallel core whatever the forward's mode)."""
    module = seqc.load("rwkv7").kernel("triton").module
    assert module.DEFAULT_MODE == "chunk_dplr"
    wide = {"B": 4, "T": 4096, "H": 16, "K": 128, "V": 128}
    assert module._state_pass_programs(wide, 128) == 64 * 4             # value blocks of 32
    assert module._choose_mode(wide, 128) == "chunk_dplr"               # 64 x 2 blocks
    assert module._choose_mode({**wide, "B": 1, "H": 4}, 128) == MODE   # 8 vs 16
    few = {**wide, "B": 1, "H": 4, "K": 64, "V": 64}
    assert module._state_pass_programs(few, 128) == 4                   # one block of 64
    assert module._choose_mode(few, 128) == "chunk_dplr"                # 8 vs 4
    assert module._choose_mode({**few, "V": 32}, 128) == MODE           # 4 vs 4: a tie
    assert modes_run("rwkv7", [(1, 1), (33, 8)]) == [MODE, "chunk_dplr"]


def test_packed_sequences():
    """cu_seqlens (seqc/varlen.py runs each length group as a batch in the chosen mode): each
    packed sequence equals its own call from its own initial state."""
    program = seqc.load("rwkv7")
    dims = {"K": 5, "V": 6}
    x, p = random_inputs("rwkv7", 1, 40, 2, dims=dims, seed=4)
    s = random_state("rwkv7", 3, 2, dims=dims, seed=4)
    bounds = [0, 7, 30, 40]
    got = program.kernel("triton", mode=MODE, chunk_size=16, precision="ieee")(
        **x, **p, initial_state=s, output_final_state=True,
        cu_seqlens=torch.tensor(bounds, dtype=torch.int32))
    ref = program.kernel("reference")
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        want = ref(**{n: t[:, a:b] for n, t in x.items()}, **p,
                   initial_state={n: t[i:i + 1] for n, t in s.items()}, output_final_state=True)
        torch.testing.assert_close(got.o[:, a:b], want.o, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.final_state["S"][i:i + 1], want.final_state["S"],
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", SUPPORTED)
def test_gradients_train_on_the_dplr_core(name, monkeypatch):
    """Training with mode="chunk_dplr_parallel": the call trains on the mode's own core,
    chunk_dplr_parallel_core (`MODE_CORES`, seqc/autograd.py `training_cores`), not on the torch
    recomputation; gradients of every input and the initial state equal the reference's."""
    check_trains_on_core(name, "chunk_dplr_core", MODE, monkeypatch)


def test_scratch_traffic_counted():
    """Counted under the interpreter (seqc/bench_io.py): the buffers the mode allocates move as
    stated in chunk_dplr_parallel.md, "Traffic": w, eg, kg, u0 and u written once and read once
    (one value block here), the key-wise chunk decays written and read once, the chunk states
    written and read once (fp32 here)."""
    from seqc.bench_io import measure
    from seqc.inputs import random_call
    program = seqc.load("rwkv7")
    sizes = {"B": 1, "T": 40, "H": 2, "K": 16, "V": 16}
    tensors, _ = random_call(program.spec, sizes)
    counted = measure(program, tensors, MODE, chunk_size=16)
    B, T, H, K, V, chunks = 1, 40, 2, 16, 16, 3
    rows = B * H * T * 4                            # fp32 call: 4-byte scratch
    per_token = 2 * (3 * K + 2 * V)                 # w, eg, kg, u0, u: written + read
    decays = 2 * B * H * chunks * K * 4
    states = 2 * B * H * chunks * K * V * 4
    assert counted["scratch"] == rows * per_token + decays + states
    assert counted["ratio_io"] <= 3.0


def test_the_kernels_fit_sm_90a_at_k_v_64():
    """`seqc gpu-check` (the suite's gpu-check cache: tests/test_gpu_fitness_families.py compiles
    the same kernels, read back here), rwkv7 (docs/benchmarks.md has it at 64 and 128 on sm_80
    and sm_90a):
    the three kernels compile for sm_90a at K = V = 64 on bf16 with 0 spill bytes, shared memory
    within the limit, tensor-core instructions and 16-bit operands in their dots; the per-chunk
    and output kernels run a program per chunk."""
    from seqc.gpu_jobs import DEFAULT_SHAPE, spec_jobs
    from seqc.gpu_workers import run_jobs
    jobs = spec_jobs(seqc.load("rwkv7"), {"*": 64}, DEFAULT_SHAPE, [90], ["bf16"])
    for job in jobs:
        job.modes = [MODE]
        job.training_module = None      # the forward kernels only: training runs the dplr core
    checks = {c.result["kernel"]: c for c in run_jobs(jobs, workers=1, timeout=600)}
    assert set(checks) == {f"{MODE}_prepare_kernel", f"{MODE}_state_kernel",
                           f"{MODE}_output_kernel"}
    assert checks[f"{MODE}_prepare_kernel"].result["grid"] == [64, 64]
    assert checks[f"{MODE}_output_kernel"].result["grid"] == [1, 64, 64]
    for check in checks.values():
        assert check.problems() == [] and check.spill == 0, check.result
        assert check.tensor_core > 0 and check.dot16 == "bf16", check.result
