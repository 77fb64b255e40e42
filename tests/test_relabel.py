"""Issue 13 item 5: a dim relabelled, `x as [D, ...]`: the same tensor over other dims, on every
backend against torch here (test_reductions.py's harness), its sizes checked at call time, a
relabelled state refused with its reason, and its misuses located."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from test_reductions import (SIZES, assert_located, assert_near, call,  # noqa: E402,F401
                             check_source, error_lines, gradients_match, on_every_backend,
                             source)

RELABEL = (("-1", "k", "v - k as [V]"),
           lambda q, k, v, x: (-torch.ones(k.shape[:3], dtype=k.dtype), k, v - k))


def test_relabel_on_every_backend_matches_torch():
    on_every_backend("relabel", RELABEL)


def test_relabel_gradients_match_torch():
    gradients_match("relabel", RELABEL)


def test_relabel_sizes_are_checked_at_call_time():
    program = seqc.compile(source(RELABEL), "feature.seq")
    tensors, initial = call()
    tensors["v"] = torch.randn(SIZES["B"], SIZES["T"], SIZES["H"], SIZES["V"] + 1)
    for backend in ("reference", "torch", "triton"):
        with pytest.raises(ValueError, match=r"`k as \[V\]` \(line 7\) relabels dim K of `k` as "
                                             r"V, but K = 4 \(from input `q`\) and V = 5 "
                                             r"\(from input `v`\)"):
            program.kernel(backend)(**tensors)


SWAP = """model swap
dims N, M
input x[N], y[M]
state h[N, M] = 0
h = 0.5 * (h as [M, N]) + x * y
output o = h
"""


def test_a_relabelled_state_runs_the_step_loop():
    program = seqc.compile(SWAP, "swap.seq")
    assert program.analysis.kind("h") == "sequential"
    assert "`h` is relabelled with `as` (a relabelled state has no parallel form)" in \
        program.analysis.describe()
    B, T, H, N = 2, 6, 2, 3
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(B, T, H, N, generator=gen), torch.randn(B, T, H, N, generator=gen)
    h0 = torch.randn(B, H, N, N, generator=gen)
    h, outputs = h0.double(), []
    for t in range(T):
        h = 0.5 * h.transpose(-1, -2) + x[:, t, ..., None].double() * y[:, t, ..., None, :].double()
        outputs.append(h)
    for backend in ("reference", "torch", "triton"):
        out = program.kernel(backend)(x=x, y=y, initial_state={"h": h0}, output_final_state=True)
        assert_near(out["o"], torch.stack(outputs, 1), backend)
        assert_near(out.final_state["h"], h, backend)


@pytest.mark.parametrize("text, col, width, message, help", [
    ("let a = q as [V, K]", 15, 4, "`as [V, K]` gives 2 dims to a value with dims [K]",
     "`as` renames each dim of the value, in order: one new name per dim"),
    ("let a = q as [Q]", 15, 1, "`as` relabels to declared dims, and `Q` is not one",
     "declare it first: `dims Q`"),
    ("let a = (q * v) as [V, V]", 21, 4, "`as [V, V]` repeats a dim",
     "a dim appears once per tensor"),
])
def test_misuse_is_a_located_error(check_source, text, col, width, message, help):
    assert_located(check_source, text, col, width, message, help)


def test_every_misuse_is_reported_at_once():
    assert error_lines("let a = max(q, V) + softmax(q, VV)\nlet b = q as [V, K]\nhead = 2") == \
        [5, 5, 6, 7]


def test_the_multi_kernel_forms_are_not_offered_and_the_call_says_why():
    """chunk_parallel holds blocks of K and of V: a spec that relabels runs `chunk` instead, and
    a call that asks for chunk_parallel is told why (the emitted NOT_OFFERED)."""
    program = seqc.compile(source(RELABEL), "feature.seq")
    kernel = program.kernel("triton", mode="chunk_parallel")
    assert kernel.module.MODES == ("fused_recurrent", "chunk")
    tensors, _ = call()
    with pytest.raises(ValueError, match=r"mode 'chunk_parallel' is not available for `feature`; "
                                         r"choose one of fused_recurrent, chunk \(chunk_parallel "
                                         r"is not offered: the step relabels a dim \(`as`\)"):
        kernel(**tensors)
