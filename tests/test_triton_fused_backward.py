"""The fused recurrent kernel's generated backward (backends/triton/fused_recurrent_bwd.md)
against the reference backend's autograd.

Under the Triton interpreter, tiny shapes (B=2, T=9, H=2, dims of 5: padded lanes), segments of 4
steps (T not a multiple: a short last segment), a random initial state and random incoming
gradients on every output and final state (test_gradients.py's `gradients_of`); fp32, rtol 1e-4
relative to the largest gradient of each tensor. The sequential specs (lstm, gru) always; of the
other stdlib specs forced into mode="fused_recurrent", one per kind of recurrence here (the whole
stdlib takes minutes under the interpreter: scripts/fused_backward_all.py, results in
docs/benchmarks.md).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import functools  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
import seqc.autograd  # noqa: E402
from oracles import SPECS, random_inputs, random_state  # noqa: E402
from test_gradients import gradients_of  # noqa: E402
from test_triton_gradients import assert_gradients_equal  # noqa: E402

pytestmark = pytest.mark.triton
STDLIB = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "stdlib").glob("*.seq"))
B, T, H, SIZE, SEGMENT = 2, 9, 2, 5, 4
SEQUENTIAL = ["lstm", "gru"]
# one spec per kind of recurrence: a diagonal scan (hgrn), a chunk form with key-wise decay and
# a split value dim (gla), a state without the split dim and max / abs (mlstm), the delta rule
# (gated_deltanet), diagonal plus low rank (rwkv7), a max-plus semiring with -inf init (maxplus)
ONE_PER_KIND = ["hgrn", "gla", "mlstm", "gated_deltanet", "rwkv7", "maxplus"]


@functools.lru_cache(maxsize=None)
def program(name):
    return seqc.load(name)


def no_torch_recompute(monkeypatch):
    """Any use of the torch backend by a Triton training call fails the test."""
    def refuse(program):
        raise AssertionError("a Triton training call ran the torch backend")
    monkeypatch.setattr(seqc.autograd, "torch_module", refuse)


def compare(name, monkeypatch, block_split=128, dims=None):
    dims = dims or {d: SIZE for d in SPECS[name].dims}
    x, p = random_inputs(name, B, T, H, dims=dims, seed=3)
    s = random_state(name, B, H, dims=dims, seed=3)
    kernel = program(name).kernel("triton", mode="fused_recurrent", block_split=block_split)
    assert kernel.module.FUSED_BACKWARD, f"{name}: no generated backward"
    monkeypatch.setattr(kernel.module, "SEGMENT", SEGMENT)
    no_torch_recompute(monkeypatch)
    got = gradients_of(kernel, x, p, s)
    monkeypatch.undo()
    want = gradients_of(program(name).kernel("reference"), x, p, s)
    assert_gradients_equal(got, want, f"{name}/fused_recurrent")


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_sequential_spec_trains_on_its_own_kernels(name, monkeypatch):
    compare(name, monkeypatch)


@pytest.mark.parametrize("name", ONE_PER_KIND)
def test_fused_recurrent_backward_matches_reference(name, monkeypatch):
    compare(name, monkeypatch)


def test_split_value_dim_shares_add_up(monkeypatch):
    """gla at V = 5 in blocks of 2 lanes: three programs, q, k, g (without V) summed over them."""
    compare("gla", monkeypatch, block_split=2)


def test_every_stdlib_spec_has_the_generated_backward():
    covered = [n for n in STDLIB if program(n).kernel("triton").module.FUSED_BACKWARD]
    assert covered == STDLIB


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_reloaded_weights(name, monkeypatch):
    """lstm, gru as at D = 128 (RELOAD_PARAMS: the weights read from memory at every use, in
    the forward and the backward, the reverse step reading the recompute loop's R @ h back) at
    dims of 5: the same gradients."""
    kernel = program(name).kernel("triton", mode="fused_recurrent")
    monkeypatch.setattr(kernel.module, "_fused_recurrent_reloads", lambda blocks: True)
    compare(name, monkeypatch)


def backward_warps(name, size):
    """The warps the backward program of `name` runs at every dim = `size` (the module's rule)."""
    module = program(name).kernel("triton", mode="fused_recurrent").module
    dims = {d: size for d in SPECS[name].dims}
    blocks, _ = module._fused_recurrent_blocks(dims, 128, module.STATE_LANES // 2)
    return module._fused_recurrent_bwd_warps(blocks, module._fused_recurrent_reloads(blocks))


@pytest.mark.parametrize("size", [48, 64, 128])
def test_warps_rule_counts_blocks_held_in_two_layouts(size):
    """rwkv6's adjoint of `r @ (S + u k v^T)` is formed transposed and read three times (dS, dk,
    dv): the rule counts it in both layouts at each read and gives 8 warps (4 spilled 60 / 240 B
    on sm_80 at 48 / 64, docs/benchmarks.md); gla's and kda's transposed adjoints are read once
    (4 warps, as measured fitting)."""
    assert backward_warps("rwkv6", size) == 8
    assert backward_warps("gla", size) == 4
    assert backward_warps("kda", size) == 4


OUTER = """model outer
dims K, V
input a[K], m[K, V]
param W[V, V], U[K, K], w[V]
state S[K, V] = 0, h[K] = 0
h = U @ h
S = tanh(0.5 * (S @ W) + m) + (U @ a) * w + h * w
output y = sum(S, K)
"""


@pytest.mark.parametrize("reload", [False, True], ids=["held", "reloaded"])
def test_matrix_param_gradients_reduced_outside_in_general(reload):
    """The outer-product adjoints of matrix params (fused_recurrent_bwd.md, "Matrix params")
    beyond gru / lstm: a param on the right of `@` with a batch axis (S[K, V] @ W[V, V], dW =
    sum_k S^T dY), one contracted with an input (U @ a: the input itself is the factor) and with
    the state (U @ h, the whole update), a vector param accumulated in the kernel (w); K = 5,
    V = 3 (padded lanes), T = 9 in segments of 4; the params held, or reloaded with the weight
    products kept by the recompute loop (RELOAD_PARAMS)."""
    from seqc.backends.triton.fused_backward import FusedBackward
    from seqc.backends.triton.render import Constants
    prog = seqc.compile(OUTER)
    assert {t.param for t in FusedBackward(prog.spec, Constants(), None).adjoint.outer_terms} \
        == {"W", "U"}
    gen = torch.Generator().manual_seed(4)
    K, V = 5, 3
    x = {"a": torch.randn(B, T, H, K, generator=gen),
         "m": torch.randn(B, T, H, K, V, generator=gen)}
    p = {"W": torch.randn(H, V, V, generator=gen) / V ** 0.5,
         "U": torch.randn(H, K, K, generator=gen) / K ** 0.5,
         "w": torch.randn(H, V, generator=gen)}
    s = {"S": torch.randn(B, H, K, V, generator=gen), "h": torch.randn(B, H, K, generator=gen)}
    kernel = prog.kernel("triton", mode="fused_recurrent")
    assert kernel.module.FUSED_BACKWARD
    patch = pytest.MonkeyPatch()
    patch.setattr(kernel.module, "SEGMENT", SEGMENT)
    patch.setattr(kernel.module, "_fused_recurrent_reloads", lambda blocks: reload)
    no_torch_recompute(patch)
    try:
        got = gradients_of(kernel, x, p, s)
    finally:
        patch.undo()
    want = gradients_of(prog.kernel("reference"), x, p, s)
    assert_gradients_equal(got, want, "outer/fused_recurrent")


def test_minus_infinity_gates(monkeypatch):
    """gla with some log decays -inf (a reset: exp(g) = 0): finite gradients equal to the
    reference's."""
    dims = {d: SIZE for d in SPECS["gla"].dims}
    x, p = random_inputs("gla", B, T, H, dims=dims, seed=5)
    x["g"][:, 3, :, 1:3] = float("-inf")
    x["g"][1, 6] = float("-inf")
    s = random_state("gla", B, H, dims=dims, seed=5)
    kernel = program("gla").kernel("triton", mode="fused_recurrent")
    monkeypatch.setattr(kernel.module, "SEGMENT", SEGMENT)
    no_torch_recompute(monkeypatch)
    got = gradients_of(kernel, {n: v.clone() for n, v in x.items()}, p, s)
    monkeypatch.undo()
    want = gradients_of(program("gla").kernel("reference"), x, p, s)
    assert_gradients_equal(got, want, "gla/-inf gates")
