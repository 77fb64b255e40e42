"""The parallel kernel family a Plan allows, beyond the fused recurrent kernel (blockwise.py)."""
from __future__ import annotations

from .blockwise import BlockKernel, mode_of


def builders(plan, constants) -> list:
    return [BlockKernel(plan, constants)] if mode_of(plan) else []
