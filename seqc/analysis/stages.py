"""States in stages (docs/analysis.md rule 6): the groups as a DAG, upstream first.

Two relations make a stage later than another: a read's query that reads another group's state (a
normaliser scaling the query of a matrix state), and, inside a connected group that no form
covers as a whole, an update that reads a state which does not read it back (a preconditioner
state forming a delta rule's key). Such a group is split into the strongly connected components
of its update relation; each is proved alone with the earlier stages' states as atoms (their
per-step values, inputs of the later stage: `Symbolic(frozen=...)`), and the lowering replaces
those values by read placeholders, which the earlier stage's family materialises.
"""
from __future__ import annotations

from .. import ir, plan
from ..pretty import expr as text
from .proof import Proof, Reason
from .reads import ReadForms, query_states
from .symbolic import Symbolic

READ_AS_A_WHOLE = frozenset({"scan", "semiring"})    # kinds whose state a later stage may read


def strong_components(sym: Symbolic, group: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The strongly connected components of `reads` among the group's states (an update of a
    reading b: a after b), upstream first, declaration order among the ready ones."""
    reach = {s: set(sym.update_deps(s)) & set(group) | {s} for s in group}
    changed = True
    while changed:
        changed = False
        for s in group:
            wider = set().union(*(reach[t] for t in reach[s]))
            if wider != reach[s]:
                reach[s], changed = wider, True
    components: list[tuple[str, ...]] = []
    for s in group:
        component = tuple(t for t in group if t in reach[s] and s in reach[t])
        if component not in components:
            components.append(component)
    ordered: list[tuple[str, ...]] = []
    while len(ordered) < len(components):
        ordered.append(next(c for c in components if c not in ordered and all(
            d in c or any(d in o for o in ordered) for s in c for d in reach[s])))
    return ordered


def order(sym: Symbolic, found: list[tuple[str, ...]], reads: dict[str, ReadForms]):
    """The groups upstream first (declaration order among the ready ones). Returns (ordered
    groups, group -> upstream states, group -> Reason for groups on a cycle of stages)."""
    names = [t.name for t in sym.spec.states]
    owner = {s: g for g in found for s in g}
    upstream = {}
    for g in found:
        needs = {u for s in g for u in query_states(sym, reads[s]) | sym.update_deps(s)}
        upstream[g] = tuple(sorted(needs - set(g), key=names.index))
    ordered: list[tuple[str, ...]] = []
    while len(ordered) < len(found):
        ready = next((g for g in found if g not in ordered
                      and all(owner[u] in ordered for u in upstream[g])), None)
        if ready is None:
            break
        ordered.append(ready)
    cycles = {}
    for g in found:
        if g not in ordered:        # it reads a stage that reads it back
            cycles[g] = _cycle(sym, g, upstream[g], reads)
            ordered.append(g)
    return ordered, upstream, cycles


def _cycle(sym: Symbolic, group: tuple[str, ...], upstream, reads: dict[str, ReadForms]) -> Reason:
    """The refusal of a group on a cycle of stages, at a query reading another stage (or at
    its first update, when only its updates read one)."""
    others = ", ".join(f"`{u}`" for u in upstream)
    query = next((q for s in group for q in reads[s].left + reads[s].right
                  if sym.deps(q) - set(group)), None)
    if query is not None:
        return Reason(f"the query `{text(query)}` of a read of `{group[0]}` reads {others}, "
                      f"whose stage needs `{group[0]}`'s values in turn: no order of stages",
                      query.span, query)
    update = sym.updates[group[0]][0]
    return Reason(f"`{group[0]}` reads {others}, whose stage needs `{group[0]}`'s values in "
                  "turn: no order of stages", update.span, update.value)


def unreadable(proof: Proof, sym: Symbolic, kinds: dict[str, str]) -> Reason | None:
    """Why a later stage cannot take an earlier stage's values as they appear in its roles: a
    read between two updates, or a matrix state read whole (chunk kinds give `q @ S` only)."""
    for node in _role_nodes(proof.group):
        for inner in ir.walk(node):
            if not (isinstance(inner, ir.Name) and inner.ref is not None
                    and inner.ref.kind == "state"):
                continue
            final = len(sym.updates[inner.id])
            if inner.ref.version not in (0, final):
                return Reason(f"`{proof.states[0]}` reads `{inner.id}` between two of its "
                              "updates", inner.span, inner)
            if kinds.get(inner.id) not in READ_AS_A_WHOLE and not _queried(node, inner):
                return Reason(f"`{proof.states[0]}` reads the {kinds.get(inner.id)} state "
                              f"`{inner.id}` as a whole (an earlier stage gives per-step values "
                              "of elementwise states, or `q @ S` reads)", inner.span, inner)
    return None


def _queried(node: ir.Expr, state: ir.Name) -> bool:
    """Whether `state` occurs in `node` only as the matrix of `q @ S` / `S @ q`."""
    for inner in ir.walk(node):
        if isinstance(inner, ir.Binary) and inner.op is ir.Op.MATMUL \
                and state in (inner.left, inner.right):
            return True
    return False


def _role_nodes(group) -> list[ir.Expr]:
    """Every IR expression a Plan group holds (its roles)."""
    found: list[ir.Expr] = []

    def visit(value):
        if isinstance(value, (ir.Num, ir.Name, ir.Unary, ir.Binary, ir.Call)):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, (tuple, list)):
            for item in value:
                visit(item)
        elif isinstance(value, (plan.Write, plan.DeltaStep)):
            for name in value.__dataclass_fields__:
                visit(getattr(value, name))
    for name in getattr(group, "__dataclass_fields__", {}):
        visit(getattr(group, name))
    return found
