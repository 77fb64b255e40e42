"""Hard resets: a log decay of exactly `-inf` (exp(-inf) = 0) erases the state, as in the reference.

Users pass `-inf` to cut sequences (padding, variable-length batches). Every chunk-type form
cumulates log decays; `-inf - -inf` must never reach an exponent (chunk.md: the finite gates are
cumulated and the resets counted). Each affected stdlib spec gets its reset where the spec's log
decay comes from: the input gate (`g`, mlstm's `f`; for a key-wise gate half the keys), mamba2's
`dt * A` with `A = -inf` in one head (every step of that head a reset), retnet's `log(gamma)` with
`gamma = 0` in one head. Positions: the first step, inside a chunk, on a chunk boundary (the
last step of one chunk and the first of the next), the last step, several. Forward, final state
and gradients (torch.autograd.grad) of the torch backend against the reference, fp32 and fp64;
the Triton kernels (interpreter, tiny shapes) forward, one scalar- and one key-wise-gated spec a
family. The scan and semiring forms are checked too (a zero coefficient, a `-inf` offset).

Tolerances as in test_torch_backend.py: relative to the output's magnitude, 1e-5 in fp32
(measured worst 2e-6 here), 1e-9 in fp64.
"""
import functools
import math

import pytest
import torch

from oracles import SPECS, default_dims, random_inputs, random_state

B, H, T, CHUNK = 2, 2, 45, 16
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9}
GRADIENT_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9}     # as test_gradients.py
POSITIONS = {"first": [0], "inside": [9], "boundary": [CHUNK - 1, CHUNK], "last": [T - 1],
             "several": [0, 5, 6, CHUNK, 2 * CHUNK - 1, 40, T - 1]}

# spec -> (the input or param that carries the log decay, how a reset is written into it)
CHUNK_GATES = {"gla": "g", "simple_gla": "g", "hgrn2": "g", "gated_deltanet": "g", "kda": "g",
               "comba": "g", "rwkv7": "g", "mlstm": "f"}
SCAN_GATES = {"hgrn": "g", "maxplus": "a", "logsumexp": "la"}      # scan and semiring forms
GATE_INPUTS = {**CHUNK_GATES, **SCAN_GATES}
PER_HEAD = {"mamba2": ("A", -math.inf), "retnet": ("gamma", 0.0), "mamba": ("A", -math.inf)}
SPECS_WITH_RESETS = sorted(GATE_INPUTS) + sorted(PER_HEAD)
# d/d(dt) exp(dt * A) at A = -inf is A * exp(dt * A) = -inf * 0 for autograd: NaN in both
# backends, the product rule's, not the form's
NAN_IN_THE_REFERENCE = {("mamba2", "dt"), ("mamba2", "A"), ("mamba", "dt"), ("mamba", "A")}
# the torch backend takes retnet's decay as log(gamma): at gamma = 0 the chain rule divides the
# decay's gradient, exactly 0, by gamma = 0 (docs/backends.md, Numerics); the reference is finite
NAN_HERE = NAN_IN_THE_REFERENCE | {("retnet", "gamma")}


@functools.lru_cache(maxsize=None)
def kernel(name, backend, **options):
    import seqc
    return seqc.load(name).kernel(backend=backend, **options)


def with_resets(name, positions, dtype, seed=0):
    """Random valid inputs of spec `name` with hard resets written in."""
    x, p = random_inputs(name, B, T, H, dtype=dtype, seed=seed)
    if name in GATE_INPUTS:
        g = x[GATE_INPUTS[name]]
        where = g[:, positions]
        if g.dim() == 4:                # a key-wise gate: reset half the keys
            where[..., ::2] = -math.inf
        else:
            where[...] = -math.inf
        g[:, positions] = where
    else:
        param, value = PER_HEAD[name]
        p[param][0] = value             # every step of head 0 resets
    return x, p


def scale(t):
    finite = t[torch.isfinite(t)]
    return max(1.0, finite.abs().max().item()) if finite.numel() else 1.0


def assert_close(got, want, rtol, what):
    assert got.dtype == want.dtype, what
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * scale(want),
                               msg=lambda m: f"{what}: {m}")


def call(name, backend, x, p, state, **options):
    out = kernel(name, backend, **options)(**x, **p, initial_state=state, output_final_state=True)
    return [out[n] for n in out.keys()], [out.final_state[n] for n in sorted(out.final_state)]


def loss_and_leaves(name, backend, x, p, state, **options):
    """A random linear functional of every output and final state, and the float leaves."""
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in {**x, **p}.items()}
    outputs, finals = call(name, backend, {n: leaves[n] for n in x}, {n: leaves[n] for n in p},
                           state, **options)
    gen = torch.Generator().manual_seed(7)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)).sum()
               for t in outputs + finals)
    return loss, leaves, outputs, finals


# A per-head reset (a param such as retnet's gamma = 0) is at every step: one case, "several".
CASES = [(name, where) for name in SPECS_WITH_RESETS for where in sorted(POSITIONS)
         if name not in PER_HEAD or where == "several"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name, where", CASES)
def test_torch_equals_the_reference_across_hard_resets(name, where, dtype):
    x, p = with_resets(name, POSITIONS[where], dtype)
    state = {n: s.to(dtype) for n, s in random_state(name, B, H).items()}
    got_loss, got_leaves, got_out, got_final = loss_and_leaves(name, "torch", x, p, state,
                                                               chunk_size=CHUNK)
    want_loss, want_leaves, want_out, want_final = loss_and_leaves(name, "reference", x, p, state)
    for i, (g, w) in enumerate(zip(got_out + got_final, want_out + want_final)):
        assert torch.isfinite(g).all(), f"result {i} not finite"
        assert_close(g.detach(), w.detach(), TOLERANCE[dtype], f"result {i}")
    names = list(got_leaves)
    got = torch.autograd.grad(got_loss, [got_leaves[n] for n in names])
    want = torch.autograd.grad(want_loss, [want_leaves[n] for n in names])
    for n, g, w in zip(names, got, want):
        finite = torch.isfinite(w)
        assert finite.all() or (name, n) in NAN_IN_THE_REFERENCE, f"reference gradient of {n}"
        if (name, n) in NAN_HERE:           # the other heads' gradients still agree
            finite = finite & torch.isfinite(g)
            assert finite.any()
        else:
            assert torch.isfinite(g).all(), f"gradient of {n} not finite"
        assert_close(g[finite], w[finite], GRADIENT_TOLERANCE[dtype], f"gradient of {n}")


def test_the_reset_erases_everything_before_it():
    """Not only agreement: after a reset at t the outputs do not depend on inputs before t."""
    x, p = with_resets("gla", [20], torch.float64)
    changed = {n: t.clone() for n, t in x.items()}
    changed["k"][:, :20] += 1.0
    changed["g"][..., 1::2] = -math.inf          # the other half of the keys resets too
    x["g"][..., 1::2] = -math.inf
    a, _ = call("gla", "torch", x, p, None, chunk_size=CHUNK)
    b, _ = call("gla", "torch", changed, p, None, chunk_size=CHUNK)
    assert not torch.equal(a[0][:, :20], b[0][:, :20])
    assert torch.equal(a[0][:, 20:], b[0][:, 20:])



TRITON_CASES = [("simple_gla", "chunk"), ("gla", "chunk"), ("mamba2", "chunk"),
                ("gated_deltanet", "chunk_delta"), ("kda", "chunk_delta"),
                ("comba", "chunk_delta"), ("rwkv7", "chunk_dplr"), ("gla", "fused_recurrent")]


@pytest.mark.triton
@pytest.mark.parametrize("name,mode", TRITON_CASES)
def test_triton_equals_the_reference_across_hard_resets(name, mode):
    """fp32 (the kernels' compute dtype), resets on the first step, inside a block, on both sides
    of a block boundary and on the last step; blocks of 16 steps, the last one ragged."""
    x, p = with_resets(name, POSITIONS["several"], torch.float32)
    state = random_state(name, B, H)
    got_out, got_final = call(name, "triton", x, p, state, mode=mode, chunk_size=CHUNK)
    want_out, want_final = call(name, "reference", x, p, state)
    for i, (g, w) in enumerate(zip(got_out + got_final, want_out + want_final)):
        assert torch.isfinite(g).all(), f"result {i} not finite"
        assert_close(g, w, 1e-4, f"result {i}")       # test_triton.py's tolerance


def with_extreme_gates(spec, tensors, steps):
    """Hard resets and zero gates for the differential fuzz (test_analysis_robust.py): a tensor
    declared `in (-inf, 0)` (a log gate) gets `-inf`, one declared `in (0, 1)` (a gate, a rate)
    gets 0, at the first, a middle and the last step (an input; for a key-wise one, half its
    lanes) or in head 0 (a param). Returns a new dict."""
    extreme = {(-math.inf, 0.0): -math.inf, (0.0, 1.0): 0.0}
    steps_hit = sorted({0, steps // 2, steps - 1})
    out = dict(tensors)
    for tensor in list(spec.inputs) + list(spec.params):
        bounds = tensor.range and (tensor.range.low, tensor.range.high)
        if bounds not in extreme:
            continue
        x = out[tensor.name].clone()
        if tensor in spec.params:
            x[0] = extreme[bounds]
        else:
            lanes = (slice(None),) * len(tensor.dims[:-1]) + (slice(None, None, 2),) if tensor.dims else ()
            x[(slice(None), steps_hit, slice(None)) + lanes] = extreme[bounds]
        out[tensor.name] = x
    return out


def test_extreme_gates_reach_log_gates_and_rates():
    import seqc
    spec = seqc.load("gated_deltanet").spec
    x, _ = random_inputs("gated_deltanet", 1, 5, 2)
    changed = with_extreme_gates(spec, x, 5)
    assert torch.isneginf(changed["g"][:, [0, 2, 4]]).all() and torch.isfinite(changed["g"][:, [1, 3]]).all()
    assert (changed["beta"][:, [0, 2, 4]] == 0).all() and torch.equal(changed["q"], x["q"])
