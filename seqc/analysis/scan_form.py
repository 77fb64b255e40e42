"""`scan`: affine with elementwise coefficients, one state (a diagonal transition) or a coupled
group (a matrix of elementwise coefficients over the stacked states).
"""
from __future__ import annotations

import sympy as sp

from .. import ir, plan
from .affine import Refused, affine, affine_facts, not_affine
from .blame import dense_transition
from .logs import log_of
from .proof import COMBINES, Proof, Reason
from .symbolic import Symbolic


def scan_proof(sym: Symbolic, state: str, decay: sp.Expr, offset: sp.Expr, facts) -> Proof:
    coefficient, offset_ir = sym.to_ir(decay), sym.to_ir(offset)
    log = log_of(sym, decay, strict=True)
    group = plan.ScanGroup((state,), {state: coefficient}, {state: offset_ir}, {state: log})
    facts.append("the coefficient is elementwise: a diagonal transition")
    return Proof("scan", (state,), group, {"coefficient": coefficient, "log_coefficient": log,
                                          "offset": offset_ir}, COMBINES["scan"], tuple(facts))


def coupled_scan_proof(sym: Symbolic, group: tuple[str, ...]) -> Proof:
    polys = affine(sym, group)
    coupling, offsets, facts = {}, {}, []
    for state in group:
        for other in group:
            coefficient = polys[state].coeff_monomial(sym.state_symbols[other])
            if sym.has_functional(coefficient):
                raise Refused(dense_transition(sym, group) or not_affine(sym, state))
            if coefficient != 0:
                coupling[(state, other)] = sym.to_ir(coefficient)
        offsets[state] = sym.to_ir(polys[state].coeff_monomial(1))
        facts.extend(affine_facts(sym, state, polys[state], group))
    dims = {s: set(sym.spec.tensor(s).dims) for s in group}
    for state, other in coupling:
        if dims[state] != dims[other]:
            update = sym.updates[state][0]
            raise Refused(Reason(f"coupled states `{state}` and `{other}` have different dims",
                                 update.span, update.value))
    diagonal = {s: coupling.get((s, s), ir.Num(0.0, dims=())) for s in group}
    scan = plan.ScanGroup(group, diagonal, offsets, {}, coupling)
    facts.append("jointly affine with elementwise coefficients: a scan over the stacked states")
    return Proof("scan", group, scan, {"coupling": coupling, "offset": offsets},
                 COMBINES["coupled"], tuple(facts))
