"""The "GPU fitness" table of docs/benchmarks.md: `seqc gpu-check` over every stdlib spec.

    python benchmarks/gpu_fitness.py [--sizes 64,128,96] [--arch 80,90] [--jobs N]
        [--modes scan,scan_parallel] [SPEC...]

Every kernel the Triton backend launches (every mode), bf16 calls, K = V = each size (every dim of
the spec takes the size), compiled for sm_80 and sm_90a at the launch shape B=4, T=4096, H=16.
One row per kernel and size; per target: registers / spill bytes / shared memory KB / tensor-core
instructions. Prints markdown; exits 1 when any kernel does not fit (as `seqc gpu-check` does).
Compiles are cached (see seqc/gpu_compile.py): a second run prints at once. A kernel whose
compile outlives --timeout (240 s for one spec on one target) is reported as timed out: ptxas
takes that long only on kernels that spill tens of KB.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seqc.api import load  # noqa: E402
from seqc.gpucheck import ARCH_NAME, DEFAULT_SHAPE, kb, run_jobs, spec_jobs  # noqa: E402
from seqc.resources import stdlib_names  # noqa: E402


def cell(check) -> str:
    r = check.result
    if "error" in r:
        for start, text in (("compile timed out", "timed out"), ("not measured", "not measured")):
            if r["error"].startswith(start):
                return text
        return "does not compile"
    return f"{r['registers']} / {check.spill} / {kb(r['shared'])} / {check.tensor_core}"


def short(problem: str) -> str:
    for start, name in (("spills", "spills"), ("needs", "shared memory"),
                        ("dots", "no tensor cores"), ("does not compile", "does not compile"),
                        ("compile timed out", "compile timed out"),
                        ("not measured", "not measured")):
        if problem.startswith(start):
            return name
    return problem


def module_modes(path: str) -> list[str]:
    """The MODES of an emitted Triton module (a file)."""
    line = next(line for line in Path(path).read_text().splitlines() if line.startswith("MODES = "))
    return [m.strip().strip('"') for m in line.split("(", 1)[1].rstrip(")").split(",")
            if m.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", metavar="SPEC")
    parser.add_argument("--sizes", default="64,128,48")
    parser.add_argument("--arch", default="80,90")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--fused-only-sizes", default="",
                        help="sizes at which only the fused_recurrent kernels are compiled")
    parser.add_argument("--modes", default="",
                        help="only these modes' kernels (comma-separated; default: every mode)")
    parser.add_argument("--cached-only", action="store_true",
                        help="kernels not in the kernel cache are reported, not compiled")
    parser.add_argument("--timeout", type=float, default=240,
                        help="seconds for one spec's kernels on one target")
    args = parser.parse_args()
    specs = args.specs or stdlib_names()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    fused_only = [int(s) for s in args.fused_only_sizes.split(",") if s]
    archs = [int(a) for a in args.arch.split(",")]
    jobs = [job for size in sizes + fused_only for name in specs
            for job in spec_jobs(load(name), {"*": size}, DEFAULT_SHAPE, archs, ["bf16"])]
    modes = [m for m in args.modes.split(",") if m]
    for job in jobs:
        if job.dims[next(iter(d for d in job.dims if d not in DEFAULT_SHAPE))] in fused_only:
            job.modes = ["fused_recurrent"]
        if modes:
            job.modes = [m for m in (job.modes or module_modes(job.module)) if m in modes]
    jobs = [job for job in jobs if job.modes != []]
    started = time.perf_counter()
    for job in jobs:
        job.cached_only = args.cached_only
    checks = run_jobs(jobs, args.jobs, args.timeout)
    rows: dict[tuple, dict] = defaultdict(dict)
    for check in checks:
        size = next(iter(v for k, v in check.dims.items() if k not in DEFAULT_SHAPE), "-")
        rows[(check.spec, size, check.result.get("mode"), check.result.get("kernel"))][
            check.arch] = check
    header = ["spec", "dims", "mode", "programs"] + [ARCH_NAME[a] for a in archs] + \
        ["16-bit dot", "fits"]
    print("bf16 calls; launch grid at B=4, T=4096, H=16; every dim of a spec = the size; per "
          "target: registers / spill bytes (stores + loads) / shared memory KB / tensor-core "
          "instructions (mma + wgmma)\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    bad = 0
    for (spec, size, mode, _), by_arch in sorted(rows.items(), key=lambda kv: (
            kv[0][0], kv[0][1], str(kv[0][2]))):
        first = next(iter(by_arch.values()))
        problems = sorted({short(p) for c in by_arch.values() for p in c.problems()})
        bad += bool(problems)
        kernel = first.result.get("kernel")
        label = str(mode) if kernel in (None, f"{mode}_kernel") else f"{mode}: {kernel}"
        print("| " + " | ".join([spec, str(size), label, str(first.result.get("programs", "?"))]
                                + [cell(by_arch[a]) if a in by_arch else "-" for a in archs]
                                + [first.dot16, "yes" if not problems else "; ".join(problems)])
              + " |")
    print(f"\n{len(rows) - bad} of {len(rows)} kernel x size rows fit on every target "
          f"({time.perf_counter() - started:.0f} s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
