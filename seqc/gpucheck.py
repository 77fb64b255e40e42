"""`seqc gpu-check SPEC...`: are the Triton kernels fit for a real GPU? Answered without one.

Every kernel the Triton backend launches for a spec (in every mode its module has) is compiled
for each target by the worker `seqc.gpu_compile` (one process per emitted module, running its
jobs, spec x dims x dtype x target, in turn; workers in parallel; results cached on disk per
kernel and per job: the jobs are seqc/gpu_jobs.py's, run by seqc/gpu_workers.py), at a stated
call shape (B=4, T=4096, H=16 by default: the launch grid depends on it). Per kernel it
reports the grid, warps, stages, registers, spill bytes (ptxas's stores + loads), shared memory,
tensor-core instructions (`mma`, `wgmma.mma_async` in the PTX) and whether 16-bit data reaches a
`tl.dot`:

  `bf16` / `fp16`  the dot's operands are 16-bit (as fla's kernels do it);
  `upcast`         the call's tensors are 16-bit but were converted to fp32 before the dot;
  `no`             no 16-bit data (an fp32 call);
  `-`              the kernel has no `tl.dot`.

A kernel FAILS on a spill, on shared memory above the target's limit, on 16-bit data dotted
with no tensor-core instruction, or when it does not compile; the command then exits 1.
"""
from __future__ import annotations

import json

from .gpu_jobs import (ARCH_NAME, DEFAULT_DIM, DEFAULT_SHAPE, SHARED_LIMIT, KernelCheck, kb,
                       spec_jobs)
from .gpu_workers import run_jobs

DTYPES = ("bf16", "fp16", "fp32")


# ---------------------------------------------------------------- options

def parse_dims(text: str, names: set[str]) -> dict[str, int]:
    """`K=128,V=64` or `96` (every dim) or `64,N=16`: sizes of dims; unnamed dims get the bare
    number, else DEFAULT_DIM. A name that is no dim of any checked spec is an error."""
    sizes, default = {}, DEFAULT_DIM
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, eq, value = item.rpartition("=") if "=" in item else ("", "", item)
        if not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"--dims: `{item}` is not NAME=POSITIVE_INTEGER or a size")
        if not eq:
            default = int(value)
        elif name.strip() not in names:
            raise ValueError(f"--dims: `{name.strip()}` is no dim of the specs checked "
                             f"({', '.join(sorted(names)) or 'none'})")
        else:
            sizes[name.strip()] = int(value)
    return {"*": default, **sizes}


def parse_shape(text: str) -> dict[str, int]:
    shape = dict(DEFAULT_SHAPE)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name.strip() not in shape or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"--shape: `{item}` is not B=, T= or H= a positive integer")
        shape[name.strip()] = int(value)
    return shape


# ---------------------------------------------------------------- report

COLUMNS = ["spec", "dims", "target", "mode", "kernel", "grid (programs)", "warps", "stages",
           "regs", "spill B", "smem KB", "mma", "16-bit dot", "fits"]


def dims_label(check: KernelCheck) -> str:
    return ",".join(f"{k}={v}" for k, v in check.dims.items() if k not in DEFAULT_SHAPE)


def row(check: KernelCheck) -> list[str]:
    r = check.result
    grid = "x".join(map(str, r.get("grid", []))) + f" ({r.get('programs', 0)})"
    head = [check.spec, dims_label(check), ARCH_NAME[check.arch], r.get("mode", "?"),
            r.get("kernel", "?"), grid]
    if "error" in r:
        return head + ["-"] * 7 + ["FAIL: " + check.problems()[0]]
    problems = check.problems()
    return head + [str(r["warps"]), str(r["stages"]), str(r["registers"]), str(check.spill),
                   kb(r["shared"]), str(check.tensor_core), check.dot16,
                   "yes" if not problems else "FAIL: " + "; ".join(problems)]


def table(checks: list[KernelCheck], shape: dict[str, int], dtype_note: str) -> str:
    limits = ", ".join(f"{ARCH_NAME[a]} {kb(SHARED_LIMIT[a])} KB"
                       for a in sorted({c.arch for c in checks}))
    lines = [f"seqc gpu-check: launch grid at B={shape['B']}, T={shape['T']}, H={shape['H']}; "
             f"{dtype_note}; shared-memory limits: {limits}",
             "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(c)) + " |" for c in checks]
    bad = sum(1 for c in checks if c.problems())
    lines += ["", f"{len(checks) - bad} of {len(checks)} kernels fit"
              + (f"; {bad} do not" if bad else "")]
    return "\n".join(lines)


def gpu_check_command(args) -> int:
    from .api import load
    from .cli import reporting
    with reporting("gpu-check"):
        programs = [load(spec) for spec in args.specs]
        archs = parse_list(args.arch, "--arch", {str(a): a for a in SHARED_LIMIT})
        dtypes = parse_list(args.dtype, "--dtype", {d: d for d in DTYPES})
        names = {d.name for p in programs for d in p.spec.dims}
        all_dims = [parse_dims(text, names) for text in (args.dims or [""])]
        shape = parse_shape(args.shape)
        gpu = model_gpu(args.model)
        if gpu is not None and gpu.arch not in archs:
            archs.append(gpu.arch)
        jobs = [job for dims in all_dims for program in programs
                for job in spec_jobs(program, dims, shape, archs, dtypes)]
        for job in jobs:
            job.all_configs = args.all_configs
    checks = run_jobs(jobs, args.jobs, args.timeout)
    if args.json:
        print(json.dumps(dict(shape=shape, kernels=[c.to_json() for c in checks],
                              ok=not any(c.problems() for c in checks))))
    else:
        print(table(checks, shape, "dtype " + ", ".join(dtypes)))
    if gpu is not None:
        print("\n" + model_report(programs, checks, gpu))
    return 1 if any(c.problems() for c in checks) else 0


def model_gpu(name: str | None):
    from .gpu_model import GPUS
    if name is None:
        return None
    if name not in GPUS:
        raise ValueError(f"--model: unknown GPU `{name}`; choose from {', '.join(GPUS)}")
    return GPUS[name]


def model_report(programs, checks: list[KernelCheck], gpu) -> str:
    """The model (seqc/gpu_model.py) for every spec x dims checked on its target (bf16)."""
    from .gpu_model import model_rows, model_table
    models, by_program = [], {p.name: p for p in programs}
    groups: dict[tuple, list[KernelCheck]] = {}
    for check in checks:       # the forward modes' kernels (the model times a call's forward)
        training = str(check.result.get("mode")).endswith((" training", " backward"))
        if check.arch == gpu.arch and check.dtype == "bf16" and not training:
            groups.setdefault((check.spec, tuple(check.dims.items())), []).append(check)
    for (spec, dims), group in groups.items():
        models.append(model_rows(by_program[spec], dict(dims), gpu, group))
    sizes = dict(next(iter(groups))[1]) if groups else {}
    return model_table(models, gpu, sizes, kernels=True)


def parse_list(text: str, option: str, choices: dict):
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in choices]
    if unknown or not items:
        raise ValueError(f"{option}: {', '.join(unknown) or 'nothing given'}; choose from "
                         f"{', '.join(choices)}")
    return [choices[item] for item in items]
