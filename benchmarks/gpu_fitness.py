"""The "GPU fitness" tables of docs/benchmarks.md: `seqc gpu-check` over every stdlib spec.

    python benchmarks/gpu_fitness.py [--sizes 64,128,48] [--arch 80,90] [--jobs N]
        [--modes scan,scan_parallel] [--no-training] [SPEC...]

Every kernel the Triton backend launches (every mode), and every kernel a training call in each
mode launches (the recurrence cores' forward and backward, or the fused recurrent kernel's
generated backward: rows `<mode> training: <kernel>` / `<mode> backward: <kernel>`, one row for
modes that train on the same kernels), bf16 calls, K = V = each size (every dim of the spec takes
the size), compiled for sm_80 and sm_90a at the launch shape B=4, T=4096, H=16. A SPEC may be a
stdlib name or a .seq path. One row per kernel and size; per target: registers / spill bytes /
shared memory KB / tensor-core instructions. Prints markdown, then "N of M kernels fit" (kernel x
size x target) and the ones that do not; exits 1 when any does not fit (as `seqc gpu-check`
does). One worker per job (spec, size, target and mode; `run_jobs(per_module=False)`), so that
a kernel on which ptxas runs for long holds up only its own mode. Compiles are cached (see seqc/gpu_compile.py): a second run
prints at once. A job whose compile outlives --timeout is reported as timed out: ptxas takes
that long only on kernels that spill tens of KB.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TRITON_INTERPRET", "1")     # the modules' training cores are looked up here

from seqc.api import load  # noqa: E402
from seqc.gpu_jobs import ARCH_NAME, DEFAULT_SHAPE, KernelCheck, kb, spec_jobs  # noqa: E402
from seqc.gpu_workers import failed, job_key, read_job, run_jobs  # noqa: E402
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


def size_of(check) -> int | str:
    return next(iter(v for k, v in check.dims.items() if k not in DEFAULT_SHAPE), "-")


def row_key(check) -> tuple:
    """A forward kernel's row is its mode's; a training kernel's is shared by the modes that
    train on it (the same compile: forced `chunk` and `chunk_parallel` both train on
    chunk_parallel_core, `scan` and `scan_parallel` on scan_core)."""
    r = check.result
    mode, kernel = str(r.get("mode")), r.get("kernel")
    for phase in (" training", " backward"):
        if mode.endswith(phase):
            return (check.spec, size_of(check), phase.strip(), kernel, r.get("programs"))
    return (check.spec, size_of(check), mode, kernel, r.get("programs"))


def label(checks) -> str:
    modes = sorted({str(c.result.get("mode")) for c in checks})
    kernel = checks[0].result.get("kernel")
    if len(modes) == 1 and kernel in (None, f"{modes[0]}_kernel"):
        return modes[0]
    phase = modes[0].rsplit(" ", 1)[-1] if modes[0].endswith(("training", "backward")) else ""
    names = [m.rsplit(" ", 1)[0] if phase else m for m in modes]
    return "/".join(names) + (f" {phase}" if phase else "") + f": {kernel}"


def training_modes(name: str, modes: list[str]) -> set[str]:
    """The modes whose jobs record a training call: the first of the modes that train on the
    same kernels (seqc/autograd.py `training_cores`, `fused_backward`), so that each training
    compile is one job's."""
    from seqc.autograd import fused_backward, training_cores
    module = load(name).kernel("triton").module
    first: dict[tuple, str] = {}
    for mode in modes:
        cores = training_cores(module, {"mode": mode}, None)
        key = tuple(sorted((k, id(getattr(v, "func", v))) for k, v in cores.items()
                           if callable(v)))
        if not cores and fused_backward(module, {"mode": mode}):
            key = ("fused_recurrent_bwd",)
        if key:
            first.setdefault(key, mode)
    return set(first.values())


def cached_checks(jobs) -> list:
    checks = []
    for job in jobs:
        results = read_job(job_key(job))
        if results is None:
            checks.append(failed(job, "not measured (the sweep has not run this job)",
                                 dict(kernel="-", mode=job.modes[0], grid=[], programs="-")))
        else:
            checks += [KernelCheck(job.label, job.arch, job.dtype, job.dims, r) for r in results]
    return checks


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
    parser.add_argument("--no-training", action="store_true",
                        help="forward kernels only (no training call recorded)")
    parser.add_argument("--all-configs", action="store_true",
                        help="every launch configuration of the parallel forms' lists, not only "
                             "their fallbacks (as `seqc gpu-check --all-configs`)")
    parser.add_argument("--cached-only", action="store_true",
                        help="kernels not in the kernel cache are reported, not compiled")
    parser.add_argument("--from-cache", action="store_true",
                        help="report the job cache only (a running or stopped sweep's results; "
                             "a job not in it is not measured), start no worker")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds for one spec's kernels of one mode on one target")
    args = parser.parse_args()
    specs = args.specs or stdlib_names()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    fused_only = [int(s) for s in args.fused_only_sizes.split(",") if s]
    archs = [int(a) for a in args.arch.split(",")]
    wanted = [m for m in args.modes.split(",") if m]
    jobs = []
    for size in sizes + fused_only:
        for name in specs:
            for job in spec_jobs(load(name), {"*": size}, DEFAULT_SHAPE, archs, ["bf16"]):
                modes = ["fused_recurrent"] if size in fused_only else module_modes(job.module)
                trained = set() if args.no_training else training_modes(
                    name, [m for m in modes if not wanted or m in wanted])
                for mode in modes:
                    if wanted and mode not in wanted:
                        continue
                    one = copy.copy(job)
                    one.modes, one.cached_only = [mode], args.cached_only
                    one.all_configs = args.all_configs
                    if mode not in trained:
                        one.training_module = None
                    jobs.append(one)
    started = time.perf_counter()
    checks = cached_checks(jobs) if args.from_cache else run_jobs(jobs, args.jobs, args.timeout,
                                                                   per_module=False)
    rows: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))
    for check in checks:
        rows[row_key(check)][check.arch].append(check)
    header = ["spec", "dims", "mode", "programs"] + [ARCH_NAME[a] for a in archs] + \
        ["16-bit dot", "fits"]
    print("bf16 calls; launch grid at B=4, T=4096, H=16; every dim of a spec = the size; per "
          "target: registers / spill bytes (stores + loads) / shared memory KB / tensor-core "
          "instructions (mma + wgmma)\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    bad_rows, compiled, misfits, unmeasured, skipped = 0, 0, [], 0, []
    phases = {"training": 1, "backward": 2}
    for key, by_arch in sorted(rows.items(), key=lambda kv: (
            kv[0][0], int(kv[0][1]), phases.get(kv[0][2], 0), str(kv[0][2:]))):
        first = next(iter(by_arch.values()))[0]
        every = [c for cs in by_arch.values() for c in cs]
        if all("not measured" in c.result.get("error", "") for c in every):
            unmeasured += len(by_arch)
            skipped.append(f"{key[0]} {key[1]} {first.result.get('mode')}")
            continue
        problems = sorted({short(p) for c in every for p in c.problems()})
        bad_rows += bool(problems)
        for arch, found in by_arch.items():
            if "not measured" in found[0].result.get("error", ""):
                unmeasured += 1
                continue
            compiled += 1
            if found[0].problems():
                misfits.append(f"{key[0]} {key[1]} {label(found)} on {ARCH_NAME[arch]}: "
                               + "; ".join(found[0].problems()))
        print("| " + " | ".join([key[0], str(key[1]), label(every),
                                 str(first.result.get("programs", "?"))]
                                + [cell(by_arch[a][0]) if a in by_arch else "-" for a in archs]
                                + [first.dot16, "yes" if not problems else "; ".join(problems)])
              + " |")
    print(f"\n{compiled - len(misfits)} of {compiled} kernels fit (kernel x size x target; "
          f"{len(rows) - bad_rows - len(skipped)} of {len(rows) - len(skipped)} kernel x size "
          "rows on every target"
          + (f"; {unmeasured} not measured" if unmeasured else "")
          + f"; {time.perf_counter() - started:.0f} s)")
    for line in misfits:
        print(f"- {line}")
    if skipped:
        print("\nNot measured (jobs not run; rows left out above): " + ", ".join(skipped))
    return 1 if misfits or unmeasured else 0


if __name__ == "__main__":
    sys.exit(main())
