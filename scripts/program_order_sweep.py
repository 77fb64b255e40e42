#!/usr/bin/env python
"""Every stdlib spec through every Triton mode, forward and backward, with each launch's programs
run in order and then in reverse (tests/program_order.py): the outputs, final states and every
gradient must be the same bits. A difference is a kernel whose programs depend on each other
(a read of another program's store, or two programs storing one place): on a GPU, where the
programs of a launch run at once, its result would depend on scheduling.

    TRITON_INTERPRET=1 python scripts/program_order_sweep.py [SPEC ...] [--sizes 5,70]
        [--block-split 16]

Exits 1 when any call differs. tests/test_program_order.py runs one spec per kernel family.
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import seqc  # noqa: E402
from oracles import SPECS  # noqa: E402
from program_order import order_differences  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="*")
    parser.add_argument("--sizes", default="5,70", help="every dim of a spec at each size")
    parser.add_argument("--block-split", type=int, default=128,
                        help="value blocks of at most this many lanes (16: several at small dims)")
    args = parser.parse_args(argv)
    differing = 0
    print("| spec | mode | dims | outputs, final states, gradients | largest difference |")
    print("|---|---|---|---|---|")
    for name in args.specs or sorted(SPECS):
        for mode in seqc.load(name).kernel("triton").module.MODES:
            for size in (int(s) for s in args.sizes.split(",")):
                diff = order_differences(name, mode, size, block_split=args.block_split)
                worst = max(diff.values())
                differing += worst != 0
                what = ", ".join(f"{n} {d:.2g}" for n, d in diff.items() if d) or "same bits"
                print(f"| {name} | {mode} | {size} | {len(diff)}: {what} | {worst:.3g} |",
                      flush=True)
    print(f"\n{differing} call(s) differ")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
