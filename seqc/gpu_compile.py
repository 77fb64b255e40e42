"""The worker of `seqc gpu-check`: compile a module's Triton launches for a GPU target, no GPU.

Run as `python -m seqc.gpu_compile JOB.json RESULT.json` in a process of its own, whose environment
does NOT set TRITON_INTERPRET=1 (under the interpreter `triton.jit` gives functions that cannot be
compiled). JOB.json lists jobs of one Python module with the emitted-module contract: `MODES`
and `run(inputs, params, dims, initial_state, output_final_state, mode=...)`; per job (a target,
a dtype, a call shape) the worker

1. imports it, once for all its jobs (telling it CUDA is there, so that it does not switch the interpreter on), and
   replaces each `triton.jit` function in its namespace by a recorder;
2. calls `run` once per mode on `meta` tensors of the job's shapes: every `kernel[grid](...)` is
   recorded (grid, arguments, launch options) and nothing runs; when the job names the spec's
   torch module (`training_module`), it also makes one training call per set of recurrence
   cores the modes train with, and one in fused_recurrent when the module has its generated
   backward (forward and backward, `record_training`), recording what the cores (or the fused
   kernels) launch under the modes `<mode> training` (forward) and `<mode> backward`;
3. binds each recorded launch exactly as Triton's launcher does (signature, constexprs,
   divisibility attributes; pointers are 16-byte aligned as every allocation is), compiles it
   with `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`, and reads ptxas's
   `-v` report (registers, spill bytes), Triton's shared-memory size, the tensor-core
   instructions of the PTX (`mma` on sm_80, `wgmma.mma_async` on sm_90a) and the operand types
   of every `tt.dot` in the Triton IR.

Results are cached per compiled kernel (JSON under `<seqc cache dir>/gpu-check/`), keyed by the
kernel's source and everything Triton specialises it on, the target and the launch options.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
SIXTEEN_BIT = ("bf16", "f16", "fp16")
RESULT_FORMAT = 1           # bump when what a cached result holds changes
RECORDING = 2               # bump when which launches a job records changes (job cache)
PTXAS_USED = re.compile(r"Used (\d+) registers")
PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
MMA = re.compile(r"^\s*(?:@!?%p\d+\s+)?mma\.", re.MULTILINE)
WGMMA = re.compile(r"^\s*(?:@!?%p\d+\s+)?wgmma\.mma_async", re.MULTILINE)
TT_DOT = re.compile(r"= tt\.dot .*?(?:inputPrecision = (\w+) )?: tensor<[0-9x]+x(\w+)> \* "
                    r"tensor<[0-9x]+x(\w+)>")


def main(argv: list[str]) -> int:
    """JOB.json holds a list of jobs, all of one module (gpu_workers.run_jobs groups them so): the
    module is imported once and each job recorded and compiled in turn. RESULT.json is rewritten
    before every kernel and after every job, `{"jobs": [results of each finished job],
    "current": [results so far of the next], "compiling": {...}}`, so that a parent that stops
    a slow compile still has the jobs and kernels before it."""
    jobs = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    out = Path(argv[1])
    finished: list[list[dict]] = []

    def progress(current: list[dict], compiling: dict | None) -> None:
        out.write_text(json.dumps(dict(jobs=finished, current=current, compiling=compiling)),
                       encoding="utf-8")
    for job in jobs:
        current: list[dict] = []
        progress(current, {})
        for report, compile_it in check_job(job):
            progress(current, report)
            current.append(compile_it())
        finished.append(current)
    progress([], None)
    return 0


def check_job(job: dict):
    """Per recorded launch of the job's module: (what is known before compiling, a function
    that compiles it for the job's target and returns the full result dict)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("seqc.gpu_compile must run without TRITON_INTERPRET=1")
    module = import_module(job["module"])
    for launch in record_launches(module, job):
        yield bind_launch(launch, job)


@functools.lru_cache(maxsize=None)
def import_module(path: str):
    """Import an emitted module as on a CUDA machine (its kernels are real `triton.jit`s); once
    a worker: the jobs of a worker share their module."""
    import torch
    name = "seqc_gpu_check_" + hashlib.sha256(path.encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    available = torch.cuda.is_available
    torch.cuda.is_available = lambda: True
    try:
        spec.loader.exec_module(module)
    finally:
        torch.cuda.is_available = available
    return module


class Recorder:
    """Stands in for a `triton.jit` function: `kernel[grid](*args, **options)` is recorded."""

    def __init__(self, name: str, fn, launches: list, mode: list):
        self.name, self.fn, self.launches, self.mode = name, fn, launches, mode

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(dict(kernel=self.name, fn=self.fn, grid=grid, args=args,
                                      kwargs=kwargs, mode=self.mode[0]))
        return launch


def record_launches(module, job: dict) -> list[dict]:
    import torch
    from triton.runtime.jit import JITFunction
    launches: list[dict] = []
    current_mode = [None]
    jitted = {name: value for name, value in vars(module).items()
              if isinstance(value, JITFunction)}
    dtype = getattr(torch, TORCH_DTYPES[job["dtype"]])

    def meta(shapes: dict, dtype) -> dict:
        return {name: torch.empty(shape, dtype=dtype, device="meta")
                for name, shape in shapes.items()}

    states = meta(job["states"], torch.float32)
    dims = {**job["dims"], **job.get("consts", {})}
    modes = job.get("modes") or module.MODES
    for name, fn in jitted.items():
        setattr(module, name, Recorder(name, fn, launches, current_mode))
    if hasattr(module, "TUNING"):       # the fallbacks, or every configuration of each list
        module.TUNING = "all" if job.get("all_configs") else "fallback"
    try:
        for mode in modes:
            current_mode[0] = mode
            module.run(meta(job["inputs"], dtype), meta(job["params"], dtype), dims,
                       states or None, True, mode=mode)
        if job.get("training_module"):
            record_training(module, import_module(job["training_module"]), job, modes, dims,
                            current_mode, launches)
    finally:       # kernels call jitted helpers through these globals: compile with the real ones
        for name, fn in jitted.items():
            setattr(module, name, fn)
    return launches


def record_training(module, torch_module, job: dict, modes, dims: dict, current_mode: list,
                    launches: list) -> None:
    """One training call a mode, as seqc's Triton backend makes it (seqc/autograd.py): the torch
    module's `run` with the recurrence cores the mode trains with, on `meta` inputs, params and
    initial states requiring grad, then `backward` with incoming gradients on every output and
    final state. What the cores launch is recorded under the mode `<mode> training` (forward)
    or `<mode> backward`, once a kernel and specialisation (the torch module runs time in slabs:
    the next slab's launch is the same compile). Modes that train with the same cores are
    recorded once."""
    import torch

    from seqc.autograd import fused_backward, training_cores
    dtype = getattr(torch, TORCH_DTYPES[job["dtype"]])
    seen: set = set()
    for mode in modes:
        cores = training_cores(module, {"mode": mode}, dims, dtype)
        key = tuple(sorted((k, id(getattr(v, "func", v))) for k, v in cores.items()
                           if callable(v)))
        if cores:
            run = functools.partial(torch_module.run, **cores)
        elif fused_backward(module, {"mode": mode}):   # the generated adjoint kernel
            run, key = module.train, ("fused_recurrent_bwd",)
        else:
            continue
        if key in seen:
            continue
        seen.add(key)
        first = len(launches)

        def leaves(shapes, dtype):
            return {name: torch.empty(shape, dtype=dtype, device="meta", requires_grad=True)
                    for name, shape in shapes.items()}

        current_mode[0] = f"{mode} training"
        outputs, final = run(leaves(job["inputs"], dtype), leaves(job["params"], dtype), dims,
                             leaves(job["states"], torch.float32) or None, True)
        results = [t for t in [*outputs.values(), *final.values()] if t.requires_grad]
        current_mode[0] = f"{mode} backward"
        torch.autograd.backward(results, [torch.empty_like(t) for t in results])
        kept = {}
        for launch in launches[first:]:
            kept.setdefault(specialisation(launch), launch)
        launches[first:] = list(kept.values())


def specialisation(launch: dict) -> tuple:
    """What makes two launches one compile: the kernel, its tensors' dtypes, its other
    arguments and the launch options."""
    import torch
    args = tuple(str(a.dtype) if isinstance(a, torch.Tensor) else repr(a) for a in launch["args"])
    return (launch["kernel"], args, tuple(sorted((k, repr(v)) for k, v in launch["kwargs"].items())))


def bind_launch(launch: dict, job: dict):
    """Bind one recorded launch as Triton's launcher does: (its report so far, a function
    that compiles it, or reads the cache, and returns the report with the measurements)."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", int(job["arch"]), 32)
    backend = make_backend(target)
    fn = launch["fn"]
    # pointers are bound as small aligned CPU tensors of the same dtype: Triton specialises a
    # tensor on its dtype and 16-byte alignment only, which every CUDA allocation has
    args = [torch.empty(16, dtype=a.dtype) if isinstance(a, torch.Tensor) else a
            for a in launch["args"]]
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **launch["kwargs"])
    options, signature, constexprs, attrs = fn._pack_args(backend, launch["kwargs"], bound,
                                                          specialization, options)
    source = ASTSource(fn, signature, constexprs, attrs)
    grid = launch["grid"]
    if callable(grid):
        grid = grid(bound)
    grid = [int(g) for g in grid]
    # a training call's cores get the roles the (fp32) torch prelude computed: 16-bit data of a
    # 16-bit call that reaches them as fp32 counts as upcast
    training16 = launch["mode"].endswith((" training", " backward")) \
        and job["dtype"] in SIXTEEN_BIT
    report = dict(kernel=launch["kernel"], mode=launch["mode"], grid=grid,
                  programs=math.prod(grid), warps=options.num_warps, stages=options.num_stages,
                  sixteen_bit_pointers=training16 or any(str(t).lstrip("*") in SIXTEEN_BIT
                                                         for t in signature.values()
                                                         if str(t).startswith("*")))

    def compile_it() -> dict:
        key = result_key(kernel_hash(source), job["arch"], options, triton.__version__)
        cached = read_cached(key)
        if cached is not None:
            return dict(report, **cached, cached=True)
        if job.get("cached_only"):
            return dict(report, error="not measured (not in the cache)", cached=False)
        measured = measure(source, target, options)
        write_cached(key, measured)
        return dict(report, **measured, cached=False)
    return report, compile_it


def measure(source, target, options) -> dict:
    import triton
    from triton import knobs
    started = time.perf_counter()
    log = io.StringIO()
    knobs.nvidia.dump_ptxas_log = True      # Triton prints ptxas -v's report: captured here
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(source, target=target, options=options.__dict__)
    except Exception as error:      # a kernel Triton or ptxas rejects is a result, not a crash
        first = str(error).strip().splitlines()
        return dict(error=f"{type(error).__name__}: {first[0] if first else ''}"[:300],
                    seconds=round(time.perf_counter() - started, 1))
    ptxas = log.getvalue()
    if not PTXAS_USED.search(ptxas):        # Triton's own cache answered: run ptxas ourselves
        ptxas = run_ptxas(compiled.asm["ptx"], target.arch)
    return dict(parse_compiled(ptxas, compiled.asm["ptx"], compiled.asm["ttir"],
                               compiled.metadata.shared),
                seconds=round(time.perf_counter() - started, 1))


def parse_compiled(ptxas: str, ptx: str, ttir: str, shared: int) -> dict:
    used = PTXAS_USED.search(ptxas)
    spill = PTXAS_SPILL.search(ptxas)
    dots = [dict(a=a, b=b, precision=precision or "ieee") for precision, a, b in
            TT_DOT.findall(ttir)]
    return dict(registers=int(used.group(1)) if used else None,
                spill_store=int(spill.group(1)) if spill else 0,
                spill_load=int(spill.group(2)) if spill else 0,
                shared=int(shared), mma=len(MMA.findall(ptx)), wgmma=len(WGMMA.findall(ptx)),
                dots=dots)


def run_ptxas(ptx: str, arch: int) -> str:
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "kernel.ptx"
        path.write_text(ptx, encoding="utf-8")
        done = subprocess.run([get_ptxas(arch).path, "-v", "--regAllocOptLevel=2",
                               f"--gpu-name={sm_arch_from_capability(arch)}", str(path),
                               "-o", str(path.with_suffix(".o"))],
                              capture_output=True, text=True)
    return done.stdout + done.stderr


def kernel_hash(source) -> str:
    """`ASTSource.hash()` without the kernel's line number in its file (Triton's `cache_key`
    has it): a kernel whose module grew lines above it keeps its cached result."""
    import inspect

    from triton.runtime.jit import DependenciesFinder
    fn = source.fn
    finder = DependenciesFinder(name=fn._fn_name, globals=fn.__globals__,
                                nonlocals=inspect.getclosurevars(fn.fn).nonlocals, src=fn.src)
    finder.visit(fn.parse())
    signature = [v for _, v in sorted(source.signature.items())]
    constants = "-".join(getattr(v, "cache_key", None) or str(v)
                         for _, v in sorted(source.constants.items()))
    text = f"{finder.ret}-{source.attrs}-{signature}-{constants}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def result_key(source_hash: str, arch, options, triton_version: str) -> str:
    # a register limit (the launch's `maxnreg`) is part of the key only when set: the keys of
    # launches without one stay those already cached
    limit = [options.maxnreg] if getattr(options, "maxnreg", None) else []
    text = json.dumps([source_hash, int(arch), options.num_warps, options.num_stages,
                       options.num_ctas, triton_version, RESULT_FORMAT, *limit])
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def results_dir() -> Path:
    from .cache import cache_dir
    return cache_dir() / "gpu-check"


def read_cached(key: str) -> dict | None:
    try:
        return json.loads((results_dir() / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_cached(key: str, result: dict) -> None:
    from .cache import write_atomic
    with contextlib.suppress(OSError):
        write_atomic(results_dir() / f"{key}.json", json.dumps(result))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
