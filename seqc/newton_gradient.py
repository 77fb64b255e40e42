"""Gradients of a Newton solve by the implicit function theorem (docs/newton.md, gradients): one
reverse linear scan with the converged Jacobians, no backpropagation through the iterations."""
from __future__ import annotations

import torch

from .newton_linearise import flushed_denormals
from .newton_scan import linear_scan


class NewtonStates(torch.autograd.Function):
    """The solved states of every step (packed), a function of h0 and the inputs' and params'
    tensors; backward by the implicit function theorem (docs/newton.md, gradients). The solve
    itself runs before, outside: forward-mode derivatives are off inside a Function's forward."""

    @staticmethod
    def forward(ctx, solver, names, dims, states, h0, *tensors):
        ctx.solver, ctx.names, ctx.dims = solver, names, dims
        ctx.save_for_backward(h0, states, *tensors)
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_states):
        h0, states, *tensors = ctx.saved_tensors
        solver, names, dims = ctx.solver, ctx.names, ctx.dims
        prev = torch.cat([h0[:, None], states[:, :-1]], 1)
        with torch.enable_grad():
            prev = prev.detach().requires_grad_(True)
            leaves = [t.detach().requires_grad_(t.requires_grad) for t in tensors]
            inputs, params = _split(names, leaves)
            f = solver.step(inputs, params, dims)
            with torch.no_grad():
                _, J = solver.jacobians(prev.detach(), inputs, params, dims)
            with flushed_denormals():
                adjoint = _reverse_scan(J, grad_states)
            wanted = [prev] + [t for t in leaves if t.requires_grad]
            grads = iter(torch.autograd.grad(f(prev), wanted, adjoint, allow_unused=True))
        grad_prev = next(grads)
        grad_tensors = [next(grads) if t.requires_grad else None for t in leaves]
        grad_h0 = None if grad_prev is None else grad_prev[:, 0]
        return (None, None, None, None, grad_h0, *grad_tensors)


def _reverse_scan(J: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """lambda_t = grad_t + J_{t+1}^T lambda_{t+1}, lambda_T = grad_T: the adjoint of the states,
    a linear scan run backwards in time."""
    Jt = J if J.dim() == grad.dim() else J.transpose(-1, -2)
    following = torch.cat([Jt[:, 1:], torch.zeros_like(Jt[:, :1])], 1)
    adjoint = linear_scan(following.flip(1), grad.flip(1), torch.zeros_like(grad[:, 0]))
    return adjoint.flip(1)


def _split(names, tensors):
    inputs_names, params_names = names
    n = len(inputs_names)
    return dict(zip(inputs_names, tensors[:n])), dict(zip(params_names, tensors[n:]))
