"""The three-kernel delta-rule form `chunk_delta_parallel` (backends/triton/chunk_delta_parallel.md)
against the reference, under the Triton interpreter: ragged lengths, odd dims, chunks of one, two
and four sub-chunks of 16 (the block merge of the UT inverse), value and key blocks split,
initial and final states, hard resets (-inf log decays) at a chunk's first step, at a sub-chunk's
and inside one, fp32 and bf16 inputs (bf16 operands go into tl.dot as they are, the reference
runs on the same bf16 values in fp32: the tolerance covers the bf16 roundings of the stored w, u,
new values, decayed keys, the inverse and the state before their dots, as fla's kernels round
them; measured 1.6e-2 of the magnitude at most here)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from training_cores import check_mode, check_trains_on_core, modes_run  # noqa: E402

pytestmark = pytest.mark.triton
SUPPORTED = ["deltanet", "gated_deltanet", "kda", "deltaproduct", "comba"]


def check(name, T, dims, dtype=torch.float32, resets=(), seed=0, **options):
    """`check_mode` in chunk_delta_parallel; -inf log decays (hard resets) at `resets`."""
    check_mode(name, "chunk_delta_parallel", T, dims, dtype, gates=[(resets, float("-inf"))],
               seed=seed, **options)


@pytest.mark.parametrize("name", SUPPORTED)
@pytest.mark.parametrize("T,chunk", [(1, 64), (37, 16), (70, 64)])
def test_odd_dims_ragged_lengths(name, T, chunk):
    """K = 5, V = 20, chunks of 16 (one sub-chunk; deltaproduct: two, a row per token and
    delta step) and 64 (four, merged; deltaproduct: chunks of 32 tokens); the last chunk ragged;
    an initial state; precision "ieee" (the tests compare fp32 at 1e-4)."""
    check(name, T, {"K": 5, "V": 20}, chunk_size=chunk, precision="ieee")


def test_two_sub_chunks():
    """Chunks of 32: two sub-chunks of 16, one off-diagonal block of the inverse."""
    check("gated_deltanet", 45, {"K": 5, "V": 20}, chunk_size=32, precision="ieee")


@pytest.mark.parametrize("name", ["gated_deltanet", "kda", "comba"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_key_and_value_blocks_split(name, dtype):
    """K = 80 (all of it in the per-chunk kernel and the state pass, two key blocks of 64 in
    the scalar-decay output kernel, five of 16 in the key-wise one), V = 20 as two value blocks
    of 16 (block_split=16): two state-pass programs, a two-step value loop for u."""
    check(name, 37, {"K": 80, "V": 20}, dtype=dtype, block_split=16, chunk_size=32,
          precision="ieee")


@pytest.mark.parametrize("name", ["gated_deltanet", "comba"])
def test_two_key_blocks_in_the_per_chunk_kernel(name):
    """K = 136: two key blocks of 128 in the per-chunk kernel, so its second key loop loads the
    keys again (at K <= 128 it reuses the first loop's; comba: the erase keys only), value
    blocks of 32 in the state pass (K > 128); a hard reset inside the first chunk."""
    check(name, 20, {"K": 136, "V": 8}, resets=(5,), chunk_size=16, precision="ieee")


@pytest.mark.parametrize("name", ["gated_deltanet", "kda"])
@pytest.mark.parametrize("chunk,resets", [(16, (3, 16, 20, 36)), (64, (15, 16, 40, 64))])
def test_hard_resets_at_and_inside_chunks(name, chunk, resets):
    """-inf log decays (kda: on key lane 2) inside a sub-chunk, at a sub-chunk's first step
    (16 with chunks of 64), at a chunk's first step (16 / 64) and at the last step: nothing
    decays across them, in the UT system, w, the decayed keys, the chunk decay and the outputs,
    and no NaN forms."""
    check(name, 70 if chunk == 64 else 37, {"K": 5, "V": 20}, resets=resets, seed=13,
          chunk_size=chunk, precision="ieee")


@pytest.mark.parametrize("name", SUPPORTED)
def test_bf16_inputs(name):
    """bf16 inputs, 16-bit operands into tl.dot: within 3e-2 of the magnitude."""
    check(name, 70, {"K": 16, "V": 16}, dtype=torch.bfloat16, chunk_size=64,
          resets=(40,) if name in ("gated_deltanet", "kda") else ())


def test_specs_without_the_form_keep_the_single_kernel():
    """The DPLR kind (rwkv7) is not offered the mode: its is chunk_dplr_parallel
    (tests/test_triton_chunk_dplr_parallel.py); comba, a delta rule with two keys, is."""
    for name in ("rwkv7",):
        module = seqc.load(name).kernel("triton").module
        assert "chunk_delta_parallel" not in module.MODES, name
    for name in SUPPORTED:
        assert "chunk_delta_parallel" in seqc.load(name).kernel("triton").module.MODES, name


def test_two_delta_steps_with_a_scalar_decay_and_hard_resets():
    """deltaproduct with a scalar gate before a token's two steps (the gate applies to the
    token's first row only): -inf gates inside a sub-chunk (3), at a sub-chunk's first token (16:
    rows 32-33, sub-chunk 2 of a 64-row chunk), at a chunk's last and first token (31, 32)."""
    source = (seqc.load("deltaproduct").source
              .replace("model deltaproduct", "model gated_deltaproduct")
              .replace("input beta1 in (0, 1)", "input g in (-inf, 0)\ninput beta1 in (0, 1)")
              .replace("state S[K, V] = 0\n", "state S[K, V] = 0\nS = exp(g) * S\n"))
    program = seqc.compile(source)
    gen = torch.Generator().manual_seed(5)
    T = 45
    x = {n: torch.nn.functional.normalize(torch.randn(1, T, 2, 5, generator=gen), dim=-1)
         for n in ("q", "k1", "k2")}
    x.update({n: torch.randn(1, T, 2, 20, generator=gen) for n in ("v1", "v2")})
    x.update({n: torch.rand(1, T, 2, generator=gen) for n in ("beta1", "beta2")})
    x["g"] = -torch.rand(1, T, 2, generator=gen)
    for t in (3, 16, 31, 32):
        x["g"][0, t, 1] = float("-inf")
    want = program.kernel("reference")(**x, output_final_state=True)
    got = program.kernel("triton", mode="chunk_delta_parallel", chunk_size=32,
                         precision="ieee")(**x, output_final_state=True)
    torch.testing.assert_close(got.o, want.o, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.final_state["S"], want.final_state["S"], rtol=1e-4, atol=1e-4)


def test_default_mode_by_programs_against_sms():
    """mode=None: `chunk_delta_parallel` when the single kernel would run fewer than 132 / 2
    programs (B x H x value blocks) and the state pass at least as many, else `chunk_delta`
    (docs/backends.md), both counted with the value blocks they launch: at K = V = 128
    chunk_delta's are 64 lanes at B=4, H=16 and 16 at B=1, H=4 (the width of least memory time
    for the launch), the state pass's 64; the GPU model has chunk_delta faster at both shapes."""
    module = seqc.load("gated_deltanet").kernel("triton").module
    assert module.DEFAULT_MODE == "chunk_delta"
    # chunk_delta's value blocks: the width of least memory time under the cap (64 beside a key
    # block of 128 with one or two delta steps a token; backends/triton/blockwise.md, "Blocks")
    few = {"B": 1, "T": 4096, "H": 4, "K": 128, "V": 128}
    assert module._chunk_delta_blocks(few, 128)[1] == 8
    assert module._chunk_delta_blocks({**few, "B": 4, "H": 16}, 128)[1] == 2
    assert module._state_pass_programs(few, 128) == 4 * 2
    assert module._choose_mode(few, 128) == "chunk_delta"                     # 4 x 8 blocks
    assert module._choose_mode({**few, "B": 4, "H": 16}, 128) == "chunk_delta"
    small = {**few, "K": 64, "V": 64}
    assert module._choose_mode(small, 128) == "chunk_delta"                   # 4 x 4 against 4
    tiny = {**few, "H": 1, "K": 16, "V": 16}
    assert module._choose_mode(tiny, 128) == "chunk_delta_parallel"           # 1 against 1
    assert modes_run("gated_deltanet", scale=0.5) == ["chunk_delta_parallel"]


@pytest.mark.parametrize("name", ["gated_deltanet", "kda"])
def test_gradients_train_on_the_parallel_delta_core(name, monkeypatch):
    """Training with mode="chunk_delta_parallel": the call trains on the mode's own core,
    chunk_delta_parallel_core (`MODE_CORES`, seqc/autograd.py `training_cores`), not on the
    torch recomputation nor on chunk_delta_core; gradients of every input and the initial state
    equal the reference's."""
    check_trains_on_core(name, "chunk_delta_core", "chunk_delta_parallel", monkeypatch,
                         shared_core_unused=True)


def test_scratch_traffic_counted():
    """Counted under the interpreter (seqc/bench_io.py): the buffers the mode allocates move as
    stated in chunk_delta_parallel.md, "Traffic": w and u written once and read once (once per
    value block), v_new written once and read once, the chunk states written and read once
    (fp32 here); a scalar decay's keys are decayed in the state pass (no kg, no chunk decays),
    a key-wise decay's are written once and read once, with the chunk decays."""
    from seqc.bench_io import measure
    from seqc.inputs import random_call
    B, T, H, K, V, chunks = 1, 40, 2, 16, 16, 3
    rows = B * H * T * 4                            # fp32 call: 4-byte scratch
    states = 2 * B * H * chunks * K * V * 4
    for name, per_token, decays in (("gated_deltanet", 2 * (K + V + V), 0),
                                    ("kda", 2 * (K + K + V + V), 2 * B * H * chunks * K * 4)):
        program = seqc.load(name)
        tensors, _ = random_call(program.spec, {"B": B, "T": T, "H": H, "K": K, "V": V})
        counted = measure(program, tensors, "chunk_delta_parallel", chunk_size=16)
        assert counted["scratch"] == rows * per_token + decays + states, name
        assert counted["ratio_io"] <= 2.0


@pytest.mark.parametrize("name", ["gated_deltanet", "kda"])
def test_the_kernels_fit_sm_90a_at_k_v_64(name):
    """`seqc gpu-check` (the suite's gpu-check cache, shared with the fitness tests: a kernel
    compiled before is read back): the three kernels compile for sm_90a at K = V = 64 on bf16
    with 0 spill bytes, shared memory within the limit, tensor-core instructions and 16-bit
    operands in their dots; the per-chunk and output kernels run a program per chunk."""
    from seqc.gpu_jobs import DEFAULT_SHAPE, spec_jobs
    from seqc.gpu_workers import run_jobs
    jobs = spec_jobs(seqc.load(name), {"*": 64}, DEFAULT_SHAPE, [90], ["bf16"])
    for job in jobs:
        job.modes = ["chunk_delta_parallel"]
        job.training_module = None      # the forward kernels only: training runs the delta core
    checks = {c.result["kernel"]: c for c in run_jobs(jobs, workers=1, timeout=600)}
    assert set(checks) == {"chunk_delta_parallel_prepare_kernel",
                           "chunk_delta_parallel_state_kernel",
                           "chunk_delta_parallel_output_kernel"}
    assert checks["chunk_delta_parallel_prepare_kernel"].result["grid"] == [64, 64]
    assert checks["chunk_delta_parallel_output_kernel"].result["grid"] == [1, 64, 64]
    for check in checks.values():
        assert check.problems() == [] and check.spill == 0, check.result
        assert check.tensor_core > 0 and check.dot16 == "bf16", check.result
