"""Point at the sub-expression that breaks a parallel form, with a one-line reason.

sympy decides (the update is not affine in its group's states); this pass walks the group's
updates in program order, following `let`s into their definitions, and returns the first node
that is to blame. Each rule is one case:

    f(... h ...)            `h` appears under f              (any function but `sum`)
    d(h) * h                the decay depends on the state  (one side linear in h, one not)
    h * c,  h @ c           product of two states
    x / (... h ...)         division by the state `h`
    h ** p,  x ** h         `h` is raised to a power / appears in an exponent
"""
from __future__ import annotations

from .. import ir
from ..pretty import expr as text
from .proof import Reason
from .symbolic import Symbolic


class Blame:
    def __init__(self, sym: Symbolic, group: tuple[str, ...]):
        self.sym = sym
        self.group = frozenset(group)

    def find(self) -> Reason | None:
        for statement in self.sym.spec.body:
            if isinstance(statement, ir.Update) and statement.state in self.group:
                reason = self.visit(statement.value)
                if reason is not None:
                    return reason
        return None

    def depends(self, node: ir.Expr) -> list[str]:
        found = self.sym.deps(node) & self.group
        return sorted(found, key=lambda s: [t.name for t in self.sym.spec.states].index(s))

    def linear(self, node: ir.Expr) -> bool:
        poly = self.sym.poly(self.sym.convert(node), self.group)
        return poly is not None and poly.total_degree() <= 1

    def visit(self, node: ir.Expr) -> Reason | None:
        states = self.depends(node)
        if not states:
            return None
        if isinstance(node, ir.Name):
            if node.ref.kind == "let":
                return self.visit(self.sym.lets[node.id].value)
            return None
        if isinstance(node, ir.Call) and node.func not in ir.LINEAR_REDUCTIONS:
            return Reason(_under(states[0], node), node.span, node)
        if isinstance(node, ir.Binary):
            reason = self.binary(node)
            if reason is not None:
                return reason
        for child in ir.children(node):
            reason = self.visit(child)
            if reason is not None:
                return reason
        return None

    def binary(self, node: ir.Binary) -> Reason | None:
        left, right = self.depends(node.left), self.depends(node.right)
        if node.op in (ir.Op.MUL, ir.Op.MATMUL) and left and right:
            left_linear, right_linear = self.linear(node.left), self.linear(node.right)
            if not left_linear and not right_linear:
                return self.visit(node.left) or self.visit(node.right)
            if left_linear != right_linear:
                decay, states = (node.right, right) if left_linear else (node.left, left)
                return Reason(f"the decay depends on the state `{states[0]}`", decay.span, decay,
                              help=f"`{text(decay)}` multiplies the state; a parallel form "
                                   "needs it to be computed from inputs only")
            return Reason(f"product of two states (`{left[0]}` and `{right[0]}`)", node.span, node)
        if node.op is ir.Op.DIV and right:
            return Reason(f"division by the state `{right[0]}`", node.span, node)
        if node.op is ir.Op.POW and right:
            return Reason(f"`{right[0]}` appears in an exponent", node.span, node)
        if node.op is ir.Op.POW and left and not self.linear(node):
            return Reason(f"`{left[0]}` is raised to a power", node.span, node)
        return None


def dense_transition(sym: Symbolic, group: tuple[str, ...], low_rank: bool = False) \
        -> Reason | None:
    """The first `A @ h` (or `sum(h, D)`) that mixes a state's entries: not elementwise.
    With `low_rank`, the transition is identity minus low rank but not in the delta-rule form.
    Steps on both sides of a matrix state (`S @ w` and `k @ S`) are named as such."""
    for statement in sym.spec.body:
        if not isinstance(statement, ir.Update) or statement.state not in group:
            continue
        s = statement.state
        for node in _walk_lets(sym, statement.value):
            if isinstance(node, ir.Binary) and node.op is ir.Op.MATMUL and \
                    sym.deps(node) & set(group):
                value_side = _value_side(sym, node, group)
                if value_side is not None and _key_side_step(sym, s):
                    return Reason(f"`{text(node)}` contracts the value dim `{value_side}` of "
                                  f"`{s}` while another step contracts its key dim (`k @ {s}`): "
                                  "the delta-rule forms take the steps of a state on one side",
                                  node.span, node)
                if low_rank:
                    rule = (f"{s} + beta * (v - {s} @ k) * k" if value_side is not None
                            else f"{s} + beta * k * (v - k @ {s})")
                    return Reason(f"the low-rank part `{text(node)}` is not of the delta-rule "
                                  f"form `{rule}` after a decay", node.span, node)
                return Reason(f"the transition mixes entries of `{s}` through "
                              f"`{text(node)}` (not elementwise, not identity minus low rank)",
                              node.span, node)
            if isinstance(node, ir.Call) and node.func in ir.LINEAR_REDUCTIONS \
                    and sym.deps(node) & set(group):
                verb = "sums" if node.func == "sum" else "averages"
                return Reason(f"the transition {verb} `{s}` over `{node.dim}` "
                              "(not elementwise)", node.span, node)
    return None


def _under(state: str, node: ir.Call) -> str:
    """Why a function of the state breaks linearity, in words."""
    if node.relabel is not None:
        return f"`{state}` is relabelled with `as` (a relabelled state has no parallel form)"
    if node.dim is not None and node.func not in ("norm", "l2norm"):
        return (f"`{state}` appears under {node.func} over `{node.dim}`, a reduction over a "
                "dim of the state, which is not linear")
    return f"`{state}` appears under {node.func}"


def _key_side_step(sym: Symbolic, state: str) -> bool:
    """Whether some update of `state` reads it as `k @ S` (contracting its first dim)."""
    for update in sym.updates[state]:
        for node in _walk_lets(sym, update.value):
            if isinstance(node, ir.Binary) and node.op is ir.Op.MATMUL \
                    and isinstance(node.right, ir.Name) and node.right.ref.kind == "state" \
                    and node.right.id == state and not sym.deps(node.left):
                return True
    return False


def _value_side(sym: Symbolic, node: ir.Binary, group) -> str | None:
    """The value dim when `node` is `S @ w`: a matrix state of the group read along its last dim
    by a state-free vector (a value-side step, issue 13 item 3), else None."""
    state = node.left
    if isinstance(state, ir.Name) and state.ref.kind == "state" and state.id in group \
            and len(state.dims or ()) == 2 and not sym.deps(node.right) \
            and node.right.dims == (state.dims[-1],):
        return state.dims[-1]
    return None


def _walk_lets(sym: Symbolic, node: ir.Expr):
    for inner in ir.walk(node):
        yield inner
        if isinstance(inner, ir.Name) and inner.ref.kind == "let" and sym.deps(inner):
            yield from _walk_lets(sym, sym.lets[inner.id].value)
