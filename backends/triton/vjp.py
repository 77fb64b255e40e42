"""Reverse-mode differentiation of one step of a spec, emitted as Triton block code.

`Step` writes the step's statements in SSA form: every operation node of every expression gets a
variable `v<n>` (rendered by render.py exactly as the forward kernel renders it), every state
version its own variable `st_<S>_<version>`. `Adjoint` walks the statements backwards and, for
every operation, emits its vector-Jacobian product by the rule of that operation (vjp_rules.py, one
function per operation: given the operation's node, its operand values, its value and the
adjoint of its value, the adjoint contribution of each operand). The adjoints of names accumulate
(a `let` or a state version read in several places); the adjoint of a state's last version in
the step is dS_t, that of its version 0 is dS_{t-1}; the adjoints of params accumulate over time.

Adjoints are blocks with named axes like the values (render.py). A contribution with an axis its
operand lacks (the operand was broadcast in the forward) is summed over that axis, masked to the
real lanes; one lacking an axis the operand has is broadcast. See fused_recurrent_bwd.md.

A matrix param contracted by `@` (gru's, lstm's recurrent weights) may be named in `outer`: its
adjoint is then not accumulated in the kernel; the adjoint walk records the two per-step factors
whose outer product it is (`OuterTerm`), the kernel stores them, and the host reduces
sum over batch and time of their product as one einsum (a batched matmul).

An operation without a rule raises `NoRule`; the module then keeps the torch recompute backward.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from seqc import ir
from seqc.backends.torch_render import SSAValue, is_constant, shallow

from .render import Block, Constants, TritonRenderer, align
from .vjp_rules import (UNARY_SLOPES, NoRule, Rules, matmul_axes,  # noqa: F401 (re-exported)
                        missing_rules)


@dataclass(frozen=True)
class Value(SSAValue):
    """An SSA value (backends/torch_render.py) as a Triton block."""

    @property
    def block(self) -> Block:
        return Block(self.var, self.dims)


@dataclass(frozen=True)
class OuterTerm:
    """One `@` of a param in `outer`: the param's adjoint share of a step is the product of the
    factors `dy` (the adjoint of the `@`'s value) and `other` (its other operand), summed over
    every axis the param lacks. `letters` spells each block's axes (the contracted axis under
    its own name) for the host's einsum."""
    param: str
    dy: Block
    other: Block
    letters: tuple[str, str, str]       # dy, other, param


def einsum_letters(*axes: tuple[str, ...]) -> tuple[str, ...]:
    """Einsum subscripts of several axis lists, one letter per distinct axis name (b, t, h are
    left for batch, time and head)."""
    alphabet = iter("acdefgijklmnopqrsuvwxyz")
    letter = {}
    for names in axes:
        for name in names:
            if name not in letter:
                letter[name] = next(alphabet)
    return tuple("".join(letter[n] for n in names) for names in axes)


def symbol_var(symbol: tuple) -> str:
    """The variable holding a symbol's value in the backward kernel."""
    kind, name = symbol[0], symbol[1]
    if kind == "state":
        return f"st_{name}_{symbol[2]}"
    return {"input": "in_", "param": "par_", "let": "let_"}[kind] + name


def adjoint_var(symbol: tuple) -> str:
    return "d" + symbol_var(symbol) if symbol[0] != "param" else f"dpar_{symbol[1]}"


class Step:
    """The step's statements in SSA form (`lines`), and the Value of every statement."""

    def __init__(self, spec: ir.Spec, constants: Constants):
        self.spec = spec
        self.lines: list[str] = []
        self.dims: dict[str, tuple[str, ...]] = {}     # variable -> its block's axes
        self.count = 0
        self.lets: dict[str, tuple[str, ...]] = {}
        self.versions = {s.name: 0 for s in spec.states}
        self.statements: list[tuple[ir.Statement, Value, tuple]] = []
        self.render = TritonRenderer(self.placeholder, constants)
        for statement in spec.body:
            self.add(statement)

    @staticmethod
    def placeholder(node: ir.Name) -> Block:
        """Operands are rendered as names of their variables (`Ref("value")`)."""
        return Block(node.id, node.dims)

    def add(self, statement) -> None:
        root = self.value(statement.value)
        if isinstance(statement, ir.Let):
            symbol = ("let", statement.name)
            value = self.render.bound(statement.value).code if root.constant else root.var
            self.lines.append(f"{symbol_var(symbol)} = {value}")
            self.dims[symbol_var(symbol)] = root.dims
            self.lets[statement.name] = root.dims
        elif isinstance(statement, ir.Update):
            self.versions[statement.state] += 1
            symbol = ("state", statement.state, self.versions[statement.state])
            dims = self.spec.tensor(statement.state).dims
            self.lines.append(f"{symbol_var(symbol)} = {full(root.block, dims)}")
            self.dims[symbol_var(symbol)] = dims
        else:
            symbol = ("output", statement.name)
        self.statements.append((statement, root, symbol))

    def final_version(self, state: str) -> int:
        return self.versions[state]

    def value(self, node: ir.Expr) -> Value:
        if isinstance(node, ir.Num) or is_constant(node) or ir.is_head(node):
            return Value(self.render(node).code, (), constant=True)
        if isinstance(node, ir.Name):
            return self.name(node)
        args = tuple(self.value(child) for child in ir.children(node))
        block = self.render(shallow(node, args))
        var = f"v{self.count}"
        self.count += 1
        self.lines.append(f"{var} = {block.code}")
        self.dims[var] = block.dims
        return Value(var, block.dims, node, args)

    def name(self, node: ir.Name) -> Value:
        kind = node.ref.kind
        if kind == "let":
            symbol, dims = ("let", node.id), self.lets[node.id]
        elif kind == "state":
            symbol, dims = ("state", node.id, node.ref.version), self.spec.tensor(node.id).dims
        else:
            symbol, dims = (kind, node.id), self.spec.tensor(node.id).dims
        return Value(symbol_var(symbol), dims, symbol=symbol)


def full(block: Block, dims: tuple[str, ...]) -> str:
    """`block` as a block with exactly the axes `dims` (broadcast when it lacks some)."""
    code = align(block, dims)
    if set(block.dims) != set(dims) and dims:
        shape = ", ".join(f"BLOCK_{d}" for d in dims)
        code = f"({code} + tl.zeros([{shape}], dtype=ACC))"
    elif not dims and not block.dims:
        code = f"({code} + tl.zeros([], dtype=ACC))"
    return code



class Adjoint:
    """The backward lines of one step: from the adjoints `dst_<S>` of the states after the step
    (dS_t) and the incoming `do_<o>`, the adjoints of the inputs (`din_<x>`), of the states before
    the step (assigned back to `dst_<S>`: dS_{t-1}), and `dpar_<p>` += the params' share."""

    def __init__(self, step: Step, outer: frozenset[str] = frozenset()):
        if missing_rules(step.spec):
            raise NoRule(", ".join(missing_rules(step.spec)))
        self.step = step
        self.spec = step.spec
        self.rules = Rules(step.render)
        self.outer = outer
        self.outer_terms: list[OuterTerm] = []
        self.lines: list[str] = []
        self.dims: dict[str, tuple[str, ...]] = {}     # variable -> its block's axes
        self.count = 0
        self.adjoints: dict[tuple, Block] = {}
        self.sole: dict[tuple, str] = {}   # symbol -> the one variable its adjoint is, if so
        for s in self.spec.states:
            symbol = ("state", s.name, step.final_version(s.name))
            self.adjoints[symbol] = Block(f"dst_{s.name}", s.dims)
        for statement, root, symbol in reversed(step.statements):
            if symbol[0] == "output":
                dims = output_dims(statement)
                self.push(root, Block(f"do_{statement.name}", dims))
            elif symbol in self.adjoints:
                self.push(root, self.adjoints.pop(symbol))
        self.finish()

    def temp(self, block: Block) -> Block:
        """`block` in a variable of its own (a variable already is one)."""
        if block.code.isidentifier():
            return block
        var = f"g{self.count}"
        self.count += 1
        self.lines.append(f"{var} = {block.code}")
        self.dims[var] = block.dims
        return Block(var, block.dims)

    def push(self, value: Value, dy: Block) -> None:
        if value.constant:
            return
        if value.symbol is not None:
            self.accumulate(value.symbol, value.dims, dy)
            return
        parts = self.rules.contributions(value.node, tuple(a.block for a in value.args),
                                         value.block, dy)
        if self.outer_param(value) is not None:
            parts = self.record_outer(value, dy, parts)
        for arg, part in zip(value.args, parts):
            if part is not None and not arg.constant:
                self.push(arg, self.temp(self.rules.reduce_to(part, arg.dims)))

    def outer_param(self, value: Value) -> int | None:
        """The operand index of a param in `outer` that `value` (an `@`) contracts with a
        per-step operand, or None."""
        node = value.node
        if not (isinstance(node, ir.Binary) and node.op is ir.Op.MATMUL):
            return None
        for i, arg in enumerate(value.args):
            other = value.args[1 - i]
            if (arg.symbol is not None and arg.symbol[0] == "param" and arg.symbol[1] in self.outer
                    and not other.constant and (other.symbol or ("",))[0] != "param"):
                return i
        return None

    def record_outer(self, value: Value, dy: Block, parts: list) -> list:
        """The param operand's contribution as an OuterTerm (its factors in variables) instead
        of a block to accumulate; the other operand's contribution unchanged."""
        i = self.outer_param(value)
        param, other = value.args[i], value.args[1 - i]
        left_axes, right_axes = matmul_axes(value.args[0].dims, value.args[1].dims)
        param_axes, other_axes = (left_axes, right_axes) if i == 0 else (right_axes, left_axes)
        if not re.fullmatch(r"g\d+", dy.code):     # a variable of its own: dst_<S> changes
            dy = self.temp(Block(f"({dy.code})", dy.dims))
        letters = einsum_letters(dy.dims, other_axes, param_axes)
        self.outer_terms.append(OuterTerm(param.symbol[1], dy, other.block, letters))
        return [None if k == i else part for k, part in enumerate(parts)]

    def accumulate(self, symbol: tuple, dims: tuple[str, ...], dy: Block) -> None:
        dy = self.rules.reduce_to(dy, dims)
        if symbol[0] == "param":
            self.lines.append(f"dpar_{symbol[1]} += {align(dy, dims)}")
            return
        var = adjoint_var(symbol)
        if symbol in self.adjoints:
            held = self.adjoints[symbol]
            self.lines.append(f"{var} = {align(held, dims)} + {align(dy, dims)}")
            self.sole.pop(symbol, None)
        else:
            self.lines.append(f"{var} = {full(dy, dims)}")
            if dy.code.isidentifier() and dy.dims == dims:
                self.sole[symbol] = dy.code
        self.adjoints[symbol] = Block(var, dims)
        self.dims[var] = dims

    def input_holding(self, var: str, dims: tuple[str, ...]) -> str | None:
        """The input whose whole adjoint in the step is the variable `var` (the kernel stores
        it), or None."""
        return next((s[1] for s, held in self.sole.items()
                     if s[0] == "input" and held == var
                     and self.spec.tensor(s[1]).dims == dims), None)

    def finish(self) -> None:
        """dS_{t-1} into `dst_<S>` (full blocks, the loop carries them); the inputs' adjoints
        (zero when the step does not read one)."""
        for s in self.spec.states:
            held = self.adjoints.get(("state", s.name, 0))
            shape = ", ".join(f"BLOCK_{d}" for d in s.dims)
            code = full(held, s.dims) if held is not None else f"tl.zeros([{shape}], dtype=ACC)"
            self.lines.append(f"dst_{s.name} = {code}")
            self.dims[f"dst_{s.name}"] = s.dims
        for x in self.spec.inputs:
            held = self.adjoints.get(("input", x.name))
            shape = ", ".join(f"BLOCK_{d}" for d in x.dims)
            code = full(held, x.dims) if held is not None else f"tl.zeros([{shape}], dtype=ACC)"
            if code != f"din_{x.name}":
                self.lines.append(f"din_{x.name} = {code}")
                self.dims[f"din_{x.name}"] = x.dims


def output_dims(output: ir.Output) -> tuple[str, ...]:
    return output.declared_dims if output.declared_dims is not None else output.value.dims
