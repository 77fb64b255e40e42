"""`semiring`: one update `h = max(h + a, b)` or `logaddexp(h + a, b)`, a and b state-free.
"""
from __future__ import annotations

import sympy as sp

from .. import ir, plan
from ..pretty import expr as text
from .proof import COMBINES, Proof
from .symbolic import Symbolic


def semiring_proof(sym: Symbolic, state: str) -> Proof | None:
    if len(sym.updates[state]) != 1:
        return None
    value = sym.updates[state][0].value
    while isinstance(value, ir.Name) and value.ref.kind == "let" and sym.deps(value):
        value = sym.lets[value.id].value
    if not isinstance(value, ir.Call) or value.func not in ("max", "logaddexp") \
            or value.dim is not None:       # `max(x, D)` reduces a dim: no semiring sum
        return None
    symbol = sym.state_symbols[state]
    for inner, other in (value.args, value.args[::-1]):
        if sym.deps(other) or sym.deps(inner) != {state}:
            continue
        shift = sp.expand(sym.convert(inner) - symbol)
        if shift.has(symbol) or sym.has_functional(shift):
            continue
        semiring = "maxplus" if value.func == "max" else "logsumexp"
        coefficient = sym.to_ir(shift)
        group = plan.SemiringGroup(state, semiring, coefficient, other)
        add = "max" if semiring == "maxplus" else "logaddexp"
        facts = (f"{state}_t = {add}({state} + {shift}, {text(other)})",
                 f"`+` distributes over `{add}`: a linear recurrence in the ({add}, +) semiring")
        return Proof("semiring", (state,), group,
                     {"semiring": semiring, "coefficient": coefficient, "offset": other},
                     COMBINES[semiring], facts)
    return None
