"""Kernels: a compiled module behind a validating call.

    fn = seqc.load("gla").kernel(backend="reference")
    out = fn(q=q, k=k, v=v, g=g, initial_state=None, output_final_state=True)
    out.o, out.final_state["S"]
"""
from __future__ import annotations

import inspect

from .autograd import run_triton
from .cache import cache_key, generator_digest, load_module
from .emit import BACKENDS
from .validate import validate


class KernelOutput:
    """One attribute per declared output ([B, T, H, ...]) and `final_state` (dict or None)."""

    def __init__(self, outputs: dict, final_state):
        self._outputs = outputs
        self.final_state = final_state
        for name, value in outputs.items():
            setattr(self, name, value)

    def __getitem__(self, name: str):
        return self._outputs[name]

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

    def __call__(self, initial_state=None, output_final_state: bool = False, **tensors):
        call = validate(self.program.spec, tensors, initial_state)
        if self.backend == "triton":      # differentiable: seqc/autograd.py
            outputs, final = run_triton(self, call, bool(output_final_state))
        else:
            outputs, final = self.module.run(call.inputs, call.params, call.dims,
                                             call.initial_state, bool(output_final_state),
                                             **self.options)
        outputs = {name: value.to(call.dtype) for name, value in outputs.items()}
        return KernelOutput(outputs, final if output_final_state else None)

    def __repr__(self) -> str:
        return f"<seqc.Kernel {self.program.name} backend={self.backend}>"


class AutoKernel:
    """`backend="auto"`: per call, Triton when the tensors are on CUDA, else the torch backend.

    Options go to whichever backend runs; each backend is compiled on first use.
    """

    backend = "auto"

    def __init__(self, program, options: dict):
        self.program = program
        self.options = options
        self._kernels: dict[str, Kernel] = {}

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
    if backend == "auto":
        return AutoKernel(program, options)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend `{backend}`; choose one of "
                         f"{', '.join(BACKENDS + ('auto',))}")
    key = cache_key(program.source, f"{__version__}+{generator_digest(backend)}", backend)
    module = load_module(key, lambda: program.emit(backend))
    _check_options(module, backend, options)
    return Kernel(program, backend, module, options)


def _check_options(module, backend: str, options: dict) -> None:
    """Options are keyword arguments of the emitted `run` after the call's own five."""
    parameters = list(inspect.signature(module.run).parameters.values())[5:]
    known = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY
             or p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    unknown = [name for name in options if name not in known]
    if unknown:
        raise ValueError(f"unknown option {', '.join(f'`{n}`' for n in unknown)} for backend "
                         f"`{backend}`; its options are: {', '.join(known) or 'none'}")
