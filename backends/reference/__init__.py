"""The reference backend: the plain step loop over T, the executable definition of a spec.

It follows the spec line by line (program order, so a state updated earlier in the step is seen
with its new value), vectorised over batch and heads only. Every other backend is tested against
it. See step_loop.md for the statement of what the template computes.
"""
from __future__ import annotations

from seqc import ir
from seqc.backends.torch_render import PRELUDE, TorchRenderer, align, is_constant
from seqc.templates import render

PREFIX = {"input": "in_", "param": "par_", "state": "st_", "let": "let_", "dim": "dim_"}


def spelled(node: ir.Name) -> str:
    return PREFIX[node.ref.kind] + node.id


def emit(program) -> str:
    spec = program.spec
    expr = TorchRenderer(spelled)
    body = []
    per_sample = set()          # lets whose value has the batch and head dims
    for statement in spec.body:
        full = _has_lead(statement.value, per_sample)
        if isinstance(statement, ir.Let):
            body.append(f"let_{statement.name} = {expr(statement.value)}")
            if full:
                per_sample.add(statement.name)
        elif isinstance(statement, ir.Update):
            state = spec.tensor(statement.state)
            body.append(f"st_{state.name} = {_to_dims(expr, statement.value, state.dims, full)}")
        else:
            body.append(f"out_{statement.name}.append("
                        f"{_to_dims(expr, statement.value, output_dims(statement), full)})")
    return render("reference", "step_loop.py.j2", spec=spec, body=body, helpers=PRELUDE,
                  output_dims=output_dims, init=_init)


def output_dims(output: ir.Output) -> tuple[str, ...]:
    return output.declared_dims if output.declared_dims is not None else output.value.dims


def _has_lead(value: ir.Expr, per_sample: set[str]) -> bool:
    """True when the value certainly has the [B, H] leading dims (it reads an input or a state)."""
    return any(isinstance(n, ir.Name) and n.ref.kind in ("input", "state") or
               isinstance(n, ir.Name) and n.ref.kind == "let" and n.id in per_sample
               for n in ir.walk(value))


def _to_dims(expr: TorchRenderer, value: ir.Expr, dims: tuple[str, ...], full: bool) -> str:
    """The value as a `[B, H, *dims]` tensor (`dims` is a permutation of the value's dims)."""
    shape = "".join(f", dim_{d}" for d in dims)
    if is_constant(value):
        return f"torch.full((*lead{shape}), {expr(value)}, dtype=compute, device=device)"
    code = expr(value)
    if value.dims != dims:
        code = align(code, value.dims, dims)
    return code if full else f"{code}.expand(*lead{shape})"


def _init(state: ir.Tensor) -> str:
    value = float(state.init if state.init is not None else 0.0)
    return f'float("{value}")' if value in (float("inf"), float("-inf")) else repr(value)
