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
    body = [_line(kind, name, code) for kind, name, code in step_statements(spec)]
    return render("reference", "step_loop.py.j2", spec=spec, body=body, helpers=PRELUDE,
                  output_dims=output_dims, init=_init)


def step_statements(spec: ir.Spec) -> list[tuple[str, str, str]]:
    """The step body as (kind, name, code): kind "let", "state" or "output", code the value over
    `[*lead, ...]` tensors named `in_x`, `par_p`, `st_s`, `let_l`, `dim_d`, `dims["const"]`
    (also the body of the Newton solver's batched step, seqc/newton.py)."""
    expr = TorchRenderer(spelled)
    statements = []
    per_sample = set()          # lets whose value has the batch and head dims
    for statement in spec.body:
        full = _has_lead(statement.value, per_sample)
        if isinstance(statement, ir.Let):
            statements.append(("let", statement.name, _let_value(expr, statement.value)))
            if full:
                per_sample.add(statement.name)
        elif isinstance(statement, ir.Update):
            state = spec.tensor(statement.state)
            value = step_value(expr, statement.value, state.dims, expand=not full)
            statements.append(("state", state.name, value))
        else:
            value = step_value(expr, statement.value, output_dims(statement), expand=not full)
            statements.append(("output", statement.name, value))
    return statements


def _line(kind: str, name: str, code: str) -> str:
    if kind == "output":
        return f"out_{name}.append({code})"
    return f"{'let_' if kind == 'let' else 'st_'}{name} = {code}"


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
