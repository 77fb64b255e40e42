"""Renderers of role expressions that rearrange sums: factored products, key sums formed apart.

`FactoringRenderer` renders `x @ (a * b)` as `(x @ a) * b` when `b` is free of the contracted dim
(every family kernel's roles, blockwise.py, chunk_parallel.py); `KeySums` also lifts each sum over
the key dim that reads no state out of an output as a name `ksum<i>`, for the kernel to form apart
(the chunk kernel before its sections, blockwise.md "Outputs"; chunk_parallel's output kernel
over its key blocks, chunk_parallel.md).
"""
from __future__ import annotations

from seqc import ir
from seqc.backends.torch_render import factored

from .render import Block, TritonRenderer


class FactoringRenderer(TritonRenderer):
    """Renders `x @ (a * b)` with `b` free of the contracted dim as `(x @ a) * b` (`factored`):
    the same sum without the `[BLOCK_T, K, V]` product block (rwkv6's bonus `r @ (u * k * v)`:
    formed whole, its chunk kernel spilled 636 B on sm_90a at K = V = 64, 11-32 KB with chunks
    of 32)."""

    def matmul(self, node: ir.Binary) -> Block:
        rewritten = factored(node)
        return super().matmul(node) if rewritten is None else self(rewritten)


def key_sum(node: ir.Expr, dim: str) -> bool:
    """Whether `node` is a sum over `dim`: the contraction of `@` or `sum(., dim)`."""
    if isinstance(node, ir.Binary) and node.op is ir.Op.MATMUL:
        return node.left.dims[-1] == dim
    return isinstance(node, ir.Call) and node.func == "sum" and node.dim == dim


def reads_state(expr: ir.Expr) -> bool:
    """Whether `expr` holds a read of a state."""
    return any(isinstance(n, ir.Name) and n.ref is not None and n.ref.kind == "read"
               for n in ir.walk(expr))


class KeySums(FactoringRenderer):
    """Renders output expressions with each sum over the key dim `dim` (after `factored`) that
    reads no state as a name `ksum<i>` (`sums`: its name and the block's code, rendered by
    `inner`), for a kernel to form apart from the outputs: the chunk kernel before its
    sections (`early_sums`), the chunk_parallel output kernel over its key blocks."""

    def __init__(self, inner: FactoringRenderer, dim: str):
        super().__init__(inner.name_block, inner.constants)
        self.inner, self.dim = inner, dim
        self.sums: list[tuple[str, Block]] = []

    def matmul(self, node: ir.Binary) -> Block:
        if node.left.dims[-1] == self.dim and factored(node) is None and not reads_state(node):
            return self.collect(self.inner.matmul(node))
        return super().matmul(node)

    def reduce(self, node: ir.Call) -> Block:
        if key_sum(node, self.dim) and not reads_state(node):
            return self.collect(self.inner.reduce(node))
        return super().reduce(node)

    def next_name(self) -> str:
        return f"ksum{len(self.sums)}"

    def collect(self, block: Block) -> Block:
        name = self.next_name()
        self.sums.append((name, block))
        return Block(name, block.dims)
