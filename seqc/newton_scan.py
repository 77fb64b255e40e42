"""The linear scans of the Newton solver (seqc/newton.py): h_t = a_t h_{t-1} + b_t, t = 0 .. L-1,
from h_{-1} = h0; b [B, L, ...], h0 [B, ...], a like b (elementwise) or [B, L, ..., S, S] (a
matrix per block).

Elementwise (`diagonal_scan_`, the hot path): in place, chunks of C steps viewed as [B, N, C, ...]
without a copy. (1) inside every chunk at once, a short loop over the C positions: b_t += a_t
b_{t-1} and a_t *= a_{t-1}, after which b holds each chunk's solution from a zero entering state
and a the product of its coefficients since the chunk's start; (2) the N chunk summaries, a short
loop: the state entering chunk n + 1 is a_last s_n + b_last; (3) one fix-up pass, b += a *
entering. 2 C + N + 1 torch operations, whatever L: C ~ sqrt(L / 2) (measured in
docs/benchmarks.md). A log-space form (cumulative sums of log|a|) would make (1) two passes but
divides by products of coefficients that underflow (a Jacobian entry can be 0): not used.

Matrices (`matrix_scan`): the same chunked scan with a position-major copy (backends/torch/
scan.md), products of S x S blocks as a broadcast product and a sum when S <= 16 (a batched matmul
of tiny matrices is ~30x slower on the CPU).
"""
from __future__ import annotations

import math

import torch

BROADCAST_BLOCK = 16  # S x S products up to this size: broadcast and sum, not matmul
MATRIX_CHUNK = 16


def chunk_size(L: int) -> int:
    """C ~ sqrt(L / 2), which balances the 2 C in-chunk operations against the N = L / C chunk
    summaries, at least 1."""
    return max(1, int(math.sqrt(L / 2)))


def diagonal_scan_(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor,
                   chunk: int | None = None) -> torch.Tensor:
    """Elementwise h_t = a_t h_{t-1} + b_t, in place: returns b holding h; a is overwritten (the
    cumulated coefficients). a and b contiguous [B, L, ...]."""
    B, L = b.shape[:2]
    C = chunk or chunk_size(L)
    N = L // C
    if N > 1 and C > 1:
        av = a[:, :N * C].unflatten(1, (N, C))
        bv = b[:, :N * C].unflatten(1, (N, C))
        for t in range(1, C):                     # every chunk at once
            bv[:, :, t].addcmul_(av[:, :, t], bv[:, :, t - 1])
            av[:, :, t].mul_(av[:, :, t - 1])
        entering = torch.empty_like(bv[:, :, 0])
        state = h0
        for n in range(N):                         # the chunk summaries
            entering[:, n] = state
            state = torch.addcmul(bv[:, n, -1], av[:, n, -1], state)
        bv.addcmul_(av, entering.unsqueeze(2))     # the fix-up
        start = N * C
    else:
        start = 0
    for t in range(start, L):                     # what is left (all of it when short)
        before = h0 if t == 0 else b[:, t - 1]
        b[:, t].addcmul_(a[:, t], before)
    return b


def diagonal_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor,
                  chunk: int | None = None) -> torch.Tensor:
    """`diagonal_scan_` written without in-place writes, for `torch.compile` (`compile=True`):
    the chunk positions as a list of [B, N, ...] tensors, so that inductor fuses the in-chunk
    loop into one elementwise kernel and the chunk summaries into another, instead of scattering
    into a buffer at every position."""
    B, L = b.shape[:2]
    C = chunk or chunk_size(L)
    N = L // C
    pieces = []
    state = h0
    if N > 1 and C > 1:
        av = a[:, :N * C].unflatten(1, (N, C))
        bv = b[:, :N * C].unflatten(1, (N, C))
        local, cumulated = [bv[:, :, 0]], [av[:, :, 0]]
        for t in range(1, C):
            local.append(bv[:, :, t] + av[:, :, t] * local[-1])
            cumulated.append(av[:, :, t] * cumulated[-1])
        entering = []
        for n in range(N):
            entering.append(state)
            state = local[-1][:, n] + cumulated[-1][:, n] * state
        entering = torch.stack(entering, 1).unsqueeze(2)
        pieces.append((torch.stack(local, 2) + torch.stack(cumulated, 2) * entering)
                      .flatten(1, 2))
    for t in range(N * C if N > 1 and C > 1 else 0, L):
        state = b[:, t] + a[:, t] * state
        pieces.append(state.unsqueeze(1))
    return torch.cat(pieces, 1) if len(pieces) > 1 else pieces[0]


def apply(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """a x: elementwise when a has x's shape, else a batch of matrices [..., S, S] times x."""
    if a.dim() == x.dim():
        return a * x
    if a.shape[-1] <= BROADCAST_BLOCK:
        return (a * x.unsqueeze(-2)).sum(-1)
    return (a @ x.unsqueeze(-1)).squeeze(-1)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batches of S x S products; small ones as a broadcast product and a sum, which on a CPU is
    ~30x faster than the batched matmul (measured at S = 8: 35 us against 1 ms)."""
    if a.shape[-1] <= BROADCAST_BLOCK:
        return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)
    return a @ b


def matrix_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor,
                chunk: int = MATRIX_CHUNK) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t with a matrix a_t [B, L, ..., S, S] per block (or elementwise a,
    the same algorithm): inside chunks of `chunk` steps, all chunks at once, one position at a
    time; then a short pass across chunks; then the fix-up."""
    matrix = a.dim() == b.dim() + 1
    T = b.shape[1]
    C = max(1, min(chunk, T))
    N = -(-T // C)
    a, b = _position_major(a, N, C, 1.0, matrix), _position_major(b, N, C, 0.0, False)
    for t in range(1, C):                   # every chunk at once, one position at a time
        if matrix:
            b[t] += apply(a[t], b[t - 1])
            a[t] = matmul(a[t], a[t - 1])
        else:
            b[t].addcmul_(a[t], b[t - 1])
            a[t].mul_(a[t - 1])
    entering, state = [], h0
    for n in range(N):                      # the short pass across chunks
        entering.append(state)
        state = apply(a[-1][:, n], state) + b[-1][:, n]
    b += apply(a, torch.stack(entering, 1).unsqueeze(0))
    return b.movedim(0, 2).flatten(1, 2)[:, :T]


def _position_major(x: torch.Tensor, N: int, C: int, identity: float, matrix: bool):
    """[B, T, ...] -> a fresh [C, B, N, ...] (chunks of C steps, position first), padded at the
    end with the identity (1, or the identity matrix, for coefficients; 0 for offsets)."""
    B, T = x.shape[:2]
    if N * C > T:
        pad = x.new_zeros((B, N * C - T, *x.shape[2:]))
        if matrix:
            pad.diagonal(dim1=-2, dim2=-1).fill_(identity)
        else:
            pad.fill_(identity)
        x = torch.cat([x, pad], 1)
    out = torch.empty((C, B, N, *x.shape[2:]), dtype=x.dtype, device=x.device)
    out.copy_(x.unflatten(1, (N, C)).movedim(2, 0))
    return out


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """The scan for any coefficients, a and b left as they are."""
    if a.dim() == b.dim():
        return diagonal_scan_(a.clone(memory_format=torch.contiguous_format),
                              b.clone(memory_format=torch.contiguous_format), h0)
    return matrix_scan(a, b, h0)
