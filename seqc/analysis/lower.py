"""Analysis -> seqc.plan.Plan: the groups from the proofs, the prelude, and outputs whose state
reads are replaced by placeholders (`query @ S` for chunk kinds, the state itself otherwise)."""
from __future__ import annotations

from dataclasses import replace

from .. import ir, plan
from ..pretty import expr as text
from .reads import inline, query_read, state_name


def lower(analysis) -> plan.Plan:
    sym = analysis.sym
    spec = analysis.spec
    kinds = {s: proof.kind for proof in analysis.proofs for s in proof.states}
    prelude = tuple(s for s in spec.body if isinstance(s, ir.Let) and not sym.deps(s.value))
    reads = _Reads(sym, kinds)
    groups = tuple(_staged(p.group, reads) if "upstream" in p.decomposition else p.group
                   for p in analysis.proofs)
    outputs = {o.name: reads.replace(inline(sym, o.value)) for o in spec.outputs}
    return plan.Plan(spec, groups, prelude, tuple(reads.reads.values()), outputs)


def _staged(value, reads: "_Reads"):
    """A later stage's group with every read of an earlier stage's state in its roles replaced
    by a read placeholder (analysis/stages.py)."""
    if isinstance(value, (ir.Num, ir.Name, ir.Unary, ir.Binary, ir.Call)):
        return reads.replace(value)
    if isinstance(value, dict):
        return {key: _staged(item, reads) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_staged(item, reads) for item in value)
    if hasattr(value, "__dataclass_fields__"):
        return replace(value, **{f: _staged(getattr(value, f), reads)
                                 for f in value.__dataclass_fields__})
    return value


class _Reads:
    def __init__(self, sym, kinds: dict[str, str]):
        self.sym = sym
        self.kinds = kinds
        self.reads: dict[tuple, plan.Read] = {}

    def placeholder(self, key: tuple, state: str, query: ir.Expr | None, node: ir.Expr,
                    previous: bool) -> ir.Name:
        key = key + (previous,)
        if key not in self.reads:
            self.reads[key] = plan.Read(f"_read{len(self.reads)}_{state}", state, query, previous)
        return ir.Name(self.reads[key].name, span=node.span, dims=node.dims, ref=ir.Ref("read"))

    def fresh(self, name: ir.Name) -> bool:
        return name.ref.version == len(self.sym.updates[name.id])

    def previous(self, name: ir.Name) -> bool:
        """A read of S_{t-1} (before the step's first update), which every kind but sequential
        reads as step t-1's read (plan.py)."""
        return (name.ref.version == 0 and not self.fresh(name)
                and self.kinds[name.id] != "sequential")

    def replace(self, node: ir.Expr) -> ir.Expr:
        read = query_read(self.sym, node)
        if read is not None and self.kinds[read[0]] in ("chunk", "chunk_delta"):
            state, side, query = read
            query = self.replace(query)     # reads of earlier stages in the query: their values
            target = node.right if side == "left" else node.left
            if self.fresh(target) or self.previous(target):
                return self.placeholder((state, side, text(query)), state, query, node,
                                        self.previous(target))
        state = state_name(node)
        if state is not None:
            if (self.fresh(node) or self.previous(node)) \
                    and self.kinds[state] not in ("chunk", "chunk_delta"):
                return self.placeholder((state,), state, None, node, self.previous(node))
            return node
        if isinstance(node, ir.Unary):
            return replace(node, operand=self.replace(node.operand))
        if isinstance(node, ir.Binary):
            return replace(node, left=self.replace(node.left), right=self.replace(node.right))
        if isinstance(node, ir.Call):
            return replace(node, args=tuple(self.replace(a) for a in node.args))
        return node
