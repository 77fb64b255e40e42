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
