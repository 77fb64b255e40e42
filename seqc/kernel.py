"""Kernels: a compiled module behind a validating call.

    fn = seqc.load("gla").kernel(backend="reference")
    out = fn(q=q, k=k, v=v, g=g, initial_state=None, output_final_state=True)
    out.o, out.final_state["S"]
"""
from __future__ import annotations

import inspect
import numbers

import torch

from . import custom_ops
from .autograd import run_triton
from .cache import cache_key, generator_digest, load_module
from .emit import BACKENDS
from .validate import validate
from .varlen import run_packed


class KernelOutput:
    """One attribute per declared output ([B, T, H, ...]) and `final_state` (dict or None).

    Like fla's `(o, final_state)`, it unpacks and iterates as the outputs in declaration order,
    then the final state (`o, ht = out`); `out["o"]` and `out[0]` index it by name or position,
    and `"o" in out` asks for an output name.
    """

    def __init__(self, outputs: dict, final_state):
        self._outputs = outputs
        self.final_state = final_state
        for name, value in outputs.items():
            setattr(self, name, value)

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return tuple(self)[key]
        return self._outputs[key]

    def __iter__(self):
        yield from self._outputs.values()
        yield self.final_state

    def __len__(self) -> int:
        return len(self._outputs) + 1

    def __contains__(self, name) -> bool:
        return name in self._outputs

    def keys(self):
        return self._outputs.keys()

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={list(v.shape)}" for k, v in self._outputs.items())
        return f"KernelOutput({shapes}, final_state={'set' if self.final_state else None})"


class Kernel:
    def __init__(self, program, backend: str, module, options: dict):
        self.program = program
        self.backend = backend
        self.module = module
        self.options = options
        self.ops = custom_ops.register(self)      # torch.ops.seqc.<name>

    def __call__(self, initial_state=None, output_final_state: bool = False, cu_seqlens=None,
                 **tensors):
        if torch.compiler.is_compiling():   # one opaque custom op: seqc/custom_ops.py
            return custom_ops.call(self, tensors, initial_state, output_final_state, cu_seqlens)
        return self.eager_call(initial_state, output_final_state, cu_seqlens, **tensors)

    def eager_call(self, initial_state=None, output_final_state: bool = False, cu_seqlens=None,
                   **tensors):
        if cu_seqlens is not None:       # packed sequences: seqc/varlen.py
            return run_packed(self, tensors, cu_seqlens, initial_state, output_final_state)
        call = validate(self.program.spec, tensors, initial_state, output_final_state)
        with without_autocast(call.device):
            if self.backend == "triton" and not getattr(self.module, "differentiable", False):
                # made differentiable by seqc/autograd.py (a Newton runner is by itself)
                outputs, final = run_triton(self, call, output_final_state)
            else:
                outputs, final = self.module.run(call.inputs, call.params, call.dims,
                                                 call.initial_state, output_final_state,
                                                 **self.options)
        outputs = {name: value.to(call.dtype) for name, value in outputs.items()}
        return KernelOutput(outputs, final if output_final_state else None)

    def __repr__(self) -> str:
        return f"<seqc.Kernel {self.program.name} backend={self.backend}>"


def without_autocast(device: torch.device):
    """A context in which the kernel runs as documented, states and accumulators in fp32 (fp64):
    an enclosing `torch.autocast` would run the emitted matmuls in bf16 / fp16 (and crash at an
    in-place `baddbmm_` given mixed dtypes), so it is switched off for the run's device. Outputs
    are still cast back to the input dtype; the caller's autocast applies again after the call."""
    return torch.autocast(device.type, enabled=False)


class AutoKernel:
    """`backend="auto"`: per call, Triton when the tensors are on CUDA, else the torch backend.

    Options go to whichever backend runs; each backend is compiled on first use.
    """

    backend = "auto"

    def __init__(self, program, options: dict):
        self.program = program
        self.options = options
        self._kernels: dict[str, Kernel] = {}
        # the backend this machine's calls are likely to take, built now: torch.compile traces
        # calls, and a kernel (and its op, seqc/custom_ops.py) cannot be built inside a trace;
        # options only the other backend takes are reported when a call needs it, as before
        likely = resolve_backend("auto", torch.cuda.is_available())
        try:
            self._kernels[likely] = build_kernel(program, likely, **options)
        except ValueError:
            pass

    def __call__(self, initial_state=None, output_final_state: bool = False, **tensors):
        on_cuda = any(getattr(t, "is_cuda", False) for t in tensors.values())
        chosen = resolve_backend("auto", on_cuda)
        if chosen not in self._kernels:
            self._kernels[chosen] = build_kernel(self.program, chosen, **self.options)
        return self._kernels[chosen](initial_state=initial_state,
                                     output_final_state=output_final_state, **tensors)

    def __repr__(self) -> str:
        return f"<seqc.Kernel {self.program.name} backend=auto>"


def resolve_backend(backend: str, device_is_cuda: bool) -> str:
    if backend != "auto":
        return backend
    return "triton" if device_is_cuda else "torch"


def build_kernel(program, backend: str = "reference", **options) -> Kernel | AutoKernel:
    from . import __version__
    _check_chunk_size(options)
    solver = options.pop("solver", "loop")
    if solver != "loop":                 # over all steps at once: seqc/newton.py
        return _solver_kernel(program, backend, solver, options)
    if backend == "auto":
        return AutoKernel(program, options)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend `{backend}`; choose one of "
                         f"{', '.join(BACKENDS + ('auto',))}")
    key = cache_key(program.source, f"{__version__}+{generator_digest(backend)}", backend)
    module = load_module(key, lambda: program.emit(backend))
    _check_options(module, backend, options)
    return Kernel(program, backend, module, options)


def _solver_kernel(program, backend: str, solver: str, options: dict):
    if solver != "newton":
        raise ValueError(f'unknown solver `{solver}`; choose "loop" (the default) or "newton"')
    from .newton import newton_kernel
    return newton_kernel(program, backend, options)


def _check_chunk_size(options: dict) -> None:
    """`chunk_size`, where a backend takes it, is a positive integer: checked here, at build time,
    so that 1.5 or "8" is not a TypeError deep inside torch at the first call."""
    size = options.get("chunk_size", 1)
    if not isinstance(size, numbers.Integral) or isinstance(size, bool) or size < 1:
        raise ValueError(f"chunk_size must be a positive integer, not {size!r} "
                         f"({type(size).__name__})")


def _check_options(module, backend: str, options: dict) -> None:
    """Options are keyword arguments of the emitted `run` after the call's own five."""
    parameters = list(inspect.signature(module.run).parameters.values())[5:]
    known = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY
             or p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    unknown = [name for name in options if name not in known]
    if unknown:
        raise ValueError(f"unknown option {', '.join(f'`{n}`' for n in unknown)} for backend "
                         f"`{backend}`; its options are: {', '.join(known) or 'none'}")
