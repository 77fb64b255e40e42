# Emitted by seqc 0.1.0 from spec `hgrn` (backend: triton).
# Do not edit: regenerate with `seqc compile hgrn.seq -b triton`.
# The spec, as seqc reads it:
#     model hgrn
#     dims D
#     input x[D]
#     input g[D] in (-inf, 0)
#     state h[D] = 0
#     h = exp(g) * h + x
#     output o = h
"""Triton kernels for `hgrn`: see backends/triton/*.md in seqc for their math.

Kernel families in this module: fused_recurrent, scan_parallel, scan (default: scan, or
scan_parallel by _choose_mode's rule, CHOICE_RULE).
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

INPUTS = ("x", "g", )
PARAMS = ()
STATES = ("h", )
OUTPUTS = ("o", )
MODES = ("fused_recurrent", "scan_parallel", "scan", )
DEFAULT_MODE = "scan"
# the modes whose kernels store the outputs in the call's dtype (bf16 / fp16 calls); the others
# store fp32 (fp64 for fp64 calls), cast to the call's dtype by seqc after the call
CALL_DTYPE_OUTPUTS = frozenset({"fused_recurrent", "scan_parallel", "scan"})
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
    ptr_in_x,
    ptr_in_g,
    ptr_init_h, ptr_final_h, ptr_ckpt_h,
    ptr_out_o,
    T, H, SEGMENT,
    dim_D: tl.constexpr, BLOCK_D: tl.constexpr,
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
    o_D = i_split * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_D = o_D < dim_D
    if HAS_INIT:
        st_h = tl.load(ptr_init_h + (i_b * H + i_h) * (dim_D) + (o_D), mask=(mask_D), other=0.0).to(ACC)
    else:
        st_h = tl.full([BLOCK_D], 0.0, dtype=ACC)
    for t in range(0, T):
        if STORE_CKPT:
            if t % SEGMENT == 0:
                tl.store(ptr_ckpt_h + (i_bh * tl.cdiv(T, SEGMENT) + t // SEGMENT) * (dim_D) + (o_D), st_h, mask=(mask_D))
        in_x = tl.load(ptr_in_x + ((i_b * T + t) * H + i_h) * (dim_D) + (o_D), mask=(mask_D), other=0.0).to(ACC)
        in_g = tl.load(ptr_in_g + ((i_b * T + t) * H + i_h) * (dim_D) + (o_D), mask=(mask_D), other=0.0).to(ACC)
        st_h = ((tl.exp(in_g) * st_h) + in_x)
        tl.store(ptr_out_o + ((i_b * T + t) * H + i_h) * (dim_D) + (o_D), st_h, mask=(mask_D))
    if STORE_FINAL:
        tl.store(ptr_final_h + (i_b * H + i_h) * (dim_D) + (o_D), st_h, mask=(mask_D))


STATE_LANES = 8192      # state values a fused program holds: 64 registers a thread at 4 warps
PARAM_LANES = 16384     # param values it holds; more (gru, lstm at D = 128) are loaded every step


def _fused_recurrent_reloads(blocks):
    """Whether the program loads its params every step instead of holding them (L1/L2 hits)."""
    return False        # no params


def _fused_recurrent_blocks(dims, block_split, lanes=STATE_LANES):
    """The block of every dim, and the number of programs the split dim is spread over."""
    blocks = {
        "BLOCK_D": _pow2(dims["D"]),
    }
    blocks["BLOCK_D"] = min(blocks["BLOCK_D"], _pow2(block_split))
    # registers: halve the split block until a program holds at most `lanes` values of the
    # states and of the params that have the split dim (mamba's A[D, N])
    while blocks["BLOCK_D"] > 1 and (blocks["BLOCK_D"]) > lanes:
        blocks["BLOCK_D"] //= 2
    return blocks, triton.cdiv(dims["D"], blocks["BLOCK_D"])


def _run_fused_recurrent(x, p, dims, init, final, outputs, consts, options, checkpoints=None):
    """`checkpoints` (training): state name -> [B, H, cdiv(T, segment), *dims], filled with the
    state entering steps 0, segment, 2 segment, ... (options["segment"])."""
    B, T, H = dims["B"], dims["T"], dims["H"]
    blocks, n_split = _fused_recurrent_blocks(dims, options.get("block_split", 128))
    spare = _spare(outputs)
    fused_recurrent_kernel[(n_split, B * H)](
        x["x"],
        x["g"],
        spare if init is None else init["h"], spare if final is None else final["h"],
        spare if checkpoints is None else checkpoints["h"],
        outputs["o"],
        T, H, options.get("segment", 64),
        dims["D"], blocks["BLOCK_D"],
        init is not None, final is not None, checkpoints is not None,
        _fused_recurrent_reloads(blocks), _acc(spare),
    )

# (a coupled group's combine function is the `scan` kernel's, defined beside it in this module)


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
def scan_chunk_summary_kernel(
    ptr_in_x,
    ptr_in_g,
    ptr_init_h, ptr_final_h,
    ptr_sum_h,
    ptr_carry_h,
    ptr_agg_h,
    ptr_out_o,
    T, H, BH, NC,
    dim_D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr, CHUNK_T: tl.constexpr,
    HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, ACC: tl.constexpr,
):
    """Pass 1 of the two-level scan (scan_parallel.md): one program per (lane block, batch x
    head, time chunk) scans its chunk from the identity and stores the chunk's summary: the state
    it ends in and its aggregate coefficient."""
    i_split = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_c = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    o_D = i_split * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_D = o_D < dim_D
    o_t = tl.arange(0, BLOCK_T)
    last_T = o_t == BLOCK_T - 1

    st_h = tl.full([BLOCK_D], 0.0, dtype=ACC)
    agg_h = tl.full([BLOCK_D], 1.0, dtype=ACC)
    for t0 in range(0, tl.minimum(CHUNK_T, T - i_c * CHUNK_T), BLOCK_T):
        o_T = i_c * CHUNK_T + t0 + o_t
        mask_T = o_T < T
        in_x = tl.load(ptr_in_x + (i_b * T * H + i_h) * (dim_D) + (o_T[:, None] * (H * dim_D) + o_D[None, :]), mask=(mask_T[:, None] & mask_D[None, :]), other=0.0).to(ACC)
        in_g = tl.load(ptr_in_g + (i_b * T * H + i_h) * (dim_D) + (o_T[:, None] * (H * dim_D) + o_D[None, :]), mask=(mask_T[:, None] & mask_D[None, :]), other=0.0).to(ACC)
        # scan group h: an associative scan over the block (scan.md)
        a_h = tl.where((mask_T[:, None] & mask_D[None, :]), tl.exp(in_g), 1.0)
        b_h = tl.where((mask_T[:, None] & mask_D[None, :]), in_x, 0.0)
        a_h, b_h = tl.associative_scan((a_h, b_h), 0, _affine_combine)
        all_h = a_h * st_h[None, :] + b_h
        read__read0_h = all_h
        st_h = tl.sum(tl.where(last_T[:, None], all_h, 0.0), axis=0)
        # the aggregate coefficient of the chunk so far (scan_parallel.md)
        agg_h = tl.sum(tl.where(last_T[:, None], a_h, 0.0), axis=0) * agg_h


    tl.store(ptr_sum_h + ((i_c) * BH + i_bh) * (dim_D) + (o_D), st_h, mask=(mask_D))
    tl.store(ptr_agg_h + ((i_c) * BH + i_bh) * (dim_D) + (o_D), agg_h, mask=(mask_D))


@triton.jit
def scan_chunk_carry_kernel(
    ptr_in_x,
    ptr_in_g,
    ptr_init_h, ptr_final_h,
    ptr_sum_h,
    ptr_carry_h,
    ptr_agg_h,
    ptr_out_o,
    T, H, BH, NC,
    dim_D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr, CHUNK_T: tl.constexpr,
    HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, ACC: tl.constexpr,
):
    """Pass 2: one program per (lane block, batch x head) folds the chunks' summaries in order
    from the initial state, storing the state entering every chunk and the final state."""
    i_split = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_c = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    o_D = i_split * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_D = o_D < dim_D
    o_t = tl.arange(0, BLOCK_T)
    last_T = o_t == BLOCK_T - 1

    if HAS_INIT:
        st_h = tl.load(ptr_init_h + (i_b * H + i_h) * (dim_D) + (o_D), mask=(mask_D), other=0.0).to(ACC)
    else:
        st_h = tl.full([BLOCK_D], 0.0, dtype=ACC)
    for c in range(0, NC):
        tl.store(ptr_carry_h + ((c) * BH + i_bh) * (dim_D) + (o_D), st_h, mask=(mask_D))
        csum_h = tl.load(ptr_sum_h + ((c) * BH + i_bh) * (dim_D) + (o_D), mask=(mask_D), other=0.0)
        cagg_h = tl.load(ptr_agg_h + ((c) * BH + i_bh) * (dim_D) + (o_D), mask=(mask_D), other=0.0)
        st_h = cagg_h * st_h + csum_h
    if STORE_FINAL:
        tl.store(ptr_final_h + (i_b * H + i_h) * (dim_D) + (o_D), st_h, mask=(mask_D))


@triton.jit
def scan_chunk_output_kernel(
    ptr_in_x,
    ptr_in_g,
    ptr_init_h, ptr_final_h,
    ptr_sum_h,
    ptr_carry_h,
    ptr_agg_h,
    ptr_out_o,
    T, H, BH, NC,
    dim_D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr, CHUNK_T: tl.constexpr,
    HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, ACC: tl.constexpr,
):
    """Pass 3: the grid of pass 1 rescans each chunk from its carried-in state and stores the
    outputs."""
    i_split = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_c = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    o_D = i_split * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_D = o_D < dim_D
    o_t = tl.arange(0, BLOCK_T)
    last_T = o_t == BLOCK_T - 1

    st_h = tl.load(ptr_carry_h + ((i_c) * BH + i_bh) * (dim_D) + (o_D), mask=(mask_D), other=0.0)
    for t0 in range(0, tl.minimum(CHUNK_T, T - i_c * CHUNK_T), BLOCK_T):
        o_T = i_c * CHUNK_T + t0 + o_t
        mask_T = o_T < T
        in_x = tl.load(ptr_in_x + (i_b * T * H + i_h) * (dim_D) + (o_T[:, None] * (H * dim_D) + o_D[None, :]), mask=(mask_T[:, None] & mask_D[None, :]), other=0.0).to(ACC)
        in_g = tl.load(ptr_in_g + (i_b * T * H + i_h) * (dim_D) + (o_T[:, None] * (H * dim_D) + o_D[None, :]), mask=(mask_T[:, None] & mask_D[None, :]), other=0.0).to(ACC)
        # scan group h: an associative scan over the block (scan.md)
        a_h = tl.where((mask_T[:, None] & mask_D[None, :]), tl.exp(in_g), 1.0)
        b_h = tl.where((mask_T[:, None] & mask_D[None, :]), in_x, 0.0)
        a_h, b_h = tl.associative_scan((a_h, b_h), 0, _affine_combine)
        all_h = a_h * st_h[None, :] + b_h
        read__read0_h = all_h
        st_h = tl.sum(tl.where(last_T[:, None], all_h, 0.0), axis=0)


        tl.store(ptr_out_o + (i_b * T * H + i_h) * (dim_D) + (o_T[:, None] * (H * dim_D) + o_D[None, :]), read__read0_h, mask=(mask_T[:, None] & mask_D[None, :]))


SCAN_LANES = 1024       # time x state values a scan program holds in one block: 8 a thread at 4 warps


def _scan_blocks(dims, options, lanes=SCAN_LANES):
    """The blocks of a scan program (`scan` and `scan_parallel`): every dim whole but the split
    one, which is halved, then the time block, until a program holds at most `lanes` time x
    state values a block; the split dim's program count; the time block."""
    blocks = {
        "BLOCK_D": _pow2(dims["D"]),
    }
    block_t = max(16, _pow2(options.get("chunk_size", 64)))
    blocks["BLOCK_D"] = min(blocks["BLOCK_D"], _pow2(options.get("block_split", 128)))
    while blocks["BLOCK_D"] > 1 and block_t * ((blocks["BLOCK_D"])) > lanes:
        blocks["BLOCK_D"] //= 2
    n_split = triton.cdiv(dims["D"], blocks["BLOCK_D"])
    while block_t > 16 and block_t * ((blocks["BLOCK_D"])) > lanes:
        block_t //= 2
    return blocks, n_split, block_t


def _scan_programs(dims, block_split):
    """Programs of the single-kernel `scan` mode: lane blocks x batch x heads (whatever T)."""
    _, n_split, _ = _scan_blocks(dims, {"block_split": block_split})
    return n_split * dims["B"] * dims["H"]


def _scan_chunk(T, programs, block_t, wanted=2 * 132):
    """Steps per time chunk of `scan_parallel`: a whole number of time blocks, as long as leaves
    at least `wanted` programs (lane blocks x batch x heads x chunks) where T allows."""
    blocks_per_chunk = max(1, triton.cdiv(T, block_t) // triton.cdiv(wanted, programs))
    return block_t * blocks_per_chunk


def _run_scan_parallel(x, p, dims, init, final, outputs, consts, options):
    B, T, H = dims["B"], dims["T"], dims["H"]
    blocks, n_split, block_t = _scan_blocks(dims, options)
    chunk_t = _scan_chunk(T, n_split * B * H, block_t)
    n_chunks = triton.cdiv(T, chunk_t)
    spare = _spare(outputs)
    buffers = {
        "sum_h": torch.empty((n_chunks, B * H, dims["D"]), dtype=spare.dtype, device=spare.device),
        "carry_h": torch.empty((n_chunks, B * H, dims["D"]), dtype=spare.dtype, device=spare.device),
        "agg_h": torch.empty((n_chunks, B * H, dims["D"]), dtype=spare.dtype, device=spare.device),
    }
    arguments = [
        x["x"],
        x["g"],
        spare if init is None else init["h"], spare if final is None else final["h"],
        buffers["sum_h"],
        buffers["carry_h"],
        buffers["agg_h"],
        outputs["o"],
        T, H, B * H, n_chunks,
        dims["D"], blocks["BLOCK_D"],
        block_t, chunk_t, init is not None, final is not None, _acc(spare),
    ]
    key = (tuple(sorted(dims.items())), str(next(iter(x.values())).dtype))
    configs = _scan_parallel_configs()
    for kernel, grid, tuned in ((scan_chunk_summary_kernel, (n_split, B * H, n_chunks), configs),
                                (scan_chunk_carry_kernel, (n_split, B * H, 1), [{}]),
                                (scan_chunk_output_kernel, (n_split, B * H, n_chunks), configs)):
        _launch(kernel, tuned, lambda config, grid=grid: (grid, arguments, _launch_options(config)), key)


def _scan_parallel_configs():
    """The summary and output passes' launch configurations, the fallback (Triton's defaults)
    first (autotune: parallel_host.md); the carry pass (one program per lane block and batch x
    head, reading what the summary pass wrote and writing the carries) keeps the fallback. (Two
    warps spilled 8 B in hgrn's summary pass on sm_90a at D = 64: not in the list.)"""
    return [{}, {"num_warps": 8}]



@triton.jit
def scan_kernel(
    ptr_in_x,
    ptr_in_g,
    ptr_init_h, ptr_final_h,
    ptr_out_o,
    T, H,
    dim_D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, PRECISION: tl.constexpr,
    HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, ACC: tl.constexpr,
):
    """One program per (value block, batch x head); time in blocks of BLOCK_T steps."""
    i_split = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_D = i_split * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_D = o_D < dim_D
    o_t = tl.arange(0, BLOCK_T)
    last_T = o_t == BLOCK_T - 1
    if HAS_INIT:
        st_h = tl.load(ptr_init_h + (i_b * H + i_h) * (dim_D) + (o_D), mask=(mask_D), other=0.0).to(ACC)
    else:
        st_h = tl.full([BLOCK_D], 0.0, dtype=ACC)
    for t0 in range(0, T, BLOCK_T):
        o_T = t0 + o_t
        mask_T = o_T < T
        in_x = tl.load(ptr_in_x + (i_b * T * H + i_h) * (dim_D) + (o_T[:, None] * (H * dim_D) + o_D[None, :]), mask=(mask_T[:, None] & mask_D[None, :]), other=0.0).to(ACC)
        in_g = tl.load(ptr_in_g + (i_b * T * H + i_h) * (dim_D) + (o_T[:, None] * (H * dim_D) + o_D[None, :]), mask=(mask_T[:, None] & mask_D[None, :]), other=0.0).to(ACC)
        # scan group h: an associative scan over the block (scan.md)
        a_h = tl.where((mask_T[:, None] & mask_D[None, :]), tl.exp(in_g), 1.0)
        b_h = tl.where((mask_T[:, None] & mask_D[None, :]), in_x, 0.0)
        a_h, b_h = tl.associative_scan((a_h, b_h), 0, _affine_combine)
        all_h = a_h * st_h[None, :] + b_h
        read__read0_h = all_h
        st_h = tl.sum(tl.where(last_T[:, None], all_h, 0.0), axis=0)

        tl.store(ptr_out_o + (i_b * T * H + i_h) * (dim_D) + (o_T[:, None] * (H * dim_D) + o_D[None, :]), read__read0_h, mask=(mask_T[:, None] & mask_D[None, :]))
    if STORE_FINAL:
        tl.store(ptr_final_h + (i_b * H + i_h) * (dim_D) + (o_D), st_h, mask=(mask_D))


def _run_scan(x, p, dims, init, final, outputs, consts, options):
    B, T, H = dims["B"], dims["T"], dims["H"]
    blocks, n_split, block_t = _scan_blocks(dims, options)     # scan_parallel.py.j2
    spare = _spare(outputs)
    scan_kernel[(n_split, B * H)](
        x["x"],
        x["g"],
        spare if init is None else init["h"], spare if final is None else final["h"],
        outputs["o"],
        T, H,
        dims["D"], blocks["BLOCK_D"],
        block_t, min(16, block_t), options.get("precision") or "ieee",
        init is not None, final is not None, _acc(spare),
    )



@triton.jit
def fused_recurrent_bwd_kernel(
    ptr_in_x, ptr_din_x,
    ptr_in_g, ptr_din_g,
    ptr_ckpt_h, ptr_scratch_h, ptr_dfinal_h, ptr_dinit_h,
    ptr_do_o,
    T, H, SEGMENT, N_SPLIT,
    dim_D: tl.constexpr, BLOCK_D: tl.constexpr,
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
    o_D = i_split * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_D = o_D < dim_D
    dst_h = tl.load(ptr_dfinal_h + (i_b * H + i_h) * (dim_D) + (o_D), mask=(mask_D), other=0.0).to(ACC)
    n_seg = tl.cdiv(T, SEGMENT)
    for back_seg in range(0, n_seg):
        i_seg = n_seg - 1 - back_seg
        t0 = i_seg * SEGMENT
        t1 = tl.minimum(t0 + SEGMENT, T)
        st_h = tl.load(ptr_ckpt_h + (i_bh * tl.cdiv(T, SEGMENT) + i_seg) * (dim_D) + (o_D), mask=(mask_D), other=0.0).to(ACC)
        # the segment's states, recomputed from its checkpoint: the state entering step t at
        # slot t - t0 of the scratch
        for t in range(t0, t1):
            tl.store(ptr_scratch_h + (i_prog * SEGMENT + t - t0) * (BLOCK_D) + (tl.arange(0, BLOCK_D) * (1)), st_h)
            st_h_0 = st_h
            in_x = tl.load(ptr_in_x + ((i_b * T + t) * H + i_h) * (dim_D) + (o_D), mask=(mask_D), other=0.0).to(ACC)
            in_g = tl.load(ptr_in_g + ((i_b * T + t) * H + i_h) * (dim_D) + (o_D), mask=(mask_D), other=0.0).to(ACC)
            v0 = tl.exp(in_g)
            v1 = (v0 * st_h_0)
            v2 = (v1 + in_x)
            st_h_1 = v2
            st_h = st_h_1
        tl.debug_barrier()      # the scratch stored above, read below by other threads
        for back_t in range(0, t1 - t0):
            t = t1 - 1 - back_t
            st_h_0 = tl.load(ptr_scratch_h + (i_prog * SEGMENT + t - t0) * (BLOCK_D) + (tl.arange(0, BLOCK_D) * (1)))
            in_x = tl.load(ptr_in_x + ((i_b * T + t) * H + i_h) * (dim_D) + (o_D), mask=(mask_D), other=0.0).to(ACC)
            in_g = tl.load(ptr_in_g + ((i_b * T + t) * H + i_h) * (dim_D) + (o_D), mask=(mask_D), other=0.0).to(ACC)
            v0 = tl.exp(in_g)
            v1 = (v0 * st_h_0)
            v2 = (v1 + in_x)
            st_h_1 = v2
            do_o = tl.load(ptr_do_o + ((i_b * T + t) * H + i_h) * (dim_D) + (o_D), mask=(mask_D), other=0.0).to(ACC)
            dst_h_1 = dst_h + do_o
            g0 = (dst_h_1 * st_h_0)
            g1 = (g0 * v0)
            din_g = g1
            g2 = (dst_h_1 * v0)
            dst_h_0 = g2
            din_x = dst_h_1
            dst_h = dst_h_0
            tl.store(ptr_din_x + ((i_b * T + t) * H + i_h) * (dim_D) + (o_D), din_x, mask=(mask_D))
            tl.store(ptr_din_g + ((i_b * T + t) * H + i_h) * (dim_D) + (o_D), din_g, mask=(mask_D))
        tl.debug_barrier()      # the scratch read above, before the next segment stores over it
    tl.store(ptr_dinit_h + (i_b * H + i_h) * (dim_D) + (o_D), dst_h, mask=(mask_D))


SEGMENT = 64            # steps between the training forward's stored states


def _fused_recurrent_bwd_warps(blocks, reload):
    """Warps of a backward program: the fewest (4 to 16) at which the values it keeps in
    registers (states and their adjoints, the params or, `reload`, twice the largest, the
    accumulated params' adjoints, a block read in two layouts at each read), spread over its
    threads, leave 64 registers for the step's temporaries within a thread's share (255, or
    65536 over the threads)."""
    warps = 4
    while warps < 16 and (2 * (blocks["BLOCK_D"])) / (32 * warps) + 64 > min(255, 2048 // warps):
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
            "o": torch.empty((B, T, H, dims["D"]), dtype=first.dtype, device=device),
        }
        final = {
            "h": torch.empty((B, H, dims["D"]), dtype=compute, device=device),
        }
        checkpoints = {
            "h": torch.empty((B, H, n_seg, dims["D"]), dtype=compute, device=device),
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
        split = "D"
        programs = n_split * B * H
        reload = _fused_recurrent_reloads(blocks)
        warps = _fused_recurrent_bwd_warps(blocks, reload)
        scratch = {
            "h": torch.empty((programs, segment, blocks["BLOCK_D"]), dtype=compute, device=device),
        }
        like = torch.empty((), dtype=compute, device=device)
        d_in = {
            "x": _fused_recurrent_shares(n_split, (B, T, H), ("D", ), (dims["D"], ), split, like),
            "g": _fused_recurrent_shares(n_split, (B, T, H), ("D", ), (dims["D"], ), split, like),
        }
        d_par = {
        }
        d_init = {
            "h": _fused_recurrent_shares(n_split, (B, H), ("D", ), (dims["D"], ), split, like),
        }
        fused_recurrent_bwd_kernel[(n_split, B * H)](
            x["x"], d_in["x"][0],
            x["g"], d_in["g"][0],
            checkpoints["h"], scratch["h"], d_final["h"], d_init["h"][0],
            d_out["o"],
            T, H, segment, n_split,
            dims["D"], blocks["BLOCK_D"],
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





# ---- the elementwise scan core and its adjoint (scan_core.md) ----


@triton.jit
def _scan_core_affine(a1, b1, a2, b2):
    """x -> a1 x + b1, then x -> a2 x + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _scan_core_compose(fa1, fb1, pa1, pb1, fa2, fb2, pa2, pb2):
    """Two runs of affine maps, the first applied first, each as (F, P): F the whole run, P the
    run with its last map replaced by that map's own P (scan_core.md). P = F_1 then P_2."""
    fa, fb = _scan_core_affine(fa1, fb1, fa2, fb2)
    pa, pb = _scan_core_affine(fa1, fb1, pa2, pb2)
    return fa, fb, pa, pb


@triton.jit
def _scan_core_block(ptr_a, ptr_b, n, i_bh, T, L, o_t, o_l, mask_l, BLOCK_T: tl.constexpr,
                     ACC: tl.constexpr):
    """Time block n of one batch x head, lanes o_l: a (1 past T) and b (0 past T), [BLOCK_T,
    BLOCK_L], their offsets and mask."""
    rows = n * BLOCK_T + o_t
    mask = (rows < T)[:, None] & mask_l[None, :]
    offs = (i_bh * T + rows)[:, None] * L + o_l[None, :]
    a = tl.load(ptr_a + offs, mask=mask, other=1.0).to(ACC)
    b = tl.load(ptr_b + offs, mask=mask, other=0.0).to(ACC)
    return a, b, offs, mask


@triton.jit
def _scan_core_row(x, o_t, i):
    """Row i of a [BLOCK_T, BLOCK_L] block."""
    return tl.sum(tl.where((o_t == i)[:, None], x, 0.0), axis=0)


@triton.jit
def _scan_core_fwd_kernel(ptr_a, ptr_b, ptr_h0, ptr_h, ptr_hb, ptr_final, T, L, N,
                          BLOCK_T: tl.constexpr, BLOCK_L: tl.constexpr, ACC: tl.constexpr):
    """h_t = a_t h_{t-1} + b_t, block by block: every h_t stored (the reads), and the state
    entering every block (hb[n]). One program per batch x head x block of lanes."""
    i_bh = tl.program_id(0).to(tl.int64)
    o_t = tl.arange(0, BLOCK_T)
    o_l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_l = o_l < L
    h = tl.load(ptr_h0 + i_bh * L + o_l, mask=mask_l, other=0.0).to(ACC)
    for n in range(0, N):
        tl.store(ptr_hb + (i_bh * N + n) * L + o_l, h, mask=mask_l)
        a, b, offs, mask = _scan_core_block(ptr_a, ptr_b, n, i_bh, T, L, o_t, o_l, mask_l,
                                        BLOCK_T, ACC)
        A, B = tl.associative_scan((a, b), 0, _scan_core_affine)
        hs = A * h[None, :] + B
        tl.store(ptr_h + offs, hs, mask=mask)
        h = _scan_core_row(hs, o_t, BLOCK_T - 1)       # padded steps are (1, 0): h_T at the end
    tl.store(ptr_final + i_bh * L + o_l, h, mask=mask_l)


@triton.jit
def _scan_core_bwd_kernel(ptr_a, ptr_b, ptr_hb, ptr_dh, ptr_dfinal, ptr_da, ptr_db, ptr_dh0,
                          T, L, N, BLOCK_T: tl.constexpr, BLOCK_L: tl.constexpr,
                          HAS_DFINAL: tl.constexpr, ACC: tl.constexpr):
    """The adjoint, blocks in reverse: mu (the gradient reaching the state entering the block
    after, a_{t+1} lambda_{t+1}) carried back; h_{t-1} recomputed from the stored hb[n]."""
    i_bh = tl.program_id(0).to(tl.int64)
    o_t = tl.arange(0, BLOCK_T)
    o_l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_l = o_l < L
    if HAS_DFINAL:
        mu = tl.load(ptr_dfinal + i_bh * L + o_l, mask=mask_l, other=0.0).to(ACC)
    else:
        mu = tl.zeros([BLOCK_L], dtype=ACC)
    ones = tl.full([BLOCK_T, BLOCK_L], 1.0, ACC)
    zeros = tl.zeros([BLOCK_T, BLOCK_L], dtype=ACC)
    for i_n in range(0, N):
        n = N - 1 - i_n
        a, b, offs, mask = _scan_core_block(ptr_a, ptr_b, n, i_bh, T, L, o_t, o_l, mask_l,
                                        BLOCK_T, ACC)
        dh = tl.load(ptr_dh + offs, mask=mask, other=0.0).to(ACC)
        h0 = tl.load(ptr_hb + (i_bh * N + n) * L + o_l, mask=mask_l, other=0.0).to(ACC)
        # h_{t-1}: the maps of the block before step t applied to h0 (P of the forward run)
        _, _, Pa, Pb = tl.associative_scan((a, b, ones, zeros), 0, _scan_core_compose)
        before = Pa * h0[None, :] + Pb
        # lambda_t = dh_t + mu_{t+1}, mu_t = a_t lambda_t: the same maps, reversed in time
        Fa, Fb, Qa, Qb = tl.associative_scan((a, a * dh, ones, dh), 0, _scan_core_compose,
                                             reverse=True)
        lam = Qa * mu[None, :] + Qb
        tl.store(ptr_da + offs, lam * before, mask=mask)
        tl.store(ptr_db + offs, lam, mask=mask)
        mu = _scan_core_row(Fa, o_t, 0) * mu + _scan_core_row(Fb, o_t, 0)
    tl.store(ptr_dh0 + i_bh * L + o_l, mu, mask=mask_l)


SCAN_CORE_LANES = 512       # time x lane values of one block in a program: 4 a thread at 4 warps


def _scan_core_shapes(b, chunk_size):
    """[B, H, T, ...] -> (B * H, T, L: the state's size, the time block, its count, the lane
    block, the lane blocks' count). The lane block is halved (to 16 at least), then the time block
    (to 16 at least), until a block holds at most SCAN_CORE_LANES values: the adjoint keeps a
    dozen such blocks live (at 1024, [64, 16], the semiring core still spilled 16-20 B)."""
    B, H, T = b.shape[:3]
    L = b[0, 0, 0].numel()
    block_t = max(16, _pow2(chunk_size))
    block_l = min(128, max(16, _pow2(L)))
    while block_l > 16 and block_t * block_l > SCAN_CORE_LANES:
        block_l //= 2
    while block_t > 16 and block_t * block_l > SCAN_CORE_LANES:
        block_t //= 2
    return B * H, T, L, block_t, triton.cdiv(T, block_t), block_l, triton.cdiv(L, block_l)


class _ScanCore(torch.autograd.Function):
    """(every h_t, h_T) of the elementwise scan; the forward keeps the block-boundary states."""

    @staticmethod
    def forward(ctx, a, b, h0, chunk_size):
        a, b, h0 = (x.contiguous() for x in (a, b, h0))
        BH, T, L, block_t, N, block_l, lanes = _scan_core_shapes(b, chunk_size)
        h = torch.empty_like(b)
        hb = torch.empty((BH, N, L), dtype=b.dtype, device=b.device)
        final = torch.empty_like(h0)
        _scan_core_fwd_kernel[(BH, lanes)](a, b, h0, h, hb, final, T, L, N, block_t, block_l,
                                           _acc(b))
        ctx.save_for_backward(a, b, hb)
        ctx.chunk_size = chunk_size
        return h, final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh, dfinal):
        a, b, hb = ctx.saved_tensors
        BH, T, L, block_t, N, block_l, lanes = _scan_core_shapes(b, ctx.chunk_size)
        dh = torch.zeros_like(b) if dh is None else dh.contiguous()
        da, db = torch.empty_like(a), torch.empty_like(b)
        dh0 = torch.empty(b.shape[:2] + b.shape[3:], dtype=b.dtype, device=b.device)
        _scan_core_bwd_kernel[(BH, lanes)](
            a, b, hb, dh, dh0 if dfinal is None else dfinal.contiguous(), da, db, dh0,
            T, L, N, block_t, block_l, dfinal is not None, _acc(b))
        return da, db, dh0, None


def scan_core(coefficient, offset, state, chunk_size):
    """The torch backend's `_scan` (same arguments, same results: every h_t [B, H, T, ...] and
    the last state) on these kernels. `run(..., scan_core=)` of the torch module takes it; seqc's
    Triton backward does (docs/backends.md)."""
    return _ScanCore.apply(coefficient.expand_as(offset), offset,
                           state.to(offset.dtype).expand(offset.shape[:2] + offset.shape[3:]),
                           chunk_size)

# options of the torch module's `run` that put a recurrence core with adjoint kernels in place of
# a torch family function: seqc's Triton backward passes them (chunk_core.md)
CORES = {
    "scan_core": scan_core,
}
# modes that train on cores of their own, in place of CORES' (chunk_parallel_core.md,
# chunk_delta_parallel_core.md, chunk_dplr_parallel_core.md)
MODE_CORES = {
}

# `mode=None` here: the single-kernel `scan` form runs B x H x value blocks programs, each walking
# the whole sequence; below twice an H100's 132 SMs the `scan_parallel` runs instead
# (docs/backends.md, "Triton chunk modes"). Training follows the mode chosen: its own cores
# (MODE_CORES), else DEFAULT_MODE's adjoint core (seqc/autograd.py, `training_cores`).
PARALLEL_MODE = "scan_parallel"
PARALLEL_BELOW = 2 * 132
CHUNK_PARALLEL_BELOW = 132 // 2
CHOICE_RULE = "scan_parallel when scan would launch fewer than 2 x 132 programs, else scan"


def _choose_mode(dims, block_split):
    programs = _scan_programs(dims, block_split)
    return PARALLEL_MODE if programs < PARALLEL_BELOW else DEFAULT_MODE


def _constants(dims):
    """The kernels' host-computed constants (sub-expressions over dim sizes and consts), computed
    in fp64 on the host and passed to the kernels as Python floats."""
    return {
    }


RUNNERS = {
    "fused_recurrent": _run_fused_recurrent,
    "scan_parallel": _run_scan_parallel,
    "scan": _run_scan,
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
        raise ValueError(f"mode {mode!r} is not available for `hgrn`; "
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
        "o": torch.empty((B, T, H, dims["D"]), dtype=written, device=device),
    }
    init = None
    if initial_state is not None:
        init = {name: initial_state[name].to(compute).contiguous() for name in STATES}
    final = None
    if output_final_state:
        final = {
            "h": torch.empty((B, H, dims["D"]), dtype=compute, device=device),
        }
    RUNNERS[mode](x, p, dims, init, final, outputs, consts, options)
    return outputs, final
