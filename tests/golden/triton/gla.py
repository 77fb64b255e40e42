# Emitted by seqc 0.1.0 from spec `gla` (backend: triton).
# Do not edit: regenerate with `seqc compile gla.seq -b triton`.
# The spec, as seqc reads it:
#     model gla
#     dims K, V
#     input q[K]
#     input k[K]
#     input v[V]
#     input g[K] in (-inf, 0)
#     state S[K, V] = 0
#     const scale = K ** -0.5
#     S = exp(g) * S + k * v
#     output o = scale * q @ S
"""Triton kernels for `gla`: see backends/triton/*.md in seqc for their math.

Kernel families in this module: fused_recurrent, chunk_parallel, chunk (default: chunk, or
chunk_parallel by _choose_mode's rule, CHOICE_RULE).
`run(..., mode=...)` forces one; options: `chunk_size` (time steps per chunk or scan block,
default 64; chunk_parallel's _chunk_parallel_chunk), `block_split` (lanes of the split value dim per program, default 128), `precision`
of fp32 dots ("ieee", or "tf32"; default "tf32" in chunk, chunk_delta and their parallel forms, "ieee" in the others).
On a machine without a GPU, set TRITON_INTERPRET=1 in the environment BEFORE triton is first
imported: the interpreter runs these kernels on the CPU (numpy), the mode seqc's tests use.
Importing this module on a machine without CUDA sets TRITON_INTERPRET=1 itself when unset (Triton
cannot compile for the CPU), so the kernels below are interpreted there.
"""
import math
import os
import sys

import torch

if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "no CUDA device, and triton was imported before TRITON_INTERPRET=1 was set, so its "
            "standard library cannot be interpreted on the CPU: set TRITON_INTERPRET=1 in the "
            "environment before anything imports triton (fla-core does, for example)")
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch.nn.functional as F  # noqa: F401 - host-side constants may use it
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable  # noqa: F401 - the training Functions

INPUTS = ("q", "k", "v", "g", )
PARAMS = ()
STATES = ("S", )
OUTPUTS = ("o", )
MODES = ("fused_recurrent", "chunk_parallel", "chunk", )
DEFAULT_MODE = "chunk"
# the modes whose kernels store the outputs in the call's dtype (bf16 / fp16 calls); the others
# store fp32 (fp64 for fp64 calls), cast to the call's dtype by seqc after the call
CALL_DTYPE_OUTPUTS = frozenset({"fused_recurrent", "chunk_parallel", "chunk"})
# fused_recurrent has a generated backward kernel (`train`, fused_recurrent_bwd.md): every
# operation of the step has a vector-Jacobian rule
FUSED_BACKWARD = True


# A GPU's bf16 for Triton's interpreter (TRITON_INTERPRET=1), whose own bf16 is its uint16 bits.
# Emitted Triton modules carry this file verbatim (module.py.j2 includes it), so that they stand
# alone; seqc.fla_interpreted imports it to run fla's bf16 ops under the interpreter. Each hook
# changes the interpreter only (a GPU runs none of it); installing twice is a no-op.
import triton.language as tl  # noqa: E402 - emitted modules have imported it already


def _bf16_dots_in_the_interpreter():
    """Triton's interpreter holds bf16 as its uint16 bits and multiplies those in `tl.dot`
    (create_dot converts only 8-bit floats): give it bf16 operands widened to fp32 exactly, as
    a GPU's tensor cores multiply them. Nothing changes on a GPU."""
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_dot, "widens_bf16", False):
        return
    dot = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        a, b = (self.cast_impl(t, tl.float32) if t.dtype.scalar == tl.bfloat16 else t
                for t in (a, b))
        return dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    create_dot.widens_bf16 = True
    builder.create_dot = create_dot


def _bf16_rounded(values):
    """fp32 values (numpy) -> bf16 bits (uint16), rounded to nearest, ties to even, as a GPU
    (cvt.rn.bf16.f32) and torch round; NaN stays a quiet NaN."""
    import numpy as np

    values = np.asarray(values, dtype=np.float32)
    bits = values.view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)      # kept NaN (quiet), whatever the carry did to its bits
    rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def _bf16_widened(bits):
    """bf16 bits (uint16, numpy) -> their fp32 values, exactly."""
    import numpy as np

    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)


def _bf16_rounding_in_the_interpreter():
    """Triton's interpreter converts fp32 to bf16 (a `.to(tl.bfloat16)`, a store of fp32 values
    to a bf16 tensor) by dropping the low 16 bits, rounding toward zero; a GPU (cvt.rn.bf16.f32)
    and torch round to nearest, ties to even: give the interpreter that rounding, so that
    interpreted kernels write the GPU's bf16 outputs bit for bit. Other dtypes to bf16 (a
    comparison's booleans, integers) and bf16 to dtypes but fp32 go through fp32 (the
    interpreter reinterprets the uint16 bits otherwise). Nothing changes on a GPU."""
    import numpy as np
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.cast_impl, "rounds_bf16", False):
        return
    cast, Handle = builder.cast_impl, interpreter.TensorHandle

    def cast_impl(self, src, dst_type):
        bf16_in, bf16_out = src.dtype.scalar == tl.bfloat16, dst_type.scalar == tl.bfloat16
        if bf16_out and not bf16_in:
            return Handle(_bf16_rounded(np.asarray(src.data).astype(np.float32)), tl.bfloat16)
        if bf16_in and not bf16_out and dst_type.scalar != tl.float32:
            return cast(self, Handle(_bf16_widened(src.data), tl.float32), dst_type)
        return cast(self, src, dst_type)

    cast_impl.rounds_bf16 = True
    builder.cast_impl = cast_impl


def _bf16_arithmetic_in_the_interpreter():
    """Triton's interpreter applies numpy's operators to bf16's uint16 bits: `a + b`, `-a`,
    `a * b`, comparisons, `tl.maximum`, `tl.exp`, and the min / max / sum / cumsum of bf16
    blocks come out garbage. Give it a GPU's arithmetic: operands widened to fp32 exactly, the
    operation there, the result rounded to nearest even (a comparison's: booleans). A
    `tl.where` moves bits and stays as it is. Nothing changes on a GPU."""
    import numpy as np
    from triton.runtime import interpreter

    builder, Handle = interpreter.InterpreterBuilder, interpreter.TensorHandle
    if getattr(builder.binary_op, "widens_bf16", False):
        return

    def wide(handle):
        return _bf16_widened(handle.data) if handle.dtype.scalar == tl.bfloat16 else handle.data

    def narrowed(values):
        values = np.asarray(values)
        if values.dtype == np.bool_:
            return Handle(values, tl.int1)
        return Handle(_bf16_rounded(values), tl.bfloat16)

    binary, unary, ternary, fma = (builder.binary_op, builder.unary_op, builder.ternary_op,
                                   builder.create_fma)

    def binary_op(self, lhs, rhs, op):
        if lhs.dtype.scalar != tl.bfloat16:
            return binary(self, lhs, rhs, op)
        return narrowed(op(wide(lhs), wide(rhs)))

    def unary_op(self, arg, op):
        if arg.dtype.scalar != tl.bfloat16:
            return unary(self, arg, op)
        return narrowed(op(wide(arg)))

    def ternary_op(self, lhs, rhs, other, op):
        if op is np.where or other.dtype.scalar != tl.bfloat16:
            return ternary(self, lhs, rhs, other, op)
        return narrowed(op(wide(lhs), wide(rhs), wide(other)))

    def create_fma(self, x, y, z):
        if z.dtype.scalar != tl.bfloat16:
            return fma(self, x, y, z)
        product = np.multiply(wide(x), wide(y), dtype=np.float64)
        return narrowed(np.add(product, wide(z), dtype=np.float64).astype(np.float32))

    def widening(method):    # a reduction's or scan's numpy fast path on one tensor
        def fast_path(self, input, *args, **kwargs):
            first = input[0] if isinstance(input, tuple) else input
            if first.dtype != tl.bfloat16:
                return method(self, input, *args, **kwargs)
            kind = first.type.with_element_ty(tl.float32) if first.type.is_block() \
                else tl.float32
            out = method(self, tl.core.tensor(Handle(wide(first.handle), tl.float32), kind),
                         *args, **kwargs)
            return _tensors_to_bf16(out)
        return fast_path

    def _tensors_to_bf16(out):
        if isinstance(out, (list, tuple)):
            return type(out)(_tensors_to_bf16(t) for t in out)
        if out.dtype != tl.float32:         # an argmin's / argmax's index
            return out
        kind = out.type.with_element_ty(tl.bfloat16) if out.type.is_block() else tl.bfloat16
        return tl.core.tensor(narrowed(out.handle.data), kind)

    for name, method in (("binary_op", binary_op), ("unary_op", unary_op),
                         ("ternary_op", ternary_op), ("create_fma", create_fma)):
        method.widens_bf16 = True
        setattr(builder, name, method)
    for owner, names in ((interpreter.ReduceOps, ("min_max", "sum")),
                         (interpreter.ScanOps, ("cumsum", "cumprod"))):
        for name in names:
            setattr(owner, name, widening(getattr(owner, name)))


def bf16_in_the_interpreter():
    """All three hooks (the emitted module runs this under TRITON_INTERPRET=1)."""
    _bf16_dots_in_the_interpreter()
    _bf16_rounding_in_the_interpreter()
    _bf16_arithmetic_in_the_interpreter()

if os.environ.get("TRITON_INTERPRET") == "1":
    bf16_in_the_interpreter()


def _acc(tensor):
    """The kernels' compute dtype: fp64 for fp64 calls, else fp32 (states and accumulators)."""
    return tl.float64 if tensor.dtype == torch.float64 else tl.float32


def _spare(outputs):
    """A tensor of the compute dtype on the outputs' device: the pointer given for an absent
    initial or final state, and the dtype of the buffers a mode allocates (the outputs may be
    in the call's 16-bit dtype, CALL_DTYPE_OUTPUTS)."""
    first = next(iter(outputs.values()))
    return first if first.dtype in (torch.float32, torch.float64) else \
        torch.empty(1, dtype=torch.float32, device=first.device)


def _pow2(n):
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()

@triton.jit
def _softplus(x):
    y = tl.exp(-tl.abs(x))
    return tl.maximum(x, 0.0) + tl.where(y < 1e-4, y - 0.5 * y * y, tl.log(1.0 + y))


@triton.jit
def _logsigmoid(x):
    return -_softplus(-x)


@triton.jit
def _silu(x):
    return x * tl.sigmoid(x)


@triton.jit
def _tanh(x):
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    small = a * (1.0 - a * a * (1.0 / 3.0 - a * a * (2.0 / 15.0)))
    t = tl.where(a < 0.05, small, big)
    return tl.where(x < 0, -t, t)


@triton.jit
def _logaddexp(a, b):
    m = tl.maximum(a, b)
    safe = tl.where(m == float("-inf"), 0.0, m)
    return tl.where(m == float("-inf"), m, safe + tl.log(tl.exp(a - safe) + tl.exp(b - safe)))


@triton.jit
def _pow(x, y):
    return tl.exp2(y * tl.log2(x))


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _max_combine(a1, b1, a2, b2):
    return a1 + a2, tl.maximum(b1 + a2, b2)


@triton.jit
def _logaddexp_combine(a1, b1, a2, b2):
    return a1 + a2, _logaddexp(b1 + a2, b2)


@triton.jit
def _stack_rows1(a, b):
    return tl.reshape(tl.permute(tl.join(a, b), (1, 0)), (2 * a.shape[0],))


@triton.jit
def _stack_rows2(a, b):
    return tl.reshape(tl.permute(tl.join(a, b), (2, 0, 1)), (2 * a.shape[0], a.shape[1]))



@triton.jit
def fused_recurrent_kernel(
    ptr_in_q,
    ptr_in_k,
    ptr_in_v,
    ptr_in_g,
    ptr_init_S, ptr_final_S, ptr_ckpt_S,
    ptr_out_o,
    T, H, SEGMENT,
    c0: tl.float64,
    dim_K: tl.constexpr, BLOCK_K: tl.constexpr,
    dim_V: tl.constexpr, BLOCK_V: tl.constexpr,
    HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, STORE_CKPT: tl.constexpr,
    RELOAD_PARAMS: tl.constexpr, ACC: tl.constexpr,
):
    """One program per (value block, batch x head): the state in registers, time inside; in
    training (STORE_CKPT) the state entering every SEGMENT-th step is kept for the backward.
    Params are held in registers, or (RELOAD_PARAMS: too many to hold) loaded every step
    before their first use."""
    i_split = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_K = tl.arange(0, BLOCK_K)
    o_V = i_split * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_K = o_K < dim_K
    mask_V = o_V < dim_V
    if HAS_INIT:
        st_S = tl.load(ptr_init_S + (i_b * H + i_h) * (dim_K * dim_V) + (o_K[:, None] * (dim_V) + o_V[None, :]), mask=(mask_K[:, None] & mask_V[None, :]), other=0.0).to(ACC)
    else:
        st_S = tl.full([BLOCK_K, BLOCK_V], 0.0, dtype=ACC)
    for t in range(0, T):
        if STORE_CKPT:
            if t % SEGMENT == 0:
                tl.store(ptr_ckpt_S + (i_bh * tl.cdiv(T, SEGMENT) + t // SEGMENT) * (dim_K * dim_V) + (o_K[:, None] * (dim_V) + o_V[None, :]), st_S, mask=(mask_K[:, None] & mask_V[None, :]))
        in_q = tl.load(ptr_in_q + ((i_b * T + t) * H + i_h) * (dim_K) + (o_K), mask=(mask_K), other=0.0).to(ACC)
        in_k = tl.load(ptr_in_k + ((i_b * T + t) * H + i_h) * (dim_K) + (o_K), mask=(mask_K), other=0.0).to(ACC)
        in_v = tl.load(ptr_in_v + ((i_b * T + t) * H + i_h) * (dim_V) + (o_V), mask=(mask_V), other=0.0).to(ACC)
        in_g = tl.load(ptr_in_g + ((i_b * T + t) * H + i_h) * (dim_K) + (o_K), mask=(mask_K), other=0.0).to(ACC)
        st_S = ((tl.exp(in_g)[:, None] * st_S) + (in_k[:, None] * in_v[None, :]))
        tl.store(ptr_out_o + ((i_b * T + t) * H + i_h) * (dim_V) + (o_V), tl.sum(tl.where(mask_K[:, None], ((tl.full((), c0, ACC) * in_q)[:, None] * st_S), 0.0), axis=0), mask=(mask_V))
    if STORE_FINAL:
        tl.store(ptr_final_S + (i_b * H + i_h) * (dim_K * dim_V) + (o_K[:, None] * (dim_V) + o_V[None, :]), st_S, mask=(mask_K[:, None] & mask_V[None, :]))


STATE_LANES = 8192      # state values a fused program holds: 64 registers a thread at 4 warps
PARAM_LANES = 16384     # param values it holds; more (gru, lstm at D = 128) are loaded every step


def _fused_recurrent_reloads(blocks):
    """Whether the program loads its params every step instead of holding them (L1/L2 hits)."""
    return False        # no params


def _fused_recurrent_blocks(dims, block_split, lanes=STATE_LANES):
    """The block of every dim, and the number of programs the split dim is spread over."""
    blocks = {
        "BLOCK_K": _pow2(dims["K"]),
        "BLOCK_V": _pow2(dims["V"]),
    }
    blocks["BLOCK_V"] = min(blocks["BLOCK_V"], _pow2(block_split))
    # registers: halve the split block until a program holds at most `lanes` values of the
    # states and of the params that have the split dim (mamba's A[D, N])
    while blocks["BLOCK_V"] > 1 and (blocks["BLOCK_K"] * blocks["BLOCK_V"]) > lanes:
        blocks["BLOCK_V"] //= 2
    return blocks, triton.cdiv(dims["V"], blocks["BLOCK_V"])


def _run_fused_recurrent(x, p, dims, init, final, outputs, consts, options, checkpoints=None):
    """`checkpoints` (training): state name -> [B, H, cdiv(T, segment), *dims], filled with the
    state entering steps 0, segment, 2 segment, ... (options["segment"])."""
    B, T, H = dims["B"], dims["T"], dims["H"]
    blocks, n_split = _fused_recurrent_blocks(dims, options.get("block_split", 128))
    spare = _spare(outputs)
    fused_recurrent_kernel[(n_split, B * H)](
        x["q"],
        x["k"],
        x["v"],
        x["g"],
        spare if init is None else init["S"], spare if final is None else final["S"],
        spare if checkpoints is None else checkpoints["S"],
        outputs["o"],
        T, H, options.get("segment", 64),
        consts["c0"],
        dims["K"], blocks["BLOCK_K"],
        dims["V"], blocks["BLOCK_V"],
        init is not None, final is not None, checkpoints is not None,
        _fused_recurrent_reloads(blocks), _acc(spare),
    )

# launch configurations of the parallel form's kernels (autotune.md). Each kernel has a short
# list; the first entry is its fixed fallback. TUNING "auto": on a GPU, time the list once per
# kernel and shape key and keep the fastest; under the interpreter (or without CUDA) run the
# fallback. "fallback": always the fallback; "time": always time (forced in tests); "all": launch
# every entry in turn (`seqc gpu-check --all-configs` compiles them all).
TUNING = os.environ.get("SEQC_TRITON_TUNING", "auto")
_TUNED = {}


def _tuning():
    if TUNING != "auto":
        return TUNING
    on_gpu = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
    return "time" if on_gpu else "fallback"


def _launch(kernel, configs, build, key):
    """Launch `kernel` with one of `configs` (launch options `num_warps`, `num_stages` and
    `BLOCK_<dim>` overrides): `build(config)` gives (grid, arguments, launch options). Each
    kernel tuned here writes only buffers it does not read, so a timed launch can be repeated."""
    def launch(config):
        grid, arguments, launch_options = build(config)
        kernel[grid](*arguments, **launch_options)
    how = _tuning()
    if how == "fallback" or len(configs) == 1:
        return launch(configs[0])
    if how == "all":
        for config in configs:
            launch(config)
        return
    tuned = (getattr(kernel, "__name__", id(kernel)), key)
    if tuned not in _TUNED:
        _TUNED[tuned] = min(range(len(configs)), key=lambda i: _time(lambda: launch(configs[i])))
    launch(configs[_TUNED[tuned]])


def _time(fn):
    if os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available():
        from triton.testing import do_bench
        return do_bench(fn, warmup=5, rep=25)
    import time
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _launch_options(config):
    return {k: v for k, v in config.items() if k in ("num_warps", "num_stages")}


def _with_blocks(blocks, config):
    return dict(blocks, **{k: v for k, v in config.items() if k.startswith("BLOCK_")})


def _chunk_state_dtype(spare, x, options, default="input"):
    """The dtype of the chunk-boundary states a multi-kernel chunk form stores between its
    kernels (parallel_host.md): with "input" (the delta and DPLR forms' default), the dtype the
    output kernel dots them in, the call's 16-bit dtype for a bf16 / fp16 call (as fla stores
    them; the output kernel casts them to it anyway, so nothing is lost), else the compute dtype;
    with "fp32" (chunk_parallel's default) the compute dtype. `chunk_state_dtype` chooses."""
    choice = options.get("chunk_state_dtype") or default
    if choice not in ("fp32", "input"):
        raise ValueError(f"chunk_state_dtype must be 'fp32' or 'input', not {choice!r}")
    first = next(iter(x.values())).dtype
    if choice == "input" and first in (torch.bfloat16, torch.float16):
        return first
    return spare.dtype




@triton.jit
def chunk_parallel_state_kernel(
    ptr_in_q,
    ptr_in_k,
    ptr_in_v,
    ptr_in_g,
    ptr_init_S, ptr_final_S,
    ptr_out_o,
    ptr_h, T, H, NT,
    c0: tl.float64,
    dim_K: tl.constexpr, BLOCK_K: tl.constexpr,
    dim_V: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, PRECISION: tl.constexpr, HAS_INIT: tl.constexpr,
    STORE_FINAL: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    """The state pass (chunk_parallel.md): one program per (key block, value block, batch x
    head) walks the chunks, storing the state entering each in ptr_h [B, H, NT, K, V]."""
    i_k = tl.program_id(0)
    i_split = tl.program_id(1)
    i_bh = tl.program_id(2).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_K = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
    o_V = i_split * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_K = o_K < dim_K
    mask_V = o_V < dim_V
    o_t = tl.arange(0, BLOCK_T)
    last_T = o_t == BLOCK_T - 1
    if HAS_INIT:
        st_S = tl.load(ptr_init_S + (i_b * H + i_h) * (dim_K * dim_V) + (o_K[:, None] * (dim_V) + o_V[None, :]), mask=(mask_K[:, None] & mask_V[None, :]), other=0.0).to(ACC)
    else:
        st_S = tl.full([BLOCK_K, BLOCK_V], 0.0, dtype=ACC)
    for i_t in range(0, NT):
        o_T = i_t * BLOCK_T + o_t
        mask_T = o_T < T
        tl.store(ptr_h + (i_bh * NT + i_t) * (dim_K * dim_V) + o_K[:, None] * dim_V + o_V[None, :], st_S.to(ptr_h.dtype.element_ty), mask=mask_K[:, None] & mask_V[None, :])
        raw_k = tl.load(ptr_in_k + (i_b * T * H + i_h) * (dim_K) + (o_T[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
        raw_v = tl.load(ptr_in_v + (i_b * T * H + i_h) * (dim_V) + (o_T[:, None] * (H * dim_V) + o_V[None, :]), mask=(mask_T[:, None] & mask_V[None, :]), other=0.0)
        raw_g = tl.load(ptr_in_g + (i_b * T * H + i_h) * (dim_K) + (o_T[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
        in_k = raw_k.to(ACC)
        in_g = raw_g.to(ACC)
        d_S = tl.where((mask_T[:, None] & mask_K[None, :]), in_g, 0.0)
        reset_S = d_S == float("-inf")
        G_S = tl.cumsum(tl.where(reset_S, 0.0, d_S * 1.4426950408889634), axis=0)
        R_S = tl.cumsum(reset_S.to(ACC), axis=0)
        Glast_S = tl.sum(tl.where(last_T[:, None], G_S, 0.0), axis=0)
        Rlast_S = tl.sum(tl.where(last_T[:, None], R_S, 0.0), axis=0)
        G0_S = tl.where(R_S == 0.0, G_S, float("-inf"))
        Gend_S = tl.where(R_S == Rlast_S, Glast_S - G_S, float("-inf"))
        Glast0_S = tl.where(Rlast_S == 0.0, Glast_S, float("-inf"))
        st_S = st_S * tl.exp2(Glast0_S)[:, None]
        st_S += tl.dot(tl.trans((tl.where((mask_T[:, None] & mask_K[None, :]), in_k, 0.0) * tl.exp2(Gend_S)).to(DOT)), raw_v.to(DOT), input_precision=PRECISION)
    if STORE_FINAL:
        tl.store(ptr_final_S + (i_b * H + i_h) * (dim_K * dim_V) + (o_K[:, None] * (dim_V) + o_V[None, :]), st_S, mask=(mask_K[:, None] & mask_V[None, :]))


@triton.jit
def chunk_parallel_output_kernel(
    ptr_in_q,
    ptr_in_k,
    ptr_in_v,
    ptr_in_g,
    ptr_init_S, ptr_final_S,
    ptr_out_o,
    ptr_h, T, H, NT,
    c0: tl.float64,
    dim_K: tl.constexpr, BLOCK_K: tl.constexpr,
    dim_V: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, PRECISION: tl.constexpr, HAS_INIT: tl.constexpr,
    STORE_FINAL: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    """The output kernel (chunk_parallel.md): one program per (value block, chunk, batch x
    head); the inter-chunk read of the stored state and the intra-chunk matrix, over key blocks."""
    i_split = tl.program_id(0)
    i_t = tl.program_id(1)
    i_bh = tl.program_id(2).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_V = i_split * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_V = o_V < dim_V
    o_t = tl.arange(0, BLOCK_T)
    last_T = o_t == BLOCK_T - 1
    o_T = i_t * BLOCK_T + o_t
    mask_T = o_T < T
    r__read0_S = tl.zeros([BLOCK_T, BLOCK_V], dtype=ACC)
    A__read0_S_0 = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
    for i_k in range(0, tl.cdiv(dim_K, BLOCK_K)):
        o_K = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_K = o_K < dim_K
        raw_q = tl.load(ptr_in_q + (i_b * T * H + i_h) * (dim_K) + (o_T[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
        raw_k = tl.load(ptr_in_k + (i_b * T * H + i_h) * (dim_K) + (o_T[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
        raw_g = tl.load(ptr_in_g + (i_b * T * H + i_h) * (dim_K) + (o_T[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
        in_q = raw_q.to(ACC)
        in_k = raw_k.to(ACC)
        in_g = raw_g.to(ACC)
        h_S = tl.load(ptr_h + (i_bh * NT + i_t) * (dim_K * dim_V) + o_K[:, None] * dim_V + o_V[None, :], mask=mask_K[:, None] & mask_V[None, :], other=0.0).to(DOT)
        d_S = tl.where((mask_T[:, None] & mask_K[None, :]), in_g, 0.0)
        reset_S = d_S == float("-inf")
        G_S = tl.cumsum(tl.where(reset_S, 0.0, d_S * 1.4426950408889634), axis=0)
        R_S = tl.cumsum(reset_S.to(ACC), axis=0)
        Glast_S = tl.sum(tl.where(last_T[:, None], G_S, 0.0), axis=0)
        Rlast_S = tl.sum(tl.where(last_T[:, None], R_S, 0.0), axis=0)
        G0_S = tl.where(R_S == 0.0, G_S, float("-inf"))
        Gend_S = tl.where(R_S == Rlast_S, Glast_S - G_S, float("-inf"))
        Glast0_S = tl.where(Rlast_S == 0.0, Glast_S, float("-inf"))
        k0_S = tl.where((mask_T[:, None] & mask_K[None, :]), in_k, 0.0)
        q__read0_S = tl.where((mask_T[:, None] & mask_K[None, :]), (tl.full((), c0, ACC) * in_q), 0.0)
        r__read0_S += tl.dot((q__read0_S * tl.exp2(G0_S)).to(DOT), h_S, input_precision=PRECISION)
        a_S = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
        for c in tl.static_range(1, BLOCK_T // SUB_T):
            n_S00 = tl.sum(tl.where((o_t == c * SUB_T - 1)[:, None], G_S, 0.0), axis=0)
            rn_S00 = tl.sum(tl.where((o_t == c * SUB_T - 1)[:, None], R_S, 0.0), axis=0)
            qa_S00 = q__read0_S * tl.exp2(tl.where(R_S == rn_S00[None, :], tl.minimum(G_S - n_S00[None, :], 0.0), float("-inf")))
            ka_S00 = k0_S * tl.exp2(tl.where(rn_S00[None, :] == R_S, tl.minimum(n_S00[None, :] - G_S, 0.0), float("-inf")))
            a_S += tl.where(((o_t // SUB_T) == c)[:, None] & (o_t < c * SUB_T)[None, :], tl.dot(qa_S00.to(DOT), tl.trans(ka_S00.to(DOT)), input_precision=PRECISION), 0.0)
        for j in range(0, BLOCK_T):
            kj_S00 = tl.sum(tl.where((o_t == j)[:, None], k0_S, 0.0), axis=0)
            gj_S00 = tl.sum(tl.where((o_t == j)[:, None], G_S, 0.0), axis=0)
            rj_S00 = tl.sum(tl.where((o_t == j)[:, None], R_S, 0.0), axis=0)
            col_S00 = tl.sum(q__read0_S * kj_S00[None, :] * tl.exp2(tl.where(R_S == rj_S00[None, :], tl.minimum(G_S - gj_S00[None, :], 0.0), float("-inf"))), axis=1)
            a_S += tl.where((((o_t // SUB_T) == (j // SUB_T)) & (o_t >= j))[:, None] & (o_t == j)[None, :], col_S00[:, None], 0.0)
        A__read0_S_0 += a_S
    raw_v = tl.load(ptr_in_v + (i_b * T * H + i_h) * (dim_V) + (o_T[:, None] * (H * dim_V) + o_V[None, :]), mask=(mask_T[:, None] & mask_V[None, :]), other=0.0)
    r__read0_S += tl.dot(A__read0_S_0.to(DOT), raw_v.to(DOT), input_precision=PRECISION)
    read__read0_S = r__read0_S
    tl.store(ptr_out_o + (i_b * T * H + i_h) * (dim_V) + (o_T[:, None] * (H * dim_V) + o_V[None, :]), read__read0_S, mask=(mask_T[:, None] & mask_V[None, :]))


def _chunk_parallel_chunk(dims, block_split):
    """The default chunk (`chunk_size` not given; chunk_parallel.md, "Chunks"): 128 steps when
    the output kernel takes 128 value lanes beside a scalar decay or none (key blocks of 16, 8
    warps: 0 spill bytes on sm_80 and sm_90a at K = V = 128), halving the fp32 chunk states of
    chunks of 64; else 64 (beside key-wise gates 128 spilled 336-3408 B, beside 64 value lanes
    and key blocks of 64, 824-32096 B)."""
    return 64


# the programs that fill the GPU (an H100's SMs): a launch of fewer reaches that share of the
# bandwidth (seqc/gpu_model.py), so wider state blocks pay in a small launch
WIDE_VALUE_PROGRAMS = 132


def _chunk_parallel_state_time(block_k, block_v, block_t, dims):
    """The memory time of the state pass with [block_k, block_v] state blocks, up to a constant
    (chunk_parallel.md, "Blocks"): a program reads the key side (k, the key-wise gates: 2 [T, K]
    read(s)) once a value block and the value side (1 [T, V] read(s)) once a key block; the chunk states
    are stored once; a launch of fewer programs than WIDE_VALUE_PROGRAMS reaches that share of
    the bandwidth."""
    K_, V_ = dims["K"], dims["V"]
    n_k, n_v = triton.cdiv(K_, block_k), triton.cdiv(V_, block_v)
    moved = n_v * 2 * K_ + n_k * 1 * V_ + K_ * V_ / block_t
    return moved / min(1.0, dims["B"] * dims["H"] * n_k * n_v / WIDE_VALUE_PROGRAMS)


def _chunk_parallel_state_blocks(dims, block_split, block_t):
    """The state pass's (BLOCK_K, BLOCK_V) at `dims` (chunk_parallel.md, "Blocks"): of the
    blocks that fit (key blocks of at most 64 lanes; value blocks of at most 128
    lanes, 64 beside a wider key block), the one of least memory time
    (`_chunk_parallel_state_time`)."""
    top_k = max(16, _pow2(dims["K"]))
    top_v = max(16, _pow2(dims["V"]))
    top_v = min(top_v, 128, max(16, _pow2(block_split)))
    keys = [w for w in (64, 32, 16) if w <= top_k] or [top_k]
    values = [w for w in (128, 64, 32, 16) if w <= top_v] or [top_v]
    fits = [(bk, bv) for bk in keys for bv in values if bk <= 64 or bv <= 64] or [(keys[-1], values[-1])]
    return min(fits, key=lambda b: _chunk_parallel_state_time(b[0], b[1], block_t, dims))


def _state_pass_programs(dims, block_split):
    """Programs of the state pass at `dims` (its grid in _run_chunk_parallel, at the default
    chunk): key blocks x value blocks x batch x heads; `_choose_mode` weighs them."""
    block_k, block_v = _chunk_parallel_state_blocks(dims, block_split, _chunk_parallel_chunk(dims, block_split))
    return triton.cdiv(dims["K"], block_k) * triton.cdiv(dims["V"], block_v) * dims["B"] * dims["H"]

def _run_chunk_parallel(x, p, dims, init, final, outputs, consts, options):
    B, T, H = dims["B"], dims["T"], dims["H"]
    spare = _spare(outputs)
    acc = _acc(spare)
    dot = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}.get(next(iter(x.values())).dtype, acc)
    precision = options.get("precision") or ("tf32" if dot == tl.float32 else "ieee")
    blocks = {
        "BLOCK_K": max(16, _pow2(dims["K"])),
        "BLOCK_V": max(16, _pow2(dims["V"])),
    }
    blocks["BLOCK_V"] = min(blocks["BLOCK_V"], 64, max(16, _pow2(options.get("block_split", 128))))
    # key blocks: the key-wise output kernel, which also holds the [BLOCK_T, BLOCK_K] gates and
    # re-anchored factors, 16 (chunk_parallel.md, "Blocks"); the state pass's below
    state_blocks, output_blocks = dict(blocks), dict(blocks)
    output_blocks["BLOCK_K"] = min(blocks["BLOCK_K"], 16)
    # value blocks: the output kernel takes up to 64 lanes (q and k read once a
    # value block: one block at V = 64; chunk_parallel.md, "Blocks")
    output_blocks["BLOCK_V"] = min(max(16, _pow2(dims["V"])), 64, max(16, _pow2(options.get("block_split", 128))))
    if output_blocks["BLOCK_V"] > 64:     # beside 128 value lanes, key blocks of 16
        output_blocks["BLOCK_K"] = min(output_blocks["BLOCK_K"], 16)
    block_t = max(16, _pow2(options.get("chunk_size") or _chunk_parallel_chunk(dims, options.get("block_split", 128))))
    n_t = triton.cdiv(T, block_t)
    # the state pass's blocks: the least memory time for the launch (_chunk_parallel_state_blocks)
    state_blocks["BLOCK_K"], state_blocks["BLOCK_V"] = _chunk_parallel_state_blocks(dims, options.get("block_split", 128), block_t)
    n_k = triton.cdiv(dims["K"], state_blocks["BLOCK_K"])
    chunk_states = torch.empty((B, H, n_t, dims["K"], dims["V"]), dtype=_chunk_state_dtype(spare, x, options), device=spare.device)

    def arguments(blocks):
        return [
            x["q"],
            x["k"],
            x["v"],
            x["g"],
            spare if init is None else init["S"], spare if final is None else final["S"],
            outputs["o"],
            chunk_states, T, H, n_t,
            consts["c0"],
            dims["K"], blocks["BLOCK_K"],
            dims["V"], blocks["BLOCK_V"],
            block_t, min(16, block_t), precision, init is not None, final is not None, acc, dot,
        ]
    key = (tuple(sorted(dims.items())), str(spare.dtype), str(dot), block_t)

    def state_launch(config):
        chosen = _with_blocks(state_blocks, config)
        grid = (n_k, triton.cdiv(dims["V"], chosen["BLOCK_V"]), B * H)
        return grid, arguments(chosen), _launch_options(config)

    def output_launch(config):
        chosen = _with_blocks(output_blocks, config)
        grid = (triton.cdiv(dims["V"], chosen["BLOCK_V"]), n_t, B * H)
        return grid, arguments(chosen), _launch_options(config)
    configs = _chunk_parallel_configs(output_blocks["BLOCK_V"], dims["V"], state_blocks["BLOCK_V"])
    _launch(chunk_parallel_state_kernel, configs["state"], state_launch, key)
    _launch(chunk_parallel_output_kernel, configs["output"], output_launch, key)


def _chunk_parallel_configs(block_v, dim_v=None, state_v=64):
    """Each kernel's launch configurations, its fallback (Triton's defaults: 4 warps, 3 stages)
    first (autotune.md; every entry compiles without spills at K = V = 64 and 128). The key-wise
    output kernel's fallback is 8 warps, 2 stages when the value block has dead lanes (V = 48:
    4 warps spilled 8-24 B on sm_90a, so no 4-warp entry there), and its only full-block entry when it reads S_{t-1} (rwkv6:
    4 warps spilled 64 B on sm_90a; its half-block entry then 8 warps, 2 stages too), and the
    scalar-decay one's when its value block is 128
    lanes, 8 warps, one stage, its only full-block entry (4 warps, 3 stages spilled 260 B on
    sm_80, 8 warps, 2 stages 144 B with key blocks of 64); the state pass runs 8 warps only
    beside a normaliser
    (mlstm: 4 warps spilled 32-40 B on sm_80), and beside a scalar decay at 128 value lanes
    (chunks of 128) or a state block of 128 value lanes (`state_v`) 8 warps, one stage only (4
    warps spilled 16-32 B on sm_80 (mamba2), 8 warps, 3 stages 18 B (linear_attn); beside a
    normaliser at 128 lanes 8 warps, 3 stages 40 B (mlstm)), beside key-wise gates at 128 lanes
    8 warps only (4 spilled 20 B: chunk_parallel.md, "Blocks")."""
    half = {"BLOCK_V": block_v // 2} if block_v >= 32 else {}
    output = [{}, {"num_warps": 8, "num_stages": 2}]
    if dim_v is not None and dim_v < block_v:
        output = output[1:]     # dead value lanes: 4 warps spilled 8-24 B on sm_90a at V = 48
    state = [{}, {"num_warps": 8}, {"num_stages": 2}]
    if state_v > 64:    # a key-wise state block of 128 value lanes: 4 warps spilled 20 B (gla)
        state = [{"num_warps": 8}]
    return {
        "state": state,
        "output": output + ([dict(half)] if half else []),
    }



@triton.jit
def chunk_kernel(
    ptr_in_q,
    ptr_in_k,
    ptr_in_v,
    ptr_in_g,
    ptr_init_S, ptr_final_S,
    ptr_out_o,
    T, H,
    c0: tl.float64,
    dim_K: tl.constexpr, BLOCK_K: tl.constexpr,
    dim_V: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, PRECISION: tl.constexpr,
    HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    """One program per (value block, batch x head); time in blocks of BLOCK_T steps."""
    i_split = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_K = tl.arange(0, BLOCK_K)
    o_V = i_split * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_K = o_K < dim_K
    mask_V = o_V < dim_V
    o_t = tl.arange(0, BLOCK_T)
    last_T = o_t == BLOCK_T - 1
    if HAS_INIT:
        st_S = tl.load(ptr_init_S + (i_b * H + i_h) * (dim_K * dim_V) + (o_K[:, None] * (dim_V) + o_V[None, :]), mask=(mask_K[:, None] & mask_V[None, :]), other=0.0).to(ACC)
    else:
        st_S = tl.full([BLOCK_K, BLOCK_V], 0.0, dtype=ACC)
    for t0 in range(0, T, BLOCK_T):
        o_T = t0 + o_t
        mask_T = o_T < T
        raw_q = tl.load(ptr_in_q + ((i_b * T + t0) * H + i_h) * (dim_K) + (o_t[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
        in_q = raw_q.to(ACC)
        raw_k = tl.load(ptr_in_k + ((i_b * T + t0) * H + i_h) * (dim_K) + (o_t[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
        in_k = raw_k.to(ACC)
        raw_v = tl.load(ptr_in_v + ((i_b * T + t0) * H + i_h) * (dim_V) + (o_t[:, None] * (H * dim_V) + o_V[None, :]), mask=(mask_T[:, None] & mask_V[None, :]), other=0.0)
        in_v = raw_v.to(ACC)
        raw_g = tl.load(ptr_in_g + ((i_b * T + t0) * H + i_h) * (dim_K) + (o_t[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
        in_g = raw_g.to(ACC)
        # chunk group S: inter-chunk read-out, intra-chunk matrix, state pass (chunk.md)
        k0_S = tl.where((mask_T[:, None] & mask_K[None, :]), in_k, 0.0)
        kd0_S = raw_k.to(DOT)
        v0_S = raw_v.to(DOT)
        d_S = tl.where((mask_T[:, None] & mask_K[None, :]), in_g, 0.0)
        reset_S = d_S == float("-inf")
        G_S = tl.cumsum(tl.where(reset_S, 0.0, d_S * 1.4426950408889634), axis=0)
        R_S = tl.cumsum(reset_S.to(ACC), axis=0)
        Glast_S = tl.sum(tl.where(last_T[:, None], G_S, 0.0), axis=0)
        Rlast_S = tl.sum(tl.where(last_T[:, None], R_S, 0.0), axis=0)
        G0_S = tl.where(R_S == 0.0, G_S, float("-inf"))
        Gend_S = tl.where(R_S == Rlast_S, Glast_S - G_S, float("-inf"))
        Glast0_S = tl.where(Rlast_S == 0.0, Glast_S, float("-inf"))
        sd_S = st_S.to(DOT)
        q_S = tl.where((mask_T[:, None] & mask_K[None, :]), (tl.full((), c0, ACC) * in_q), 0.0)
        r_S = tl.dot((q_S * tl.exp2(G0_S)).to(DOT), sd_S, input_precision=PRECISION)
        A_S = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
        for c in tl.static_range(1, BLOCK_T // SUB_T):
            n_S = tl.sum(tl.where((o_t == c * SUB_T - 1)[:, None], G_S, 0.0), axis=0)
            rn_S = tl.sum(tl.where((o_t == c * SUB_T - 1)[:, None], R_S, 0.0), axis=0)
            qa_S = q_S * tl.exp2(tl.where(R_S == rn_S[None, :], tl.minimum(G_S - n_S[None, :], 0.0), float("-inf")))
            ka_S = k0_S * tl.exp2(tl.where(rn_S[None, :] == R_S, tl.minimum(n_S[None, :] - G_S, 0.0), float("-inf")))
            A_S += tl.where(((o_t // SUB_T) == c)[:, None] & (o_t < c * SUB_T)[None, :], tl.dot(qa_S.to(DOT), tl.trans(ka_S.to(DOT)), input_precision=PRECISION), 0.0)
        for j in range(0, BLOCK_T):
            kj_S = tl.sum(tl.where((o_t == j)[:, None], k0_S, 0.0), axis=0)
            gj_S = tl.sum(tl.where((o_t == j)[:, None], G_S, 0.0), axis=0)
            rj_S = tl.sum(tl.where((o_t == j)[:, None], R_S, 0.0), axis=0)
            col_S = tl.sum(q_S * kj_S[None, :] * tl.exp2(tl.where(R_S == rj_S[None, :], tl.minimum(G_S - gj_S[None, :], 0.0), float("-inf"))), axis=1)
            A_S += tl.where((((o_t // SUB_T) == (j // SUB_T)) & (o_t >= j))[:, None] & (o_t == j)[None, :], col_S[:, None], 0.0)
        r_S += tl.dot(A_S.to(DOT), v0_S, input_precision=PRECISION)
        read__read0_S = r_S
        st_S = st_S * tl.exp2(Glast0_S)[:, None]
        st_S += tl.dot(tl.trans((k0_S * tl.exp2(Gend_S)).to(DOT)), v0_S, input_precision=PRECISION)

        tl.store(ptr_out_o + ((i_b * T + t0) * H + i_h) * (dim_V) + (o_t[:, None] * (H * dim_V) + o_V[None, :]), read__read0_S, mask=(mask_T[:, None] & mask_V[None, :]))
    if STORE_FINAL:
        tl.store(ptr_final_S + (i_b * H + i_h) * (dim_K * dim_V) + (o_K[:, None] * (dim_V) + o_V[None, :]), st_S, mask=(mask_K[:, None] & mask_V[None, :]))


def _chunk_blocks(dims, block_split):
    """The kernel's blocks at `dims` and its value blocks a batch x head (its programs: B x H
    times them; `_choose_mode` counts these). GPU-fit blocking (blockwise.md, "Blocks"): value
    blocks of at most 64 lanes (chunk_dplr: 32, 16 when a key block is wider than 64)."""
    blocks = {
        "BLOCK_K": max(16, _pow2(dims["K"])),
        "BLOCK_V": max(16, _pow2(dims["V"])),
    }
    blocks["BLOCK_V"] = min(blocks["BLOCK_V"], 64 if blocks["BLOCK_K"] <= 128 else 32, max(16, _pow2(block_split)))
    return blocks, triton.cdiv(dims["V"], blocks["BLOCK_V"])


def _run_chunk(x, p, dims, init, final, outputs, consts, options):
    B, T, H = dims["B"], dims["T"], dims["H"]
    spare = _spare(outputs)
    acc = _acc(spare)
    # 16-bit inputs dot as they are (blockwise.md, "Dtypes"); fp32 ones in "tf32" unless asked
    dot = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}.get(next(iter(x.values())).dtype, acc)
    precision = options.get("precision") or ("tf32" if dot == tl.float32 else "ieee")
    # GPU-fit blocking (blockwise.md, "Blocks"): chunks of at most 16 steps, value blocks as
    # _chunk_blocks, 8 warps, one stage
    blocks, n_split = _chunk_blocks(dims, options.get("block_split", 128))
    block_t = min(max(16, _pow2(options.get("chunk_size", 64))), 16)
    chunk_kernel[(n_split, B * H)](
        x["q"],
        x["k"],
        x["v"],
        x["g"],
        spare if init is None else init["S"], spare if final is None else final["S"],
        outputs["o"],
        T, H,
        consts["c0"],
        dims["K"], blocks["BLOCK_K"],
        dims["V"], blocks["BLOCK_V"],
        block_t, block_t, precision,
        init is not None, final is not None, acc, dot, num_warps=8, num_stages=1,
    )



@triton.jit
def fused_recurrent_bwd_kernel(
    ptr_in_q, ptr_din_q,
    ptr_in_k, ptr_din_k,
    ptr_in_v, ptr_din_v,
    ptr_in_g, ptr_din_g,
    ptr_ckpt_S, ptr_scratch_S, ptr_dfinal_S, ptr_dinit_S,
    ptr_do_o,
    T, H, SEGMENT, N_SPLIT,
    c0: tl.float64,
    dim_K: tl.constexpr, BLOCK_K: tl.constexpr,
    dim_V: tl.constexpr, BLOCK_V: tl.constexpr,
    RELOAD_PARAMS: tl.constexpr, ACC: tl.constexpr,
):
    """The reverse-time loop of fused_recurrent_kernel (fused_recurrent_bwd.md): one program per
    (value block, batch x head), segments of SEGMENT steps last to first; per segment the states
    are recomputed from its checkpoint into the program's scratch, then the steps are walked
    backwards, each step's adjoint generated from the spec's expressions."""
    i_split = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    i_prog = i_bh * N_SPLIT + i_split
    o_K = tl.arange(0, BLOCK_K)
    o_V = i_split * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_K = o_K < dim_K
    mask_V = o_V < dim_V
    dst_S = tl.load(ptr_dfinal_S + (i_b * H + i_h) * (dim_K * dim_V) + (o_K[:, None] * (dim_V) + o_V[None, :]), mask=(mask_K[:, None] & mask_V[None, :]), other=0.0).to(ACC)
    n_seg = tl.cdiv(T, SEGMENT)
    for back_seg in range(0, n_seg):
        i_seg = n_seg - 1 - back_seg
        t0 = i_seg * SEGMENT
        t1 = tl.minimum(t0 + SEGMENT, T)
        st_S = tl.load(ptr_ckpt_S + (i_bh * tl.cdiv(T, SEGMENT) + i_seg) * (dim_K * dim_V) + (o_K[:, None] * (dim_V) + o_V[None, :]), mask=(mask_K[:, None] & mask_V[None, :]), other=0.0).to(ACC)
        # the segment's states, recomputed from its checkpoint: the state entering step t at
        # slot t - t0 of the scratch
        for t in range(t0, t1):
            tl.store(ptr_scratch_S + (i_prog * SEGMENT + t - t0) * (BLOCK_K * BLOCK_V) + (tl.arange(0, BLOCK_K)[:, None] * (BLOCK_V) + tl.arange(0, BLOCK_V)[None, :] * (1)), st_S)
            st_S_0 = st_S
            in_q = tl.load(ptr_in_q + ((i_b * T + t) * H + i_h) * (dim_K) + (o_K), mask=(mask_K), other=0.0).to(ACC)
            in_k = tl.load(ptr_in_k + ((i_b * T + t) * H + i_h) * (dim_K) + (o_K), mask=(mask_K), other=0.0).to(ACC)
            in_v = tl.load(ptr_in_v + ((i_b * T + t) * H + i_h) * (dim_V) + (o_V), mask=(mask_V), other=0.0).to(ACC)
            in_g = tl.load(ptr_in_g + ((i_b * T + t) * H + i_h) * (dim_K) + (o_K), mask=(mask_K), other=0.0).to(ACC)
            v0 = tl.exp(in_g)
            v1 = (v0[:, None] * st_S_0)
            v2 = (in_k[:, None] * in_v[None, :])
            v3 = (v1 + v2)
            st_S_1 = v3
            v4 = (tl.full((), c0, ACC) * in_q)
            v5 = tl.sum(tl.where(mask_K[:, None], (v4[:, None] * st_S_1), 0.0), axis=0)
            st_S = st_S_1
        tl.debug_barrier()      # the scratch stored above, read below by other threads
        for back_t in range(0, t1 - t0):
            t = t1 - 1 - back_t
            st_S_0 = tl.load(ptr_scratch_S + (i_prog * SEGMENT + t - t0) * (BLOCK_K * BLOCK_V) + (tl.arange(0, BLOCK_K)[:, None] * (BLOCK_V) + tl.arange(0, BLOCK_V)[None, :] * (1)))
            in_q = tl.load(ptr_in_q + ((i_b * T + t) * H + i_h) * (dim_K) + (o_K), mask=(mask_K), other=0.0).to(ACC)
            in_k = tl.load(ptr_in_k + ((i_b * T + t) * H + i_h) * (dim_K) + (o_K), mask=(mask_K), other=0.0).to(ACC)
            in_v = tl.load(ptr_in_v + ((i_b * T + t) * H + i_h) * (dim_V) + (o_V), mask=(mask_V), other=0.0).to(ACC)
            in_g = tl.load(ptr_in_g + ((i_b * T + t) * H + i_h) * (dim_K) + (o_K), mask=(mask_K), other=0.0).to(ACC)
            v0 = tl.exp(in_g)
            v1 = (v0[:, None] * st_S_0)
            v2 = (in_k[:, None] * in_v[None, :])
            v3 = (v1 + v2)
            st_S_1 = v3
            v4 = (tl.full((), c0, ACC) * in_q)
            v5 = tl.sum(tl.where(mask_K[:, None], (v4[:, None] * st_S_1), 0.0), axis=0)
            do_o = tl.load(ptr_do_o + ((i_b * T + t) * H + i_h) * (dim_V) + (o_V), mask=(mask_V), other=0.0).to(ACC)
            g0 = tl.sum(tl.where(mask_V[:, None], (do_o[:, None] * tl.permute(st_S_1, (1, 0))), 0.0), axis=0)
            g1 = (g0 * tl.full((), c0, ACC))
            din_q = g1
            g2 = tl.permute((do_o[:, None] * v4[None, :]), (1, 0))
            dst_S_1 = dst_S + g2
            g3 = tl.sum(tl.where(mask_V[None, :], (dst_S_1 * st_S_0), 0.0), axis=1)
            g4 = (g3 * v0)
            din_g = g4
            g5 = (dst_S_1 * v0[:, None])
            dst_S_0 = g5
            g6 = tl.sum(tl.where(mask_V[None, :], (dst_S_1 * in_v[None, :]), 0.0), axis=1)
            din_k = g6
            g7 = tl.sum(tl.where(mask_K[:, None], (dst_S_1 * in_k[:, None]), 0.0), axis=0)
            din_v = g7
            dst_S = dst_S_0
            tl.store(ptr_din_q + (((i_b * T + t) * H + i_h) * N_SPLIT + i_split) * (dim_K) + (o_K), din_q, mask=(mask_K))
            tl.store(ptr_din_k + (((i_b * T + t) * H + i_h) * N_SPLIT + i_split) * (dim_K) + (o_K), din_k, mask=(mask_K))
            tl.store(ptr_din_v + ((i_b * T + t) * H + i_h) * (dim_V) + (o_V), din_v, mask=(mask_V))
            tl.store(ptr_din_g + (((i_b * T + t) * H + i_h) * N_SPLIT + i_split) * (dim_K) + (o_K), din_g, mask=(mask_K))
        tl.debug_barrier()      # the scratch read above, before the next segment stores over it
    tl.store(ptr_dinit_S + (i_b * H + i_h) * (dim_K * dim_V) + (o_K[:, None] * (dim_V) + o_V[None, :]), dst_S, mask=(mask_K[:, None] & mask_V[None, :]))


SEGMENT = 64            # steps between the training forward's stored states


def _fused_recurrent_bwd_warps(blocks, reload):
    """Warps of a backward program: the fewest (4 to 16) at which the values it keeps in
    registers (states and their adjoints, the params or, `reload`, twice the largest, the
    accumulated params' adjoints, a block read in two layouts at each read), spread over its
    threads, leave 64 registers for the step's temporaries within a thread's share (255, or
    65536 over the threads)."""
    warps = 4
    while warps < 16 and (2 * (blocks["BLOCK_K"] * blocks["BLOCK_V"])) / (32 * warps) + 64 > min(255, 2048 // warps):
        warps *= 2
    return warps


def _fused_recurrent_bwd_registers(warps):
    """ptxas's register limit for a backward program of `warps` warps: a thread's whole share
    (255, or 65536 over the threads). Without it ptxas picks a lower count by its own
    heuristics and spills to reach it (fused_recurrent_bwd.md, "Registers")."""
    return min(255, 65536 // (32 * warps) // 8 * 8)


def _fused_recurrent_shares(n_split, lead, names, sizes, split, like):
    """A gradient buffer `[*lead, n_split?, *sizes]` (zeros: a program writes only its lanes),
    with one share per split program when the tensor (dims `names`) lacks the split dim, and the
    axis of the shares."""
    if split is None or split in names:
        return torch.zeros((*lead, *sizes), dtype=like.dtype, device=like.device), None
    shares = torch.zeros((*lead, n_split, *sizes), dtype=like.dtype, device=like.device)
    return shares, len(lead)


def _fused_recurrent_sum(buffer, axis):
    """A gradient buffer with its split shares summed."""
    return buffer if axis is None else buffer.sum(dim=axis)


class _FusedRecurrentTrain(torch.autograd.Function):
    """fused_recurrent_kernel forward keeping one state a segment; backward
    fused_recurrent_bwd_kernel (the generated adjoint), its shares summed here."""

    @staticmethod
    def forward(ctx, meta, *tensors):
        dims, consts, options, has_init, want_final = meta
        x, p, init = _fused_recurrent_split(tensors, has_init)
        B, T, H = dims["B"], dims["T"], dims["H"]
        first = next(iter(x.values()))
        compute = torch.float64 if first.dtype == torch.float64 else torch.float32
        device = first.device
        segment = options["segment"]
        n_seg = triton.cdiv(T, segment)
        x = {n: t.contiguous() for n, t in x.items()}
        p = {n: t.contiguous() for n, t in p.items()}
        init = None if init is None else {n: t.to(compute).contiguous() for n, t in init.items()}
        outputs = {
            "o": torch.empty((B, T, H, dims["V"]), dtype=first.dtype, device=device),
        }
        final = {
            "S": torch.empty((B, H, dims["K"], dims["V"]), dtype=compute, device=device),
        }
        checkpoints = {
            "S": torch.empty((B, H, n_seg, dims["K"], dims["V"]), dtype=compute, device=device),
        }
        _run_fused_recurrent(x, p, dims, init, final, outputs, consts, options, checkpoints)
        ctx.meta = meta
        ctx.save_for_backward(*x.values(), *p.values(), *checkpoints.values())
        results = [outputs[n] for n in OUTPUTS] + ([final[n] for n in STATES] if want_final else [])
        return tuple(results)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        dims, consts, options, has_init, want_final = ctx.meta
        saved = ctx.saved_tensors
        n_in, n_par = len(INPUTS), len(PARAMS)
        x = dict(zip(INPUTS, saved[:n_in]))
        p = dict(zip(PARAMS, saved[n_in:n_in + n_par]))
        checkpoints = dict(zip(STATES, saved[n_in + n_par:]))
        B, T, H = dims["B"], dims["T"], dims["H"]
        first = next(iter(x.values()))
        compute = torch.float64 if first.dtype == torch.float64 else torch.float32
        device = first.device
        d_out = {n: g.to(compute).contiguous() for n, g in zip(OUTPUTS, grads)}
        d_final = {n: (grads[len(OUTPUTS) + i].to(compute).contiguous() if want_final
                       else torch.zeros_like(checkpoints[n][:, :, 0]))
                   for i, n in enumerate(STATES)}
        segment = options["segment"]
        blocks, n_split = _fused_recurrent_blocks(dims, options.get("block_split", 128),
                                                  STATE_LANES // 2)
        split = "V"
        programs = n_split * B * H
        reload = _fused_recurrent_reloads(blocks)
        warps = _fused_recurrent_bwd_warps(blocks, reload)
        scratch = {
            "S": torch.empty((programs, segment, blocks["BLOCK_K"], blocks["BLOCK_V"]), dtype=compute, device=device),
        }
        like = torch.empty((), dtype=compute, device=device)
        d_in = {
            "q": _fused_recurrent_shares(n_split, (B, T, H), ("K", ), (dims["K"], ), split, like),
            "k": _fused_recurrent_shares(n_split, (B, T, H), ("K", ), (dims["K"], ), split, like),
            "v": _fused_recurrent_shares(n_split, (B, T, H), ("V", ), (dims["V"], ), split, like),
            "g": _fused_recurrent_shares(n_split, (B, T, H), ("K", ), (dims["K"], ), split, like),
        }
        d_par = {
        }
        d_init = {
            "S": _fused_recurrent_shares(n_split, (B, H), ("K", "V", ), (dims["K"], dims["V"], ), split, like),
        }
        fused_recurrent_bwd_kernel[(n_split, B * H)](
            x["q"], d_in["q"][0],
            x["k"], d_in["k"][0],
            x["v"], d_in["v"][0],
            x["g"], d_in["g"][0],
            checkpoints["S"], scratch["S"], d_final["S"], d_init["S"][0],
            d_out["o"],
            T, H, segment, n_split,
            consts["c0"],
            dims["K"], blocks["BLOCK_K"],
            dims["V"], blocks["BLOCK_V"],
            reload, _acc(first), num_warps=warps, maxnreg=_fused_recurrent_bwd_registers(warps),
        )
        grads_in = [_fused_recurrent_sum(*d_in[n]).to(x[n].dtype) for n in INPUTS]
        grads_par = {n: d.sum(dim=(0, 2)) for n, d in d_par.items()}
        grads_par = [grads_par[n].to(p[n].dtype) if n in grads_par else torch.zeros_like(p[n])
                     for n in PARAMS]      # a param the step does not differentiate: zero
        grads_init = [_fused_recurrent_sum(*d_init[n]) for n in STATES] if has_init else []
        return (None, *grads_in, *grads_par, *grads_init)


def _fused_recurrent_split(tensors, has_init):
    n_in, n_par = len(INPUTS), len(PARAMS)
    x = dict(zip(INPUTS, tensors[:n_in]))
    p = dict(zip(PARAMS, tensors[n_in:n_in + n_par]))
    init = dict(zip(STATES, tensors[n_in + n_par:])) if has_init else None
    return x, p, init


def train(inputs, params, dims, initial_state=None, output_final_state=False, segment=None,
          block_split=128, **ignored):
    """`run(mode="fused_recurrent")`, differentiable in every input, param and initial state by
    fused_recurrent_bwd_kernel; the forward keeps one state every `segment` steps (default
    SEGMENT). Other options of `run` do not apply to this mode and are ignored."""
    consts = _constants(dims)
    options = {"segment": segment or SEGMENT, "block_split": block_split}
    has_init = initial_state is not None
    meta = (dims, consts, options, has_init, output_final_state)
    tensors = [inputs[n] for n in INPUTS] + [params[n] for n in PARAMS] + \
        ([initial_state[n] for n in STATES] if has_init else [])
    flat = _FusedRecurrentTrain.apply(meta, *tensors)
    outputs = dict(zip(OUTPUTS, flat[:len(OUTPUTS)]))
    final = dict(zip(STATES, flat[len(OUTPUTS):])) if output_final_state else None
    return outputs, final




# ---- helpers of the recurrence cores with adjoint kernels (chunk_core.md, chunk_delta_core.md) ----


def _widened(state, *tensors):
    """`tensors` (None kept) in `state`'s dtype where they are 16-bit and it is not: a core
    whose kernels take q, k, v in one dtype, given a 16-bit call's inputs as they are (the
    torch module's `run(..., call_dtype=True)`, seqc/autograd.py), upcasts them here."""
    narrow = (torch.bfloat16, torch.float16)
    if state.dtype in narrow:
        return tensors
    return tuple(x.to(state.dtype) if x is not None and x.dtype in narrow else x
                 for x in tensors)


@triton.jit
def _core_gates(ptr_g, offs_tk, offs_t, mask_tk, mask_t, o_t, DECAY: tl.constexpr,
                BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    """(b, c) [BLOCK_T, BLOCK_K]: the finite log decays cumulated from the chunk's start and the
    count of -inf ones (a -inf decay is a reset: nothing decays across it); 0 past T and for
    DECAY 0; a scalar decay (DECAY 1) is broadcast over the key lanes."""
    if DECAY == 2:
        g = tl.load(ptr_g + offs_tk, mask=mask_tk, other=0.0).to(ACC)
    elif DECAY == 1:
        g = tl.load(ptr_g + offs_t, mask=mask_t, other=0.0).to(ACC)[:, None] \
            + tl.zeros([BLOCK_T, BLOCK_K], dtype=ACC)
    else:
        g = tl.zeros([BLOCK_T, BLOCK_K], dtype=ACC)
    cut = g == float("-inf")
    return tl.cumsum(tl.where(cut, 0.0, g), axis=0), tl.cumsum(cut.to(ACC), axis=0)


@triton.jit
def _core_gap(b_to, c_to, b_from, c_from):
    """exp(b_to - b_from), the decay from one point of a chunk to a later one: 0 when a -inf log
    decay lies between them (their counts c differ); the exponent is clamped to <= 0."""
    return tl.where(c_to == c_from, tl.exp(tl.minimum(b_to - b_from, 0.0)), 0.0)


@triton.jit
def _core_decay(b, c, o_t):
    """M[i, j] = exp(b_i - b_j) for j <= i, else 0, of a scalar decay (equal on every lane)."""
    b1 = tl.max(b, axis=1)
    c1 = tl.max(c, axis=1)
    return tl.where(o_t[:, None] >= o_t[None, :],
                    _core_gap(b1[:, None], c1[:, None], b1[None, :], c1[None, :]), 0.0)


@triton.jit
def _core_state_block(K, V, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr):
    """Offsets and mask of a [K, V] state (key dim first) in a [BLOCK_K, BLOCK_V] block."""
    o_k = tl.arange(0, BLOCK_K)
    o_v = tl.arange(0, BLOCK_V)
    return o_k[:, None] * V + o_v[None, :], (o_k < K)[:, None] & (o_v < V)[None, :]


@triton.jit
def _core_keywise_scores(q, k, b, c, o_t, BLOCK_T: tl.constexpr):
    """A[i, j] = sum_d q_id k_jd exp(b_id - b_jd) for j <= i, column by column (exact; every
    exponent formed is <= 0)."""
    A = tl.zeros([BLOCK_T, BLOCK_T], dtype=q.dtype)
    for j in range(0, BLOCK_T):
        at_j = (o_t == j)[:, None]
        k_j = tl.sum(tl.where(at_j, k, 0.0), axis=0)
        b_j = tl.sum(tl.where(at_j, b, 0.0), axis=0)
        c_j = tl.sum(tl.where(at_j, c, 0.0), axis=0)
        column = tl.sum(q * k_j[None, :] * _core_gap(b, c, b_j[None, :], c_j[None, :]),
                        axis=1)
        A += tl.where((o_t >= j)[:, None] & (o_t == j)[None, :], column[:, None], 0.0)
    return A


@triton.jit
def _core_keywise_adjoint(q, k, b, c, dA, o_t, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
    """Key-wise decays, column j of the chunk at a time (every exponent <= 0):
    A[:, j] = sum_d q_d k_jd exp(b_d - b_jd), dq_i += dA_ij k_j exp(b_i - b_j),
    dk_j = sum_i dA_ij q_i exp(b_i - b_j)."""
    A = tl.zeros([BLOCK_T, BLOCK_T], dtype=q.dtype)
    dq = tl.zeros([BLOCK_T, BLOCK_K], dtype=q.dtype)
    dk = tl.zeros([BLOCK_T, BLOCK_K], dtype=q.dtype)
    for j in range(0, BLOCK_T):
        at_j = (o_t == j)[:, None]
        k_j = tl.sum(tl.where(at_j, k, 0.0), axis=0)
        b_j = tl.sum(tl.where(at_j, b, 0.0), axis=0)
        c_j = tl.sum(tl.where(at_j, c, 0.0), axis=0)
        later = (o_t >= j)[:, None]
        decay = tl.where(later, _core_gap(b, c, b_j[None, :], c_j[None, :]), 0.0)
        A += tl.where(later & (o_t == j)[None, :],
                      tl.sum(q * k_j[None, :] * decay, axis=1)[:, None], 0.0)
        dA_j = tl.sum(tl.where((o_t == j)[None, :], dA, 0.0), axis=1)
        dq += dA_j[:, None] * k_j[None, :] * decay
        dk += tl.where(at_j, tl.sum(dA_j[:, None] * q * decay, axis=0)[None, :], 0.0)
    return A, dq, dk


@triton.jit
def _core_unit_lower_inverse(L, o_t, BLOCK_T: tl.constexpr):
    """(I + L)^-1 of a strictly lower triangular L [BLOCK_T, BLOCK_T], row by row (forward
    substitution): A_i = e_i - sum_{j<i} L_ij A_j."""
    eye = (o_t[:, None] == o_t[None, :]).to(L.dtype)
    A = eye
    for i in range(1, BLOCK_T):
        at_i = (o_t == i)[:, None]
        l_i = tl.sum(tl.where(at_i, L, 0.0), axis=0)
        row = -tl.sum(l_i[:, None] * A, axis=0)
        A = tl.where(at_i, row[None, :] + eye, A)
    return A


def _core_shapes(q, v, chunk_size):
    B, T, H, K = q.shape
    V = v.shape[-1]
    block_t = max(16, _pow2(chunk_size))
    return B, T, H, K, V, block_t, triton.cdiv(T, block_t), max(16, _pow2(K)), max(16, _pow2(V))



# ---- the chunk recurrence core and its adjoint (chunk_core.md) ----


@triton.jit
def _chunk_core_chunk(ptr_q, ptr_k, ptr_v, ptr_g, n, i_b, i_h, T, H, K, V,
                      BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
                      DECAY: tl.constexpr, ACC: tl.constexpr):
    """Chunk n of one batch x head: q, k [BLOCK_T, BLOCK_K], v [BLOCK_T, BLOCK_V] (0 past T and
    in padded lanes), the cumulated log decays (b, c: _core_gates), the decay factors from
    the chunk's start, to its end and over it, and where the tokens live."""
    o_t = tl.arange(0, BLOCK_T)
    o_k = tl.arange(0, BLOCK_K)
    o_v = tl.arange(0, BLOCK_V)
    rows = n * BLOCK_T + o_t
    mask_t = rows < T
    base = (i_b * T + rows) * H + i_h                              # [BLOCK_T] token index
    mask_tk = mask_t[:, None] & (o_k < K)[None, :]
    mask_tv = mask_t[:, None] & (o_v < V)[None, :]
    offs_tk = base[:, None] * K + o_k[None, :]
    offs_tv = base[:, None] * V + o_v[None, :]
    q = tl.load(ptr_q + offs_tk, mask=mask_tk, other=0.0).to(ACC)
    k = tl.load(ptr_k + offs_tk, mask=mask_tk, other=0.0).to(ACC)
    v = tl.load(ptr_v + offs_tv, mask=mask_tv, other=0.0).to(ACC)
    b, c = _core_gates(ptr_g, offs_tk, base, mask_tk, mask_t, o_t, DECAY, BLOCK_T,
                             BLOCK_K, ACC)
    last = (o_t == BLOCK_T - 1)[:, None]
    b_last = tl.sum(tl.where(last, b, 0.0), axis=0)
    c_last = tl.sum(tl.where(last, c, 0.0), axis=0)
    from_start = _core_gap(b, c, 0.0, 0.0)                         # exp(b_i)
    to_end = _core_gap(b_last[None, :], c_last[None, :], b, c)     # exp(b_last - b_j)
    whole = _core_gap(b_last, c_last, 0.0, 0.0)                    # exp(b_last)
    return q, k, v, b, c, from_start, to_end, whole, base, mask_t, offs_tk, mask_tk, offs_tv, \
        mask_tv


@triton.jit
def _chunk_core_fwd_kernel(
    ptr_q, ptr_k, ptr_v, ptr_g, ptr_s0, ptr_o, ptr_h, ptr_final,
    T, H, N, K, V,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    DECAY: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    """o_t = q_t^T S_t, S_t = exp(g_t) S_{t-1} + k_t v_t^T, chunk by chunk; stores the state
    entering every chunk (h[n]) and the last state. One program per batch x head."""
    i_bh = tl.program_id(0).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_t = tl.arange(0, BLOCK_T)
    offs_kv, mask_kv = _core_state_block(K, V, BLOCK_K, BLOCK_V)
    S = tl.load(ptr_s0 + i_bh * K * V + offs_kv, mask=mask_kv, other=0.0).to(ACC)
    for n in range(0, N):
        tl.store(ptr_h + (i_bh * N + n) * K * V + offs_kv, S, mask=mask_kv)
        q, k, v, b, c, from_start, to_end, whole, base, mask_t, offs_tk, mask_tk, offs_tv, \
            mask_tv = _chunk_core_chunk(ptr_q, ptr_k, ptr_v, ptr_g, n, i_b, i_h, T, H, K, V,
                                        BLOCK_T, BLOCK_K, BLOCK_V, DECAY, ACC)
        if DECAY == 2:
            A = _core_keywise_scores(q, k, b, c, o_t, BLOCK_T)
        else:
            A = tl.dot(q, tl.trans(k), input_precision=PRECISION) * _core_decay(b, c, o_t)
        o = tl.dot(q * from_start, S, input_precision=PRECISION) \
            + tl.dot(A, v, input_precision=PRECISION)
        tl.store(ptr_o + offs_tv, o, mask=mask_tv)
        S = S * whole[:, None] + tl.dot(tl.trans(k * to_end), v, input_precision=PRECISION)
    tl.store(ptr_final + i_bh * K * V + offs_kv, S, mask=mask_kv)


@triton.jit
def _chunk_core_bwd_kernel(
    ptr_q, ptr_k, ptr_v, ptr_g, ptr_h, ptr_final, ptr_do, ptr_dfinal,
    ptr_dq, ptr_dk, ptr_dv, ptr_dg, ptr_ds0,
    T, H, N, K, V,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    DECAY: tl.constexpr, HAS_DFINAL: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    """The adjoint, chunks in reverse: dS (the gradient of the state leaving the chunk) carried
    back in registers, the chunk's entering state h[n] loaded, everything inside recomputed."""
    i_bh = tl.program_id(0).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_t = tl.arange(0, BLOCK_T)
    offs_kv, mask_kv = _core_state_block(K, V, BLOCK_K, BLOCK_V)
    if HAS_DFINAL:
        dS = tl.load(ptr_dfinal + i_bh * K * V + offs_kv, mask=mask_kv, other=0.0).to(ACC)
    else:
        dS = tl.zeros([BLOCK_K, BLOCK_V], dtype=ACC)
    # d/dG of the last state's decay, sum_v dS_T * S_T: the start of the reverse cumsum of dG
    final = tl.load(ptr_final + i_bh * K * V + offs_kv, mask=mask_kv, other=0.0).to(ACC)
    dg_after = tl.sum(dS * final, axis=1)
    for i_n in range(0, N):
        n = N - 1 - i_n
        q, k, v, b, c, from_start, to_end, whole, base, mask_t, offs_tk, mask_tk, offs_tv, \
            mask_tv = _chunk_core_chunk(ptr_q, ptr_k, ptr_v, ptr_g, n, i_b, i_h, T, H, K, V,
                                        BLOCK_T, BLOCK_K, BLOCK_V, DECAY, ACC)
        do = tl.load(ptr_do + offs_tv, mask=mask_tv, other=0.0).to(ACC)
        S0 = tl.load(ptr_h + (i_bh * N + n) * K * V + offs_kv, mask=mask_kv, other=0.0).to(ACC)
        # dA[i, j] = do_i . v_j for j <= i: the gradient of the intra-chunk scores
        dA = tl.where(o_t[:, None] >= o_t[None, :],
                      tl.dot(do, tl.trans(v), input_precision=PRECISION), 0.0)
        if DECAY == 2:
            A, dq, dk = _core_keywise_adjoint(q, k, b, c, dA, o_t, BLOCK_T, BLOCK_K)
        else:
            M = _core_decay(b, c, o_t)
            A = tl.dot(q, tl.trans(k), input_precision=PRECISION) * M
            dq = tl.dot(dA * M, k, input_precision=PRECISION)
            dk = tl.dot(tl.trans(dA * M), q, input_precision=PRECISION)
        dq += from_start * tl.dot(do, tl.trans(S0), input_precision=PRECISION)
        dk += to_end * tl.dot(v, tl.trans(dS), input_precision=PRECISION)
        dv = tl.dot(tl.trans(A), do, input_precision=PRECISION) \
            + tl.dot(k * to_end, dS, input_precision=PRECISION)
        tl.store(ptr_dq + offs_tk, dq, mask=mask_tk)
        tl.store(ptr_dk + offs_tk, dk, mask=mask_tk)
        tl.store(ptr_dv + offs_tv, dv, mask=mask_tv)
        if DECAY > 0:
            # dL/dG_t = q_t dq_t - k_t dk_t; dg_t = sum_{s >= t} dL/dG_s (reverse cumsum)
            dG = q * dq - k * dk
            within = tl.sum(dG, axis=0)[None, :] - tl.cumsum(dG, axis=0) + dG
            dg = within + dg_after[None, :]
            dg_after += tl.sum(dG, axis=0)
            if DECAY == 2:
                tl.store(ptr_dg + offs_tk, dg, mask=mask_tk)
            else:
                tl.store(ptr_dg + base, tl.sum(tl.where(mask_tk, dg, 0.0), axis=1),
                         mask=mask_t)
        dS = dS * whole[:, None] + tl.dot(tl.trans(q * from_start), do, input_precision=PRECISION)
    tl.store(ptr_ds0 + i_bh * K * V + offs_kv, dS, mask=mask_kv)


def _chunk_core_shapes(q, v, chunk_size):
    B, T, H, K = q.shape
    V = v.shape[-1]
    block_t = max(16, _pow2(chunk_size))
    return B, T, H, K, V, block_t, triton.cdiv(T, block_t), max(16, _pow2(K)), max(16, _pow2(V))


class _ChunkCore(torch.autograd.Function):
    """(o, S_T) of the chunk recurrence; the forward keeps the chunk-boundary states only."""

    @staticmethod
    def forward(ctx, q, k, v, g, s0, chunk_size):
        q, k, v, s0 = (x.contiguous() for x in (q, k, v, s0))
        g = None if g is None else g.contiguous()
        B, T, H, K, V, block_t, N, block_k, block_v = _chunk_core_shapes(q, v, chunk_size)
        o = torch.empty_like(v)
        h = torch.empty((B, H, N, K, V), dtype=q.dtype, device=q.device)
        final = torch.empty((B, H, K, V), dtype=q.dtype, device=q.device)
        decay = 0 if g is None else (2 if g.dim() == 4 else 1)
        _chunk_core_fwd_kernel[(B * H,)](
            q, k, v, q if g is None else g, s0, o, h, final, T, H, N, K, V,
            block_t, block_k, block_v, decay, _acc(q), "ieee")
        ctx.save_for_backward(q, k, v, g, h, final)
        ctx.chunk_size = chunk_size
        ctx.decay = decay
        return o, final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, dfinal):
        q, k, v, g, h, final = ctx.saved_tensors
        B, T, H, K, V, block_t, N, block_k, block_v = _chunk_core_shapes(q, v, ctx.chunk_size)
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dg = None if g is None else torch.empty_like(g)
        ds0 = torch.empty_like(final)
        _chunk_core_bwd_kernel[(B * H,)](
            q, k, v, q if g is None else g, h, final, do,
            final if dfinal is None else dfinal.contiguous(),
            dq, dk, dv, dq if dg is None else dg, ds0, T, H, N, K, V,
            block_t, block_k, block_v, ctx.decay, dfinal is not None, _acc(q), "ieee")
        return dq, dk, dv, dg, ds0, None


def chunk_core(queries, keys, values, log_decay, state, chunk_size, read_dtype=None,
               query_scale=None, write_scale=None):
    """The torch backend's `_chunk` (same arguments, same results: reads [B, H, T, V] and the last
    state) on these kernels: one query and one write a step. `run(..., chunk_core=)` of the
    torch module takes it; seqc's Triton backward does (docs/backends.md). `read_dtype`: the
    reads cast to it (chunk_core.md; the kernels store fp32); `query_scale`: q's constant
    factor, applied to the widened q; `write_scale`: the key's per-token factor [B, T, H],
    applied to the widened key."""
    (q,), (k,), (v,) = queries, keys, values
    (s,) = write_scale or (None,)
    q, k, v, log_decay, s = _widened(state, q, k, v, log_decay, s)
    q = q if query_scale is None else query_scale * q
    k = k if s is None else s[..., None] * k
    o, final = _ChunkCore.apply(q, k, v, log_decay, state.to(q.dtype), chunk_size)
    return [o.transpose(1, 2).to(read_dtype or o.dtype)], final



# ---- the parallel chunk core and its adjoint, for training (chunk_parallel_core.md) ----


@triton.jit
def _cp_cumulate(d, last):
    """Log2 gates of a chunk with hard resets (gates.md): d the log decays ([BLOCK_T] or
    [BLOCK_T, BLOCK_K], -inf a reset), `last` selects the chunk's last row. Returns G (finite
    gates cumulated, log2), R (resets counted), G0 (from the chunk start, -inf after a reset),
    Gend (to the chunk end, -inf across a reset) and Glast0 (the whole chunk's gate)."""
    reset = d == float("-inf")
    G = tl.cumsum(tl.where(reset, 0.0, d * 1.4426950408889634), axis=0)
    R = tl.cumsum(reset.to(d.dtype), axis=0)
    Glast = tl.sum(tl.where(last, G, 0.0), axis=0)
    Rlast = tl.sum(tl.where(last, R, 0.0), axis=0)
    G0 = tl.where(R == 0.0, G, float("-inf"))
    Gend = tl.where(R == Rlast, Glast - G, float("-inf"))
    Glast0 = tl.where(Rlast == 0.0, Glast, float("-inf"))
    return G, R, G0, Gend, Glast0


@triton.jit
def _cp_chunk_gates(ptr_g, base, mask_t, o_k, mask_k, o_t, DECAY: tl.constexpr,
                    BLOCK_T: tl.constexpr, K, ACC: tl.constexpr):
    """The chunk's log decays (0 past T) and their log2 cumulations (_cp_cumulate): per step
    ([BLOCK_T]) for a scalar decay (DECAY 1), per step and key lane for a key-wise one (2)."""
    last = o_t == BLOCK_T - 1
    if DECAY == 2:
        d = tl.load(ptr_g + base[:, None] * K + o_k[None, :],
                    mask=mask_t[:, None] & mask_k[None, :], other=0.0).to(ACC)
        G, R, G0, Gend, Glast0 = _cp_cumulate(d, last[:, None])
    else:
        d = tl.load(ptr_g + base, mask=mask_t, other=0.0).to(ACC)
        G, R, G0, Gend, Glast0 = _cp_cumulate(d, last)
    return d, G, R, G0, Gend, Glast0


@triton.jit
def _cp_causal_decay(G, R, o_t):
    """M[t, s] = 2^(G_t - G_s) for s <= t with no reset between them, else 0 (scalar gates)."""
    keep = (o_t[:, None] >= o_t[None, :]) & (R[:, None] == R[None, :])
    return tl.exp2(tl.where(keep, G[:, None] - G[None, :], float("-inf")))


@triton.jit
def _cp_anchor(G, R, o_t, c, SUB_T: tl.constexpr):
    """The factors re-anchoring key-wise gates at the end of sub-chunk c - 1 (n, its count rn):
    rows 2^(G_t - n), columns 2^(n - G_s), both <= 1 (0 across a reset; keywise_scores.md)."""
    at = (o_t == c * SUB_T - 1)[:, None]
    n = tl.sum(tl.where(at, G, 0.0), axis=0)
    rn = tl.sum(tl.where(at, R, 0.0), axis=0)
    rows = tl.exp2(tl.where(R == rn[None, :], tl.minimum(G - n[None, :], 0.0), float("-inf")))
    cols = tl.exp2(tl.where(rn[None, :] == R, tl.minimum(n[None, :] - G, 0.0), float("-inf")))
    return rows, cols


@triton.jit
def _cp_column(x, o_t, j):
    """Row j of a [BLOCK_T, ...] block."""
    return tl.sum(tl.where((o_t == j)[:, None], x, 0.0), axis=0)


@triton.jit
def _cp_keywise_scores(q, k, G, R, o_t, BLOCK_T: tl.constexpr, SUB_T: tl.constexpr,
                       DOT: tl.constexpr, PRECISION: tl.constexpr):
    """A[t, s] = sum_d q_td k_sd 2^(G_td - G_sd) for s <= t (0 across a reset) over this key
    block: sub-chunks off the diagonal by tl.dot of re-anchored factors, the diagonal ones
    column by column (keywise_scores.md)."""
    A = tl.zeros([BLOCK_T, BLOCK_T], dtype=G.dtype)
    for c in tl.static_range(1, BLOCK_T // SUB_T):
        rows, cols = _cp_anchor(G, R, o_t, c, SUB_T)
        block = ((o_t // SUB_T) == c)[:, None] & (o_t < c * SUB_T)[None, :]
        A += tl.where(block, tl.dot((q * rows).to(DOT), tl.trans((k * cols).to(DOT)),
                                    input_precision=PRECISION), 0.0)
    for j in range(0, BLOCK_T):
        g_j = _cp_column(G, o_t, j)
        r_j = _cp_column(R, o_t, j)
        decay = tl.exp2(tl.where(R == r_j[None, :], tl.minimum(G - g_j[None, :], 0.0),
                                 float("-inf")))
        column = tl.sum(q * _cp_column(k, o_t, j)[None, :] * decay, axis=1)
        diagonal = ((o_t // SUB_T) == (j // SUB_T)) & (o_t >= j)
        A += tl.where(diagonal[:, None] & (o_t == j)[None, :], column[:, None], 0.0)
    return A


@triton.jit
def _cp_keywise_score_grads(dq, dk, dA, q, k, G, R, o_t, BLOCK_T: tl.constexpr,
                            SUB_T: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr):
    """dq, dk plus the intra-chunk gradients of the key-wise scores given dA [t, s] (causal):
    dq_t += sum_{s<=t} dA_ts k_s 2^(G_t - G_s), dk_s += sum_{t>=s} dA_ts q_t 2^(G_t - G_s) per
    lane, split into sub-chunks as _cp_keywise_scores."""
    for c in tl.static_range(1, BLOCK_T // SUB_T):
        rows, cols = _cp_anchor(G, R, o_t, c, SUB_T)
        block = ((o_t // SUB_T) == c)[:, None] & (o_t < c * SUB_T)[None, :]
        dA_c = tl.where(block, dA, 0.0).to(DOT)
        dq += rows * tl.dot(dA_c, (k * cols).to(DOT), input_precision=PRECISION)
        dk += cols * tl.dot(tl.trans(dA_c), (q * rows).to(DOT), input_precision=PRECISION)
    for j in range(0, BLOCK_T):
        g_j = _cp_column(G, o_t, j)
        r_j = _cp_column(R, o_t, j)
        diagonal = ((o_t // SUB_T) == (j // SUB_T)) & (o_t >= j)
        decay = tl.where(diagonal[:, None] & (R == r_j[None, :]),
                         tl.exp2(tl.minimum(G - g_j[None, :], 0.0)), 0.0)
        dA_j = tl.sum(tl.where((o_t == j)[None, :], dA, 0.0), axis=1)
        dq += dA_j[:, None] * _cp_column(k, o_t, j)[None, :] * decay
        dk += tl.where((o_t == j)[:, None], tl.sum(dA_j[:, None] * q * decay, axis=0)[None, :],
                       0.0)
    return dq, dk


@triton.jit
def _cp_write_scale(ptr_s, base, mask_t, WRITE: tl.constexpr, ACC: tl.constexpr):
    """The chunk's write factors s [BLOCK_T] (ACC, 0 past T), the key written at step t being
    s_t k_t (chunk_parallel_core.md, "A write scale"); without one (WRITE false) zeros, unused."""
    if WRITE:
        return tl.load(ptr_s + base, mask=mask_t, other=0.0).to(ACC)
    else:
        return tl.zeros(base.shape, dtype=ACC)


@triton.jit
def _cp_rows(n, i_b, i_h, T, H, BLOCK_T: tl.constexpr):
    """The steps of chunk n: their token index (b, t, h) and mask, and the offsets in a chunk."""
    o_t = tl.arange(0, BLOCK_T)
    rows = n * BLOCK_T + o_t
    mask_t = rows < T
    return o_t, (i_b * T + rows) * H + i_h, mask_t


@triton.jit
def _cp_load(ptr, base, mask_t, o_x, mask_x, X):
    """A [BLOCK_T, BLOCK_X] block of a [B, T, H, X] tensor, 0 past T and in padded lanes."""
    return tl.load(ptr + base[:, None] * X + o_x[None, :], mask=mask_t[:, None] & mask_x[None, :],
                   other=0.0)


# the dot dtypes of the kernels (tl.dot operands) by torch dtype
_TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32,
              torch.float64: tl.float64}


def _cp_scaled(do, scale, dtype):
    """The incoming output gradient times the query's constant factor, in the kernels' dtype,
    contiguous (chunk_parallel_core.md, "A constant query scale": the outputs are linear in q, so
    the backward of SCALE o(q) is the unscaled core's backward of SCALE do)."""
    return (do if scale == 1 else do * scale).to(dtype).contiguous()


@triton.jit
def _cp_state_pass_kernel(
    ptr_x, ptr_y, ptr_g, ptr_s, ptr_start, ptr_states, ptr_last, T, H, NT, K, V,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, DECAY: tl.constexpr,
    REVERSE: tl.constexpr, HAS_START: tl.constexpr, AFTER: tl.constexpr, WRITE: tl.constexpr,
    ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """A state pass: one program per (key block, value block, batch x head) walks the chunks,
    storing the state at each chunk's boundary (in ptr_states' dtype: the dot dtype of a 16-bit
    call, the store rounding the fp32 state held in registers), then the last one (fp32).
    Forward (x = k, y = v): h[n] the state entering chunk n, h[n + 1] = 2^Glast0 h[n] +
    (k 2^Gend)^T v. The adjoint (REVERSE, x = q, y = do), chunks backward: dh[n] the gradient
    of the state leaving chunk n, dh[n - 1] = 2^Glast0 dh[n] + (q 2^G0)^T do; its last is the
    initial state's. AFTER (the adjoint feeding _cp_bwd_fused_kernel, which reads dS_T itself):
    the state after each chunk but the last is stored, dh[n - 1] in slot n - 1 of NT - 1, and
    dh[NT - 1] = dS_T is not copied. WRITE (forward): the keys times their write factors s."""
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
    o_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_k, mask_v = o_k < K, o_v < V
    offs_kv, mask_kv = o_k[:, None] * V + o_v[None, :], mask_k[:, None] & mask_v[None, :]
    if HAS_START:
        S = tl.load(ptr_start + i_bh * K * V + offs_kv, mask=mask_kv, other=0.0).to(ACC)
    else:
        S = tl.zeros([BLOCK_K, BLOCK_V], dtype=ACC)
    for i_n in range(0, NT):
        n = NT - 1 - i_n if REVERSE else i_n
        if not AFTER:
            tl.store(ptr_states + (i_bh * NT + n) * K * V + offs_kv, S, mask=mask_kv)
        o_t, base, mask_t = _cp_rows(n, i_b, i_h, T, H, BLOCK_T)
        x = _cp_load(ptr_x, base, mask_t, o_k, mask_k, K)
        y = _cp_load(ptr_y, base, mask_t, o_v, mask_v, V)
        if DECAY > 0:
            d, G, R, G0, Gend, Glast0 = _cp_chunk_gates(ptr_g, base, mask_t, o_k, mask_k, o_t,
                                                        DECAY, BLOCK_T, K, ACC)
            gate = G0 if REVERSE else Gend
            if DECAY == 2:
                S = S * tl.exp2(Glast0)[:, None]
                x = x.to(ACC) * tl.exp2(gate)
            else:
                S = S * tl.exp2(Glast0)
                x = x.to(ACC) * tl.exp2(gate)[:, None]
        if WRITE:
            x = x * _cp_write_scale(ptr_s, base, mask_t, WRITE, ACC)[:, None]
        S += tl.dot(tl.trans(x.to(DOT)), y, input_precision=PRECISION)
        if AFTER and n > 0:
            tl.store(ptr_states + (i_bh * (NT - 1) + n - 1) * K * V + offs_kv, S, mask=mask_kv)
    tl.store(ptr_last + i_bh * K * V + offs_kv, S, mask=mask_kv)


@triton.jit
def _cp_scores_and_read(ptr_q, ptr_k, ptr_g, ptr_state, n, i_bh, base, mask_t, o_t, o_v, mask_v,
                        T, NT, K, V, BLOCK_T: tl.constexpr, SUB_T: tl.constexpr,
                        BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, DECAY: tl.constexpr,
                        KEYS: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
                        PRECISION: tl.constexpr):
    """Over key blocks, for chunk n and one value block: the scores A [t, s] = q_t . k_s
    (decayed when key-wise; a scalar gate is the caller's) and the read x @ state[n] [BLOCK_T,
    BLOCK_V] of the stored states, x = q (2^G0 q when key-wise: the forward outputs) or, with
    KEYS, x = k (2^Gend k when key-wise: dv)."""
    read = tl.zeros([BLOCK_T, BLOCK_V], dtype=ACC)
    A = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
    for i_k in range(0, tl.cdiv(K, BLOCK_K)):
        o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = o_k < K
        q = _cp_load(ptr_q, base, mask_t, o_k, mask_k, K)
        k = _cp_load(ptr_k, base, mask_t, o_k, mask_k, K)
        state = tl.load(ptr_state + (i_bh * NT + n) * K * V + o_k[:, None] * V + o_v[None, :],
                        mask=mask_k[:, None] & mask_v[None, :], other=0.0).to(DOT)
        if DECAY == 2:
            d, G, R, G0, Gend, Glast0 = _cp_chunk_gates(ptr_g, base, mask_t, o_k, mask_k, o_t,
                                                        DECAY, BLOCK_T, K, ACC)
            if KEYS:
                x = (k.to(ACC) * tl.exp2(Gend)).to(DOT)
            else:
                x = (q.to(ACC) * tl.exp2(G0)).to(DOT)
            A += _cp_keywise_scores(q.to(ACC), k.to(ACC), G, R, o_t, BLOCK_T, SUB_T, DOT,
                                    PRECISION)
        else:
            x = k if KEYS else q
            A += tl.dot(q, tl.trans(k), input_precision=PRECISION)
        read += tl.dot(x, state, input_precision=PRECISION)
    return read, A


@triton.jit
def _cp_decayed(read, A, ptr_g, base, mask_t, o_t, K, BLOCK_T: tl.constexpr,
                DECAY: tl.constexpr, KEYS: tl.constexpr, ACC: tl.constexpr):
    """The scalar gate applied after the key loop (2^G0 on q's read, 2^Gend on k's, the causal
    decay mask on A), or the causal mask alone without a gate."""
    if DECAY == 1:
        d, G, R, G0, Gend, Glast0 = _cp_chunk_gates(ptr_g, base, mask_t, o_t, mask_t, o_t,
                                                    DECAY, BLOCK_T, K, ACC)
        read = read * tl.exp2(Gend if KEYS else G0)[:, None]
        A = A * _cp_causal_decay(G, R, o_t)
    elif DECAY == 0:
        A = tl.where(o_t[:, None] >= o_t[None, :], A, 0.0)
    return read, A


@triton.jit
def _cp_fwd_output_kernel(
    ptr_q, ptr_k, ptr_v, ptr_g, ptr_s, ptr_h, ptr_o, T, H, NT, K, V, SCALE,
    BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    DECAY: tl.constexpr, WRITE: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Forward outputs: one program per (value block, chunk, batch x head),
    o_t = 2^G0_t (q_t^T h_n) + sum_{s<=t} A_ts v_s, over key blocks, times SCALE (the query's
    constant factor, on the fp32 accumulator); WRITE: the keys times their write factors s
    (the scores' columns)."""
    i_v, n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t, base, mask_t = _cp_rows(n, i_b, i_h, T, H, BLOCK_T)
    o_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_v = o_v < V
    out, A = _cp_scores_and_read(ptr_q, ptr_k, ptr_g, ptr_h, n, i_bh, base, mask_t, o_t, o_v,
                                 mask_v, T, NT, K, V, BLOCK_T, SUB_T, BLOCK_K, BLOCK_V, DECAY,
                                 False, ACC, DOT, PRECISION)
    out, A = _cp_decayed(out, A, ptr_g, base, mask_t, o_t, K, BLOCK_T, DECAY, False, ACC)
    if WRITE:
        A = A * _cp_write_scale(ptr_s, base, mask_t, WRITE, ACC)[None, :]
    v = _cp_load(ptr_v, base, mask_t, o_v, mask_v, V)
    out += tl.dot(A.to(DOT), v, input_precision=PRECISION)
    tl.store(ptr_o + base[:, None] * V + o_v[None, :], out * SCALE,
             mask=mask_t[:, None] & mask_v[None, :])


@triton.jit
def _cp_bwd_dv_kernel(
    ptr_q, ptr_k, ptr_g, ptr_dh, ptr_do, ptr_dv, T, H, NT, K, V,
    BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    DECAY: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    SCALE: tl.constexpr,
):
    """dv over one (value block, chunk, batch x head):
    dv_s = (k_s 2^Gend_s)^T dh[n] + sum_{t>=s} A_ts do_t, the scores A over key blocks."""
    i_v, n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t, base, mask_t = _cp_rows(n, i_b, i_h, T, H, BLOCK_T)
    o_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_v = o_v < V
    dv, A = _cp_scores_and_read(ptr_q, ptr_k, ptr_g, ptr_dh, n, i_bh, base, mask_t, o_t, o_v,
                                mask_v, T, NT, K, V, BLOCK_T, SUB_T, BLOCK_K, BLOCK_V, DECAY,
                                True, ACC, DOT, PRECISION)
    dv, A = _cp_decayed(dv, A, ptr_g, base, mask_t, o_t, K, BLOCK_T, DECAY, True, ACC)
    do = _cp_load(ptr_do, base, mask_t, o_v, mask_v, V)
    dv += tl.dot(tl.trans(A.to(DOT)), do, input_precision=PRECISION)
    tl.store(ptr_dv + base[:, None] * V + o_v[None, :], _cp_times(dv, SCALE),
             mask=mask_t[:, None] & mask_v[None, :])


@triton.jit
def _cp_bwd_dqk_kernel(
    ptr_q, ptr_k, ptr_v, ptr_g, ptr_h, ptr_dh, ptr_do, ptr_dq, ptr_dk, ptr_dg, T, H, NT, K, V,
    BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    DECAY: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    SCALE: tl.constexpr,
):
    """dq, dk and the gate gradient over one (key block, chunk, batch x head), over value blocks
    (chunk_parallel_core.md): the state parts 2^G0 (do h[n]^T) and 2^Gend (v dh[n]^T), the
    intra-chunk part from dA_ts = do_t . v_s; dg by the reverse cumsum inside the chunk of
    q dq - k dk, plus the chunk's last step's share of the state it leaves."""
    i_k, n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t, base, mask_t = _cp_rows(n, i_b, i_h, T, H, BLOCK_T)
    o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = o_k < K
    dA = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
    dq = tl.zeros([BLOCK_T, BLOCK_K], dtype=ACC)
    dk = tl.zeros([BLOCK_T, BLOCK_K], dtype=ACC)
    hdh = tl.zeros([BLOCK_K], dtype=ACC)               # sum_v h[n] * dh[n], per key lane
    for i_v in range(0, tl.cdiv(V, BLOCK_V)):
        o_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
        mask_v = o_v < V
        offs = (i_bh * NT + n) * K * V + o_k[:, None] * V + o_v[None, :]
        mask_kv = mask_k[:, None] & mask_v[None, :]
        h = tl.load(ptr_h + offs, mask=mask_kv, other=0.0)
        dh = tl.load(ptr_dh + offs, mask=mask_kv, other=0.0)
        do = _cp_load(ptr_do, base, mask_t, o_v, mask_v, V)
        v = _cp_load(ptr_v, base, mask_t, o_v, mask_v, V)
        dA += tl.dot(do, tl.trans(v), input_precision=PRECISION)
        dq += tl.dot(do, tl.trans(h.to(DOT)), input_precision=PRECISION)
        dk += tl.dot(v, tl.trans(dh.to(DOT)), input_precision=PRECISION)
        if DECAY > 0:
            hdh += tl.sum(h.to(ACC) * dh.to(ACC), axis=1)
    q = _cp_load(ptr_q, base, mask_t, o_k, mask_k, K)
    k = _cp_load(ptr_k, base, mask_t, o_k, mask_k, K)
    dA = tl.where(o_t[:, None] >= o_t[None, :], dA, 0.0)
    if DECAY == 0:
        dq += tl.dot(dA.to(DOT), k, input_precision=PRECISION)
        dk += tl.dot(tl.trans(dA.to(DOT)), q, input_precision=PRECISION)
    else:
        d, G, R, G0, Gend, Glast0 = _cp_chunk_gates(ptr_g, base, mask_t, o_k, mask_k, o_t,
                                                    DECAY, BLOCK_T, K, ACC)
        if DECAY == 2:
            dq = dq * tl.exp2(G0)
            dk = dk * tl.exp2(Gend)
        else:
            dq = dq * tl.exp2(G0)[:, None]
            dk = dk * tl.exp2(Gend)[:, None]
        # dL/db of the chunk's last step through the state it leaves (dk holds its state part):
        # sum_v dh * (2^Glast0 h + sum_s (k_s 2^Gend_s)^T v_s), per key lane
        leaving = tl.exp2(Glast0) * hdh + tl.sum(k.to(ACC) * dk, axis=0)
        if DECAY == 2:
            dq, dk = _cp_keywise_score_grads(dq, dk, dA, q.to(ACC), k.to(ACC), G, R, o_t,
                                             BLOCK_T, SUB_T, DOT, PRECISION)
        else:
            dM = (dA * _cp_causal_decay(G, R, o_t)).to(DOT)
            dq += tl.dot(dM, k, input_precision=PRECISION)
            dk += tl.dot(tl.trans(dM), q, input_precision=PRECISION)
        dG = q.to(ACC) * dq - k.to(ACC) * dk
        dG += tl.where((o_t == BLOCK_T - 1)[:, None], leaving[None, :], 0.0)
        dg = tl.sum(dG, axis=0)[None, :] - tl.cumsum(dG, axis=0) + dG      # reverse cumsum
        if DECAY == 2:
            dg = tl.where(d == float("-inf"), 0.0, dg)
            tl.store(ptr_dg + base[:, None] * K + o_k[None, :], _cp_times(dg, SCALE),
                     mask=mask_t[:, None] & mask_k[None, :])
        else:
            dg = tl.where(d == float("-inf"), 0.0, tl.sum(tl.where(mask_k[None, :], dg, 0.0),
                                                          axis=1))
            tl.store(ptr_dg + i_k * (tl.num_programs(2) * T) + base, _cp_times(dg, SCALE),
                     mask=mask_t)
    mask_tk = mask_t[:, None] & mask_k[None, :]
    tl.store(ptr_dq + base[:, None] * K + o_k[None, :], _cp_times(dq, SCALE), mask=mask_tk)
    tl.store(ptr_dk + base[:, None] * K + o_k[None, :], _cp_times(dk, SCALE), mask=mask_tk)


@triton.jit
def _cp_bwd_fused_kernel(
    ptr_q, ptr_k, ptr_v, ptr_g, ptr_s, ptr_h, ptr_dh, ptr_dfinal, ptr_do, ptr_dq, ptr_dk,
    ptr_dv, ptr_dg, ptr_ds, T, H, NT, K, V,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, DECAY: tl.constexpr,
    HAS_FINAL: tl.constexpr, WRITE: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
    PRECISION: tl.constexpr, SCALE: tl.constexpr,
):
    """dv, dq, dk and dg of one (chunk, batch x head) when K and V are one block each and the
    gate is scalar or absent (chunk_parallel_core.md, "(b + c) fused"): q, k, v, do, g, h[n] and
    dh[n] read once. dh[NT - 1] is the incoming gradient of the final state (0 without one),
    the others the adjoint state pass's (AFTER: NT - 1 slots). The order keeps ptxas within
    255 registers: dv (A dies with it), the decayed dA, then dk and dq, each stored when done.
    WRITE: the key written is s k (chunk_parallel_core.md, "A write scale"): s on the scores'
    columns and on k's rows, dk = s dw, ds = sum_K k dw (its score part from q k^T formed
    again)."""
    n, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t, base, mask_t = _cp_rows(n, i_b, i_h, T, H, BLOCK_T)
    o_k = tl.arange(0, BLOCK_K)
    mask_k = o_k < K
    o_v = tl.arange(0, BLOCK_V)
    mask_v = o_v < V
    offs_kv, mask_kv = o_k[:, None] * V + o_v[None, :], mask_k[:, None] & mask_v[None, :]
    q = _cp_load(ptr_q, base, mask_t, o_k, mask_k, K)
    k = _cp_load(ptr_k, base, mask_t, o_k, mask_k, K)
    d, G, R, G0, Gend, Glast0 = _cp_gates(ptr_g, base, mask_t, o_t, DECAY, BLOCK_T, ACC)
    s = _cp_write_scale(ptr_s, base, mask_t, WRITE, ACC)
    if n == NT - 1:
        dh = tl.load(ptr_dfinal + i_bh * K * V + offs_kv, mask=mask_kv & HAS_FINAL, other=0.0)
    else:
        dh = tl.load(ptr_dh + (i_bh * (NT - 1) + n) * K * V + offs_kv, mask=mask_kv,
                     other=0.0).to(ACC)
    do = _cp_load(ptr_do, base, mask_t, o_v, mask_v, V)
    A = tl.dot(q, tl.trans(k), input_precision=PRECISION) * _cp_causal_mask(G, R, o_t, DECAY)
    A = (A * s[None, :] if WRITE else A).to(DOT)
    written = tl.exp2(Gend) * s if WRITE else tl.exp2(Gend)     # a key row's factor
    dv = tl.dot(k, dh.to(DOT), input_precision=PRECISION) * written[:, None]
    dv = tl.dot(tl.trans(A), do, dv, input_precision=PRECISION)
    tl.store(ptr_dv + base[:, None] * V + o_v[None, :], _cp_times(dv, SCALE),
             mask=mask_t[:, None] & mask_v[None, :])
    v = _cp_load(ptr_v, base, mask_t, o_v, mask_v, V)
    dM = tl.dot(do, tl.trans(v), input_precision=PRECISION) * _cp_causal_mask(G, R, o_t, DECAY)
    if WRITE:   # ds's score part, sum_t dM_ts (q_t . k_s); then s on dM's columns
        ds = tl.sum(dM * tl.dot(q, tl.trans(k), input_precision=PRECISION), axis=0)
        dM = dM * s[None, :]
    dM = dM.to(DOT)
    mask_tk = mask_t[:, None] & mask_k[None, :]
    dk = tl.dot(v, tl.trans(dh.to(DOT)), input_precision=PRECISION) * tl.exp2(Gend)[:, None]
    leaving = tl.sum(k.to(ACC) * dk, axis=1)
    if WRITE:   # ds's state part; dk and the leaving state's share times s
        tl.store(ptr_ds + base, _cp_times(ds + leaving, SCALE), mask=mask_t)
        dk, leaving = dk * s[:, None], leaving * s
    leaving = tl.sum(leaving, axis=0)
    dk = tl.dot(tl.trans(dM), q, dk, input_precision=PRECISION)
    tl.store(ptr_dk + base[:, None] * K + o_k[None, :], _cp_times(dk, SCALE), mask=mask_tk)
    dG = -tl.sum(k.to(ACC) * dk, axis=1)              # a scalar gate's dL/db, summed over K
    h = tl.load(ptr_h + (i_bh * NT + n) * K * V + offs_kv, mask=mask_kv, other=0.0)
    leaving += tl.exp2(Glast0) * tl.sum(tl.sum(h.to(ACC) * dh, axis=1), axis=0)
    dq = tl.dot(do, tl.trans(h.to(DOT)), input_precision=PRECISION) * tl.exp2(G0)[:, None]
    dq = tl.dot(dM, k, dq, input_precision=PRECISION)
    tl.store(ptr_dq + base[:, None] * K + o_k[None, :], _cp_times(dq, SCALE), mask=mask_tk)
    if DECAY > 0:
        dG += tl.sum(q.to(ACC) * dq, axis=1)
        dG += tl.where(o_t == BLOCK_T - 1, leaving, 0.0)
        dg = tl.sum(dG, axis=0) - tl.cumsum(dG, axis=0) + dG             # reverse cumsum
        tl.store(ptr_dg + base, tl.where(d == float("-inf"), 0.0, _cp_times(dg, SCALE)),
                 mask=mask_t)


@triton.jit
def _cp_bwd_fused_keys_kernel(
    ptr_q, ptr_k, ptr_v, ptr_g, ptr_h, ptr_dh, ptr_dfinal, ptr_do, ptr_dq, ptr_dk, ptr_dv,
    ptr_dg, T, H, NT, K, V,
    BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    HAS_FINAL: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    SCALE: tl.constexpr,
):
    """dv, dq, dk and dg of one (chunk, batch x head) for a key-wise gate, V one block, in two
    sweeps over the key blocks (chunk_parallel_core.md, "(b + c) fused, key-wise"): first dq,
    dk, dg per key block with do, v and dA = do v^T held, then (dA and v dead) dv summed over
    the key blocks from their scores and 2^Gend k dh[n]."""
    n, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t, base, mask_t = _cp_rows(n, i_b, i_h, T, H, BLOCK_T)
    o_v = tl.arange(0, BLOCK_V)
    mask_v = o_v < V
    do = _cp_load(ptr_do, base, mask_t, o_v, mask_v, V)
    v = _cp_load(ptr_v, base, mask_t, o_v, mask_v, V)
    dA = tl.where(o_t[:, None] >= o_t[None, :],
                  tl.dot(do, tl.trans(v), input_precision=PRECISION), 0.0).to(DOT)
    for i_k in range(0, tl.cdiv(K, BLOCK_K)):
        o_k, mask_k, q, k, d, G, R, G0, Gend, Glast0, offs_kv, mask_kv = _cp_key_block(
            ptr_q, ptr_k, ptr_g, i_k, base, mask_t, o_t, o_v, mask_v, K, V, BLOCK_T, BLOCK_K,
            ACC)
        dq = tl.zeros([BLOCK_T, BLOCK_K], dtype=ACC)
        dk = tl.zeros([BLOCK_T, BLOCK_K], dtype=ACC)
        dq, dk = _cp_keywise_score_grads(dq, dk, dA, q, k, G, R, o_t, BLOCK_T, SUB_T, DOT,
                                         PRECISION)
        if n == NT - 1:     # as _cp_leaving_state_grad (a call here spilled 140 B on sm_80)
            dh = tl.load(ptr_dfinal + i_bh * K * V + offs_kv, mask=mask_kv & HAS_FINAL,
                         other=0.0)
        else:
            dh = tl.load(ptr_dh + (i_bh * (NT - 1) + n) * K * V + offs_kv, mask=mask_kv,
                         other=0.0).to(ACC)
        dk_state = tl.dot(v, tl.trans(dh.to(DOT)), input_precision=PRECISION) * tl.exp2(Gend)
        h = tl.load(ptr_h + (i_bh * NT + n) * K * V + offs_kv, mask=mask_kv, other=0.0)
        leaving = (tl.exp2(Glast0) * tl.sum(h.to(ACC) * dh, axis=1)
                   + tl.sum(k * dk_state, axis=0))
        dk += dk_state
        dq += tl.dot(do, tl.trans(h.to(DOT)), input_precision=PRECISION) * tl.exp2(G0)
        mask_tk = mask_t[:, None] & mask_k[None, :]
        tl.store(ptr_dq + base[:, None] * K + o_k[None, :], _cp_times(dq, SCALE), mask=mask_tk)
        tl.store(ptr_dk + base[:, None] * K + o_k[None, :], _cp_times(dk, SCALE), mask=mask_tk)
        dG = q * dq - k * dk + tl.where((o_t == BLOCK_T - 1)[:, None], leaving[None, :], 0.0)
        dg = tl.sum(dG, axis=0)[None, :] - tl.cumsum(dG, axis=0) + dG      # reverse cumsum
        tl.store(ptr_dg + base[:, None] * K + o_k[None, :],
                 tl.where(d == float("-inf"), 0.0, _cp_times(dg, SCALE)), mask=mask_tk)
    dv = tl.zeros([BLOCK_T, BLOCK_V], dtype=ACC)
    for i_k in range(0, tl.cdiv(K, BLOCK_K)):
        o_k, mask_k, q, k, d, G, R, G0, Gend, Glast0, offs_kv, mask_kv = _cp_key_block(
            ptr_q, ptr_k, ptr_g, i_k, base, mask_t, o_t, o_v, mask_v, K, V, BLOCK_T, BLOCK_K,
            ACC)
        A = _cp_keywise_scores(q, k, G, R, o_t, BLOCK_T, SUB_T, DOT, PRECISION)
        dh = _cp_leaving_state_grad(ptr_dh, ptr_dfinal, n, i_bh, offs_kv, mask_kv, NT, K, V,
                                    HAS_FINAL)
        dv = tl.dot((k * tl.exp2(Gend)).to(DOT), dh.to(DOT), dv, input_precision=PRECISION)
        dv = tl.dot(tl.trans(A.to(DOT)), do, dv, input_precision=PRECISION)
    tl.store(ptr_dv + base[:, None] * V + o_v[None, :], _cp_times(dv, SCALE),
             mask=mask_t[:, None] & mask_v[None, :])


@triton.jit
def _cp_bwd_fused_wide_kernel(
    ptr_q, ptr_k, ptr_v, ptr_g, ptr_h, ptr_dh, ptr_dfinal, ptr_do, ptr_dq, ptr_dk, ptr_dv,
    ptr_dg, T, H, NT, K, V,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, DECAY: tl.constexpr,
    HAS_FINAL: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    SCALE: tl.constexpr,
):
    """_cp_bwd_fused_kernel for K or V above 64 (a scalar gate or none): V one block, two sweeps
    over key blocks (chunk_parallel_core.md, "(b + c) fused, wide"): first dk, dq per key block
    with do, v and the decayed dM = (do v^T) M held, the scores A = q k^T summed; then (dM, v
    dead) the state part 2^Gend k dh[n] of dv summed over the key blocks, dv += (A M)^T do once;
    a scalar gate's dL/db summed over the key lanes, reverse-cumsummed once."""
    n, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t, base, mask_t = _cp_rows(n, i_b, i_h, T, H, BLOCK_T)
    o_v = tl.arange(0, BLOCK_V)
    mask_v = o_v < V
    d, G, R, G0, Gend, Glast0 = _cp_gates(ptr_g, base, mask_t, o_t, DECAY, BLOCK_T, ACC)
    do = _cp_load(ptr_do, base, mask_t, o_v, mask_v, V)
    v = _cp_load(ptr_v, base, mask_t, o_v, mask_v, V)
    dM = (tl.dot(do, tl.trans(v), input_precision=PRECISION)
          * _cp_causal_mask(G, R, o_t, DECAY)).to(DOT)
    dG = tl.zeros([BLOCK_T], dtype=ACC)                 # dL/db summed over the key lanes
    leaving = tl.sum(dG, axis=0)
    A = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
    for i_k in range(0, tl.cdiv(K, BLOCK_K)):
        o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = o_k < K
        offs_kv, mask_kv = o_k[:, None] * V + o_v[None, :], mask_k[:, None] & mask_v[None, :]
        mask_tk = mask_t[:, None] & mask_k[None, :]
        q = _cp_load(ptr_q, base, mask_t, o_k, mask_k, K)
        k = _cp_load(ptr_k, base, mask_t, o_k, mask_k, K)
        dh = _cp_leaving_state_grad(ptr_dh, ptr_dfinal, n, i_bh, offs_kv, mask_kv, NT, K, V,
                                    HAS_FINAL)
        dk = tl.dot(v, tl.trans(dh.to(DOT)), input_precision=PRECISION) * tl.exp2(Gend)[:, None]
        leaving += tl.sum(tl.sum(k.to(ACC) * dk, axis=1), axis=0)
        dk = tl.dot(tl.trans(dM), q, dk, input_precision=PRECISION)
        tl.store(ptr_dk + base[:, None] * K + o_k[None, :], _cp_times(dk, SCALE), mask=mask_tk)
        dG -= tl.sum(k.to(ACC) * dk, axis=1)
        h = tl.load(ptr_h + (i_bh * NT + n) * K * V + offs_kv, mask=mask_kv, other=0.0)
        leaving += tl.exp2(Glast0) * tl.sum(tl.sum(h.to(ACC) * dh, axis=1), axis=0)
        dq = tl.dot(do, tl.trans(h.to(DOT)), input_precision=PRECISION) * tl.exp2(G0)[:, None]
        dq = tl.dot(dM, k, dq, input_precision=PRECISION)
        tl.store(ptr_dq + base[:, None] * K + o_k[None, :], _cp_times(dq, SCALE), mask=mask_tk)
        dG += tl.sum(q.to(ACC) * dq, axis=1)
        A = tl.dot(q, tl.trans(k), A, input_precision=PRECISION)
    if DECAY > 0:
        dG += tl.where(o_t == BLOCK_T - 1, leaving, 0.0)
        dg = tl.sum(dG, axis=0) - tl.cumsum(dG, axis=0) + dG             # reverse cumsum
        tl.store(ptr_dg + base, tl.where(d == float("-inf"), 0.0, _cp_times(dg, SCALE)),
                 mask=mask_t)
    dv = tl.zeros([BLOCK_T, BLOCK_V], dtype=ACC)
    for i_k in range(0, tl.cdiv(K, BLOCK_K)):
        o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = o_k < K
        offs_kv, mask_kv = o_k[:, None] * V + o_v[None, :], mask_k[:, None] & mask_v[None, :]
        k = _cp_load(ptr_k, base, mask_t, o_k, mask_k, K)
        dh = _cp_leaving_state_grad(ptr_dh, ptr_dfinal, n, i_bh, offs_kv, mask_kv, NT, K, V,
                                    HAS_FINAL)
        dv = tl.dot((k.to(ACC) * tl.exp2(Gend)[:, None]).to(DOT), dh.to(DOT), dv,
                    input_precision=PRECISION)
    A = (A * _cp_causal_mask(G, R, o_t, DECAY)).to(DOT)
    dv = tl.dot(tl.trans(A), do, dv, input_precision=PRECISION)
    tl.store(ptr_dv + base[:, None] * V + o_v[None, :], _cp_times(dv, SCALE),
             mask=mask_t[:, None] & mask_v[None, :])


@triton.jit
def _cp_times(x, SCALE: tl.constexpr):
    """A gradient times the query scale (chunk_parallel_core.md, "Dtypes"); at 1 (no scale:
    hgrn2, mamba2) no multiply at all."""
    if SCALE == 1.0:
        return x
    else:
        return x * SCALE


@triton.jit
def _cp_leaving_state_grad(ptr_dh, ptr_dfinal, n, i_bh, offs_kv, mask_kv, NT, K, V,
                           HAS_FINAL: tl.constexpr):
    """dh[n] at offs_kv for the fused kernels, in dS_T's dtype (the compute dtype): the
    incoming dS_T for the last chunk (0 without one), else slot n of the adjoint pass's AFTER
    states (in the dot dtype of a 16-bit call, converted)."""
    if n == NT - 1:
        return tl.load(ptr_dfinal + i_bh * K * V + offs_kv, mask=mask_kv & HAS_FINAL, other=0.0)
    else:
        return tl.load(ptr_dh + (i_bh * (NT - 1) + n) * K * V + offs_kv, mask=mask_kv,
                       other=0.0).to(ptr_dfinal.dtype.element_ty)


@triton.jit
def _cp_key_block(ptr_q, ptr_k, ptr_g, i_k, base, mask_t, o_t, o_v, mask_v, K, V,
                  BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    """Key block i_k of a chunk for the key-wise fused backward: its lanes, q and k (ACC), the
    key-wise gates (_cp_chunk_gates) and the block's offsets in a [K, V] state."""
    o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = o_k < K
    offs_kv, mask_kv = o_k[:, None] * V + o_v[None, :], mask_k[:, None] & mask_v[None, :]
    q = _cp_load(ptr_q, base, mask_t, o_k, mask_k, K).to(ACC)
    k = _cp_load(ptr_k, base, mask_t, o_k, mask_k, K).to(ACC)
    d, G, R, G0, Gend, Glast0 = _cp_chunk_gates(ptr_g, base, mask_t, o_k, mask_k, o_t, 2,
                                                BLOCK_T, K, ACC)
    return o_k, mask_k, q, k, d, G, R, G0, Gend, Glast0, offs_kv, mask_kv


@triton.jit
def _cp_causal_mask(G, R, o_t, DECAY: tl.constexpr):
    """The decay from s to t inside a chunk for a scalar gate (_cp_causal_decay), the causal
    mask (1 for s <= t, else 0) without one."""
    if DECAY == 1:
        return _cp_causal_decay(G, R, o_t)
    else:
        return (o_t[:, None] >= o_t[None, :]).to(G.dtype)


@triton.jit
def _cp_gates(ptr_g, base, mask_t, o_t, DECAY: tl.constexpr, BLOCK_T: tl.constexpr,
              ACC: tl.constexpr):
    """A scalar gate's _cp_chunk_gates (d, G, R, G0, Gend, Glast0), or zeros (no decay)."""
    if DECAY == 0:
        zero = tl.zeros([BLOCK_T], dtype=ACC)
        return zero, zero, zero, zero, zero, tl.sum(zero, axis=0)
    else:
        return _cp_chunk_gates(ptr_g, base, mask_t, o_t, mask_t, o_t, DECAY, BLOCK_T, 1, ACC)


def _cp_blocks(K, V, decay, chunk_size):
    """Blocks and warps (chunk_parallel_core.md, "Blocks"): BLOCK_T, SUB_T, the key block of the
    state passes, of the output and dv kernels' scores and of the dq/dk kernel, the value block,
    and the warps of the kernels other than dq/dk (which runs 8); `fused`: the backward runs
    _cp_bwd_fused_kernel (a scalar gate or none, K and V of at most 64 lanes), `fused_keys`
    _cp_bwd_fused_keys_kernel (a key-wise gate, V of at most 64), `fused_wide` (where `fused`
    is not) _cp_bwd_fused_wide_kernel in key blocks of `wide_k` (a scalar gate or none, V of at
    most 128); `adjoint_k`, `adjoint_v`, `adjoint_warps`, `adjoint_stages` the adjoint state
    pass's key and value blocks, warps and stages (beside the wide kernel one block of up to 128
    x 128 lanes, one stage: q and do read once)."""
    block_t = max(16, _pow2(chunk_size))
    block_k = min(64, max(16, _pow2(K)))
    block_v = min(64, max(16, _pow2(V)))
    keywise = decay == 2
    fused = not keywise and _pow2(K) <= 64 and _pow2(V) <= 64
    fused_wide = not keywise and not fused and _pow2(V) <= 128
    fused_keys = keywise and _pow2(V) <= 128
    return dict(block_t=block_t, sub_t=min(16, block_t),
                # the forward state pass: V one block of up to 128 lanes (k, g read once), 8
                # warps; beside key-wise gates at V > 64 key blocks of 64 at 16 warps, as the
                # adjoint pass (v read once a key block)
                state_k=(block_k if _pow2(V) > 64 else min(block_k, 32)) if keywise else block_k,
                state_v=min(128, max(16, _pow2(V))),
                state_warps=(16 if _pow2(V) > 64 else 8) if keywise else (8 if _pow2(V) > 64 else 4),
                scores_k=16 if keywise else block_k, dqk_k=16 if keywise else block_k,
                dqk_v=block_v if keywise else min(block_v, 32),
                block_v=block_v, warps=8 if keywise else 4,
                fused=fused, fused_keys=fused_keys,
                fused_wide=fused_wide, wide_k=16,
                adjoint_k=block_k if keywise else min(128, max(16, _pow2(K))),
                adjoint_v=max(16, _pow2(V)) if fused_wide or fused_keys else block_v,
                adjoint_warps=16 if keywise else (8 if K > 64 or fused_wide else 4),
                adjoint_stages=1 if fused_wide else 3)


class _ChunkParallelCore(torch.autograd.Function):
    """(o, S_T) of the chunk recurrence by the parallel kernels; the forward keeps the chunk
    states h [B, H, NT, K, V] in the dot dtype (fp32 for fp32 calls), the backward is the
    adjoint kernels alone."""

    @staticmethod
    def forward(ctx, q, k, v, g, s0, s, chunk_size, dot_dtype, precision, read_dtype, scale):
        compute = s0.dtype      # the state's: q, k, v, g may come in the call's 16-bit dtype
        given = (q.dtype, k.dtype, v.dtype, None if g is None else g.dtype,
                 None if s is None else s.dtype)
        dot = dot_dtype if dot_dtype in (torch.bfloat16, torch.float16) else compute
        q, k, v = (x.to(dot).contiguous() for x in (q, k, v))
        # a write scale s (chunk_parallel_core.md, "A write scale"): the key written is s k,
        # formed by the kernels; as it comes, [B, T, H]
        s = None if s is None else s.contiguous()
        # a scalar gate in fp32 (1/K of q's bytes; read as bf16 the state pass spilled 40 B
        # on sm_80), a key-wise one as it comes
        g = None if g is None else (g.to(compute) if g.dim() == 3 else g).contiguous()
        s0 = s0.to(compute).contiguous()
        B, T, H, K = q.shape
        V = v.shape[-1]
        decay = 0 if g is None else (2 if g.dim() == 4 else 1)
        b = _cp_blocks(K, V, decay, chunk_size)
        NT, NV = triton.cdiv(T, b["block_t"]), triton.cdiv(V, b["block_v"])
        acc, tl_dot = _acc(s0), _TL_DTYPES[dot]
        precision = precision or ("tf32" if dot == torch.float32 else "ieee")
        # the read stored in read_dtype (the call's, when it is a whole output: its gradient
        # then comes in that dtype too), else fp32
        o = torch.empty((B, T, H, V), dtype=read_dtype or compute, device=q.device)
        # the chunk states in the dot dtype (16-bit calls: what their dots read; the passes
        # hold the state in fp32 registers and round a copy at each boundary)
        h = torch.empty((B, H, NT, K, V), dtype=dot, device=q.device)
        final = torch.empty((B, H, K, V), dtype=compute, device=q.device)
        g_ptr = q if g is None else g
        s_ptr = g_ptr if s is None else s
        _cp_state_pass_kernel[(triton.cdiv(K, b["state_k"]), triton.cdiv(V, b["state_v"]), B * H)](
            k, v, g_ptr, s_ptr, s0, h, final, T, H, NT, K, V, b["block_t"], b["state_k"],
            b["state_v"], decay, False, True, False, s is not None, acc, tl_dot, precision,
            num_warps=b["state_warps"],
            num_stages=2 if decay == 1 and dot != compute else 3)   # 16-bit h beside a scalar
        # gate: at 3 stages sm_80 spilled 16 B (48, 64, 128)
        _cp_fwd_output_kernel[(NV, NT, B * H)](
            q, k, v, g_ptr, s_ptr, h, o, T, H, NT, K, V, scale, b["block_t"], b["sub_t"],
            b["scores_k"], b["block_v"], decay, s is not None, acc, tl_dot, precision,
            num_warps=b["warps"])
        ctx.save_for_backward(q, k, v, g, h, s)
        ctx.settings = (chunk_size, decay, compute, precision, given, scale)
        return o, final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, dfinal):
        q, k, v, g, h, s = ctx.saved_tensors
        chunk_size, decay, compute, precision, given, scale = ctx.settings
        B, T, H, K = q.shape
        V = v.shape[-1]
        b = _cp_blocks(K, V, decay, chunk_size)
        NT, NV = triton.cdiv(T, b["block_t"]), triton.cdiv(V, b["block_v"])
        fused = b["fused"]
        fused_keys, fused_wide = b["fused_keys"], b["fused_wide"]
        after = fused or fused_keys or fused_wide
        NK = 1 if after else triton.cdiv(K, b["dqk_k"])
        tl_dot = _TL_DTYPES[q.dtype]
        # the query scale on the stores (SCALE): the kernels run on the unscaled do and dS_T /
        # scale, every gradient linear in both; fp64 calls scale do on the host (a Triton
        # float constant is fp32)
        in_kernel = compute != torch.float64
        do = torch.zeros_like(v) if do is None else _cp_scaled(
            do, 1.0 if in_kernel else scale, q.dtype)
        if in_kernel and dfinal is not None and scale != 1:
            dfinal = dfinal / scale
        kscale = scale if in_kernel else 1.0
        # fused: dh[n] for n < NT - 1 only, the fused kernel reads dS_T itself; in h's dtype
        dh = h.new_empty((B, H, NT - 1, K, V)) if after else torch.empty_like(h)
        ds0 = torch.empty((B, H, K, V), dtype=compute, device=q.device)
        acc = _acc(ds0)     # not h's: 16-bit on a 16-bit call
        # each gradient in its input's dtype, stored so by the kernels (a store casts); but
        # the wide and key-wise fused kernels' in fp32, cast after, unless q, k and v share one
        # dtype (stores of two dtypes spilled: the wide kernel 24 B on sm_90a, mamba2 and mlstm
        # at 128; the key-wise one 8 B on sm_80, hgrn2 at 48 and 64)
        mixed = (fused_wide or fused_keys) and len(set(given[:3])) > 1
        stored = [compute if mixed else dtype for dtype in given[:3]]
        dq = torch.empty((B, T, H, K), dtype=stored[0], device=q.device)
        dk = torch.empty((B, T, H, K), dtype=stored[1], device=q.device)
        dv = torch.empty((B, T, H, V), dtype=stored[2], device=q.device)
        dg = None if g is None else torch.empty(    # the scalar gate's partial sums in fp32
            ((NK,) if decay == 1 else ()) + tuple(g.shape),
            dtype=compute if decay == 1 else given[3], device=q.device)
        # the write scale's gradient sum_K k dw (fp32, cast after): only the fused kernel
        # takes a write scale (`_cp_writes`)
        ds = None if s is None else torch.empty(s.shape, dtype=compute, device=q.device)
        g_ptr = q if g is None else g
        s_ptr, ds_ptr = (g_ptr, dq) if s is None else (s, ds)
        dfinal = None if dfinal is None else dfinal.contiguous()
        final_ptr = ds0 if dfinal is None else dfinal
        _cp_state_pass_kernel[(triton.cdiv(K, b["adjoint_k"]), triton.cdiv(V, b["adjoint_v"]),
                               B * H)](
            q, do, g_ptr, g_ptr, final_ptr, dh, ds0, T, H, NT, K, V, b["block_t"],
            b["adjoint_k"], b["adjoint_v"], decay, True, dfinal is not None, after, False, acc,
            tl_dot, precision, num_warps=b["adjoint_warps"], num_stages=b["adjoint_stages"])
        if fused:
            _cp_bwd_fused_kernel[(NT, B * H)](
                q, k, v, g_ptr, s_ptr, h, dh, final_ptr, do, dq, dk, dv,
                dq if dg is None else dg, ds_ptr, T, H, NT, K, V, b["block_t"], b["dqk_k"],
                b["block_v"], decay, dfinal is not None, s is not None, acc, tl_dot, precision,
                kscale, num_warps=8)
        elif fused_keys:
            _cp_bwd_fused_keys_kernel[(NT, B * H)](
                q, k, v, g_ptr, h, dh, final_ptr, do, dq, dk, dv, dq if dg is None else dg, T,
                H, NT, K, V, b["block_t"], b["sub_t"], b["dqk_k"], max(16, _pow2(V)),
                dfinal is not None, acc, tl_dot, precision, kscale, num_warps=8)
        elif fused_wide:
            _cp_bwd_fused_wide_kernel[(NT, B * H)](
                q, k, v, g_ptr, h, dh, final_ptr, do, dq, dk, dv, dq if dg is None else dg, T,
                H, NT, K, V, b["block_t"], b["wide_k"], max(16, _pow2(V)), decay,
                dfinal is not None, acc, tl_dot, precision, kscale, num_warps=8,
                num_stages=1)
        else:
            _cp_bwd_dv_kernel[(NV, NT, B * H)](
                q, k, g_ptr, dh, do, dv, T, H, NT, K, V, b["block_t"], b["sub_t"],
                b["scores_k"], b["block_v"], decay, acc, tl_dot, precision, kscale,
                num_warps=b["warps"])
            _cp_bwd_dqk_kernel[(NK, NT, B * H)](
                q, k, v, g_ptr, h, dh, do, dq, dk, dq if dg is None else dg, T, H, NT, K, V,
                b["block_t"], b["sub_t"], b["dqk_k"], b["dqk_v"], decay, acc, tl_dot,
                precision, kscale, num_warps=8)
        if decay == 1:
            dg = dg.sum(0).to(given[3])
        dq, dk, dv = (x.to(dtype) for x, dtype in zip((dq, dk, dv), given))
        ds = None if ds is None else ds.to(given[4])
        if kscale != 1:
            ds0 = ds0 * kscale
        return dq, dk, dv, dg, ds0, ds, None, None, None, None, None


def _cp_writes(K, V, log_decay, chunk_size):
    """Whether the kernels form the written key s k themselves (chunk_parallel_core.md, "A write
    scale"): when the backward runs the fused kernel (a scalar gate or none, K, V <= 64)."""
    decay = 0 if log_decay is None else (2 if log_decay.dim() == 4 else 1)
    return _cp_blocks(K, V, decay, chunk_size)["fused"]


def chunk_parallel_core(queries, keys, values, log_decay, state, chunk_size, dot_dtype=None,
                        precision=None, read_dtype=None, query_scale=None, write_scale=None):
    """The torch backend's `_chunk` (same arguments, same results: reads [B, H, T, V] and the last
    state) on the parallel kernels, one query and one write a step; q, k, v dot in `dot_dtype`
    when it is 16-bit (the call's dtype: seqc/autograd.py binds it), fp32 accumulation; the
    reads stored in `read_dtype` (the call's, backends/torch/module.md "Call-dtype reads"), else
    fp32; `query_scale` q's constant factor, applied to the outputs' fp32 accumulators;
    `write_scale` the key's per-token factor s [B, T, H], the key written s k (formed by the
    kernels, chunk_parallel_core.md "A write scale")."""
    (q,), (k,), (v,) = queries, keys, values
    (s,) = write_scale or (None,)
    if s is not None and not _cp_writes(k.shape[-1], v.shape[-1], log_decay, chunk_size):
        # s k under autograd, in the key's dtype (the wide kernel's fold spilled on sm_90a)
        k, s = s.to(k.dtype)[..., None] * k, None
    o, final = _ChunkParallelCore.apply(q, k, v, log_decay, state, s, chunk_size, dot_dtype,
                                        precision, read_dtype,
                                        1.0 if query_scale is None else float(query_scale))
    return [o.transpose(1, 2)], final

# options of the torch module's `run` that put a recurrence core with adjoint kernels in place of
# a torch family function: seqc's Triton backward passes them (chunk_core.md)
CORES = {
    "chunk_core": chunk_core,
}
# modes that train on cores of their own, in place of CORES' (chunk_parallel_core.md,
# chunk_delta_parallel_core.md, chunk_dplr_parallel_core.md)
MODE_CORES = {
    "chunk_parallel": {"chunk_core": chunk_parallel_core},
}

# `mode=None` here: the single-kernel `chunk` form runs B x H x value blocks programs, each walking
# the whole sequence; below half an H100's 132 SMs, when its state pass has at least as many
# programs, the two-kernel `chunk_parallel` runs instead
# (docs/backends.md, "Triton chunk modes"). Training follows the mode chosen: its own cores
# (MODE_CORES), else DEFAULT_MODE's adjoint core (seqc/autograd.py, `training_cores`).
PARALLEL_MODE = "chunk_parallel"
PARALLEL_BELOW = 2 * 132
CHUNK_PARALLEL_BELOW = 132 // 2
CHOICE_RULE = ("chunk_parallel when chunk would launch fewer than 132 / 2 programs (B x H x "
               "value blocks) and the state pass at least as many, else chunk")


def _choose_mode(dims, block_split):
    # the single kernel's programs, with the value blocks it launches (blockwise.md, "Blocks")
    programs = dims["B"] * dims["H"] * _chunk_blocks(dims, block_split)[1]
    # the GPU model's choice (seqc/gpu_model.py; docs/backends.md "Triton chunk modes"): the
    # multi-kernel form when the single kernel would keep fewer than half the SMs busy and the
    # form's state pass spreads over at least as many programs as the single kernel
    if programs < CHUNK_PARALLEL_BELOW and _state_pass_programs(dims, block_split) >= programs:
        return PARALLEL_MODE
    return DEFAULT_MODE


def _constants(dims):
    """The kernels' host-computed constants (sub-expressions over dim sizes and consts), computed
    in fp64 on the host and passed to the kernels as Python floats."""
    compute, device = torch.float64, "cpu"
    return {
        "c0": float(dims["scale"]),
    }


RUNNERS = {
    "fused_recurrent": _run_fused_recurrent,
    "chunk_parallel": _run_chunk_parallel,
    "chunk": _run_chunk,
}


def run(inputs, params, dims, initial_state=None, output_final_state=False, mode=None,
        chunk_size=None, block_split=128, precision=None, chunk_state_dtype=None):
    mode = _choose_mode(dims, block_split) if mode is None else mode
    if not (chunk_size is None or isinstance(chunk_size, int) and chunk_size >= 1) \
            or not (isinstance(block_split, int) and block_split >= 1):
        raise ValueError("chunk_size and block_split must be positive integers")
    options = {"block_split": block_split, "precision": precision,
               "chunk_state_dtype": chunk_state_dtype}
    if chunk_size is not None:      # else each mode's default (64; _chunk_parallel_chunk)
        options["chunk_size"] = chunk_size
    if mode not in RUNNERS:
        raise ValueError(f"mode {mode!r} is not available for `gla`; "
                         f"choose one of {', '.join(MODES)}")
    first = next(iter(inputs.values()))
    device = first.device
    compute = torch.float64 if first.dtype == torch.float64 else torch.float32
    written = first.dtype if mode in CALL_DTYPE_OUTPUTS else compute
    B, T, H = dims["B"], dims["T"], dims["H"]
    x = {name: tensor.contiguous() for name, tensor in inputs.items()}
    p = {name: tensor.contiguous() for name, tensor in params.items()}
    consts = _constants(dims)
    outputs = {
        "o": torch.empty((B, T, H, dims["V"]), dtype=written, device=device),
    }
    init = None
    if initial_state is not None:
        init = {name: initial_state[name].to(compute).contiguous() for name in STATES}
    final = None
    if output_final_state:
        final = {
            "S": torch.empty((B, H, dims["K"], dims["V"]), dtype=compute, device=device),
        }
    RUNNERS[mode](x, p, dims, init, final, outputs, consts, options)
    return outputs, final
