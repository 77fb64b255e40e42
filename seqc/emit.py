"""Emit the standalone Python module of a backend for a checked spec.

Every emitted module imports torch (and triton for the triton backend) but never seqc, starts
with a header naming the spec and the seqc version, and defines

    run(inputs, params, dims, initial_state=None, output_final_state=False, **options)
        -> (outputs: dict[str, Tensor], final_state: dict[str, Tensor] | None)

with inputs `[B, T, H, ...]`, params `[H, ...]`, `dims` holding B, T, H, the spec's dims and
the value of each `const` by its name,
`initial_state` None or a complete dict of `[B, H, ...]` tensors. Outputs come back in the
compute dtype (fp32, or fp64 for fp64 inputs); the kernel wrapper casts them to the input dtype.
"""
from __future__ import annotations

import ast
import importlib

from .pretty import pretty

BACKENDS = ("reference", "torch", "triton")


def emit(program, backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend `{backend}`; choose one of {', '.join(BACKENDS)}")
    module = importlib.import_module(f"seqc.backends.{backend}")
    code = header(program, backend) + module.emit(program)
    ast.parse(code)
    return code


def header(program, backend: str) -> str:
    from . import __version__
    spec_lines = "".join(f"#     {line}\n" for line in pretty(program.spec).splitlines())
    return (f"# Emitted by seqc {__version__} from spec `{program.name}` (backend: {backend}).\n"
            f"# Do not edit: regenerate with `seqc compile {program.name}.seq -b {backend}`.\n"
            f"# The spec, as seqc reads it:\n{spec_lines}")
