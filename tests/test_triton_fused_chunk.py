"""The single-kernel chunk forms (`chunk`, `chunk_delta`, `chunk_dplr`) shaped for a GPU (backends/triton/
blockwise.md, "Blocks" and "Dtypes"): chunks of at most 16 steps, value blocks of at most 64
lanes (chunk_dplr: 32, 64 beside a key dim over 64; chunk_delta: 32 beside a key dim of 128
with two delta steps a token and a decay, and the block of least memory time for the launch), 16-bit
operands straight into `tl.dot`.

Under the interpreter (tiny shapes): several value blocks, odd dims, T not a multiple of the
chunk, fp32 "ieee" calls against the reference at test_triton.py's tolerance, bf16 calls within a
bf16 rounding of the magnitude. Compiled for sm_80 and sm_90a (no GPU, seqc.gpucheck): 0 spill
bytes and tensor-core instructions with bf16 operands at K = V = 64.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from oracles import random_inputs, random_state  # noqa: E402

RTOL = 1e-4


def close(actual, expected, what, rtol):
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=rtol * scale,
                               msg=lambda m: f"{what}: {m}")


def compare(name, mode, dims, T, dtype=torch.float32, rtol=RTOL, **options):
    program = seqc.load(name)
    x, p = random_inputs(name, 1, T, 2, dims=dims, seed=T)
    x = {n: t.to(dtype) for n, t in x.items()}
    state = random_state(name, 1, 2, dims=dims, seed=T)
    # the reference runs in fp32 on the very values the call gets (bf16-rounded when 16-bit)
    want = program.kernel("reference")(**{n: t.float() for n, t in x.items()}, **p,
                                       initial_state=state, output_final_state=True)
    got = program.kernel("triton", mode=mode, **options)(**x, **p, initial_state=state,
                                                        output_final_state=True)
    for o in want.keys():
        close(got[o], want[o], f"{name}/{mode} output {o}", rtol)
    for n, s in want.final_state.items():
        close(got.final_state[n], s, f"{name}/{mode} final state {n}", rtol)


@pytest.mark.triton
@pytest.mark.parametrize("name,mode", [("simple_gla", "chunk"), ("gla", "chunk"),
                                       ("mlstm", "chunk"), ("rwkv6", "chunk"),
                                       ("gated_deltanet", "chunk_delta"), ("kda", "chunk_delta"),
                                       ("deltaproduct", "chunk_delta"), ("rwkv7", "chunk_dplr"),
                                       ("comba", "chunk_delta")])
def test_key_dim_over_64(name, mode):
    """K = 80 (a 128-lane key block): V = 72 is two value blocks of 64 a head (chunk, chunk_dplr)
    or five of 16 (chunk_delta), the last one ragged; T = 37 is two whole chunks of 16 and a ragged one;
    chunk_size=64 asked, 16 run. fp32 in "ieee": the reference's numbers at test_triton.py's
    tolerance."""
    if mode == "chunk_dplr":        # its value blocks of 64 beside a key block over 64
        from seqc.gpu_counts import launch_grids
        sizes = dict(B=1, T=37, H=2, K=80, V=72)
        assert launch_grids(seqc.load(name), mode, sizes, torch.float32, {}) == {
            "chunk_dplr_kernel": [2 * 2]}
    compare(name, mode, {"K": 80, "V": 72}, 37, chunk_size=64, precision="ieee")


@pytest.mark.triton
@pytest.mark.parametrize("name,V,T,wide,narrow", [("deltanet", 72, 37, 2, 5),
                                                   ("gated_deltanet", 72, 37, 2, 5),
                                                   ("kda", 40, 20, 1, 3),
                                                   ("deltaproduct", 72, 20, 2, 5)])
def test_value_blocks_of_least_memory_time(name, V, T, wide, narrow, monkeypatch):
    """chunk_delta with one delta step a token (any decay: kda's key-wise one too) or two
    (deltaproduct) takes value blocks of up to 64 lanes beside a 128-lane key block, the width of least memory time for the
    launch (`_chunk_delta_value_time`: q, k re-read once a value block, over the share of the
    WIDE_VALUE_PROGRAMS = 132 SMs the launch fills): K = 80, V = 72 at B = 1, H = 2 is five
    value blocks of 16 a head (a launch far below the SMs: the most programs), two of 64 when
    WIDE_VALUE_PROGRAMS is lowered to 1 (every launch fills the GPU: the fewest re-reads);
    kda (slower in the interpreter) V = 40, three against one, T = 20; deltaproduct T = 20
    (its products with the state split by step, the state pass last); fp32 "ieee" against the
    reference."""
    from seqc.gpu_counts import launch_grids
    module = seqc.load(name).kernel("triton").module
    sizes = dict(B=1, T=T, H=2, K=80, V=V)
    assert launch_grids(seqc.load(name), "chunk_delta", sizes, torch.float32, {}) == {
        "chunk_delta_kernel": [2 * narrow]}
    monkeypatch.setattr(module, "WIDE_VALUE_PROGRAMS", 1)
    assert launch_grids(seqc.load(name), "chunk_delta", sizes, torch.float32, {}) == {
        "chunk_delta_kernel": [2 * wide]}
    compare(name, "chunk_delta", {"K": 80, "V": V}, T, precision="ieee")


def test_value_blocks_beside_a_key_dim_of_128():
    """Value blocks of up to 64 lanes beside a key block of 128 with one delta step a token,
    whatever its roles (kda, and kda with a computed decay `g * a`: the state held value dim
    first fits both, chunk_delta.md "Layout"), and with two (deltaproduct: its products with the
    state one a step, one copy of the 16-bit state, the state pass last, chunk_delta.md "Two
    delta steps a token"; 496 B spilled on sm_80 with 64 lanes before, when it was kept at 32).
    At the GPU model's call shape (B = 4, H = 16, K = V = 128, bf16) deltaproduct runs two value
    blocks of 64 a head: 128 programs (256 with 32 lanes before)."""
    from seqc.gpu_counts import launch_grids
    edited = seqc.load("kda").source.replace("S = exp(g) * S", "S = exp(g * a) * S").replace(
        "const scale", "param a[K] in (0, 1)\nconst scale")
    cap = '64 if blocks["BLOCK_K"] <= 128 else 16'
    for program in (seqc.load("kda"), seqc.compile(edited), seqc.load("deltaproduct")):
        code = program.emit("triton")
        assert f'min(blocks["BLOCK_V"], {cap}, ' in code, program.name
        assert "WIDE_VALUE_PROGRAMS = 132" in code, program.name
    sizes = dict(B=4, T=64, H=16, K=128, V=128)
    assert launch_grids(seqc.load("deltaproduct"), "chunk_delta", sizes, torch.bfloat16, {}) == {
        "chunk_delta_kernel": [4 * 16 * 2]}


@pytest.mark.triton
def test_two_delta_steps_with_a_scalar_decay(monkeypatch):
    """deltaproduct with a scalar gate before a token's two steps (not in the stdlib; fla's gated
    delta product): its value blocks stay at 32 beside a key block of 128 (64 lanes spilled
    100 B on sm_90a at K = V = 128), 64 beside one of 64 (blockwise.py `value_cap`); its
    chunk_delta kernel against the reference with -inf gates inside a chunk and at a chunk's
    first and last token, in value blocks of 16 (three a head) and of 64 (one): K = 20, V = 40,
    T = 37, fp32 "ieee"."""
    from seqc.gpu_counts import launch_grids
    source = (seqc.load("deltaproduct").source
              .replace("model deltaproduct", "model gated_deltaproduct")
              .replace("input beta1 in (0, 1)", "input g in (-inf, 0)\ninput beta1 in (0, 1)")
              .replace("state S[K, V] = 0\n", "state S[K, V] = 0\nS = exp(g) * S\n"))
    program = seqc.compile(source)
    cap = '64 if blocks["BLOCK_K"] <= 64 else 32 if blocks["BLOCK_K"] <= 128 else 16'
    assert f'min(blocks["BLOCK_V"], {cap}, ' in program.emit("triton")
    gen = torch.Generator().manual_seed(7)
    T, K, V = 37, 20, 40
    x = {n: torch.nn.functional.normalize(torch.randn(1, T, 2, K, generator=gen), dim=-1)
         for n in ("q", "k1", "k2")}
    x.update({n: torch.randn(1, T, 2, V, generator=gen) for n in ("v1", "v2")})
    x.update({n: torch.rand(1, T, 2, generator=gen) for n in ("beta1", "beta2")})
    x["g"] = -torch.rand(1, T, 2, generator=gen)
    for t in (5, 15, 16):
        x["g"][0, t, 1] = float("-inf")
    state = {"S": torch.randn(1, 2, K, V, generator=gen) * 0.5}
    want = program.kernel("reference")(**x, initial_state=state, output_final_state=True)
    module = program.kernel("triton").module
    sizes = dict(B=1, T=T, H=2, K=K, V=V)
    for wide, blocks in ((132, 3), (1, 1)):
        monkeypatch.setattr(module, "WIDE_VALUE_PROGRAMS", wide)
        assert launch_grids(program, "chunk_delta", sizes, torch.float32, {}) == {
            "chunk_delta_kernel": [2 * blocks]}
        got = program.kernel("triton", mode="chunk_delta", precision="ieee")(
            **x, initial_state=state, output_final_state=True)
        close(got.o, want.o, f"o, {blocks} value blocks", RTOL)
        close(got.final_state["S"], want.final_state["S"], f"S, {blocks} value blocks", RTOL)


@pytest.mark.triton
@pytest.mark.parametrize("name,key_side", [("gated_deltanet", 2 * (128 + 128 + 1 + 1)),
                                           ("kda", 2 * (128 + 128 + 128 + 1))])
def test_chunk_delta_moves_each_tile_once_a_program(name, key_side):
    """At the GPU model's call shape (B = 4, H = 16, K = V = 128, bf16; counted at B = H = 1 as
    the model counts, seqc/gpu_model.py) the kernel runs two value blocks of 64 a head and moves,
    per token, its key side (q, k, gates, beta) once a value block and v, o once, and the final
    state (fp32) once: 1.49x the call's compulsory bytes for gated_deltanet (2.48x with the four
    value blocks of 32 it had before the state was held value dim first; chunk_delta.md,
    "Layout"). T = 16: one chunk."""
    from seqc.gpu_counts import count_mode, launch_threshold_per_head
    program = seqc.load(name)
    sizes = dict(B=1, T=16, H=1, K=128, V=128)
    with launch_threshold_per_head(program.kernel("triton").module, 4 * 16):
        counts = count_mode(program, "chunk_delta", sizes, torch.bfloat16, {})
    per_token = 2 * key_side + 2 * (2 * 128)
    assert counts["chunk_delta_kernel"].bytes == 16 * per_token + 128 * 128 * 4


@pytest.mark.triton
@pytest.mark.parametrize("name,mode", [("linear_attn", "chunk"), ("hgrn2", "chunk"),
                                       ("deltanet", "chunk_delta"), ("rwkv7", "chunk_dplr")])
def test_odd_dims_in_several_value_blocks(name, mode):
    """K = 24 (a 32-lane key block), V = 70: two value blocks of 64 a head (chunk), three of 32
    (chunk_dplr: a key block of at most 64), five of 16 (chunk_delta: the most programs in this
    small launch); T = 21."""
    compare(name, mode, {"K": 24, "V": 70}, 21, precision="ieee")


@pytest.mark.triton
@pytest.mark.parametrize("name,mode", [("simple_gla", "chunk"), ("gla", "chunk"),
                                       ("gated_deltanet", "chunk_delta"), ("kda", "chunk_delta"),
                                       ("rwkv7", "chunk_dplr"), ("comba", "chunk_delta")])
def test_bf16_calls_dot_in_bf16_within_a_bf16_rounding(name, mode):
    """bf16 q, k, v go into tl.dot as they are and the computed operands (scores, decayed keys,
    the state read back, the UT inverse, the DPLR pseudo-values) are rounded to bf16 once: outputs and final states
    within 2^-6 of their magnitude of the fp32 reference on the same (rounded) inputs."""
    compare(name, mode, {"K": 32, "V": 40}, 37, dtype=torch.bfloat16, rtol=2.0 ** -6)


def test_the_single_kernel_chunk_forms_fit_sm80_and_sm90a_at_64():
    """At K = V = 64, bf16: simple_gla's chunk kernel spilled 61776 bytes (sm_90a), deltanet's
    chunk_delta 136904, with fp32 (upcast) dots and no tensor cores; rwkv6's chunk kernel, blocked
    as the others, still spilled 636 (sm_90a), from its bonus `r @ (u * k * v)` formed as a [T, K, V] block
    (key_sums.FactoringRenderer); rwkv7's chunk_dplr 277226 (sm_80, fp32 dots, chunks of 64).
    Now: no spill, mma / wgmma instructions, bf16 operands in every dot; 64 programs at B=4,
    H=16 (chunk: one value block of 64), 128 (chunk_delta, chunk_dplr: two of 32; chunk_delta's
    one block of 64 would fill 64 of the 132 SMs)."""
    from seqc.gpu_jobs import DEFAULT_SHAPE, spec_jobs
    from seqc.gpu_workers import run_jobs
    jobs = []
    for name, mode in (("simple_gla", "chunk"), ("deltanet", "chunk_delta"), ("rwkv6", "chunk"),
                       ("rwkv7", "chunk_dplr")):
        for job in spec_jobs(seqc.load(name), {"*": 64}, DEFAULT_SHAPE, [80, 90], ["bf16"]):
            job.modes, job.training_module = [mode], None
            jobs.append(job)
    checks = run_jobs(jobs, workers=2, timeout=600)
    assert len(checks) == 8
    for check in checks:
        blocks = 2 if check.result["mode"] in ("chunk_delta", "chunk_dplr") else 1
        assert check.result["grid"] == [blocks, 64], check.result
        assert check.problems() == [] and check.spill == 0, check.result
        assert check.tensor_core > 0 and check.dot16 == "bf16", check.result
