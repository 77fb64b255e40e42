"""Forward-mode (tangent) rules, one per operation of the language, for the symbolic derivatives
of backends/torch/newton_tangent.py (the Newton solver's step Jacobian) and of the Triton Newton
kernel (backends/triton/newton.py, which spells them in `tl` through its own dialect).

A tangent is a `Term`: code and the dims it has (a subset of its node's: a tangent that does not
vary along a dim broadcasts), or None for zero. A rule takes the node, its operands' SSA values,
their tangents, the node's own value and the dialect, and returns the node's tangent. An
operation without a rule raises `NoRule`.
"""
from __future__ import annotations

from dataclasses import dataclass

from seqc import ir
from seqc.backends.torch_render import TorchRenderer, align


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
