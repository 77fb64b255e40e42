"""The suite's interpreter shortcuts (tests/fast_interpreter.py) give bit for bit what Triton's own
interpreter paths give: custom combines (an affine pair combine scanned both ways over axis 0 and
1, a max-with-argument reduce over an axis with keep_dims and over the whole block), and device
functions called inside a launch (the language patched once per launch)."""
import os

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from triton.runtime import interpreter

import fast_interpreter

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
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x)))


@triton.jit
def _kernel(a_ptr, b_ptr, out_ptr, AXIS: tl.constexpr, REVERSE: tl.constexpr):
    rows = tl.arange(0, 8)[:, None] * 16 + tl.arange(0, 16)[None, :]
    a = _softplus(tl.load(a_ptr + rows)) + 0.5
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
def test_shortcuts_equal_the_interpreters_own_paths(axis, reverse, monkeypatch):
    assert interpreter.ScanOps.generic_scan is not ORIGINAL["scan"]  # conftest installed them
    assert interpreter._patch_lang is not ORIGINAL["patch_lang"]
    fast = _run(axis, reverse)
    monkeypatch.setattr(interpreter.ScanOps, "generic_scan", ORIGINAL["scan"])
    monkeypatch.setattr(interpreter.ReduceOps, "generic_reduce", ORIGINAL["reduce"])
    monkeypatch.setattr(interpreter, "_patch_lang", ORIGINAL["patch_lang"])
    triton_own = _run(axis, reverse)
    assert torch.equal(fast, triton_own)
    assert np.isfinite(fast.numpy()).all() and fast[:128].abs().sum() > 0


# Triton's own paths, as the wheel ships them (conftest installs the shortcuts before any test)
ORIGINAL = fast_interpreter.ORIGINAL
