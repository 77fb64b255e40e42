"""`prog.kernel("triton", solver="newton")`: the Newton solver (seqc/newton.py, docs/newton.md)
with its work on Triton kernels (backends/triton/newton_step.md): the step and the diagonal blocks
of its Jacobian by one generated elementwise kernel, the linear solves by the scan core
(elementwise coefficients) and the coupled scan core (S x S blocks a lane, or the one N x N block
of a dense Jacobian). The convergence control, the fallback to the step loop and the gradients
(the implicit function theorem) are the torch solver's, unchanged. Without a step kernel (a dense
Jacobian, or an operation without a Triton tangent rule: `NO_KERNEL` says which) the Jacobian
comes from the torch backend's emitted tangents, on the same device.
"""
from __future__ import annotations

import torch

from .newton_linearise import Jacobians, Packing


class TritonJacobians(Jacobians):
    """Jacobians whose diagonal blocks come from the Triton step kernel."""

    def __init__(self, module, packing: Packing, kernels):
        super().__init__(module, packing)
        self.kernels = kernels

    def __call__(self, prev, inputs, params, dims, exp_forms: bool = False):
        if not (self.packing.diagonal and not self.kernels.NO_KERNEL):
            return super().__call__(prev, inputs, params, dims)
        new, columns = self.kernels.linearise(self.packing.unpack(prev), inputs, params, dims)
        if len(columns) == 1:
            return self.packing.pack(new), self.packing.pack(columns[0])
        return self.packing.pack(new), torch.stack(
            [self.packing.pack(column) for column in columns], -1)


class TritonLinearSolve:
    """h_t = a_t h_{t-1} + b_t on the scan cores, from and to the solver's layout: a, b
    [B, L, H, E, S] (a elementwise) or a [B, L, H, E, S, S]; h0 [B, H, E, S]."""

    def __init__(self, kernels):
        self.kernels = kernels

    def __call__(self, a, b, h0):
        if a.dim() == b.dim() and b.shape[-1] == 1:     # elementwise: the scan core
            B, L, H, E = b.shape[:4]
            h = self.kernels.scan(a.movedim(1, 2).reshape(B, H, L, E),
                                  b.movedim(1, 2).reshape(B, H, L, E), h0.reshape(B, H, E))
            return h.movedim(2, 1).unsqueeze(-1)
        if a.dim() == b.dim():                           # quasi-Newton on blocks: diagonal
            a = torch.diag_embed(a)
        h = self.kernels.coupled_scan(a.permute(0, 2, 1, 4, 5, 3), b.permute(0, 2, 1, 4, 3),
                                      h0.transpose(-1, -2))
        return h.permute(0, 2, 1, 4, 3)
