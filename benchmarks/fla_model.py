"""seqc's Triton modes and fla's Triton ops under one GPU performance model (no GPU): the
predicted time of an inference call and of a training step (forward with gradients, then
backward) on an H100 or H200, side by side.

    python benchmarks/fla_model.py [--specs simple_gla,gated_deltanet] [--gpu h100]
                                   [--shape B=4,T=4096,H=16] [--dims 128] [--no-training]

Each runner is run under the Triton interpreter at B = H = 1 and two lengths (T = 128 and 256,
bf16, every dim `--dims`): seqc through `program.kernel("triton", mode=...)`, fla through the
adapters scripts/gpu.sh uses (seqc.gpu_bench.FLA_TRITON; fla's ops interpreted by
seqc/fla_interpreted.py, each autotuned kernel on its widest blocks). Per kernel launch: the bytes
of its loads and stores, the FLOPs of its `tl.dot`s by unit, its programs (seqc/gpu_counts.py
counts the same for `seqc bench --model`). Each kernel's bytes, FLOPs and programs are taken as
a + b T per batch x head and scaled to `--shape`, then timed as seqc/gpu_model.py times a
kernel: max(bytes / (bandwidth x coverage), FLOPs / (rate x coverage)) + a launch, coverage =
min(1, programs / SMs). The torch operators a runner runs between its kernels (casts, cumsums,
prelude and gradient sums under autograd; `TorchBytes` of fla_traffic.py, eager and unfused)
are charged as memory-bound passes over every SM plus a launch each. What the adapters compute
before the op (mamba2's `dt B`, comba's `p exp(g)`, hgrn2's `1 - exp(g)`) is not charged to fla.

What the model leaves out (latency, occupancy, the dependency chain of a state pass, elementwise
work) it leaves out of both runners alike; the ratio seqc / fla is what it is for.
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import seqc  # noqa: E402
from seqc.bench_io import compulsory  # noqa: E402
from seqc.fla_interpreted import interpreted_fla  # noqa: E402
from seqc.gpu_bench import FLA_TRITON, _first  # noqa: E402
from seqc.gpu_counts import (COUNT_T, UNITS, KernelCount, count_weights, counting_kernels,  # noqa: E402
                             launch_threshold_per_head)
from seqc.gpu_model import GPUS, LAUNCH_S, kernel_time, roofline  # noqa: E402
from seqc.inputs import random_call  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fla_traffic import CHUNK_MODES, TorchBytes  # noqa: E402

PHASES = ("inference", "training")


@dataclass
class Counted:
    """One phase of one runner at one length: per kernel name, its launches' counts and
    programs; the torch operators' bytes and number."""
    kernels: dict = field(default_factory=dict)      # name -> [(KernelCount, programs)]
    torch_bytes: float = 0.0
    torch_ops: int = 0


@contextmanager
def recording_grids():
    """The grid of every interpreted launch, in order (the interpreter sets it once a launch)."""
    from triton.runtime import interpreter
    builder = interpreter.interpreter_builder
    grids, set_grid = [], builder.set_grid_dim

    def recorded(*grid):
        grids.append(grid)
        return set_grid(*grid)
    builder.set_grid_dim = recorded
    try:
        yield grids
    finally:
        builder.set_grid_dim = set_grid


def count_phase(run) -> Counted:
    torch_side, out = TorchBytes(), Counted()
    with counting_kernels() as (launches, _), recording_grids() as grids, torch_side.counting():
        run()
    assert len(grids) == len(launches), (len(grids), len(launches))
    for (name, count, _), grid in zip(launches, grids):
        programs = 1
        for g in grid:
            programs *= int(g)
        out.kernels.setdefault(name, []).append((count, programs))
    out.torch_bytes, out.torch_ops = torch_side.bytes, torch_side.ops
    return out


def count_runner(call) -> dict[str, Counted]:
    """`call()` without gradients, then with them and its output's backward."""
    with torch.no_grad():
        inference = count_phase(call)
        shape = _first(call())
    grad = torch.randn(shape.shape, generator=torch.Generator().manual_seed(6)).to(shape.dtype)

    def training():         # the output's gradient handed in: no loss operators counted
        _first(call()).backward(grad)
    return dict(inference=inference, training=count_phase(training))


def runners(name: str, dims: int, T: int, dtype, fla: bool):
    """(runner label, {phase: Counted}, compulsory bytes) of each runner at B = H = 1, T."""
    program = seqc.load(name)
    sizes = dict(B=1, T=T, H=1, **{d.name: dims for d in program.spec.dims})
    tensors, _ = random_call(program.spec, sizes, dtype=dtype, seed=5)
    output = program.spec.outputs[0].name
    shape = program.kernel("reference")(**{n: t.float() for n, t in tensors.items()})[output].shape
    total = sum(compulsory(tensors, {output: torch.empty(shape, dtype=dtype)}, {}))

    def leaves():
        return {n: t.clone().requires_grad_() for n, t in tensors.items()}
    module = program.kernel("triton").module
    out = []
    for mode in [m for m in module.MODES if m in CHUNK_MODES]:
        kernel, x = program.kernel("triton", mode=mode), leaves()
        out.append((f"seqc {mode}", lambda k=kernel, x=x: k(**x)[output], total))
    if fla:
        label, make = FLA_TRITON[name]
        out.append((f"fla {label}", make(leaves(), sizes), total))
    return program, out


def scaled(first, second, T: int, heads: int):
    """a + b T per batch x head from the counts at COUNT_T, times `heads`."""
    (w1, w2) = count_weights(T, heads)
    return w1 * first + w2 * second


def phase_time(first: Counted, second: Counted, sizes: dict, gpu) -> dict:
    """Predicted seconds of one phase at `sizes` from its counts at the two lengths."""
    heads, T = sizes["B"] * sizes["H"], sizes["T"]
    kernels_s, kernel_bytes, launches, per_kernel = 0.0, 0.0, 0, []
    for name in first.kernels.keys() | second.kernels.keys():
        a, b = first.kernels.get(name, []), second.kernels.get(name, [])
        if len(a) != len(b):
            raise ValueError(f"{name}: {len(a)} launches at T={COUNT_T[0]}, {len(b)} at "
                             f"T={COUNT_T[1]}: not linear in T")
        for (ca, pa), (cb, pb) in zip(a, b):
            count = KernelCount()
            count.add(ca, scaled(1, 0, T, heads))
            count.add(cb, scaled(0, 1, T, heads))
            timed = kernel_time(gpu, count, max(1.0, scaled(pa, pb, T, heads)))
            kernels_s += timed["predicted_s"]
            per_kernel.append(dict(timed, kernel=name, bytes=count.bytes,
                                   programs=int(scaled(pa, pb, T, heads))))
            kernel_bytes += count.bytes
            launches += 1
    torch_bytes = scaled(first.torch_bytes, second.torch_bytes, T, heads)
    torch_ops = second.torch_ops
    torch_s = torch_bytes / gpu.bandwidth + LAUNCH_S * torch_ops
    return dict(kernels_s=kernels_s, kernel_bytes=kernel_bytes, launches=launches,
                torch_s=torch_s, torch_bytes=torch_bytes, torch_ops=torch_ops,
                total_s=kernels_s + torch_s, per_kernel=per_kernel)


def spec_rows(name: str, dims: int, sizes: dict, gpu, phases, fla: bool = True) -> list[dict]:
    dtype = torch.bfloat16
    counts = []
    for T in COUNT_T:
        program, rs = runners(name, dims, T, dtype, fla)
        per = []
        module = program.kernel("triton").module
        for label, call, total in rs:
            # seqc's launch-size rules weigh programs against the SMs: take the call shape's
            with interpreted_fla() if label.startswith("fla") else \
                    launch_threshold_per_head(module, sizes["B"] * sizes["H"]):
                per.append((label, count_runner(call), total))
        counts.append(per)
    full = dict(sizes, **{d.name: dims for d in program.spec.dims})
    rows = []
    for (label, first, total1), (_, second, total2) in zip(*counts):
        compulsory_bytes = scaled(total1, total2, sizes["T"], sizes["B"] * sizes["H"])
        bound = roofline(program, full, gpu, compulsory_bytes)
        row = dict(spec=name, runner=label, roofline_s=bound["bound_s"])
        for phase in phases:
            row[phase] = phase_time(first[phase], second[phase], sizes, gpu)
        rows.append(row)
    return rows


def table(rows: list[dict], phases, header: bool = True) -> str:
    head = "| spec | runner | inference: GB kernels / torch, ms, x roofline |"
    rule = "|---|---|---|"
    if "training" in phases:
        head += " training step: GB kernels / torch, launches + torch ops, ms |"
        rule += "---|"
    lines = [head + " seqc / fla |", rule + "---|"] if header else []
    fla = {r["spec"]: r for r in rows if r["runner"].startswith("fla")}
    for r in rows:
        inf = r["inference"]
        cells = [r["spec"], r["runner"],
                 f"{inf['kernel_bytes'] / 1e9:.3f} / {inf['torch_bytes'] / 1e9:.3f}, "
                 f"{inf['total_s'] * 1e3:.3f}, {inf['total_s'] / r['roofline_s']:.2f}x"]
        ratio = []
        base = fla.get(r["spec"])
        if "training" in phases:
            tr = r["training"]
            cells.append(f"{tr['kernel_bytes'] / 1e9:.3f} / {tr['torch_bytes'] / 1e9:.3f}, "
                         f"{tr['launches']} + {tr['torch_ops']}, {tr['total_s'] * 1e3:.3f}")
        for phase in phases:
            if base is not None and base is not r:
                ratio.append(f"{r[phase]['total_s'] / base[phase]['total_s']:.2f}x")
        cells.append(" / ".join(ratio) if ratio else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kernel_table(rows: list[dict], phases) -> str:
    lines = ["| spec | runner | phase | kernel | programs | SM coverage | GB | predicted ms | "
             "bound |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for phase in phases:
            for k in r[phase]["per_kernel"]:
                lines.append(f"| {r['spec']} | {r['runner']} | {phase} | {k['kernel']} | "
                             f"{k['programs']} | {k['coverage']:.0%} | {k['bytes'] / 1e9:.3f} | "
                             f"{k['predicted_s'] * 1e3:.4f} | {k['bound']} |")
            t = r[phase]
            lines.append(f"| {r['spec']} | {r['runner']} | {phase} | torch operators | "
                         f"{t['torch_ops']} ops | | {t['torch_bytes'] / 1e9:.3f} | "
                         f"{t['torch_s'] * 1e3:.4f} | memory |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default="simple_gla,gla,gated_deltanet,kda")
    parser.add_argument("--gpu", default="h100", choices=sorted(GPUS))
    parser.add_argument("--shape", default="B=4,T=4096,H=16")
    parser.add_argument("--dims", type=int, default=128)
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument("--seqc-only", action="store_true")
    parser.add_argument("--kernels", action="store_true", help="also each kernel's row")
    args = parser.parse_args(argv)
    sizes = {k: int(v) for k, v in (item.split("=") for item in args.shape.split(","))}
    gpu = GPUS[args.gpu]
    phases = PHASES[:1] if args.no_training else PHASES
    print(f"GPU model {gpu.name}, shape {args.shape}, dims {args.dims}, bf16; counted under the "
          f"interpreter at B = H = 1, T = {COUNT_T[0]} and {COUNT_T[1]}\n")
    for i, name in enumerate(filter(None, args.specs.split(","))):
        rows = spec_rows(name, args.dims, sizes, gpu, phases, not args.seqc_only)
        print(table(rows, phases, header=i == 0), flush=True)
        if args.kernels:
            print("\n" + kernel_table(rows, phases) + "\n", flush=True)
    print("\nseqc / fla: inference" + (" / training step" if "training" in phases else "") +
          ", predicted time; torch: the operators between kernels, eager")
    return 0


if __name__ == "__main__":
    sys.exit(main())
