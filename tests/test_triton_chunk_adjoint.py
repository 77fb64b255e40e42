"""The chunk recurrence core of the Triton backend and its adjoint kernels (backends/triton/
chunk_core.py.j2, chunk_core.md): S_t = exp(g_t) S_{t-1} + k_t v_t^T, o_t = q_t^T S_t, with no,
scalar or key-wise log decay g.

A Triton call of a chunk spec that needs a gradient (seqc/autograd.py) runs the torch module's
prelude under autograd with this core in place of the torch `_chunk`; here the core is
checked on its own against the torch `_chunk`'s autograd (fp64, rtol 1e-10: the same sums in
another order) and through whole specs against the reference's autograd (fp32, rtol 1e-4 as in
test_gradients.py): T not a multiple of the chunk, odd K and V (padded lanes), initial and final
states, strong decays (log gates near -8 a step, where exp(-b) of a factored form overflows).
The backward's memory traffic is counted under the interpreter (seqc/bench_io.py).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import functools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import seqc  # noqa: E402
from oracles import SPECS, random_inputs, random_state  # noqa: E402
from seqc.bench_io import counting  # noqa: E402
from test_gradients import gradients_of  # noqa: E402
from test_triton_gradients import assert_gradients_equal  # noqa: E402
from training_cores import set_log_decay  # noqa: E402

pytestmark = pytest.mark.triton
DECAYS = ["none", "scalar", "keywise"]
CHUNK_SPECS = ["gla", "hgrn2", "linear_attn", "mamba2", "mlstm", "retnet", "simple_gla"]


@functools.lru_cache(maxsize=None)
def modules():
    program = seqc.load("gla")
    return program.kernel("triton").module, program.kernel("torch").module


def normal_sampler(seed, dtype=torch.float64):
    """randn(*shape): standard normal draws from one generator seeded `seed`."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)
    return randn


def log_decay(decay, randn, B, T, H, K, strength):
    """No ("none"), a scalar or a key-wise log decay drawn by `randn` (both gates are drawn, in
    that order, whichever is kept), times `strength`."""
    return {"none": None, "scalar": F.logsigmoid(randn(B, T, H)) * strength,
            "keywise": F.logsigmoid(randn(B, T, H, K)) * strength}[decay]


def core_inputs(decay, B=1, T=37, H=2, K=5, V=3, dtype=torch.float64, seed=0, strength=1.0):
    randn = normal_sampler(seed, dtype)
    q, k, v = randn(B, T, H, K), randn(B, T, H, K) / K ** 0.5, randn(B, T, H, V)
    g = log_decay(decay, randn, B, T, H, K, strength)
    return q, k, v, g, 0.5 * randn(B, H, K, V)


def core_gradients(core, tensors, chunk_size, seed=1):
    leaves = [None if t is None else t.clone().requires_grad_() for t in tensors]
    q, k, v, g, s0 = leaves
    (o,), final = core([q], [k], [v], g, s0, chunk_size)
    gen = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)).sum() \
        + (final * torch.randn(final.shape, generator=gen, dtype=torch.float64).to(o.dtype)).sum()
    wanted = [t for t in leaves if t is not None]
    return [o.detach(), final.detach(), *torch.autograd.grad(loss, wanted)]


def names(decay):
    """The labels of `core_gradients`'s results."""
    return ["o", "final state", "dq", "dk", "dv"] + (["dg"] if decay != "none" else []) + ["ds0"]


def assert_results_match(got, want, labels, rtol):
    """Each of `got` finite and within `rtol` of `want`'s (atol: rtol times the magnitude)."""
    for label, a, b in zip(labels, got, want):
        a = a.double()
        assert torch.isfinite(a).all(), label
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * max(1.0, b.abs().max().item()),
                                   msg=lambda m: f"{label}: {m}")


@pytest.mark.parametrize("decay", DECAYS)
def test_core_adjoint_matches_torch_autograd_fp64(decay):
    """T = 37 in chunks of 16 (the last one ragged), K = 5 and V = 3 in blocks of 16."""
    triton_module, torch_module = modules()
    tensors = core_inputs(decay)
    got = core_gradients(triton_module.chunk_core, tensors, 16)
    want = core_gradients(torch_module._chunk, tensors, 16)
    assert_results_match(got, want, [f"{decay}: {n}" for n in names(decay)], 1e-10)


@pytest.mark.parametrize("decay", ["scalar", "keywise"])
def test_core_adjoint_strong_decays_fp32(decay):
    """Log gates near -8 a step: a chunk of 16 cumulates to about -130, beyond fp32's exp range
    for any form that factors exp(b_i - b_j) as exp(b_i) exp(-b_j)."""
    triton_module, torch_module = modules()
    tensors = core_inputs(decay, dtype=torch.float32, seed=3, strength=8.0)
    got = core_gradients(triton_module.chunk_core, tensors, 16)
    want = core_gradients(torch_module._chunk, [None if t is None else t.double() for t in tensors],
                          16)
    assert_results_match(got, want, names(decay), 1e-4)


def assert_trains_through_core(name, core, function, mode=None):
    """The whole spec `name` on Triton (in `mode`): prelude by autograd, the recurrence by the
    core's adjoint kernels (`function`, the core's autograd.Function in the module, its backward
    counted: run once, at chunk size 16); T = 37 in chunks of 16, dims of 5; the gradients of
    every input, param and initial state equal the reference's."""
    program = seqc.load(name)
    kernel = program.kernel("triton", chunk_size=16, **({"mode": mode} if mode else {}))
    module = kernel.module
    assert core in module.CORES or core in module.MODE_CORES.get(mode, {}).values()
    dims = {d: 5 for d in SPECS[name].dims}
    x, p = random_inputs(name, 1, 37, 2, dims=dims, seed=11)
    s = random_state(name, 1, 2, dims=dims, seed=11)
    autograd_function = getattr(module, function)
    backward = autograd_function.backward
    calls = []

    def counted(ctx, *grads):
        calls.append(getattr(ctx, "chunk_size", None) or ctx.settings[0])
        return backward(ctx, *grads)

    autograd_function.backward = staticmethod(counted)
    try:
        got = gradients_of(kernel, x, p, s)
    finally:
        autograd_function.backward = staticmethod(backward)
    assert calls == [16], f"the backward did not run the adjoint kernel of {core}"
    want = gradients_of(program.kernel("reference"), x, p, s)
    assert_gradients_equal(got, want, f"{name} through {core}")


@pytest.mark.parametrize("name", CHUNK_SPECS)
def test_chunk_specs_train_through_the_adjoint_kernels(name, monkeypatch):
    without_parallel_cores(monkeypatch, name)
    assert_trains_through_core(name, "chunk_core", "_ChunkCore", mode="chunk")


def test_forced_chunk_trains_on_the_parallel_core():
    """A forced `chunk` where the module has `chunk_parallel`: the single kernel's forward, the
    GPU-fit parallel core's training (docs/backends.md, "Triton chunk modes")."""
    assert_trains_through_core("gla", "chunk_core", "_ChunkParallelCore", mode="chunk")


@pytest.mark.parametrize("name", ["gla", "simple_gla"])
def test_minus_infinity_log_decays(name, monkeypatch):
    without_parallel_cores(monkeypatch, name)
    assert_resets_equal_the_reference(name, mode="chunk")


def without_parallel_cores(monkeypatch, name):
    """Train `name` as a module with no parallel chunk form does: a forced `chunk`, `chunk_delta`
    or `chunk_dplr` on chunk_core / chunk_delta_core / chunk_dplr_core (with the parallel form's
    cores there, a forced single-kernel mode trains on them: seqc/autograd.py,
    `single_to_parallel`)."""
    monkeypatch.setattr(seqc.load(name).kernel("triton").module, "MODE_CORES", {})


def assert_resets_equal_the_reference(name, mode=None):
    """A -inf log decay resets the state (nothing decays across it): at step 3 (inside the first
    chunk), 16 (a chunk's first step), 20 and 36 (the last step); a key-wise spec on one lane
    only. Outputs, final state and every gradient finite and equal to the reference's."""
    program = seqc.load(name)
    dims = {d: 5 for d in SPECS[name].dims}
    x, p = random_inputs(name, 1, 37, 2, dims=dims, seed=13)
    s = random_state(name, 1, 2, dims=dims, seed=13)
    set_log_decay(x["g"], (3, 16, 20, 36), float("-inf"))
    kernel = program.kernel("triton", chunk_size=16, **({"mode": mode} if mode else {}))
    assert_call_equals_the_reference(program, kernel, x, p, s, f"{name} with -inf log decays")


def assert_call_equals_the_reference(program, kernel, x, p, s, what):
    """`kernel` (a Triton call of `program`) on inputs `x`, params `p`, initial state `s`: every
    gradient, output and final state equal to the reference's (fp32, rtol 1e-4)."""
    got = gradients_of(kernel, x, p, s)
    want = gradients_of(program.kernel("reference"), x, p, s)
    assert_gradients_equal(got, want, what)
    leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
    out = kernel(**leaves, **p, initial_state=s, output_final_state=True)
    ref = program.kernel("reference")(**x, **p, initial_state=s, output_final_state=True)
    for n in ref.keys():
        torch.testing.assert_close(out[n].detach(), ref[n], rtol=1e-4, atol=1e-4)
    for n, state in ref.final_state.items():
        torch.testing.assert_close(out.final_state[n].detach(), state, rtol=1e-4, atol=1e-4)


def counted_training_step(program, sizes, **options):
    """(forward bytes, backward bytes, the call's compulsory bytes) of one Triton call (kernel
    `options`) with an initial state and its `loss.backward()` under a random incoming gradient,
    sizes `sizes`."""
    from seqc.bench_io import compulsory
    from seqc.inputs import random_call
    tensors, s = random_call(program.spec, sizes, seed=5, with_initial_state=True)
    leaves = {n: t.clone().requires_grad_() for n, t in tensors.items()}
    with counting() as forward:
        out = program.kernel("triton", **options)(**leaves, initial_state=s,
                                                  output_final_state=True)
    read, written = compulsory({**tensors, **s}, {n: out[n] for n in out.keys()},
                               out.final_state)
    gen = torch.Generator().manual_seed(6)
    loss = sum((t * torch.randn(t.shape, generator=gen)).sum()
               for t in [out[n] for n in out.keys()] + list(out.final_state.values()))
    with counting() as backward:
        loss.backward()
    return (forward["loaded"] + forward["stored"], backward["loaded"] + backward["stored"],
            read + written)


@pytest.mark.parametrize("name", ["gla", "simple_gla", "mamba2"])
def test_backward_traffic_within_two_and_a_half_forward_compulsory(name, monkeypatch):
    """Bytes chunk_core's kernels load and store during `loss.backward()` against the forward
    call's compulsory traffic (inputs and params read once, outputs and final state written
    once), dims of 64, T = 128 in chunks of 64, with an initial state."""
    without_parallel_cores(monkeypatch, name)
    program = seqc.load(name)
    forward, backward, compulsory = counted_training_step(
        program, {"B": 1, "T": 128, "H": 2, **{d.name: 64 for d in program.spec.dims}},
        mode="chunk")
    assert backward / compulsory <= 2.5, f"{name}: backward traffic {backward / compulsory:.2f}x"
    assert forward / compulsory <= 1.3, \
        f"{name}: training forward traffic {forward / compulsory:.2f}x"


def test_two_writes_a_step_keep_the_torch_recomputation():
    """A chunk group with two writes a step has no adjoint core (one query, one write only): the
    module carries none and the backward recomputes with the torch module, still exact."""
    from seqc.inputs import random_call
    from test_torch_backend import TWO_KEYWISE_WRITES
    program = seqc.compile(TWO_KEYWISE_WRITES)
    kernel = program.kernel("triton", chunk_size=16)
    assert kernel.module.DEFAULT_MODE == "chunk" and kernel.module.CORES == {}
    tensors, s = random_call(program.spec, dict(B=1, T=21, H=2, K=5, V=3), seed=2,
                             with_initial_state=True)
    x = {n: t for n, t in tensors.items()}
    got = gradients_of(kernel, x, {}, s)
    want = gradients_of(program.kernel("reference"), x, {}, s)
    assert_gradients_equal(got, want, "two writes a step")
