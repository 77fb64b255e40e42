"""Outputs in the call's dtype (docs/backends.md, "Dtypes"): the modes in a Triton module's
CALL_DTYPE_OUTPUTS store bf16 / fp16 outputs straight from their kernels (no fp32 output and host
cast), final states stay fp32.

Under the interpreter (tiny shapes, one spec per kernel family; fp16 for the dot kernels of
simple_gla only, to keep the cost down): a bf16 and an fp16 call return
the call's dtype, match the fp32 reference run on the same (16-bit) values within a 16-bit
rounding of the magnitude, and equal bit for bit the same kernel writing fp32 outputs rounded by
torch (to nearest, ties to even): a kernel store that truncated, or rounded any other way, fails
here. The interpreter's own fp32 -> bf16 conversion truncates; the module's
`_bf16_rounding_in_the_interpreter` gives it a GPU's rounding, checked on its own below.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from oracles import random_inputs, random_state  # noqa: E402
from seqc.gpu_counts import call_args  # noqa: E402

pytestmark = pytest.mark.triton
# one spec per kernel family a converted mode belongs to
CASES = [("simple_gla", "fused_recurrent"), ("simple_gla", "chunk"),
         ("simple_gla", "chunk_parallel"), ("hgrn", "scan"), ("hgrn", "scan_parallel"),
         ("deltanet", "chunk_delta"), ("deltanet", "chunk_delta_parallel"),
         ("kda", "chunk_delta_parallel"),      # the key-wise output kernel (8 warps)
         ("comba", "chunk_delta_parallel"),   # the write key apart from the erase key
         ("rwkv6", "chunk"),                   # a read of S_{t-1}, its bonus formed early
         ("gla", "chunk_parallel"),            # the key-wise output kernel
         ("rwkv7", "chunk_dplr_parallel")]     # key-wise gates
TOLERANCE = {torch.bfloat16: 2.0 ** -6, torch.float16: 2.0 ** -9}    # against the reference
DIMS, T = {"K": 16, "V": 32, "D": 32}, 21


def call(name, dtype):
    x, p = random_inputs(name, 1, T, 2, dims=DIMS, seed=T)
    return {n: t.to(dtype) for n, t in x.items()}, p, random_state(name, 1, 2, dims=DIMS, seed=T)


def bits(t):
    return t.view(torch.int16)


@pytest.mark.parametrize("name,mode,dtype", [(*case, torch.bfloat16) for case in CASES] + [
    ("simple_gla", "chunk", torch.float16), ("simple_gla", "chunk_parallel", torch.float16)], ids=str)
def test_outputs_come_from_the_kernel_in_the_call_dtype_rounded_to_nearest_even(
        name, mode, dtype, monkeypatch):
    program = seqc.load(name)
    x, p, state = call(name, dtype)
    kernel = program.kernel("triton", mode=mode, chunk_size=16)
    assert mode in kernel.module.CALL_DTYPE_OUTPUTS
    got = kernel(**x, **p, initial_state=state, output_final_state=True)
    want = program.kernel("reference")(**{n: t.float() for n, t in x.items()}, **p,
                                       initial_state=state, output_final_state=True)
    # the same kernels storing fp32 outputs, as the modes outside CALL_DTYPE_OUTPUTS do
    monkeypatch.setattr(kernel.module, "CALL_DTYPE_OUTPUTS", frozenset())
    sizes = {**{d.name: DIMS[d.name] for d in program.spec.dims}, "B": 1, "T": T, "H": 2}
    wide, _ = kernel.module.run(*call_args(program, sizes, {**x, **p}), state, True, mode=mode,
                                chunk_size=16)
    for o in want.keys():
        assert got[o].dtype == dtype and wide[o].dtype == torch.float32
        assert torch.equal(bits(got[o]), bits(wide[o].to(dtype))), f"{name}/{mode} {o}"
        scale = max(1.0, want[o].abs().max().item())
        torch.testing.assert_close(got[o].float(), want[o], rtol=TOLERANCE[dtype],
                                   atol=TOLERANCE[dtype] * scale)
    for n, s in want.final_state.items():
        assert got.final_state[n].dtype == torch.float32
        torch.testing.assert_close(got.final_state[n], s, rtol=TOLERANCE[dtype],
                                   atol=TOLERANCE[dtype] * max(1.0, s.abs().max().item()))


def test_the_interpreter_stores_bf16_rounded_to_nearest_even():
    """fp32 values just above, at and below a bf16 half-way point (ties to even both ways), the
    largest finite fp32 (overflows to inf), inf and NaN, stored to a bf16 tensor by a kernel: the
    bits torch's rounding gives. Truncation (the interpreter's own) rounds the first down."""
    import triton
    import triton.language as tl

    seqc.load("simple_gla").kernel("triton", mode="chunk")      # installs the module's hooks

    @triton.jit
    def store(src, dst, N: tl.constexpr):
        o = tl.arange(0, N)
        tl.store(dst + o, tl.load(src + o))

    one = 1.0 + 2.0 ** -8                   # half-way between 1 and 1 + 2^-7: ties to even (1)
    three = 1.0 + 3 * 2.0 ** -8             # half-way between 1 + 2^-7 and 1 + 2^-6: ties up
    values = [one + 2.0 ** -20, one, one - 2.0 ** -20, three, -three,
              torch.finfo(torch.float32).max, float("inf"), float("nan")]
    values = torch.tensor(values + [0.0] * (16 - len(values)), dtype=torch.float32)
    out = torch.empty(16, dtype=torch.bfloat16)
    store[(1,)](values, out, 16)
    want = values.to(torch.bfloat16)
    assert torch.equal(bits(out[:7]), bits(want[:7])) and out[7].isnan()
    assert out[0] == 1.0 + 2.0 ** -7 and out[1] == 1.0 and out[3] == 1.0 + 2.0 ** -6


def test_the_interpreter_computes_on_bf16_as_a_gpu_does():
    """bf16 blocks through the interpreter's arithmetic, comparisons, casts, reductions and
    scans: torch's bf16 results (each operation on the exact fp32 values, rounded to nearest
    even), bit for bit. The interpreter alone applies numpy to the uint16 bits (`a + b` NaN,
    `-a` off by 34, `a > b` wrong on negatives, `tl.max` of the bits, a boolean's bits as bf16); the module's
    `_bf16_arithmetic_in_the_interpreter` and `_bf16_rounding_in_the_interpreter` mend it."""
    import triton
    import triton.language as tl

    seqc.load("simple_gla").kernel("triton", mode="chunk")      # installs the module's hooks

    @triton.jit
    def elementwise(a_ptr, b_ptr, out_ptr, N: tl.constexpr):
        o = tl.arange(0, N)
        a, b = tl.load(a_ptr + o), tl.load(b_ptr + o)
        results = (a + b, -a, a * b, a - b, a / b, tl.maximum(a, b), tl.minimum(a, b),
                   tl.where(a > b, a, b), (a < b).to(tl.bfloat16), a * 2.0, a + 1.0,
                   tl.exp(a.to(tl.float32)).to(tl.bfloat16), tl.abs(a), tl.fma(a, b, a), tl.clamp(a, -0.5, 0.5),
                   tl.cumsum(a, 0), (a * 4.0).to(tl.int32).to(tl.bfloat16))
        for i in tl.static_range(len(results)):
            tl.store(out_ptr + i * N + o, results[i])
        tl.store(out_ptr + len(results) * N + o, tl.max(a, 0) + tl.zeros_like(a))
        tl.store(out_ptr + (len(results) + 1) * N + o, tl.min(a, 0) + tl.zeros_like(a))

    torch.manual_seed(0)
    a, b = torch.randn(2, 16, dtype=torch.bfloat16)
    out = torch.full((19, 16), float("nan"), dtype=torch.bfloat16)
    elementwise[(1,)](a, b, out, 16)
    f = a.float()
    want = [a + b, -a, a * b, a - b, a / b, torch.maximum(a, b), torch.minimum(a, b),
            torch.where(a > b, a, b), (a < b).to(torch.bfloat16), a * 2, a + 1,
            f.exp().bfloat16(), a.abs(), torch.addcmul(f, f, b.float()).bfloat16(),
            a.clamp(-0.5, 0.5), f.cumsum(0).bfloat16(), (a * 4).int().bfloat16(),
            a.max().expand(16), a.min().expand(16)]
    for i, w in enumerate(want):
        assert torch.equal(bits(out[i]), bits(w)), (i, out[i], w)


def test_the_gpu_model_counts_outputs_in_the_call_dtype_and_charges_the_host_cast(monkeypatch):
    """simple_gla's chunk kernel at B = H = 1, T = 32, K = V = 16, bf16: its store of o moves
    T x V x 2 bytes, which the compulsory bytes count too; the same kernel made to store fp32
    (outside CALL_DTYPE_OUTPUTS, as a mode left out would) moves 2 bytes more a value and is
    charged the host's cast, HOST_CAST: the fp32 o read and the bf16 o written."""
    from seqc.gpu_counts import COMPULSORY, HOST_CAST, count_mode
    program = seqc.load("simple_gla")
    sizes, values = dict(B=1, T=32, H=1, K=16, V=16), 32 * 16
    narrow = count_mode(program, "chunk", sizes, torch.bfloat16, {})
    monkeypatch.setattr(program.kernel("triton").module, "CALL_DTYPE_OUTPUTS", frozenset())
    wide = count_mode(program, "chunk", sizes, torch.bfloat16, {})
    assert HOST_CAST not in narrow and wide[HOST_CAST].bytes == values * (4 + 2)
    assert wide["chunk_kernel"].bytes - narrow["chunk_kernel"].bytes == values * 2
    assert wide[COMPULSORY].bytes == narrow[COMPULSORY].bytes
