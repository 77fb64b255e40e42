"""Gradients of edited specs: the torch backend's parallel forms against the reference's autograd
(tests/gradient_agreement.py), fp64 on tiny shapes, so that a finite-but-wrong or NaN gradient
of a spec nobody wrote on purpose fails here. Regression tests for what the gradient fuzz
(scripts/fuzz_training.py) found, then a deterministic slice of that fuzz."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqc
from seqc.resources import stdlib_dir
from gradient_agreement import call_tensors, compare, disagreements, gradients, variants
from test_analysis_robust import KINDS, edited_specs

HGRN = ("model m\ndims D\ninput x[D]\ninput g[D] in (-inf, 0)\nstate h[D] = 0\n"
        "h = exp(g) * h + {write}\noutput o = {output}\n")


def assert_agree(program, backend="torch", **call) -> None:
    for options in variants(program, backend):
        found = compare(program, backend, options, **call)
        assert not found, "\n".join(map(str, found))


def test_a_constant_of_an_fp64_run_is_computed_in_fp64():
    """`exp(0.7)` and `D ** -0.5` (rendered `sqrt(D)`) are 0-d tensors of the run's dtype, not
    of torch's default fp32 (their rounding put the gradients 2e-8 off the reference's)."""
    program = seqc.compile(HGRN.format(write="D ** -0.5 * x", output="exp(0.7) * h"))
    assert_agree(program, tolerance=1e-12)


def test_a_sigmoid_decay_at_minus_inf_has_a_finite_gradient():
    """The chunk forms take log(sigmoid(g)) as logsigmoid(g): its gradient at g = -inf is 1, not
    log's (1 / 0) * sigmoid'(-inf) = NaN. A chunk and a chunk_delta spec, -inf at one step."""
    for name, kind in (("simple_gla", "chunk"), ("gated_deltanet", "chunk_delta")):
        source = (stdlib_dir() / f"{name}.seq").read_text()
        program = seqc.compile(source.replace("exp(g) * S", "sigmoid(g) * S")
                               .replace("g in (-inf, 0)", "g"))
        assert program.analysis.kind("S") == kind          # a log-space form
        tensors, initial = call_tensors(program, 7, 0, torch.float64)
        tensors["g"][:, 3] = -float("inf")
        want = gradients(program.kernel("reference"), tensors, initial)
        for options in variants(program, "torch"):
            got = gradients(program.kernel("torch", **options), tensors, initial)
            found = disagreements(got, want, 1e-9, options)
            assert not found, f"{name}: " + "\n".join(map(str, found))


def test_several_writes_a_token_in_chunk_dplr():
    """Two rank-one writes in one update of a chunk_dplr group (key-wise rwkv7, scalar comba):
    the erase side's scores are [C, C], the writes' [C, 2 C]; each mask was built [C, 2 C]."""
    rwkv7 = (stdlib_dir() / "rwkv7.seq").read_text().replace(
        "input a[K] in (0, 1)", "input a[K] in (0, 1)\ninput k2[K], v2[V]").replace(
        "+ k * v", "+ k * v + k2 * v2")
    comba = (stdlib_dir() / "comba.seq").read_text().replace(
        "input beta in (0, 1)", "input beta in (0, 1)\ninput k2[K], v2[V]").replace(
        "(v - p @ S)", "(v - p @ S) + k2 * v2")
    for source in (rwkv7, comba):
        program = seqc.compile(source)
        assert [g.kind for g in program.analysis.plan.groups] == ["chunk_dplr"]
        assert_agree(program, extremes=True)


def test_a_number_let_times_a_const_is_exact_in_an_fp64_triton_call():
    """`let cst = 0.7`, `output oc = cst * scale * q @ S` (deltaproduct edited): the kernels
    bound the literal to an fp32 tensor, so every Triton mode's fp64 forward and the fused
    recurrent gradients were 4e-9 to 1.8e-8 off (on a GPU the const argument was fp32 too). Both
    are now exact in the call's dtype (backends/triton/render.py `in_acc`, `bound`). The fused
    kernels and one blockwise form (all modes render constants alike; chunk_delta_parallel would
    cost 4 s more)."""
    source = (stdlib_dir() / "deltaproduct.seq").read_text().replace(
        "output o = scale * q @ S", "let cst = 0.7\noutput oc = cst * scale * q @ S")
    program = seqc.compile(source)
    tensors, initial = call_tensors(program, 3, 0, torch.float64)
    want = program.kernel("reference")(**tensors, initial_state=initial)["oc"]
    for mode in ("fused_recurrent", "chunk_delta"):
        got = program.kernel("triton", mode=mode, chunk_size=16)(**tensors, initial_state=initial)
        assert float((got["oc"] - want).abs().max()) < 1e-12, mode
    found = compare(program, "triton", {"mode": "fused_recurrent"}, steps=3, tolerance=1e-12)
    assert not found, "\n".join(map(str, found))


def test_a_gate_at_exactly_zero_trains_in_the_fused_recurrent_kernel():
    """retnet's `gamma = 0` (outside its declared (0, 1)): the fused recurrent kernel multiplies
    by gamma, so its gradient is the reference's; the log-space forms' is NaN there, a documented
    limitation (docs/backends.md "A gate at exactly 0")."""
    program = seqc.compile((stdlib_dir() / "retnet.seq").read_text())
    tensors, initial = call_tensors(program, 5, 0, torch.float64)
    tensors["gamma"][0] = 0.0
    want = gradients(program.kernel("reference"), tensors, initial)
    options = {"mode": "fused_recurrent"}
    got = gradients(program.kernel("triton", **options), tensors, initial)
    found = disagreements(got, want, 1e-12, options)
    assert not found, "\n".join(map(str, found))


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=2, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_torch_gradients_of_edited_specs_agree_with_the_reference(kind, data):
    """The CI slice of scripts/fuzz_training.py: two edited specs of each kind, each in one torch
    variant (adjoint cores, plain autograd, checkpointed slabs), 1-9 steps, with or without hard
    resets; fp64 gradients of every input, param and initial state within 1e-9 of the
    reference's, finite where its are. (Zero gates in (0, 1) are left out: their NaN through
    log(gamma) is a documented limitation, docs/backends.md "Numerics".)"""
    program = seqc.compile(data.draw(edited_specs(kind)), "edited.seq")
    options = data.draw(st.sampled_from(variants(program, "torch")))
    steps = data.draw(st.sampled_from([1, 5, 9]))
    extremes = data.draw(st.sampled_from([False, "resets"]))
    found = compare(program, "torch", options, steps=steps, extremes=extremes)
    assert not found, "\n".join(map(str, found)) + "\n" + program.source
