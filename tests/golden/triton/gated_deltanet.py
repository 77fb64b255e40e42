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
#     S = exp(g) * S
#     S = S + beta * k * (v - k @ S)
#     output o = K ** -0.5 * q @ S
"""Triton kernels for `gated_deltanet`: see backends/triton/*.md in seqc for their math.

Kernel families in this module: fused_recurrent, chunk_delta (default: chunk_delta).
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

STATES = ("S", )
OUTPUTS = ("o", )
MODES = ("fused_recurrent", "chunk_delta", )
DEFAULT_MODE = "chunk_delta"


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
    ptr_in_q,
    ptr_in_k,
    ptr_in_v,
    ptr_in_g,
    ptr_in_beta,
    ptr_init_S, ptr_final_S,
    ptr_out_o,
    T, H,
    c0,
    dim_K: tl.constexpr, BLOCK_K: tl.constexpr,
    dim_V: tl.constexpr, BLOCK_V: tl.constexpr,
    HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, ACC: tl.constexpr,
):
    """One program per (value block, batch x head): the state in registers, time inside."""
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
        in_q = tl.load(ptr_in_q + ((i_b * T + t) * H + i_h) * (dim_K) + (o_K), mask=(mask_K), other=0.0).to(ACC)
        in_k = tl.load(ptr_in_k + ((i_b * T + t) * H + i_h) * (dim_K) + (o_K), mask=(mask_K), other=0.0).to(ACC)
        in_v = tl.load(ptr_in_v + ((i_b * T + t) * H + i_h) * (dim_V) + (o_V), mask=(mask_V), other=0.0).to(ACC)
        in_g = tl.load(ptr_in_g + ((i_b * T + t) * H + i_h) * (1) + 0, mask=True, other=0.0).to(ACC)
        in_beta = tl.load(ptr_in_beta + ((i_b * T + t) * H + i_h) * (1) + 0, mask=True, other=0.0).to(ACC)
        st_S = (tl.exp(in_g) * st_S)
        st_S = (st_S + ((in_beta * in_k)[:, None] * (in_v - tl.sum(tl.where(mask_K[:, None], (in_k[:, None] * st_S), 0.0), axis=0))[None, :]))
        tl.store(ptr_out_o + ((i_b * T + t) * H + i_h) * (dim_V) + (o_V), tl.sum(tl.where(mask_K[:, None], ((c0 * in_q)[:, None] * st_S), 0.0), axis=0), mask=(mask_V))
    if STORE_FINAL:
        tl.store(ptr_final_S + (i_b * H + i_h) * (dim_K * dim_V) + (o_K[:, None] * (dim_V) + o_V[None, :]), st_S, mask=(mask_K[:, None] & mask_V[None, :]))


STATE_LANES = 8192      # state values a fused program holds: 64 registers a thread at 4 warps


def _run_fused_recurrent(x, p, dims, init, final, outputs, consts, options):
    B, T, H = dims["B"], dims["T"], dims["H"]
    blocks = {
        "BLOCK_K": _pow2(dims["K"]),
        "BLOCK_V": _pow2(dims["V"]),
    }
    blocks["BLOCK_V"] = min(blocks["BLOCK_V"], _pow2(options.get("block_split", 128)))
    # registers: halve the split block until a program holds at most STATE_LANES state values
    while blocks["BLOCK_V"] > 1 and (blocks["BLOCK_K"] * blocks["BLOCK_V"]) > STATE_LANES:
        blocks["BLOCK_V"] //= 2
    n_split = triton.cdiv(dims["V"], blocks["BLOCK_V"])
    spare = next(iter(outputs.values()))
    fused_recurrent_kernel[(n_split, B * H)](
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
        init is not None, final is not None, _acc(spare),
    )



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
    c0,
    dim_K: tl.constexpr, BLOCK_K: tl.constexpr,
    dim_V: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_T: tl.constexpr, SUB_T: tl.constexpr, PRECISION: tl.constexpr,
    HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, ACC: tl.constexpr,
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
        in_q = tl.load(ptr_in_q + (i_b * T * H + i_h) * (dim_K) + (o_T[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0).to(ACC)
        in_k = tl.load(ptr_in_k + (i_b * T * H + i_h) * (dim_K) + (o_T[:, None] * (H * dim_K) + o_K[None, :]), mask=(mask_T[:, None] & mask_K[None, :]), other=0.0).to(ACC)
        in_v = tl.load(ptr_in_v + (i_b * T * H + i_h) * (dim_V) + (o_T[:, None] * (H * dim_V) + o_V[None, :]), mask=(mask_T[:, None] & mask_V[None, :]), other=0.0).to(ACC)
        in_g = tl.load(ptr_in_g + (i_b * T * H + i_h) * (1) + (o_T * (H * 1)), mask=(mask_T), other=0.0).to(ACC)
        in_beta = tl.load(ptr_in_beta + (i_b * T * H + i_h) * (1) + (o_T * (H * 1)), mask=(mask_T), other=0.0).to(ACC)
        # chunk_delta group S: UT transform by forward substitution, WY read-out and state pass (chunk_delta.md)
        k_S = tl.where((mask_T[:, None] & mask_K[None, :]), in_k, 0.0)
        b_S = tl.where((mask_T), in_beta, 0.0)
        v_S = tl.where((mask_T[:, None] & mask_V[None, :]), in_v, 0.0)
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
        L_S = tl.dot(k_S, tl.trans(k_S), input_precision=PRECISION) * b_S[:, None] * tl.exp2(tl.where((pos_S[:, None] > pos_S[None, :]) & (Rr_S[:, None] == Rr_S[None, :]), Gr_S[:, None] - Gr_S[None, :], float("-inf")))
        Tm_S = tl.where(o_r[:, None] == o_r[None, :], 1.0, 0.0)
        for p in range(1, 1 * BLOCK_T):
            row = (p % 1) * BLOCK_T + p // 1
            l_S = tl.sum(tl.where((o_r == row)[:, None], L_S, 0.0), axis=0)
            Tm_S = tl.where((o_r == row)[:, None], Tm_S - tl.sum(l_S[:, None] * Tm_S, axis=0)[None, :], Tm_S)
        u_S = tl.dot(Tm_S, b_S[:, None] * v_S, input_precision=PRECISION)
        w_S = tl.dot(Tm_S, (b_S * tl.exp2(G0r_S))[:, None] * k_S, input_precision=PRECISION)
        u_S = u_S - tl.dot(w_S, st_S, input_precision=PRECISION)
        q_S = tl.where((mask_T[:, None] & mask_K[None, :]), (c0 * in_q), 0.0)
        A_S = tl.dot(q_S, tl.trans(k_S), input_precision=PRECISION) * tl.exp2(tl.where(((o_t * 1 + 0)[:, None] >= pos_S[None, :]) & (R_S[:, None] == Rr_S[None, :]), G_S[:, None] - Gr_S[None, :], float("-inf")))
        read__read0_S = tl.dot(q_S * tl.exp2(G0_S)[:, None], st_S, input_precision=PRECISION) + tl.dot(A_S, u_S, input_precision=PRECISION)
        st_S = st_S * tl.exp2(Glast0_S) + tl.dot(tl.trans(k_S * tl.exp2(Gendr_S)[:, None]), u_S, input_precision=PRECISION)

        tl.store(ptr_out_o + (i_b * T * H + i_h) * (dim_V) + (o_T[:, None] * (H * dim_V) + o_V[None, :]), read__read0_S, mask=(mask_T[:, None] & mask_V[None, :]))
    if STORE_FINAL:
        tl.store(ptr_final_S + (i_b * H + i_h) * (dim_K * dim_V) + (o_K[:, None] * (dim_V) + o_V[None, :]), st_S, mask=(mask_K[:, None] & mask_V[None, :]))


def _run_chunk_delta(x, p, dims, init, final, outputs, consts, options):
    B, T, H = dims["B"], dims["T"], dims["H"]
    blocks = {
        "BLOCK_K": max(16, _pow2(dims["K"])),
        "BLOCK_V": max(16, _pow2(dims["V"])),
    }
    blocks["BLOCK_V"] = min(blocks["BLOCK_V"], max(16, _pow2(options.get("block_split", 128))))
    n_split = triton.cdiv(dims["V"], blocks["BLOCK_V"])
    block_t = max(16, _pow2(options.get("chunk_size", 64)))
    spare = next(iter(outputs.values()))
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
        block_t, min(16, block_t), options.get("precision") or "ieee",
        init is not None, final is not None, _acc(spare),
    )


# options of the torch module's `run` that put a recurrence core with adjoint kernels in place of
# a torch family function: seqc's Triton backward passes them (chunk_core.md)
CORES = {
}

RUNNERS = {
    "fused_recurrent": _run_fused_recurrent,
    "chunk_delta": _run_chunk_delta,
}


def run(inputs, params, dims, initial_state=None, output_final_state=False, mode=None,
        chunk_size=64, block_split=128, precision=None):
    mode = DEFAULT_MODE if mode is None else mode
    if not (isinstance(chunk_size, int) and chunk_size >= 1 and isinstance(block_split, int)
            and block_split >= 1):
        raise ValueError("chunk_size and block_split must be positive integers")
    options = {"chunk_size": chunk_size, "block_split": block_split, "precision": precision}
    if mode not in RUNNERS:
        raise ValueError(f"mode {mode!r} is not available for `gated_deltanet`; "
                         f"choose one of {', '.join(MODES)}")
    first = next(iter(inputs.values()))
    device = first.device
    compute = torch.float64 if first.dtype == torch.float64 else torch.float32
    B, T, H = dims["B"], dims["T"], dims["H"]
    x = {name: tensor.contiguous() for name, tensor in inputs.items()}
    p = {name: tensor.contiguous() for name, tensor in params.items()}
    consts = {
        "c0": float((torch.tensor(float(dims["K"]), dtype=torch.float64) ** (-0.5))),
    }
    outputs = {
        "o": torch.empty((B, T, H, dims["V"]), dtype=compute, device=device),
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
