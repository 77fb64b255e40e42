"""Named-dim shapes of expressions: the expression half of the checker (seqc/check.py).

`ExpressionTyper.expr(node, line)` returns the node with `dims` filled on every sub-expression and
`ref` on every name, or `dims = None` where it reported an error (a poisoned node, about which its
parents stay silent). Broadcasting is by name: the left operand's dims, then the right operand's
new ones; `@` contracts the last dim of the left side with the first of the right, same name.

The mixin uses the checker's tables: `dims`, `consts`, `lets`, `tensors`, `outputs`, `state_versions`,
`used`, `unknown`, `poisoned` and its `error` method.
"""
from __future__ import annotations

from dataclasses import replace

from . import ir
from .errors import closest


class ExpressionTyper:
    def expr(self, node: ir.Expr, line: int) -> ir.Expr:
        """Type an expression: fill `dims` (None when poisoned) and `ref` on names."""
        if isinstance(node, ir.Num):
            return replace(node, dims=())
        if isinstance(node, ir.Name):
            return self.name(node, line)
        if isinstance(node, ir.Unary):
            operand = self.expr(node.operand, line)
            return replace(node, operand=operand, dims=self.elementwise_operand(operand))
        if isinstance(node, ir.Binary):
            left, right = self.expr(node.left, line), self.expr(node.right, line)
            node = replace(node, left=left, right=right)
            if node.op is ir.Op.MATMUL:
                return replace(node, dims=self.matmul_dims(node))
            return replace(node, dims=self.broadcast(node, left, right))
        return self.call(node, line)

    def name(self, node: ir.Name, line: int) -> ir.Name:
        if node.id in self.poisoned:
            return replace(node, dims=None)
        if node.id in self.dims:
            declared = self.dims[node.id].span.line
            if declared > line:
                self.error(f"dim `{node.id}` is used before its declaration (line {declared})",
                           node.span, help="declare the dims first, after `model`")
                return replace(node, dims=None)
            return replace(node, dims=(), ref=ir.Ref("dim"))
        if node.id in self.consts:
            declared = self.consts[node.id].span.line
            if declared >= line:      # a const's own default, or a line above it
                self.error(f"const `{node.id}` is used before its declaration (line {declared})",
                           node.span, help="declare a const above its first use")
                return replace(node, dims=None)
            self.used.add(node.id)
            return replace(node, dims=(), ref=ir.Ref("const"))
        if node.id in self.lets:
            self.used.add(node.id)
            return replace(node, dims=self.lets[node.id].value.dims, ref=ir.Ref("let"))
        tensor = self.tensors.get(node.id)
        if tensor is not None:
            self.used.add(node.id)
            if tensor.span.line > line:
                self.error(f"`{node.id}` is used before its declaration (line {tensor.span.line})",
                           node.span, help="move the declaration above its first use")
                return replace(node, dims=None)
            version = self.state_versions.get(node.id, 0)
            return replace(node, dims=tensor.dims, ref=ir.Ref(tensor.kind.value, version))
        if node.id in self.outputs:
            self.error(f"output `{node.id}` cannot be read inside the step", node.span,
                       help="compute it with `let` and use the `let` name")
            return replace(node, dims=None)
        builtin = self.builtin(node)
        if builtin is not None:
            return builtin
        if node.id not in self.unknown:      # reported once, at its first use
            self.unknown.add(node.id)
            suggestion = closest(node.id, [*self.dims, *self.consts, *self.lets, *self.tensors])
            self.error(f"unknown name `{node.id}`", node.span,
                       help=f"did you mean `{suggestion}`?" if suggestion else None)
        return replace(node, dims=None)

    @staticmethod
    def builtin(node: ir.Name) -> ir.Name | None:
        """`head`, the head index (0, 1, ..., H - 1: one scalar a head, like a `param`), and `H`,
        the number of heads (a number, like a dim size; a tensor named `H` takes precedence)."""
        if node.id == ir.HEAD:
            return replace(node, dims=(), ref=ir.Ref("head"))
        if node.id == ir.HEADS:
            return replace(node, dims=(), ref=ir.Ref("const"))
        return None

    def elementwise_operand(self, operand: ir.Expr) -> tuple[str, ...] | None:
        if operand.dims is None:
            return None
        if len(set(operand.dims)) != len(operand.dims):
            self.error(f"a square matrix {fmt_dims(operand.dims)} can only be used with `@`",
                       operand.span)
            return None
        return operand.dims

    def broadcast(self, node: ir.Expr, left: ir.Expr, right: ir.Expr) -> tuple[str, ...] | None:
        left_dims, right_dims = self.elementwise_operand(left), self.elementwise_operand(right)
        if left_dims is None or right_dims is None:
            return None
        return left_dims + tuple(d for d in right_dims if d not in left_dims)

    def matmul_dims(self, node: ir.Binary) -> tuple[str, ...] | None:
        left, right = node.left.dims, node.right.dims
        if left is None or right is None:
            return None
        if not left or not right:
            side = node.left if not left else node.right
            self.error("`@` needs a tensor on each side, not a scalar", side.span,
                       help="use `*` to scale by a scalar")
            return None
        if left[-1] != right[0]:
            self.error(f"`@` contracts the last dim of the left side with the first dim of the "
                       f"right side, but they are `{left[-1]}` and `{right[0]}`", node.span,
                       help=f"left has dims {fmt_dims(left)}, right has {fmt_dims(right)}")
            return None
        result = left[:-1] + right[1:]
        if len(set(result)) != len(result):
            self.error(f"the result of `@` would have dims {fmt_dims(result)}, repeating a dim",
                       node.span)
            return None
        return result

    def call(self, node: ir.Call, line: int) -> ir.Call:
        if node.relabel is not None:
            return self.relabel(node, line)
        args = tuple(self.expr(a, line) for a in node.args)
        node = self.as_dim_reduction(replace(node, args=args))
        args = node.args
        expected = 1 if node.func in ir.UNARY_FUNCS + ir.REDUCE_FUNCS or node.dim else 2
        if node.func not in ir.FUNCS:
            suggestion = closest(node.func, ir.FUNCS)
            self.error(f"unknown function `{node.func}`", node.span,
                       help=f"did you mean `{suggestion}`?" if suggestion
                       else "the functions are listed in docs/language.md")
            return replace(node, dims=None)
        if node.func in ir.REDUCE_FUNCS and node.dim is None:
            self.error(f"`{node.func}` takes an expression and the dim to reduce, "
                       f"as in `{node.func}(x, K)`", node.span)
            return replace(node, dims=None)
        if len(args) != expected:
            self.error(f"`{node.func}` takes {expected} argument{'s' if expected > 1 else ''}, "
                       f"not {len(args)}", node.span)
            return replace(node, dims=None)
        if node.dim is not None:
            return replace(node, dims=self.reduce_dims(node))
        if expected == 2:
            return replace(node, dims=self.broadcast(node, args[0], args[1]))
        return replace(node, dims=self.elementwise_operand(args[0]))

    def as_dim_reduction(self, node: ir.Call) -> ir.Call:
        """`max(x, D)` / `min(x, D)` with `D` a declared dim and `x` a tensor reduce over D (the
        parser cannot tell a dim from a tensor); with a scalar `x` (`max(K, V)`, numbers), or a
        tensor named `D`, they keep the elementwise meaning."""
        if node.func not in ("max", "min") or len(node.args) != 2 or node.dim is not None:
            return node
        first, second = node.args
        if isinstance(second, ir.Name) and second.ref is not None and second.ref.kind == "dim" \
                and first.dims != ():
            return replace(node, args=(first,), dim=second.id, dim_span=second.span)
        return node

    def reduce_dims(self, node: ir.Call) -> tuple[str, ...] | None:
        dims = self.elementwise_operand(node.args[0])
        if node.dim in self.poisoned:
            return None
        if node.dim not in self.dims:
            suggestion = closest(node.dim, [d for d in self.dims if d not in self.poisoned])
            self.error(f"`{node.func}` reduces over a dim, and `{node.dim}` is not a declared dim",
                       node.dim_span if node.dim_span.line else node.span,
                       help=f"did you mean `{suggestion}`?" if suggestion else None)
            return None
        if dims is None:
            return None
        if node.dim not in dims:
            self.error(f"`{node.func}` over `{node.dim}`, but its argument has dims {fmt_dims(dims)}",
                       node.dim_span if node.dim_span.line else node.span,
                       help=("reduce over " + " or ".join(f"`{d}`" for d in dims)) if dims
                       else "a scalar has no dim to reduce")
            return None
        return dims if node.func in ir.KEEPS_DIM else tuple(d for d in dims if d != node.dim)

    def relabel(self, node: ir.Call, line: int) -> ir.Call:
        """`x as [D1, ...]`: x's dims renamed position by position (same sizes: checked when a
        call binds them, seqc/validate.py)."""
        operand = self.expr(node.args[0], line)
        node = replace(node, args=(operand,))
        where = node.dim_span if node.dim_span.line else node.span
        unknown = [d for d in node.relabel if d not in self.dims or d in self.poisoned]
        for dim in unknown:
            if dim in self.poisoned:
                continue
            suggestion = closest(dim, [d for d in self.dims if d not in self.poisoned])
            self.error(f"`as` relabels to declared dims, and `{dim}` is not one", where,
                       help=f"did you mean `{suggestion}`?" if suggestion
                       else f"declare it first: `dims {dim}`")
        if len(set(node.relabel)) != len(node.relabel):
            self.error(f"`as {fmt_dims(node.relabel)}` repeats a dim", where,
                       help="a dim appears once per tensor")
            return replace(node, dims=None)
        dims = self.elementwise_operand(operand)
        if unknown or dims is None:
            return replace(node, dims=None)
        if len(dims) != len(node.relabel):
            self.error(f"`as {fmt_dims(node.relabel)}` gives {len(node.relabel)} dim"
                       f"{'s' if len(node.relabel) != 1 else ''} to a value with dims "
                       f"{fmt_dims(dims)}", where,
                       help="`as` renames each dim of the value, in order: one new name per dim")
            return replace(node, dims=None)
        return replace(node, dims=node.relabel)


def fmt_dims(dims: tuple[str, ...]) -> str:
    return "[" + ", ".join(dims) + "]" if dims else "[] (a scalar)"
