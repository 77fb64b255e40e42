"""The convergence table of docs/benchmarks.md (solver="newton", docs/newton.md): per spec, dtype
and shape, the Newton iterations (most in any slab), the time against the step loop of the torch
backend (the same process, alternating, the best of `REPEATS`), and the largest error against the
loop relative to the loop's largest magnitude. `python benchmarks/newton_table.py [--threads N]`."""
import sys
import time

import torch

import seqc
from seqc.inputs import random_call

REPEATS = 2
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
CASES = [  # (spec, dtype, sizes)
    ("diag_rnn", torch.float32, {"B": 2, "T": 4096, "H": 4, "D": 64}),
    ("diag_rnn", torch.float64, {"B": 2, "T": 1024, "H": 4, "D": 64}),
    ("mingru", torch.float32, {"B": 2, "T": 4096, "H": 4, "D": 64}),
    ("gru", torch.float32, {"B": 2, "T": 1024, "H": 4, "D": 8}),
    ("gru", torch.float64, {"B": 2, "T": 1024, "H": 4, "D": 8}),
    ("lstm", torch.float32, {"B": 2, "T": 1024, "H": 4, "D": 8}),
]


def program(name):
    return seqc.compile(DIAG_RNN) if name == "diag_rnn" else seqc.load(name)


def row(name, dtype, sizes):
    prog = program(name)
    tensors, _ = random_call(prog.spec, sizes, dtype=dtype, seed=0)
    loop, newton = prog.kernel("torch"), prog.kernel("torch", solver="newton")
    times = {"loop": [], "newton": []}
    with torch.no_grad():
        for _ in range(REPEATS):
            for label, fn in (("loop", loop), ("newton", newton)):
                start = time.perf_counter()
                out = fn(**tensors)
                times[label].append(time.perf_counter() - start)
                if label == "loop":
                    expected = out
                else:
                    got = out
    error = max(float((got[o] - expected[o]).abs().max() / expected[o].abs().max().clamp(min=1))
                for o in expected.keys())
    shape = ",".join(f"{k}={v}" for k, v in sizes.items())
    loop_ms, newton_ms = 1e3 * min(times["loop"]), 1e3 * min(times["newton"])
    stats = newton.stats
    return (f"| {name} | {str(dtype)[6:]} | {shape} | {newton.structure.kind} | "
            f"{stats.max_iterations} ({len(stats.iterations)} slabs) | {loop_ms:.0f} | "
            f"{newton_ms:.0f} | {loop_ms / newton_ms:.2f}x | {error:.1e} |")


if __name__ == "__main__":
    if len(sys.argv) > 1:                    # `--threads N`
        torch.set_num_threads(int(sys.argv[-1]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| spec | dtype | shape | Jacobian | iterations | loop ms | newton ms | speed-up | "
          "max error (rel.) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in CASES:
        print(row(*case), flush=True)
    sys.exit(0)
