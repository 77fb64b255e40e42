"""Call-time scalars: the value of each `const` of a spec for one call.

`const scale = K ** -0.5` declares a scalar that a call may give (`fn(..., scale=0.1)`); when it
does not, the default is computed from the call's dim sizes and the earlier consts. The values go
to the emitted `run` in its `dims` dict, under the consts' names (the checker keeps those names
apart from every dim, and from B, T and H).
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from . import ir

_FUNCS = {
    "exp": torch.exp, "log": torch.log, "sigmoid": torch.sigmoid, "logsigmoid": F.logsigmoid,
    "tanh": torch.tanh, "softplus": F.softplus, "silu": F.silu, "relu": torch.relu,
    "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "abs": torch.abs,
    "max": torch.maximum, "min": torch.minimum, "logaddexp": torch.logaddexp,
}
_BINARY = {ir.Op.ADD: torch.add, ir.Op.SUB: torch.sub, ir.Op.MUL: torch.mul, ir.Op.DIV: torch.div,
           ir.Op.POW: torch.pow}


def const_values(spec: ir.Spec, sizes: dict[str, int], given: dict, problems: list[str],
                 defaults: bool = True) -> dict:
    """Every const's value, a float: the given one (a finite real number; None means the default)
    or its default over `sizes` (left out when not `defaults`: computing it reads a tensor's
    value, which traced code under torch.compile must not; seqc/custom_ops.py). Problems are
    appended to `problems`."""
    values: dict[str, float] = {}
    for const in spec.consts:
        value = given.get(const.name)
        if value is None:
            if defaults:
                values[const.name] = _default(const.value, {**sizes, **values})
        elif isinstance(value, bool) or not isinstance(value, numbers.Real):
            problems.append(f"const `{const.name}` must be a real number, not "
                            f"{type(value).__name__}")
        elif not math.isfinite(value):
            problems.append(f"const `{const.name}` must be finite, not {value}")
        else:
            values[const.name] = float(value)
    return values


def _default(value: ir.Expr, scalars: dict) -> float:
    return float(_evaluate(value, scalars))


def _evaluate(node: ir.Expr, scalars: dict) -> torch.Tensor:
    """A checked scalar expression of numbers, dim sizes and consts, in float64."""
    if isinstance(node, ir.Num):
        return torch.tensor(node.value, dtype=torch.float64)
    if isinstance(node, ir.Name):
        return torch.tensor(float(scalars[node.id]), dtype=torch.float64)
    if isinstance(node, ir.Unary):
        return -_evaluate(node.operand, scalars)
    if isinstance(node, ir.Binary):
        return _BINARY[node.op](_evaluate(node.left, scalars), _evaluate(node.right, scalars))
    return _FUNCS[node.func](*(_evaluate(a, scalars) for a in node.args))
