"""The adapters through which scripts/gpu.sh sets seqc against fla's Triton ops on a GPU
(seqc.gpu_bench.FLA_TRITON), checked without a GPU: fla's Triton ops run under the Triton
interpreter (seqc/fla_interpreted.py) on each spec's random call, and their output and the
gradients of its weighted sum into every input must match seqc's reference backend.

A wrong adapter would otherwise first show on a lent GPU as a mismatch; this is how comba's was
found: fla's chunk_comba reads the undecayed state with p, its naive_recurrent_comba (and seqc's
spec) the decayed one, so the adapter passes p scaled by exp(g).
"""
import pytest
import torch

import seqc
from seqc.fla_interpreted import LoopIndex, interpreted_fla, widest
from seqc.gpu_bench import FLA_TRITON, FP32_REFUSED, _first, gradient_error, relative_rms
from seqc.inputs import random_call

pytestmark = pytest.mark.triton

TOLERANCE = 1e-4      # relative RMS, fp32 on both sides (fla's chunks of 64, seqc's reference)
BF16_TOLERANCE = 2e-2   # bf16 inputs into fla's op, fp32 reference (seqc.gpu_bench.MISMATCH)


@pytest.mark.parametrize("name", sorted(set(FLA_TRITON) - FP32_REFUSED))
def test_fla_op_through_its_adapter_computes_the_spec(name):
    program = seqc.load(name)
    sizes = dict(B=1, T=64, H=2, **{d.name: 16 for d in program.spec.dims})
    tensors, _ = random_call(program.spec, sizes, dtype=torch.float32, seed=0)
    output = program.spec.outputs[0].name
    reference = program.kernel("reference")
    _, make = FLA_TRITON[name]
    with interpreted_fla():
        with torch.no_grad():
            error = relative_rms(_first(make(tensors, sizes)()), reference(**tensors)[output])
        grad_error = gradient_error(lambda leaves: reference(**leaves)[output],
                                    lambda leaves: make(leaves, sizes)(), tensors)
    assert error < TOLERANCE, f"{name}: output differs from the reference by {error:.1e}"
    assert grad_error < TOLERANCE, f"{name}: gradients differ by {grad_error:.1e}"


@pytest.mark.parametrize("name", sorted(FP32_REFUSED))
def test_fla_bf16_only_op_through_its_adapter_computes_the_spec(name):
    """fla's delta-rule ops take bf16 only: run on bf16 inputs (the interpreter computing bf16 as
    a GPU does, backends/triton/interpreter_bf16.py; without it fla's deltanet output is off by
    1e11), against seqc's fp32 reference on the same values, to bf16's tolerance (measured
    4.5e-3 to 7.0e-3)."""
    program = seqc.load(name)
    sizes = dict(B=1, T=64, H=2, **{d.name: 16 for d in program.spec.dims})
    tensors, _ = random_call(program.spec, sizes, dtype=torch.bfloat16, seed=0)
    output = program.spec.outputs[0].name
    reference = program.kernel("reference")

    def want(leaves):
        return reference(**{n: t.float() for n, t in leaves.items()})[output]
    _, make = FLA_TRITON[name]
    with interpreted_fla():
        with torch.no_grad():
            error = relative_rms(_first(make(tensors, sizes)()), want(tensors))
        grad_error = gradient_error(want, lambda leaves: make(leaves, sizes)(), tensors)
    assert error < BF16_TOLERANCE, f"{name}: output differs from the reference by {error:.1e}"
    assert grad_error < BF16_TOLERANCE, f"{name}: gradients differ by {grad_error:.1e}"


def test_a_wrong_adapter_is_caught():
    """comba's adapter without the exp(g) scaling of p: the check above would fail."""
    program = seqc.load("comba")
    sizes = dict(B=1, T=64, H=2, K=16, V=16)
    tensors, _ = random_call(program.spec, sizes, dtype=torch.float32, seed=0)
    with interpreted_fla():
        from fla.ops.comba import chunk_comba
        unscaled = chunk_comba(tensors["q"], tensors["k"], tensors["v"], tensors["p"],
                               tensors["g"], tensors["beta"])[0]
    error = relative_rms(unscaled, program.kernel("reference")(**tensors)["o"])
    assert error > 1e-2


def test_loop_index_arithmetic_keeps_the_cast_and_the_widest_config_is_taken():
    import triton

    i = LoopIndex(3)
    assert isinstance(i * 4 + 1, LoopIndex) and (i * 4 + 1) == 13 and isinstance(-i, LoopIndex)
    configs = [triton.Config({"BK": 32, "BV": 32}), triton.Config({"BK": 64, "BV": 32}),
               triton.Config({"BK": 32, "BV": 64})]
    assert widest(configs) is configs[1]


def test_outside_the_block_fla_runs_as_installed():
    import fla.ops.simple_gla.chunk as module
    from triton.runtime.autotuner import Autotuner
    run = Autotuner.run
    with interpreted_fla():
        from fla.ops.simple_gla import chunk_simple_gla   # noqa: F401
        q = torch.randn(1, 64, 1, 16)
        chunk_simple_gla(q, q, q, -torch.rand(1, 64, 1))
        assert module.__dict__.get("range") is not None
    assert Autotuner.run is run and "range" not in module.__dict__


def test_the_traffic_comparison_counts_both_sides():
    """benchmarks/fla_traffic.py at a tiny call: each runner reads its inputs and writes its
    output at least once (a ratio under 1 would mean uncounted loads, e.g. a load path the
    counter misses), and the backward moves bytes on both sides."""
    rows = _benchmark("fla_traffic").spec_rows("simple_gla", 16, 64)
    assert [r["runner"] for r in rows][-1] == "fla chunk_simple_gla"
    assert {"seqc chunk", "seqc chunk_parallel"} <= {r["runner"] for r in rows}
    for r in rows:
        assert r["inference"] >= 0.99 and r["fwd"] >= r["inference"] - 1e-9 and r["bwd"] > 1, r


def _benchmark(name):
    import importlib.util
    import sys
    from pathlib import Path
    here = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(here))
    spec = importlib.util.spec_from_file_location(name, here / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module          # a dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_the_model_comparison_scales_each_launch():
    """benchmarks/fla_model.py: a kernel's bytes and programs counted at the two lengths are
    taken as a + b T per batch x head; its time is the GPU model's for that count and grid."""
    from seqc.gpu_counts import COUNT_T, KernelCount
    from seqc.gpu_model import GPUS, LAUNCH_S
    fm = _benchmark("fla_model")
    gpu = GPUS["h100"]
    t1, t2 = COUNT_T
    first, second = fm.Counted(), fm.Counted()
    first.kernels["k"] = [(KernelCount(1000.0), 2)]       # 1000 bytes, 2 programs at t1
    second.kernels["k"] = [(KernelCount(2000.0), 4)]      # doubled at t2 = 2 t1
    first.torch_bytes, second.torch_bytes, second.torch_ops = 10.0, 20.0, 3
    sizes = dict(B=2, H=3, T=4 * t1)
    timed = fm.phase_time(first, second, sizes, gpu)
    assert t2 == 2 * t1
    assert timed["kernel_bytes"] == pytest.approx(6 * 4000.0)
    (kernel,) = timed["per_kernel"]
    assert kernel["programs"] == 6 * 8
    assert kernel["predicted_s"] == pytest.approx(
        6 * 4000.0 / (gpu.bandwidth * 48 / gpu.sms) + LAUNCH_S)
    assert timed["torch_s"] == pytest.approx(6 * 40.0 / gpu.bandwidth + 3 * LAUNCH_S)
    second.kernels["k"].append((KernelCount(1.0), 1))
    with pytest.raises(ValueError, match="not linear"):
        fm.phase_time(first, second, sizes, gpu)


def test_the_model_comparison_records_each_launch_grid():
    """The grids benchmarks/fla_model.py records while a call runs are the grids seqc's own
    model reads off the module's launches (seqc/gpu_counts.py `launch_grids`)."""
    import seqc
    from seqc.gpu_counts import launch_grids
    fm = _benchmark("fla_model")
    program = seqc.load("simple_gla")
    sizes = dict(B=1, T=128, H=1, K=16, V=16)
    _, runners = fm.runners("simple_gla", 16, 128, torch.bfloat16, fla=False)
    call = dict((label, call) for label, call, _ in runners)["seqc chunk_parallel"]
    with torch.no_grad():
        counted = fm.count_phase(call)
    grids = launch_grids(program, "chunk_parallel", sizes, torch.bfloat16, {})
    assert {k: [p for _, p in v] for k, v in counted.kernels.items()} == grids
    assert all(c.bytes > 0 for v in counted.kernels.values() for c, _ in v)
