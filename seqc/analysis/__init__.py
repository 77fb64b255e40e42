"""The recurrence analysis: which parallel form each state (or coupled group) admits, and why.

`analyse(checked) -> Analysis`. The passes, one module each:
    symbolic  IR -> sympy (states as symbols, updates composed, lets inlined) and back
    reads     how the outputs read the states
    stages    the groups as a DAG of stages, upstream first
    classify  the rules, giving one `Proof` per group; one module per form:
              semiring_form, delta_form (with dplr_form and low_rank), chunk_form, scan_form;
              affine (degree <= 1, `Refused`), factors (key x value splits); blame.py points at
              refusals
    lower     Analysis -> seqc.plan.Plan
    report    the verdicts in words and as JSON
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from .. import ir
from .. import plan as plan_module
from ..check import Checked
from .proof import Combine, Proof, Reason

__all__ = ["Analysis", "Combine", "Proof", "Reason", "analyse", "lower"]


@dataclass(frozen=True)
class Analysis:
    spec: ir.Spec
    proofs: tuple[Proof, ...]
    sym: object = field(compare=False, repr=False)

    def proof(self, state: str) -> Proof:
        return next(p for p in self.proofs if state in p.states)

    def kind(self, state: str) -> str:
        return self.proof(state).kind

    @cached_property
    def plan(self):
        from .lower import lower
        return lower(self)

    def describe(self, source: str | None = None) -> str:
        from .report import describe
        return describe(self, self.spec.source if source is None else source)

    def to_json(self) -> dict:
        from .report import to_json
        return to_json(self)

    def __str__(self) -> str:
        return self.describe()


def analyse(checked: Checked | ir.Spec) -> Analysis:
    from .classify import classify, groups
    from .reads import read_forms
    from .stages import order, strong_components, unreadable
    from .symbolic import Symbolic
    spec = checked.spec if isinstance(checked, Checked) else checked
    sym = Symbolic(spec)
    reads = read_forms(sym)
    found, split = [], set()
    for group in groups(sym):
        components = strong_components(sym, group)
        if len(components) > 1 and classify(sym, group, reads).kind == "sequential":
            found.extend(components)        # no form covers it whole: in stages (stages.py)
            split.update(components)
        else:
            found.append(group)
    ordered, upstream, cycles = order(sym, found, reads)
    everything = frozenset(t.name for t in spec.states)
    kinds: dict[str, str] = {}
    proofs = []
    for group in ordered:
        own = Symbolic(spec, everything - set(group)) if group in split else sym
        proof = classify(own, group, reads, upstream[group], cycles.get(group))
        reason = unreadable(proof, sym, kinds) if group in split else None
        if reason is not None and proof.kind != "sequential":
            proof = Proof("sequential", group, plan_module.SequentialGroup(group), reason=reason)
        kinds.update((s, proof.kind) for s in group)
        proofs.append(proof)
    return Analysis(spec, tuple(proofs), sym)


def lower(analysis: Analysis):
    from .lower import lower as _lower
    return _lower(analysis)
