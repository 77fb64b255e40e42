"""The step of a spec and its forward-mode derivative in the states, as plain torch source.

The Newton solver (seqc/newton.py, docs/newton.md) needs, at every position, the step's value
f(h_{t-1}) and its Jacobian in the states. This module writes both from the IR, symbolically, as
straight-line torch code with no autograd graph (see newton_step.md):

- `Values` writes the step in SSA form: every operation node gets a variable `v<n>` (rendered by
  the torch renderer, so broadcasting is the reference's), every state version `st_<S>_<v>`,
  every let `let_<l>`.
- `Tangents` walks the same statements forwards and writes, for every node that depends on a
  state, its tangent (directional derivative) by the rule of its operation (`RULES`: from the
  node's operands, their tangents and its value). The seeds are the tangents of the states before
  the step: a variable `tan_<S>` (a general direction, `jvp`), or the constants 1 and 0 (the
  direction "state j, every entry": one column of every diagonal Jacobian block at once), where the
  zeros and ones fold away, so a diagonal cell's Jacobian costs a handful of elementwise products.

A tangent is a `Term`: code and the dims it has (a subset of its node's: a tangent that does not
vary along a dim broadcasts), or None for zero. An operation without a rule raises `NoRule` and
the solver keeps its autograd Jacobian.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from seqc import ir
from seqc.backends.reference import spelled
from seqc.backends.torch_render import (SSAValue, TorchRenderer, align, constant_tensor,
                                        is_constant, shallow)

from .tangent_rules import (BINARY_RULES, CALL_RULES, ONE, REDUCTION_RULES, TORCH, NoRule, Term,
                            rule_neg, rule_unary)

Value = SSAValue


# ---- the values ---------------------------------------------------------------------------------

class StepRenderer(TorchRenderer):
    """The torch renderer with `tanh` and `sigmoid` spelled `ops.tanh` / `ops.sigmoid`: `ops` is
    torch, or (compile=True) `EXP_FORMS`, the same functions through exp, which inductor's C++
    code evaluates ~2x faster than its own tanh (measured: docs/benchmarks.md)."""

    def call(self, node: ir.Call) -> str:
        if node.func in ("tanh", "sigmoid") and not is_constant(node.args[0]):
            return f"ops.{node.func}({self.render(node.args[0])})"
        return super().call(node)


class Values:
    """The step's statements in SSA form (`lines`) and the Value of each statement's root."""

    def __init__(self, spec: ir.Spec):
        self.spec = spec
        self.lines: list[tuple[str, str]] = []       # (variable, code)
        self.count = 0
        self.lets: dict[str, Value] = {}
        self.versions = {s.name: 0 for s in spec.states}
        self.statements: list[tuple[ir.Statement, Value, tuple]] = []
        self.render = StepRenderer(lambda n: n.id if n.ref.kind == "value" else spelled(n))
        for statement in spec.body:
            self.add(statement)

    def add(self, statement) -> None:
        root = self.value(statement.value)
        if isinstance(statement, ir.Let):
            symbol = ("let", statement.name)
            code = constant_tensor(root.var) if root.constant else root.var
            self.lines.append((f"let_{statement.name}", code))
            self.lets[statement.name] = replace(root, var=f"let_{statement.name}",
                                                constant=False)
        elif isinstance(statement, ir.Update):
            self.versions[statement.state] += 1
            symbol = ("state", statement.state, self.versions[statement.state])
            dims = self.spec.tensor(statement.state).dims
            self.lines.append((state_var(symbol), full_state(root, dims)))
        else:
            symbol = ("output", statement.name)
            dims = output_dims(statement)
            self.lines.append((f"out_{statement.name}", full_output(root, dims)))
        self.statements.append((statement, root, symbol))

    def value(self, node: ir.Expr) -> Value:
        if isinstance(node, ir.Num) or is_constant(node):
            return Value(self.render(node), (), constant=True)
        if isinstance(node, ir.Name):
            return self.name(node)
        args = tuple(self.value(child) for child in ir.children(node))
        var = f"v{self.count}"
        self.count += 1
        self.lines.append((var, self.render(shallow(node, args))))
        return Value(var, node.dims, node, args)

    def name(self, node: ir.Name) -> Value:
        kind = node.ref.kind
        if kind == "let":
            held = self.lets[node.id]
            return Value(held.var, held.dims, symbol=("let", node.id))
        dims = self.spec.tensor(node.id).dims
        if kind == "state":
            symbol = ("state", node.id, node.ref.version)
            return Value(state_var(symbol), dims, symbol=symbol)
        return Value(spelled(node), dims, symbol=(kind, node.id))

    def final_states(self) -> list[str]:
        return [state_var(("state", s.name, self.versions[s.name])) for s in self.spec.states]


def state_var(symbol: tuple) -> str:
    return f"st_{symbol[1]}_{symbol[2]}"


def full_state(root: Value, dims: tuple[str, ...]) -> str:
    """A state's new value (an output's value) as a full `[*lead, *dims]` tensor."""
    shape = "".join(f", dim_{d}" for d in dims)
    if root.constant:
        return f"torch.full((*lead{shape},), {root.var}, dtype=compute, device=device)"
    code = align(root.var, root.dims, dims) if root.dims != dims else root.var
    return f"{code}.expand(*lead{shape})"


full_output = full_state


def output_dims(output: ir.Output) -> tuple[str, ...]:
    return output.declared_dims if output.declared_dims is not None else output.value.dims



class Tangents:
    """The tangent lines of the step (`values`: its SSA form, `Values` here or the Triton
    backward's `Step`) for seeds {state: Term | None} (the tangents of the states before the
    step), spelled in `dialect`; `result[S]` the tangent of S after the step (a Term or None)."""

    def __init__(self, values, seeds: dict[str, Term | None], prefix: str = "t",
                 dialect=TORCH):
        self.values = values
        self.d = dialect
        self.lines: list[tuple[str, str]] = []
        self.prefix = prefix
        self.count = 0
        self.held: dict[tuple, Term | None] = {("state", s, 0): t for s, t in seeds.items()}
        self.cache: dict[int, Term | None] = {}
        for statement, root, symbol in values.statements:
            if symbol[0] == "output":
                continue
            self.held[symbol] = self.tangent(root)
        self.result = {s: self.held[("state", s, values.versions[s])] for s in seeds}

    def tangent(self, value) -> Term | None:
        if value.constant:
            return None
        if value.symbol is not None:
            return self.held.get(value.symbol)
        if id(value) in self.cache:
            return self.cache[id(value)]
        tangents = tuple(self.tangent(a) for a in value.args)
        code = None if all(t is None for t in tangents) else self.rule(value, tangents)
        if code is not None and not code.scalar and not code.code.isidentifier():
            var = f"{self.prefix}{self.count}"
            self.count += 1
            self.lines.append((var, code.code))
            code = Term(var, code.dims)
        self.cache[id(value)] = code
        return code

    def rule(self, value, tangents) -> Term | None:
        node, args = value.node, value.args
        if isinstance(node, ir.Unary):
            return rule_neg(node, args, tangents, value, self.d)
        if isinstance(node, ir.Binary):
            if node.op is ir.Op.MATMUL and not self.d.reductions:
                raise NoRule("no tangent rule for `@` here")
            return BINARY_RULES[node.op](node, args, tangents, value, self.d)
        if node.func in REDUCTION_RULES:
            if not self.d.reductions:
                raise NoRule(f"no tangent rule for `{node.func}` here")
            return REDUCTION_RULES[node.func](node, args, tangents, value, self.d)
        if node.func in CALL_RULES:
            return CALL_RULES[node.func](node, args, tangents, value, self.d)
        if node.func in self.d.slopes:
            return rule_unary(node, args, tangents, value, self.d)
        raise NoRule(f"no tangent rule for `{node.func}`")


# ---- what the template renders ------------------------------------------------------------------

@dataclass
class Emitted:
    step_lines: list[str]                 # the states after the step, from those before
    new_states: list[str]                 # their variables
    output_lines: list[str]               # the outputs, from the states before and after
    diagonal_lines: list[str] | None      # the step and its diagonal blocks (None: no rules)
    diagonal_columns: list[list[str]]     # [j][i]: d new_i / d prev_j, full tensors
    jvp_lines: list[str] | None           # the step and its general tangent (None: no rules)
    jvp_results: list[str]


IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def straight_line(lines, results: list[str], given: list[str]) -> list[str]:
    """The lines (variable, code) that `results` (code) need, and only those, in order,
    taking the variables `given` as known."""
    defined = {var for var, _ in lines}
    wanted = {w for code in results for w in IDENTIFIER.findall(code)} - set(given)
    needed = set()
    for var, code in reversed(lines):
        if var in wanted and var not in needed:
            needed.add(var)
            wanted |= {w for w in IDENTIFIER.findall(code) if w in defined} - set(given)
    return [f"{var} = {code}" for var, code in lines if var in needed]


def emit(spec: ir.Spec, diagonal: bool) -> Emitted:
    values = Values(spec)
    names = [s.name for s in spec.states]
    new = values.final_states()
    dims = {s.name: s.dims for s in spec.states}
    before = [state_var(("state", s, 0)) for s in names]
    outputs = [f"out_{o.name}" for o in spec.outputs]
    diagonal_lines, columns = None, []
    if diagonal:
        try:
            tangent_lines = []
            for j, seed in enumerate(names):
                column = Tangents(values, {s: ONE if s == seed else None for s in names},
                                  prefix=f"c{j}_")
                tangent_lines += column.lines
                columns.append([TORCH.state(column.result[s], dims[s], v)
                                for s, v in zip(names, new)])
            diagonal_lines = straight_line(values.lines + tangent_lines,
                                           new + [c for col in columns for c in col], before)
        except NoRule:
            diagonal_lines, columns = None, []
    try:
        general = Tangents(values, {s: Term(f"tan_{s}", dims[s]) for s in names})
        jvp_results = [TORCH.state(general.result[s], dims[s], v) for s, v in zip(names, new)]
        jvp_lines = straight_line(values.lines + general.lines, new + jvp_results, before)
    except NoRule:
        jvp_lines, jvp_results = None, []
    return Emitted(straight_line(values.lines, new, before), new,
                   straight_line(values.lines, outputs, before + new), diagonal_lines, columns,
                   jvp_lines, jvp_results)


PRELUDE = '''
class EXP_FORMS:
    """tanh and sigmoid through exp (compile=True): 1 - 2 / (e^2x + 1), 1 / (1 + e^-x); both
    saturate correctly where e^x overflows."""

    @staticmethod
    def tanh(x):
        return 1.0 - 2.0 / (torch.exp(2.0 * x) + 1.0)

    @staticmethod
    def sigmoid(x):
        return 1.0 / (1.0 + torch.exp(-x))


def _widen(x, like):
    """x (a tensor or a number) broadcast to the shape of x and `like` together."""
    x = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    return x.expand(torch.broadcast_shapes(x.shape, like.shape))


def _silu_slope(x):
    s = torch.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


def _l2norm_tangent(x, dx, dim):
    """The tangent of F.normalize(x, dim=dim, eps=1e-12) in the direction dx."""
    n = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
    m = n.clamp(min=1e-12)
    inner = (x * dx).sum(dim=dim, keepdim=True)
    return dx / m - x * torch.where(n >= 1e-12, inner / (m * m * n), 0.0)
'''
