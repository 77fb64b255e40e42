"""The log of a decay, as IR: `exp(g)` -> `g`, `exp(dt * A)` -> `dt * A`, `gamma` -> `log(gamma)`.

    log(a * b) = log a + log b        log(a ** p) = p * log a        log(exp(x)) = x
    log(sigmoid(x)) = logsigmoid(x)   (not log of sigmoid: at x = -inf that has the gradient
                                       (1 / 0) * 0 = NaN where logsigmoid's is sigmoid(-x) = 1)
"""
from __future__ import annotations

import math

import sympy as sp

from .. import ir
from .symbolic import Symbolic, _binary, _call


def log_of(sym: Symbolic, expr: sp.Expr, strict: bool) -> ir.Expr | None:
    """log(expr) as IR. With `strict`, None unless expr is provably positive (an exp, a positive
    number, a name whose declared range is positive, or products and powers of those)."""
    if expr.is_Number:
        value = float(expr)
        return ir.Num(math.log(value), dims=()) if value > 0 else None
    if expr.is_Mul:
        parts = [log_of(sym, factor, strict) for factor in expr.args]
        if any(p is None for p in parts):
            return None
        result = parts[0]
        for part in parts[1:]:
            result = _binary(ir.Op.ADD, result, part)
        return result
    if expr.is_Pow and expr.args[1].is_Number:
        inner = log_of(sym, expr.args[0], strict)
        return None if inner is None else _binary(ir.Op.MUL, sym.to_ir(expr.args[1]), inner)
    node = sym.atoms.get(expr)
    if node is not None:
        known = _known_log(sym, node)
        if known is not None:
            return known
        if strict and not _positive(sym, node):
            return None
    elif strict:
        return None
    return _call("log", (sym.to_ir(expr),))


def _known_log(sym: Symbolic, node: ir.Expr) -> ir.Expr | None:
    """log of an `exp` or a `sigmoid` (through lets) in closed form; None for anything else."""
    if isinstance(node, ir.Name) and node.ref.kind == "let":
        return _known_log(sym, sym.lets[node.id].value)
    if isinstance(node, ir.Call) and node.func == "exp":
        return node.args[0]
    if isinstance(node, ir.Call) and node.func == "sigmoid" and node.dim is None:
        return _call("logsigmoid", node.args)
    return None


def _positive(sym: Symbolic, node: ir.Expr) -> bool:
    if isinstance(node, ir.Name) and node.ref.kind in ("input", "param"):
        declared = sym.spec.tensor(node.id)
        return declared.range is not None and declared.range.low >= 0
    if isinstance(node, ir.Call):
        return node.func in ("exp", "sigmoid", "softplus")
    return False
