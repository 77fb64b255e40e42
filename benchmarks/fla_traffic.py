"""Bytes moved by seqc's Triton kernels and by fla's Triton ops for the same call, forward and
backward, counted under the Triton interpreter (no GPU).

    python benchmarks/fla_traffic.py [--specs simple_gla,gla,...] [--dims 64] [--T 128]

For each stdlib spec fla-core computes with a Triton op (seqc.gpu_bench.FLA_TRITON, the adapters
scripts/gpu.sh uses; fla's ops run interpreted through seqc/fla_interpreted.py, every autotuned
kernel on its widest blocks: the fewest bytes it can move) and for each of seqc's chunk-family
Triton modes of the spec: one call at B=1, T, H=2 and every dim `--dims`, fp32, no initial or
final state: the call without gradients (inference), the call with them (a training forward,
which may save more for the backward), then `backward` of the output under a random incoming
gradient. Every masked load
and store the interpreter runs is counted (seqc/bench_io.py `counting`); the torch operations
between kernels (fla's or seqc's: gate cumsums, casts, the prelude, gradient sums) are counted
apart, as each operator's tensor inputs and outputs (`TorchBytes`: an upper bound, eager and
unfused). Ratios are over the call's compulsory bytes (every input read
once, the output written once), the same for both: issue 11's target is a backward within 2.5x.
Bytes scale linearly in B, T and H, so the small call stands for the large one, but for
value-block redundancy, which depends on the dims (kept).
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import seqc  # noqa: E402
from seqc.bench_io import compulsory, counting  # noqa: E402
from seqc.fla_interpreted import interpreted_fla  # noqa: E402
from seqc.gpu_bench import FLA_TRITON, FP32_REFUSED, _first  # noqa: E402
from seqc.inputs import random_call  # noqa: E402

CHUNK_MODES = ("chunk", "chunk_parallel", "chunk_delta", "chunk_delta_parallel", "chunk_dplr",
               "chunk_dplr_parallel")


class TorchBytes:
    """Bytes of the torch operations run between kernels (a TorchDispatchMode while entered):
    every operator's tensor inputs and outputs, but views (no data moves), allocations without
    a fill (`empty*`) and what runs inside a Triton launch (the interpreter's own copies)."""

    SKIPPED = ("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
               "detach", "alias", "lift_fresh")

    def __init__(self):
        self.bytes = 0
        self.ops = 0            # operators counted (each an eager kernel launch)

    @contextmanager
    def counting(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves
        from triton.runtime.interpreter import GridExecutor
        owner, launch, inside = self, GridExecutor.__call__, [0]

        def launched(executor, *args, **kwargs):
            inside[0] += 1
            try:
                return launch(executor, *args, **kwargs)
            finally:
                inside[0] -= 1

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if not inside[0] and not func.is_view and \
                        func.overloadpacket.__name__ not in TorchBytes.SKIPPED:
                    owner.bytes += sum(t.numel() * t.element_size()
                                       for t in tree_leaves((args, kwargs, out))
                                       if isinstance(t, torch.Tensor))
                    owner.ops += 1
                return out

        GridExecutor.__call__ = launched
        try:
            with Mode():
                yield self
        finally:
            GridExecutor.__call__ = launch


def counted(run, seed=6):
    """(inference, training forward, backward) bytes: `run()` without gradients, `run()` with
    them, and its output's backward; each (Triton kernels' bytes, torch operations' bytes)."""
    def moved(counts, torch_side):
        return counts["loaded"] + counts["stored"], torch_side.bytes
    inference_torch, forward_torch, backward_torch = TorchBytes(), TorchBytes(), TorchBytes()
    with torch.no_grad(), counting() as inference, inference_torch.counting():
        run()
    with counting() as forward, forward_torch.counting():
        out = _first(run())
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    with counting() as backward, backward_torch.counting():
        (out * grad).sum().backward()
    return (moved(inference, inference_torch), moved(forward, forward_torch),
            moved(backward, backward_torch))


def ratios(moved, total):
    (inference, inference_torch), (forward, forward_torch), (backward, backward_torch) = (
        (kernels / total, torch_side / total) for kernels, torch_side in moved)
    return dict(inference=inference, fwd=forward, bwd=backward, inference_torch=inference_torch,
                fwd_torch=forward_torch, bwd_torch=backward_torch)


def spec_rows(name: str, dims: int, T: int, dtype=torch.float32, fla: bool = True) -> list[dict]:
    """Each runner's ratios (`ratios`) on one call of T steps."""
    return [dict(spec=name, runner=runner, **ratios(moved, total))
            for runner, moved, total in spec_counts(name, dims, T, dtype, fla)]


def slope_rows(name: str, dims: int, T: int, dtype=torch.float32, fla: bool = True) -> list[dict]:
    """Each runner's ratios on the steps from T to 2T: the bytes a call of 2T steps moves beyond
    one of T, over the compulsory bytes it adds, i.e. the rate of a long sequence, free of what a
    call moves once whatever its length (first and last chunks, launch-sized buffers)."""
    short = spec_counts(name, dims, T, dtype, fla)
    long = spec_counts(name, dims, 2 * T, dtype, fla)
    rows = []
    for (runner, moved, total), (_, moved2, total2) in zip(short, long):
        added = tuple((k2 - k1, t2 - t1) for (k1, t1), (k2, t2) in zip(moved, moved2))
        rows.append(dict(spec=name, runner=runner, **ratios(added, total2 - total)))
    return rows


def spec_counts(name: str, dims: int, T: int, dtype=torch.float32, fla: bool = True) -> list:
    """(runner, `counted` bytes, the call's compulsory bytes) of each runner on one call."""
    program = seqc.load(name)
    sizes = dict(B=1, T=T, H=2, **{d.name: dims for d in program.spec.dims})
    tensors, _ = random_call(program.spec, sizes, dtype=dtype, seed=5)
    output = program.spec.outputs[0].name
    shape = program.kernel("reference")(**{n: t.float() for n, t in tensors.items()})[output].shape
    read, written = compulsory(tensors, {output: torch.empty(shape, dtype=dtype)}, {})
    total = read + written

    def leaves():
        return {n: t.clone().requires_grad_() for n, t in tensors.items()}
    rows = []
    modes = [m for m in program.kernel("triton").module.MODES if m in CHUNK_MODES]
    for mode in modes:
        kernel, x = program.kernel("triton", mode=mode), leaves()
        rows.append((f"seqc {mode}", counted(lambda: kernel(**x)[output]), total))
    if not fla:
        return rows
    label, make = FLA_TRITON[name]
    x = leaves()
    with interpreted_fla():
        rows.append((f"fla {label}", counted(make(x, sizes)), total))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default=",".join(n for n in FLA_TRITON if n not in FP32_REFUSED
                                                    and n != "hgrn"))
    parser.add_argument("--dims", type=int, default=64)
    parser.add_argument("--T", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="bfloat16: the GPU's dtype (the interpreter computes bf16 as a "
                             "GPU does under seqc's hooks); deltanet and deltaproduct, whose fla "
                             "ops refuse fp32, are counted at bfloat16 only")
    parser.add_argument("--seqc-only", action="store_true")
    parser.add_argument("--slope", action="store_true",
                        help="count calls of T and 2T steps; report the bytes the steps from T "
                             "to 2T add over the compulsory bytes they add (a long sequence's "
                             "rate)")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    steps = f"the steps from T={args.T} to {2 * args.T}" if args.slope else f"T={args.T}"
    print(f"bytes over the compulsory bytes (B=1, {steps}, H=2, dims {args.dims}, "
          f"{args.dtype}, interpreter counts)\n")
    rows_of = slope_rows if args.slope else spec_rows
    print("| spec | runner | forward (no grad) | forward (training) | backward | "
          "training step | torch ops: no grad / training step |")
    print("|---|---|---|---|---|---|---|")
    for name in filter(None, args.specs.split(",")):
        if name in FP32_REFUSED and dtype == torch.float32:
            print(f"| {name} | fla refuses fp32 inputs: see --dtype bfloat16 | | | | | |")
            continue
        for r in rows_of(name, args.dims, args.T, dtype, not args.seqc_only):
            print(f"| {r['spec']} | {r['runner']} | {r['inference']:.2f}x | {r['fwd']:.2f}x | "
                  f"{r['bwd']:.2f}x | {r['fwd'] + r['bwd']:.2f}x | {r['inference_torch']:.2f}x / "
                  f"{r['fwd_torch'] + r['bwd_torch']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
