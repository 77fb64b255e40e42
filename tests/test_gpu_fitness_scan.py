"""GPU fitness of the non-chunk kernels (scan, scan_parallel, fused_recurrent): compiled for sm_80
and sm_90a by ptxas without a GPU (seqc/gpucheck.py) at the launch shape B=4, T=4096, H=16, bf16,
for the stdlib specs whose kernels spilled or did not compile before (docs/benchmarks.md, "GPU
fitness"): lru's scan spilled 16 B on sm_80, mamba's scan timed out in ptxas (its whole `[64, 64,
64]` time x D x N block in one program), and the fused kernel at D = 128 spilled for gru
(1.7 KB), lstm (5 KB) and mamba (0.4 KB). Results come from the gpu-check cache when the same
kernel source was compiled before (the cache key is Triton's kernel hash).

The interpreter tests beside them check what the fixes change in the emitted launchers: mamba's
state is split over D, the scan blocks hold at most 2048 values, gru and lstm load their
recurrent weights every step at D = 128, and the results still match the reference.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from seqc.gpu_jobs import DEFAULT_SHAPE, spec_jobs  # noqa: E402
from seqc.gpu_workers import run_jobs  # noqa: E402
from seqc.inputs import random_call  # noqa: E402


def compiled(cases, training=True):
    """cases: (spec, size, modes) -> the checks of every kernel those modes launch, sm_80 and
    sm_90a, bf16 (and, with `training`, the kernels a training call in them launches)."""
    jobs = []
    for name, size, modes in cases:
        for job in spec_jobs(seqc.load(name), {"*": size}, DEFAULT_SHAPE, [80, 90], ["bf16"]):
            job.modes = modes
            if not training:
                job.training_module = None
            jobs.append(job)
    return run_jobs(jobs, workers=2, timeout=900)


def test_scan_kernels_of_lru_and_mamba_fit_and_fill_the_machine():
    checks = compiled([("lru", 64, ["scan", "scan_parallel"]),
                       ("mamba", 64, ["scan", "scan_parallel"])])
    seen = {(c.spec, c.result.get("mode"), c.result.get("kernel")) for c in checks}
    assert ("mamba", "scan", "scan_kernel") in seen
    assert ("lru", "scan_parallel", "scan_chunk_output_kernel") in seen
    for check in checks:
        assert "error" not in check.result, (check.spec, check.result)
        assert check.spill == 0 and check.problems() == [], (check.spec, check.result)
    chunked = [c for c in checks if c.result["kernel"] in ("scan_chunk_summary_kernel",
                                                           "scan_chunk_output_kernel")]
    assert len(chunked) == 8       # 2 specs x 2 targets x 2 kernels
    for check in chunked + [c for c in checks if (c.spec, c.result["mode"]) == ("mamba", "scan")]:
        assert check.result["programs"] >= 2 * 132, check.result


def test_fused_kernels_at_d_128_fit():
    """The forward kernels (the generated backward of gru at D = 128 spills: docs/benchmarks.md,
    "GPU fitness: every stdlib kernel")."""
    checks = compiled([(name, 128, ["fused_recurrent"]) for name in ("gru", "lstm", "mamba")],
                      training=False)
    assert {c.spec for c in checks} == {"gru", "lstm", "mamba"}
    for check in checks:
        assert "error" not in check.result, (check.spec, check.result)
        assert check.spill == 0 and check.problems() == [], (check.spec, check.result)


def module(name):
    return seqc.load(name).kernel("triton").module


def test_mamba_state_is_split_over_d():
    """N is contracted by the read-out `h @ C`; D is not: the fused kernel at D = N = 128 holds
    h and A as [32, 128] blocks, 4 programs a head (it held [128, 128] of each in one)."""
    blocks, n_split = module("mamba")._fused_recurrent_blocks({"D": 128, "N": 128}, 128)
    assert (blocks["BLOCK_D"], blocks["BLOCK_N"], n_split) == (32, 128, 4)


def test_gru_and_lstm_load_their_weights_every_step_at_d_128():
    for name in ("gru", "lstm"):
        m = module(name)
        assert not m._fused_recurrent_reloads(m._fused_recurrent_blocks({"D": 64}, 128)[0])
        assert m._fused_recurrent_reloads(m._fused_recurrent_blocks({"D": 128}, 128)[0])


@pytest.mark.triton
@pytest.mark.parametrize("name,size,options", [
    ("gru", 128, {}), ("lstm", 128, {}), ("mamba", 7, {"block_split": 2})])
def test_fused_kernel_matches_the_reference(name, size, options):
    """Weights loaded every step (gru, lstm at 128); mamba's D = 7 in blocks of 2 (4 programs,
    the last one ragged)."""
    program = seqc.load(name)
    dims = {d.name: size for d in program.spec.dims}
    x, s = random_call(program.spec, dict(dims, B=1, H=1, T=3), dtype=torch.float32, seed=1,
                       with_initial_state=True)
    want = program.kernel("reference")(**x, initial_state=s, output_final_state=True)
    got = program.kernel("triton", mode="fused_recurrent", **options)(
        **x, initial_state=s, output_final_state=True)
    for o in want.keys():
        torch.testing.assert_close(got[o], want[o], rtol=1e-4, atol=1e-4)
    for n, v in want.final_state.items():
        torch.testing.assert_close(got.final_state[n], v, rtol=1e-4, atol=1e-4)


@pytest.mark.triton
def test_mamba_fused_backward_with_d_split(monkeypatch):
    """The generated backward's param shares (A[D, N]) when D is split in blocks of 2."""
    from test_triton_fused_backward import compare
    compare("mamba", monkeypatch, block_split=2)


@pytest.mark.triton
def test_scan_core_blocks_hold_at_most_512_values():
    """The training core (scan_core.md) asked for blocks of 64 steps takes [32 steps, 16 lanes]
    (it took min(128, pow2(L)) lanes: [64, 64] at L = 64, where the semiring core's backward
    spilled 80-784 B and mamba's 864 B): T = 66 in three time blocks and L = 40 in three lane
    blocks, the last ones ragged, against torch autograd."""
    from test_triton_scan_adjoint import assert_core_close, core_gradients, core_inputs, modules
    triton_module, torch_module = modules()
    tensors = core_inputs((1, 1, 66, 40), seed=6, zeros=(5, 64))
    assert triton_module._scan_core_shapes(tensors[1], 64)[3:] == (32, 3, 16, 3)
    got = core_gradients(triton_module.scan_core, tensors, 64)
    want = core_gradients(torch_module._scan, tensors, 64)
    assert_core_close(got, want, 1e-10, "lane blocks of 16")
