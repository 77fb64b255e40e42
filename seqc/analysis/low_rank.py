"""A coefficient of a matrix state as D - e <k|: a diagonal minus one key read of the state, the
shape both delta-rule forms start from (delta_form.py, dplr_form.py).
"""
from __future__ import annotations

import sympy as sp

from .. import ir
from .symbolic import Symbolic


def one_low_rank(sym: Symbolic, state, update, coefficient, key_dim, side="left"):
    """The coefficient as D - e <k| for one key k over the key dim read as `k @ S` (or as
    `S @ k` on the value side): (D, e, k)."""
    functionals = [s for s in coefficient.free_symbols if s in sym.functionals]
    if len(functionals) != 1 or not _reads_state_plainly(sym, state, update.value, side):
        return None
    read_side, key = sym.functionals[functionals[0]]
    if read_side != side or key.dims != (key_dim,):
        return None
    poly = sp.expand(coefficient).as_poly(functionals[0])
    if poly is None or poly.total_degree() != 1:
        return None
    return poly.coeff_monomial(1), -poly.coeff_monomial(functionals[0]), key


def _reads_state_plainly(sym: Symbolic, state: str, node: ir.Expr, side: str = "left") -> bool:
    """Every `@` touching the state is `k @ S` (side "left") or `S @ k` ("right") with S the
    state itself."""
    for inner in ir.walk(node):
        if isinstance(inner, ir.Binary) and inner.op is ir.Op.MATMUL and sym.deps(inner):
            held, key = (inner.right, inner.left) if side == "left" else (inner.left, inner.right)
            if not (isinstance(held, ir.Name) and held.id == state) or sym.deps(key):
                return False
    return True
