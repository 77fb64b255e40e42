"""The seqc IR: one spec = declarations + a step body, as frozen dataclasses.

Every node carries a `span` that is excluded from equality, so `parse(pretty(ir)) == ir`.
The checker fills the `dims` of every expression and the `ref` of every name (what it refers to,
and for a state which version of it: 0 = value from the previous step, n = after its n-th update
in this step) with `dataclasses.replace`; the parser leaves them empty.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Union


@dataclass(frozen=True)
class Span:
    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


NO_SPAN = Span("<none>", 0, 0, 0, 0)


class Op(Enum):
    """Operators; values are the grammar's tokens."""
    ADD = "+"
    SUB = "-"
    MUL = "*"
    DIV = "/"
    POW = "**"
    MATMUL = "@"
    NEG = "neg"


UNARY_FUNCS = ("exp", "log", "sigmoid", "logsigmoid", "tanh", "softplus", "silu", "relu",
               "sqrt", "rsqrt", "abs")
BINARY_FUNCS = ("max", "min", "logaddexp")
REDUCE_FUNCS = ("sum", "norm", "l2norm", "mean", "logsumexp", "softmax")
# `max(x, D)` / `min(x, D)` also reduce over D when D is a dim (the checker decides, shapes.py)
KEEPS_DIM = ("l2norm", "softmax")          # reductions whose result keeps the reduced dim
LINEAR_REDUCTIONS = ("sum", "mean")
FUNCS = UNARY_FUNCS + BINARY_FUNCS + REDUCE_FUNCS
RELABEL = "as"                             # `x as [D, ...]`: a Call with `relabel` set
HEAD = "head"                              # the built-in head index (0-based), per head
HEADS = "H"                                # the number of heads, a number (unless a tensor)


class TensorKind(Enum):
    INPUT = "input"
    PARAM = "param"
    STATE = "state"


@dataclass(frozen=True)
class Ref:
    """What a name refers to, filled in by the checker."""
    kind: str            # "input" | "param" | "state" | "let" | "dim" | "const" | "head"
    version: int = 0     # for states: 0 = previous step, n = after the n-th update this step


# ---- expressions ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Num:
    value: float
    span: Span = field(default=NO_SPAN, compare=False, repr=False)
    dims: tuple[str, ...] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Name:
    id: str
    span: Span = field(default=NO_SPAN, compare=False, repr=False)
    dims: tuple[str, ...] | None = field(default=None, compare=False, repr=False)
    ref: Ref | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Unary:
    op: Op
    operand: "Expr"
    span: Span = field(default=NO_SPAN, compare=False, repr=False)
    dims: tuple[str, ...] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Binary:
    op: Op
    left: "Expr"
    right: "Expr"
    span: Span = field(default=NO_SPAN, compare=False, repr=False)
    dims: tuple[str, ...] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple["Expr", ...]
    dim: str | None = None           # the reduced dim of a reduction (`sum(x, K)`, `max(x, K)`)
    span: Span = field(default=NO_SPAN, compare=False, repr=False)
    dims: tuple[str, ...] | None = field(default=None, compare=False, repr=False)
    dim_span: Span = field(default=NO_SPAN, compare=False, repr=False)
    relabel: tuple[str, ...] | None = None   # `x as [V]`: func "as", the operand's new dims


def relabelling(node: "Call") -> dict[str, str]:
    """A relabel's map from the operand's dims to the new ones (position by position)."""
    return dict(zip(node.args[0].dims or (), node.relabel or ()))


def is_head(node) -> bool:
    return isinstance(node, Name) and node.ref is not None and node.ref.kind == "head"


Expr = Union[Num, Name, Unary, Binary, Call]


# ---- declarations and statements ----------------------------------------------------------------

@dataclass(frozen=True)
class Range:
    """An open interval `in (low, high)`; bounds may be +-inf."""
    low: float
    high: float


@dataclass(frozen=True)
class Dim:
    name: str
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Tensor:
    kind: TensorKind
    name: str
    dims: tuple[str, ...]
    range: Range | None = None
    init: float | None = None        # states only; None means the default 0
    span: Span = field(default=NO_SPAN, compare=False, repr=False)
    dim_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Const:
    """`const scale = K ** -0.5`: a scalar given at call time (`scale=0.1`), else its default,
    an expression of numbers, dim sizes and earlier consts."""
    name: str
    value: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Let:
    name: str
    value: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Update:
    state: str
    value: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Output:
    name: str
    value: Expr
    declared_dims: tuple[str, ...] | None = None
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


Statement = Union[Let, Update, Output]


@dataclass(frozen=True)
class Spec:
    name: str
    dims: tuple[Dim, ...]
    tensors: tuple[Tensor, ...]
    body: tuple[Statement, ...]
    span: Span = field(default=NO_SPAN, compare=False, repr=False)
    source: str = field(default="", compare=False, repr=False)
    model_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)
    consts: tuple[Const, ...] = ()

    def tensors_of(self, kind: TensorKind) -> tuple[Tensor, ...]:
        return tuple(t for t in self.tensors if t.kind is kind)

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        return self.tensors_of(TensorKind.INPUT)

    @property
    def params(self) -> tuple[Tensor, ...]:
        return self.tensors_of(TensorKind.PARAM)

    @property
    def states(self) -> tuple[Tensor, ...]:
        return self.tensors_of(TensorKind.STATE)

    @property
    def outputs(self) -> tuple[Output, ...]:
        return tuple(s for s in self.body if isinstance(s, Output))

    def tensor(self, name: str) -> Tensor | None:
        return next((t for t in self.tensors if t.name == name), None)


def children(expr: Expr) -> tuple[Expr, ...]:
    if isinstance(expr, Unary):
        return (expr.operand,)
    if isinstance(expr, Binary):
        return (expr.left, expr.right)
    if isinstance(expr, Call):
        return expr.args
    return ()


def walk(expr: Expr):
    """Yield every node of an expression, parents first."""
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(children(node)))
