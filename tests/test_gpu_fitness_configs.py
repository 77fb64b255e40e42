"""Every launch configuration in the parallel forms' lists (backends/triton/parallel_host.md)
compiles for sm_80 and sm_90a without spills and within shared memory, one spec per form at
K = V = 64 (hgrn: D = 64; 128 too with SEQC_FITNESS_128=1, as test_gpu_fitness_families.py),
bf16, the launch shape B=4, T=4096, H=16 (`seqc gpu-check --all-configs`, forward modes only).
Results come from the gpu-check cache when the same kernel source and options were compiled
before."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import seqc  # noqa: E402
from seqc.gpu_jobs import DEFAULT_SHAPE, spec_jobs  # noqa: E402
from seqc.gpu_workers import run_jobs  # noqa: E402

SIZES = (64,) + ((128,) if os.environ.get("SEQC_FITNESS_128") == "1" else ())
FORMS = [("simple_gla", "chunk_parallel", "_chunk_parallel_configs"),
         ("deltanet", "chunk_delta_parallel", "_chunk_delta_parallel_configs"),
         ("rwkv7", "chunk_dplr_parallel", "_chunk_dplr_parallel_configs"),
         ("hgrn", "scan_parallel", "_scan_parallel_configs")]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name,mode,lists", FORMS)
def test_every_configuration_of_the_lists_fits(name, mode, lists, size):
    program = seqc.load(name)
    jobs = spec_jobs(program, {"*": size}, DEFAULT_SHAPE, [80, 90], ["bf16"])
    for job in jobs:
        job.modes, job.training_module, job.all_configs = [mode], None, True
    checks = run_jobs(jobs, workers=2, timeout=2400)
    for check in checks:
        assert "error" not in check.result, (check.spec, check.result)
        assert check.problems() == [], (check.arch, check.result)
    module = program.kernel("triton").module
    # the fallback's value block is 64 lanes at both sizes: the same lists
    configs = getattr(module, lists)(*([64] if mode != "scan_parallel" else []))
    launched = sum(len(c) for c in configs.values()) if isinstance(configs, dict) \
        else 2 * len(configs) + 1          # the summary and output passes, and the carry pass
    for arch in (80, 90):
        assert len([c for c in checks if c.arch == arch]) == launched
