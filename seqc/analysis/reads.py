"""How outputs read the states: `query @ S`, `S @ query`, or the state itself.

Outputs are looked at with every state-dependent `let` inlined (state-free lets stay names: they
go to the Plan's prelude) and `@` distributed over a sum that holds a state (`q @ (S + X)` is
`q @ S + q @ X`). A read of a state before any update of the step reads the *previous* state
S_{t-1}: the state after step t-1, read with the query of step t (docs/analysis.md). A read
between two updates of the step is *stale*.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from .. import ir
from .symbolic import Symbolic


@dataclass
class ReadForms:
    """Every way the outputs read one state."""
    left: list[ir.Expr] = field(default_factory=list)    # queries q of `q @ S` (contract dims[0])
    right: list[ir.Expr] = field(default_factory=list)   # queries w of `S @ w` (contract dims[-1])
    direct: list[ir.Name] = field(default_factory=list)  # any other read of the state
    previous: list[tuple[str, ir.Name]] = field(default_factory=list)  # (output, name): S_{t-1}
    stale: list[tuple[str, ir.Name]] = field(default_factory=list)   # (output, name) mid-step

    @property
    def matmul_side(self) -> str | None:
        """"left" or "right" when every read is a query of that side, None when there is none."""
        if self.direct or (self.left and self.right):
            return "mixed"
        return "left" if self.left else "right" if self.right else None


def inline(sym: Symbolic, node: ir.Expr) -> ir.Expr:
    """The expression with every state-dependent `let` replaced by its (inlined) value."""
    if isinstance(node, ir.Name):
        if node.ref is not None and node.ref.kind == "let" and sym.deps(node):
            return inline(sym, sym.lets[node.id].value)
        return node
    if isinstance(node, ir.Unary):
        return replace(node, operand=inline(sym, node.operand))
    if isinstance(node, ir.Binary):
        node = replace(node, left=inline(sym, node.left), right=inline(sym, node.right))
        return distribute(sym, node) if node.op is ir.Op.MATMUL else node
    if isinstance(node, ir.Call):
        return replace(node, args=tuple(inline(sym, a) for a in node.args))
    return node


def distribute(sym: Symbolic, node: ir.Binary) -> ir.Expr:
    """`q @ (A + B)` as `q @ A + q @ B` (and `(A - B) @ q` likewise) when the sum holds a state
    and both terms have the sum's dims, and `(c * S) @ q` as `c * (S @ q)` for a state-free
    scalar `c` (`scale * S @ q` parses so), so that each state read is a plain `q @ S`."""
    scaled = _scalar_out(sym, node)
    if scaled is not None:
        return scaled
    for side in ("right", "left"):
        total = getattr(node, side)
        if isinstance(total, ir.Binary) and total.op in (ir.Op.ADD, ir.Op.SUB) \
                and sym.deps(total) and total.left.dims == total.right.dims == total.dims:
            terms = [distribute(sym, replace(node, **{side: term}))
                     for term in (total.left, total.right)]
            return ir.Binary(total.op, *terms, span=node.span, dims=node.dims)
    return node


def _scalar_out(sym: Symbolic, node: ir.Binary) -> ir.Expr | None:
    """`c * (S @ q)` for `(c * S) @ q` or `(S * c) @ q` (and `q @ (c * S)` likewise), `c` a
    state-free scalar and S a state; None for any other product."""
    for side in ("left", "right"):
        held = getattr(node, side)
        if not (isinstance(held, ir.Binary) and held.op is ir.Op.MUL):
            continue
        for factor, other in ((held.left, held.right), (held.right, held.left)):
            if state_name(other) and not sym.deps(factor) and not factor.dims:
                read = replace(node, **{side: other})
                return ir.Binary(ir.Op.MUL, factor, read, span=node.span, dims=node.dims)
    return None


def state_name(node: ir.Expr) -> str | None:
    if isinstance(node, ir.Name) and node.ref is not None and node.ref.kind == "state":
        return node.id
    return None


def query_read(sym: Symbolic, node: ir.Expr) -> tuple[str, str, ir.Expr] | None:
    """(state, side, query) when `node` is `q @ S` or `S @ q` with a query q free of S. A query
    may read other states (a normaliser scaling it): their groups run as earlier stages."""
    if not isinstance(node, ir.Binary) or node.op is not ir.Op.MATMUL:
        return None
    tensor_dims = {t.name: t.dims for t in sym.spec.states}
    state = state_name(node.right)
    if state and state not in sym.deps(node.left) and len(tensor_dims[state]) == 2 \
            and node.left.dims == (tensor_dims[state][0],):
        return state, "left", node.left
    state = state_name(node.left)
    if state and state not in sym.deps(node.right) and len(tensor_dims[state]) == 2 \
            and node.right.dims == (tensor_dims[state][-1],):
        return state, "right", node.right
    return None


def query_states(sym: Symbolic, forms: "ReadForms") -> frozenset[str]:
    """The states the queries of one state's reads depend on: its earlier stages."""
    result: frozenset[str] = frozenset()
    for query in forms.left + forms.right:
        result |= sym.deps(query)
    return result


def read_forms(sym: Symbolic) -> dict[str, ReadForms]:
    forms = {t.name: ReadForms() for t in sym.spec.states}
    for output in sym.spec.outputs:
        _collect(sym, inline(sym, output.value), output.name, forms)
    return forms


def _collect(sym: Symbolic, node: ir.Expr, output: str, forms: dict[str, ReadForms]) -> None:
    read = query_read(sym, node)
    if read is not None:
        state, side, query = read
        target = node.right if side == "left" else node.left
        _check_fresh(sym, target, output, forms)
        getattr(forms[state], side).append(query)
        _collect(sym, query, output, forms)
        return
    state = state_name(node)
    if state:
        _check_fresh(sym, node, output, forms)
        forms[state].direct.append(node)
    for child in ir.children(node):
        _collect(sym, child, output, forms)


def _check_fresh(sym: Symbolic, name: ir.Name, output: str, forms: dict[str, ReadForms]) -> None:
    if name.ref.version == len(sym.updates[name.id]):
        return
    if name.ref.version == 0:
        forms[name.id].previous.append((output, name))
    else:
        forms[name.id].stale.append((output, name))
