"""The composed updates as polynomials of degree <= 1 in a group's states (docs/analysis.md
rule 2), and the `Refused` a pass raises when a group has no parallel form.
"""
from __future__ import annotations

import sympy as sp

from .blame import Blame
from .proof import Reason
from .symbolic import Symbolic


class Refused(Exception):
    def __init__(self, reason: Reason):
        super().__init__(reason.message)
        self.reason = reason


def affine(sym: Symbolic, group: tuple[str, ...]) -> dict[str, sp.Poly]:
    """Each state's composed update as a polynomial of degree <= 1 in the group, or Refused."""
    polys = {}
    for state in group:
        poly = sym.poly(sym.composed(state), group)
        if poly is None or poly.total_degree() > 1:
            reason = Blame(sym, group).find() or not_affine(sym, state)
            raise Refused(reason)
        polys[state] = poly
    return polys


def not_affine(sym: Symbolic, state: str) -> Reason:
    update = sym.updates[state][-1]
    return Reason(f"the update of `{state}` is not affine in the state", update.value.span,
                  update.value)


def affine_facts(sym: Symbolic, state: str, poly: sp.Poly, group) -> list[str]:
    terms = ", ".join(f"{sym.state_symbols[s]}: {poly.coeff_monomial(sym.state_symbols[s])}"
                      for s in group)
    return [f"{state}_t = {poly.as_expr()}",
            f"degree {poly.total_degree()} in {', '.join(group)}",
            f"coefficients ({terms}) are free of the states"]
