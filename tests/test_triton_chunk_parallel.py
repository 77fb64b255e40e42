"""The two-kernel chunk form `chunk_parallel` (backends/triton/chunk_parallel.md) against the
reference, under the Triton interpreter: ragged lengths, odd dims, key and value blocks split,
initial and final states, hard resets (-inf log decays) at a chunk's first step and inside one,
fp32 and bf16 inputs (bf16 operands go into tl.dot as they are, the reference runs on the same
bf16 values in fp32: the tolerance covers the kernels' bf16 roundings of the scaled query, the
decayed keys, the score matrix and the stored state before their dots, 2^-8 relative each)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from oracles import random_inputs  # noqa: E402
from training_cores import check_mode, modes_run  # noqa: E402

pytestmark = pytest.mark.triton
SCALAR_DECAY = ["simple_gla", "retnet", "mamba2", "linear_attn"]
KEYWISE_DECAY = ["gla", "hgrn2"]


def check(name, T, dims, dtype=torch.float32, resets=(), seed=0, **options):
    """`check_mode` in chunk_parallel, chunks of 16, params in `dtype` too; -inf log decays
    (hard resets) at `resets`."""
    check_mode(name, "chunk_parallel", T, dims, dtype, gates=[(resets, float("-inf"))], seed=seed,
               cast_params=True, chunk_size=16, **options)


@pytest.mark.parametrize("name", SCALAR_DECAY + KEYWISE_DECAY)
@pytest.mark.parametrize("T", [1, 37, 70])
def test_odd_dims_ragged_lengths(name, T):
    """K = 5, V = 20 (padded to blocks of 16 and 32), chunks of 16, the last one ragged."""
    spec = seqc.load(name).spec
    check(name, T, dict(zip((d.name for d in spec.dims), (5, 20))))


@pytest.mark.parametrize("name", ["simple_gla", "gla"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_key_and_value_blocks_split(name, dtype):
    """K = 80 runs as two key blocks of 64 (two state-pass programs, a two-step loop in the
    output kernel, key-wise scores summed over key blocks), V = 20 as two value blocks of 16
    (block_split=16)."""
    check(name, 37, {"K": 80, "V": 20}, dtype=dtype, block_split=16)


@pytest.mark.parametrize("name", ["simple_gla", "gla"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hard_resets_at_and_inside_chunks(name, dtype):
    """-inf log decays at step 3 (inside the first chunk), 16 (a chunk's first step), 20 and 36
    (the last step; gla: on key lane 2): nothing decays across them, and no NaN forms."""
    check(name, 37, {"K": 5, "V": 20}, dtype=dtype, resets=(3, 16, 20, 36), seed=13)


def test_precision_option_reaches_the_dots():
    """fp32 inputs dot in "tf32" unless `precision="ieee"` is asked for (an fp64 call: "ieee")."""
    module = seqc.load("simple_gla").kernel("triton").module
    launches = []

    class Recorder:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            return lambda *args: launches.append(args)

    x, p = random_inputs("simple_gla", 1, 5, 1, dims={"K": 4, "V": 4})
    saved = module.chunk_parallel_state_kernel, module.chunk_parallel_output_kernel
    module.chunk_parallel_state_kernel = Recorder(saved[0])
    module.chunk_parallel_output_kernel = Recorder(saved[1])
    try:
        for precision in (None, "ieee"):
            module.run(x, p, {"B": 1, "T": 5, "H": 1, "K": 4, "V": 4, "scale": 0.5},
                       mode="chunk_parallel", precision=precision)
        module.run({n: t.double() for n, t in x.items()}, p, {"B": 1, "T": 5, "H": 1, "K": 4,
                   "V": 4, "scale": 0.5}, mode="chunk_parallel")
    finally:
        module.chunk_parallel_state_kernel, module.chunk_parallel_output_kernel = saved
    precisions = [next(a for a in args if a in ("tf32", "ieee")) for args in launches]
    assert precisions == ["tf32", "tf32", "ieee", "ieee", "ieee", "ieee"]


def test_gradients_recompute_through_torch():
    """Training with mode="chunk_parallel": the forward is the two kernels, the backward the
    torch module's recomputation (seqc/autograd.py); gradients equal the reference's."""
    program = seqc.load("simple_gla")
    x, p = random_inputs("simple_gla", 1, 21, 2, dims={"K": 5, "V": 6}, seed=3)
    leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
    out = program.kernel("triton", mode="chunk_parallel", chunk_size=16)(**leaves, **p)
    grads = torch.autograd.grad(out.o.sum(), list(leaves.values()))
    ref_leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
    ref = program.kernel("reference")(**ref_leaves, **p)
    want = torch.autograd.grad(ref.o.sum(), list(ref_leaves.values()))
    for name, g, w in zip(leaves, grads, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4, msg=lambda m: f"d{name}: {m}")


def test_chunk_states_move_once_each_way():
    """Counted under the interpreter (seqc/bench_io.py): the chunk-boundary states are written
    once by the state pass and read once by the output kernel (one value block here), counted
    as their own traffic; the rest stays within the chunkwise target of 2x compulsory."""
    from seqc.bench_io import measure
    from seqc.inputs import random_call
    program = seqc.load("simple_gla")
    sizes = {"B": 1, "T": 40, "H": 2, "K": 16, "V": 16}
    tensors, _ = random_call(program.spec, sizes)
    counted = measure(program, tensors, "chunk_parallel", chunk_size=16)
    chunks = 3
    assert counted["scratch"] == 2 * sizes["H"] * chunks * 16 * 16 * 4
    assert counted["ratio_io"] <= 2.0


@pytest.mark.parametrize("name,resets", [("simple_gla", (0, 128, 149)), ("mlstm", ())])
def test_default_chunks_of_128(name, resets):
    """Without `chunk_size`, chunks of 128 where the output kernel takes 128 value lanes beside a
    scalar decay (`_chunk_parallel_chunk`; 64 beside 64 lanes or key-wise gates). K = 16,
    V = 80 (one value block of 128), 150 steps: chunks of 128 and 22, with an initial and a final
    state and, for simple_gla, -inf log decays at steps 0, 128 (a chunk's first) and 149 (the
    last); mlstm's normaliser is carried by the state pass beside S. The chunk states of a bf16
    call are bf16 (what the output kernel dots them in), written once and read once, the
    normaliser fp32: 2 x H x 2 chunks x (K x V x 2 + K x 4) bytes."""
    from seqc.bench_io import measure
    from seqc.inputs import random_call
    program = seqc.load(name)
    chunk = program.kernel("triton").module._chunk_parallel_chunk
    assert chunk({"K": 128, "V": 128}, 128) == 128 and chunk({"K": 128, "V": 64}, 128) == 64
    assert chunk({"K": 128, "V": 128}, 64) == 64
    assert seqc.load("gla").kernel("triton").module._chunk_parallel_chunk({"K": 128, "V": 128},
                                                                          128) == 64
    group = program.analysis.plan.groups[0]
    dims = {group.key_dim: 16, group.value_dim: 80}
    check_mode(name, "chunk_parallel", 150, dims, gates=[(resets, float("-inf"))], seed=3)
    sizes = {"B": 1, "T": 150, "H": 2, **dims}
    tensors, _ = random_call(program.spec, sizes, dtype=torch.bfloat16)
    counted = measure(program, tensors, "chunk_parallel")
    normaliser = 16 * 4 if name == "mlstm" else 0       # n[K], fp32, beside each state
    assert counted["scratch"] == 2 * sizes["H"] * 2 * (16 * 80 * 2 + normaliser)


def test_default_mode_by_programs_against_sms():
    """mode=None: `chunk_parallel` when the single-kernel form would run fewer than 132 / 2
    programs (B x H x value blocks) and the state pass at least as many, else `chunk`: the GPU
    model's faster form at B=4, H=16 and at B=1, H=4, K = V = 128 (docs/backends.md, "Triton
    chunk modes")."""
    module = seqc.load("simple_gla").kernel("triton").module
    assert module.DEFAULT_MODE == "chunk"
    # chunk's value blocks: at most 64 lanes (backends/triton/blockwise.md, "Blocks")
    few = {"B": 4, "T": 4096, "H": 16, "K": 128, "V": 128}
    assert module._choose_mode(few, 128) == "chunk"                          # 64 x 2 blocks
    assert module._choose_mode({**few, "B": 1, "H": 4}, 128) == "chunk_parallel"   # 4 x 2
    assert module._choose_mode({**few, "B": 2}, 128) == "chunk_parallel"      # 32 x 2 blocks
    assert module._choose_mode({**few, "B": 2}, 32) == "chunk"                # 32 x 4 blocks
    small = {**few, "K": 64, "V": 64}
    # the state pass's blocks of least modelled time (chunk_parallel.md, "Blocks"): at K = V = 64
    # two value blocks of 32 (k read twice, all 132 SMs), at 128 one value block of 128 beside
    # key blocks of 64 (k read once), at B = 1, H = 4 the most programs
    assert module._state_pass_programs(small, 128) == 64 * 2
    assert module._state_pass_programs(few, 128) == 64 * 2
    assert module._state_pass_programs({**few, "B": 1, "H": 4}, 128) == 4 * 4 * 8
    assert module._choose_mode(small, 128) == "chunk_parallel"                # 64 x 1 block
    assert module._choose_mode({**small, "B": 8}, 128) == "chunk"             # 128 x 1 block
    assert modes_run("simple_gla", scale=0.5) == ["chunk_parallel"]


@pytest.mark.parametrize("name", ["simple_gla", "gla"])
def test_the_kernels_fit_sm_90a_at_k_v_64(name):
    """`seqc gpu-check` (the suite's gpu-check cache, shared with the fitness tests: gla's kernels
    are compiled by tests/test_gpu_fitness_families.py and read back): both kernels, and the
    training core's (chunk_parallel_core.md: forward and adjoint state passes are one kernel;
    the backward one fused kernel, for a scalar gate at 64 and a key-wise one's), compile for
    sm_90a at K = V = 64 on bf16 with 0 spill bytes, shared memory within the limit and wgmma
    instructions, 16-bit operands in their dots; the output kernel runs a program per (value
    block, chunk, batch x head)."""
    from seqc.gpu_jobs import DEFAULT_SHAPE, spec_jobs
    from seqc.gpu_workers import run_jobs
    jobs = spec_jobs(seqc.load(name), {"*": 64}, DEFAULT_SHAPE, [90], ["bf16"])
    for job in jobs:
        job.modes = ["chunk_parallel"]
    checks = {(c.result["mode"], c.result["kernel"]): c
              for c in run_jobs(jobs, workers=1, timeout=300)}
    assert set(checks) == {
        ("chunk_parallel", "chunk_parallel_state_kernel"),
        ("chunk_parallel", "chunk_parallel_output_kernel"),
        ("chunk_parallel training", "_cp_state_pass_kernel"),
        ("chunk_parallel training", "_cp_fwd_output_kernel"),
        ("chunk_parallel backward", "_cp_state_pass_kernel")} | (
        {("chunk_parallel backward", "_cp_bwd_fused_kernel")} if name == "simple_gla" else
        {("chunk_parallel backward", "_cp_bwd_fused_keys_kernel")})
    assert checks["chunk_parallel", "chunk_parallel_output_kernel"].result["grid"] == [1, 64, 64]
    for check in checks.values():
        assert check.problems() == [] and check.spill == 0, check.result
        assert check.tensor_core > 0 and check.dot16 == "bf16", check.result


def test_a_query_scaled_by_a_let_without_the_key_dim():
    """`let a = K ** -0.5` (no key lanes) scales the query that the key loop reads: the let is
    set up before the loop (it was set up nowhere: NameError under the interpreter)."""
    source = ("model m\ndims K, V\ninput q[K], k[K], v[V]\nstate S[K, V] = 0\nS = S + k * v\n"
              "let a = K ** -0.5\noutput o = a * q @ S\n")
    program = seqc.compile(source)
    gen = torch.Generator().manual_seed(0)
    x = {n: torch.randn(1, 37, 2, d, generator=gen) for n, d in (("q", 5), ("k", 5), ("v", 6))}
    want = program.kernel("reference")(**x)
    got = program.kernel("triton", mode="chunk_parallel", chunk_size=16)(**x)
    torch.testing.assert_close(got.o, want.o, rtol=1e-4, atol=1e-4)
