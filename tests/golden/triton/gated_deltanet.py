# Emitted by seqc 0.1.0 from spec `gated_deltanet` (backend: triton).
# Do not edit: regenerate with `seqc compile gated_deltanet.seq -b triton`.
# The spec, as seqc reads it:
#     model gated_deltanet
#     dims K, V
#     input q[K]
#     input k[K]
#     input v[V]
#     input g in (-inf, 0)
#     input beta in (0, 1)
#     state S[K, V] = 0
#     const scale = K ** -0.5
#     S = exp(g) * S
#     S = S + beta * k * (v - k @ S)
#     output o = scale * q @ S
"""Triton kernels for `gated_deltanet`: see backends/triton/*.md in seqc for their math.

Kernel families in this module: fused_recurrent, chunk_delta_parallel, chunk_delta (default: chunk_delta, or
chunk_delta_parallel by _choose_mode's rule, CHOICE_RULE).
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

INPUTS = ("q", "k", "v", "g", "beta", )
PARAMS = ()
STATES = ("S", )
OUTPUTS = ("o", )
MODES = ("fused_recurrent", "chunk_delta_parallel", "chunk_delta", )
DEFAULT_MODE = "chunk_delta"
# the modes whose kernels store the outputs in the call's dtype (bf16 / fp16 calls); the others
# store fp32 (fp64 for fp64 calls), cast to the call's dtype by seqc after the call
CALL_DTYPE_OUTPUTS = frozenset({"fused_recurrent", "chunk_delta_parallel", "chunk_delta"})
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
    ptr_in_beta,
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
        in_g = tl.load(ptr_in_g + ((i_b * T + t) * H + i_h) * (1) + 0, mask=True, other=0.0).to(ACC)
        in_beta = tl.load(ptr_in_beta + ((i_b * T + t) * H + i_h) * (1) + 0, mask=True, other=0.0).to(ACC)
        st_S = (tl.exp(in_g) * st_S)
        st_S = (st_S + ((in_beta * in_k)[:, None] * (in_v - tl.sum(tl.where(mask_K[:, None], (in_k[:, None] * st_S), 0.0), axis=0))[None, :]))
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
        x["beta"],
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
def chunk_delta_parallel_prepare_kernel(
    ptr_in_q,
    ptr_in_k,
    ptr_in_v,
    ptr_in_g,
    ptr_in_beta,
    ptr_init_S, ptr_final_S,
    ptr_out_o,
    ptr_h, ptr_w, ptr_u, ptr_kg, ptr_decay, ptr_vn, T, H, NT,
    c0: tl.float64,
    dim_K: tl.constexpr, BLOCK_K: tl.constexpr,
    dim_V: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, NS: tl.constexpr, NSTEP: tl.constexpr,
    PRECISION: tl.constexpr,
    HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    """The per-chunk kernel (chunk_delta_parallel.md, 1): one program per (chunk, batch x head)
    forms the UT system of its chunk on NS sub-chunks of BLOCK_T = 16 steps (accumulated over
    key blocks), inverts it (forward substitution on the diagonal blocks, then block merging),
    and stores w, u, the keys decayed to the chunk end and the chunk's decay."""
    i_t = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_t = tl.arange(0, BLOCK_T)
    last_T = o_t == BLOCK_T - 1
    strict = o_t[:, None] > o_t[None, :]
    eye = tl.where(o_t[:, None] == o_t[None, :], 1.0, 0.0)
    # betas (and a scalar decay's gates), per sub-chunk
    o_R = i_t * (NS * BLOCK_T) + 0 * BLOCK_T + o_t
    mask_R = o_R < NSTEP * T
    o_T, mask_T = o_R, mask_R
    raw_g = tl.load(ptr_in_g + (i_b * T * H + i_h) * (1) + (o_T * (H * 1)), mask=(mask_T), other=0.0)
    raw_beta = tl.load(ptr_in_beta + (i_b * T * H + i_h) * (1) + (o_T * (H * 1)), mask=(mask_T), other=0.0)
    in_g = raw_g.to(ACC)
    in_beta = raw_beta.to(ACC)
    b0 = tl.where((mask_T), in_beta, 0.0)
    reset0 = (tl.where((mask_T), in_g, 0.0)) == float("-inf")
    G0 = tl.cumsum(tl.where(reset0, 0.0, (tl.where((mask_T), in_g, 0.0)) * 1.4426950408889634), axis=0)
    R0 = tl.cumsum(reset0.to(ACC), axis=0)
    Gc = tl.sum(tl.where(last_T, G0, 0.0), axis=0)
    Rc = tl.sum(tl.where(last_T, R0, 0.0), axis=0)
    A00 = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
    k0 = tl.zeros([BLOCK_T, BLOCK_K], dtype=DOT)
    if NS > 1:
        o_R = i_t * (NS * BLOCK_T) + 1 * BLOCK_T + o_t
        mask_R = o_R < NSTEP * T
        o_T, mask_T = o_R, mask_R
        raw_g = tl.load(ptr_in_g + (i_b * T * H + i_h) * (1) + (o_T * (H * 1)), mask=(mask_T), other=0.0)
        raw_beta = tl.load(ptr_in_beta + (i_b * T * H + i_h) * (1) + (o_T * (H * 1)), mask=(mask_T), other=0.0)
        in_g = raw_g.to(ACC)
        in_beta = raw_beta.to(ACC)
        b1 = tl.where((mask_T), in_beta, 0.0)
        n1, rn1 = Gc, Rc
        reset1 = (tl.where((mask_T), in_g, 0.0)) == float("-inf")
        G1 = n1 + tl.cumsum(tl.where(reset1, 0.0, (tl.where((mask_T), in_g, 0.0)) * 1.4426950408889634), axis=0)
        R1 = rn1 + tl.cumsum(reset1.to(ACC), axis=0)
        Gc = tl.sum(tl.where(last_T, G1, 0.0), axis=0)
        Rc = tl.sum(tl.where(last_T, R1, 0.0), axis=0)
        A10 = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
        A11 = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
        k1 = tl.zeros([BLOCK_T, BLOCK_K], dtype=DOT)
    if NS > 2:
        o_R = i_t * (NS * BLOCK_T) + 2 * BLOCK_T + o_t
        mask_R = o_R < NSTEP * T
        o_T, mask_T = o_R, mask_R
        raw_g = tl.load(ptr_in_g + (i_b * T * H + i_h) * (1) + (o_T * (H * 1)), mask=(mask_T), other=0.0)
        raw_beta = tl.load(ptr_in_beta + (i_b * T * H + i_h) * (1) + (o_T * (H * 1)), mask=(mask_T), other=0.0)
        in_g = raw_g.to(ACC)
        in_beta = raw_beta.to(ACC)
        b2 = tl.where((mask_T), in_beta, 0.0)
        n2, rn2 = Gc, Rc
        reset2 = (tl.where((mask_T), in_g, 0.0)) == float("-inf")
        G2 = n2 + tl.cumsum(tl.where(reset2, 0.0, (tl.where((mask_T), in_g, 0.0)) * 1.4426950408889634), axis=0)
        R2 = rn2 + tl.cumsum(reset2.to(ACC), axis=0)
        Gc = tl.sum(tl.where(last_T, G2, 0.0), axis=0)
        Rc = tl.sum(tl.where(last_T, R2, 0.0), axis=0)
        A20 = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
        A21 = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
        A22 = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
        k2 = tl.zeros([BLOCK_T, BLOCK_K], dtype=DOT)
    if NS > 3:
        o_R = i_t * (NS * BLOCK_T) + 3 * BLOCK_T + o_t
        mask_R = o_R < NSTEP * T
        o_T, mask_T = o_R, mask_R
        raw_g = tl.load(ptr_in_g + (i_b * T * H + i_h) * (1) + (o_T * (H * 1)), mask=(mask_T), other=0.0)
        raw_beta = tl.load(ptr_in_beta + (i_b * T * H + i_h) * (1) + (o_T * (H * 1)), mask=(mask_T), other=0.0)
        in_g = raw_g.to(ACC)
        in_beta = raw_beta.to(ACC)
        b3 = tl.where((mask_T), in_beta, 0.0)
        n3, rn3 = Gc, Rc
        reset3 = (tl.where((mask_T), in_g, 0.0)) == float("-inf")
        G3 = n3 + tl.cumsum(tl.where(reset3, 0.0, (tl.where((mask_T), in_g, 0.0)) * 1.4426950408889634), axis=0)
        R3 = rn3 + tl.cumsum(reset3.to(ACC), axis=0)
        Gc = tl.sum(tl.where(last_T, G3, 0.0), axis=0)
        Rc = tl.sum(tl.where(last_T, R3, 0.0), axis=0)
        A30 = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
        A31 = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
        A32 = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
        A33 = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
        k3 = tl.zeros([BLOCK_T, BLOCK_K], dtype=DOT)
    Glast, Rlast = Gc, Rc
    # A = beta k w^T decayed (erase keys against write keys), strictly lower, block by block,
    # summed over key blocks
    for i_k in range(0, tl.cdiv(dim_K, BLOCK_K)):
        o_K = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_K = o_K < dim_K
        o_R = i_t * (NS * BLOCK_T) + 0 * BLOCK_T + o_t
        mask_R = o_R < NSTEP * T
        o_T, mask_T = o_R, mask_R
        raw_k = tl.load(ptr_in_k + (i_b * T * H + i_h) * (dim_K) + (o_T[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
        k0 = raw_k.to(DOT)
        if NS > 1:
            o_R = i_t * (NS * BLOCK_T) + 1 * BLOCK_T + o_t
            mask_R = o_R < NSTEP * T
            o_T, mask_T = o_R, mask_R
            raw_k = tl.load(ptr_in_k + (i_b * T * H + i_h) * (dim_K) + (o_T[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
            k1 = raw_k.to(DOT)
        if NS > 2:
            o_R = i_t * (NS * BLOCK_T) + 2 * BLOCK_T + o_t
            mask_R = o_R < NSTEP * T
            o_T, mask_T = o_R, mask_R
            raw_k = tl.load(ptr_in_k + (i_b * T * H + i_h) * (dim_K) + (o_T[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
            k2 = raw_k.to(DOT)
        if NS > 3:
            o_R = i_t * (NS * BLOCK_T) + 3 * BLOCK_T + o_t
            mask_R = o_R < NSTEP * T
            o_T, mask_T = o_R, mask_R
            raw_k = tl.load(ptr_in_k + (i_b * T * H + i_h) * (dim_K) + (o_T[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
            k3 = raw_k.to(DOT)
        A00 += tl.dot(k0, tl.trans(k0), input_precision=PRECISION)
        if NS > 1:
            A10 += tl.dot(k1, tl.trans(k0), input_precision=PRECISION)
            A11 += tl.dot(k1, tl.trans(k1), input_precision=PRECISION)
        if NS > 2:
            A20 += tl.dot(k2, tl.trans(k0), input_precision=PRECISION)
            A21 += tl.dot(k2, tl.trans(k1), input_precision=PRECISION)
            A22 += tl.dot(k2, tl.trans(k2), input_precision=PRECISION)
        if NS > 3:
            A30 += tl.dot(k3, tl.trans(k0), input_precision=PRECISION)
            A31 += tl.dot(k3, tl.trans(k1), input_precision=PRECISION)
            A32 += tl.dot(k3, tl.trans(k2), input_precision=PRECISION)
            A33 += tl.dot(k3, tl.trans(k3), input_precision=PRECISION)
    # T = (I + A)^-1: the diagonal blocks by forward substitution, row by row, then the blocks
    # below them by block substitution, T_cj = -T_cc sum_m A_cm T_mj
    A00 = A00 * b0[:, None] * tl.exp2(tl.where(strict & (R0[:, None] == R0[None, :]), G0[:, None] - G0[None, :], float("-inf")))
    T00 = -A00
    for i in range(2, BLOCK_T):
        row = tl.sum(tl.where((o_t == i)[:, None], -A00, 0.0), axis=0)
        row = row + tl.sum(row[:, None] * T00, axis=0)
        T00 = tl.where((o_t == i)[:, None], row[None, :], T00)
    T00 = T00 + eye
    Td00 = T00.to(DOT)
    if NS > 1:
        A10 = A10 * b1[:, None] * tl.exp2(tl.where((R1[:, None] == R0[None, :]), G1[:, None] - G0[None, :], float("-inf")))
        A11 = A11 * b1[:, None] * tl.exp2(tl.where(strict & (R1[:, None] == R1[None, :]), G1[:, None] - G1[None, :], float("-inf")))
        T11 = -A11
        for i in range(2, BLOCK_T):
            row = tl.sum(tl.where((o_t == i)[:, None], -A11, 0.0), axis=0)
            row = row + tl.sum(row[:, None] * T11, axis=0)
            T11 = tl.where((o_t == i)[:, None], row[None, :], T11)
        T11 = T11 + eye
        T10 = -tl.dot(T11, tl.dot(A10, T00, input_precision=PRECISION), input_precision=PRECISION)
        Td10 = T10.to(DOT)
        Td11 = T11.to(DOT)
    if NS > 2:
        A20 = A20 * b2[:, None] * tl.exp2(tl.where((R2[:, None] == R0[None, :]), G2[:, None] - G0[None, :], float("-inf")))
        A21 = A21 * b2[:, None] * tl.exp2(tl.where((R2[:, None] == R1[None, :]), G2[:, None] - G1[None, :], float("-inf")))
        A22 = A22 * b2[:, None] * tl.exp2(tl.where(strict & (R2[:, None] == R2[None, :]), G2[:, None] - G2[None, :], float("-inf")))
        T22 = -A22
        for i in range(2, BLOCK_T):
            row = tl.sum(tl.where((o_t == i)[:, None], -A22, 0.0), axis=0)
            row = row + tl.sum(row[:, None] * T22, axis=0)
            T22 = tl.where((o_t == i)[:, None], row[None, :], T22)
        T22 = T22 + eye
        T21 = -tl.dot(T22, tl.dot(A21, T11, input_precision=PRECISION), input_precision=PRECISION)
        T20 = -tl.dot(T22, tl.dot(A20, T00, input_precision=PRECISION) + tl.dot(A21, T10, input_precision=PRECISION), input_precision=PRECISION)
        Td20 = T20.to(DOT)
        Td21 = T21.to(DOT)
        Td22 = T22.to(DOT)
    if NS > 3:
        A30 = A30 * b3[:, None] * tl.exp2(tl.where((R3[:, None] == R0[None, :]), G3[:, None] - G0[None, :], float("-inf")))
        A31 = A31 * b3[:, None] * tl.exp2(tl.where((R3[:, None] == R1[None, :]), G3[:, None] - G1[None, :], float("-inf")))
        A32 = A32 * b3[:, None] * tl.exp2(tl.where((R3[:, None] == R2[None, :]), G3[:, None] - G2[None, :], float("-inf")))
        A33 = A33 * b3[:, None] * tl.exp2(tl.where(strict & (R3[:, None] == R3[None, :]), G3[:, None] - G3[None, :], float("-inf")))
        T33 = -A33
        for i in range(2, BLOCK_T):
            row = tl.sum(tl.where((o_t == i)[:, None], -A33, 0.0), axis=0)
            row = row + tl.sum(row[:, None] * T33, axis=0)
            T33 = tl.where((o_t == i)[:, None], row[None, :], T33)
        T33 = T33 + eye
        T32 = -tl.dot(T33, tl.dot(A32, T22, input_precision=PRECISION), input_precision=PRECISION)
        T31 = -tl.dot(T33, tl.dot(A31, T11, input_precision=PRECISION) + tl.dot(A32, T21, input_precision=PRECISION), input_precision=PRECISION)
        T30 = -tl.dot(T33, tl.dot(A30, T00, input_precision=PRECISION) + tl.dot(A31, T10, input_precision=PRECISION) + tl.dot(A32, T20, input_precision=PRECISION), input_precision=PRECISION)
        Td30 = T30.to(DOT)
        Td31 = T31.to(DOT)
        Td32 = T32.to(DOT)
        Td33 = T33.to(DOT)
    # per key block: w = T (beta 2^G0 k) and the keys decayed to the chunk end (2^Gend)
    for i_k in range(0, tl.cdiv(dim_K, BLOCK_K)):
        o_K = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_K = o_K < dim_K
        if BLOCK_K < dim_K:     # else one key block: the keys the first loop loaded
            o_R = i_t * (NS * BLOCK_T) + 0 * BLOCK_T + o_t
            mask_R = o_R < NSTEP * T
            o_T, mask_T = o_R, mask_R
            raw_k = tl.load(ptr_in_k + (i_b * T * H + i_h) * (dim_K) + (o_T[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
            k0 = raw_k.to(DOT)
            if NS > 1:
                o_R = i_t * (NS * BLOCK_T) + 1 * BLOCK_T + o_t
                mask_R = o_R < NSTEP * T
                o_T, mask_T = o_R, mask_R
                raw_k = tl.load(ptr_in_k + (i_b * T * H + i_h) * (dim_K) + (o_T[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
                k1 = raw_k.to(DOT)
            if NS > 2:
                o_R = i_t * (NS * BLOCK_T) + 2 * BLOCK_T + o_t
                mask_R = o_R < NSTEP * T
                o_T, mask_T = o_R, mask_R
                raw_k = tl.load(ptr_in_k + (i_b * T * H + i_h) * (dim_K) + (o_T[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
                k2 = raw_k.to(DOT)
            if NS > 3:
                o_R = i_t * (NS * BLOCK_T) + 3 * BLOCK_T + o_t
                mask_R = o_R < NSTEP * T
                o_T, mask_T = o_R, mask_R
                raw_k = tl.load(ptr_in_k + (i_b * T * H + i_h) * (dim_K) + (o_T[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
                k3 = raw_k.to(DOT)
        o_R = i_t * (NS * BLOCK_T) + 0 * BLOCK_T + o_t
        mask_R = o_R < NSTEP * T
        o_T, mask_T = o_R, mask_R
        kb0 = (k0.to(ACC) * (b0 * tl.exp2(tl.where(R0 == 0.0, G0, float("-inf"))))[:, None]).to(DOT)
        w0 = tl.dot(Td00, kb0, input_precision=PRECISION)
        tl.store(ptr_w + (i_bh * (NSTEP * T) + o_R)[:, None] * dim_K + o_K[None, :], w0, mask=mask_R[:, None] & mask_K[None, :])
        if NS > 1:
            o_R = i_t * (NS * BLOCK_T) + 1 * BLOCK_T + o_t
            mask_R = o_R < NSTEP * T
            o_T, mask_T = o_R, mask_R
            kb1 = (k1.to(ACC) * (b1 * tl.exp2(tl.where(R1 == 0.0, G1, float("-inf"))))[:, None]).to(DOT)
            w1 = tl.dot(Td10, kb0, input_precision=PRECISION) + tl.dot(Td11, kb1, input_precision=PRECISION)
            tl.store(ptr_w + (i_bh * (NSTEP * T) + o_R)[:, None] * dim_K + o_K[None, :], w1, mask=mask_R[:, None] & mask_K[None, :])
        if NS > 2:
            o_R = i_t * (NS * BLOCK_T) + 2 * BLOCK_T + o_t
            mask_R = o_R < NSTEP * T
            o_T, mask_T = o_R, mask_R
            kb2 = (k2.to(ACC) * (b2 * tl.exp2(tl.where(R2 == 0.0, G2, float("-inf"))))[:, None]).to(DOT)
            w2 = tl.dot(Td20, kb0, input_precision=PRECISION) + tl.dot(Td21, kb1, input_precision=PRECISION) + tl.dot(Td22, kb2, input_precision=PRECISION)
            tl.store(ptr_w + (i_bh * (NSTEP * T) + o_R)[:, None] * dim_K + o_K[None, :], w2, mask=mask_R[:, None] & mask_K[None, :])
        if NS > 3:
            o_R = i_t * (NS * BLOCK_T) + 3 * BLOCK_T + o_t
            mask_R = o_R < NSTEP * T
            o_T, mask_T = o_R, mask_R
            kb3 = (k3.to(ACC) * (b3 * tl.exp2(tl.where(R3 == 0.0, G3, float("-inf"))))[:, None]).to(DOT)
            w3 = tl.dot(Td30, kb0, input_precision=PRECISION) + tl.dot(Td31, kb1, input_precision=PRECISION) + tl.dot(Td32, kb2, input_precision=PRECISION) + tl.dot(Td33, kb3, input_precision=PRECISION)
            tl.store(ptr_w + (i_bh * (NSTEP * T) + o_R)[:, None] * dim_K + o_K[None, :], w3, mask=mask_R[:, None] & mask_K[None, :])
    # per value block: u = T (beta v)
    for i_v in range(0, tl.cdiv(dim_V, BLOCK_V)):
        o_V = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
        mask_V = o_V < dim_V
        o_R = i_t * (NS * BLOCK_T) + 0 * BLOCK_T + o_t
        mask_R = o_R < NSTEP * T
        o_T, mask_T = o_R, mask_R
        raw_v = tl.load(ptr_in_v + (i_b * T * H + i_h) * (dim_V) + (o_T[:, None] * (H * dim_V) + o_V[None, :]), mask=(mask_T[:, None] & mask_V[None, :]), other=0.0)
        in_v = raw_v.to(ACC)
        vb0 = (b0[:, None] * tl.where((mask_T[:, None] & mask_V[None, :]), in_v, 0.0)).to(DOT)
        u0 = tl.dot(Td00, vb0, input_precision=PRECISION)
        tl.store(ptr_u + (i_bh * (NSTEP * T) + o_R)[:, None] * dim_V + o_V[None, :], u0, mask=mask_R[:, None] & mask_V[None, :])
        if NS > 1:
            o_R = i_t * (NS * BLOCK_T) + 1 * BLOCK_T + o_t
            mask_R = o_R < NSTEP * T
            o_T, mask_T = o_R, mask_R
            raw_v = tl.load(ptr_in_v + (i_b * T * H + i_h) * (dim_V) + (o_T[:, None] * (H * dim_V) + o_V[None, :]), mask=(mask_T[:, None] & mask_V[None, :]), other=0.0)
            in_v = raw_v.to(ACC)
            vb1 = (b1[:, None] * tl.where((mask_T[:, None] & mask_V[None, :]), in_v, 0.0)).to(DOT)
            u1 = tl.dot(Td10, vb0, input_precision=PRECISION) + tl.dot(Td11, vb1, input_precision=PRECISION)
            tl.store(ptr_u + (i_bh * (NSTEP * T) + o_R)[:, None] * dim_V + o_V[None, :], u1, mask=mask_R[:, None] & mask_V[None, :])
        if NS > 2:
            o_R = i_t * (NS * BLOCK_T) + 2 * BLOCK_T + o_t
            mask_R = o_R < NSTEP * T
            o_T, mask_T = o_R, mask_R
            raw_v = tl.load(ptr_in_v + (i_b * T * H + i_h) * (dim_V) + (o_T[:, None] * (H * dim_V) + o_V[None, :]), mask=(mask_T[:, None] & mask_V[None, :]), other=0.0)
            in_v = raw_v.to(ACC)
            vb2 = (b2[:, None] * tl.where((mask_T[:, None] & mask_V[None, :]), in_v, 0.0)).to(DOT)
            u2 = tl.dot(Td20, vb0, input_precision=PRECISION) + tl.dot(Td21, vb1, input_precision=PRECISION) + tl.dot(Td22, vb2, input_precision=PRECISION)
            tl.store(ptr_u + (i_bh * (NSTEP * T) + o_R)[:, None] * dim_V + o_V[None, :], u2, mask=mask_R[:, None] & mask_V[None, :])
        if NS > 3:
            o_R = i_t * (NS * BLOCK_T) + 3 * BLOCK_T + o_t
            mask_R = o_R < NSTEP * T
            o_T, mask_T = o_R, mask_R
            raw_v = tl.load(ptr_in_v + (i_b * T * H + i_h) * (dim_V) + (o_T[:, None] * (H * dim_V) + o_V[None, :]), mask=(mask_T[:, None] & mask_V[None, :]), other=0.0)
            in_v = raw_v.to(ACC)
            vb3 = (b3[:, None] * tl.where((mask_T[:, None] & mask_V[None, :]), in_v, 0.0)).to(DOT)
            u3 = tl.dot(Td30, vb0, input_precision=PRECISION) + tl.dot(Td31, vb1, input_precision=PRECISION) + tl.dot(Td32, vb2, input_precision=PRECISION) + tl.dot(Td33, vb3, input_precision=PRECISION)
            tl.store(ptr_u + (i_bh * (NSTEP * T) + o_R)[:, None] * dim_V + o_V[None, :], u3, mask=mask_R[:, None] & mask_V[None, :])


@triton.jit
def chunk_delta_parallel_state_kernel(
    ptr_in_q,
    ptr_in_k,
    ptr_in_v,
    ptr_in_g,
    ptr_in_beta,
    ptr_init_S, ptr_final_S,
    ptr_out_o,
    ptr_h, ptr_w, ptr_u, ptr_kg, ptr_decay, ptr_vn, T, H, NT,
    c0: tl.float64,
    dim_K: tl.constexpr, BLOCK_K: tl.constexpr,
    dim_V: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, NS: tl.constexpr, NSTEP: tl.constexpr,
    PRECISION: tl.constexpr,
    HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    """The state pass (chunk_delta_parallel.md, 2): one program per (value block, batch x head)
    walks the chunks, storing the state entering each in ptr_h [B, H, NT, K, V] and the new
    values v_new = u - w h in ptr_vn."""
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
    for i_t in range(0, NT):
        o_R = i_t * BLOCK_T + o_t
        mask_R = o_R < NSTEP * T
        tl.store(ptr_h + (i_bh * NT + i_t) * (dim_K * dim_V) + o_K[:, None] * dim_V + o_V[None, :], st_S.to(ptr_h.dtype.element_ty), mask=mask_K[:, None] & mask_V[None, :])
        w = tl.load(ptr_w + (i_bh * (NSTEP * T) + o_R)[:, None] * dim_K + o_K[None, :], mask=mask_R[:, None] & mask_K[None, :], other=0.0)
        v_new = tl.load(ptr_u + (i_bh * (NSTEP * T) + o_R)[:, None] * dim_V + o_V[None, :], mask=mask_R[:, None] & mask_V[None, :], other=0.0).to(ACC) - tl.dot(w, st_S.to(DOT), input_precision=PRECISION)
        v_new = v_new.to(DOT)
        tl.store(ptr_vn + (i_bh * (NSTEP * T) + o_R)[:, None] * dim_V + o_V[None, :], v_new, mask=mask_R[:, None] & mask_V[None, :])
        # the chunk's keys decayed to its end, kg = k 2^Gend, and its gate Glast0
        o_T, mask_T = o_R, mask_R
        raw_k = tl.load(ptr_in_k + (i_b * T * H + i_h) * (dim_K) + (o_T[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
        raw_g = tl.load(ptr_in_g + (i_b * T * H + i_h) * (1) + (o_T * (H * 1)), mask=(mask_T), other=0.0)
        in_g = raw_g.to(ACC)
        d_S = tl.where((mask_T), in_g, 0.0)
        reset_S = d_S == float("-inf")
        G_S = tl.cumsum(tl.where(reset_S, 0.0, d_S * 1.4426950408889634), axis=0)
        R_S = tl.cumsum(reset_S.to(ACC), axis=0)
        Glast_S = tl.sum(tl.where(last_T, G_S, 0.0), axis=0)
        Rlast_S = tl.sum(tl.where(last_T, R_S, 0.0), axis=0)
        G0_S = tl.where(R_S == 0.0, G_S, float("-inf"))
        Gend_S = tl.where(R_S == Rlast_S, Glast_S - G_S, float("-inf"))
        Glast0_S = tl.where(Rlast_S == 0.0, Glast_S, float("-inf"))
        kg = (raw_k.to(DOT).to(ACC) * tl.exp2(Gend_S)[:, None]).to(DOT)
        st_S = st_S * tl.exp2(Glast0_S) + tl.dot(tl.trans(kg), v_new, input_precision=PRECISION)
    if STORE_FINAL:
        tl.store(ptr_final_S + (i_b * H + i_h) * (dim_K * dim_V) + (o_K[:, None] * (dim_V) + o_V[None, :]), st_S, mask=(mask_K[:, None] & mask_V[None, :]))


@triton.jit
def chunk_delta_parallel_output_kernel(
    ptr_in_q,
    ptr_in_k,
    ptr_in_v,
    ptr_in_g,
    ptr_in_beta,
    ptr_init_S, ptr_final_S,
    ptr_out_o,
    ptr_h, ptr_w, ptr_u, ptr_kg, ptr_decay, ptr_vn, T, H, NT,
    c0: tl.float64,
    dim_K: tl.constexpr, BLOCK_K: tl.constexpr,
    dim_V: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, NS: tl.constexpr, NSTEP: tl.constexpr,
    PRECISION: tl.constexpr,
    HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    """The output kernel (chunk_delta_parallel.md, 3): one program per (value block, chunk, batch
    x head); the inter-chunk read of the stored state and the intra-chunk matrix against the new
    values, over key blocks."""
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
    raw_g = tl.load(ptr_in_g + (i_b * T * H + i_h) * (1) + (o_T * (H * 1)), mask=(mask_T), other=0.0)
    in_g = raw_g.to(ACC)
    d_S = tl.where((mask_T), in_g, 0.0)
    reset_S = d_S == float("-inf")
    G_S = tl.cumsum(tl.where(reset_S, 0.0, d_S * 1.4426950408889634), axis=0)
    R_S = tl.cumsum(reset_S.to(ACC), axis=0)
    Glast_S = tl.sum(tl.where(last_T, G_S, 0.0), axis=0)
    Rlast_S = tl.sum(tl.where(last_T, R_S, 0.0), axis=0)
    G0_S = tl.where(R_S == 0.0, G_S, float("-inf"))
    Gend_S = tl.where(R_S == Rlast_S, Glast_S - G_S, float("-inf"))
    Glast0_S = tl.where(Rlast_S == 0.0, Glast_S, float("-inf"))
    r__read0_S = tl.zeros([BLOCK_T, BLOCK_V], dtype=ACC)
    A__read0_S_0 = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
    for i_k in range(0, tl.cdiv(dim_K, BLOCK_K)):
        o_K = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_K = o_K < dim_K
        raw_q = tl.load(ptr_in_q + (i_b * T * H + i_h) * (dim_K) + (o_T[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
        raw_k = tl.load(ptr_in_k + (i_b * T * H + i_h) * (dim_K) + (o_T[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
        in_q = raw_q.to(ACC)
        h_S = tl.load(ptr_h + (i_bh * NT + i_t) * (dim_K * dim_V) + o_K[:, None] * dim_V + o_V[None, :], mask=mask_K[:, None] & mask_V[None, :], other=0.0).to(DOT)
        q__read0_S = (tl.where((mask_T[:, None] & mask_K[None, :]), (tl.full((), c0, ACC) * in_q), 0.0)).to(DOT)
        r__read0_S += tl.dot(q__read0_S, h_S, input_precision=PRECISION)
        A__read0_S_0 += tl.dot(q__read0_S, tl.trans(raw_k.to(DOT)), input_precision=PRECISION)
    vn0_S = tl.load(ptr_vn + (i_bh * (NSTEP * T) + o_T * NSTEP + 0)[:, None] * dim_V + o_V[None, :], mask=mask_T[:, None] & mask_V[None, :], other=0.0)
    r__read0_S = r__read0_S * tl.exp2(G0_S)[:, None]
    A__read0_S_0 = A__read0_S_0 * tl.exp2(tl.where((o_t[:, None] >= o_t[None, :]) & (R_S[:, None] == R_S[None, :]), G_S[:, None] - G_S[None, :], float("-inf")))
    r__read0_S += tl.dot(A__read0_S_0.to(DOT), vn0_S, input_precision=PRECISION)
    read__read0_S = r__read0_S
    tl.store(ptr_out_o + (i_b * T * H + i_h) * (dim_V) + (o_T[:, None] * (H * dim_V) + o_V[None, :]), read__read0_S, mask=(mask_T[:, None] & mask_V[None, :]))


def _chunk_delta_parallel_blocks(dims, block_split):
    """The blocks of the per-chunk kernel, the state pass and the output kernel at `dims`
    (chunk_delta_parallel.md, "Blocks"): key blocks of at most 128 in the per-chunk
    kernel, 64 in the output kernel, all of K in the state pass (w h sums over
    it); value blocks of at most 64 lanes in the per-chunk kernel, 64 in the state pass (32 when
    K > 128), 128 (64 when K > 128) in the output kernel."""
    blocks = {
        "BLOCK_K": max(16, _pow2(dims["K"])),
        "BLOCK_V": max(16, _pow2(dims["V"])),
    }
    blocks["BLOCK_V"] = min(blocks["BLOCK_V"], max(16, _pow2(block_split)))
    output_blocks, state_blocks, prepare_blocks = dict(blocks), dict(blocks), dict(blocks)
    # the state pass holds [K, BLOCK_V] in fp32
    state_blocks["BLOCK_V"] = min(blocks["BLOCK_V"], 64 if blocks["BLOCK_K"] <= 128 else 32)
    # 128 value lanes beside a key dim of 256 spilled 8-24 B on sm_80
    output_blocks["BLOCK_V"] = min(blocks["BLOCK_V"], 128 if blocks["BLOCK_K"] <= 128 else 64)
    prepare_blocks["BLOCK_V"] = min(blocks["BLOCK_V"], 64)
    output_blocks["BLOCK_K"] = min(blocks["BLOCK_K"], 64)
    prepare_blocks["BLOCK_K"] = min(blocks["BLOCK_K"], 128)
    return prepare_blocks, state_blocks, output_blocks


def _state_pass_programs(dims, block_split):
    """Programs of the state pass at `dims`, with the value blocks it launches: value blocks x
    batch x heads; `_choose_mode` weighs them."""
    state_blocks = _chunk_delta_parallel_blocks(dims, block_split)[1]
    return triton.cdiv(dims["V"], state_blocks["BLOCK_V"]) * dims["B"] * dims["H"]


def _run_chunk_delta_parallel(x, p, dims, init, final, outputs, consts, options):
    B, T, H = dims["B"], dims["T"], dims["H"]
    spare = _spare(outputs)
    acc = _acc(spare)
    first = next(iter(x.values()))
    sixteen = first.dtype in (torch.bfloat16, torch.float16)
    dot = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}.get(first.dtype, acc)
    dot_dtype = first.dtype if sixteen else spare.dtype
    precision = options.get("precision") or ("tf32" if dot == tl.float32 else "ieee")
    prepare_blocks, state_blocks, output_blocks = _chunk_delta_parallel_blocks(dims, options.get("block_split", 128))
    # chunks of block_t tokens, 1 delta step(s) each: 1 x block_t rows of at most 64
    block_t = min(64, max(16, _pow2(options.get("chunk_size", 64))))
    n_t = triton.cdiv(T, block_t)
    K_, V_ = dims["K"], dims["V"]
    device = spare.device
    chunk_states = torch.empty((B, H, n_t, K_, V_), dtype=_chunk_state_dtype(spare, x, options), device=device)
    w = torch.empty((B * H, 1 * T, K_), dtype=dot_dtype, device=device)
    u = torch.empty((B * H, 1 * T, V_), dtype=dot_dtype, device=device)
    v_new = torch.empty((B * H, 1 * T, V_), dtype=dot_dtype, device=device)
    kg, decay = w, spare        # not used: the state pass decays the keys itself

    def arguments(blocks, block_t, ns):
        return [
            x["q"],
            x["k"],
            x["v"],
            x["g"],
            x["beta"],
            spare if init is None else init["S"], spare if final is None else final["S"],
            outputs["o"],
            chunk_states, w, u, kg, decay, v_new, T, H, n_t,
            consts["c0"],
            dims["K"], blocks["BLOCK_K"],
            dims["V"], blocks["BLOCK_V"],
            block_t, min(16, block_t), ns, 1, precision, init is not None, final is not None, acc, dot,
        ]
    key = (tuple(sorted(dims.items())), str(first.dtype), block_t)

    def launcher(blocks, grid_of, block_t, ns):
        def build(config):
            chosen = _with_blocks(blocks, config)
            return grid_of(chosen), arguments(chosen, block_t, ns), _launch_options(config)
        return build
    configs = _chunk_delta_parallel_configs(output_blocks["BLOCK_V"], state_blocks["BLOCK_V"])
    # the per-chunk kernel holds a chunk's 1 x block_t rows (a row per token and delta step) as sub-chunks of 16
    _launch(chunk_delta_parallel_prepare_kernel, configs["prepare"],
            launcher(prepare_blocks, lambda b: (n_t, B * H), 16, 1 * block_t // 16), key)
    _launch(chunk_delta_parallel_state_kernel, configs["state"],
            launcher(state_blocks, lambda b: (triton.cdiv(V_, b["BLOCK_V"]), B * H), 1 * block_t, 1), key)
    _launch(chunk_delta_parallel_output_kernel, configs["output"],
            launcher(output_blocks, lambda b: (triton.cdiv(V_, b["BLOCK_V"]), n_t, B * H), block_t, 1), key)


def _chunk_delta_parallel_configs(block_v, state_block_v=64):
    """Each kernel's launch configurations, its fallback first (autotune: parallel_host.md):
    `block_v` the output kernel's value block, `state_block_v` the state pass's."""
    half = {"BLOCK_V": block_v // 2} if block_v >= 32 else {}
    state_half = [{"BLOCK_V": state_block_v // 2}] if state_block_v >= 32 else []
    output = [{}, {"num_warps": 8, "num_stages": 2}]
    if block_v > 64 and half:        # the list of value blocks of 64, as its last entry
        output = [{"num_warps": 8}, {"num_warps": 8, "num_stages": 1}, dict(output[0], **half)]
    elif half:
        output.append(half)
    return {
        "prepare": [{"num_warps": 8}, {"num_warps": 8, "num_stages": 2}],
        "state": [{"num_warps": 8}, {"num_warps": 8, "num_stages": 2}] + state_half,
        "output": output,
    }



@triton.jit
def chunk_delta_kernel(
    ptr_in_q,
    ptr_in_k,
    ptr_in_v,
    ptr_in_g,
    ptr_in_beta,
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
        st_S = tl.trans(tl.load(ptr_init_S + (i_b * H + i_h) * (dim_K * dim_V) + (o_K[:, None] * (dim_V) + o_V[None, :]), mask=(mask_K[:, None] & mask_V[None, :]), other=0.0).to(ACC))
    else:
        st_S = tl.full([BLOCK_V, BLOCK_K], 0.0, dtype=ACC)
    for t0 in range(0, T, BLOCK_T):
        o_T = t0 + o_t
        mask_T = o_T < T
        raw_q = tl.load(ptr_in_q + ((i_b * T + t0) * H + i_h) * (dim_K) + (o_t[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
        in_q = raw_q.to(ACC)
        raw_k = tl.load(ptr_in_k + ((i_b * T + t0) * H + i_h) * (dim_K) + (o_t[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0)
        in_k = raw_k.to(ACC)
        raw_v = tl.load(ptr_in_v + ((i_b * T + t0) * H + i_h) * (dim_V) + (o_t[:, None] * (H * dim_V) + o_V[None, :]), mask=(mask_T[:, None] & mask_V[None, :]), other=0.0)
        in_v = raw_v.to(ACC)
        raw_g = tl.load(ptr_in_g + ((i_b * T + t0) * H + i_h) * (1) + (o_t * (H * 1)), mask=(mask_T), other=0.0)
        in_g = raw_g.to(ACC)
        raw_beta = tl.load(ptr_in_beta + ((i_b * T + t0) * H + i_h) * (1) + (o_t * (H * 1)), mask=(mask_T), other=0.0)
        in_beta = raw_beta.to(ACC)
        # chunk_delta group S: UT transform by forward substitution, WY read-out and state pass (chunk_delta.md)
        k_S = tl.where((mask_T[:, None] & mask_K[None, :]), in_k, 0.0)
        b_S = tl.where((mask_T), in_beta, 0.0)
        v_S = tl.where((mask_T[:, None] & mask_V[None, :]), in_v, 0.0)
        kd_S = k_S.to(DOT)
        o_r = tl.arange(0, 1 * BLOCK_T)
        pos_S = (o_r % BLOCK_T) * 1 + o_r // BLOCK_T
        d_S = tl.where((mask_T), in_g, 0.0)
        reset_S = d_S == float("-inf")
        G_S = tl.cumsum(tl.where(reset_S, 0.0, d_S * 1.4426950408889634), axis=0)
        R_S = tl.cumsum(reset_S.to(ACC), axis=0)
        Glast_S = tl.sum(tl.where(last_T, G_S, 0.0), axis=0)
        Rlast_S = tl.sum(tl.where(last_T, R_S, 0.0), axis=0)
        G0_S = tl.where(R_S == 0.0, G_S, float("-inf"))
        Gend_S = tl.where(R_S == Rlast_S, Glast_S - G_S, float("-inf"))
        Glast0_S = tl.where(Rlast_S == 0.0, Glast_S, float("-inf"))
        Gr_S, Rr_S, G0r_S, Gendr_S = G_S, R_S, G0_S, Gend_S
        # the state pass's keys w 2^(G_C - G), formed now so the fp32 keys die before the read-out
        ke_S = (k_S * tl.exp2(Gendr_S)[:, None]).to(DOT)
        L_S = tl.dot(kd_S, tl.trans(kd_S), input_precision=PRECISION) * b_S[:, None] * tl.exp2(tl.where((pos_S[:, None] > pos_S[None, :]) & (Rr_S[:, None] == Rr_S[None, :]), Gr_S[:, None] - Gr_S[None, :], float("-inf")))
        Tm_S = tl.where(o_r[:, None] == o_r[None, :], 1.0, 0.0)
        for p in range(1, 1 * BLOCK_T):
            row = (p % 1) * BLOCK_T + p // 1
            l_S = tl.sum(tl.where((o_r == row)[:, None], L_S, 0.0), axis=0)
            Tm_S = tl.where((o_r == row)[:, None], Tm_S - tl.sum(l_S[:, None] * Tm_S, axis=0)[None, :], Tm_S)
        Td_S = Tm_S.to(DOT)
        # the state is held value dim first, S_0^T [BLOCK_V, K]: every product with it has the value
        # block, not the chunk, as its rows (chunk_delta.md, "Layout")
        sd_S = st_S.to(DOT)
        # u^T = (beta v - beta 2^G K S_0)^T T^T: the right-hand side first, so no [rows, K] product T (beta 2^G k)
        r_S = tl.trans(b_S[:, None] * v_S) - tl.dot(sd_S, tl.trans(((b_S * tl.exp2(G0r_S))[:, None] * k_S).to(DOT)), input_precision=PRECISION)
        ud_S = tl.dot(r_S.to(DOT), tl.trans(Td_S), input_precision=PRECISION).to(DOT)
        # the state pass before the read-out (which reads S_0 as sd) at 64 lanes, after it below
        # (the chain's last dot sets its mma layout: chunk_delta.md, "Layout")
        if BLOCK_V >= 64:
            st_S = st_S * tl.exp2(Glast0_S) + tl.dot(ud_S, ke_S, input_precision=PRECISION)
        q_S = tl.where((mask_T[:, None] & mask_K[None, :]), (tl.full((), c0, ACC) * in_q), 0.0)
        A_S = tl.dot(q_S.to(DOT), tl.trans(kd_S), input_precision=PRECISION) * tl.exp2(tl.where(((o_t * 1 + 0)[:, None] >= pos_S[None, :]) & (R_S[:, None] == Rr_S[None, :]), G_S[:, None] - Gr_S[None, :], float("-inf")))
        read__read0_S = tl.trans(tl.dot(sd_S, tl.trans(q_S.to(DOT)), input_precision=PRECISION) * tl.exp2(G0_S)[None, :] + tl.dot(ud_S, tl.trans(A_S.to(DOT)), input_precision=PRECISION))
        if BLOCK_V < 64:
            st_S = st_S * tl.exp2(Glast0_S) + tl.dot(ud_S, ke_S, input_precision=PRECISION)

        tl.store(ptr_out_o + ((i_b * T + t0) * H + i_h) * (dim_V) + (o_t[:, None] * (H * dim_V) + o_V[None, :]), read__read0_S, mask=(mask_T[:, None] & mask_V[None, :]))
    if STORE_FINAL:
        tl.store(ptr_final_S + (i_b * H + i_h) * (dim_K * dim_V) + (o_K[:, None] * (dim_V) + o_V[None, :]), tl.trans(st_S), mask=(mask_K[:, None] & mask_V[None, :]))


# the programs that fill the GPU (an H100's SMs): a launch of fewer reaches that share of the
# bandwidth (seqc/gpu_model.py), so narrower value blocks pay in a small launch
WIDE_VALUE_PROGRAMS = 132


def _chunk_delta_value_time(value_block, dims):
    """The memory time of a launch with this value block, up to a constant (blockwise.md,
    "Blocks"): a program reads the token's lanes without the value dim once a value block."""
    blocks = triton.cdiv(dims["V"], value_block)
    moved = blocks * (dims["K"] + dims["K"] + 1 + 1) + dims["V"] + dims["V"]
    return moved / min(1.0, dims["B"] * dims["H"] * blocks / WIDE_VALUE_PROGRAMS)


def _chunk_delta_blocks(dims, block_split):
    """The kernel's blocks at `dims` and its value blocks a batch x head (its programs: B x H
    times them; `_choose_mode` counts these). GPU-fit blocking (blockwise.md, "Blocks"): value
    blocks of at most 64 lanes (chunk_dplr: 32, 16 when a key block is wider than 64)."""
    blocks = {
        "BLOCK_K": max(16, _pow2(dims["K"])),
        "BLOCK_V": max(16, _pow2(dims["V"])),
    }
    blocks["BLOCK_V"] = min(blocks["BLOCK_V"], 64 if blocks["BLOCK_K"] <= 128 else 16, max(16, _pow2(block_split)))
    # the widest value block that fits, or a narrower one when its launch moves less per SM
    widths = [w for w in (64, 32, 16) if w <= blocks["BLOCK_V"]] or [blocks["BLOCK_V"]]
    blocks["BLOCK_V"] = min(widths, key=lambda w: _chunk_delta_value_time(w, dims))
    return blocks, triton.cdiv(dims["V"], blocks["BLOCK_V"])


def _run_chunk_delta(x, p, dims, init, final, outputs, consts, options):
    B, T, H = dims["B"], dims["T"], dims["H"]
    spare = _spare(outputs)
    acc = _acc(spare)
    # 16-bit inputs dot as they are (blockwise.md, "Dtypes"); fp32 ones in "tf32" unless asked
    dot = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}.get(next(iter(x.values())).dtype, acc)
    precision = options.get("precision") or ("tf32" if dot == tl.float32 else "ieee")
    # GPU-fit blocking (blockwise.md, "Blocks"): chunks of at most 16 steps, value blocks as
    # _chunk_delta_blocks, 8 warps, one stage
    blocks, n_split = _chunk_delta_blocks(dims, options.get("block_split", 128))
    block_t = min(max(16, _pow2(options.get("chunk_size", 64))), 16)
    chunk_delta_kernel[(n_split, B * H)](
        x["q"],
        x["k"],
        x["v"],
        x["g"],
        x["beta"],
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
    ptr_in_beta, ptr_din_beta,
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
            in_g = tl.load(ptr_in_g + ((i_b * T + t) * H + i_h) * (1) + 0, mask=True, other=0.0).to(ACC)
            in_beta = tl.load(ptr_in_beta + ((i_b * T + t) * H + i_h) * (1) + 0, mask=True, other=0.0).to(ACC)
            v0 = tl.exp(in_g)
            v1 = (v0 * st_S_0)
            st_S_1 = v1
            v2 = (in_beta * in_k)
            v3 = tl.sum(tl.where(mask_K[:, None], (in_k[:, None] * st_S_1), 0.0), axis=0)
            v4 = (in_v - v3)
            v5 = (v2[:, None] * v4[None, :])
            v6 = (st_S_1 + v5)
            st_S_2 = v6
            v7 = (tl.full((), c0, ACC) * in_q)
            v8 = tl.sum(tl.where(mask_K[:, None], (v7[:, None] * st_S_2), 0.0), axis=0)
            st_S = st_S_2
        tl.debug_barrier()      # the scratch stored above, read below by other threads
        for back_t in range(0, t1 - t0):
            t = t1 - 1 - back_t
            st_S_0 = tl.load(ptr_scratch_S + (i_prog * SEGMENT + t - t0) * (BLOCK_K * BLOCK_V) + (tl.arange(0, BLOCK_K)[:, None] * (BLOCK_V) + tl.arange(0, BLOCK_V)[None, :] * (1)))
            in_q = tl.load(ptr_in_q + ((i_b * T + t) * H + i_h) * (dim_K) + (o_K), mask=(mask_K), other=0.0).to(ACC)
            in_k = tl.load(ptr_in_k + ((i_b * T + t) * H + i_h) * (dim_K) + (o_K), mask=(mask_K), other=0.0).to(ACC)
            in_v = tl.load(ptr_in_v + ((i_b * T + t) * H + i_h) * (dim_V) + (o_V), mask=(mask_V), other=0.0).to(ACC)
            in_g = tl.load(ptr_in_g + ((i_b * T + t) * H + i_h) * (1) + 0, mask=True, other=0.0).to(ACC)
            in_beta = tl.load(ptr_in_beta + ((i_b * T + t) * H + i_h) * (1) + 0, mask=True, other=0.0).to(ACC)
            v0 = tl.exp(in_g)
            v1 = (v0 * st_S_0)
            st_S_1 = v1
            v2 = (in_beta * in_k)
            v3 = tl.sum(tl.where(mask_K[:, None], (in_k[:, None] * st_S_1), 0.0), axis=0)
            v4 = (in_v - v3)
            v5 = (v2[:, None] * v4[None, :])
            v6 = (st_S_1 + v5)
            st_S_2 = v6
            v7 = (tl.full((), c0, ACC) * in_q)
            v8 = tl.sum(tl.where(mask_K[:, None], (v7[:, None] * st_S_2), 0.0), axis=0)
            do_o = tl.load(ptr_do_o + ((i_b * T + t) * H + i_h) * (dim_V) + (o_V), mask=(mask_V), other=0.0).to(ACC)
            g0 = tl.sum(tl.where(mask_V[:, None], (do_o[:, None] * tl.permute(st_S_2, (1, 0))), 0.0), axis=0)
            g1 = (g0 * tl.full((), c0, ACC))
            din_q = g1
            g2 = tl.permute((do_o[:, None] * v7[None, :]), (1, 0))
            dst_S_2 = dst_S + g2
            dst_S_1 = dst_S_2
            g3 = tl.sum(tl.where(mask_V[None, :], (dst_S_2 * v4[None, :]), 0.0), axis=1)
            g4 = tl.sum(tl.where(mask_K, (g3 * in_k), 0.0), axis=0)
            din_beta = (g4 + tl.zeros([], dtype=ACC))
            g5 = (g3 * in_beta)
            din_k = g5
            g6 = tl.sum(tl.where(mask_K[:, None], (dst_S_2 * v2[:, None]), 0.0), axis=0)
            din_v = g6
            g7 = (-g6)
            g8 = tl.sum(tl.where(mask_V[:, None], (g7[:, None] * tl.permute(st_S_1, (1, 0))), 0.0), axis=0)
            din_k = din_k + g8
            g9 = tl.permute((g7[:, None] * in_k[None, :]), (1, 0))
            dst_S_1 = dst_S_1 + g9
            g10 = tl.sum(tl.where(mask_V, tl.sum(tl.where(mask_K[:, None], (dst_S_1 * st_S_0), 0.0), axis=0), 0.0), axis=0)
            g11 = (g10 * v0)
            din_g = (g11 + tl.zeros([], dtype=ACC))
            g12 = (dst_S_1 * v0)
            dst_S_0 = g12
            dst_S = dst_S_0
            din_g = (din_g + tl.zeros([], dtype=ACC))
            din_beta = (din_beta + tl.zeros([], dtype=ACC))
            tl.store(ptr_din_q + (((i_b * T + t) * H + i_h) * N_SPLIT + i_split) * (dim_K) + (o_K), din_q, mask=(mask_K))
            tl.store(ptr_din_k + (((i_b * T + t) * H + i_h) * N_SPLIT + i_split) * (dim_K) + (o_K), din_k, mask=(mask_K))
            tl.store(ptr_din_v + ((i_b * T + t) * H + i_h) * (dim_V) + (o_V), din_v, mask=(mask_V))
            tl.store(ptr_din_g + (((i_b * T + t) * H + i_h) * N_SPLIT + i_split) * (1) + 0, din_g, mask=True)
            tl.store(ptr_din_beta + (((i_b * T + t) * H + i_h) * N_SPLIT + i_split) * (1) + 0, din_beta, mask=True)
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
            "g": _fused_recurrent_shares(n_split, (B, T, H), (), (), split, like),
            "beta": _fused_recurrent_shares(n_split, (B, T, H), (), (), split, like),
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
            x["beta"], d_in["beta"][0],
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



# ---- the delta-rule chunk core and its adjoint (chunk_delta_core.md) ----


@triton.jit
def _delta_core_chunk(ptr_q, ptr_k, ptr_w, ptr_v, ptr_g, n, i_b, i_h, T, H, K, V,
                      BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
                      DECAY: tl.constexpr, STEPS: tl.constexpr, ACC: tl.constexpr,
                      PRECISION: tl.constexpr):
    """Chunk n of one batch x head: q, k (erase key), w (write key) [BLOCK_T, BLOCK_K], v
    [BLOCK_T, BLOCK_V] (0 past T and in padded lanes); the decays (b, c: _core_gates; for a
    scalar decay the [C, C] mask D_ij = exp(b_i - b_j), j <= i; the factors from the chunk's
    start, to its end and over it); the scores L (k_i . w_j, j < i) and P (q_i . w_j, j <= i)
    with their decays; the UT inverse A = (I + L)^-1; and where the steps live, and the
    queries and reads: one a token of STEPS steps, on its last step (0 on the others)."""
    o_t = tl.arange(0, BLOCK_T)
    o_k = tl.arange(0, BLOCK_K)
    o_v = tl.arange(0, BLOCK_V)
    rows = n * BLOCK_T + o_t
    mask_t = rows < T
    base = (i_b * T + rows) * H + i_h
    mask_tk = mask_t[:, None] & (o_k < K)[None, :]
    mask_tv = mask_t[:, None] & (o_v < V)[None, :]
    offs_tk = base[:, None] * K + o_k[None, :]
    offs_tv = base[:, None] * V + o_v[None, :]
    mask_q = mask_t & (rows % STEPS == STEPS - 1)
    base_q = (i_b * (T // STEPS) + rows // STEPS) * H + i_h
    mask_qk = mask_q[:, None] & (o_k < K)[None, :]
    mask_qv = mask_q[:, None] & (o_v < V)[None, :]
    offs_qk = base_q[:, None] * K + o_k[None, :]
    offs_qv = base_q[:, None] * V + o_v[None, :]
    q = tl.load(ptr_q + offs_qk, mask=mask_qk, other=0.0).to(ACC)
    k = tl.load(ptr_k + offs_tk, mask=mask_tk, other=0.0).to(ACC)
    w = tl.load(ptr_w + offs_tk, mask=mask_tk, other=0.0).to(ACC)
    v = tl.load(ptr_v + offs_tv, mask=mask_tv, other=0.0).to(ACC)
    b, c = _core_gates(ptr_g, offs_tk, base, mask_tk, mask_t, o_t, DECAY, BLOCK_T, BLOCK_K, ACC)
    last = (o_t == BLOCK_T - 1)[:, None]
    b_last = tl.sum(tl.where(last, b, 0.0), axis=0)
    c_last = tl.sum(tl.where(last, c, 0.0), axis=0)
    from_start = _core_gap(b, c, 0.0, 0.0)                         # exp(b_i)
    to_end = _core_gap(b_last[None, :], c_last[None, :], b, c)     # exp(b_last - b_j)
    whole = _core_gap(b_last, c_last, 0.0, 0.0)                    # exp(b_last)
    if DECAY == 2:      # key-wise: the scores column by column, D unused
        D = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
        L = _core_keywise_scores(k, w, b, c, o_t, BLOCK_T)
        P = _core_keywise_scores(q, w, b, c, o_t, BLOCK_T)
    else:
        D = _core_decay(b, c, o_t)
        L = tl.dot(k, tl.trans(w), input_precision=PRECISION) * D
        P = tl.dot(q, tl.trans(w), input_precision=PRECISION) * D
    L = tl.where(o_t[:, None] > o_t[None, :], L, 0.0)
    A = _core_unit_lower_inverse(L, o_t, BLOCK_T)
    return q, k, w, v, b, c, from_start, to_end, whole, D, L, P, A, base, mask_t, offs_tk, \
        mask_tk, offs_tv, mask_tv, offs_qk, mask_qk, offs_qv, mask_qv


@triton.jit
def _delta_core_fwd_kernel(
    ptr_q, ptr_k, ptr_w, ptr_v, ptr_g, ptr_s0, ptr_o, ptr_h, ptr_final,
    T, H, N, K, V,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    DECAY: tl.constexpr, STEPS: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    """o_t = S_t^T q_t, S_t = exp(g_t) S_{t-1} + w_t (v_t - exp(g_t) S_{t-1}^T k_t)^T, chunk by
    chunk (delta = U - W S_0); stores the state entering every chunk (h[n]) and the last state.
    One program per batch x head."""
    i_bh = tl.program_id(0).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    offs_kv, mask_kv = _core_state_block(K, V, BLOCK_K, BLOCK_V)
    S = tl.load(ptr_s0 + i_bh * K * V + offs_kv, mask=mask_kv, other=0.0).to(ACC)
    for n in range(0, N):
        tl.store(ptr_h + (i_bh * N + n) * K * V + offs_kv, S, mask=mask_kv)
        q, k, w, v, b, c, from_start, to_end, whole, D, L, P, A, base, mask_t, offs_tk, \
            mask_tk, offs_tv, mask_tv, offs_qk, mask_qk, offs_qv, mask_qv = _delta_core_chunk(
                ptr_q, ptr_k, ptr_w, ptr_v, ptr_g, n, i_b, i_h, T, H, K, V, BLOCK_T, BLOCK_K,
                BLOCK_V, DECAY, STEPS, ACC, PRECISION)
        delta = tl.dot(A, v - tl.dot(k * from_start, S, input_precision=PRECISION),
                       input_precision=PRECISION)
        o = tl.dot(q * from_start, S, input_precision=PRECISION) \
            + tl.dot(P, delta, input_precision=PRECISION)
        tl.store(ptr_o + offs_qv, o, mask=mask_qv)
        S = S * whole[:, None] + tl.dot(tl.trans(w * to_end), delta, input_precision=PRECISION)
    tl.store(ptr_final + i_bh * K * V + offs_kv, S, mask=mask_kv)


@triton.jit
def _delta_core_bwd_kernel(
    ptr_q, ptr_k, ptr_w, ptr_v, ptr_g, ptr_h, ptr_do, ptr_dfinal,
    ptr_dq, ptr_dk, ptr_dw, ptr_dv, ptr_dg, ptr_ds0,
    T, H, N, K, V,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    DECAY: tl.constexpr, STEPS: tl.constexpr, HAS_DFINAL: tl.constexpr, ACC: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The adjoint, chunks in reverse: dS (the gradient of the state leaving the chunk) carried
    back in registers, the chunk's entering state h[n] loaded, the UT factors and everything
    inside recomputed (chunk_delta_core.md)."""
    i_bh = tl.program_id(0).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_t = tl.arange(0, BLOCK_T)
    offs_kv, mask_kv = _core_state_block(K, V, BLOCK_K, BLOCK_V)
    if HAS_DFINAL:
        dS = tl.load(ptr_dfinal + i_bh * K * V + offs_kv, mask=mask_kv, other=0.0).to(ACC)
    else:
        dS = tl.zeros([BLOCK_K, BLOCK_V], dtype=ACC)
    for i_n in range(0, N):
        n = N - 1 - i_n
        q, k, w, v, b, c, from_start, to_end, whole, D, L, P, A, base, mask_t, offs_tk, \
            mask_tk, offs_tv, mask_tv, offs_qk, mask_qk, offs_qv, mask_qv = _delta_core_chunk(
                ptr_q, ptr_k, ptr_w, ptr_v, ptr_g, n, i_b, i_h, T, H, K, V, BLOCK_T, BLOCK_K,
                BLOCK_V, DECAY, STEPS, ACC, PRECISION)
        S0 = tl.load(ptr_h + (i_bh * N + n) * K * V + offs_kv, mask=mask_kv, other=0.0).to(ACC)
        do = tl.load(ptr_do + offs_qv, mask=mask_qv, other=0.0).to(ACC)
        kg = k * from_start                                            # diag(Gamma) K
        W = tl.dot(A, kg, input_precision=PRECISION)
        delta = tl.dot(A, v, input_precision=PRECISION) - tl.dot(W, S0, input_precision=PRECISION)
        w_end = w * to_end
        # the reads o = (q Gamma) S0 + P delta and the leaving state whole S0 + w_end^T delta
        dP = tl.where(o_t[:, None] >= o_t[None, :],
                      tl.dot(do, tl.trans(delta), input_precision=PRECISION), 0.0)
        ddelta = tl.dot(tl.trans(P), do, input_precision=PRECISION) \
            + tl.dot(w_end, dS, input_precision=PRECISION)
        dq_state = tl.dot(do, tl.trans(S0), input_precision=PRECISION) * from_start
        dw_end = tl.dot(delta, tl.trans(dS), input_precision=PRECISION) * to_end
        # delta = A v - W S0, W = A kg, A = (I + L)^-1
        dW = -tl.dot(ddelta, tl.trans(S0), input_precision=PRECISION)
        dv = tl.dot(tl.trans(A), ddelta, input_precision=PRECISION)
        dkg = tl.dot(tl.trans(A), dW, input_precision=PRECISION)
        dA = tl.dot(ddelta, tl.trans(v), input_precision=PRECISION) \
            + tl.dot(dW, tl.trans(kg), input_precision=PRECISION)
        dL = tl.where(o_t[:, None] > o_t[None, :],
                      -tl.dot(tl.trans(A), tl.dot(dA, tl.trans(A), input_precision=PRECISION),
                              input_precision=PRECISION), 0.0)
        # the scores P (q . w) and L (k . w) with their decays, back to their keys
        if DECAY == 2:
            _, dq_P, dw_P = _core_keywise_adjoint(q, w, b, c, dP, o_t, BLOCK_T, BLOCK_K)
            _, dk_L, dw_L = _core_keywise_adjoint(k, w, b, c, dL, o_t, BLOCK_T, BLOCK_K)
        else:
            dq_P = tl.dot(dP * D, w, input_precision=PRECISION)
            dw_P = tl.dot(tl.trans(dP * D), q, input_precision=PRECISION)
            dk_L = tl.dot(dL * D, w, input_precision=PRECISION)
            dw_L = tl.dot(tl.trans(dL * D), k, input_precision=PRECISION)
        tl.store(ptr_dq + offs_qk, dq_state + dq_P, mask=mask_qk)
        tl.store(ptr_dk + offs_tk, dkg * from_start + dk_L, mask=mask_tk)
        tl.store(ptr_dw + offs_tk, dw_P + dw_L + dw_end, mask=mask_tk)
        tl.store(ptr_dv + offs_tv, dv, mask=mask_tv)
        if DECAY > 0:
            # dL/db_i per key lane: every decay factor times its gradient, + at its later point,
            # - at its earlier (the q dq - k dk of the chunk core); dg = its reverse cumsum
            db = q * (dq_state + dq_P) + k * dk_L + kg * dkg - w * (dw_P + dw_L + dw_end)
            d_last = tl.sum(dS * S0, axis=1) * whole + tl.sum(w * dw_end, axis=0)
            db += tl.where((o_t == BLOCK_T - 1)[:, None], d_last[None, :], 0.0)
            dg = tl.sum(db, axis=0)[None, :] - tl.cumsum(db, axis=0) + db
            if DECAY == 2:
                tl.store(ptr_dg + offs_tk, dg, mask=mask_tk)
            else:
                tl.store(ptr_dg + base, tl.sum(tl.where(mask_tk, dg, 0.0), axis=1), mask=mask_t)
        dS = dS * whole[:, None] + tl.dot(tl.trans(q * from_start), do, input_precision=PRECISION) \
            - tl.dot(tl.trans(W), ddelta, input_precision=PRECISION)
    tl.store(ptr_ds0 + i_bh * K * V + offs_kv, dS, mask=mask_kv)


class _DeltaCore(torch.autograd.Function):
    """(o, S_T) of the delta-rule recurrence; the forward keeps the chunk-boundary states only."""

    @staticmethod
    def forward(ctx, q, k, w, v, g, s0, chunk_size, steps):
        q, k, w, v, s0 = (x.contiguous() for x in (q, k, w, v, s0))
        g = None if g is None else g.contiguous()
        B, T, H, K, V, block_t, N, block_k, block_v = _core_shapes(k, v, chunk_size)
        o = torch.empty((B, T // steps, H, V), dtype=v.dtype, device=v.device)
        h = torch.empty((B, H, N, K, V), dtype=q.dtype, device=q.device)
        final = torch.empty((B, H, K, V), dtype=q.dtype, device=q.device)
        decay = 0 if g is None else (2 if g.dim() == 4 else 1)
        _delta_core_fwd_kernel[(B * H,)](
            q, k, w, v, q if g is None else g, s0, o, h, final, T, H, N, K, V,
            block_t, block_k, block_v, decay, steps, _acc(q), "ieee")
        ctx.save_for_backward(q, k, w, v, g, h)
        ctx.chunk_size = chunk_size
        ctx.steps = steps
        ctx.decay = decay
        return o, final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, dfinal):
        q, k, w, v, g, h = ctx.saved_tensors
        B, T, H, K, V, block_t, N, block_k, block_v = _core_shapes(k, v, ctx.chunk_size)
        do = q.new_zeros(q.shape[:3] + v.shape[-1:]) if do is None else do.contiguous()
        dq, dk, dw, dv = (torch.empty_like(x) for x in (q, k, w, v))
        dg = None if g is None else torch.empty_like(g)
        ds0 = torch.empty((B, H, K, V), dtype=q.dtype, device=q.device)
        _delta_core_bwd_kernel[(B * H,)](
            q, k, w, v, q if g is None else g, h, do,
            ds0 if dfinal is None else dfinal.contiguous(),
            dq, dk, dw, dv, dq if dg is None else dg, ds0, T, H, N, K, V,
            block_t, block_k, block_v, ctx.decay, ctx.steps, dfinal is not None, _acc(q), "ieee")
        return dq, dk, dw, dv, dg, ds0, None, None


def chunk_delta_core(queries, keys, write_keys, values, log_decay, state, chunk_size,
                     read_dtype=None, query_scale=None, write_scale=None):
    """The torch backend's `_chunk_delta` (same arguments, same results: reads [B, H, T, V] and
    the last state) on these kernels: one query, one or more delta steps a token (a product of
    delta factors: the delta rule over the steps, `_delta_steps`), no, a scalar or a key-wise
    decay. `run(..., chunk_delta_core=)` of the torch module takes it; seqc's Triton backward
    does (docs/backends.md). `read_dtype`: the reads cast to it (the kernels store fp32);
    `query_scale`: q's constant factor, applied to the widened q; `write_scale`: each write
    key's per-token factor [B, T, H], applied to the widened write key."""
    (q,) = queries
    keys, write_keys, values = ([*_widened(state, *xs)] for xs in (keys, write_keys, values))
    if write_scale is not None:
        write_keys = [s[..., None] * w for s, w in zip(_widened(state, *write_scale),
                                                        write_keys)]
    q, log_decay = _widened(state, q, log_decay)
    q = q if query_scale is None else query_scale * q
    if len(keys) == 1:
        (k,), (w,), (v,) = keys, write_keys, values
        o, final = _DeltaCore.apply(q, k, w, v, log_decay, state.to(q.dtype), chunk_size, 1)
    else:
        k, w, v, g = _delta_steps(keys, write_keys, values, log_decay)
        o, final = _DeltaCore.apply(q, k, w, v, g, state.to(q.dtype), chunk_size, len(keys))
    return [o.transpose(1, 2).to(read_dtype or o.dtype)], final


def _delta_steps(keys, write_keys, values, log_decay):
    """J delta steps a token as the delta rule over T * J steps (chunk_delta_core.md): token t's
    steps at t J .. t J + J - 1, its decay on the first (its query, read on the last, stays one a
    token: the kernels' STEPS)."""
    def steps(per_step):                    # J tensors [B, T, H, ...] -> [B, T * J, H, ...]
        return torch.stack(per_step, 2).flatten(1, 2)

    others = len(keys) - 1
    g = None if log_decay is None else steps([log_decay] + [torch.zeros_like(log_decay)] * others)
    return steps(keys), steps(write_keys), steps(values), g



# ---- the parallel delta-rule core and its adjoint, for training (chunk_delta_parallel_core.md) ----


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
def _cdp_factors(ptr_g, base, mask_t, o_k, mask_k, o_t, DECAY: tl.constexpr,
                 BLOCK_T: tl.constexpr, K, ACC: tl.constexpr):
    """The chunk's decay factors on a key block, shaped to scale [BLOCK_T, BLOCK_K] rows:
    start = 2^G0 (from the chunk's start), end = 2^Gend (to its end), and whole = 2^Glast0
    (over it: a scalar, or [BLOCK_K] key-wise); all 1 without a decay. Also the log decays d
    and their cumulation G, R (_cp_chunk_gates: a key-wise gate's scores take them, so that
    its [BLOCK_T, BLOCK_K] gates are loaded once a block)."""
    if DECAY == 0:
        start = tl.full([BLOCK_T, 1], 1.0, ACC)
        end = start
        whole = 1.0
        d, G, R = start, start, start
    else:
        d, G, R, G0, Gend, Glast0 = _cp_chunk_gates(ptr_g, base, mask_t, o_k, mask_k, o_t, DECAY,
                                                    BLOCK_T, K, ACC)
        if DECAY == 2:
            start, end = tl.exp2(G0), tl.exp2(Gend)
        else:
            start, end = tl.exp2(G0)[:, None], tl.exp2(Gend)[:, None]
        whole = tl.exp2(Glast0)
    return start, end, whole, d, G, R


@triton.jit
def _cdp_whole(ptr_whole, i_bh, n, NT, o_k, mask_k, K, DECAY: tl.constexpr):
    """Chunk n's decay 2^Glast0 (stored by the per-chunk kernel) shaped to scale a
    [BLOCK_K, BLOCK_V] state: per key row when key-wise, 1 without a decay."""
    if DECAY == 2:
        whole = tl.load(ptr_whole + (i_bh * NT + n) * K + o_k, mask=mask_k, other=0.0)[:, None]
    elif DECAY == 1:
        whole = tl.load(ptr_whole + i_bh * NT + n)
    else:
        whole = 1.0
    return whole


@triton.jit
def _cdp_scores(ptr_x, ptr_w, ptr_g, ptr_sx, ptr_sw, base, mask_t, o_t, T, K,
                BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, BLOCK_K: tl.constexpr,
                DECAY: tl.constexpr,
                SCALED: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
                PRECISION: tl.constexpr, ptr_beta, ptr_r, WRITE: tl.constexpr):
    """A[t, s] = sum_d x_td w_sd 2^(G_td - G_sd) for s <= t (0 across a reset) over all key
    blocks: x the erase keys (L, the caller keeps s < t) or the queries (P). A scalar gate
    is applied after the key loop, a key-wise one per block (keywise_scores.md). On the way,
    per key block, SCALED 1 stores x 2^G0 to ptr_sx, 2 stores w 2^Gend to ptr_sw, 3 both (in
    DOT: the state passes' operands, so that they form no gate). WRITE (a write scale,
    chunk_delta_parallel_core.md): w = beta r formed (rounded to DOT once) and stored to ptr_w,
    r = x (2) or ptr_r's (1)."""
    A = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
    for i_k in range(0, tl.cdiv(K, BLOCK_K)):
        o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = o_k < K
        offs_tk, mask_tk = base[:, None] * K + o_k[None, :], mask_t[:, None] & mask_k[None, :]
        x = _cp_load(ptr_x, base, mask_t, o_k, mask_k, K)
        if WRITE == 0:
            w = _cp_load(ptr_w, base, mask_t, o_k, mask_k, K)
        else:
            r = x if WRITE == 2 else _cp_load(ptr_r, base, mask_t, o_k, mask_k, K)
            beta = tl.load(ptr_beta + base, mask=mask_t, other=0.0).to(ACC)
            w = (beta[:, None] * r.to(ACC)).to(DOT)
            tl.store(ptr_w + offs_tk, w, mask=mask_tk)
        if SCALED > 0 or DECAY == 2:
            start, end, whole, d, G, R = _cdp_factors(ptr_g, base, mask_t, o_k, mask_k, o_t,
                                                      DECAY, BLOCK_T, K, ACC)
        if SCALED % 2 == 1:
            tl.store(ptr_sx + offs_tk, x.to(ACC) * start, mask=mask_tk)
        if SCALED >= 2:
            tl.store(ptr_sw + offs_tk, w.to(ACC) * end, mask=mask_tk)
        if DECAY == 2:
            A += _cp_keywise_scores(x.to(ACC), w.to(ACC), G, R, o_t, BLOCK_T, SUB_T, DOT,
                                    PRECISION)
        else:
            A += tl.dot(x, tl.trans(w), input_precision=PRECISION)
    return _cdp_causal(A, ptr_g, base, mask_t, o_t, K, BLOCK_T, DECAY, ACC)


@triton.jit
def _cdp_causal(A, ptr_g, base, mask_t, o_t, K, BLOCK_T: tl.constexpr, DECAY: tl.constexpr,
                ACC: tl.constexpr):
    """A [t, s] kept for s <= t, times 2^(G_t - G_s) (0 across a reset) for a scalar gate (a
    key-wise one is already in A)."""
    if DECAY == 1:
        d, G, R, G0, Gend, Glast0 = _cp_chunk_gates(ptr_g, base, mask_t, o_t, mask_t, o_t,
                                                    DECAY, BLOCK_T, K, ACC)
        A = A * _cp_causal_decay(G, R, o_t)
    else:
        A = tl.where(o_t[:, None] >= o_t[None, :], A, 0.0)
    return A


@triton.jit
def _cdp_score_grads(dx, dw, dA, x, w, G, R, ptr_g, base, mask_t, o_t, K,
                     BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, DECAY: tl.constexpr,
                     ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr):
    """dx_t += sum_{s<=t} dA_ts w_s 2^(G_t - G_s), dw_s += sum_{t>=s} dA_ts x_t 2^(G_t - G_s)
    on one key block, dA [t, s] causal (the gradient of _cdp_scores); a key-wise gate's G, R
    as _cdp_factors gives them for the block (a scalar gate's are loaded here)."""
    if DECAY == 2:
        dx, dw = _cp_keywise_score_grads(dx, dw, dA, x.to(ACC), w.to(ACC), G, R, o_t, BLOCK_T,
                                         SUB_T, DOT, PRECISION)
    else:
        dM = _cdp_causal(dA, ptr_g, base, mask_t, o_t, K, BLOCK_T, DECAY, ACC).to(DOT)
        dx += tl.dot(dM, w.to(DOT), input_precision=PRECISION)
        dw += tl.dot(tl.trans(dM), x.to(DOT), input_precision=PRECISION)
    return dx, dw


@triton.jit
def _cdp_prepare_kernel(
    ptr_k, ptr_w, ptr_v, ptr_g, ptr_tm, ptr_W, ptr_u, ptr_we, ptr_whole, ptr_beta, ptr_r,
    WRITE_SCALE: tl.constexpr, T, H, NT, K, V,
    BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, SCORES_K: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_V: tl.constexpr, DECAY: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The WY factors of one (chunk, batch x head) (chunk_delta_parallel_core.md, forward 1):
    L = the decayed k w^T strictly below the diagonal, Tm = (I + L)^-1 (stored, in DOT),
    W = Tm (2^G0 k) and U = Tm v, and the state passes' 2^Glast0 (fp32) and, for a key-wise
    gate, w 2^Gend (in DOT; a scalar gate's the state passes form from its [BLOCK_T] gates).
    WRITE_SCALE (chunk_delta_parallel_core.md, "A write scale"): w = beta r formed in the
    scores' key loop and stored (r = k at 2, ptr_r's at 1) for the kernels after."""
    n, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t, base, mask_t = _cp_rows(n, i_b, i_h, T, H, BLOCK_T)
    L = _cdp_scores(ptr_k, ptr_w, ptr_g, ptr_we, ptr_we, base, mask_t, o_t, T, K, BLOCK_T,
                    SUB_T, SCORES_K, DECAY, 2 if DECAY == 2 else 0, ACC, DOT, PRECISION,
                    ptr_beta, ptr_r, WRITE_SCALE)
    L = tl.where(o_t[:, None] > o_t[None, :], L, 0.0)
    Tm = _core_unit_lower_inverse(L, o_t, BLOCK_T)
    tl.store(ptr_tm + base[:, None] * BLOCK_T + o_t[None, :], Tm, mask=mask_t[:, None])
    Tm = Tm.to(DOT)
    for i_k in range(0, tl.cdiv(K, BLOCK_K)):
        o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = o_k < K
        k = _cp_load(ptr_k, base, mask_t, o_k, mask_k, K)
        start, end, whole, d, G, R = _cdp_factors(ptr_g, base, mask_t, o_k, mask_k, o_t, DECAY,
                                                  BLOCK_T, K, ACC)
        W = tl.dot(Tm, (k.to(ACC) * start).to(DOT), input_precision=PRECISION)
        tl.store(ptr_W + base[:, None] * K + o_k[None, :], W,
                 mask=mask_t[:, None] & mask_k[None, :])
        if DECAY == 2:
            tl.store(ptr_whole + (i_bh * NT + n) * K + o_k, whole, mask=mask_k)
        elif DECAY == 1:
            tl.store(ptr_whole + i_bh * NT + n, whole)
    for i_v in range(0, tl.cdiv(V, BLOCK_V)):
        o_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
        mask_v = o_v < V
        v = _cp_load(ptr_v, base, mask_t, o_v, mask_v, V)
        U = tl.dot(Tm, v, input_precision=PRECISION)
        tl.store(ptr_u + base[:, None] * V + o_v[None, :], U,
                 mask=mask_t[:, None] & mask_v[None, :])


@triton.jit
def _cdp_row_scaled(x, ptr_g, base, mask_t, o_t, K, BLOCK_T: tl.constexpr, DECAY: tl.constexpr,
                    END: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr):
    """A [BLOCK_T, BLOCK_K] block of rows x (in DOT) times a scalar gate's 2^Gend (END) or
    2^G0, rounded to DOT once (as the per-chunk kernels store them for a key-wise gate); x as
    it is without a decay. Not for key-wise gates (the state passes form none of those)."""
    if DECAY == 1:
        d, G, R, G0, Gend, Glast0 = _cp_chunk_gates(ptr_g, base, mask_t, o_t, mask_t, o_t,
                                                    DECAY, BLOCK_T, K, ACC)
        x = (x.to(ACC) * tl.exp2(Gend if END else G0)[:, None]).to(DOT)
    return x


@triton.jit
def _cdp_state_block(ptr_start, HAS_START: tl.constexpr, i_v, i_bh, K, V, BLOCK_K: tl.constexpr,
                     BLOCK_V: tl.constexpr, ACC: tl.constexpr):
    """A state pass's lanes (all of K, value block i_v), its [K, V] offsets and mask, and the
    state it starts from (ptr_start's, else 0)."""
    o_k = tl.arange(0, BLOCK_K)
    o_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_k, mask_v = o_k < K, o_v < V
    offs_kv, mask_kv = o_k[:, None] * V + o_v[None, :], mask_k[:, None] & mask_v[None, :]
    if HAS_START:
        S = tl.load(ptr_start + i_bh * K * V + offs_kv, mask=mask_kv, other=0.0).to(ACC)
    else:
        S = tl.zeros([BLOCK_K, BLOCK_V], dtype=ACC)
    return o_k, o_v, mask_k, mask_v, offs_kv, mask_kv, S


@triton.jit
def _cdp_state_kernel(
    ptr_W, ptr_we, ptr_g, ptr_whole, ptr_start, ptr_states, ptr_vn, ptr_last, T, H, NT, K, V,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, DECAY: tl.constexpr,
    HAS_START: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """The forward state pass (forward 2): one program per (value block, batch x head) holds all
    of K and walks the chunks: h[n] stored (the fp32 state rounded to ptr_states' dtype: the dot
    dtype of a 16-bit call), the new values vn = U - W h[n] stored over U (DOT), h[n + 1] =
    2^Glast0 h[n] + (w 2^Gend)^T vn (2^Glast0 stored by the per-chunk kernel, and w 2^Gend for a
    key-wise gate: ptr_we; else ptr_we is w and a scalar gate's 2^Gend is formed here from its
    [BLOCK_T] log decays); then the last state."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_k, o_v, mask_k, mask_v, offs_kv, mask_kv, S = _cdp_state_block(
        ptr_start, HAS_START, i_v, i_bh, K, V, BLOCK_K, BLOCK_V, ACC)
    for n in range(0, NT):
        tl.store(ptr_states + (i_bh * NT + n) * K * V + offs_kv, S, mask=mask_kv)
        o_t, base, mask_t = _cp_rows(n, i_b, i_h, T, H, BLOCK_T)
        W = _cp_load(ptr_W, base, mask_t, o_k, mask_k, K)
        vn = _cp_load(ptr_vn, base, mask_t, o_v, mask_v, V).to(ACC) \
            - tl.dot(W, S.to(DOT), input_precision=PRECISION)
        vn = vn.to(DOT)
        tl.store(ptr_vn + base[:, None] * V + o_v[None, :], vn,
                 mask=mask_t[:, None] & mask_v[None, :])
        we = _cdp_row_scaled(_cp_load(ptr_we, base, mask_t, o_k, mask_k, K), ptr_g, base,
                             mask_t, o_t, K, BLOCK_T, DECAY, True, ACC, DOT)
        S = S * _cdp_whole(ptr_whole, i_bh, n, NT, o_k, mask_k, K, DECAY) \
            + tl.dot(tl.trans(we), vn, input_precision=PRECISION)
    tl.store(ptr_last + i_bh * K * V + offs_kv, S, mask=mask_kv)


@triton.jit
def _cdp_bwd_local_kernel(
    ptr_q, ptr_w, ptr_g, ptr_do, ptr_dvl, ptr_qg, ptr_we, T, H, K, V,
    BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, SCORES_K: tl.constexpr, BLOCK_V: tl.constexpr,
    DECAY: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """The new values' gradient through the chunk's own reads (adjoint b), one program per
    (chunk, batch x head), over value blocks: dvn_s = sum_{t >= s} P_ts do_t (fp32); and the
    adjoint state pass's decayed operands (stored, in DOT), so that it forms no gate: 2^G0 q
    for a gate, and w 2^Gend for a scalar one (a key-wise gate's the forward stored)."""
    n, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t, base, mask_t = _cp_rows(n, i_b, i_h, T, H, BLOCK_T)
    P = _cdp_scores(ptr_q, ptr_w, ptr_g, ptr_qg, ptr_we, base, mask_t, o_t, T, K, BLOCK_T,
                    SUB_T, SCORES_K, DECAY, 3 if DECAY == 1 else DECAY // 2, ACC, DOT,
                    PRECISION, ptr_q, ptr_q, 0)
    P = tl.trans(P.to(DOT))
    for i_v in range(0, tl.cdiv(V, BLOCK_V)):
        o_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
        mask_v = o_v < V
        do = _cp_load(ptr_do, base, mask_t, o_v, mask_v, V)
        tl.store(ptr_dvl + base[:, None] * V + o_v[None, :],
                 tl.dot(P, do, input_precision=PRECISION),
                 mask=mask_t[:, None] & mask_v[None, :])


@triton.jit
def _cdp_bwd_state_kernel(
    ptr_qg, ptr_we, ptr_W, ptr_g, ptr_whole, ptr_do, ptr_dvl, ptr_dvn, ptr_dfinal, ptr_dh,
    ptr_ds0, T, H, NT, K, V,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, DECAY: tl.constexpr,
    HAS_DFINAL: tl.constexpr, LOCAL: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The adjoint state pass (adjoint c): one program per (value block, batch x head) holds all
    of K, chunks in reverse from dS_T (fp32): dh[n] (the gradient of the state leaving chunk n)
    stored (in ptr_dh's dtype: the dot dtype of a 16-bit call), the new values' whole gradient
    dvn = dvn_local + (w 2^Gend) dh[n] stored (DOT), dh[n - 1] = 2^Glast0 dh[n] + (2^G0 q)^T do
    - W^T dvn; the last is dS_0. The decayed keys and queries stored by the per-chunk and local
    kernels (no gate is formed here), but with LOCAL: ptr_qg, ptr_we are q and w, scaled here by
    a scalar gate's 2^G0, 2^Gend from the chunk's [BLOCK_T] log decays. dvn_local stored by the
    local kernel, or, with LOCAL (no or a scalar gate), formed here: P^T do with P = (q w^T) M
    (adjoint b fused: all of K is here). The dots accumulate in place (tl.dot's acc: no [K,
    BLOCK_V] temporaries)."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_k, o_v, mask_k, mask_v, offs_kv, mask_kv, dS = _cdp_state_block(
        ptr_dfinal, HAS_DFINAL, i_v, i_bh, K, V, BLOCK_K, BLOCK_V, ACC)
    for i_n in range(0, NT):
        n = NT - 1 - i_n
        tl.store(ptr_dh + (i_bh * NT + n) * K * V + offs_kv, dS, mask=mask_kv)
        o_t, base, mask_t = _cp_rows(n, i_b, i_h, T, H, BLOCK_T)
        mask_tv = mask_t[:, None] & mask_v[None, :]
        we = _cp_load(ptr_we, base, mask_t, o_k, mask_k, K)
        qg = _cp_load(ptr_qg, base, mask_t, o_k, mask_k, K)
        do = _cp_load(ptr_do, base, mask_t, o_v, mask_v, V)
        if LOCAL and DECAY == 1:    # the chunk's C log decays, cumulated once for the factors
            d, G, R, G0, Gend, Glast0 = _cp_chunk_gates(ptr_g, base, mask_t, o_t, mask_t, o_t,
                                                        DECAY, BLOCK_T, K, ACC)
        if LOCAL:           # P^T formed as it is used (no transposed copy of P)
            PT = tl.dot(we, tl.trans(qg), input_precision=PRECISION)
            keep = o_t[:, None] <= o_t[None, :]
            if DECAY == 1:
                keep = keep & (R[:, None] == R[None, :])
                PT = PT * tl.exp2(tl.where(keep, G[None, :] - G[:, None], float("-inf")))
            else:
                PT = tl.where(keep, PT, 0.0)
            dvn = tl.dot(PT.to(DOT), do, input_precision=PRECISION)
        else:
            dvn = _cp_load(ptr_dvl, base, mask_t, o_v, mask_v, V).to(ACC)
        if LOCAL and DECAY == 1:
            we = (we.to(ACC) * tl.exp2(Gend)[:, None]).to(DOT)
        dvn = tl.dot(we, dS.to(DOT), dvn, input_precision=PRECISION)
        tl.store(ptr_dvn + base[:, None] * V + o_v[None, :], dvn.to(DOT), mask=mask_tv)
        dvn = (-dvn).to(DOT)    # negated before rounding (the same value; the interpreter
        # negates a 16-bit block wrongly)
        if LOCAL and DECAY == 1:
            qg = (qg.to(ACC) * tl.exp2(G0)[:, None]).to(DOT)
        dS = tl.dot(tl.trans(qg), do, dS * _cdp_whole(ptr_whole, i_bh, n, NT, o_k, mask_k, K,
                                                      DECAY), input_precision=PRECISION)
        W = _cp_load(ptr_W, base, mask_t, o_k, mask_k, K)
        dS = tl.dot(tl.trans(W), dvn, dS, input_precision=PRECISION)
    tl.store(ptr_ds0 + i_bh * K * V + offs_kv, dS, mask=mask_kv)


@triton.jit
def _cdp_bwd_dqw_kernel(
    ptr_q, ptr_w, ptr_g, ptr_h, ptr_dh, ptr_do, ptr_vn, ptr_dvn, ptr_dq, ptr_dw, ptr_dW,
    ptr_db, T, H, NT, K, V,
    BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    DECAY: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """dq, the write keys' gradient through the reads and the leaving state, dW (adjoint d),
    one program per (key block, chunk, batch x head), over value blocks:
    dq = 2^G0 (do h^T) + (dP M) w, dw = 2^Gend (vn dh^T) + (dP M)^T q, dW = -dvn h^T with
    dP = do vn^T (causal), and the gates' share q dq - w dw (+ the leaving state's, last row)."""
    i_k, n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t, base, mask_t = _cp_rows(n, i_b, i_h, T, H, BLOCK_T)
    o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = o_k < K
    mask_tk = mask_t[:, None] & mask_k[None, :]
    offs_tk = base[:, None] * K + o_k[None, :]
    dP = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
    dq = tl.zeros([BLOCK_T, BLOCK_K], dtype=ACC)
    dw = tl.zeros([BLOCK_T, BLOCK_K], dtype=ACC)
    dW = tl.zeros([BLOCK_T, BLOCK_K], dtype=ACC)
    hdh = tl.zeros([BLOCK_K], dtype=ACC)               # sum_v h[n] * dh[n], per key lane
    for i_v in range(0, tl.cdiv(V, BLOCK_V)):
        o_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
        mask_v = o_v < V
        offs = (i_bh * NT + n) * K * V + o_k[:, None] * V + o_v[None, :]
        mask_kv = mask_k[:, None] & mask_v[None, :]
        h = tl.load(ptr_h + offs, mask=mask_kv, other=0.0)
        dh = tl.load(ptr_dh + offs, mask=mask_kv, other=0.0)
        do = _cp_load(ptr_do, base, mask_t, o_v, mask_v, V)
        vn = _cp_load(ptr_vn, base, mask_t, o_v, mask_v, V)
        dvn = _cp_load(ptr_dvn, base, mask_t, o_v, mask_v, V)
        dP += tl.dot(do, tl.trans(vn), input_precision=PRECISION)
        dq += tl.dot(do, tl.trans(h.to(DOT)), input_precision=PRECISION)
        dw += tl.dot(vn, tl.trans(dh.to(DOT)), input_precision=PRECISION)
        dW -= tl.dot(dvn, tl.trans(h.to(DOT)), input_precision=PRECISION)
        if DECAY > 0:
            hdh += tl.sum(h.to(ACC) * dh.to(ACC), axis=1)
    tl.store(ptr_dW + offs_tk, dW, mask=mask_tk)
    _cdp_dqw_finish(dq, dw, dP, hdh, ptr_q, ptr_w, ptr_g, ptr_dq, ptr_dw, ptr_db, base, mask_t,
                    o_t, o_k, mask_k, i_k * (tl.num_programs(2) * T), n, T, K, BLOCK_T, SUB_T,
                    DECAY, ACC, DOT, PRECISION)


@triton.jit
def _cdp_bwd_dqw_chunk_kernel(
    ptr_q, ptr_w, ptr_g, ptr_tm, ptr_h, ptr_dh, ptr_do, ptr_vn, ptr_dvn, ptr_dq, ptr_dw, ptr_dk,
    ptr_dv, ptr_db, T, H, NT, K, V,
    BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    DECAY: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """_cdp_bwd_dqw_kernel's products with all of V in one block (BLOCK_V >= V), one program
    per (chunk, batch x head) over key blocks: do, vn and dvn read once a chunk (not once per
    key block), dP = do vn^T formed once; and in place of dW, the WY backward's first half:
    dv = Tm^T dvn (stored) and d(2^G0 k) = Tm^T dW = -dv h^T, stored into dk as 2^G0 d(2^G0 k)
    (chunk_delta_parallel_core_keys.md), so that the WY backward reads neither Tm nor dW."""
    n, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t, base, mask_t = _cp_rows(n, i_b, i_h, T, H, BLOCK_T)
    o_v = tl.arange(0, BLOCK_V)
    mask_v = o_v < V
    do = _cp_load(ptr_do, base, mask_t, o_v, mask_v, V)
    vn = _cp_load(ptr_vn, base, mask_t, o_v, mask_v, V)
    dP = tl.dot(do, tl.trans(vn), input_precision=PRECISION)
    dv = tl.dot(tl.trans(tl.load(ptr_tm + base[:, None] * BLOCK_T + o_t[None, :],
                                 mask=mask_t[:, None], other=0.0)),
                _cp_load(ptr_dvn, base, mask_t, o_v, mask_v, V), input_precision=PRECISION)
    tl.store(ptr_dv + base[:, None] * V + o_v[None, :], dv,
             mask=mask_t[:, None] & mask_v[None, :])
    tl.debug_barrier()      # dv read back in a load's layout (other threads stored it)
    dv = (-_cp_load(ptr_dv, base, mask_t, o_v, mask_v, V)).to(DOT)     # negated before
    # rounding (the interpreter negates a 16-bit block wrongly)
    for i_k in range(0, tl.cdiv(K, BLOCK_K)):
        o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = o_k < K
        offs = (i_bh * NT + n) * K * V + o_k[:, None] * V + o_v[None, :]
        mask_kv = mask_k[:, None] & mask_v[None, :]
        h = tl.load(ptr_h + offs, mask=mask_kv, other=0.0)
        dh = tl.load(ptr_dh + offs, mask=mask_kv, other=0.0)
        tl.store(ptr_dk + base[:, None] * K + o_k[None, :],
                 tl.dot(dv, tl.trans(h.to(DOT)), input_precision=PRECISION),
                 mask=mask_t[:, None] & mask_k[None, :])
        _cdp_dqw_finish(tl.dot(do, tl.trans(h.to(DOT)), input_precision=PRECISION),
                        tl.dot(vn, tl.trans(dh.to(DOT)), input_precision=PRECISION), dP,
                        tl.sum(h.to(ACC) * dh.to(ACC), axis=1),
                        ptr_q, ptr_w, ptr_g, ptr_dq, ptr_dw, ptr_db, base, mask_t, o_t, o_k,
                        mask_k, i_k * (tl.num_programs(1) * T), n, T, K, BLOCK_T, SUB_T, DECAY,
                        ACC, DOT, PRECISION)


@triton.jit
def _cdp_dqw_finish(dq, dw, dP, hdh, ptr_q, ptr_w, ptr_g, ptr_dq, ptr_dw, ptr_db, base, mask_t,
                    o_t, o_k, mask_k, share, n, T, K, BLOCK_T: tl.constexpr,
                    SUB_T: tl.constexpr, DECAY: tl.constexpr, ACC: tl.constexpr,
                    DOT: tl.constexpr, PRECISION: tl.constexpr):
    """The dq/dw kernels' key block from dq = do h^T, dw = vn dh^T, dP = do vn^T and
    hdh = sum_v h dh: the factors, the score gradients, dq and dw stored, and the gates' share
    q dq - w dw (+ the leaving state's on the last row; a scalar gate's summed over the block's
    lanes, stored at offset `share`)."""
    mask_tk = mask_t[:, None] & mask_k[None, :]
    offs_tk = base[:, None] * K + o_k[None, :]
    q = _cp_load(ptr_q, base, mask_t, o_k, mask_k, K)
    w = _cp_load(ptr_w, base, mask_t, o_k, mask_k, K)
    start, end, whole, d, G, R = _cdp_factors(ptr_g, base, mask_t, o_k, mask_k, o_t, DECAY,
                                              BLOCK_T, K, ACC)
    dq = dq * start
    dw = dw * end
    # dL/db of the chunk's last step through the state it leaves (dw holds its share so far)
    leaving = whole * hdh + tl.sum(w.to(ACC) * dw, axis=0)
    dq, dw = _cdp_score_grads(dq, dw, dP, q, w, G, R, ptr_g, base, mask_t, o_t, K, BLOCK_T,
                              SUB_T, DECAY, ACC, DOT, PRECISION)
    tl.store(ptr_dq + offs_tk, dq, mask=mask_tk)
    tl.store(ptr_dw + offs_tk, dw, mask=mask_tk)
    if DECAY > 0:
        db = q.to(ACC) * dq - w.to(ACC) * dw
        # on the chunk's last step before T (the rows past T are not stored; the reverse
        # cumsum takes it to every step of the chunk)
        last = tl.minimum(T - n * BLOCK_T, BLOCK_T) - 1
        db += tl.where((o_t == last)[:, None], leaving[None, :], 0.0)
        if DECAY == 2:
            tl.store(ptr_db + offs_tk, db, mask=mask_tk)
        else:
            tl.store(ptr_db + share + base, tl.sum(tl.where(mask_k[None, :], db, 0.0), axis=1),
                     mask=mask_t)


@triton.jit
def _cdp_bwd_wy_kernel(
    ptr_k, ptr_w, ptr_vn, ptr_g, ptr_tm, ptr_dvn, ptr_dW, ptr_db, ptr_dk, ptr_dw, ptr_dv,
    ptr_dg, ptr_beta, ptr_r, ptr_dbeta, WRITE_SCALE: tl.constexpr, T, H, K, V, DB_SHARES,
    BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    DECAY: tl.constexpr, PARKED: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The WY backward (adjoint e), one program per (chunk, batch x head): from U = Tm v,
    W = Tm (2^G0 k): dv = Tm^T dvn, d(2^G0 k) = Tm^T dW; through Tm = (I + L)^-1:
    dL = -Tm^T dTm Tm^T = -dv vn^T (strictly lower; chunk_delta_parallel_core_keys.md: no dTm
    formed), back to k and w; the gates' share, added to the dq/dw kernel's, and dg by its
    reverse cumsum inside the chunk. PARKED: the dq/dw chunk kernel stored dv and
    d(2^G0 k) = -dv h^T (in dk) already; dv is read for dL (no Tm, dvn or dW). WRITE_SCALE
    (w = beta r, chunk_delta_parallel_core_keys.md, "A write scale"): dbeta = sum_K r dw, and
    r's gradient beta dw, added to dk when r is k (2), else (1: w formed from r and beta in
    its place) stored in dw (fp32: in r's 16-bit dtype sm_80 spilled 8 B at K = 128)."""
    n, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t, base, mask_t = _cp_rows(n, i_b, i_h, T, H, BLOCK_T)
    if not PARKED:
        Tm = tl.load(ptr_tm + base[:, None] * BLOCK_T + o_t[None, :], mask=mask_t[:, None],
                     other=0.0)
        TmT = tl.trans(Tm)
    dL = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)       # -dv vn^T (the keys kernel's identity)
    for i_v in range(0, tl.cdiv(V, BLOCK_V)):
        o_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
        mask_v = o_v < V
        if PARKED:
            dv = _cp_load(ptr_dv, base, mask_t, o_v, mask_v, V)
        else:
            dv = tl.dot(TmT, _cp_load(ptr_dvn, base, mask_t, o_v, mask_v, V),
                        input_precision=PRECISION)
            tl.store(ptr_dv + base[:, None] * V + o_v[None, :], dv,
                     mask=mask_t[:, None] & mask_v[None, :])
        dL -= tl.dot(dv.to(DOT), tl.trans(_cp_load(ptr_vn, base, mask_t, o_v, mask_v, V)),
                     input_precision=PRECISION)
    if DECAY == 2 and not PARKED:   # k's gradient through W, 2^G0 Tm^T dW, now: Tm is not
        # held below
        for i_k in range(0, tl.cdiv(K, BLOCK_K)):
            o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
            mask_k = o_k < K
            dW = _cp_load(ptr_dW, base, mask_t, o_k, mask_k, K)
            start, end, whole, d, G, R = _cdp_factors(ptr_g, base, mask_t, o_k, mask_k, o_t,
                                                      DECAY, BLOCK_T, K, ACC)
            tl.store(ptr_dk + base[:, None] * K + o_k[None, :],
                     start * tl.dot(TmT, dW, input_precision=PRECISION),
                     mask=mask_t[:, None] & mask_k[None, :])
        # dk, stored above from a dot's layout, is read below in a load's (other threads'
        # stores made visible first)
        tl.debug_barrier()
    dL = tl.where(o_t[:, None] > o_t[None, :], dL, 0.0)
    db_rows = tl.zeros([BLOCK_T], dtype=ACC)       # a scalar gate's share, summed over lanes
    dbeta = tl.zeros([BLOCK_T], dtype=ACC)         # sum_K r dw (a write scale's, DECAY < 2)
    for i_k in range(0, tl.cdiv(K, BLOCK_K)):
        o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = o_k < K
        mask_tk = mask_t[:, None] & mask_k[None, :]
        offs_tk = base[:, None] * K + o_k[None, :]
        k = _cp_load(ptr_k, base, mask_t, o_k, mask_k, K)
        if WRITE_SCALE == 1:    # w = beta r formed from r (loaded in w's place: with a third
            # key block loaded, sm_80 spilled 32 B at K = 128)
            w, r, beta = _cdp_written(ptr_r, ptr_beta, base, mask_t, o_k, mask_k, K, ACC, DOT)
        else:
            w = _cp_load(ptr_w, base, mask_t, o_k, mask_k, K)
        zeros = tl.zeros([BLOCK_T, BLOCK_K], dtype=ACC)
        if DECAY == 2:
            d, G, R, G0, Gend, Glast0 = _cp_chunk_gates(ptr_g, base, mask_t, o_k, mask_k, o_t,
                                                        DECAY, BLOCK_T, K, ACC)
            # k, w as loaded (DOT: the products go to fp32 as with fp32 copies, in half the
            # registers; sm_80 spilled 64 B with the copies)
            dk_L, dw_L = _cp_keywise_score_grads(zeros, zeros, dL, k, w, G, R, o_t, BLOCK_T,
                                                 SUB_T, DOT, PRECISION)
            dk = tl.load(ptr_dk + offs_tk, mask=mask_tk, other=0.0)
            if PARKED:      # d(2^G0 k) parked, 2^G0 d(2^G0 k) in place of the first key loop's
                dk = tl.exp2(G0) * dk
            dk += dk_L
        else:
            start, end, whole, d, G, R = _cdp_factors(ptr_g, base, mask_t, o_k, mask_k, o_t,
                                                      DECAY, BLOCK_T, K, ACC)
            dk_L, dw_L = _cdp_score_grads(zeros, zeros, dL, k, w, G, R, ptr_g, base, mask_t,
                                          o_t, K, BLOCK_T, SUB_T, DECAY, ACC, DOT, PRECISION)
            if PARKED:
                dk = start * tl.load(ptr_dk + offs_tk, mask=mask_tk, other=0.0) + dk_L
            else:
                dk = start * tl.dot(TmT, _cp_load(ptr_dW, base, mask_t, o_k, mask_k, K),
                                    input_precision=PRECISION) + dk_L
        dw = tl.load(ptr_dw + offs_tk, mask=mask_tk, other=0.0) + dw_L
        if WRITE_SCALE > 0:     # loaded a key block (held across the loop: sm_80 spilled 8 B)
            if WRITE_SCALE == 2:
                beta = tl.load(ptr_beta + base, mask=mask_t, other=0.0).to(ACC)
                r = k
            if DECAY == 2:  # sum_K r dw, a key block's share in its own slice of dbeta,
                # summed after (a C-vector held across the loop spilled 16 B on sm_80, kda at
                # K = 128; read, added to and stored a block, 64 B)
                tl.store(ptr_dbeta + i_k * (tl.num_programs(1) * T) + base,
                         tl.sum(r.to(ACC) * dw, axis=1), mask=mask_t)
            else:           # held (in slices, gated_deltanet spilled 8 B at K = 128)
                dbeta += tl.sum(r.to(ACC) * dw, axis=1)
        if WRITE_SCALE == 2:
            tl.store(ptr_dk + offs_tk, dk + beta[:, None] * dw, mask=mask_tk)
        else:
            tl.store(ptr_dk + offs_tk, dk, mask=mask_tk)
            if WRITE_SCALE == 1:
                dw = beta[:, None] * dw
            tl.store(ptr_dw + offs_tk, dw, mask=mask_tk)
        if DECAY > 0:
            db = k.to(ACC) * dk - w.to(ACC) * dw_L
            if DECAY == 2:
                db += tl.load(ptr_db + offs_tk, mask=mask_tk, other=0.0)
                _cdp_store_dg(ptr_dg, offs_tk, mask_tk, db, d, BLOCK_T, ACC)
            else:
                db_rows += tl.sum(tl.where(mask_k[None, :], db, 0.0), axis=1)
    if WRITE_SCALE > 0 and DECAY < 2:
        tl.store(ptr_dbeta + base, dbeta, mask=mask_t)
    if DECAY == 1:
        for share in range(0, DB_SHARES):
            db_rows += tl.load(ptr_db + share * (tl.num_programs(1) * T) + base, mask=mask_t,
                               other=0.0)
        d, G, R, G0, Gend, Glast0 = _cp_chunk_gates(ptr_g, base, mask_t, o_t, mask_t, o_t,
                                                    DECAY, BLOCK_T, K, ACC)
        _cdp_store_dg(ptr_dg, base, mask_t, db_rows, d, BLOCK_T, ACC)


@triton.jit
def _cdp_store_dg(ptr_dg, offs, mask, db, d, BLOCK_T: tl.constexpr, ACC: tl.constexpr):
    """dg_s = sum_{t >= s in the chunk} dL/db_t (the reverse cumsum), 0 at a -inf log decay d
    (the chunk's log decays, as loaded)."""
    dg = tl.sum(db, axis=0) - tl.cumsum(db, axis=0) + db
    tl.store(ptr_dg + offs, tl.where(d == float("-inf"), 0.0, dg), mask=mask)


@triton.jit
def _cdp_bwd_keys_kernel(
    ptr_q, ptr_k, ptr_w, ptr_g, ptr_tm, ptr_h, ptr_dh, ptr_do, ptr_vn, ptr_dvn, ptr_dq, ptr_dk,
    ptr_dw, ptr_dv, ptr_dg, ptr_beta, ptr_r, ptr_dbeta, WRITE_SCALE: tl.constexpr, T, H, NT, K, V,
    BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    DECAY: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """The keys' gradients in one kernel (adjoint d and e fused: all of K in one block, no or
    a scalar gate), one program per (chunk, batch x head), in two loops over value blocks
    (chunk_delta_parallel_core_keys.md): dv = Tm^T dvn, dL = -dv vn^T, d(2^G0 k) = -dv h^T,
    vn dh^T, dk stored; then dP = do vn^T, do h^T: dq, dw, and dg by the reverse cumsum (no dW
    or dTm formed). WRITE_SCALE (w = beta r; "A write scale"): 2, r is k: dbeta = sum_K k dw
    and k's gradient dk + beta dw, held in dw's place and stored once; 0 otherwise (r apart
    from k: `_cdp_bwd_fold_kernel` folds the stored dw after)."""
    n, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t, base, mask_t = _cp_rows(n, i_b, i_h, T, H, BLOCK_T)
    o_k = tl.arange(0, BLOCK_K)
    mask_k = o_k < K
    mask_tk = mask_t[:, None] & mask_k[None, :]
    offs_tk = base[:, None] * K + o_k[None, :]
    # the new values' and the leaving state's terms first (at most three [C, C] or [C, K]
    # accumulators live at a time)
    TmT = tl.trans(tl.load(ptr_tm + base[:, None] * BLOCK_T + o_t[None, :],
                           mask=mask_t[:, None], other=0.0))
    dL = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)       # -dv vn^T
    dk = tl.zeros([BLOCK_T, BLOCK_K], dtype=ACC)       # -dv h^T = d(2^G0 k)
    dw = tl.zeros([BLOCK_T, BLOCK_K], dtype=ACC)       # vn dh^T
    hdh = tl.zeros([1], dtype=ACC)                     # sum h[n] * dh[n] (a scalar gate's)
    for i_v in range(0, tl.cdiv(V, BLOCK_V)):
        o_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
        mask_v = o_v < V
        offs = (i_bh * NT + n) * K * V + o_k[:, None] * V + o_v[None, :]
        mask_kv = mask_k[:, None] & mask_v[None, :]
        h = tl.load(ptr_h + offs, mask=mask_kv, other=0.0)
        dh = tl.load(ptr_dh + offs, mask=mask_kv, other=0.0)
        vn = _cp_load(ptr_vn, base, mask_t, o_v, mask_v, V)
        dv = tl.dot(TmT, _cp_load(ptr_dvn, base, mask_t, o_v, mask_v, V),
                    input_precision=PRECISION)
        tl.store(ptr_dv + base[:, None] * V + o_v[None, :], dv,
                 mask=mask_t[:, None] & mask_v[None, :])
        dv = dv.to(DOT)
        dL -= tl.dot(dv, tl.trans(vn), input_precision=PRECISION)
        dk -= tl.dot(dv, tl.trans(h.to(DOT)), input_precision=PRECISION)
        dw += tl.dot(vn, tl.trans(dh.to(DOT)), input_precision=PRECISION)
        if DECAY > 0:
            hdh += tl.sum(h.to(ACC) * dh.to(ACC))
    # (dL M) w into dk, stored and its gate's share taken before (dL M)^T k goes into dw
    dM = _cdp_causal(tl.where(o_t[:, None] > o_t[None, :], dL, 0.0), ptr_g, base, mask_t, o_t,
                     K, BLOCK_T, DECAY, ACC).to(DOT)
    k = _cp_load(ptr_k, base, mask_t, o_k, mask_k, K)
    w = _cp_load(ptr_w, base, mask_t, o_k, mask_k, K)
    start, end, whole, d, G, R = _cdp_factors(ptr_g, base, mask_t, o_k, mask_k, o_t, DECAY,
                                              BLOCK_T, K, ACC)
    dw = dw * end
    # dL/db of the chunk's last step through the state it leaves (dw holds its share so far),
    # summed over the lanes (0 past K) as the gate is scalar
    leaving = whole * tl.sum(hdh, axis=0) + tl.sum(w.to(ACC) * dw)
    dk = dk * start + tl.dot(dM, w, input_precision=PRECISION)
    if WRITE_SCALE != 2:
        tl.store(ptr_dk + offs_tk, dk, mask=mask_tk)
    if DECAY == 1:      # the gate's share so far, summed over the lanes, parked in dg (a
        # [C] vector), with the leaving state's on the chunk's last step before T (the reverse
        # cumsum takes it to every step)
        last = tl.minimum(T - n * BLOCK_T, BLOCK_T) - 1
        tl.store(ptr_dg + base, tl.sum(k.to(ACC) * dk, axis=1) + tl.where(o_t == last, leaving,
                 0.0), mask=mask_t)
    dw += tl.dot(tl.trans(dM), k, input_precision=PRECISION)
    if WRITE_SCALE == 2:    # k's whole gradient so far held in dw's place; dw's lane sums kept
        beta = tl.load(ptr_beta + base, mask=mask_t, other=0.0).to(ACC)
        dbeta = tl.sum(k.to(ACC) * dw, axis=1)
        if DECAY == 0:  # parked (held, deltanet spilled 64 B on sm_80; parked beside a gate
            # 80 B)
            tl.store(ptr_dbeta + base, dbeta, mask=mask_t)
        wdw = tl.sum(w.to(ACC) * dw, axis=1)
        dw = dk + beta[:, None] * dw
    # then the reads' terms
    dP = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)       # do vn^T
    dq = tl.zeros([BLOCK_T, BLOCK_K], dtype=ACC)       # do h^T
    for i_v in range(0, tl.cdiv(V, BLOCK_V)):
        o_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
        mask_v = o_v < V
        h = tl.load(ptr_h + (i_bh * NT + n) * K * V + o_k[:, None] * V + o_v[None, :],
                    mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        do = _cp_load(ptr_do, base, mask_t, o_v, mask_v, V)
        dP += tl.dot(do, tl.trans(_cp_load(ptr_vn, base, mask_t, o_v, mask_v, V)),
                     input_precision=PRECISION)
        dq += tl.dot(do, tl.trans(h.to(DOT)), input_precision=PRECISION)
    q = _cp_load(ptr_q, base, mask_t, o_k, mask_k, K)
    w = _cp_load(ptr_w, base, mask_t, o_k, mask_k, K)
    # the factors again (a chunk's C log decays: cheaper than holding them through the loop)
    start, end, whole, d, G, R = _cdp_factors(ptr_g, base, mask_t, o_k, mask_k, o_t, DECAY,
                                              BLOCK_T, K, ACC)
    dM = _cdp_causal(dP, ptr_g, base, mask_t, o_t, K, BLOCK_T, DECAY, ACC).to(DOT)
    dq = dq * start + tl.dot(dM, w, input_precision=PRECISION)
    tl.store(ptr_dq + offs_tk, dq, mask=mask_tk)
    if WRITE_SCALE == 2:
        dw_q = tl.dot(tl.trans(dM), q, input_precision=PRECISION)
        k = _cp_load(ptr_k, base, mask_t, o_k, mask_k, K)     # again (sm_80 spilled 304 B
        # with part 1's held)
        wdw += tl.sum(w.to(ACC) * dw_q, axis=1)
        if DECAY == 0:  # beta again, the parked share read back (other threads' stores)
            beta = tl.load(ptr_beta + base, mask=mask_t, other=0.0).to(ACC)
            tl.store(ptr_dk + offs_tk, dw + beta[:, None] * dw_q, mask=mask_tk)
            tl.debug_barrier()
            dbeta = tl.load(ptr_dbeta + base, mask=mask_t, other=0.0)
        else:
            tl.store(ptr_dk + offs_tk, dw + beta[:, None] * dw_q, mask=mask_tk)
        tl.store(ptr_dbeta + base, dbeta + tl.sum(k.to(ACC) * dw_q, axis=1), mask=mask_t)
    else:
        dw += tl.dot(tl.trans(dM), q, input_precision=PRECISION)
        wdw = tl.sum(w.to(ACC) * dw, axis=1)
        tl.store(ptr_dw + offs_tk, dw, mask=mask_tk)
    if DECAY == 1:
        tl.debug_barrier()      # the share parked in dg by other threads (a reduction's layout)
        db = tl.load(ptr_dg + base, mask=mask_t, other=0.0) \
            + tl.sum(q.to(ACC) * dq, axis=1) - wdw
        d, G, R, G0, Gend, Glast0 = _cp_chunk_gates(ptr_g, base, mask_t, o_t, mask_t, o_t,
                                                    DECAY, BLOCK_T, K, ACC)
        _cdp_store_dg(ptr_dg, base, mask_t, db, d, BLOCK_T, ACC)


@triton.jit
def _cdp_written(ptr_r, ptr_beta, base, mask_t, o_k, mask_k, K, ACC: tl.constexpr,
                 DOT: tl.constexpr):
    """(w, r, beta) of a write scale's kind 1 (r apart from the erase key, comba): w = beta r
    rounded to DOT once, as the Function formed it, from a key block of r and the chunk's
    beta (chunk_delta_parallel_core_keys.md, "A write scale")."""
    r = _cp_load(ptr_r, base, mask_t, o_k, mask_k, K)
    beta = tl.load(ptr_beta + base, mask=mask_t, other=0.0).to(ACC)
    return (beta[:, None] * r.to(ACC)).to(DOT), r, beta


@triton.jit
def _cdp_bwd_fold_kernel(
    ptr_dw, ptr_r, ptr_beta, ptr_dr, ptr_dbeta, T, H, K, BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr, ACC: tl.constexpr,
):
    """A write scale's fold after the fused keys kernel, r apart from the erase key (comba; the
    kernel's own fold spilled on sm_80, chunk_delta_parallel_core_keys.md, "A write scale"), one
    program per (chunk, batch x head), all of K: dbeta = sum_K r dw and r's gradient beta dw,
    stored in r's dtype (ptr_dr)."""
    n, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t, base, mask_t = _cp_rows(n, i_b, i_h, T, H, BLOCK_T)
    o_k = tl.arange(0, BLOCK_K)
    mask_k = o_k < K
    dw = _cp_load(ptr_dw, base, mask_t, o_k, mask_k, K).to(ACC)
    r = _cp_load(ptr_r, base, mask_t, o_k, mask_k, K).to(ACC)
    beta = tl.load(ptr_beta + base, mask=mask_t, other=0.0).to(ACC)
    tl.store(ptr_dbeta + base, tl.sum(r * dw, axis=1), mask=mask_t)
    tl.store(ptr_dr + base[:, None] * K + o_k[None, :], beta[:, None] * dw,
             mask=mask_t[:, None] & mask_k[None, :])


def _cdp_blocks(K, V, decay, chunk_size, states16=False):
    """Blocks, warps and stages (chunk_delta_parallel_core.md, "Blocks"): chunks of at most 64
    steps, key and value blocks of at most 64 lanes (16 for key-wise scores); the state passes
    hold all of K, the forward pass on value blocks of 64 up to 64 key lanes (1 stage) and 32
    beyond (2 stages), the adjoint pass on 64 (1 stage) but beside a scalar gate (32); up to 64
    key lanes with no or a scalar gate, one kernel forms the keys' gradients (fuse_keys);
    states16: the chunk states are 16-bit (the dq/dw kernel's value blocks)."""
    block_t = min(64, max(16, _pow2(chunk_size)))
    block_k = min(64, max(16, _pow2(K)))
    block_v = min(64, max(16, _pow2(V)))
    state_k = max(16, _pow2(K))
    keywise = decay == 2
    narrow = state_k <= 64
    # the dq/dw kernel holds all of V up to 64 lanes (do, vn, dvn read once a chunk: one
    # program a chunk over key blocks), else value blocks of 32 in a program per key block,
    # of 16 beside 16-bit states and no or a scalar gate (at 32 sm_80 spilled 224-236 B at
    # K = V = 128; at 2 or 1 stages 356 B, 120 B)
    narrow_v = _pow2(V) <= 64
    dqw_v = block_v if narrow_v else (16 if states16 and not keywise else 32)
    # the adjoint state pass forms the local dv itself for no or a scalar gate up to 64 key
    # lanes; it runs 64 value lanes on 1 stage (all of V up to 64: the [C, K] operands read
    # once a chunk) but beside a scalar gate, whose factors cost registers: 32 lanes there (1
    # stage; 2 beyond 64 key lanes: sm_80 spilled 60 B at 64 lanes and 64 key lanes, 24-192 B
    # at 128)
    fuse_local = not keywise and narrow
    # at 32 too beyond 128 key lanes, 16 beside a key-wise gate there (K = 256: 64 value lanes
    # spilled 360-564 B; kda at 32 40 B on sm_90a)
    adjoint_v = min(block_v, 32) if (fuse_local and decay == 1) or state_k > 128 else block_v
    if state_k > 128 and keywise:
        adjoint_v = min(block_v, 16)
    # the same spans take the keys' gradients in one kernel (_cdp_bwd_keys_kernel) on value
    # blocks of 16 and 1 stage (sm_80 spilled at 32 lanes and at 2 or 3 stages, scalar gate)
    return dict(block_t=block_t, sub_t=min(16, block_t), block_k=block_k, block_v=block_v,
                scores_k=16 if keywise else block_k, dqw_k=16 if keywise else block_k,
                dqw_v=dqw_v, wy_k=16 if keywise else min(block_k, 32),
                state_k=state_k, warps=8 if keywise else 4, state_warps=8,
                forward_v=block_v if narrow else min(block_v, 32),
                forward_stages=1 if narrow or state_k > 128 else 2, fuse_local=fuse_local, adjoint_v=adjoint_v,
                adjoint_stages=1, fuse_keys=fuse_local, keys_v=16)


def _cdp_rows_of_steps(x, steps):
    """A per-token tensor [B, T, H, X] on the rows of `steps` delta steps a token, on each
    token's last step (0 on the others: chunk_delta_core.md, Limits)."""
    if steps == 1:
        return x.contiguous()
    rows = x.new_zeros((x.shape[0], x.shape[1] * steps) + tuple(x.shape[2:]))
    rows[:, steps - 1::steps] = x
    return rows


def _cdp_same(a, b):
    """Whether two tensors are one (views of the same memory, alike; on the `meta` device,
    which has no memory, `seqc gpu-check`'s training call: views of one tensor)."""
    if a is b:
        return True
    if (a.shape, a.stride(), a.dtype, a.storage_offset()) != \
            (b.shape, b.stride(), b.dtype, b.storage_offset()):
        return False
    if a.device.type == "meta":
        return a._base is not None and a._base is b._base
    return a.data_ptr() == b.data_ptr()


class _ChunkDeltaParallelCore(torch.autograd.Function):
    """(o, S_T) of the delta-rule recurrence by the parallel kernels; the forward keeps the
    chunk states h [B, H, NT, K, V] (in the dot dtype), the inverses Tm and the new values,
    the backward is the adjoint kernels alone (chunk_delta_parallel_core.md)."""

    @staticmethod
    def forward(ctx, q, k, w, v, g, s0, beta, chunk_size, steps, dot_dtype, precision,
                read_dtype, scale):
        compute = s0.dtype      # the state's: q, k, w, v, g may come in the call's 16-bit dtype
        given = tuple(None if x is None else x.dtype for x in (q, k, w, v, g, beta))
        dot = dot_dtype if dot_dtype in (torch.bfloat16, torch.float16) else compute
        q = _cdp_rows_of_steps(q.to(dot), steps)
        # a write scale beta (chunk_delta_parallel_core.md, "A write scale"): w the write key
        # r times beta, formed and stored by the per-chunk kernel in the dot dtype (the
        # rounding of beta k's fp32 product, as before); the backward kernels fold dw into r's
        # and beta's gradients. Its kind: 0 none, 2 r the erase key k itself, 1 r apart from k
        # (comba: the WY kernel forms w from r and beta where it reads it)
        scaled = 0 if beta is None else (2 if _cdp_same(w, k) else 1)
        r = None if scaled != 1 else w.to(dot).contiguous()
        k, v = (x.to(dot).contiguous() for x in (k, v))
        if scaled:
            beta = beta.contiguous()
            w = torch.empty_like(k)     # the per-chunk kernel's
        else:
            w = w.to(dot).contiguous()
        # a scalar gate in fp32 (1/K of k's bytes: the kernels' registers as before), a
        # key-wise one as it comes
        g = None if g is None else (g.to(compute) if g.dim() == 3 else g).contiguous()
        s0 = s0.to(compute).contiguous()
        B, T, H, K = k.shape
        V = v.shape[-1]
        decay = 0 if g is None else (2 if g.dim() == 4 else 1)
        b = _cdp_blocks(K, V, decay, chunk_size)
        NT = triton.cdiv(T, b["block_t"])
        acc, tl_dot = _acc(s0), _TL_DTYPES[dot]
        precision = precision or ("tf32" if dot == torch.float32 else "ieee")
        device = k.device
        tm = torch.empty((B, T, H, b["block_t"]), dtype=dot, device=device)
        W = torch.empty((B, T, H, K), dtype=dot, device=device)
        vn = torch.empty((B, T, H, V), dtype=dot, device=device)     # U, then the new values
        # w 2^Gend for a key-wise gate (the state passes scale w by a scalar gate themselves)
        we = torch.empty((B, T, H, K), dtype=dot, device=device) if decay == 2 else w
        whole = torch.empty((B * H, NT) + ((K,) if decay == 2 else ()), dtype=compute,
                            device=device)                           # 2^Glast0
        h = torch.empty((B, H, NT, K, V), dtype=dot, device=device)   # the dots' dtype
        final = torch.empty((B, H, K, V), dtype=compute, device=device)
        o = torch.empty((B, T, H, V), dtype=read_dtype or compute, device=device)   # the read
        g_ptr = k if g is None else g
        _cdp_prepare_kernel[(NT, B * H)](
            k, w, v, g_ptr, tm, W, vn, we, whole, k if beta is None else beta,
            k if r is None else r, scaled, T, H, NT, K, V, b["block_t"], b["sub_t"],
            b["scores_k"],
            b["block_k"], b["block_v"], decay, acc, tl_dot, precision, num_warps=b["warps"])
        _cdp_state_kernel[(triton.cdiv(V, b["forward_v"]), B * H)](
            W, we, g_ptr, whole, s0, h, vn, final, T, H, NT, K, V, b["block_t"], b["state_k"],
            b["forward_v"], decay, True, acc, tl_dot, precision, num_warps=b["state_warps"],
            num_stages=b["forward_stages"])
        _cp_fwd_output_kernel[(triton.cdiv(V, b["block_v"]), NT, B * H)](
            q, w, vn, g_ptr, g_ptr, h, o, T, H, NT, K, V, scale, b["block_t"], b["sub_t"],
            b["scores_k"], b["block_v"], decay, False, acc, tl_dot, precision,
            num_warps=b["warps"])
        ctx.save_for_backward(q, k, w, g, h, tm, W, vn, we, whole, beta, r)     # not v
        ctx.settings = (chunk_size, steps, decay, compute, precision, given, scale, scaled)
        return o[:, steps - 1::steps], final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, dfinal):
        q, k, w, g, h, tm, W, vn, we, whole, beta, r = ctx.saved_tensors
        chunk_size, steps, decay, compute, precision, given, scale, scaled = ctx.settings
        B, T, H, K = k.shape
        V = vn.shape[-1]
        b = _cdp_blocks(K, V, decay, chunk_size, h.element_size() == 2)
        NT = triton.cdiv(T, b["block_t"])
        NK = triton.cdiv(K, b["dqw_k"])
        acc, tl_dot = _acc(whole), _TL_DTYPES[k.dtype]     # not h's: 16-bit on a 16-bit call
        device = k.device
        do = torch.zeros((B, T, H, V), dtype=k.dtype, device=device) if do is None \
            else _cdp_rows_of_steps(_cp_scaled(do, scale, k.dtype), steps)
        dvn = torch.empty_like(vn)
        g_ptr = k if g is None else g
        qg = q
        if b["fuse_local"]:     # the adjoint state pass forms the local dvn (b fused into c)
            dvl = dvn
        else:                   # the local new-value gradient, for the state pass, and its
            # decayed operands: 2^G0 q beside a gate, w 2^Gend beside a scalar one
            dvl = torch.empty((B, T, H, V), dtype=compute, device=device)
            if decay > 0:
                qg = torch.empty_like(q)
            if decay == 1:
                we = torch.empty_like(w)
            _cdp_bwd_local_kernel[(NT, B * H)](
                q, w, g_ptr, do, dvl, qg, we, T, H, K, V, b["block_t"], b["sub_t"],
                b["scores_k"], b["block_v"], decay, acc, tl_dot, precision,
                num_warps=b["warps"])
        dh = torch.empty_like(h)
        ds0 = torch.empty((B, H, K, V), dtype=compute, device=device)
        # dq and dv stored once, in their inputs' dtype, by the fused keys kernel too when it
        # folds the write scale into the key (kind 2: gated_deltanet, deltanet; at 48 and 64
        # 255 registers on sm_80, 0 spill), else fp32 there and cast after (comba's 16-bit
        # stores spilled 56 B on sm_80, and 24 B before the write scale went into the core);
        # dk, dw and dg fp32 (read back by the WY kernel; the fused keys kernel's 16-bit dk
        # spilled 12-16 B on sm_80 at 48 and 64)
        fused = b["fuse_keys"]
        kept_fp32 = fused and scaled != 2
        parked = not fused and b["dqw_v"] >= V     # all of V in one block: the chunk kernel,
        # which stores dv and dk's share through W itself (no dW); the WY kernel reads dv back
        dq = torch.empty((B, T, H, K), dtype=compute if kept_fp32 else given[0], device=device)
        dk, dw = (torch.empty((B, T, H, K), dtype=compute, device=device) for _ in range(2))
        dv = torch.empty((B, T, H, V), dtype=compute if kept_fp32 or parked else given[3],
                         device=device)
        dg = None if g is None else torch.empty(g.shape, dtype=compute, device=device)
        # beta's gradient sum_K r dw, and r's: k's whole one (dk + beta dw) when r is k, else
        # beta dw in dw or dr (kind 2 stores no dw)
        # (the WY kernel's key blocks each store their share beside a key-wise gate, summed
        # below)
        shares = triton.cdiv(K, b["wy_k"]) if decay == 2 and not b["fuse_keys"] else 1
        dbeta = None if not scaled else torch.empty((shares, B, T, H), dtype=compute,
                                                    device=device)
        written = (k if beta is None else beta, k if r is None else r,
                   dq if dbeta is None else dbeta)
        # r apart from k: r's gradient beta dw stored in r's dtype by the fold kernel after
        # the fused keys kernel (the WY kernel stores it in dw, fp32: in r's dtype sm_80
        # spilled 8 B at K = 128)
        dr = None if scaled != 1 or not b["fuse_keys"] else torch.empty_like(r, dtype=given[2])
        dfinal = None if dfinal is None else dfinal.to(compute).contiguous()
        _cdp_bwd_state_kernel[(triton.cdiv(V, b["adjoint_v"]), B * H)](
            qg, we, W, g_ptr, whole, do, dvl, dvn, ds0 if dfinal is None else dfinal, dh, ds0,
            T, H, NT, K, V, b["block_t"], b["state_k"], b["adjoint_v"], decay,
            dfinal is not None, b["fuse_local"], acc, tl_dot, precision,
            num_warps=b["state_warps"], num_stages=b["adjoint_stages"])
        if b["fuse_keys"]:      # dq, dk, dw, dv and dg in one pass (adjoint d and e fused)
            _cdp_bwd_keys_kernel[(NT, B * H)](
                q, k, w, g_ptr, tm, h, dh, do, vn, dvn, dq, dk, dw, dv,
                dq if dg is None else dg, *written, scaled if scaled != 1 else 0, T, H, NT,
                K, V, b["block_t"], b["sub_t"], b["state_k"], b["keys_v"], decay, acc, tl_dot,
                precision, num_warps=8, num_stages=1)
            if scaled == 1:     # r apart from k: dw folded after (the keys kernel's own fold
                # spilled 24-80 B on sm_80 at 48 and 64)
                _cdp_bwd_fold_kernel[(NT, B * H)](
                    dw, r, beta, dr, dbeta, T, H, K, b["block_t"], b["state_k"], acc,
                    num_warps=4)
        else:
            db = None if g is None else torch.empty(
                ((NK,) if decay == 1 else ()) + tuple(g.shape), dtype=compute, device=device)
            if parked:
                dW = dk
                _cdp_bwd_dqw_chunk_kernel[(NT, B * H)](
                    q, w, g_ptr, tm, h, dh, do, vn, dvn, dq, dw, dk, dv,
                    dq if db is None else db, T, H, NT, K, V, b["block_t"], b["sub_t"],
                    b["dqw_k"], b["dqw_v"], decay, acc, tl_dot, precision, num_warps=8)
            else:
                dW = torch.empty_like(W)
                _cdp_bwd_dqw_kernel[(NK, NT, B * H)](
                    q, w, g_ptr, h, dh, do, vn, dvn, dq, dw, dW, dq if db is None else db,
                    T, H, NT, K, V, b["block_t"], b["sub_t"], b["dqw_k"], b["dqw_v"], decay,
                    acc, tl_dot, precision, num_warps=8)
            _cdp_bwd_wy_kernel[(NT, B * H)](
                k, w, vn, g_ptr, tm, dvn, dW, dq if db is None else db, dk, dw, dv,
                dq if dg is None else dg, *written, scaled, T, H, K, V, NK, b["block_t"],
                b["sub_t"], b["wy_k"], b["block_v"], decay, parked, acc, tl_dot, precision,
                num_warps=8)
        # kind 2: r's gradient is in dk; kind 1: in dr
        dw = None if scaled == 2 else (dw if dr is None else dr)
        dbeta = None if dbeta is None else (dbeta[0] if shares == 1 else dbeta.sum(0))
        dq, dk, dw, dv, dg, dbeta = (None if x is None else x.to(given[i])
                                     for i, x in enumerate((dq, dk, dw, dv, dg, dbeta)))
        return (dq[:, steps - 1::steps], dk, dw, dv, dg, ds0, dbeta, None, None, None, None,
                None, None)


def chunk_delta_parallel_core(queries, keys, write_keys, values, log_decay, state, chunk_size,
                              dot_dtype=None, precision=None, read_dtype=None, query_scale=None,
                              write_scale=None):
    """The torch backend's `_chunk_delta` (same arguments, same results: reads [B, H, T, V] and
    the last state) on the parallel kernels: one query, one or more delta steps a token (the
    delta rule over the steps, `_delta_steps`), no, a scalar or a key-wise decay; q, k, w, v
    dot in `dot_dtype` when it is 16-bit (seqc/autograd.py binds the call's dtype); the reads
    stored in `read_dtype` (backends/torch/module.md, "Call-dtype reads"), else fp32;
    `query_scale` q's constant factor, applied to the outputs' fp32 accumulators;
    `write_scale` each write key's per-token factor [B, T, H], formed into it by the core
    (chunk_delta_parallel_core.md, "A write scale")."""
    (q,) = queries
    beta = None
    if len(keys) == 1:
        (k,), (w,), (v,) = keys, write_keys, values
        g, steps = log_decay, 1
        (beta,) = write_scale or (None,)    # r apart from k (comba): the kernels' kind 1
    else:
        steps = len(keys)
        if write_scale is not None and all(_cdp_same(w, x) for w, x in zip(write_keys, keys)):
            # each step's write key its erase key (deltaproduct): the steps' keys interleaved
            # once, in the call's dtype, as both, and their factors on the same rows (the
            # kernels' kind 2: no beta k, nor its backward, on the torch side)
            k, beta, v, g = _delta_steps(keys, write_scale, values, log_decay)
            w = k
        else:
            if write_scale is not None:
                write_keys = [s[..., None] * x for s, x in zip(write_scale, write_keys)]
            k, w, v, g = _delta_steps(keys, write_keys, values, log_decay)
    o, final = _ChunkDeltaParallelCore.apply(q, k, w, v, g, state, beta, chunk_size,
                                             steps, dot_dtype, precision, read_dtype,
                                             1.0 if query_scale is None else float(query_scale))
    return [o.transpose(1, 2)], final

# options of the torch module's `run` that put a recurrence core with adjoint kernels in place of
# a torch family function: seqc's Triton backward passes them (chunk_core.md)
CORES = {
    "chunk_delta_core": chunk_delta_core,
}
# modes that train on cores of their own, in place of CORES' (chunk_parallel_core.md,
# chunk_delta_parallel_core.md, chunk_dplr_parallel_core.md)
MODE_CORES = {
    "chunk_delta_parallel": {"chunk_delta_core": chunk_delta_parallel_core},
}

# `mode=None` here: the single-kernel `chunk_delta` form runs B x H x value blocks programs, each walking
# the whole sequence; below half an H100's 132 SMs, when its state pass has at least as many
# programs, the three-kernel `chunk_delta_parallel` runs instead
# (docs/backends.md, "Triton chunk modes"). Training follows the mode chosen: its own cores
# (MODE_CORES), else DEFAULT_MODE's adjoint core (seqc/autograd.py, `training_cores`).
PARALLEL_MODE = "chunk_delta_parallel"
PARALLEL_BELOW = 2 * 132
CHUNK_PARALLEL_BELOW = 132 // 2
CHOICE_RULE = ("chunk_delta_parallel when chunk_delta would launch fewer than 132 / 2 programs (B x H x "
               "value blocks) and the state pass at least as many, else chunk_delta")


def _choose_mode(dims, block_split):
    # the single kernel's programs, with the value blocks it launches (blockwise.md, "Blocks")
    programs = dims["B"] * dims["H"] * _chunk_delta_blocks(dims, block_split)[1]
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
    "chunk_delta_parallel": _run_chunk_delta_parallel,
    "chunk_delta": _run_chunk_delta,
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
        raise ValueError(f"mode {mode!r} is not available for `gated_deltanet`; "
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
