"""The structure of a spec's Jacobian in its states, read from the IR (for the Newton solver).

The Newton solver (seqc/newton.py, docs/newton.md) linearises the step h_t = f(h_{t-1}, x_t) in
the states. Its cost depends on the Jacobian df/dh:

- `diagonal`: every state has the same dims and no value computed from a state is reduced or
  contracted over one of those dims (no `R @ h`, `sum(h, D)`, `norm`, `softmax`, any reduction
  over a state dim, nor `h as [...]` moving entries to another dim):
  entry e of the new states depends on entry e of the old ones only. With S states the Jacobian
  is block diagonal, one S x S block per entry (a 1 x 1 block, a plain elementwise coefficient,
  when S = 1); the linear scan costs O(S^3) per entry and step.
- `dense`: anything else; one N x N block with N the total size of the states, O(N^3) per step.

The rule is conservative: `dense` is always correct, only slower.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import ir
from ..pretty import expr as _text


@dataclass(frozen=True)
class Structure:
    kind: str                 # "diagonal" | "dense"
    states: tuple[str, ...]   # every state of the spec, in declaration order
    reason: str               # why dense ("" when diagonal)

    def describe(self, spec: ir.Spec) -> str:
        """`diagonal Jacobian` / `dense Jacobian (...), O(N^3) a step, N = D + D`."""
        if self.kind == "diagonal":
            block = len(self.states)
            return "diagonal Jacobian" + (f" ({block} x {block} blocks)" if block > 1 else "")
        size = " + ".join(" * ".join(spec.tensor(s).dims) or "1" for s in self.states)
        return f"dense Jacobian ({self.reason}), O(N^3) a step with N = {size}"


def jacobian_structure(spec: ir.Spec) -> Structure:
    states = tuple(s.name for s in spec.states)
    dims = {spec.tensor(s).dims for s in states}
    if len(dims) > 1:
        shapes = ", ".join(f"`{s}` [{', '.join(spec.tensor(s).dims)}]" for s in states)
        return Structure("dense", states, f"the states differ in shape: {shapes}")
    state_dims = set(next(iter(dims)))
    dependent: set[str] = set()            # lets computed from a state
    for statement in spec.body:
        if isinstance(statement, ir.Output):
            continue
        mixing = _mixing(statement.value, state_dims, dependent)
        if mixing is not None:
            return Structure("dense", states, mixing)
        if isinstance(statement, ir.Let) and _reads_state(statement.value, dependent):
            dependent.add(statement.name)
    return Structure("diagonal", states, "")


def _reads_state(expr: ir.Expr, dependent: set[str]) -> bool:
    return any(isinstance(n, ir.Name) and n.ref is not None and
               (n.ref.kind == "state" or (n.ref.kind == "let" and n.id in dependent))
               for n in ir.walk(expr))


def _mixing(expr: ir.Expr, state_dims: set[str], dependent: set[str]) -> str | None:
    """The first sub-expression that reduces or contracts a state-dependent value over a state
    dim, in words; None when there is none."""
    for node in ir.walk(expr):
        over = _reduced_dims(node)
        if not over & state_dims:
            continue
        operands = ir.children(node)
        if any(_reads_state(o, dependent) for o in operands):
            dim = sorted(over & state_dims)[0]
            return f"`{_text(node)}` mixes the state's entries along `{dim}`"
    return None


def _reduced_dims(node: ir.Expr) -> set[str]:
    """The dims a node sums over (matmul's contracted dim; sum / norm / l2norm's dim)."""
    if isinstance(node, ir.Binary) and node.op is ir.Op.MATMUL:
        return {node.left.dims[-1]}
    if isinstance(node, ir.Call) and node.dim is not None:
        return {node.dim}
    if isinstance(node, ir.Call) and node.relabel is not None:   # entries move to other dims
        return {old for old, new in ir.relabelling(node).items() if old != new}
    return set()
