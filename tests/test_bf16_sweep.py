"""The bf16 sweep's check (scripts/bf16_sweep.py) on one spec per Triton kernel family.

A bf16 call with a random initial state and the final state returned, against the reference
backend in fp64 on the same bf16 values: outputs and final states of the training call and of
an inference call (no gradient: the mode's own forward kernels, the single-kernel chunk forms
included), and the gradient of every input, param and initial state under a random incoming
gradient. Flags (each a failure): an output not in the call's dtype, a NaN / inf, a gradient
that is None or all zero where the reference's is not.

Tolerance: 2e-2 of each tensor's largest magnitude, forward and gradients (the sweep's default
is 3e-2 / 6e-2). These cases measure at most 6.8e-3 (deltanet's inference final state); the
full sweep (every stdlib spec and mode, docs/benchmarks.md "bf16 sweep") at most 1.3e-2 (dims 5,
chunks of 64), but for a delta rule's beta gradient at T = 1 (4.5e-2: a small gradient of
cancelling terms, formed from 16-bit values). A lost factor, a dropped term, an fp16
overflow land far above; a gate gradient summed in bf16 inside a chunk of 16 (tried on
chunk_parallel_core's scalar-gate kernel) lands at 1.1e-2 against 3.4e-3 and is NOT caught
here: the fp32 tests at 1e-4 catch a cast to bf16, not one to the call's dtype. Tiny shapes:
T = 37 with chunks of 16 (a ragged last chunk), dims 16.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bf16_sweep import check, table  # noqa: E402

pytestmark = pytest.mark.triton
TOL = 2e-2

CASES = [("simple_gla", "chunk_parallel"),          # chunk_parallel_core
         ("gla", "chunk"),                           # single-kernel chunk forward; chunk_parallel
         ("gated_deltanet", "chunk_delta_parallel"),
         ("deltanet", "chunk_delta"),
         ("rwkv7", "chunk_dplr_parallel"),           # also the chunk_dplr forward below
         ("hgrn", "scan"),
         ("mingru", "scan_parallel"),
         ("maxplus", "scan"),                        # the semiring scan
         ("gla", "fused_recurrent"),
         ("lstm", "fused_recurrent")]                # a nonlinear cell: fused_recurrent only


@pytest.mark.parametrize("name,mode", CASES)
def test_bf16_call_matches_the_reference(name, mode):
    T = 21 if name == "rwkv7" else 37     # rwkv7's dplr kernels are the interpreter's slowest
    row = check(seqc.load(name), mode, torch.bfloat16, T=T, dims=16, chunk_size=16, seed=1)
    assert row.passed(TOL, TOL), table([row], TOL, TOL)
    # every gradient and output was compared (none left out silently)
    assert row.grads and row.forward, table([row])


@pytest.mark.parametrize("name,mode", [("gla", "chunk_parallel"),
                                       ("gated_deltanet", "chunk_delta_parallel")])
def test_bf16_call_with_hard_resets_and_fp32_gates(name, mode):
    """-inf log gates at the first step, inside a chunk, on a chunk boundary and the last step
    (half the keys of gla's key-wise gate), the gates and betas in fp32 beside bf16 q, k, v."""
    row = check(seqc.load(name), mode, torch.bfloat16, T=37, dims=16, chunk_size=16, seed=1,
                mixed=True, resets=True)
    assert row.passed(TOL, TOL), table([row], TOL, TOL)


def test_the_single_kernel_dplr_forward_matches_the_reference():
    row = check(seqc.load("rwkv7"), "chunk_dplr", torch.bfloat16, T=21, dims=16, chunk_size=16,
                seed=1)
    assert row.passed(TOL, TOL), table([row], TOL, TOL)


def test_the_check_fails_on_a_wrong_gradient(monkeypatch):
    """The check can fail: the query's gradient halved on its way out of the core."""
    program = seqc.load("simple_gla")
    kernel = program.kernel("triton", mode="chunk_parallel", chunk_size=16)
    own = kernel.module.MODE_CORES["chunk_parallel"]
    core = own["chunk_core"]

    class Halved(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):
            return 0.5 * g

    def wrong(queries, *args, **options):
        return core([Halved.apply(queries[0])], *args, **options)
    monkeypatch.setitem(own, "chunk_core", wrong)
    row = check(program, "chunk_parallel", torch.bfloat16, T=37, dims=16, chunk_size=16, seed=1)
    assert not row.passed(TOL, TOL)
    assert row.grads["q"] > 0.4 and max(v for n, v in row.grads.items() if n != "q") < TOL


def test_the_check_flags_an_output_not_in_the_call_dtype(monkeypatch):
    """The check can fail: an output handed back in fp32 for a bf16 call (its values as exact
    as the bf16 one's) is flagged."""
    from seqc.kernel import Kernel, KernelOutput
    eager = Kernel.eager_call

    def in_fp32(self, *args, **kwargs):
        out = eager(self, *args, **kwargs)
        if self.backend != "triton":
            return out
        return KernelOutput({n: out[n].float() for n in out.keys()}, out.final_state)
    monkeypatch.setattr(Kernel, "eager_call", in_fp32)
    row = check(seqc.load("hgrn"), "scan", torch.bfloat16, T=37, dims=16, chunk_size=16, seed=1)
    assert not row.passed(TOL, TOL) and "o is float32" in row.flags, table([row])
