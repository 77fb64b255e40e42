"""Every stdlib spec forced into mode="fused_recurrent": gradients of the generated backward
(backends/triton/fused_recurrent_bwd.md) against the reference backend's autograd, under the
Triton interpreter, with the torch backend forbidden in the Triton call.

    python scripts/fused_backward_all.py [SPEC...]

Shape as tests/test_triton_fused_backward.py: B=2, T=9, H=2, dims of 5, segments of 4 steps,
a random initial state and random incoming gradients on every output and final state. Prints,
per spec, the largest error over its inputs, params and initial state relative to the largest
gradient of each tensor, and the seconds (compile included); exits 1 when one is above 1e-4.
(The CI runs lstm, gru and one spec per kind: the whole list takes minutes.)
"""
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import seqc  # noqa: E402
import seqc.autograd  # noqa: E402
from oracles import SPECS, random_inputs, random_state  # noqa: E402
from test_gradients import gradients_of  # noqa: E402

B, T, H, SIZE, SEGMENT, RTOL = 2, 9, 2, 5, 4, 1e-4


def refuse(program):
    raise AssertionError("a Triton training call ran the torch backend")


def worst_error(name: str) -> float:
    dims = {d: SIZE for d in SPECS[name].dims}
    x, p = random_inputs(name, B, T, H, dims=dims, seed=3)
    s = random_state(name, B, H, dims=dims, seed=3)
    program = seqc.load(name)
    kernel = program.kernel("triton", mode="fused_recurrent")
    kernel.module.SEGMENT = SEGMENT
    recompute, seqc.autograd.torch_module = seqc.autograd.torch_module, refuse
    try:
        got = gradients_of(kernel, x, p, s)
    finally:
        seqc.autograd.torch_module = recompute
    want = gradients_of(program.kernel("reference"), x, p, s)
    return max(((got[n] - g).abs().max() / max(1.0, g.abs().max().item())).item()
               for n, g in want.items())


def main(names):
    names = names or sorted(p.stem for p in (ROOT / "stdlib").glob("*.seq"))
    failed = False
    print("| spec | largest relative gradient error | seconds |")
    print("|---|---|---|")
    for name in names:
        started = time.perf_counter()
        error = worst_error(name)
        failed |= not error <= RTOL
        print(f"| {name} | {error:.1e} | {time.perf_counter() - started:.0f} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
