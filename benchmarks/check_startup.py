"""Whole-process time of `seqc check stdlib/gla.seq` (the edit-check loop), against 0.5 s.

Runs the installed `seqc` console script (or `python -m seqc.cli` when it is not on PATH) 7 times
as a subprocess, after one warm-up run that fills the verdict cache, and prints the median.
Also times one cold run with an empty verdict cache, which imports sympy for the analysis.

    python benchmarks/check_startup.py [SPEC]
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.5
RUNS = 7


def command(spec: str) -> list[str]:
    script = shutil.which("seqc")
    return [script, "check", spec] if script else [sys.executable, "-m", "seqc.cli", "check", spec]


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    spec = sys.argv[1] if len(sys.argv) > 1 else "stdlib/gla.seq"
    argv = command(spec)
    with tempfile.TemporaryDirectory(prefix="seqc-bench-cache-") as cache:
        env = dict(os.environ, SEQC_CACHE_DIR=cache)
        cold = timed(argv, env)
        times = [timed(argv, env) for _ in range(RUNS)]
    median = statistics.median(times)
    verdict = "ok" if median <= TARGET else "OVER TARGET"
    print(f"seqc check {spec}: median {median:.3f} s of {RUNS} runs "
          f"(min {min(times):.3f}, max {max(times):.3f}); target {TARGET} s: {verdict}")
    print(f"  cold run (empty verdict cache, imports the analysis): {cold:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
