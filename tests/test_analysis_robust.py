"""The analysis answers every spec that passes the checker: a verdict, never an exception.

Random edits of the stdlib (swapped functions and operators, dropped or duplicated lines) give
specs nobody wrote on purpose; each one that checks clean must get a verdict and a Plan.
"""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqc
from seqc.resources import stdlib_dir, stdlib_names

SWAPS = [("exp", "tanh"), ("exp", "sigmoid"), ("*", "/"), ("+", "*"), ("-", "+"),
         ("exp", "log"), ("max", "logaddexp"), ("@", "*"), ("k", "q"), ("S =", "let x =")]


@st.composite
def edited_specs(draw):
    name = draw(st.sampled_from(stdlib_names()))
    lines = (stdlib_dir() / f"{name}.seq").read_text().splitlines()
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(st.sampled_from(["swap", "drop", "duplicate"]))
        index = draw(st.integers(0, len(lines) - 1))
        if edit == "swap":
            old, new = draw(st.sampled_from(SWAPS))
            lines[index] = lines[index].replace(old, new, 1)
        elif edit == "drop" and len(lines) > 1:
            del lines[index]
        else:
            lines.insert(index, lines[index])
    return "\n".join(lines) + "\n"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edited_specs())
def test_every_checked_spec_gets_a_verdict_and_a_plan(source):
    try:
        program = seqc.compile(source, "edited.seq")
    except seqc.SpecError:
        return
    analysis = program.analysis
    assert analysis.describe(source)
    states = analysis.to_json()["states"]
    assert set(states) == {s.name for s in program.spec.states}
    assert all(v["kind"] in ("scan", "chunk", "chunk_delta", "semiring", "sequential")
               for v in states.values())
    plan = analysis.plan
    assert {s for g in plan.groups for s in g.states} == set(states)


def agrees_with_the_reference(source: str, steps: int, backend: str, dtype, tolerance: float,
                              extremes: bool = False, **options) -> None:
    """Run an edited spec (if it checks) through `backend` and the reference; they must agree.
    With `extremes`, log gates hold `-inf` (hard resets) and gates in (0, 1) hold 0 at some steps
    (test_hard_resets.py)."""
    import torch

    from seqc.inputs import random_call
    try:
        program = seqc.compile(source, "edited.seq")
    except seqc.SpecError:
        return
    sizes = {"B": 1, "T": steps, "H": 2, **{d.name: 3 + i for i, d in enumerate(program.spec.dims)}}
    tensors, initial = random_call(program.spec, sizes, dtype, seed=steps,
                                   with_initial_state=True)
    initial = {k: v.to(dtype) for k, v in initial.items()}
    if extremes:
        from test_hard_resets import with_extreme_gates
        tensors = with_extreme_gates(program.spec, tensors, steps)
    want = program.kernel("reference")(**tensors, initial_state=initial, output_final_state=True)
    got = program.kernel(backend, **options)(**tensors, initial_state=initial,
                                             output_final_state=True)
    pairs = [(got[n], want[n]) for n in want.keys()]
    pairs += [(got.final_state[n], want.final_state[n]) for n in want.final_state]
    for result, expected in pairs:
        scale = float(expected[expected.isfinite()].abs().max()) if expected.isfinite().any() else 1
        torch.testing.assert_close(result.to(expected.dtype), expected, rtol=tolerance,
                                   atol=tolerance * max(1.0, scale), equal_nan=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edited_specs(), st.sampled_from([1, 5, 21]), st.booleans())
def test_torch_backend_agrees_with_the_reference_on_edited_specs(source, steps, extremes):
    """The parallel backend is generated from the Plan, so any spec the analysis accepts must
    run in it and agree with the step loop (fp64, so the comparison is tight), also across hard
    resets and zero gates."""
    import torch
    agrees_with_the_reference(source, steps, "torch", torch.float64, 1e-7, extremes, chunk_size=4)


def test_a_decay_of_unknown_sign_is_never_cumulated_in_log_space():
    """`tanh(g)` may be negative: the chunkwise forms (log-space decays) would compute NaN."""
    import torch
    scan = seqc.compile("model m\ndims K, V\ninput q[K], k[K], v[V], g\nstate S[K, V] = 0\n"
                        "S = tanh(g) * S + k * v\noutput o = q @ S\n")
    assert scan.analysis.kind("S") == "scan"
    delta = seqc.compile("model m\ndims K, V\ninput q[K], k[K], v[V], g, beta in (0, 1)\n"
                         "state S[K, V] = 0\nS = tanh(g) * S\nS = S + beta * k * (v - k @ S)\n"
                         "output o = q @ S\n")
    proof = delta.analysis.proof("S")
    assert proof.kind == "sequential" and "not provably positive" in proof.reason.message
    assert (proof.reason.span.line, proof.reason.span.col) == (5, 1)
    agrees_with_the_reference(scan.source, 21, "torch", torch.float64, 1e-7, chunk_size=4)
