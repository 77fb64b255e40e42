"""Running `seqc gpu-check`'s jobs: in worker processes (`seqc.gpu_compile`, one per emitted
module, its jobs in turn; workers in parallel), their results cached on disk per job.

`run_jobs` is the entry: the jobs found in the job cache are read back, the others grouped by
module and run, `workers` at a time; a worker that fails or times out fails the job it was on
and leaves the jobs after it "not measured" (neither is cached).
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
from pathlib import Path

from .gpu_jobs import Job, KernelCheck

JOB_TIMEOUT = 1200          # seconds a job (all kernels of a spec for one target) may take


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
