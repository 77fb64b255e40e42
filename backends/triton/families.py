"""The parallel kernel family a Plan allows, beyond the fused recurrent kernel (blockwise.py)."""
from __future__ import annotations

from . import chunk_parallel
from .blockwise import BlockKernel, mode_of


def builders(plan, constants) -> list:
    """The family kernels, the default (the Plan's single-kernel form) last; a chunk Plan also
    gets the two-kernel form `chunk_parallel` (chunk_parallel.md), chosen by `mode=`."""
    if not mode_of(plan):
        return []
    extra = [chunk_parallel.ChunkParallelKernel(plan, constants)] \
        if mode_of(plan) == "chunk" and chunk_parallel.supported(plan) else []
    return extra + [BlockKernel(plan, constants)]
