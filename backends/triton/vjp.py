"""Reverse-mode differentiation of one step of a spec, emitted as Triton block code.

`Step` writes the step's statements in SSA form: every operation node of every expression gets a
variable `v<n>` (rendered by render.py exactly as the forward kernel renders it), every state
version its own variable `st_<S>_<version>`. `Adjoint` walks the statements backwards and, for
every operation, emits its vector-Jacobian product by the rule of that operation (`RULES`, one
function per operation: given the operation's node, its operand values, its value and the
adjoint of its value, the adjoint contribution of each operand). The adjoints of names accumulate
(a `let` or a state version read in several places); the adjoint of a state's last version in
the step is dS_t, that of its version 0 is dS_{t-1}; the adjoints of params accumulate over time.

Adjoints are blocks with named axes like the values (render.py). A contribution with an axis its
operand lacks (the operand was broadcast in the forward) is summed over that axis, masked to the
real lanes; one lacking an axis the operand has is broadcast. See fused_recurrent_bwd.md.

An operation without a rule raises `NoRule`; the module then keeps the torch recompute backward.
"""
from __future__ import annotations

from dataclasses import dataclass

from seqc import ir
from seqc.backends.torch_render import SSAValue, is_constant, shallow

from .render import CONTRACTED, Block, Constants, TritonRenderer, align, relabelled, union


class NoRule(Exception):
    """An operation of the step has no vector-Jacobian rule here."""


@dataclass(frozen=True)
class Value(SSAValue):
    """An SSA value (backends/torch_render.py) as a Triton block."""

    @property
    def block(self) -> Block:
        return Block(self.var, self.dims)


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
            self.lines.append(f"{symbol_var(symbol)} = {root.var}")
            self.lets[statement.name] = root.dims
        elif isinstance(statement, ir.Update):
            self.versions[statement.state] += 1
            symbol = ("state", statement.state, self.versions[statement.state])
            dims = self.spec.tensor(statement.state).dims
            self.lines.append(f"{symbol_var(symbol)} = {full(root.block, dims)}")
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


# ---- the rules: node, operand blocks, value block, adjoint block -> operand contributions -----

def product(*blocks: Block | str) -> Block:
    """The elementwise product of blocks (a str is a scalar factor), broadcast by name."""
    parts = [b if isinstance(b, Block) else Block(b, ()) for b in blocks]
    dims = union(*(b.dims for b in parts))
    return Block("(" + " * ".join(align(b, dims) for b in parts) + ")", dims)


def on(block: Block, code: str) -> Block:
    """`code` (with `{}` for the block) over the block's axes."""
    return Block(code.format(block.code), block.dims)


def rule_neg(node, args, y, dy):
    return [on(dy, "(-{})")]


def rule_add(node, args, y, dy):
    return [dy, dy]


def rule_sub(node, args, y, dy):
    return [dy, on(dy, "(-{})")]


def rule_mul(node, args, y, dy):
    left, right = args
    return [product(dy, right), product(dy, left)]


def rule_div(node, args, y, dy):
    left, right = args
    quotient = product(dy, on(right, "(1.0 / {})"))
    return [quotient, on(product(quotient, y), "(-{})")]


def rule_pow(node, args, y, dy):
    base, exponent = args
    if isinstance(node.right, ir.Num):
        e = float(node.right.value)
        slope = {1.0: "1.0", 2.0: f"(2.0 * {base.code})",
                 3.0: f"(3.0 * {base.code} * {base.code})"}.get(e, f"({e!r} * _pow({base.code}, {e - 1.0!r}))")
        return [product(dy, Block(slope, base.dims)), None]
    slope = product(exponent, Block(f"_pow({align(base, union(base.dims, exponent.dims))}, "
                                    f"{align(exponent, union(base.dims, exponent.dims))} - 1.0)",
                                    union(base.dims, exponent.dims)))
    return [product(dy, slope), product(dy, y, on(base, "tl.log({})"))]


UNARY_SLOPES = {        # d f(x) / dx from x (`{x}`) and y = f(x) (`{y}`)
    "exp": "{y}",
    "log": "(1.0 / {x})",
    "sigmoid": "({y} * (1.0 - {y}))",
    "logsigmoid": "tl.sigmoid(-{x})",
    "tanh": "(1.0 - {y} * {y})",
    "softplus": "tl.sigmoid({x})",
    "silu": "(tl.sigmoid({x}) * (1.0 + {x} * (1.0 - tl.sigmoid({x}))))",
    "relu": "tl.where({x} > 0, 1.0, 0.0)",
    "sqrt": "(0.5 / {y})",
    "rsqrt": "(-0.5 * {y} * {y} * {y})",
    "abs": "tl.where({x} > 0, 1.0, tl.where({x} < 0, -1.0, 0.0))",
}


def rule_unary(node, args, y, dy):
    (x,) = args
    return [product(dy, Block(UNARY_SLOPES[node.func].format(x=x.code, y=y.code), x.dims))]


def rule_max(node, args, y, dy, order=">"):
    """torch.maximum / minimum: the whole gradient to the selected operand, half each on a tie."""
    left, right = args
    dims = union(left.dims, right.dims)
    a, b = align(left, dims), align(right, dims)
    first = Block(f"tl.where({a} {order} {b}, 1.0, tl.where({a} == {b}, 0.5, 0.0))", dims)
    second = Block(f"(1.0 - {first.code})", dims)
    return [product(dy, first), product(dy, second)]


def rule_min(node, args, y, dy):
    return rule_max(node, args, y, dy, order="<")


def rule_logaddexp(node, args, y, dy):
    """d/da log(e^a + e^b) = e^(a - y); 0 where y = -inf (both operands -inf)."""
    weights = []
    for operand in args:
        dims = union(operand.dims, y.dims)
        a, yy = align(operand, dims), align(y, dims)
        weights.append(product(dy, Block(f"tl.where({yy} == float('-inf'), 0.0, "
                                         f"tl.exp({a} - {yy}))", dims)))
    return weights


class Rules:
    """The reductions and the contraction need the kernel's masks: a renderer holds them."""

    def __init__(self, render: TritonRenderer):
        self.render = render

    def sum(self, block: Block, dim: str) -> Block:
        return self.render.masked_sum(block.code, block.dims, dim, dim)

    def reduce_to(self, block: Block, dims: tuple[str, ...]) -> Block:
        """`block` summed (over real lanes) over every axis `dims` lacks."""
        for d in [d for d in block.dims if d not in dims]:
            if d == CONTRACTED:
                raise NoRule("a contraction axis left in an adjoint")
            block = self.sum(block, d)
        return block

    def rule_sum(self, node, args, y, dy):
        return [dy]

    def rule_norm(self, node, args, y, dy):
        """y = |x|; dx = dy x / y, 0 where y = 0 (torch.linalg.vector_norm)."""
        (x,) = args
        scaled = Block(f"tl.where({y.code} == 0, 0.0, {align(dy, y.dims)} / {y.code})", y.dims)
        return [product(scaled, x)]

    def rule_l2norm(self, node, args, y, dy):
        """y = x / m, m = max(|x|, eps) (F.normalize): dx = dy / m - x [|x| >= eps] <dy, x> /
        (m^2 |x|)."""
        (x,) = args
        n = on(self.sum(product(x, x), node.dim), "tl.sqrt({})")
        m = on(n, "tl.maximum({}, 1e-12)")
        inner = self.sum(product(dy, x), node.dim)
        coef = Block(f"tl.where({n.code} >= 1e-12, {align(inner, n.dims)} / "
                     f"({m.code} * {m.code} * {n.code}), 0.0)", n.dims)
        first = product(dy, on(m, "(1.0 / {})"))
        dims = union(first.dims, x.dims)
        return [Block(f"({align(first, dims)} - {align(product(x, coef), dims)})", dims)]

    def rule_mean(self, node, args, y, dy):
        """y = sum(x, D) / |D|: dx = dy / |D| on every lane."""
        return [on(dy, f"({{}} / dim_{node.dim})")]

    def rule_max(self, node, args, y, dy):
        """y = max(x, D) (torch.amax): dy shared evenly by the lanes that attain the extremum."""
        (x,) = args
        hits = Block(f"tl.where({align(y, x.dims)} == {x.code}, 1.0, 0.0)", x.dims)
        count = self.sum(hits, node.dim)
        return [product(hits, Block(f"({align(dy, count.dims)} / {count.code})", count.dims))]

    rule_min = rule_max

    def rule_logsumexp(self, node, args, y, dy):
        """y = log sum_D e^x: dx = dy e^(x - y), 0 where y = -inf (every lane -inf)."""
        (x,) = args
        yy = align(y, x.dims)
        return [product(dy, Block(f"tl.where({yy} == float('-inf'), 0.0, tl.exp({x.code} - {yy}))",
                                  x.dims))]

    def rule_softmax(self, node, args, y, dy):
        """y = softmax(x, D): dx = y (dy - sum_D dy y)."""
        inner = self.sum(product(dy, y), node.dim)
        dims = union(dy.dims, y.dims)
        centred = Block(f"({align(dy, dims)} - {align(inner, dims)})", dims)
        return [product(y, centred)]

    def rule_relabel(self, node, args, y, dy):
        """x as [...]: the adjoint is dy under the operand's names."""
        back = {new: old for old, new in ir.relabelling(node).items()}
        return [relabelled(dy, back)]

    def rule_matmul(self, node, args, y, dy):
        """a[..., c] @ b[c, ...] = sum_c a b: da = sum over b's other axes of dy b, db likewise;
        the contracted axis is renamed as the forward renames it, and back."""
        left, right = args
        left_dims = left.dims[:-1] + (CONTRACTED,)
        first = next(i for i, d in enumerate(right.dims) if d != "T")
        right_dims = right.dims[:first] + (CONTRACTED,) + right.dims[first + 1:]
        renamed_left, renamed_right = Block(left.code, left_dims), Block(right.code, right_dims)
        d_left = self.reduce_to(product(dy, renamed_right), left_dims)
        d_right = self.reduce_to(product(dy, renamed_left), right_dims)
        return [Block(align(d_left, left_dims), left.dims),
                Block(align(d_right, right_dims), right.dims)]

    def contributions(self, node: ir.Expr, args, y: Block, dy: Block) -> list:
        if isinstance(node, ir.Unary):
            return rule_neg(node, args, y, dy)
        if isinstance(node, ir.Binary):
            if node.op is ir.Op.MATMUL:
                return self.rule_matmul(node, args, y, dy)
            return BINARY_RULES[node.op](node, args, y, dy)
        if node.relabel is not None:
            return self.rule_relabel(node, args, y, dy)
        if node.dim is not None:
            return getattr(self, f"rule_{node.func}")(node, args, y, dy)
        if node.func in CALL_RULES:
            return CALL_RULES[node.func](node, args, y, dy)
        if node.func in UNARY_SLOPES:
            return rule_unary(node, args, y, dy)
        raise NoRule(f"no vector-Jacobian rule for `{node.func}`")


BINARY_RULES = {ir.Op.ADD: rule_add, ir.Op.SUB: rule_sub, ir.Op.MUL: rule_mul,
                ir.Op.DIV: rule_div, ir.Op.POW: rule_pow}
CALL_RULES = {"max": rule_max, "min": rule_min, "logaddexp": rule_logaddexp}


def missing_rules(spec: ir.Spec) -> list[str]:
    """The operations of the step with no rule here (empty: the fused backward covers it)."""
    missing = []
    for statement in spec.body:
        for node in ir.walk(statement.value):
            if isinstance(node, ir.Call) and not (
                    node.func in UNARY_SLOPES or node.func in CALL_RULES
                    or node.dim is not None or node.relabel is not None):
                missing.append(node.func)
            if isinstance(node, ir.Binary) and node.op not in BINARY_RULES \
                    and node.op is not ir.Op.MATMUL:
                missing.append(node.op.value)
    return sorted(set(missing))


class Adjoint:
    """The backward lines of one step: from the adjoints `dst_<S>` of the states after the step
    (dS_t) and the incoming `do_<o>`, the adjoints of the inputs (`din_<x>`), of the states before
    the step (assigned back to `dst_<S>`: dS_{t-1}), and `dpar_<p>` += the params' share."""

    def __init__(self, step: Step):
        if missing_rules(step.spec):
            raise NoRule(", ".join(missing_rules(step.spec)))
        self.step = step
        self.spec = step.spec
        self.rules = Rules(step.render)
        self.lines: list[str] = []
        self.count = 0
        self.adjoints: dict[tuple, Block] = {}
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
        return Block(var, block.dims)

    def push(self, value: Value, dy: Block) -> None:
        if value.constant:
            return
        if value.symbol is not None:
            self.accumulate(value.symbol, value.dims, dy)
            return
        parts = self.rules.contributions(value.node, tuple(a.block for a in value.args),
                                         value.block, dy)
        for arg, part in zip(value.args, parts):
            if part is not None and not arg.constant:
                self.push(arg, self.temp(self.rules.reduce_to(part, arg.dims)))

    def accumulate(self, symbol: tuple, dims: tuple[str, ...], dy: Block) -> None:
        dy = self.rules.reduce_to(dy, dims)
        if symbol[0] == "param":
            self.lines.append(f"dpar_{symbol[1]} += {align(dy, dims)}")
            return
        var = adjoint_var(symbol)
        if symbol in self.adjoints:
            held = self.adjoints[symbol]
            self.lines.append(f"{var} = {align(held, dims)} + {align(dy, dims)}")
        else:
            self.lines.append(f"{var} = {full(dy, dims)}")
        self.adjoints[symbol] = Block(var, dims)

    def finish(self) -> None:
        """dS_{t-1} into `dst_<S>` (full blocks, the loop carries them); the inputs' adjoints
        (zero when the step does not read one)."""
        for s in self.spec.states:
            held = self.adjoints.get(("state", s.name, 0))
            shape = ", ".join(f"BLOCK_{d}" for d in s.dims)
            code = full(held, s.dims) if held is not None else f"tl.zeros([{shape}], dtype=ACC)"
            self.lines.append(f"dst_{s.name} = {code}")
        for x in self.spec.inputs:
            held = self.adjoints.get(("input", x.name))
            shape = ", ".join(f"BLOCK_{d}" for d in x.dims)
            code = full(held, x.dims) if held is not None else f"tl.zeros([{shape}], dtype=ACC)"
            if code != f"din_{x.name}":
                self.lines.append(f"din_{x.name} = {code}")


def output_dims(output: ir.Output) -> tuple[str, ...]:
    return output.declared_dims if output.declared_dims is not None else output.value.dims
