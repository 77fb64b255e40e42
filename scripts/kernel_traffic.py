"""Where a Triton training step's bytes go: per kernel launch and per buffer, under the interpreter.

    python scripts/kernel_traffic.py rwkv7 --dims 64 --T 128 [--mode chunk_dplr_parallel]

Runs one training step of the spec's Triton kernel as tests/test_triton_chunk_adjoint.py's
`counted_training_step` does (fp32, an initial state, B = 1, H = 2, every dim `--dims`), with
every kernel of the Triton module wrapped so that the bytes its launches load and store
(seqc/bench_io.py `counting`) are charged to it, and each load or store to the launch argument
(a tensor) whose memory it touched. Prints, for the forward and the backward, each kernel's share
of the call's compulsory bytes and, under it, its buffers' (read / written).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from contextlib import contextmanager

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import seqc  # noqa: E402
from seqc.bench_io import compulsory, counting  # noqa: E402


class _Counted:
    """A kernel whose launches charge their bytes (per argument) to `table`."""

    def __init__(self, name, kernel, counts, table):
        self.name, self.kernel, self.counts, self.table = name, kernel, counts, table
        self.params = getattr(kernel, "arg_names", None)

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            start = len(self.counts["events"])
            result = launch(*args, **kwargs)
            names = self.params or [f"arg{i}" for i in range(len(args))]
            spans = [(n, a.data_ptr(), a.data_ptr() + a.numel() * a.element_size())
                     for n, a in zip(names, args) if isinstance(a, torch.Tensor)]
            row = self.table[self.name]
            for kind, address, n in self.counts["events"][start:]:
                owner = next((name for name, lo, hi in spans if lo <= address < hi), "?")
                row[owner][kind] += n
                row["(all)"][kind] += n
            return result
        return run


@contextmanager
def counted_kernels(module, counts, table):
    """Every `*_kernel` of the Triton module wrapped by _Counted for the block."""
    names = [n for n in dir(module) if n.endswith("_kernel") and hasattr(getattr(module, n),
                                                                          "__getitem__")]
    saved = {n: getattr(module, n) for n in names}
    for n in names:
        setattr(module, n, _Counted(n, saved[n], counts, table))
    try:
        yield
    finally:
        for n, k in saved.items():
            setattr(module, n, k)


def _table():
    return defaultdict(lambda: defaultdict(lambda: defaultdict(int)))


def training_traffic(name, dims, T, **options):
    """({kernel: {buffer: {"loaded", "stored"}}} of the forward and of the backward, compulsory
    bytes) of one counted training step."""
    from seqc.inputs import random_call
    program = seqc.load(name)
    kernel = program.kernel("triton", **options)
    tensors, s = random_call(program.spec, {"B": 1, "T": T, "H": 2,
                                            **{d.name: dims for d in program.spec.dims}},
                             seed=5, with_initial_state=True)
    leaves = {n: t.clone().requires_grad_() for n, t in tensors.items()}
    forward, backward = _table(), _table()
    with counting() as counts, counted_kernels(kernel.module, counts, forward):
        out = kernel(**leaves, initial_state=s, output_final_state=True)
    read, written = compulsory({**tensors, **s}, {n: out[n] for n in out.keys()},
                               out.final_state)
    gen = torch.Generator().manual_seed(6)
    loss = sum((t * torch.randn(t.shape, generator=gen)).sum()
               for t in [out[n] for n in out.keys()] + list(out.final_state.values()))
    with counting() as counts, counted_kernels(kernel.module, counts, backward):
        loss.backward()
    return forward, backward, read + written


def report(title, table, total):
    lines = [f"{title}: {sum(r['(all)']['loaded'] + r['(all)']['stored'] for r in table.values()) / total:.2f}x"]
    for kernel, row in table.items():
        all_ = row["(all)"]
        lines.append(f"  {kernel}: {(all_['loaded'] + all_['stored']) / total:.3f}x")
        for buffer, moved in sorted(row.items(), key=lambda kv: -sum(kv[1].values())):
            if buffer != "(all)":
                lines.append(f"      {buffer:12s} read {moved['loaded'] / total:.3f}x"
                             f"  written {moved['stored'] / total:.3f}x")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--dims", type=int, default=64)
    parser.add_argument("--T", type=int, default=128)
    parser.add_argument("--mode", default=None)
    args = parser.parse_args(argv)
    options = {} if args.mode is None else {"mode": args.mode}
    forward, backward, total = training_traffic(args.spec, args.dims, args.T, **options)
    print(f"{args.spec}, dims {args.dims}, T = {args.T}, compulsory {total} B")
    print(report("forward", forward, total))
    print(report("backward", backward, total))


if __name__ == "__main__":
    sys.exit(main())
