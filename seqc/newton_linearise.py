"""The step of a Newton solve linearised (seqc/newton.py, docs/newton.md): the states packed as
Jacobian blocks, the step f and its Jacobian in the states at a guess (emitted symbolic code, or
autograd where an operation has no tangent rule), the quasi-Newton diagonal and the damping."""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from .analysis.jacobian import Structure

SMALL_BLOCK = 64     # Jacobian blocks up to this size: one reverse-mode pass a row


# ---- packing: the states of a step as one tensor [..., E, S] ----------------------------------

class Packing:
    """The states as blocks: [*lead, E, S], E entries of S-vectors. A diagonal Jacobian (every
    state of the same shape, entries not mixed) has one S x S block per entry, S the number of
    states; a dense one is one block (E = 1) of all the states' values (S = their total size)."""

    def __init__(self, spec, structure: Structure, sizes: dict):
        self.shapes = [tuple(sizes[d] for d in spec.tensor(s).dims) for s in structure.states]
        self.numels = [math.prod(shape) for shape in self.shapes]
        self.diagonal = structure.kind == "diagonal"
        self.entries = self.numels[0] if self.diagonal else 1
        self.block = len(self.shapes) if self.diagonal else sum(self.numels)

    def pack(self, states) -> torch.Tensor:
        lead = states[0].shape[:states[0].dim() - len(self.shapes[0])]
        flat = [s.reshape(*lead, n) for s, n in zip(states, self.numels)]
        if self.diagonal:
            return flat[0].unsqueeze(-1) if len(flat) == 1 else torch.stack(flat, -1)
        return torch.cat(flat, -1)[..., None, :]

    def unpack(self, packed: torch.Tensor) -> tuple:
        lead = packed.shape[:-2]
        if self.diagonal:
            return tuple(packed[..., i].reshape(*lead, *shape)
                         for i, shape in enumerate(self.shapes))
        pieces = packed[..., 0, :].split(self.numels, -1)
        return tuple(p.reshape(*lead, *shape) for p, shape in zip(pieces, self.shapes))


@contextmanager
def flushed_denormals():
    """Denormal floats flushed to zero on the CPU while the scan runs: cumulated products of
    contracting Jacobians sink below 2^-126 (2^-1022), where every multiply is 30-100x slower
    (a gru at D = 8 spent 97% of its time there); a flushed value changes a term by less than
    2^-126 times its other factors. The caller's setting is restored."""
    before = bool(torch.tensor(1e-45) * 1.0 == 0.0)      # already flushing?
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


# ---- the Jacobian of the step in the states ------------------------------------------------------

def linearise(step, prev: torch.Tensor):
    """(f(prev), J): J the Jacobian blocks of f at prev, [..., E, S, S] (J[..., i, j] = d new_i /
    d prev_j), or [..., E, 1] (elementwise) when S = 1. Small blocks: one reverse-mode pass a
    block row (the entries do not mix, so the row sums of the whole Jacobian are the block rows;
    torch's forward-mode derivatives of broadcasting products run through slow Python
    decompositions); large blocks: one forward-mode derivative a column, `torch.func.vmap`ped."""
    S = prev.shape[-1]
    if S > SMALL_BLOCK:
        basis = torch.eye(S, dtype=prev.dtype, device=prev.device)
        tangents = basis.view(S, *([1] * (prev.dim() - 1)), S).expand(S, *prev.shape)
        new, columns = torch.func.vmap(lambda u: torch.func.jvp(step, (prev,), (u,)),
                                       out_dims=(None, 0))(tangents)
        return new, columns.movedim(0, -1)
    with torch.enable_grad():
        prev = prev.detach().requires_grad_(True)
        new = step(prev)
        rows = [torch.autograd.grad(new, prev, _unit(new, i), retain_graph=i < S - 1,
                                    allow_unused=True)[0] for i in range(S)]
    rows = [torch.zeros_like(prev) if row is None else row for row in rows]
    return new.detach(), rows[0] if S == 1 else torch.stack(rows, -2)


def _unit(x: torch.Tensor, i: int) -> torch.Tensor:
    unit = torch.zeros_like(x)
    unit[..., i] = 1.0
    return unit


class Jacobians:
    """The step f and its Jacobian in the states at packed states `prev` [B, L, H, E, S]:
    (f(prev) packed, J), J [..., E, S] (elementwise) when S = 1, else [..., E, S, S] (J[..., i, j]
    = d new_i / d prev_j). From the emitted symbolic code (newton_step.md: `linearise` for a
    diagonal Jacobian, one elementwise column a state; `jvp` along the N basis directions at once
    for a dense one, the directions a leading dim), no autograd graph; by autograd (`linearise`
    above) when an operation has no tangent rule."""

    def __init__(self, module, packing: Packing):
        self.module = module
        self.packing = packing

    def __call__(self, prev, inputs, params, dims, exp_forms: bool = False):
        """`exp_forms`: tanh and sigmoid through exp (compile=True)."""
        unpacked = self.packing.unpack(prev)
        ops = self.module.EXP_FORMS if exp_forms else torch
        if self.packing.diagonal:
            emitted = self.module.linearise(unpacked, inputs, params, dims, ops)
            if emitted is not None:
                new, columns = emitted
                if len(columns) == 1:
                    return self.packing.pack(new), self.packing.pack(columns[0])
                return self.packing.pack(new), torch.stack(
                    [self.packing.pack(column) for column in columns], -1)
        if self.module.HAS_JVP and not self.packing.diagonal:
            return self._dense(prev, unpacked, inputs, params, dims, ops)
        return linearise(self._step(inputs, params, dims), prev)

    def _dense(self, prev, unpacked, inputs, params, dims, ops):
        N = prev.shape[-1]
        basis = torch.eye(N, dtype=prev.dtype, device=prev.device)
        directions = basis.view(N, *([1] * (prev.dim() - 1)), N)
        new, tangents = self.module.jvp(unpacked, self.packing.unpack(directions), inputs,
                                        params, dims, ops)
        lead = (N, *prev.shape[:-2])
        tangents = [t.expand(*lead, *t.shape[t.dim() - len(shape):])
                    for t, shape in zip(tangents, self.packing.shapes)]
        return self.packing.pack(new), self.packing.pack(tangents).movedim(0, -1)

    def _step(self, inputs, params, dims):
        def f(prev):
            new, _ = self.module.step(self.packing.unpack(prev), inputs, params, dims)
            return self.packing.pack(new)
        return f


def diagonal_of(J: torch.Tensor, S: int) -> torch.Tensor:
    """The Jacobian's diagonal (quasi-Newton, ELK's quasi-DEER), elementwise [..., E, S]."""
    return J if S == 1 else J.diagonal(dim1=-2, dim2=-1)


def damp(a: torch.Tensor, elementwise: bool) -> torch.Tensor:
    """The coefficients scaled so that each block's infinity norm is at most 1: the linear
    scan then cannot blow up; the fixed point is unchanged (docs/newton.md, damping)."""
    if elementwise:
        return a.clamp(-1.0, 1.0)
    norm = a.abs().sum(-1, keepdim=True).amax(-2, keepdim=True)
    return a / norm.clamp(min=1.0)
