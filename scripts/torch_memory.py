"""Peak memory and time of a torch-backend training step (forward + backward): plain autograd
through the ops against the options that cut its memory, checkpointed slabs
(`prog.kernel("torch", checkpoint=True)`; backends/torch/module.md) and the derived adjoint
cores (`adjoint=True`; backends/torch/chunk_adjoint.md).

Each measurement runs in a fresh process: peak resident memory (ru_maxrss) above the process's
resident size once the call's tensors exist (after one small warm-up call, so that torch's lazy
start-up is not counted), and the best of `--repeat` forward+backward times, as the process's
CPU time (run with OMP_NUM_THREADS=1: then it is the wall time of an idle machine, and a loaded
machine's waiting is not counted).
Configurations alternate so that the machine's noise hits both alike.

    python scripts/torch_memory.py simple_gla gla mamba2 --T 16384 --configs checkpoint,adjoint
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


CONFIGS = {"autograd": {"adjoint": False}, "checkpoint": {"adjoint": False, "checkpoint": True},
           "adjoint": {"adjoint": True}, "adjoint+checkpoint": {"adjoint": True, "checkpoint": True}}


def measure(spec: str, sizes: dict, options: dict, repeat: int) -> dict:
    import torch

    import seqc
    from seqc.inputs import random_call

    torch.manual_seed(0)
    prog = seqc.load(spec)
    kernel = prog.kernel("torch", **options)
    warm, _ = random_call(prog.spec, {**sizes, "T": 64})   # torch's lazy start-up, not the call's
    for t in warm.values():
        t.requires_grad_(True)
    sum((o.float() ** 2).sum() for o in list(kernel(**warm))[:-1]).backward()
    tensors, _ = random_call(prog.spec, sizes)
    for t in tensors.values():
        t.requires_grad_(True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeat):
        for t in tensors.values():
            t.grad = None
        start = time.process_time()
        out = kernel(**tensors, output_final_state=True)
        loss = sum((o.float() ** 2).sum() for o in list(out)[:-1])
        loss = loss + sum((s ** 2).sum() for s in out.final_state.values())
        loss.backward()
        times.append(time.process_time() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mb": (peak - base) / 1024, "ms": min(times) * 1e3}


def child_env() -> dict:
    """A fixed mmap threshold: glibc otherwise raises it after each large free and serves later
    large tensors from a heap that never shrinks, so that peak RSS would count freed memory."""
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*")
    parser.add_argument("--T", type=int, default=16384)
    parser.add_argument("--B", type=int, default=1)
    parser.add_argument("--H", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--configs", default="checkpoint",
                        help=f"compared with autograd, comma-separated: {', '.join(CONFIGS)}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec, config = args.child.split(":")
        import seqc
        dims = {d.name: args.dim for d in seqc.load(spec).spec.dims}
        sizes = {"B": args.B, "T": args.T, "H": args.H, **dims}
        print(json.dumps(measure(spec, sizes, CONFIGS[config], args.repeat)))
        return 0
    configs = ["autograd"] + [c for c in args.configs.split(",") if c != "autograd"]
    print(f"B={args.B} T={args.T} H={args.H} dims={args.dim}, fp32, forward+backward; "
          f"peak MB above the call's tensors, best of {args.repeat} (ms); ratios to autograd")
    print("| spec | " + " | ".join(f"{c} MB" for c in configs) + " | "
          + " | ".join(f"{c} ms" for c in configs) + " |")
    print("|---|" + "---|" * (2 * len(configs)))
    for spec in args.specs:
        runs = {c: [] for c in configs}
        for _ in range(args.rounds):
            for config in configs:
                out = subprocess.run([sys.executable, __file__, "--child", f"{spec}:{config}",
                                      "--T", str(args.T), "--B", str(args.B), "--H", str(args.H),
                                      "--dim", str(args.dim), "--repeat", str(args.repeat)],
                                     capture_output=True, text=True, check=True, env=child_env())
                runs[config].append(json.loads(out.stdout))
        best = {c: {k: min(r[k] for r in runs[c]) for k in ("peak_mb", "ms")} for c in configs}
        base = best["autograd"]
        cell = lambda c, k: (f"{best[c][k]:.0f}" if c == "autograd"
                             else f"{best[c][k]:.0f} ({best[c][k] / base[k]:.2f})")
        print(f"| {spec} | " + " | ".join(cell(c, "peak_mb") for c in configs) + " | "
              + " | ".join(cell(c, "ms") for c in configs) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
