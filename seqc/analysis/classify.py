"""The rules: group the states, then give each group a kind and its proof.

A group is a connected set of states whose updates read one another (composition in program order
included); stages.py orders the groups and splits those no form covers whole into stages. Per
group, in this order (one module per form):

    semiring     semiring_form.py: one update `h = max(h + a, b)` or `logaddexp(h + a, b)`, a and
                 b state-free
    refused      affine.py: the composed update is not a polynomial of degree <= 1 in the group's
                 states (sympy); here: an output reads a state between two of its updates
    chunk_delta  a matrix state whose coefficient holds `k @ S`: pure decays, then steps
                 S + beta k (v - k @ S) with beta scalar, k over the key dim, v over the value dim
                 (delta_form.py); or one update D * S - e (k @ S) + writes, D a decay and e, k over
                 the key dim (diagonal plus low rank, RWKV-7: dplr_form.py); on the value side
                 (`S @ k`, read `S @ q`) the same rules hold for S^T: its last dim is the key dim
    chunk        chunk_form.py: a matrix state [Kd, Vd] read only as `q @ S` (or only as `S @ q`:
                 Kd is then its last dim), decay over () or (Kd,) times a factor over (Vd,), and
                 every write term a key over Kd times a value over Vd
    scan         scan_form.py: affine with elementwise coefficients (coupled groups: a matrix of
                 them)
    sequential   everything else, with the Reason (a pass raises affine.Refused)

An output may read a state before the step's first update (S_{t-1}, e.g. RWKV-6's bonus
`q @ (S + u * k * v)`) under every kind: S_{t-1} is the state after step t-1, so the read is the
previous step's read by this step's query (a fact of the proof; docs/analysis.md).
"""
from __future__ import annotations

from dataclasses import replace

from .. import plan
from .affine import Refused, affine, affine_facts
from .chunk_form import chunk_proof
from .delta_form import delta_proof
from .proof import Proof, Reason
from .reads import ReadForms
from .scan_form import coupled_scan_proof, scan_proof
from .semiring_form import semiring_proof
from .symbolic import Symbolic


def groups(sym: Symbolic) -> list[tuple[str, ...]]:
    """Connected components of `state reads state`, in declaration order."""
    order = [t.name for t in sym.spec.states]
    neighbours = {s: set(sym.update_deps(s)) - {s} for s in order}
    for state, reads in list(neighbours.items()):
        for other in reads:
            neighbours[other].add(state)
    seen: set[str] = set()
    result = []
    for state in order:
        if state in seen:
            continue
        component, stack = set(), [state]
        while stack:
            current = stack.pop()
            if current not in component:
                component.add(current)
                stack.extend(neighbours[current])
        seen |= component
        result.append(tuple(s for s in order if s in component))
    return result


def classify(sym: Symbolic, group: tuple[str, ...], reads: dict[str, ReadForms],
             upstream: tuple[str, ...] = (), cycle: Reason | None = None) -> Proof:
    try:
        if cycle is not None:
            raise Refused(cycle)
        _check_fresh_reads(sym, group, reads)
        proof = _single(sym, group[0], reads[group[0]]) if len(group) == 1 \
            else coupled_scan_proof(sym, group)
    except Refused as refused:
        return Proof("sequential", group, plan.SequentialGroup(group), reason=refused.reason)
    extra = {}
    outputs = sorted({output for state in group for output, _ in reads[state].previous})
    if outputs:
        proof = replace(proof, facts=proof.facts + _previous_facts(group, reads))
        extra["previous_reads"] = tuple(outputs)
    if upstream:
        proof = replace(proof, facts=proof.facts + (
            f"it reads {', '.join(f'`{u}`' for u in upstream)} only through their per-step "
            "values, computed by an earlier stage: inputs here, like the spec's inputs",))
        extra["upstream"] = upstream
    return replace(proof, decomposition={**proof.decomposition, **extra}) if extra else proof


def _check_fresh_reads(sym: Symbolic, group, reads) -> None:
    for state in group:
        for output, name in reads[state].stale:
            raise Refused(Reason(f"output `{output}` reads `{state}` before its last update",
                                 name.span, name,
                                 help="an output may read a state as it was before the step "
                                      "(before its first update) or after its last update"))


def _previous_facts(group, reads) -> tuple[str, ...]:
    """Why a read of S_{t-1} keeps the form: it is step t-1's read, by step t's query."""
    outputs = sorted({output for state in group for output, _ in reads[state].previous})
    if not outputs:
        return ()
    states = ", ".join(s for s in group if reads[s].previous)
    return (f"{', '.join(f'`{o}`' for o in outputs)} read {states} before the step's update: "
            f"{states}_(t-1) is the state after step t-1, so q_t @ {states}_(t-1) is the read of "
            "step t-1 by the query of step t (queries shifted one step later, reads one step "
            "earlier, the initial state read at t = 0)",)


def _single(sym: Symbolic, state: str, reads: ReadForms) -> Proof:
    semiring = semiring_proof(sym, state)
    if semiring is not None:
        return semiring
    poly = affine(sym, (state,))[state]
    symbol = sym.state_symbols[state]
    decay, writes = poly.coeff_monomial(symbol), poly.coeff_monomial(1)
    facts = affine_facts(sym, state, poly, (state,))
    if sym.has_functional(decay):
        return delta_proof(sym, state, reads, facts)
    chunk = chunk_proof(sym, state, decay, writes, reads, facts)
    return chunk if chunk is not None else scan_proof(sym, state, decay, writes, facts)
