"""IR -> seqc source text. `parse(pretty(spec)) == spec` for every spec (tested on the stdlib)."""
from __future__ import annotations

import math

from . import ir

_SUM, _PRODUCT, _UNARY, _POWER, _ATOM = 1, 2, 3, 4, 5
_BINARY_LEVEL = {ir.Op.ADD: _SUM, ir.Op.SUB: _SUM, ir.Op.MUL: _PRODUCT, ir.Op.DIV: _PRODUCT,
                 ir.Op.MATMUL: _PRODUCT, ir.Op.POW: _POWER}


def pretty(spec: ir.Spec) -> str:
    lines = [f"model {spec.name}"]
    if spec.dims:
        lines.append("dims " + ", ".join(d.name for d in spec.dims))
    lines.extend(_tensor(t) for t in spec.tensors)
    lines.extend(f"const {c.name} = {expr(c.value)}" for c in spec.consts)
    lines.extend(statement(s) for s in spec.body)
    return "\n".join(lines) + "\n"


def _tensor(tensor: ir.Tensor) -> str:
    text = f"{tensor.kind.value} {tensor.name}"
    if tensor.dims:
        text += "[" + ", ".join(tensor.dims) + "]"
    if tensor.range is not None:
        text += f" in ({_bound(tensor.range.low)}, {_bound(tensor.range.high)})"
    if tensor.init is not None:
        text += f" = {_bound(tensor.init)}"
    return text


def _bound(value: float) -> str:
    if math.isinf(value):
        return "-inf" if value < 0 else "inf"
    return ("-" if value < 0 else "") + _number(abs(value))


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def statement(node: ir.Statement) -> str:
    if isinstance(node, ir.Let):
        return f"let {node.name} = {expr(node.value)}"
    if isinstance(node, ir.Update):
        return f"{node.state} = {expr(node.value)}"
    dims = "[" + ", ".join(node.declared_dims) + "]" if node.declared_dims else ""
    return f"output {node.name}{dims} = {expr(node.value)}"


def expr(node: ir.Expr) -> str:
    return _expr(node)[0]


def _expr(node: ir.Expr) -> tuple[str, int]:
    """The text of a node and its precedence level."""
    if isinstance(node, ir.Num):
        return _number(node.value), _ATOM
    if isinstance(node, ir.Name):
        return node.id, _ATOM
    if isinstance(node, ir.Call) and node.relabel is not None:
        return f"{_wrap(node.args[0], _ATOM)} as [{', '.join(node.relabel)}]", _ATOM
    if isinstance(node, ir.Call):
        args = [expr(a) for a in node.args] + ([node.dim] if node.dim else [])
        return f"{node.func}({', '.join(args)})", _ATOM
    if isinstance(node, ir.Unary):
        return "-" + _wrap(node.operand, _UNARY), _UNARY
    level = _BINARY_LEVEL[node.op]
    if node.op is ir.Op.POW:
        return f"{_wrap(node.left, _ATOM)} ** {_wrap(node.right, _UNARY)}", _POWER
    return f"{_wrap(node.left, level)} {node.op.value} {_wrap(node.right, level + 1)}", level


def _wrap(node: ir.Expr, minimum: int) -> str:
    text, level = _expr(node)
    return text if level >= minimum else f"({text})"
