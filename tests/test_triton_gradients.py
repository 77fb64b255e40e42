"""Gradients through the Triton backend (seqc/autograd.py) equal the reference backend's autograd.

Under the Triton interpreter (TRITON_INTERPRET=1), tiny shapes: every stdlib spec through its
default Triton mode, and each mode sampled once on one spec (fused_recurrent on a chunk spec, the
coupled scan on a spec of test_torch_coupled.py). Gradients of every input, param and initial
state under a random incoming gradient on every output and final state (test_gradients.py's
`gradients_of`). Odd sizes: dims of 5 (padded lanes), T = 21 with chunks of 8 (a ragged last
chunk).

Tolerance (fp32): rtol 1e-4 relative to the largest gradient of the tensor, as test_gradients.py.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import functools  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from oracles import SPECS, random_inputs, random_state  # noqa: E402
from seqc.inputs import random_call  # noqa: E402
from test_gradients import GRAD_RTOL, gradients_of  # noqa: E402
from test_torch_coupled import program as coupled_program  # noqa: E402

pytestmark = pytest.mark.triton
STDLIB = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "stdlib").glob("*.seq"))
B, T, H, SIZE, CHUNK = 1, 21, 2, 5, 8
# a mode the default of no stdlib spec covers, sampled on one spec each
OTHER_MODES = [("gla", "fused_recurrent")]


@functools.lru_cache(maxsize=None)
def program(name):
    return seqc.load(name)


def assert_gradients_equal(got, want, what):
    assert set(got) == set(want), what
    for n, g in want.items():
        assert g is not None, f"{what}: the reference has no gradient of {n}"
        assert got[n] is not None, f"{what}: no gradient reached {n} through Triton"
        assert torch.isfinite(got[n]).all(), f"{what}: gradient of {n} is not finite"
        scale = max(1.0, g.abs().max().item())
        torch.testing.assert_close(got[n], g, rtol=GRAD_RTOL, atol=GRAD_RTOL * scale,
                                   msg=lambda m: f"{what}: gradient of {n}: {m}")


def compare_stdlib(name, mode=None):
    dims = {d: SIZE for d in SPECS[name].dims}
    x, p = random_inputs(name, B, T, H, dims=dims, seed=3)
    s = random_state(name, B, H, dims=dims, seed=3)
    options = {"chunk_size": CHUNK} if mode is None else {"chunk_size": CHUNK, "mode": mode}
    got = gradients_of(program(name).kernel("triton", **options), x, p, s)
    want = gradients_of(program(name).kernel("reference"), x, p, s)
    assert_gradients_equal(got, want, f"{name}/{mode or 'default mode'}")


@pytest.mark.parametrize("name", STDLIB)
def test_default_mode_gradients_match_reference(name):
    compare_stdlib(name)


@pytest.mark.parametrize("name,mode", OTHER_MODES)
def test_other_mode_gradients_match_reference(name, mode):
    compare_stdlib(name, mode)


def test_coupled_scan_gradients_match_reference():
    prog = coupled_program("cross_matrix")
    assert prog.kernel("triton").module.DEFAULT_MODE == "scan"
    tensors, s = random_call(prog.spec, {"B": B, "T": T, "H": H, "D": SIZE, "E": 2}, seed=4,
                             with_initial_state=True)
    inputs = {t.name for t in prog.spec.inputs}
    x = {n: v for n, v in tensors.items() if n in inputs}
    p = {n: v for n, v in tensors.items() if n not in inputs}
    got = gradients_of(prog.kernel("triton", chunk_size=CHUNK), x, p, s)
    want = gradients_of(prog.kernel("reference"), x, p, s)
    assert_gradients_equal(got, want, "cross_matrix/scan")


def test_no_gradient_needed_runs_without_the_function():
    x, p = random_inputs("gla", B, T, H, dims={d: SIZE for d in SPECS["gla"].dims}, seed=5)
    out = program("gla").kernel("triton", chunk_size=CHUNK)(**x, **p, output_final_state=True)
    assert out.o.grad_fn is None and out.final_state["S"].grad_fn is None
    x["q"].requires_grad_()
    with torch.no_grad():
        out = program("gla").kernel("triton", chunk_size=CHUNK)(**x, **p)
    assert out.o.grad_fn is None
