"""Products and sums split over a matrix state's key and value dims, and the words the facts use
for dims and for a state held transposed (docs/analysis.md rule 7).
"""
from __future__ import annotations

import sympy as sp

from .. import plan
from .symbolic import Symbolic


def split_factors(sym: Symbolic, product: sp.Expr, key_dim, value_dim):
    """(the factors over () or key_dim, the factors over value_dim) of a product, or None when
    a factor spans other dims."""
    key, value = sp.Integer(1), sp.Integer(1)
    for factor in sp.Mul.make_args(product):
        factor_dims = sym.dims(factor)
        if factor_dims <= {key_dim}:
            key *= factor
        elif factor_dims <= {value_dim}:
            value *= factor
        else:
            return None
    return key, value


def outer_products(sym: Symbolic, writes: sp.Expr, key_dim, value_dim):
    """The writes as (key over key_dim) x (value over value_dim) terms, grouped by value."""
    by_value: dict[sp.Expr, sp.Expr] = {}
    for term in sp.Add.make_args(sp.expand(writes)):
        if term == 0:
            continue
        split = split_factors(sym, term, key_dim, value_dim)
        if split is None:
            return None
        key, value = split
        by_value[value] = by_value.get(value, 0) + key
    return tuple(plan.Write(sym.to_ir(sp.factor_terms(k)), sym.to_ir(v))
                 for v, k in by_value.items())


def dims_text(dims: set[str]) -> str:
    return "()" if not dims else "(" + ", ".join(sorted(dims)) + ")"


def transposed_fact(state: str, key_dim: str, value_dim: str) -> str:
    return (f"`{state}` is updated and read on its last dim `{key_dim}` (`{state} @ k`): "
            f"{state}^T[{key_dim}, {value_dim}] follows the key-side rule "
            f"(S @ k = k @ S^T, exp(b) * S = (exp(b) * S^T)^T for b over {key_dim}), so the "
            f"backends hold `{state}` transposed")
