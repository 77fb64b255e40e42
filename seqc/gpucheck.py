"""`seqc gpu-check SPEC...`: are the Triton kernels fit for a real GPU? Answered without one.

Every kernel the Triton backend launches for a spec (in every mode its module has) is compiled
for each target by the worker `seqc.gpu_compile` (one process per emitted module, running its
jobs, spec x dims x dtype x target, in turn; workers in parallel; results cached on disk per
kernel and per job), at a stated call shape (B=4, T=4096, H=16 by default: the launch grid
depends on it). Per kernel it reports the grid, warps, stages, registers, spill bytes (ptxas's
stores + loads), shared memory, tensor-core instructions (`mma`, `wgmma.mma_async` in the PTX)
and whether 16-bit data reaches a `tl.dot`:

  `bf16` / `fp16`  the dot's operands are 16-bit (as fla's kernels do it);
  `upcast`         the call's tensors are 16-bit but were converted to fp32 before the dot;
  `no`             no 16-bit data (an fp32 call);
  `-`              the kernel has no `tl.dot`.

A kernel FAILS on a spill, on shared memory above the target's limit, on 16-bit data dotted
with no tensor-core instruction, or when it does not compile; the command then exits 1.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

# per-block shared memory a kernel may use (opt-in maximum), bytes
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
ARCH_NAME = {80: "sm_80", 86: "sm_86", 89: "sm_89", 90: "sm_90a"}
DTYPES = ("bf16", "fp16", "fp32")
DEFAULT_SHAPE = {"B": 4, "T": 4096, "H": 16}
DEFAULT_DIM = 128
JOB_TIMEOUT = 1200          # seconds a job (all kernels of a spec for one target) may take


@dataclass
class Job:
    """One worker run: a module's launches compiled for one target at one call shape."""
    label: str
    module: str
    arch: int
    dtype: str
    dims: dict[str, int]
    inputs: dict[str, list[int]]
    params: dict[str, list[int]]
    states: dict[str, list[int]]
    modes: list[str] | None = None
    cached_only: bool = False       # report kernels not in the kernel cache, compile nothing
    consts: dict[str, float] = field(default_factory=dict)   # the spec's consts, their defaults
    training_module: str | None = None  # the spec's torch module: also record a training call
    all_configs: bool = False       # every launch configuration of a list (parallel_host.md)

    def payload(self) -> dict:
        return dict(module=self.module, arch=self.arch, dtype=self.dtype, dims=self.dims,
                    consts=self.consts, inputs=self.inputs, params=self.params, states=self.states,
                    modes=self.modes, cached_only=self.cached_only,
                    training_module=self.training_module,
                    **({"all_configs": True} if self.all_configs else {}))


@dataclass
class KernelCheck:
    """What one compiled kernel needs from a GPU, and whether it fits."""
    spec: str
    arch: int
    dtype: str
    dims: dict[str, int]
    result: dict = field(default_factory=dict)

    @property
    def spill(self) -> int:
        return self.result.get("spill_store", 0) + self.result.get("spill_load", 0)

    @property
    def tensor_core(self) -> int:
        return self.result.get("mma", 0) + self.result.get("wgmma", 0)

    @property
    def dot16(self) -> str:
        dots = self.result.get("dots") or []
        if not dots:
            return "-"
        sixteen = sorted({t for d in dots for t in (d["a"], d["b"]) if t in ("bf16", "f16")})
        if sixteen:
            return "/".join(sixteen)
        return "upcast" if self.result.get("sixteen_bit_pointers") else "no"

    def problems(self) -> list[str]:
        r = self.result
        if "error" in r:
            as_is = r["error"].startswith(("compile timed out", "not measured"))
            return [r["error"] if as_is else f"does not compile: {r['error']}"]
        found = []
        if self.spill:
            found.append(f"spills {self.spill} B (stores {r['spill_store']} + loads "
                         f"{r['spill_load']})")
        limit = SHARED_LIMIT[self.arch]
        if r["shared"] > limit:
            found.append(f"needs {kb(r['shared'])} KB shared memory, over {ARCH_NAME[self.arch]}'s "
                         f"{kb(limit)} KB")
        if self.dot16 != "-" and self.dot16 != "no" and not self.tensor_core:
            how = ("16-bit operands" if self.dot16 != "upcast" else
                   "16-bit inputs upcast to fp32 (" + ", ".join(sorted(
                       {d['precision'] for d in r['dots']})) + ")")
            found.append(f"dots {how} with no tensor-core instruction")
        return found

    def to_json(self) -> dict:
        r = {k: v for k, v in self.result.items() if k != "dots"}
        return dict(spec=self.spec, arch=ARCH_NAME[self.arch], dtype=self.dtype,
                    dims=self.dims, **r, spill=self.spill if "error" not in r else None,
                    tensor_core=self.tensor_core, dot16=self.dot16,
                    dots=self.result.get("dots", []), problems=self.problems(),
                    ok=not self.problems())


def kb(n: int) -> str:
    return f"{n / 1024:.0f}" if n % 1024 == 0 else f"{n / 1024:.1f}"


# ---------------------------------------------------------------- jobs

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


def spec_jobs(program, dims: dict[str, int], shape: dict[str, int], archs, dtypes) -> list[Job]:
    """The jobs of one spec: its emitted Triton module, for every target and dtype."""
    from . import ir
    from .consts import const_values
    spec = program.spec
    sizes = dict(shape, **{d.name: dims.get(d.name, dims["*"]) for d in spec.dims})
    lead = {ir.TensorKind.INPUT: [sizes["B"], sizes["T"], sizes["H"]]}

    def shapes(tensors, first):
        return {t.name: first + [sizes[d] for d in t.dims] for t in tensors}

    module = emitted_module(program.emit("triton"))
    training = emitted_module(program.emit("torch"))
    consts = const_values(spec, sizes, {}, [])
    return [Job(program.name, module, arch, dtype, sizes,
                shapes(spec.inputs, lead[ir.TensorKind.INPUT]), shapes(spec.params, [sizes["H"]]),
                shapes(spec.states, [sizes["B"], sizes["H"]]), consts=consts,
                training_module=training)
            for arch in archs for dtype in dtypes]


def emitted_module(code: str) -> str:
    """The path of a file holding `code` (written once, under the seqc cache dir)."""
    from .cache import cache_dir, write_atomic
    name = hashlib.sha256(code.encode("utf-8")).hexdigest()[:32] + ".py"
    for directory in (cache_dir() / "gpu-check" / "modules",
                      Path(tempfile.gettempdir()) / f"seqc-gpu-check-{os.getuid()}"):
        path = directory / name
        try:
            if not path.exists() or path.read_text(encoding="utf-8") != code:
                write_atomic(path, code)
            return str(path)
        except OSError:
            continue
    raise OSError("no writable directory for the emitted modules (set SEQC_CACHE_DIR)")


def worker_env() -> dict[str, str]:
    """The environment of a worker: this one without the interpreter, seqc importable."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")     # Triton 3.9's default, stated (no warning)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def run_job(job: Job, timeout: float = JOB_TIMEOUT) -> list[KernelCheck]:
    """The job's kernel checks: from the job cache, else from a worker process."""
    return run_jobs([job], 1, timeout)


def job_key(job: Job) -> str:
    """A job's results depend on its module's code, its shapes, the target and Triton."""
    from importlib.metadata import version

    from .gpu_compile import RECORDING, RESULT_FORMAT
    payload = dict(job.payload(), module=Path(job.module).read_text(encoding="utf-8"))
    if job.training_module:
        payload["training_module"] = Path(job.training_module).read_text(encoding="utf-8")
    payload.pop("cached_only")
    text = json.dumps([payload, version("triton"), RESULT_FORMAT, RECORDING], sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


def read_job(key: str) -> list[dict] | None:
    from .cache import cache_dir
    try:
        results = json.loads((cache_dir() / "gpu-check" / "jobs" / f"{key}.json")
                             .read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return [dict(r, cached=True) for r in results]


def write_job(key: str, results: list[dict]) -> None:
    from .cache import cache_dir, write_atomic
    try:
        write_atomic(cache_dir() / "gpu-check" / "jobs" / f"{key}.json", json.dumps(results))
    except OSError:
        pass        # an unwritable cache costs time, not results


def spawn_worker(jobs: list[Job], timeout: float) -> list[list]:
    """Per job of one module, the worker's results (a list to cache); when the worker fails or
    times out, for the job it was on, the checks it finished plus a failed one, and for the
    jobs after it a failed check (lists of KernelCheck, not cached). The worker has `timeout`
    seconds a job."""
    with tempfile.TemporaryDirectory(prefix="seqc-gpu-check-") as directory:
        job_path, result_path = Path(directory) / "job.json", Path(directory) / "result.json"
        job_path.write_text(json.dumps([job.payload() for job in jobs]), encoding="utf-8")
        command = [sys.executable, "-m", "seqc.gpu_compile", str(job_path), str(result_path)]
        why = run_worker(command, timeout * len(jobs))
        progress = read_progress(result_path)
    results: list[list] = progress["jobs"][:len(jobs)]
    if why is None and progress["compiling"] is None and len(results) == len(jobs):
        return results
    why = why or "the worker stopped"
    stopped = jobs[len(results)]
    results.append([KernelCheck(stopped.label, stopped.arch, stopped.dtype, stopped.dims, r)
                    for r in progress["current"]] + [failed(stopped, why, progress["compiling"])])
    return results + [[failed(job, f"not measured (the worker stopped before this job: {why})")]
                      for job in jobs[len(results):]]


def run_worker(command: list[str], timeout: float) -> str | None:
    """Run a worker in a session of its own (so that a timeout also stops its ptxas): None
    when it succeeded, else why not."""
    process = subprocess.Popen(command, env=worker_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return f"compile timed out after {timeout:.0f} s"
    if process.returncode == 0:
        return None
    lines = (err or out).strip().splitlines()
    return lines[-1] if lines else f"worker exit {process.returncode}"


def read_progress(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return dict(jobs=[], current=[], compiling={})


def failed(job: Job, message: str, known: dict | None = None) -> KernelCheck:
    known = known or dict(kernel="?", mode="?", grid=[], programs=0)
    return KernelCheck(job.label, job.arch, job.dtype, job.dims, dict(known, error=message))


def run_jobs(jobs: list[Job], workers: int | None = None, timeout: float = JOB_TIMEOUT,
             per_module: bool = True) -> list[KernelCheck]:
    """Every job's kernel checks, in job order. The jobs not in the job cache run in one worker
    per module (its import and Triton's setup are paid once, not once a job), `workers` at a
    time, the largest groups first; with `per_module=False`, in a worker each (a job whose
    ptxas runs long then holds up, and times out, only itself)."""
    workers = max(1, workers or os.cpu_count() or 1)
    keys = [job_key(job) for job in jobs]
    results = [read_job(key) for key in keys]
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        if results[i] is None:
            groups.setdefault((job.module, job.training_module) if per_module else i,
                              []).append(i)
    order = worker_groups(list(groups.values()), workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = pool.map(lambda group: spawn_worker([jobs[i] for i in group], timeout), order)
        for group, group_results in zip(order, done):
            for i, result in zip(group, group_results):
                results[i] = result
                if result and isinstance(result[0], KernelCheck):
                    continue
                if not any(r.get("error", "").startswith("not measured") for r in result):
                    write_job(keys[i], result)
    return [r if isinstance(r, KernelCheck) else KernelCheck(job.label, job.arch, job.dtype,
                                                             job.dims, r)
            for job, rs in zip(jobs, results) for r in rs]


def worker_groups(groups: list[list[int]], workers: int) -> list[list[int]]:
    """The groups of jobs, largest first, the largest halved while there are fewer groups than
    workers (one spec on two targets still compiles on two cores)."""
    groups = sorted(groups, key=len, reverse=True)
    while groups and len(groups) < workers and len(groups[0]) > 1:
        largest = groups.pop(0)
        half = (len(largest) + 1) // 2
        groups = sorted(groups + [largest[:half], largest[half:]], key=len, reverse=True)
    return groups


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
