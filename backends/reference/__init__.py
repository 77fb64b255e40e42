"""The reference backend: the plain step loop over T, the executable definition of a spec.

It follows the spec line by line (program order, so a state updated earlier in the step is seen
with its new value), vectorised over batch and heads only. Every other backend is tested against
it. See step_loop.md for the statement of what the template computes.
"""
from __future__ import annotations

from seqc import ir
from seqc.backends.torch_render import PRELUDE, TorchRenderer, constant_tensor, is_constant, step_value
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
            body.append(f"let_{statement.name} = {_let_value(expr, statement.value)}")
            if full:
                per_sample.add(statement.name)
        elif isinstance(statement, ir.Update):
            state = spec.tensor(statement.state)
            value = step_value(expr, statement.value, state.dims, expand=not full)
            body.append(f"st_{state.name} = {value}")
        else:
            value = step_value(expr, statement.value, output_dims(statement), expand=not full)
            body.append(f"out_{statement.name}.append({value})")
    return render("reference", "step_loop.py.j2", spec=spec, body=body, helpers=PRELUDE,
                  output_dims=output_dims, init=_init)


def output_dims(output: ir.Output) -> tuple[str, ...]:
    return output.declared_dims if output.declared_dims is not None else output.value.dims


def _has_lead(value: ir.Expr, per_sample: set[str]) -> bool:
    """True when the value certainly has the [B, H] leading dims (it reads an input or a state)."""
    return any(isinstance(n, ir.Name) and n.ref.kind in ("input", "state") or
               isinstance(n, ir.Name) and n.ref.kind == "let" and n.id in per_sample
               for n in ir.walk(value))


def _let_value(expr: TorchRenderer, value: ir.Expr) -> str:
    """A let's value; a constant one (numbers and dim sizes) as a 0-d tensor, so that it
    broadcasts (`let_a[..., None]`) like any other value."""
    return constant_tensor(expr(value)) if is_constant(value) else expr(value)


def _init(state: ir.Tensor) -> str:
    value = float(state.init if state.init is not None else 0.0)
    return f'float("{value}")' if value in (float("inf"), float("-inf")) else repr(value)
