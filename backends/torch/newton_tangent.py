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


class NoRule(Exception):
    """An operation of the step has no tangent rule here."""


@dataclass(frozen=True)
class Term:
    """Code over the trailing named `dims` (leading dims: whatever the values have); `scalar`:
    a Python number or 0-d value, which broadcasts as it is."""
    code: str
    dims: tuple[str, ...] = ()
    scalar: bool = False


ONE = Term("1.0", (), True)


Value = SSAValue


def union(*dims_lists: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for dims in dims_lists:
        out.extend(d for d in dims if d not in out)
    return tuple(out)


class TorchDialect:
    """How tangent code is spelled in torch: values `[*lead, *dims]`, aligned by trailing dims
    (backends/torch_render.py), every reduction and contraction available."""
    where, exp, log = "torch.where", "torch.exp", "torch.log"
    reductions = True
    slopes = {        # d f(x) / dx from x (`{x}`) and y = f(x) (`{y}`)
        "exp": "{y}",
        "log": "(1.0 / {x})",
        "sigmoid": "({y} * (1.0 - {y}))",
        "logsigmoid": "torch.sigmoid(-{x})",
        "tanh": "(1.0 - {y} * {y})",
        "softplus": "torch.sigmoid({x})",
        "silu": "_silu_slope({x})",
        "relu": "({x} > 0).to({x}.dtype)",
        "sqrt": "(0.5 / {y})",
        "rsqrt": "(-0.5 * {y} * {y} * {y})",
        "abs": "torch.sign({x})",
    }

    @staticmethod
    def align(term: Term, dims: tuple[str, ...]) -> str:
        return term.code if term.scalar or term.dims == dims else align(term.code, term.dims,
                                                                         dims)

    @staticmethod
    def power_slope(b: str, e: str, exponent: ir.Expr) -> str:
        return f"({e} * {b} ** ({e} - 1.0))"

    def state(self, term: Term | None, dims: tuple[str, ...], like: str) -> str:
        """A state's tangent as a full tensor shaped like the state `like` (zeros when None)."""
        if term is None:
            return f"torch.zeros_like({like})"
        return f"_widen({self.align(term, dims)}, {like})"


def product(d, *terms: Term) -> Term:
    """The elementwise product, broadcast by dim name; factors 1 fold away."""
    terms = tuple(t for t in terms if t != ONE)
    if not terms:
        return ONE
    if len(terms) == 1:
        return terms[0]
    dims = union(*(t.dims for t in terms))
    return Term("(" + " * ".join(d.align(t, dims) for t in terms) + ")", dims,
                all(t.scalar for t in terms))


def total(d, *terms: Term | None, signs: tuple[str, ...] | None = None) -> Term | None:
    """The sum of terms with signs ("+" / "-"); None terms (zero) drop out."""
    signs = signs or ("+",) * len(terms)
    parts = [(s, t) for s, t in zip(signs, terms) if t is not None]
    if not parts:
        return None
    if len(parts) == 1 and parts[0][0] == "+":
        return parts[0][1]
    dims = union(*(t.dims for _, t in parts))
    code = ""
    for i, (sign, t) in enumerate(parts):
        piece = d.align(t, dims)
        code += (("-" if sign == "-" else "") + piece) if i == 0 else f" {sign} {piece}"
    return Term(f"({code})", dims, all(t.scalar for _, t in parts))


def on(term: Term, code: str) -> Term:
    return Term(code.format(term.code), term.dims, term.scalar)


def term(value) -> Term:
    """An SSA value as a factor of a tangent term."""
    return Term(value.var, () if value.constant else value.dims, value.constant)


def widened(term: Term, value) -> str:
    """The tangent as a torch tensor of the value's full shape (for einsum and reductions,
    which need every dim present)."""
    code = TorchDialect.align(term, value.dims)
    if term.scalar or set(term.dims) != set(value.dims):
        return f"_widen({code}, {value.var})"
    return code


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


# ---- the tangent rules: node, operand values, operand tangents, value -> tangent ---------------

def rule_neg(node, args, tangents, y, d):
    return on(tangents[0], "(-{})")


def rule_add(node, args, tangents, y, d):
    return total(d, *tangents)


def rule_sub(node, args, tangents, y, d):
    return total(d, *tangents, signs=("+", "-"))


def rule_mul(node, args, tangents, y, d):
    (left, right), (dl, dr) = args, tangents
    return total(d, dl and product(d, dl, term(right)), dr and product(d, term(left), dr))


def rule_div(node, args, tangents, y, d):
    """d(l / r) = (dl - y dr) / r."""
    (_, right), (dl, dr) = args, tangents
    top = total(d, dl, dr and product(d, term(y), dr), signs=("+", "-"))
    return product(d, top, on(term(right), "(1.0 / {})"))


def rule_pow(node, args, tangents, y, d):
    """d(b ** e) = e b ** (e - 1) db + y log(b) de."""
    (base, exponent), (db, de) = args, tangents
    dims = union(base.dims, exponent.dims)
    b, e = d.align(term(base), dims), d.align(term(exponent), dims)
    slope = d.power_slope(b, e, node.right)
    parts = [db and product(d, db, Term(slope, dims)),
             de and product(d, de, term(y), on(term(base), d.log + "({})"))]
    return total(d, *parts)


def rule_unary(node, args, tangents, y, d):
    (x,), (dx,) = args, tangents
    return product(d, dx, Term(d.slopes[node.func].format(x=x.var, y=y.var), x.dims))


def rule_max(node, args, tangents, y, d, order=">"):
    """torch.maximum / minimum: the selected operand's tangent, the mean of both on a tie."""
    (left, right), (dl, dr) = args, tangents
    dims = union(left.dims, right.dims, *(t.dims for t in tangents if t is not None))
    a, b = d.align(term(left), dims), d.align(term(right), dims)
    first, second = (d.align(t, dims) if t is not None else "0.0" for t in (dl, dr))
    return Term(f"{d.where}({a} {order} {b}, {first}, {d.where}({a} == {b}, "
                f"0.5 * ({first} + {second}), {second}))", dims)


def rule_min(node, args, tangents, y, d):
    return rule_max(node, args, tangents, y, d, order="<")


def rule_logaddexp(node, args, tangents, y, d):
    """d log(e^a + e^b) = e^(a - y) da + e^(b - y) db; 0 where y = -inf."""
    parts = []
    for operand, dx in zip(args, tangents):
        if dx is None:
            continue
        dims = union(operand.dims, y.dims)
        a, yy = d.align(term(operand), dims), d.align(term(y), dims)
        parts.append(product(d, dx, Term(f"{d.where}({yy} == float('-inf'), 0.0, "
                                         f"{d.exp}({a} - {yy}))", dims)))
    return total(d, *parts)


def axis(value, dim: str) -> int:
    return value.dims.index(dim) - len(value.dims)


def rule_sum(node, args, tangents, y, d):
    (x,), (dx,) = args, tangents
    return Term(f"{widened(dx, x)}.sum(dim={axis(x, node.dim)})", y.dims)


def rule_norm(node, args, tangents, y, d):
    """y = |x|: dy = <x, dx> / y, 0 where y = 0."""
    (x,), (dx,) = args, tangents
    inner = f"({x.var} * {widened(dx, x)}).sum(dim={axis(x, node.dim)})"
    return Term(f"torch.where({y.var} == 0, 0.0, {inner} / {y.var})", y.dims)


def rule_l2norm(node, args, tangents, y, d):
    """y = x / m, m = max(|x|, eps) (F.normalize): dy = dx / m - x [|x| >= eps] <x, dx> /
    (m^2 |x|)."""
    (x,), (dx,) = args, tangents
    return Term(f"_l2norm_tangent({x.var}, {widened(dx, x)}, {axis(x, node.dim)})", x.dims)


def rule_matmul(node, args, tangents, y, d):
    """d(l @ r) = dl @ r + l @ dr (the same contraction)."""
    (left, right), (dl, dr) = args, tangents
    equation = TorchRenderer(lambda n: n.id).matmul(node).split("'")[1]
    parts = []
    if dl is not None:
        parts.append(Term(f"torch.einsum('{equation}', {widened(dl, left)}, {right.var})",
                          y.dims))
    if dr is not None:
        parts.append(Term(f"torch.einsum('{equation}', {left.var}, {widened(dr, right)})",
                          y.dims))
    return total(d, *parts)


BINARY_RULES = {ir.Op.ADD: rule_add, ir.Op.SUB: rule_sub, ir.Op.MUL: rule_mul,
                ir.Op.DIV: rule_div, ir.Op.POW: rule_pow, ir.Op.MATMUL: rule_matmul}
CALL_RULES = {"max": rule_max, "min": rule_min, "logaddexp": rule_logaddexp}
REDUCTION_RULES = {"sum": rule_sum, "norm": rule_norm, "l2norm": rule_l2norm}
TORCH = TorchDialect()


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
