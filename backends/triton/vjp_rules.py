"""The vector-Jacobian rules of backends/triton/vjp.py, one function per operation of the language:
given the operation's node, its operand values, its value and the adjoint of its value (Triton
blocks with named axes, render.py), the adjoint contribution of each operand. `Rules` holds the
ones that need the kernel's masks (reductions, the contraction); `missing_rules` names the
operations of a spec that have none (fused_recurrent_bwd.md)."""
from __future__ import annotations

from seqc import ir

from .render import CONTRACTED, Block, TritonRenderer, align, relabelled, union


class NoRule(Exception):
    """An operation of the step has no vector-Jacobian rule here."""


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


def matmul_axes(left: tuple[str, ...], right: tuple[str, ...]) -> tuple[tuple, tuple]:
    """The axes of `a @ b`'s operands with the contracted one renamed as the forward renames it
    (the last of a, the first of b that is not T)."""
    first = next(i for i, d in enumerate(right) if d != "T")
    return left[:-1] + (CONTRACTED,), right[:first] + (CONTRACTED,) + right[first + 1:]


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
        left_dims, right_dims = matmul_axes(left.dims, right.dims)
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
