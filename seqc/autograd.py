"""Gradients through the Triton backend: every Triton call is one `torch.autograd.Function`.

The emitted Triton `run` launches kernels on raw pointers, so its outputs carry no `grad_fn`. The
Function below runs it in forward and saves the call's tensors; its backward recomputes the same
call with the torch backend's emitted module (same device) under `torch.enable_grad()` and takes
`torch.autograd.grad` of that recomputation with the incoming gradients of the outputs and of the
final states. The prelude and the output expressions go through autograd of the torch code; the
recurrence core is the torch family, or, where the Triton module carries one (`CORES`: the chunk
core, backends/triton/chunk_bwd.md), a core with Triton adjoint kernels that keeps one state a
chunk. Exact either way; memory in docs/backends.md, "Gradients".

Emitted modules never import seqc, so this wrapper lives here and `Kernel` calls it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.autograd.function import once_differentiable


@dataclass
class _Layout:
    """How the flat tensor list of the Function maps back to the call's dicts."""
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    states: tuple[str, ...]         # empty when the call has no initial state
    outputs: tuple[str, ...]
    final: tuple[str, ...]          # empty unless the final state is returned

    def split(self, tensors):
        n_in, n_par = len(self.inputs), len(self.params)
        inputs = dict(zip(self.inputs, tensors[:n_in]))
        params = dict(zip(self.params, tensors[n_in:n_in + n_par]))
        states = dict(zip(self.states, tensors[n_in + n_par:])) if self.states else None
        return inputs, params, states

    def flatten(self, outputs, final):
        return ([outputs[n] for n in self.outputs]
                + [final[n] for n in self.final])


@dataclass
class _Call:
    forward: Callable       # the Triton module's run(inputs, params, dims, init, final, **options)
    recompute: Callable     # () -> the torch backend's emitted module, built on first use
    dims: dict
    options: dict
    layout: _Layout
    triton_module: object

    def cores(self) -> dict:
        """Options of the torch recomputation: the Triton module's recurrence cores with adjoint
        kernels (chunk_bwd.md) in place of the torch families, at the Triton chunk size."""
        cores = getattr(self.triton_module, "CORES", {})
        if not cores:
            return {}
        return {**cores, "chunk_size": self.options.get("chunk_size", 64)}


class _TritonRun(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call: _Call, *tensors):
        inputs, params, states = call.layout.split(tensors)
        outputs, final = call.forward(inputs, params, call.dims, states,
                                      bool(call.layout.final), **call.options)
        ctx.call = call
        ctx.save_for_backward(*tensors)
        return tuple(call.layout.flatten(outputs, final))

    @staticmethod
    @once_differentiable
    def backward(ctx, *incoming):
        call = ctx.call
        needs = ctx.needs_input_grad[1:]
        leaves = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, needs)]
        inputs, params, states = call.layout.split(leaves)
        with torch.enable_grad():
            outputs, final = call.recompute().run(inputs, params, call.dims, states,
                                                  bool(call.layout.final), **call.cores())
            results = call.layout.flatten(outputs, final)
        pairs = [(r, g) for r, g in zip(results, incoming) if g is not None and r.requires_grad]
        wanted = [leaf for leaf, need in zip(leaves, needs) if need]
        if not pairs or not wanted:
            return (None,) * (1 + len(leaves))
        grads = iter(torch.autograd.grad([r for r, _ in pairs], wanted, [g for _, g in pairs],
                                         allow_unused=True))
        return (None, *(next(grads) if need else None for need in needs))


def run_triton(kernel, call, output_final_state: bool):
    """`kernel.module.run` on a validated call, differentiable in every input, param and initial
    state (the Function is skipped when nothing requires a gradient)."""
    states = call.initial_state
    layout = _Layout(tuple(call.inputs), tuple(call.params), tuple(states or ()),
                     tuple(kernel.module.OUTPUTS),
                     tuple(kernel.module.STATES) if output_final_state else ())
    tensors = [*call.inputs.values(), *call.params.values(), *(states or {}).values()]
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        return kernel.module.run(call.inputs, call.params, call.dims, states, output_final_state,
                                 **kernel.options)
    program = kernel.program
    flat = _TritonRun.apply(_Call(kernel.module.run, lambda: torch_module(program), call.dims,
                                  dict(kernel.options), layout, kernel.module), *tensors)
    outputs = dict(zip(layout.outputs, flat[:len(layout.outputs)]))
    final = dict(zip(layout.final, flat[len(layout.outputs):])) if output_final_state else None
    return outputs, final


def torch_module(program):
    """The torch backend's emitted module of `program` (compiled once, then from the cache)."""
    from .kernel import build_kernel
    return build_kernel(program, "torch").module
