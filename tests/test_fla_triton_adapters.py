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
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fla_traffic.py"
    spec = importlib.util.spec_from_file_location("fla_traffic", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.spec_rows("simple_gla", 16, 64)
    assert [r["runner"] for r in rows][-1] == "fla chunk_simple_gla"
    assert {"seqc chunk", "seqc chunk_parallel"} <= {r["runner"] for r in rows}
    for r in rows:
        assert r["inference"] >= 0.99 and r["fwd"] >= r["inference"] - 1e-9 and r["bwd"] > 1, r
