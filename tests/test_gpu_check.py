"""`seqc gpu-check`: Triton kernels compiled for sm_80 / sm_90a without a GPU (seqc/gpucheck.py).

The kernels here are toys, small enough that ptxas answers in seconds; each test uses its own
cache dir, so what it checks was compiled, not read back (except where the cache is the point).
"""
import json
import textwrap

import pytest

from seqc.cli import main
from seqc.gpu_jobs import Job, KernelCheck
from seqc.gpu_workers import run_job, run_jobs

TOYS = '''
import triton
import triton.language as tl

MODES = ("toy",)


@triton.jit
def hold_kernel(x, y, T, N: tl.constexpr):
    """Keeps an N x N fp32 block live across a loop: N * N / 32 values a thread (1 warp)."""
    o = tl.arange(0, N)
    block = tl.load(x + o[:, None] * N + o[None, :]).to(tl.float32)
    for t in range(T):
        block = block * 0.5 + tl.load(x + t * N * N + o[:, None] * N + o[None, :]).to(tl.float32)
    tl.store(y + o[:, None] * N + o[None, :], block.to(y.dtype.element_ty))


@triton.jit
def dot_kernel(a, b, c, N: tl.constexpr):
    o = tl.arange(0, N)
    x = tl.load(a + o[:, None] * N + o[None, :])
    w = tl.load(b + o[:, None] * N + o[None, :])
    tl.store(c + o[:, None] * N + o[None, :], tl.dot(x, w).to(c.dtype.element_ty))


def run(inputs, params, dims, initial_state=None, output_final_state=False, mode=None):
    x = inputs["x"]
    hold_kernel[(3, 2)](x, x, 8, 64, num_warps=1, maxnreg=64)  # 128 values, 64 registers: spills
    hold_kernel[(1,)](x, x, 8, 16, num_warps=1)         # 8 values a thread
    dot_kernel[(1,)](x, x, x, 64)
'''


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    """The toy module's three launches compiled for sm_80 and sm_90a (bf16 pointers), in one
    worker per target, with a fresh cache: {arch: (hungry, small, dot)}."""
    directory = tmp_path_factory.mktemp("gpu_check")
    path = directory / "toys.py"
    path.write_text(TOYS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEQC_CACHE_DIR", str(directory / "cache"))
        jobs = [Job("toy", str(path), arch, "bf16", {}, {"x": [8, 128, 128]}, {}, {})
                for arch in (80, 90)]
        checks = run_jobs(jobs, workers=2, timeout=300)
        again = run_job(jobs[0])
        shifted_path = directory / "shifted.py"       # the same kernels, lower in their file
        shifted_path.write_text("# a comment line\n" * 3 + TOYS)
        shifted = run_job(Job("toy", str(shifted_path), 80, "bf16", {}, {"x": [8, 128, 128]},
                              {}, {}))
    by_arch = {80: checks[:3], 90: checks[3:]}
    return by_arch, again, shifted


def test_a_register_hungry_kernel_spills_and_fails(toys):
    hungry = toys[0][80][0]
    assert hungry.result["kernel"] == "hold_kernel"
    assert hungry.result["grid"] == [3, 2] and hungry.result["programs"] == 6
    assert hungry.result["warps"] == 1
    assert hungry.spill > 0
    assert hungry.spill == hungry.result["spill_store"] + hungry.result["spill_load"]
    assert any(p.startswith("spills") for p in hungry.problems())
    assert toys[0][90][0].spill > 0


def test_a_small_kernel_fits(toys):
    for arch in (80, 90):
        small = toys[0][arch][1]
        assert small.result["kernel"] == "hold_kernel" and small.result["programs"] == 1
        assert 0 < small.result["registers"] < 64
        assert small.spill == 0
        assert small.result["dots"] == [] and small.dot16 == "-"
        assert small.problems() == []


def test_a_bf16_dot_counts_tensor_core_instructions(toys):
    on_80, on_90 = toys[0][80][2], toys[0][90][2]
    assert on_80.result["kernel"] == "dot_kernel"
    assert [(d["a"], d["b"]) for d in on_80.result["dots"]] == [("bf16", "bf16")]
    assert on_80.dot16 == "bf16"
    assert on_80.result["mma"] > 0 and on_80.result["wgmma"] == 0
    assert on_90.result["mma"] + on_90.result["wgmma"] > 0
    assert on_80.result["shared"] > 0
    assert on_80.problems() == [] and on_90.problems() == []


def test_results_are_cached(toys):
    checks, again, _ = toys
    assert [c.result["cached"] for c in checks[80]] == [False, False, False]
    assert [c.result["cached"] for c in again] == [True, True, True]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("cached", "seconds")}  # noqa: E731
    assert [strip(c.result) for c in again] == [strip(c.result) for c in checks[80]]


def test_a_kernel_moved_down_its_file_is_read_from_the_cache(toys):
    """Triton's own kernel hash holds the kernel's line number; the cache key does not."""
    checks, _, shifted = toys
    assert [c.result["cached"] for c in shifted] == [True, True, True]
    assert [c.result["registers"] for c in shifted] == [c.result["registers"] for c in checks[80]]


def test_jobs_of_one_module_share_a_worker_and_a_failed_one_stops_the_rest(tmp_path, monkeypatch):
    """run_jobs runs a module's jobs in one worker (halved while workers would idle); when the
    worker fails on a job, that job fails with the worker's error and the jobs after it are
    reported not measured, none of them cached."""
    from seqc.gpu_workers import worker_groups
    assert worker_groups([[0, 1, 2, 3], [4]], 1) == [[0, 1, 2, 3], [4]]
    assert worker_groups([[0, 1, 2, 3], [4]], 3) == [[0, 1], [2, 3], [4]]
    assert worker_groups([[0, 1, 2]], 2) == [[0, 1], [2]]
    monkeypatch.setenv("SEQC_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "broken.py"
    path.write_text("MODES = ('toy',)\n\n\ndef run(*args, mode=None):\n"
                    "    raise ValueError('no launch here')\n")
    jobs = [Job("broken", str(path), arch, "bf16", {}, {"x": [1]}, {}, {}) for arch in (80, 90)]
    first, second = run_jobs(jobs, workers=1)
    assert first.arch == 80 and first.problems() == ["does not compile: ValueError: no launch here"]
    assert second.arch == 90 and second.problems() == [
        "not measured (the worker stopped before this job: ValueError: no launch here)"]
    assert not (tmp_path / "cache" / "gpu-check" / "jobs").exists()


def test_16_bit_data_upcast_before_an_ieee_dot_fails_without_tensor_cores():
    check = KernelCheck("toy", 90, "bf16", {}, dict(
        kernel="k", mode="m", grid=[1], programs=1, warps=4, stages=3, registers=40,
        spill_store=0, spill_load=0, shared=0, mma=0, wgmma=0, sixteen_bit_pointers=True,
        dots=[{"a": "f32", "b": "f32", "precision": "ieee"}]))
    assert check.dot16 == "upcast"
    assert check.problems() == ["dots 16-bit inputs upcast to fp32 (ieee) with no tensor-core "
                                "instruction"]
    fp32_call = KernelCheck("toy", 90, "fp32", {}, dict(check.result, sixteen_bit_pointers=False))
    assert fp32_call.dot16 == "no" and fp32_call.problems() == []


def test_shared_memory_over_the_target_limit_fails():
    fits = dict(kernel="k", mode="m", grid=[1], programs=1, warps=4, stages=3, registers=40,
                spill_store=0, spill_load=0, shared=200 * 1024, mma=0, wgmma=0, dots=[])
    assert KernelCheck("toy", 90, "bf16", {}, fits).problems() == []
    assert KernelCheck("toy", 80, "bf16", {}, fits).problems() == [
        "needs 200 KB shared memory, over sm_80's 163 KB"]


SEQUENTIAL = """\
model toy_tanh
dims D
input x[D]
param R[D, D]
state h[D] = 0
h = tanh(R @ h + x)
output y = h
"""


@pytest.fixture(scope="module")
def sequential_spec(tmp_path_factory):
    """A spec with no parallel form (its Triton module has the fused recurrent kernel only),
    and a cache dir shared by the CLI tests below (the second call reads the first's)."""
    directory = tmp_path_factory.mktemp("gpu_check_cli")
    path = directory / "toy_tanh.seq"
    path.write_text(SEQUENTIAL)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEQC_CACHE_DIR", str(directory / "cache"))
        yield str(path)


# R[D, D] is held whole by every program (D is contracted: no split): at D = 256, 256 x 256 fp32
# over 128 threads, besides the R * h product
SIZES = ["--dims", "16", "--dims", "D=256", "--arch", "90", "--shape", "B=2,T=64,H=3"]


def test_cli_json_reports_every_kernel_and_exits_1_on_a_spill(sequential_spec, capsys):
    status = main(["gpu-check", sequential_spec, *SIZES, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 1 and report["ok"] is False
    assert report["shape"] == {"B": 2, "T": 64, "H": 3}
    small, big = [k for k in report["kernels"] if k["mode"] == "fused_recurrent"]
    # the fused kernel's generated backward (fused_recurrent_bwd.md) is recorded too, at each size
    backward = [k for k in report["kernels"] if k["mode"] == "fused_recurrent backward"]
    assert [k["kernel"] for k in backward] == ["fused_recurrent_bwd_kernel"] * 2
    assert [k["dims"]["D"] for k in backward] == [16, 256]
    assert {"spec", "arch", "dtype", "dims", "mode", "kernel", "grid", "programs", "warps",
            "stages", "registers", "spill", "shared", "tensor_core", "dot16", "problems",
            "ok"} <= set(small)
    assert small["spec"] == "toy_tanh" and small["arch"] == "sm_90a" and small["dtype"] == "bf16"
    assert small["mode"] == "fused_recurrent" and small["kernel"] == "fused_recurrent_kernel"
    assert small["dims"] == {"B": 2, "T": 64, "H": 3, "D": 16}
    assert small["grid"] == [1, 6] and small["programs"] == 6
    assert small["spill"] == 0 and small["problems"] == [] and small["ok"] is True
    assert big["dims"]["D"] == 256 and big["grid"] == [1, 6]
    assert big["spill"] > 0 and big["ok"] is False
    assert big["problems"][0].startswith("spills")


def test_cli_table_and_exit_codes(sequential_spec, capsys):
    assert main(["gpu-check", sequential_spec, *SIZES]) == 1
    out = capsys.readouterr().out
    assert "| toy_tanh | D=256 | sm_90a | fused_recurrent | fused_recurrent_kernel | " \
           "1x6 (6) |" in out
    # per size: the forward kernel, the training call's forward and the generated backward
    assert "FAIL: spills" in out and "3 of 6 kernels fit; 3 do not" in out
    assert main(["gpu-check", sequential_spec, *SIZES[:2], *SIZES[4:]]) == 0
    assert "3 of 3 kernels fit" in capsys.readouterr().out


def test_cli_reports_bad_arguments_and_spec_errors(tmp_path, capsys):
    assert main(["gpu-check", "gla", "--arch", "75"]) == 1
    assert "--arch: 75; choose from 80, 86, 89, 90" in capsys.readouterr().err
    assert main(["gpu-check", "gla", "--dims", "Q=4"]) == 1
    assert "`Q` is no dim of the specs checked (K, V)" in capsys.readouterr().err
    bad = tmp_path / "bad.seq"
    bad.write_text(textwrap.dedent("""\
        model m
        dims K
        input x[K]
        output o = y
        """))
    assert main(["gpu-check", str(bad)]) == 1
    assert "bad.seq:4:12: error: unknown name `y`" in capsys.readouterr().err


def test_the_fused_recurrent_kernel_fits_at_k_v_128(tmp_path, monkeypatch):
    """S[128, 128] fp32 in one program took 255 registers and spilled; the value dim is now
    blocked so that a program holds at most 8192 state values (BLOCK_V = 64, 2 programs a
    head)."""
    import seqc
    from seqc.gpu_jobs import DEFAULT_SHAPE, spec_jobs
    monkeypatch.setenv("SEQC_CACHE_DIR", str(tmp_path / "cache"))
    jobs = spec_jobs(seqc.load("simple_gla"), {"*": 128}, DEFAULT_SHAPE, [80, 90], ["bf16"])
    for job in jobs:
        job.modes = ["fused_recurrent"]
    for check in run_jobs(jobs, workers=2, timeout=300):
        if check.result["mode"] != "fused_recurrent backward":      # its blocks are 32 lanes
            assert check.result["grid"] == [2, 64], check.result
        assert check.spill == 0 and check.problems() == [], check.result



def test_the_fused_backward_of_a_small_recurrence_does_not_spill(tmp_path, monkeypatch):
    """maxplus and mingru at D = 64: without a register limit ptxas compiled their generated
    backward with 56 / 32 registers and spilled 16 / 12 B (sm_80 / sm_90a); launched with
    `maxnreg` (fused_recurrent_bwd.md, "Registers") it uses 61-64 and spills nothing."""
    import seqc
    from seqc.gpu_jobs import DEFAULT_SHAPE, spec_jobs
    monkeypatch.setenv("SEQC_CACHE_DIR", str(tmp_path / "cache"))
    jobs = [job for spec in ("maxplus", "mingru")
            for job in spec_jobs(seqc.load(spec), {"*": 64}, DEFAULT_SHAPE, [80, 90], ["bf16"])]
    for job in jobs:
        job.modes = ["fused_recurrent"]
    checks = run_jobs(jobs, workers=2, timeout=300)
    backward = [c for c in checks if c.result["mode"] == "fused_recurrent backward"]
    assert len(backward) == 4, [c.result for c in checks]
    for check in checks:
        assert check.spill == 0 and check.problems() == [], check.result

@pytest.mark.triton
def test_the_blocked_fused_recurrent_kernel_matches_the_reference():
    """K = V = 128 under the interpreter: two value blocks a head, each its own program."""
    import torch

    import seqc
    from seqc.inputs import random_call
    program = seqc.load("gated_deltanet")
    tensors, state = random_call(program.spec, dict(B=1, T=5, H=1, K=128, V=128), seed=1,
                                 with_initial_state=True)
    want = program.kernel("reference")(**tensors, initial_state=state, output_final_state=True)
    got = program.kernel("triton", mode="fused_recurrent")(**tensors, initial_state=state,
                                                            output_final_state=True)
    torch.testing.assert_close(got.o, want.o, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.final_state["S"], want.final_state["S"], rtol=1e-4, atol=1e-4)


def test_the_model_takes_the_larger_of_memory_and_compute_over_the_covered_sms():
    from seqc.gpu_counts import KernelCount
    from seqc.gpu_model import GPUS, LAUNCH_S, kernel_time
    h100 = GPUS["h100"]
    fma = KernelCount(bytes=3.35e9, flops=dict(tensor=0.0, tf32=0.0, fma=67e9))
    full = kernel_time(h100, fma, programs=264)
    assert full["coverage"] == 1.0
    assert full["memory_s"] == pytest.approx(1e-3) and full["compute_s"] == pytest.approx(1e-3)
    half = kernel_time(h100, KernelCount(3.35e9, 0, dict(tensor=0.0, tf32=0.0, fma=1e12)), 66)
    assert half["coverage"] == 0.5 and half["bound"] == "fp32 FMA"
    assert half["predicted_s"] == pytest.approx(1e12 / (67e12 * 0.5) + LAUNCH_S)
    tensor = KernelCount(3.35e9, 0, dict(tensor=5e11, tf32=0.0, fma=0.0))
    assert kernel_time(h100, tensor, 132)["bound"] == "memory"
    assert kernel_time(h100, tensor, 132)["predicted_s"] == pytest.approx(1e-3 + LAUNCH_S)
    # a kernel whose compiled form has no tensor-core instruction runs its bf16 dots on FMA
    assert kernel_time(h100, tensor, 132, tensor_ok=False)["bound"] == "fp32 FMA"


def test_the_model_counts_each_kernel_of_a_mode_and_sums_them():
    """simple_gla's chunk_parallel at B=2, T=512, H=2, K=V=32: two kernels, bytes and dot FLOPs
    of each counted under the interpreter and extrapolated from T = 128, 256, against a direct
    count at T = 512; the mode's time is the sum of its kernels'; the roofline is its bound."""
    import torch

    import seqc
    from seqc.gpu_counts import count_mode
    from seqc.gpu_model import GPUS, roofline, spec_model
    program = seqc.load("simple_gla")
    sizes = dict(B=2, T=512, H=2, K=32, V=32)
    model = spec_model(program, sizes, GPUS["h100"], modes=["chunk_parallel"])
    (mode,) = model["modes"]
    names = [k["kernel"] for k in mode["kernels"]]
    assert names == ["chunk_parallel_state_kernel", "chunk_parallel_output_kernel"]
    direct = count_mode(program, "chunk_parallel", dict(sizes, B=1, H=1), torch.bfloat16, {})
    for k in mode["kernels"]:
        assert k["bytes"] == pytest.approx(4 * direct[k["kernel"]].bytes)
        assert sum(k["flops"].values()) == pytest.approx(4 * sum(direct[k["kernel"]].flops.values()))
        assert k["flops"]["fma"] == 0 and k["flops"]["tensor"] > 0     # bf16 dots
    state, output = mode["kernels"]
    # V = 32: chunks of 64; the state pass in key and value blocks of 16 (a small launch: the
    # most programs, chunk_parallel.md "Blocks")
    assert state["programs"] == 2 * 2 * 4 and output["programs"] == 2 * 2 * 512 // 64
    assert state["scratch"] > 0 and output["scratch"] > 0        # the chunk states, fp32
    assert mode["predicted_s"] == pytest.approx(state["predicted_s"] + output["predicted_s"])
    bound = roofline(program, sizes, GPUS["h100"], mode["compulsory"])
    assert model["roofline"] == bound and mode["ratio"] > 1
    assert mode["compulsory"] == pytest.approx(4 * direct[""].bytes)


def test_the_model_counts_a_launch_size_rule_at_the_call_shape():
    """deltanet's chunk_delta takes the value block of least memory time for the launch, whose
    share of WIDE_VALUE_PROGRAMS (132 SMs) depends on B x H: K = 80, V = 40 is two value blocks
    of 32 a head at B=4, H=17 (136 programs; one of 64 would fill 68 SMs) and three of 16 at
    B=1, H=4. The counts, taken at
    B = H = 1, follow the call shape: a head's q, k (80 lanes) and beta (bf16) are read once
    more at the narrow shape, and nothing else changes."""
    import torch

    import seqc
    from seqc.gpu_counts import extrapolated, launch_grids
    program = seqc.load("deltanet")
    per_head = {}
    for B, H, blocks in ((4, 17, 2), (1, 4, 3)):
        sizes = dict(B=B, T=128, H=H, K=80, V=40)
        assert launch_grids(program, "chunk_delta", sizes, torch.bfloat16, {}) == {
            "chunk_delta_kernel": [B * H * blocks]}
        counts = extrapolated(program, "chunk_delta", sizes, torch.bfloat16, {})
        per_head[blocks] = counts["chunk_delta_kernel"].bytes / (B * H)
    assert per_head[3] - per_head[2] == pytest.approx(128 * (2 * 80 * 2 + 2))


def test_cli_model_prints_the_time_of_each_mode_against_the_roofline(sequential_spec, capsys):
    status = main(["gpu-check", sequential_spec, "--dims", "16", "--arch", "90",
                   "--shape", "B=2,T=64,H=3", "--model", "h100"])
    out = capsys.readouterr().out
    assert status == 0
    assert "GPU model: H100 SXM (HBM 3.35 TB/s" in out
    (row,) = [line for line in out.splitlines() if line.startswith("| toy_tanh | fused_recurrent |")
              and "fused_recurrent_kernel" not in line]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "6"              # programs: B x H
    predicted, roofline, ratio = float(cells[6]), float(cells[8].split()[0]), float(cells[9])
    assert ratio == pytest.approx(predicted / roofline, rel=0.02) and ratio >= 1
    assert cells[10] == "chosen (fastest)"
    (kernel,) = [line for line in out.splitlines()
                 if "| fused_recurrent_kernel |" in line and "%" in line]
    cells = [c.strip() for c in kernel.strip("|").split("|")]
    assert cells[3:5] == ["6", "5%"]
    memory, compute, predicted = (float(c) for c in cells[7:10])
    assert predicted == pytest.approx(max(memory, compute) + 0.002, abs=1e-3)


def test_bench_model_prints_every_mode_and_the_mode_none_choice(capsys):
    """`seqc bench SPEC --model h100`: no timing, the model of each Triton mode at the shape
    and the mode `mode=None` runs there (B=1, H=4: chunk's 4 programs against the state pass's
    4: chunk_parallel)."""
    status = main(["bench", "simple_gla", "--model", "h100", "--shape", "B=1,T=256,H=4,K=64,V=64"])
    out = capsys.readouterr().out
    assert status == 0
    modes = [line.split("|")[2].strip() for line in out.splitlines()
             if line.startswith("| simple_gla |") and "kernel" not in line.split("|")[3]]
    assert {"chunk", "chunk_parallel", "fused_recurrent"} <= set(modes)
    assert "mode=None runs chunk_parallel at this shape" in out
