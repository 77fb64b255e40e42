"""Typed IR expressions -> Triton (`tl`) code over register blocks, broadcasting by dim name.

A value is a `Block`: its code and the names of its axes. A value with dims (K,) is a 1-D block of
`BLOCK_K` lanes, (K, V) a 2-D block; kernels that hold a run of time steps add the pseudo-dim `T`
(the steps of the current time block) as another named axis. Alignment inserts `None` axes and
`tl.permute`s by name, decided at emit time, so the emitted code is plain block arithmetic.

Padded lanes (a dim of 48 held in a block of 64) may hold anything finite or not; every reduction
(`sum`, `norm`, the contraction of `@`) therefore selects the real lanes with `tl.where` on the
dim's mask, and loads / stores are masked. Constant sub-expressions that read dim sizes or consts
(`K ** -0.5`, `0.7 * scale`) are computed on the host in fp64 and passed to the kernel as fp64
arguments (`c0: tl.float64`), used as 0-d blocks of the compute dtype ACC (`in_acc`). A number
literal inside an expression takes the dtype of the block it meets, exactly; bound to a name it
would be an fp32 tensor, so a bare number assigned to a name is made an ACC block too (`bound`):
an fp64 call sees its constants exact, a 32- or 16-bit call the same fp32 values as before.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from seqc import ir
from seqc.backends.torch_render import TorchRenderer, is_constant, union

UNARY = {
    "exp": "tl.exp({})", "log": "tl.log({})", "sigmoid": "tl.sigmoid({})",
    "logsigmoid": "_logsigmoid({})", "tanh": "_tanh({})", "softplus": "_softplus({})",
    "silu": "_silu({})", "relu": "tl.maximum({}, 0.0)", "sqrt": "tl.sqrt({})",
    "rsqrt": "tl.rsqrt({})", "abs": "tl.abs({})",
}
BINARY_FUNCS = {"max": "tl.maximum({}, {})", "min": "tl.minimum({}, {})",
                "logaddexp": "_logaddexp({}, {})"}
BINARY = {ir.Op.ADD: "+", ir.Op.SUB: "-", ir.Op.MUL: "*", ir.Op.DIV: "/"}
CONTRACTED = "__c"      # the axis `@` contracts, renamed so that R[D, D] @ h[D] aligns by name
HEAD = "i_h.to(ACC)"    # `head`, the head index: every kernel's program knows its head `i_h`
# reductions over the real lanes of an axis: the function (REDUCTION_HELPERS, or tl's) and the
# value padded lanes hold so that they do not count
MASKED_REDUCTIONS = {"max": ("tl.max", 'float("-inf")'), "min": ("tl.min", 'float("inf")'),
                     "logsumexp": ("_logsumexp", 'float("-inf")'),
                     "softmax": ("_softmax", 'float("-inf")')}


def in_acc(code: str) -> str:
    """A scalar (a Python float, or a 0-d block of any float dtype) as a 0-d block of ACC."""
    return f"tl.full((), {code}, ACC)"


@dataclass(frozen=True)
class Block:
    code: str
    dims: tuple[str, ...]


def index(code: str, axis: int, ndim: int) -> str:
    """A 1-D block placed on `axis` of an `ndim`-D block."""
    if ndim <= 1:
        return code
    return f"{code}[{', '.join(':' if i == axis else 'None' for i in range(ndim))}]"


def align(block: Block, want: tuple[str, ...]) -> str:
    """Code of `block` broadcastable against a block with axes `want` (a superset, any order)."""
    have = block.dims
    if have == want or not have:
        return block.code
    order = tuple(d for d in want if d in have)
    code = block.code
    if order != have:
        perm = ", ".join(str(have.index(d)) for d in order)
        code = f"tl.permute({code}, ({perm}))"
    if order != want:
        code = f"{code}[{', '.join(':' if d in have else 'None' for d in want)}]"
    return code


def relabelled(block: Block, names: dict[str, str]) -> Block:
    """`x as [...]`: the same lanes under new axis names (the dims have equal sizes, so equal
    blocks: fused kernels size a block by its dim; blockwise.py gives linked dims one size)."""
    return Block(block.code, tuple(names.get(d, d) for d in block.dims))


class Constants:
    """Constant sub-expressions over dim sizes, computed on the host: name -> Python code."""

    def __init__(self):
        self.host: dict[str, str] = {}
        self._host_expr = TorchRenderer(lambda n: f'torch.tensor(float(dims["{n.id}"]), '
                                                  f'dtype=torch.float64)')

    def lift(self, node: ir.Expr) -> str:
        code = f"float({self._host_expr(node)})"
        for name, existing in self.host.items():
            if existing == code:
                return name
        name = f"c{len(self.host)}"
        self.host[name] = code
        return name


class TritonRenderer:
    """Render an expression to a Block; `name_block(name_node)` says how each name is held."""

    def __init__(self, name_block: Callable[[ir.Name], Block], constants: Constants,
                 mask: Callable[[str], str] = lambda d: f"mask_{d}"):
        self.name_block = name_block
        self.constants = constants
        self.mask = mask

    def __call__(self, node: ir.Expr) -> Block:
        if isinstance(node, ir.Num):
            return Block(repr(float(node.value)), ())
        if is_constant(node):
            return Block(in_acc(self.constants.lift(node)), ())
        if ir.is_head(node):
            return Block(HEAD, ())
        if isinstance(node, ir.Name):
            return self.name_block(node)
        if isinstance(node, ir.Unary):
            inner = self(node.operand)
            return Block(f"(-{inner.code})", inner.dims)
        if isinstance(node, ir.Binary):
            if node.op is ir.Op.MATMUL:
                return self.matmul(node)
            if node.op is ir.Op.POW:
                return self.power(node)
            left, right = self(node.left), self(node.right)
            dims = union(left.dims, right.dims)
            return Block(f"({align(left, dims)} {BINARY[node.op]} {align(right, dims)})", dims)
        return self.call(node)

    def bound(self, node: ir.Expr) -> Block:
        """`node` as the value assigned to a name: a bare number as an ACC block (Triton makes a
        literal assigned to a name an fp32 tensor, which would round it in an fp64 call)."""
        block = self(node)
        return Block(in_acc(block.code), ()) if isinstance(node, ir.Num) else block

    def power(self, node: ir.Binary) -> Block:
        base = self(node.left)
        exponent = node.right
        if isinstance(exponent, ir.Num) and float(exponent.value) in (1.0, 2.0, 3.0):
            return Block("(" + " * ".join([base.code] * int(exponent.value)) + ")", base.dims)
        power = self(exponent)
        dims = union(base.dims, power.dims)
        return Block(f"_pow({align(base, dims)}, {align(power, dims)})", dims)

    def call(self, node: ir.Call) -> Block:
        if node.relabel is not None:
            return relabelled(self(node.args[0]), ir.relabelling(node))
        if node.dim is not None:
            return self.reduce(node)
        if len(node.args) == 2:
            left, right = (self(a) for a in node.args)
            dims = union(left.dims, right.dims)
            return Block(BINARY_FUNCS[node.func].format(align(left, dims), align(right, dims)),
                         dims)
        arg = self(node.args[0])
        return Block(UNARY[node.func].format(arg.code), arg.dims)

    def masked_sum(self, code: str, dims: tuple[str, ...], axis_name: str, real: str) -> Block:
        axis = dims.index(axis_name)
        mask = index(self.mask(real), axis, len(dims))
        rest = tuple(d for d in dims if d != axis_name)
        return Block(f"tl.sum(tl.where({mask}, {code}, 0.0), axis={axis})", rest)

    def masked(self, code: str, dims: tuple[str, ...], axis_name: str, fill: str) -> str:
        """`code` with the padded lanes of `axis_name` set to `fill`."""
        mask = index(self.mask(axis_name), dims.index(axis_name), len(dims))
        return f"tl.where({mask}, {code}, {fill})"

    def reduce(self, node: ir.Call) -> Block:
        arg = self(node.args[0])
        if node.func == "sum":
            return self.masked_sum(arg.code, arg.dims, node.dim, node.dim)
        if node.func == "mean":
            total = self.masked_sum(arg.code, arg.dims, node.dim, node.dim)
            return Block(f"({total.code} / dim_{node.dim})", total.dims)
        if node.func in MASKED_REDUCTIONS:
            function, fill = MASKED_REDUCTIONS[node.func]
            axis = arg.dims.index(node.dim)
            code = f"{function}({self.masked(arg.code, arg.dims, node.dim, fill)}, {axis})"
            keeps = node.func in ir.KEEPS_DIM
            return Block(code, arg.dims if keeps else tuple(d for d in arg.dims if d != node.dim))
        squares = self.masked_sum(f"({arg.code} * {arg.code})", arg.dims, node.dim, node.dim)
        norm = Block(f"tl.sqrt({squares.code})", squares.dims)
        if node.func == "norm":
            return norm
        return Block(f"({arg.code} / tl.maximum({align(norm, arg.dims)}, 1e-12))", arg.dims)

    def matmul(self, node: ir.Binary) -> Block:
        """a[..., c] @ b[c, ...]: the product broadcast by name, summed over the real lanes of c."""
        left, right = self(node.left), self(node.right)
        contracted = node.left.dims[-1]
        left_dims = left.dims[:-1] + (CONTRACTED,)
        first = next(i for i, d in enumerate(right.dims) if d != "T")
        right_dims = right.dims[:first] + (CONTRACTED,) + right.dims[first + 1:]
        left, right = Block(left.code, left_dims), Block(right.code, right_dims)
        dims = union(left_dims, right_dims)
        product = f"({align(left, dims)} * {align(right, dims)})"
        return self.masked_sum(product, dims, CONTRACTED, contracted)


HELPERS = '''
@triton.jit
def _softplus(x):
    y = tl.exp(-tl.abs(x))
    return tl.maximum(x, 0.0) + tl.where(y < 1e-4, y - 0.5 * y * y, tl.log(1.0 + y))


@triton.jit
def _logsigmoid(x):
    return -_softplus(-x)


@triton.jit
def _silu(x):
    return x * tl.sigmoid(x)


@triton.jit
def _tanh(x):
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    small = a * (1.0 - a * a * (1.0 / 3.0 - a * a * (2.0 / 15.0)))
    t = tl.where(a < 0.05, small, big)
    return tl.where(x < 0, -t, t)


@triton.jit
def _logaddexp(a, b):
    m = tl.maximum(a, b)
    safe = tl.where(m == float("-inf"), 0.0, m)
    return tl.where(m == float("-inf"), m, safe + tl.log(tl.exp(a - safe) + tl.exp(b - safe)))


@triton.jit
def _pow(x, y):
    return tl.exp2(y * tl.log2(x))


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _max_combine(a1, b1, a2, b2):
    return a1 + a2, tl.maximum(b1 + a2, b2)


@triton.jit
def _logaddexp_combine(a1, b1, a2, b2):
    return a1 + a2, _logaddexp(b1 + a2, b2)


@triton.jit
def _stack_rows1(a, b):
    return tl.reshape(tl.permute(tl.join(a, b), (1, 0)), (2 * a.shape[0],))


@triton.jit
def _stack_rows2(a, b):
    return tl.reshape(tl.permute(tl.join(a, b), (2, 0, 1)), (2 * a.shape[0], a.shape[1]))
'''


# helpers of the reductions that need more than one pass over the lanes, emitted only into the
# modules of specs that use them (`helpers`); padded lanes come in as -inf
REDUCTION_HELPERS = {
    "logsumexp": '''
@triton.jit
def _logsumexp(x, axis: tl.constexpr):
    m = tl.max(x, axis=axis)
    safe = tl.where(m == float("-inf"), 0.0, m)
    return safe + tl.log(tl.sum(tl.exp(x - tl.expand_dims(safe, axis)), axis=axis))
''',
    "softmax": '''
@triton.jit
def _softmax(x, axis: tl.constexpr):
    m = tl.max(x, axis=axis)
    e = tl.exp(x - tl.expand_dims(tl.where(m == float("-inf"), 0.0, m), axis))
    return e / tl.expand_dims(tl.sum(e, axis=axis), axis)
''',
}


def helpers(spec: ir.Spec) -> str:
    """HELPERS, and the reduction helpers the spec's step uses."""
    used = {node.func for statement in spec.body for node in ir.walk(statement.value)
            if isinstance(node, ir.Call) and node.dim is not None}
    return HELPERS + "".join(code for name, code in REDUCTION_HELPERS.items() if name in used)
