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

Kernel families in this module: fused_recurrent, scan (default: scan).
`run(..., mode=...)` forces one; options: `chunk_size` (time steps per chunk or scan block,
default 64), `block_split` (lanes of the split value dim per program, default 128), `precision`
of fp32 dots ("ieee", or "tf32"; default "ieee", chunk_parallel "tf32").
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

STATES = ("h", )
OUTPUTS = ("o", )
MODES = ("fused_recurrent", "scan", )
DEFAULT_MODE = "scan"


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


if os.environ.get("TRITON_INTERPRET") == "1":
    _bf16_dots_in_the_interpreter()


def _acc(tensor):
    """The kernels' compute dtype: fp64 for fp64 calls, else fp32 (states and accumulators)."""
    return tl.float64 if tensor.dtype == torch.float64 else tl.float32


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
    ptr_init_h, ptr_final_h,
    ptr_out_o,
    T, H,
    dim_D: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, ACC: tl.constexpr,
):
    """One program per (value block, batch x head): the state in registers, time inside."""
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
        in_x = tl.load(ptr_in_x + ((i_b * T + t) * H + i_h) * (dim_D) + (o_D), mask=(mask_D), other=0.0).to(ACC)
        in_g = tl.load(ptr_in_g + ((i_b * T + t) * H + i_h) * (dim_D) + (o_D), mask=(mask_D), other=0.0).to(ACC)
        st_h = ((tl.exp(in_g) * st_h) + in_x)
        tl.store(ptr_out_o + ((i_b * T + t) * H + i_h) * (dim_D) + (o_D), st_h, mask=(mask_D))
    if STORE_FINAL:
        tl.store(ptr_final_h + (i_b * H + i_h) * (dim_D) + (o_D), st_h, mask=(mask_D))


STATE_LANES = 8192      # state values a fused program holds: 64 registers a thread at 4 warps


def _run_fused_recurrent(x, p, dims, init, final, outputs, consts, options):
    B, T, H = dims["B"], dims["T"], dims["H"]
    blocks = {
        "BLOCK_D": _pow2(dims["D"]),
    }
    blocks["BLOCK_D"] = min(blocks["BLOCK_D"], _pow2(options.get("block_split", 128)))
    # registers: halve the split block until a program holds at most STATE_LANES state values
    while blocks["BLOCK_D"] > 1 and (blocks["BLOCK_D"]) > STATE_LANES:
        blocks["BLOCK_D"] //= 2
    n_split = triton.cdiv(dims["D"], blocks["BLOCK_D"])
    spare = next(iter(outputs.values()))
    fused_recurrent_kernel[(n_split, B * H)](
        x["x"],
        x["g"],
        spare if init is None else init["h"], spare if final is None else final["h"],
        outputs["o"],
        T, H,
        dims["D"], blocks["BLOCK_D"],
        init is not None, final is not None, _acc(spare),
    )



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
    blocks = {
        "BLOCK_D": _pow2(dims["D"]),
    }
    blocks["BLOCK_D"] = min(blocks["BLOCK_D"], max(1, _pow2(options.get("block_split", 128))))
    n_split = triton.cdiv(dims["D"], blocks["BLOCK_D"])
    block_t = max(16, _pow2(options.get("chunk_size", 64)))
    spare = next(iter(outputs.values()))
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


# options of the torch module's `run` that put a recurrence core with adjoint kernels in place of
# a torch family function: seqc's Triton backward passes them (chunk_core.md)
CORES = {
}

RUNNERS = {
    "fused_recurrent": _run_fused_recurrent,
    "scan": _run_scan,
}


def run(inputs, params, dims, initial_state=None, output_final_state=False, mode=None,
        chunk_size=64, block_split=128, precision=None):
    mode = DEFAULT_MODE if mode is None else mode
    if not (isinstance(chunk_size, int) and chunk_size >= 1 and isinstance(block_split, int)
            and block_split >= 1):
        raise ValueError("chunk_size and block_split must be positive integers")
    options = {"chunk_size": chunk_size, "block_split": block_split, "precision": precision}
    if mode not in RUNNERS:
        raise ValueError(f"mode {mode!r} is not available for `hgrn`; "
                         f"choose one of {', '.join(MODES)}")
    first = next(iter(inputs.values()))
    device = first.device
    compute = torch.float64 if first.dtype == torch.float64 else torch.float32
    B, T, H = dims["B"], dims["T"], dims["H"]
    x = {name: tensor.contiguous() for name, tensor in inputs.items()}
    p = {name: tensor.contiguous() for name, tensor in params.items()}
    consts = {
    }
    outputs = {
        "o": torch.empty((B, T, H, dims["D"]), dtype=compute, device=device),
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
