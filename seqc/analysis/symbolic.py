"""IR -> sympy, with the states as symbols, and sympy -> IR for the pieces the Plan needs.

The translation keeps named-dim tensors tractable by treating every state-free leaf (a name, a
call, a matmul of state-free operands) as one commutative symbol, an *atom*, that remembers its IR.
A state read through `@` becomes a product with a *functional* symbol: `k @ S` is `<k| * S` and
`S @ w` is `S * |w>`. The commutative model is exact about what the proof needs (the degree of an
update in the states, and whether its coefficients are free of them); the matrix meaning of each
piece is recovered from the atoms' IR.

Updates are composed in program order: a state read at version n > 0 is the sympy form of its
n-th update, and a `let` that depends on a state is inlined. A `let` free of states stays an atom.
"""
from __future__ import annotations

import math
from dataclasses import replace

import sympy as sp

from .. import ir
from ..pretty import expr as text

_SYMPY_FUNCS = {"exp": sp.exp, "log": sp.log, "tanh": sp.tanh, "sqrt": sp.sqrt, "abs": sp.Abs,
                "max": sp.Max, "min": sp.Min}
_IR_FUNCS = {sp.exp: "exp", sp.log: "log", sp.tanh: "tanh", sp.Abs: "abs", sp.Max: "max",
             sp.Min: "min"}


class Symbolic:
    """The sympy view of one checked spec."""

    def __init__(self, spec: ir.Spec, frozen: frozenset[str] = frozenset()):
        self.spec = spec
        # states of earlier stages: their per-step values are atoms here, like inputs
        self.frozen = frozenset(frozen)
        self.lets = {s.name: s for s in spec.body if isinstance(s, ir.Let)}
        self.updates: dict[str, list[ir.Update]] = {t.name: [] for t in spec.states}
        for statement in spec.body:
            if isinstance(statement, ir.Update):
                self.updates[statement.state].append(statement)
        self.state_symbols = {t.name: sp.Symbol(t.name) for t in spec.states}
        self.atoms: dict[sp.Symbol, ir.Expr] = {}          # atom symbol -> its IR
        self.functionals: dict[sp.Symbol, tuple[str, ir.Expr]] = {}   # <a| / |b> -> side, IR
        self._deps: dict[int, tuple[ir.Expr, frozenset[str]]] = {}
        self._composed: dict[tuple[str, int], sp.Expr] = {}

    # ---- dependence on states -----------------------------------------------------------------

    def deps(self, node: ir.Expr) -> frozenset[str]:
        """The states (at their previous-step value) that an expression depends on."""
        key = id(node)
        if key not in self._deps:     # the node is kept with its answer: a transient node (an
            self._deps[key] = (node, self._compute_deps(node))   # inlined output) frees no id
        return self._deps[key][1]

    def _compute_deps(self, node: ir.Expr) -> frozenset[str]:
        if isinstance(node, ir.Name) and node.ref is not None:
            if node.ref.kind == "let":
                return self.deps(self.lets[node.id].value)
            if node.ref.kind == "state":
                if node.id in self.frozen:
                    return frozenset()
                if node.ref.version == 0:
                    return frozenset({node.id})
                return self.deps(self.updates[node.id][node.ref.version - 1].value)
            return frozenset()
        result: frozenset[str] = frozenset()
        for child in ir.children(node):
            result |= self.deps(child)
        return result

    def update_deps(self, state: str) -> frozenset[str]:
        result: frozenset[str] = frozenset()
        for update in self.updates[state]:
            result |= self.deps(update.value)
        return result

    # ---- IR -> sympy ---------------------------------------------------------------------------

    def composed(self, state: str) -> sp.Expr:
        """The state's value after the step, in terms of all states' previous values."""
        return self.version(state, len(self.updates[state]))

    def version(self, state: str, n: int) -> sp.Expr:
        if n == 0:
            return self.state_symbols[state]
        if (state, n) not in self._composed:
            self._composed[(state, n)] = self.convert(self.updates[state][n - 1].value)
        return self._composed[(state, n)]

    def per_update(self, state: str, n: int) -> sp.Expr:
        """The n-th update (1-based) of `state` with the value it reads as the state's symbol."""
        own = {(state, n - 1): self.state_symbols[state]}
        return self.convert(self.updates[state][n - 1].value, own)

    def convert(self, node: ir.Expr, own: dict | None = None) -> sp.Expr:
        own = own or {}
        if not self.deps(node) and _is_leaf(node, self.frozen) and not self._reads_frozen_let(node):
            return self.atom(self.inline_frozen(node))
        if isinstance(node, ir.Num):
            return number(node.value)
        if isinstance(node, ir.Name):
            if node.ref.kind == "let":
                return self.convert(self.lets[node.id].value, own)
            key = (node.id, node.ref.version)
            return own[key] if key in own else self.version(*key)
        if isinstance(node, ir.Unary):
            return -self.convert(node.operand, own)
        if isinstance(node, ir.Binary):
            return self._binary(node, own)
        return self._call(node, own)

    def _binary(self, node: ir.Binary, own: dict) -> sp.Expr:
        if node.op is ir.Op.MATMUL:
            left_free, right_free = not self.deps(node.left), not self.deps(node.right)
            if left_free:
                return self.functional("left", node.left) * self.convert(node.right, own)
            if right_free:
                return self.convert(node.left, own) * self.functional("right", node.right)
            return self.convert(node.left, own) * self.convert(node.right, own)
        left, right = self.convert(node.left, own), self.convert(node.right, own)
        return {ir.Op.ADD: lambda: left + right, ir.Op.SUB: lambda: left - right,
                ir.Op.MUL: lambda: left * right, ir.Op.DIV: lambda: left / right,
                ir.Op.POW: lambda: left ** right}[node.op]()

    def _call(self, node: ir.Call, own: dict) -> sp.Expr:
        args = [self.convert(a, own) for a in node.args]
        if node.func == "sum":                 # linear: a functional over the reduced dim
            return self.functional("sum", ir.Name(node.dim, dims=())) * args[0]
        if node.func == "mean":                # sum / |D|
            size = self.atom(ir.Name(node.dim, dims=(), ref=ir.Ref("dim")))
            return self.functional("sum", ir.Name(node.dim, dims=())) * args[0] / size
        if node.relabel is not None or node.dim is not None and node.func not in ("norm", "l2norm"):
            # opaque (not linear in the operand's states): `max(S, K)` is no sp.Max
            return sp.Function(_opaque_name(node))(*args)
        func = _SYMPY_FUNCS.get(node.func) or sp.Function(node.func)
        return func(*args)

    def _reads_frozen_let(self, node: ir.Expr) -> bool:
        """A `let` name whose value reads an earlier stage's state: inlined, never an atom (the
        Plan's prelude computes only state-free lets)."""
        return bool(self.frozen) and isinstance(node, ir.Name) and node.ref.kind == "let" \
            and self._touches_frozen(node)

    def _touches_frozen(self, node: ir.Expr) -> bool:
        for inner in ir.walk(node):
            if isinstance(inner, ir.Name) and inner.ref is not None:
                if inner.ref.kind == "state" and inner.id in self.frozen:
                    return True
                if inner.ref.kind == "let" and self._touches_frozen(self.lets[inner.id].value):
                    return True
        return False

    def inline_frozen(self, node: ir.Expr) -> ir.Expr:
        """The IR of an atom with every `let` that reads an earlier stage's state inlined."""
        if not self.frozen or not self._touches_frozen(node):
            return node
        if isinstance(node, ir.Name):
            if node.ref.kind == "let":
                return self.inline_frozen(self.lets[node.id].value)
            return node
        if isinstance(node, ir.Unary):
            return replace(node, operand=self.inline_frozen(node.operand))
        if isinstance(node, ir.Binary):
            return replace(node, left=self.inline_frozen(node.left),
                           right=self.inline_frozen(node.right))
        if isinstance(node, ir.Call):
            return replace(node, args=tuple(self.inline_frozen(a) for a in node.args))
        return node

    def atom(self, node: ir.Expr) -> sp.Symbol:
        if isinstance(node, ir.Name) and node.ref is not None and node.ref.kind == "dim":
            symbol = sp.Symbol(node.id, positive=True)
        elif isinstance(node, ir.Name) and node.ref is not None and node.ref.kind == "state":
            symbol = sp.Symbol(f"{node.id}@{node.ref.version}")   # an earlier stage's value
        else:
            symbol = sp.Symbol(text(node) if not isinstance(node, ir.Name) else node.id)
        self.atoms.setdefault(symbol, node)
        return symbol

    def functional(self, side: str, node: ir.Expr) -> sp.Symbol:
        node = self.inline_frozen(node)
        shown = {"left": f"<{text(node)}|", "right": f"|{text(node)}>",
                 "sum": f"sum_{text(node)}"}[side]
        symbol = sp.Symbol(shown)
        self.functionals.setdefault(symbol, (side, node))
        return symbol

    # ---- facts about sympy expressions ----------------------------------------------------------

    def dims(self, expr: sp.Expr) -> set[str]:
        """The named dims an expression's atoms carry (its dims up to order)."""
        result: set[str] = set()
        for symbol in expr.free_symbols:
            node = self.atoms.get(symbol)
            if node is not None and node.dims:
                result |= set(node.dims)
        return result

    def poly(self, expr: sp.Expr, states) -> sp.Poly | None:
        """The expanded expression as a polynomial in the states' symbols, None if it is not one."""
        return sp.expand(expr).as_poly(*[self.state_symbols[s] for s in states])

    def has_functional(self, expr: sp.Expr) -> bool:
        return any(s in self.functionals for s in expr.free_symbols)

    # ---- sympy -> IR -------------------------------------------------------------------------------

    def to_ir(self, expr: sp.Expr) -> ir.Expr:
        """A typed IR expression for a sympy expression over atoms (no states, no functionals)."""
        if expr in self.atoms:
            return self.atoms[expr]
        if expr.is_Number:
            value = float(expr)
            return ir.Num(value, dims=()) if value >= 0 else _neg(ir.Num(-value, dims=()))
        if expr.is_Add:
            return self._sum(expr)
        if expr.is_Mul:
            return self._product(expr)
        if expr.is_Pow:
            return self._power(expr)
        name = _IR_FUNCS.get(expr.func) or getattr(expr.func, "__name__", None)
        if isinstance(expr, sp.Function) and name in ir.FUNCS:
            args = tuple(self.to_ir(a) for a in expr.args)
            return _call(name, args)
        raise ValueError(f"cannot express {expr} in seqc")

    def _sum(self, expr: sp.Expr) -> ir.Expr:
        terms = sorted(expr.args, key=lambda t: (t.could_extract_minus_sign(), sp.default_sort_key(t)))
        result = self.to_ir(terms[0])
        for term in terms[1:]:
            if term.could_extract_minus_sign():
                result = _binary(ir.Op.SUB, result, self.to_ir(-term))
            else:
                result = _binary(ir.Op.ADD, result, self.to_ir(term))
        return result

    def _product(self, expr: sp.Expr) -> ir.Expr:
        coefficient, rest = expr.as_coeff_Mul()
        if coefficient < 0:
            return _neg(self.to_ir(-expr))
        numerator, denominator = sp.fraction(expr)
        if denominator != 1:
            return _binary(ir.Op.DIV, self.to_ir(numerator), self.to_ir(denominator))
        factors = sorted(expr.args, key=lambda f: (not f.is_Number, sp.default_sort_key(f)))
        result = self.to_ir(factors[0])
        for factor in factors[1:]:
            result = _binary(ir.Op.MUL, result, self.to_ir(factor))
        return result

    def _power(self, expr: sp.Expr) -> ir.Expr:
        base, exponent = expr.args
        if exponent == sp.Rational(1, 2):
            return _call("sqrt", (self.to_ir(base),))
        if exponent == sp.Rational(-1, 2):
            return _call("rsqrt", (self.to_ir(base),))
        if exponent.is_Number and exponent < 0:
            return _binary(ir.Op.DIV, ir.Num(1.0, dims=()), self.to_ir(base ** -exponent))
        return _binary(ir.Op.POW, self.to_ir(base), self.to_ir(exponent))


def _opaque_name(node: ir.Call) -> str:
    if node.relabel is not None:
        return "as_" + "_".join(node.relabel)
    return f"{node.func}_over_{node.dim}"


def _is_leaf(node: ir.Expr, frozen: frozenset[str] = frozenset()) -> bool:
    """A state-free node that sympy sees as one symbol (an earlier stage's state is one)."""
    if isinstance(node, ir.Name):
        return node.ref is not None and (node.ref.kind != "state" or node.id in frozen)
    return isinstance(node, ir.Call) or isinstance(node, ir.Binary) and node.op is ir.Op.MATMUL


def number(value: float) -> sp.Expr:
    if math.isinf(value):
        return sp.oo if value > 0 else -sp.oo
    if float(value).is_integer():
        return sp.Integer(int(value))
    return sp.Rational(repr(float(value)))


def broadcast(left: tuple[str, ...], right: tuple[str, ...]) -> tuple[str, ...]:
    return left + tuple(d for d in right if d not in left)


def _binary(op: ir.Op, left: ir.Expr, right: ir.Expr) -> ir.Binary:
    return ir.Binary(op, left, right, dims=broadcast(left.dims or (), right.dims or ()))


def _neg(operand: ir.Expr) -> ir.Unary:
    return ir.Unary(ir.Op.NEG, operand, dims=operand.dims)


def _call(func: str, args: tuple[ir.Expr, ...]) -> ir.Call:
    dims: tuple[str, ...] = ()
    for arg in args:
        dims = broadcast(dims, arg.dims or ())
    return ir.Call(func, args, dims=dims)
