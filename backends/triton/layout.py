"""Where tensors live in memory and how a kernel addresses them as blocks.

Call-time layouts (row-major, made contiguous by the launcher): inputs and outputs
`[B, T, H, *dims]`, params `[H, *dims]`, states `[B, H, *dims]`. A kernel names the offsets of a
dim `o_<d>` (a 1-D block of lanes, `o_T` for the time steps it holds) and their validity
`mask_<d>`; this module spells the offset and mask blocks of a tensor from those names.
"""
from __future__ import annotations

from seqc import ir

from .render import index


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def size(dims: tuple[str, ...]) -> str:
    """The element count of one row of a tensor with these dims (code over constexpr sizes)."""
    return " * ".join(f"dim_{d}" for d in dims) or "1"


def block(axes: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    """Offsets and mask of a block: `axes` lists (dim whose o_/mask_ to use, stride code)."""
    n = len(axes)
    if n == 0:
        return "0", "True"
    offs = " + ".join(f"{index('o_' + d, i, n)} * ({stride})" if stride != "1"
                      else index('o_' + d, i, n) for i, (d, stride) in enumerate(axes))
    mask = " & ".join(index("mask_" + d, i, n) for i, (d, _) in enumerate(axes))
    return f"({offs})", f"({mask})"


def row_axes(dims: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The axes of one row (a fixed b, t, h) of a tensor with these dims, row-major."""
    return tuple((d, size(dims[i + 1:])) for i, d in enumerate(dims))


def time_axes(dims: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The axes of a run of time steps (`o_T`) of a `[B, T, H, *dims]` tensor."""
    return (("T", f"H * {size(dims)}"),) + row_axes(dims)


def splittable(spec: ir.Spec) -> set[str]:
    """Dims whose lanes never mix: no statement reduces over them (sum / norm / l2norm, or the
    contraction of `@`) and no square param carries them. Each lane of such a dim evolves on
    its own, so programs may hold disjoint blocks of it without ever reading each other's."""
    mixed = {d for t in spec.params if len(set(t.dims)) < len(t.dims) for d in t.dims}
    for statement in spec.body:
        for node in ir.walk(statement.value):
            if isinstance(node, ir.Call) and node.dim is not None:
                mixed.add(node.dim)
            if isinstance(node, ir.Binary) and node.op is ir.Op.MATMUL:
                mixed.add(node.left.dims[-1])
    return {d.name for d in spec.dims} - mixed


def split_dim(spec: ir.Spec) -> str | None:
    """The dim the fused kernels split across programs: the last dim of the first state whose
    last dim is splittable (the value dim V of S[K, V]); None when no state has one."""
    free = splittable(spec)
    for state in spec.states:
        if state.dims and state.dims[-1] in free:
            return state.dims[-1]
    return None
