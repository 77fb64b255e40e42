"""The programs of every Triton launch are independent of each other (tests/program_order.py).

The interpreter runs a launch's programs one after another in a fixed order, a GPU runs them at
once: a kernel reading what another program of its launch stores passes under the interpreter
and races on a GPU. Each case runs a call forward and backward twice, programs in order and in
reverse, and wants the same bits. One spec per kernel family here, every dim at 20 in value
blocks of 16 (two value blocks; two key blocks where keys go in 16s), B = 2, H = 3, three chunks;
scripts/program_order_sweep.py runs every spec and mode at dims 5 and 70 (docs/benchmarks.md,
"Programs in reverse order").
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from program_order import order_differences, programs_in_reverse  # noqa: E402

pytestmark = pytest.mark.triton

FAMILIES = [("simple_gla", "chunk"), ("simple_gla", "chunk_parallel"), ("gla", "chunk_parallel"),
            ("gated_deltanet", "chunk_delta"), ("kda", "chunk_delta_parallel"),
            ("rwkv7", "chunk_dplr"), ("rwkv7", "chunk_dplr_parallel"),
            ("gla", "fused_recurrent"), ("lstm", "fused_recurrent"),
            ("mamba", "scan"), ("mamba", "scan_parallel"),
            ("logsumexp", "scan"), ("logsumexp", "scan_parallel"), ("lru", "scan_parallel")]


@triton.jit
def _chained(ptr):
    i = tl.program_id(0)
    if i > 0:
        tl.store(ptr + i, tl.load(ptr + i - 1) + 1)


def test_reverse_order_exposes_a_dependent_launch():
    """The tool sees what it exists for: program i reads program i - 1's store."""
    def run():
        x = torch.zeros(4)
        _chained[(4,)](x)
        return x
    assert run().tolist() == [0, 1, 2, 3]
    with programs_in_reverse():
        assert run().tolist() == [0, 1, 1, 1]
    assert run().tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("name, mode", FAMILIES)
def test_programs_are_independent(name, mode):
    diff = order_differences(name, mode, 20, block_split=16)
    assert any(n.startswith("grad") for n in diff), f"{name}/{mode}: no gradient compared"
    assert not any(diff.values()), f"{name}/{mode}: " + ", ".join(
        f"{n} differs by {d:.3g}" for n, d in diff.items() if d)
