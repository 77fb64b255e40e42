"""Context parallelism on the CPU: one sequence on 1 rank against the same sequence split over
2 ranks (gloo, one process each), seqc's torch backend, fp32.

Each case times the forward call (and forward + backward with --backward) of the whole sequence
on one process, then with 2 processes of half the sequence each (`context_parallel=True`,
wall time of the slower rank); every process, the single one and each rank, runs --threads torch
threads (default 1: on a CPU shared with other jobs, 2 OpenMP threads a process spin and stall
20x). Prints a markdown table: median of
REPEATS runs after one warm-up; for the forward, also rank 0's steps timed in one process
(`breakdown`): the 2-rank time when each rank has a core to itself.

    python benchmarks/context_parallel.py [--specs gla,gated_deltanet,hgrn] [--T 16384]
        [--B 1] [--H 4] [--dim 64] [--threads 1] [--backward]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import seqc
from seqc.inputs import random_call

REPEATS = 5


def problem(name, args):
    spec = seqc.load(name).spec
    sizes = {"B": args.B, "T": args.T, "H": args.H} | {d.name: args.dim for d in spec.dims}
    tensors, _ = random_call(spec, sizes, torch.float32, seed=0)
    return tensors, {t.name for t in spec.inputs}


def timed(fn, backward):
    """Median seconds of REPEATS calls (after a warm-up), all ranks in step (a barrier each)."""
    times = []
    for repeat in range(REPEATS + 1):
        if dist.is_initialized():
            dist.barrier()
        start = time.perf_counter()
        out = fn()
        if backward:
            sum(out[n].float().sum() for n in out.keys()).backward()
        if dist.is_initialized():
            dist.barrier()
        if repeat:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def one_rank(name, args):
    torch.set_num_threads(args.threads)
    tensors, _ = problem(name, args)
    leaves = {n: t.requires_grad_(args.backward) for n, t in tensors.items()}
    fn = seqc.load(name).kernel("torch")
    return timed(lambda: fn(**leaves), args.backward)


def breakdown(name, args):
    """In one process, alternating: the whole sequence's call, and rank 0's two steps at T/2
    (its summary: the shard run from the initial state without outputs; then its shard's call).
    With 2 ranks rank 0 is the critical path: the ranks' time when each has a core of its own."""
    from seqc import context_parallel as cp
    from seqc.validate import validate
    torch.set_num_threads(args.threads)
    program = seqc.load(name)
    spec, plan = program.spec, program.analysis.plan
    tensors, inputs = problem(name, args)
    half = {n: (t[:, :args.T // 2] if n in inputs else t) for n, t in tensors.items()}
    fn = program.kernel("torch")
    call = validate(spec, half, None)

    def summary():
        roles = cp.Roles(plan, {**call.inputs, **call.params}, call.dims, torch.float32)
        initial = cp._initial_states(spec, call, torch.float32)
        for group in plan.groups:
            cp.shard_summary(group, program.analysis.proof(group.states[0]).combine, roles,
                             spec, fn.module, cp.to_layout(group, spec, initial))
    steps = {"whole": lambda: fn(**tensors), "summary": summary, "half": lambda: fn(**half)}
    times = {step: [] for step in steps}
    for repeat in range(REPEATS + 1):
        for step, run in steps.items():
            start = time.perf_counter()
            run()
            if repeat:
                times[step].append(time.perf_counter() - start)
    return {step: statistics.median(t) for step, t in times.items()}


def _rank(rank, world, port, names, args, directory):
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    lines = []
    for name in names:
        tensors, inputs = problem(name, args)
        T = args.T // world
        mine = {n: (t[:, rank * T:(rank + 1) * T] if n in inputs else t).clone()
                .requires_grad_(args.backward) for n, t in tensors.items()}
        fn = seqc.load(name).kernel("torch", context_parallel=True)
        lines.append(f"{name} {timed(lambda: fn(**mine), args.backward)!r}")
    with open(os.path.join(directory, f"rank{rank}"), "w") as f:
        f.write("\n".join(lines))
    dist.destroy_process_group()


def ranks(names, args, world=2):
    directory = tempfile.mkdtemp()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(world, port, names, args, directory), nprocs=world, join=True)
    slowest = {}
    for rank in range(world):
        with open(os.path.join(directory, f"rank{rank}")) as f:
            for line in f:
                name, seconds = line.split()
                slowest[name] = max(slowest.get(name, 0.0), float(seconds))
    return slowest


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default="gla,gated_deltanet,hgrn")
    parser.add_argument("--T", type=int, default=16384)
    parser.add_argument("--B", type=int, default=1)
    parser.add_argument("--H", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backward", action="store_true")
    args = parser.parse_args()
    names = args.specs.split(",")
    two = ranks(names, args)
    what = "forward + backward" if args.backward else "forward"
    print(f"B={args.B}, T={args.T}, H={args.H}, dims {args.dim}, fp32, {what}, "
          f"{args.threads} torch thread(s) a process\n")
    print("| spec | 1 rank (s) | 2 ranks (s) | speed-up |")
    print("|---|---|---|---|")
    for name in names:
        single = one_rank(name, args)
        print(f"| {name} | {single:.3f} | {two[name]:.3f} | {single / two[name]:.2f}x |")
    if args.backward:
        return
    print("\nRank 0's steps, forward, timed in one process (alternating rounds):\n")
    print("| spec | whole T (s) | summary T/2 (s) | shard T/2 (s) | T / (summary + shard) |")
    print("|---|---|---|---|---|")
    for name in names:
        t = breakdown(name, args)
        print(f"| {name} | {t['whole']:.3f} | {t['summary']:.3f} | {t['half']:.3f} | "
              f"{t['whole'] / (t['summary'] + t['half']):.2f}x |")


if __name__ == "__main__":
    main()
