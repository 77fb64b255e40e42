"""Typed IR expressions -> PyTorch source, broadcasting by dim name.

A value with named dims (d1, ..., dn) is held as a tensor `[*lead, d1, ..., dn]`, where `lead` is
whatever leading dims the caller iterates over (`[B, H]` in a step loop, `[B, T, H]` when a whole
sequence is computed at once); params are `[H, d1, ..., dn]` and broadcast against either. All
alignment (permute, unsqueeze) is decided here at emit time from the dims, so the emitted code is
plain tensor arithmetic. Shared by the reference and torch backends.

A `const` is a call-time scalar: the emitted `run` finds its value in `dims` under its name (the
kernel call puts it there, the given value or the computed default), so every backend spells it
`dims["scale"]`, a Python float, and treats it like a dim size: a constant.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from string import ascii_letters
from typing import Callable

from seqc import ir

ELEMENTWISE = {
    "exp": "torch.exp({})", "log": "torch.log({})", "sigmoid": "torch.sigmoid({})",
    "logsigmoid": "F.logsigmoid({})", "tanh": "torch.tanh({})", "softplus": "F.softplus({})",
    "silu": "F.silu({})", "relu": "torch.relu({})", "sqrt": "torch.sqrt({})",
    "rsqrt": "torch.rsqrt({})", "abs": "torch.abs({})",
    "max": "torch.maximum({}, {})", "min": "torch.minimum({}, {})",
    "logaddexp": "torch.logaddexp({}, {})",
}
BINARY = {ir.Op.ADD: "+", ir.Op.SUB: "-", ir.Op.MUL: "*", ir.Op.DIV: "/", ir.Op.POW: "**"}
REDUCTIONS = {      # a reduction over the value's axis `{axis}` (a negative index)
    "sum": "{}.sum(dim={axis})", "mean": "{}.mean(dim={axis})",
    "max": "{}.amax(dim={axis})", "min": "{}.amin(dim={axis})",
    "logsumexp": "torch.logsumexp({}, dim={axis})", "softmax": "torch.softmax({}, dim={axis})",
    "norm": "torch.linalg.vector_norm({}, dim={axis})",
    "l2norm": "F.normalize({}, dim={axis}, eps=1e-12)",
}
# `head`, the head index: one value a head, `[H]`, broadcast like a param's `[H, ...]`
HEAD = 'torch.arange(dims["H"], dtype=compute, device=device)'


def align(code: str, have: tuple[str, ...], want: tuple[str, ...]) -> str:
    """Code turning a value with dims `have` into one broadcastable against dims `want`."""
    order = [d for d in want if d in have]
    if tuple(order) != have:
        n = len(have)
        perm = ", ".join(str(have.index(d) - n) for d in order)
        code = f"_permute({code}, ({perm},))"
    if tuple(order) != want and order:
        index = ", ".join(":" if d in have else "None" for d in want)
        code = f"{code}[..., {index}]"
    elif not order and want:
        code = f"{code}[..., {', '.join('None' for _ in want)}]"
    return code


class TorchRenderer:
    """Render an expression; `name_code(name_node)` says how each name is spelled."""

    def __init__(self, name_code: Callable[[ir.Name], str]):
        self.name_code = name_code

    def __call__(self, node: ir.Expr, want: tuple[str, ...] | None = None) -> str:
        code = self.render(node)
        if want is not None and node.dims != want and not is_constant(node):
            code = align(code, node.dims, want)
        return code

    def render(self, node: ir.Expr) -> str:
        if isinstance(node, ir.Num):
            return repr(float(node.value))
        if isinstance(node, ir.Name):
            if ir.is_head(node):
                return HEAD
            return const_code(node) if _is_const(node) else self.name_code(node)
        if isinstance(node, ir.Unary):
            return f"(-{self.render(node.operand)})"
        if isinstance(node, ir.Binary):
            if node.op is ir.Op.MATMUL:
                return self.matmul(node)
            left, right = self.operands(node, node.left, node.right)
            return f"({left} {BINARY[node.op]} {right})"
        return self.call(node)

    def operands(self, node: ir.Expr, left: ir.Expr, right: ir.Expr) -> tuple[str, str]:
        return self(left, node.dims), self(right, node.dims)

    def call(self, node: ir.Call) -> str:
        if node.relabel is not None:        # the same tensor, its axes renamed in place
            return self.render(node.args[0])
        if node.dim is not None:
            return self.reduce(node)
        if len(node.args) == 2:
            left, right = self.operands(node, *node.args)
            left, right = (constant_tensor(code) if is_constant(arg) else code
                           for code, arg in zip((left, right), node.args))
            return ELEMENTWISE[node.func].format(left, right)
        arg = self.render(node.args[0])
        if is_constant(node.args[0]):       # in the compute dtype: fp64 in an fp64 run
            arg = constant_tensor(arg)
        return ELEMENTWISE[node.func].format(arg)

    def reduce(self, node: ir.Call) -> str:
        arg = node.args[0]
        axis = arg.dims.index(node.dim) - len(arg.dims)
        return REDUCTIONS[node.func].format(self.render(arg), axis=axis)

    def matmul(self, node: ir.Binary) -> str:
        left, right = node.left.dims, node.right.dims
        letters = iter(ascii_letters)
        left_letters = [next(letters) for _ in left]
        right_letters = [left_letters[-1]] + [next(letters) for _ in right[1:]]
        out = left_letters[:-1] + right_letters[1:]
        equation = f"...{''.join(left_letters)},...{''.join(right_letters)}->...{''.join(out)}"
        return f"torch.einsum('{equation}', {self.render(node.left)}, {self.render(node.right)})"


def factored(node: ir.Binary) -> ir.Expr | None:
    """`x @ (a * b)` with `b` free of the contracted dim as `(x @ a) * b` (None if it is not of
    that form): the same sum without forming the product `a * b` over both dims (rwkv6's bonus
    `r @ (u * k * v)`: formed whole over a sequence it is a `[B, T, H, K, V]` tensor)."""
    contracted = node.left.dims[-1]
    right = node.right
    if isinstance(right, ir.Binary) and right.op is ir.Op.MUL:
        for inner, outer in ((right.left, right.right), (right.right, right.left)):
            if inner.dims and inner.dims[0] == contracted and contracted not in outer.dims:
                dims = node.left.dims[:-1] + inner.dims[1:]
                product = ir.Binary(ir.Op.MATMUL, node.left, inner, dims=dims)
                return ir.Binary(ir.Op.MUL, product, outer, dims=union(dims, outer.dims))
    return None


def union(*dims: tuple[str, ...]) -> tuple[str, ...]:
    """The dims of several values in first-seen order."""
    out: list[str] = []
    for ds in dims:
        out.extend(d for d in ds if d not in out)
    return tuple(out)


class FactoringTorchRenderer(TorchRenderer):
    """Renders `x @ (a * b)` as `(x @ a) * b` where `factored` allows: a whole sequence's
    values (the torch backend's parallel form) without the `[B, T, H, K, V]` product."""

    def matmul(self, node: ir.Binary) -> str:
        rewritten = factored(node)
        return super().matmul(node) if rewritten is None else self(rewritten, node.dims)


def is_constant(node: ir.Expr) -> bool:
    """True when an expression holds no tensor: numbers, dim sizes and consts only."""
    return all(n.ref is not None and n.ref.kind in ("dim", "const")
               for n in ir.walk(node) if isinstance(n, ir.Name))


def _is_const(node: ir.Name) -> bool:
    return node.ref is not None and node.ref.kind == "const"


def const_code(node: ir.Name) -> str:
    """A const's value in the emitted `run`: the call passes it in `dims`."""
    return f'dims["{node.id}"]'


def constant_tensor(code: str) -> str:
    """A constant (numbers and dim sizes; a float or a 0-d tensor) as a 0-d tensor of the
    compute dtype, so that it broadcasts and indexes (`[..., None]`) like any other value."""
    return f"torch.as_tensor({code}, dtype=compute, device=device)"


def step_value(render: TorchRenderer, value: ir.Expr, dims: tuple[str, ...],
               expand: bool = True) -> str:
    """One step's value as a `[*lead, *dims]` tensor (`dims` a permutation of the value's dims;
    `lead` the iterated leading dims, e.g. `(B, H)`); `expand=False` when the value already has
    the leading dims."""
    shape = "".join(f", dim_{d}" for d in dims)
    if is_constant(value):
        return f"torch.full((*lead{shape},), {render(value)}, dtype=compute, device=device)"
    code = render(value)
    if value.dims != dims:
        code = align(code, value.dims, dims)
    return f"{code}.expand(*lead{shape})" if expand else code


PRELUDE = '''
def _permute(x, dims):
    """Reorder the trailing len(dims) dims of x (negative indices) and keep the leading ones."""
    lead = x.dim() - len(dims)
    return x.permute(*range(lead), *(lead + len(dims) + d for d in dims))
'''


@dataclass(frozen=True)
class SSAValue:
    """One node of a step's expression DAG written in SSA form (the Triton backward,
    backends/triton/vjp.py; the Newton step's tangents, backends/torch/newton_tangent.py): its
    variable (or constant code), dims, the IR node (None for a name), its operands, and for a
    name the symbol it reads."""
    var: str
    dims: tuple[str, ...]
    node: ir.Expr | None = None
    args: tuple["SSAValue", ...] = ()
    symbol: tuple | None = None          # ("input", x) | ("param", p) | ("state", S, v) | ("let", l)
    constant: bool = False


def shallow(node: ir.Expr, args: tuple[SSAValue, ...]) -> ir.Expr:
    """`node` with each operand replaced by the name of its variable (constants kept)."""
    children = ir.children(node)
    operands = tuple(child if a.constant else ir.Name(a.var, dims=a.dims, ref=ir.Ref("value"))
                     for child, a in zip(children, args))
    if isinstance(node, ir.Unary):
        return replace(node, operand=operands[0])
    if isinstance(node, ir.Binary):
        return replace(node, left=operands[0], right=operands[1])
    return replace(node, args=operands)
