"""The convergence table of docs/benchmarks.md (solver="newton", docs/newton.md): per spec, dtype
and shape, the Newton iterations (most in any slab), the time against the step loop of the torch
backend (the same process, alternating, the best of `REPEATS`; wall time and the thread's CPU
time, which leaves out the time the process waits for a core on a shared machine), eager and, for
the diagonal cases, with `compile=True` (its first call, the compilation, timed apart), and the
largest error against the loop relative to the loop's largest magnitude.
`python benchmarks/newton_table.py [--threads N]`."""
import os
import sys
import time

import torch

import seqc
from seqc.inputs import random_call

REPEATS = 5
# the target: a diagonal nonlinear RNN (per-entry recurrent weights, IndRNN-style gates)
DIAG_RNN = """model diag_rnn
dims D
input xf[D], xz[D]
param wf[D], wz[D]
state h[D] = 0
let f = sigmoid(xf + wf * h)
let z = tanh(xz + wz * h)
h = f * h + (1 - f) * z
output y = h
"""
CASES = [  # (spec, dtype, sizes, also compiled)
    ("diag_rnn", torch.float32, {"B": 2, "T": 4096, "H": 4, "D": 64}, True),
    ("diag_rnn", torch.float64, {"B": 2, "T": 1024, "H": 4, "D": 64}, True),
    ("mingru", torch.float32, {"B": 2, "T": 4096, "H": 4, "D": 64}, False),
    ("gru", torch.float32, {"B": 2, "T": 1024, "H": 4, "D": 8}, False),
    ("gru", torch.float64, {"B": 2, "T": 1024, "H": 4, "D": 8}, False),
    ("lstm", torch.float32, {"B": 2, "T": 1024, "H": 4, "D": 8}, False),
]


def program(name):
    return seqc.compile(DIAG_RNN) if name == "diag_rnn" else seqc.load(name)


def timed(fn, tensors):
    wall, cpu = time.perf_counter(), time.thread_time()
    out = fn(**tensors)
    return out, time.perf_counter() - wall, time.thread_time() - cpu


def row(name, dtype, sizes, compiled):
    prog = program(name)
    tensors, _ = random_call(prog.spec, sizes, dtype=dtype, seed=0)
    kernels = {"loop": prog.kernel("torch"), "newton": prog.kernel("torch", solver="newton")}
    compile_s = None
    if compiled:
        kernels["compiled"] = prog.kernel("torch", solver="newton", compile=True)
        with torch.no_grad():
            _, compile_s, _ = timed(kernels["compiled"], tensors)
    wall = {k: [] for k in kernels}
    cpu = {k: [] for k in kernels}
    outs = {}
    with torch.no_grad():
        for _ in range(REPEATS):
            for label, fn in kernels.items():
                outs[label], w, c = timed(fn, tensors)
                wall[label].append(w)
                cpu[label].append(c)
    expected = outs["loop"]
    error = max(float((outs[k][o] - expected[o]).abs().max()
                      / expected[o].abs().max().clamp(min=1))
                for k in kernels if k != "loop" for o in expected.keys())
    shape = ",".join(f"{k}={v}" for k, v in sizes.items())
    ms = {k: (1e3 * min(wall[k]), 1e3 * min(cpu[k])) for k in kernels}
    loop = ms["loop"]

    def cell(k):
        if k not in ms:
            return "- | - "
        return (f"{ms[k][0]:.0f} / {ms[k][1]:.0f} | {loop[0] / ms[k][0]:.2f}x / "
                f"{loop[1] / ms[k][1]:.2f}x ")
    stats = kernels["newton"].stats
    return (f"| {name} | {str(dtype)[6:]} | {shape} | {kernels['newton'].structure.kind} | "
            f"{stats.max_iterations} ({len(stats.iterations)} slabs) | "
            f"{loop[0]:.0f} / {loop[1]:.0f} | {cell('newton')}| {cell('compiled')}| "
            f"{'-' if compile_s is None else f'{compile_s:.0f}'} | {error:.1e} |")


if __name__ == "__main__":
    if len(sys.argv) > 1:                    # `--threads N`
        torch.set_num_threads(int(sys.argv[-1]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f} at the start")
    print("| spec | dtype | shape | Jacobian | iterations | loop ms (wall / CPU) | newton ms | "
          "speed-up | compiled ms | speed-up | compile s | max error (rel.) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case in CASES:
        print(row(*case), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    sys.exit(0)
