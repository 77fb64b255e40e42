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
    """Dims whose lanes never mix: no statement reduces over them (`sum(x, D)`, any reduction, or
    the contraction of `@`) or relabels to or from them (`as`), and no square param carries
    them. Each lane of such a dim evolves on its own, so programs may hold disjoint blocks of it
    without ever reading each other's."""
    mixed = {d for t in spec.params if len(set(t.dims)) < len(t.dims) for d in t.dims}
    for statement in spec.body:
        for node in ir.walk(statement.value):
            if isinstance(node, ir.Call) and node.dim is not None:
                mixed.add(node.dim)
            if isinstance(node, ir.Call) and node.relabel is not None:   # lanes change dims
                mixed.update(d for pair in ir.relabelling(node).items() for d in pair)
            if isinstance(node, ir.Binary) and node.op is ir.Op.MATMUL:
                mixed.add(node.left.dims[-1])
    return {d.name for d in spec.dims} - mixed


def split_dim(spec: ir.Spec) -> str | None:
    """The dim the fused kernels split across programs: the last dim of the first state whose
    last dim is splittable (the value dim V of S[K, V]); else the first splittable dim of a
    state (D of mamba's h[D, N], whose N the read-out contracts); None when no state has one."""
    free = splittable(spec)
    for state in spec.states:
        if state.dims and state.dims[-1] in free:
            return state.dims[-1]
    return next((d for state in spec.states for d in state.dims if d in free), None)


def lanes(tensors) -> str:
    """Code of the values one program holds of these tensors: their padded blocks' sizes, summed
    (over the launcher's `blocks` dict)."""
    return " + ".join("(" + " * ".join(f'blocks["BLOCK_{d}"]' for d in t.dims) + ")"
                      if t.dims else "1" for t in tensors)


def prologue(spec: ir.Spec, split: str | None, transposed: frozenset[str] = frozenset()) -> dict:
    """What every kernel does before its time loop: lane offsets and masks of each dim, the
    params loaded, and per state its load (or fill with the declared initial value) and final
    store. `split` is the dim spread over programs (only its first program stores a tensor that
    lacks it); a state in `transposed` is held key dim first, transposed on load and store."""
    offsets = [f"o_{d.name} = tl.arange(0, BLOCK_{d.name})" if d.name != split else
               f"o_{d.name} = i_split * BLOCK_{d.name} + tl.arange(0, BLOCK_{d.name})"
               for d in spec.dims]
    masks = [f"mask_{d.name} = o_{d.name} < dim_{d.name}" for d in spec.dims]
    params, states, finals = [], [], []
    for p in spec.params:
        offs, mask = block(row_axes(p.dims))
        params.append(f"par_{p.name} = tl.load(ptr_par_{p.name} + i_h * ({size(p.dims)})"
                      f" + {offs}, mask={mask}, other=0.0).to(ACC)")
    for s in spec.states:
        offs, mask = block(row_axes(s.dims))
        row = f"(i_b * H + i_h) * ({size(s.dims)}) + {offs}"
        swapped = s.name in transposed
        shape = ", ".join(f"BLOCK_{d}" for d in (s.dims[::-1] if swapped else s.dims))
        loaded = f"tl.load(ptr_init_{s.name} + {row}, mask={mask}, other=0.0).to(ACC)"
        states.append((f"st_{s.name} = {f'tl.trans({loaded})' if swapped else loaded}",
                       f"st_{s.name} = tl.full([{shape}], {initial_value(s)}, dtype=ACC)"))
        held = f"tl.trans(st_{s.name})" if swapped else f"st_{s.name}"
        finals.append(guard(split, s.dims, f"tl.store(ptr_final_{s.name} + {row}, {held}, "
                                           f"mask={mask})"))
    return dict(offsets=offsets, masks=masks, params=params, states=states, finals=finals)


def guard(split: str | None, dims: tuple[str, ...], store: str) -> str:
    """Only the first split block stores a tensor that lacks the split dim."""
    if split is not None and split not in dims:
        return f"if i_split == 0: {store}"
    return store


def initial_value(state: ir.Tensor) -> str:
    value = float(state.init if state.init is not None else 0.0)
    return f'float("{value}")' if value in (float("inf"), float("-inf")) else repr(value)
