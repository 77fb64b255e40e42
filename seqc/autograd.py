"""Gradients through the Triton backend: no Triton call that needs a gradient is detached.

The emitted Triton `run` launches kernels on raw pointers, so its outputs carry no `grad_fn`. A
call that needs a gradient (grad mode on, some input, param or initial state requiring one) runs
one of two ways (docs/backends.md, "Gradients"):

- its mode is one the Triton module has a recurrence core with adjoint kernels for (`CORES`: the
  chunk core, backends/triton/chunk_core.md; the scan core, scan_core.md; the delta-rule core,
  chunk_delta_core.md; or the mode's own, `MODE_CORES`: the `chunk_parallel` mode's parallel
  chunk core, chunk_parallel_core.md, the `chunk_delta_parallel` mode's parallel delta core,
  chunk_delta_parallel_core.md): the torch module runs with the cores in place of its families, so the prelude
  and the output expressions go through autograd of the torch code, and the recurrence is the
  cores' kernels: forward keeping one state a chunk (or block of time), backward the adjoint;
- its mode is `fused_recurrent` and the module has the generated backward (`FUSED_BACKWARD`,
  backends/triton/fused_recurrent_bwd.md): the module's `train`, whose forward is the fused kernel
  keeping one state a segment and whose backward is the reverse-time kernel, each step's
  vector-Jacobian product generated from the spec's expressions (backends/triton/vjp.py);
- otherwise `_TritonRun`, a `torch.autograd.Function`: forward is the Triton kernel (the call's
  tensors saved), backward recomputes the call with the torch module under `torch.enable_grad()`
  (with the cores where the module has them) and takes `torch.autograd.grad` with the incoming
  gradients of the outputs and of the final states.

Exact either way.

Emitted modules never import seqc, so this wrapper lives here and `Kernel` calls it.
"""
from __future__ import annotations

import functools
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
        return core_options(self.triton_module, self.options)


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
        # the kernels may write outputs in the call's 16-bit dtype, the recomputation in fp32
        pairs = [(r, g.to(r.dtype)) for r, g in zip(results, incoming)
                 if g is not None and r.requires_grad]
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
    cores = training_cores(kernel.module, kernel.options, call.dims, tensors[0].dtype)
    if cores:       # the prelude by torch autograd, the recurrence by the core's kernels
        return torch_module(program).run(call.inputs, call.params, call.dims, states,
                                         output_final_state, **cores)
    if fused_backward(kernel.module, kernel.options):   # the generated adjoint kernel
        return kernel.module.train(call.inputs, call.params, call.dims, states,
                                   output_final_state, **kernel.options)
    flat = _TritonRun.apply(_Call(kernel.module.run, lambda: torch_module(program), call.dims,
                                  dict(kernel.options), layout, kernel.module), *tensors)
    outputs = dict(zip(layout.outputs, flat[:len(layout.outputs)]))
    final = dict(zip(layout.final, flat[len(layout.outputs):])) if output_final_state else None
    return outputs, final


def fused_backward(triton_module, options: dict) -> bool:
    """The call runs the fused recurrent kernel and the module has its generated backward
    (`FUSED_BACKWARD`: every step operation has a vector-Jacobian rule, fused_recurrent_bwd.md)."""
    mode = options.get("mode") or triton_module.DEFAULT_MODE
    return mode == "fused_recurrent" and getattr(triton_module, "FUSED_BACKWARD", False)


def torch_module(program):
    """The torch backend's emitted module of `program` (compiled once, then from the cache)."""
    from .kernel import build_kernel
    return build_kernel(program, "torch").module


def core_options(triton_module, options: dict) -> dict:
    """Options of the torch module's `run` that put the Triton module's recurrence cores with
    adjoint kernels (`CORES`: chunk_core.md, scan_core.md, chunk_delta_core.md) in place of its families,
    at the Triton chunk size; `call_dtype`: the inputs that reach a chunk-family core unchanged
    are handed to it in the call's dtype (a 16-bit call's not copied to fp32: the cores' kernels
    load them as they are, compute in fp32 and store their gradients in that dtype;
    backends/torch/module.md, "Call-dtype inputs")."""
    cores = getattr(triton_module, "CORES", {})
    if not cores:
        return {}
    return {**cores, "chunk_size": options.get("chunk_size", 64), "call_dtype": True}


def training_cores(triton_module, options: dict, dims: dict | None = None,
                   dtype: torch.dtype | None = None) -> dict:
    """`core_options` when the call's mode is one the cores implement (the chunk, scan or
    chunk_delta kernel): such a call runs forward as torch prelude + cores, so that the forward
    keeps the cores' boundary states and the backward is the adjoint kernels alone. A mode with
    cores of its own (`MODE_CORES`: `chunk_parallel` trains on chunk_parallel_core.md,
    `chunk_delta_parallel` on chunk_delta_parallel_core.md, their kernels dotting in the call's
    16-bit `dtype`) puts them in place of the others. `mode=None` trains in the module's
    parallel mode when that has cores of its own (`training_mode`), else in the mode the
    module's `run` chooses at `dims`. A parallel mode with no cores of its own (the module
    lacks them) trains on DEFAULT_MODE's core; a forced single-kernel form on its parallel
    form's own cores when there are (`single_to_parallel`). Another mode (e.g. a forced
    `fused_recurrent`) keeps its kernel forward and has its own backward or recomputes."""
    mode = options.get("mode") or training_mode(triton_module, options, dims)
    cores = core_options(triton_module, options)
    own = getattr(triton_module, "MODE_CORES", {}).get(single_to_parallel(triton_module, mode))
    if not own and mode == getattr(triton_module, "PARALLEL_MODE", None):
        mode = triton_module.DEFAULT_MODE   # a parallel form with no core of its own trains on
        #                                     the single-kernel form's
    if cores and own:
        bound = dict(dot_dtype=dtype, precision=options.get("precision"))
        return {**cores, **{name: functools.partial(core, **bound) for name, core in own.items()}}
    return cores if cores and f"{mode}_core" in cores else {}


def single_to_parallel(triton_module, mode: str) -> str:
    """The mode whose training cores a call forcing `mode` trains on: a forced single-kernel
    chunk form (`chunk`, `chunk_delta`, `chunk_dplr`: DEFAULT_MODE) trains on its parallel form's
    cores when the module has them (the single-kernel cores' kernels do not fit a GPU; the
    forward stays the single kernel's); any other mode on its own."""
    parallel = getattr(triton_module, "PARALLEL_MODE", None)
    if mode == triton_module.DEFAULT_MODE and parallel in getattr(triton_module, "MODE_CORES", {}):
        return parallel
    return mode


def training_mode(triton_module, options: dict, dims: dict | None) -> str:
    """The mode a `mode=None` call trains in: the module's parallel mode when it has training
    cores of its own (chunk_parallel, chunk_delta_parallel, chunk_dplr_parallel: their kernels
    fit a GPU, the single-kernel cores' do not, whatever the number of programs), else the mode
    `run` would choose at `dims`."""
    parallel = getattr(triton_module, "PARALLEL_MODE", None)
    if parallel in getattr(triton_module, "MODE_CORES", {}):
        return parallel
    return chosen_mode(triton_module, options, dims)


def chosen_mode(triton_module, options: dict, dims: dict | None) -> str:
    """The mode the Triton module's `run(..., mode=None)` runs at `dims`."""
    choose = getattr(triton_module, "_choose_mode", None)
    if choose is None or dims is None:
        return triton_module.DEFAULT_MODE
    return choose(dims, options.get("block_split", 128))
