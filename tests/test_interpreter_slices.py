"""The suite's slice-at-a-time scans and reduces (tests/interpreter_slices.py) give bit for bit
what Triton's own element-at-a-time interpreter paths give, on kernels with custom combines:
an affine pair combine (scan, both directions, over axis 0 and 1) and a max-with-argument reduce
(over an axis, with keep_dims, and over the whole block)."""
import os

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from triton.runtime import interpreter

import interpreter_slices

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="the interpreter's paths only")


@triton.jit
def _affine(a1, b1, a2, b2):
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _max_with_index(v1, i1, v2, i2):
    take = v2 > v1
    return tl.where(take, v2, v1), tl.where(take, i2, i1)


@triton.jit
def _kernel(a_ptr, b_ptr, out_ptr, AXIS: tl.constexpr, REVERSE: tl.constexpr):
    rows = tl.arange(0, 8)[:, None] * 16 + tl.arange(0, 16)[None, :]
    a = tl.load(a_ptr + rows)
    b = tl.load(b_ptr + rows)
    sa, sb = tl.associative_scan((a, b), AXIS, _affine, reverse=REVERSE)
    tl.store(out_ptr + rows, sa)
    tl.store(out_ptr + 128 + rows, sb)
    best, where = tl.reduce((b, rows.to(tl.float32)), AXIS, _max_with_index, keep_dims=True)
    if AXIS == 0:
        tl.store(out_ptr + 256 + tl.arange(0, 16)[None, :], best)
        tl.store(out_ptr + 272 + tl.arange(0, 16)[None, :], where)
    else:
        tl.store(out_ptr + 256 + tl.arange(0, 8)[:, None], best)
        tl.store(out_ptr + 272 + tl.arange(0, 8)[:, None], where)
    top, at = tl.reduce((tl.reshape(b, [128]), tl.reshape(rows.to(tl.float32), [128])), None,
                        _max_with_index)
    tl.store(out_ptr + 288, top)
    tl.store(out_ptr + 289, at)


def _run(axis, reverse):
    g = torch.Generator().manual_seed(axis * 2 + reverse)
    a = torch.rand(128, generator=g) + 0.5
    b = torch.randn(128, generator=g)
    out = torch.zeros(290)
    _kernel[(1,)](a, b, out, AXIS=axis, REVERSE=reverse)
    return out


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("reverse", [False, True])
def test_slices_equal_the_interpreters_element_loop(axis, reverse, monkeypatch):
    assert interpreter.ScanOps.generic_scan is not ELEMENT_SCAN  # conftest installed the slices
    assert interpreter.ReduceOps.generic_reduce is not ELEMENT_REDUCE
    sliced = _run(axis, reverse)
    monkeypatch.setattr(interpreter.ScanOps, "generic_scan", ELEMENT_SCAN)
    monkeypatch.setattr(interpreter.ReduceOps, "generic_reduce", ELEMENT_REDUCE)
    by_element = _run(axis, reverse)
    assert torch.equal(sliced, by_element)
    assert np.isfinite(sliced.numpy()).all() and sliced[:128].abs().sum() > 0


# Triton's own paths, as the wheel ships them (conftest installs the slices before any test)
ELEMENT_SCAN = interpreter_slices.ORIGINAL["scan"]
ELEMENT_REDUCE = interpreter_slices.ORIGINAL["reduce"]
