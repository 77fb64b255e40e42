"""The parallel kernel family a Plan allows, beyond the fused recurrent kernel (blockwise.py)."""
from __future__ import annotations

from . import chunk_delta_parallel, chunk_dplr_parallel, chunk_parallel, scan_parallel
from .chunk_parallel import relabels
from .blockwise import BlockKernel, mode_of


def builders(plan, constants) -> list:
    """The family kernels, the default (the Plan's single-kernel form) last; a chunk Plan also
    gets the two-kernel form `chunk_parallel` (chunk_parallel.md), a chunk_delta Plan the
    three-kernel form `chunk_delta_parallel` (chunk_delta_parallel.md), a chunk_dplr Plan the
    three-kernel form `chunk_dplr_parallel` (chunk_dplr_parallel.md), a scan Plan the two-level
    scan `scan_parallel` (scan_parallel.md), chosen by `mode=`."""
    mode = mode_of(plan)
    if not mode:
        return []
    extra = []
    if mode == "chunk" and chunk_parallel.supported(plan):
        extra = [chunk_parallel.ChunkParallelKernel(plan, constants)]
    if mode == "chunk_delta" and chunk_delta_parallel.supported(plan):
        extra = [chunk_delta_parallel.ChunkDeltaParallelKernel(plan, constants)]
    if mode == "chunk_dplr" and chunk_dplr_parallel.supported(plan):
        extra = [chunk_dplr_parallel.ChunkDplrParallelKernel(plan, constants)]
    if mode == "scan":
        extra = [scan_parallel.ScanParallelKernel(plan, constants)]
    return extra + [BlockKernel(plan, constants)]


def not_offered(plan) -> dict[str, str]:
    """The multi-kernel forms a Plan's family has but this spec is not given, with the reason
    (the emitted `run` names it when a call asks for one): a spec that relabels a dim."""
    mode = mode_of(plan)
    parallel = {"chunk": "chunk_parallel", "chunk_delta": "chunk_delta_parallel",
                "chunk_dplr": "chunk_dplr_parallel"}.get(mode)
    if parallel is None or not relabels(plan.spec):
        return {}
    return {parallel: f"the step relabels a dim (`as`), and {parallel}'s programs hold blocks of "
                      "the key dim and of the value dim (docs/backends.md); the single-kernel "
                      f"`{mode}` takes it"}
