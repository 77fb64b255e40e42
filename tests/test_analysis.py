"""The recurrence analysis: every stdlib spec's kind, refusals with their spans, Plan shape, CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import seqc
from seqc import ir, plan
from seqc.resources import stdlib_names

EXPECTED = {
    "gla": "chunk", "simple_gla": "chunk", "mamba2": "chunk", "retnet": "chunk",
    "linear_attn": "chunk", "hgrn2": "chunk", "rwkv6": "chunk",
    "deltanet": "chunk_delta", "gated_deltanet": "chunk_delta", "deltaproduct": "chunk_delta",
    "kda": "chunk_delta", "rwkv7": "chunk_delta", "comba": "chunk_delta",
    "hgrn": "scan", "mingru": "scan", "minlstm": "scan", "lru": "scan", "rglru": "scan",
    "mamba": "scan",
    "maxplus": "semiring", "logsumexp": "semiring",
    "lstm": "sequential", "gru": "sequential",
}
# mLSTM: the matrix memory C is chunk; the normaliser n[K] is a vector state, hence a scan.
EXPECTED_PER_STATE = {"mlstm": {"C": "chunk", "n": "scan"},
                      "lstm": {"h": "sequential", "c": "sequential"}}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_stdlib_kind(name):
    analysis = seqc.load(name).analysis
    assert {p.kind for p in analysis.proofs} == {EXPECTED[name]}


@pytest.mark.parametrize("name", sorted(EXPECTED_PER_STATE))
def test_stdlib_kind_per_state(name):
    analysis = seqc.load(name).analysis
    assert {s: analysis.kind(s) for s in EXPECTED_PER_STATE[name]} == EXPECTED_PER_STATE[name]


def test_every_stdlib_spec_has_an_expectation():
    assert set(stdlib_names()) <= set(EXPECTED) | set(EXPECTED_PER_STATE)


def test_rwkv7_is_diagonal_plus_low_rank():
    """S = exp(g) * S - a * kk * (kk @ S) + k * v: the low rank reads the state before the decay,
    with another key (kk) than the write (k)."""
    proof = seqc.load("rwkv7").analysis.proof("S")
    group = proof.group
    assert proof.kind == "chunk_delta" and isinstance(group, plan.DplrGroup)
    assert seqc.pretty.expr(group.log_decay) == "g" and group.log_decay.dims == ("K",)
    assert (seqc.pretty.expr(group.erase), seqc.pretty.expr(group.key)) == ("a * kk", "kk")
    assert [(seqc.pretty.expr(w.key), seqc.pretty.expr(w.value)) for w in group.writes] \
        == [("k", "v")]
    assert proof.combine.text.endswith("A = diag(exp(log_decay)) - erase key^T per step")


DECAY_THEN_DPLR = ("model m\ndims K, V\ninput r[K], k[K], v[V], kk[K], a[K] in (0, 1)\n"
                   "input g[K] in (-inf, 0), h in (-inf, 0)\nstate S[K, V] = 0\n"
                   "S = exp(g) * S\nS = exp(h) * S - a * kk * (kk @ S) + k * v\n"
                   "output o = r @ S\n")


def test_a_key_that_reads_between_two_decays():
    """A decay update of its own, then a diagonal-plus-low-rank update with a decay of its own:
    the key sees the first decay, not the second."""
    proof = seqc.compile(DECAY_THEN_DPLR).analysis.proof("S")
    group = proof.group
    assert proof.kind == "chunk_delta" and isinstance(group, plan.DplrGroup)
    assert seqc.pretty.expr(group.log_decay) in ("g + h", "h + g")
    assert seqc.pretty.expr(group.unseen_log_decay) == "h"


def test_two_low_rank_updates_are_sequential():
    spec = DECAY_THEN_DPLR.replace("S = exp(g) * S\n", "S = S - a * kk * (kk @ S)\n")
    assert seqc.compile(spec).analysis.kind("S") == "sequential"


def test_lstm_is_one_coupled_group_refused_at_the_decay():
    proof = seqc.load("lstm").analysis.proof("c")
    assert proof.states == ("h", "c")
    assert (proof.reason.span.line, proof.reason.span.col) == (16, 5)
    assert proof.reason.message == "the decay depends on the state `h`"


def test_gru_refusal_points_under_sigmoid():
    reason = seqc.load("gru").analysis.proof("h").reason
    assert (reason.span.line, reason.span.col) == (15, 9)
    assert reason.message == "`h` appears under sigmoid"


# ---- proof objects ---------------------------------------------------------------------------------

def test_chunk_decomposition_of_gla():
    proof = seqc.load("gla").analysis.proof("S")
    d = proof.decomposition
    assert seqc.pretty.expr(d["decay"]) == "exp(g)"
    assert seqc.pretty.expr(d["log_decay"]) == "g"
    assert [(seqc.pretty.expr(w.key), seqc.pretty.expr(w.value)) for w in d["writes"]] == \
        [("k", "v")]
    assert proof.combine.text.startswith("(D1, U1) o (D2, U2) = (D2 D1, D2 U1 + U2)")
    assert proof.combine.identity_text == "(1, 0)"


def test_delta_decomposition_of_gated_deltanet():
    d = seqc.load("gated_deltanet").analysis.proof("S").decomposition
    assert seqc.pretty.expr(d["log_decay"]) == "g"
    [step] = d["steps"]
    assert [seqc.pretty.expr(x) for x in (step.key, step.beta, step.value)] == ["k", "beta", "v"]
    assert d["low_rank"] == ("beta * k k^T",)


def test_deltaproduct_has_two_steps_in_order():
    steps = seqc.load("deltaproduct").analysis.proof("S").decomposition["steps"]
    assert [seqc.pretty.expr(s.key) for s in steps] == ["k1", "k2"]


@pytest.mark.parametrize("name, log", [("mamba2", "dt * A"), ("retnet", "log(gamma)"),
                                       ("hgrn2", "g"), ("linear_attn", None)])
def test_chunk_log_decay(name, log):
    group = seqc.load(name).analysis.plan.groups[0]
    assert (None if group.log_decay is None else seqc.pretty.expr(group.log_decay)) == log


@pytest.mark.parametrize("name, log", [("hgrn", "g"), ("lru", "-exp(nu)"), ("mamba", "dt * A"),
                                       ("mingru", None)])
def test_scan_log_coefficient(name, log):
    group = seqc.load(name).analysis.plan.groups[0]
    got = group.log_coefficient[group.states[0]]
    assert (None if got is None else seqc.pretty.expr(got)) == log


def test_semiring_pieces():
    group = seqc.load("maxplus").analysis.plan.groups[0]
    assert (group.semiring, seqc.pretty.expr(group.coefficient),
            seqc.pretty.expr(group.offset)) == ("maxplus", "a", "x")


# ---- refusals -------------------------------------------------------------------------------------

HEADER = "model neg\ndims D\ninput x[D], y[D]\nstate h[D] = 0, c[D] = 0\n"


def refusal(body: str, state: str = "h"):
    analysis = seqc.compile(HEADER + body + "output o = h + c\n", "neg.seq").analysis
    proof = analysis.proof(state)
    assert proof.kind == "sequential"
    return proof.reason.span.line, proof.reason.span.col, proof.reason.message


@pytest.mark.parametrize("body, expected", [
    ("h = tanh(h + x)\nc = c + x\n", (5, 5, "`h` appears under tanh")),
    ("h = sigmoid(h) * h + x\nc = c + x\n", (5, 5, "the decay depends on the state `h`")),
    ("h = x * h + exp(y * h)\nc = c + x\n", (5, 13, "`h` appears under exp")),
    ("h = h * c + x\nc = c + y * h\n", (5, 5, "product of two states (`h` and `c`)")),
    ("h = x * h * h\nc = c + x\n", (5, 5, "product of two states (`h` and `h`)")),
    ("h = x / (1 + h)\nc = c + x\n", (5, 5, "division by the state `h`")),
    ("c = c + x * h\nlet d = sigmoid(c)\nh = d * h + x\n", (7, 5, "the decay depends on the state `h`")),
    ("h = h ** 2 + x\nc = c + x\n", (5, 5, "`h` is raised to a power")),
])
def test_refusal_span_and_reason(body, expected):
    assert refusal(body) == expected


@pytest.mark.parametrize("body, coefficient", [
    ("h = h * c + x\nc = c + y\n", "{c}"),
    ("c = c + x\nlet d = sigmoid(c)\nh = d * h + x\n", "sigmoid({c})"),
])
def test_a_state_read_by_another_that_never_reads_it_back_is_an_earlier_stage(body, coefficient):
    """`c` never reads `h`: `c` is scanned first and its per-step values are `h`'s coefficient
    (docs/analysis.md rule 6); before stages the pair was refused as one group."""
    analysis = seqc.compile(HEADER + body + "output o = h + c\n", "stage.seq").analysis
    assert [(p.states, p.kind) for p in analysis.proofs] == [(("c",), "scan"), (("h",), "scan")]
    group = analysis.plan.groups[1]
    [read] = [r for r in analysis.plan.reads if r.state == "c" and r.name in
              seqc.pretty.expr(group.coefficient["h"])]
    assert seqc.pretty.expr(group.coefficient["h"]) == coefficient.format(c=read.name)
    # c read after its update in the first body (version 1), before it in the second (version 0)
    assert read.previous == body.startswith("h")


def test_refusal_renders_like_an_error():
    program = seqc.compile(HEADER + "h = tanh(h + x)\nc = c + x\noutput o = h + c\n", "neg.seq")
    text = program.analysis.describe(program.source)
    assert "neg.seq:5:5: note: `h` appears under tanh" in text
    assert "    h = tanh(h + x)\n        ^^^^^^^^^^^" in text


def test_jointly_affine_coupling_is_a_scan():
    program = seqc.compile(HEADER + "c = exp(y) * c + x\nh = sigmoid(x) * h + c\n"
                           "output o = h\n", "momentum.seq")
    proof = program.analysis.proof("h")
    assert proof.kind == "scan" and proof.states == ("h", "c")
    group = program.analysis.plan.groups[0]
    assert seqc.pretty.expr(group.coupling[("h", "c")]) == "exp(y)"
    assert seqc.pretty.expr(group.coupling[("h", "h")]) == "sigmoid(x)"


def test_dense_transition_is_refused():
    source = "model r\ndims D\ninput x[D]\nparam R[D, D]\nstate h[D] = 0\nh = R @ h + x\noutput o = h\n"
    reason = seqc.compile(source, "r.seq").analysis.proof("h").reason
    assert (reason.span.line, reason.span.col) == (6, 5)
    assert "not elementwise" in reason.message


def test_stale_read_is_refused():
    source = ("model s\ndims D\ninput x[D]\nstate h[D] = 0\nh = h + x\noutput o = h\n"
              "h = 2 * h\n")
    reason = seqc.compile(source, "s.seq").analysis.proof("h").reason
    assert (reason.span.line, reason.message) == (6, "output `o` reads `h` before its last update")


# ---- the Plan ---------------------------------------------------------------------------------------

def _no_state(node: ir.Expr) -> bool:
    return not any(isinstance(n, ir.Name) and n.ref is not None and n.ref.kind == "state"
                   for n in ir.walk(node))


@pytest.mark.parametrize("name", stdlib_names())
def test_plan_is_well_formed(name):
    program = seqc.load(name)
    p = program.analysis.plan
    assert isinstance(p, plan.Plan)
    assert sorted(s for g in p.groups for s in g.states) == sorted(t.name for t in p.spec.states)
    for group in p.groups:
        if isinstance(group, (plan.ChunkGroup, plan.DeltaGroup)):
            dims = p.spec.tensor(group.state).dims
            assert {group.key_dim, group.value_dim} == set(dims)
            if group.log_decay is not None:
                assert set(group.log_decay.dims) <= {group.key_dim}
                assert _no_state(group.log_decay)
        if isinstance(group, plan.ChunkGroup):
            for write in group.writes:
                assert set(write.key.dims) <= {group.key_dim}
                assert set(write.value.dims) <= {group.value_dim}
        if isinstance(group, plan.DeltaGroup):
            for step in group.steps:
                assert step.key.dims == (group.key_dim,) and step.beta.dims == ()
                assert set(step.value.dims) <= {group.value_dim}
        if isinstance(group, plan.DplrGroup):
            assert group.erase.dims == group.key.dims == (group.key_dim,)
            assert all(_no_state(w.key) and _no_state(w.value) for w in group.writes)
        if isinstance(group, plan.ScanGroup):
            for state in group.states:
                assert _no_state(group.offset[state])
                assert set(group.offset[state].dims) <= set(p.spec.tensor(state).dims)
    kinds = {s: g.kind for g in p.groups for s in g.states}
    names = {r.name: r for r in p.reads}
    for output in p.outputs.values():
        assert output.dims is not None
        assert _no_state(output) or p.sequential
        for node in ir.walk(output):
            if isinstance(node, ir.Name) and node.ref == ir.Ref("read"):
                read = names[node.id]
                assert (read.query is not None) == (kinds[read.state] in ("chunk", "chunk_delta",
                                                                          "chunk_dplr"))
    for let in p.prelude:
        assert _no_state(let.value)


def test_mlstm_plan_reads():
    p = seqc.load("mlstm").analysis.plan
    assert [(r.state, None if r.query is None else seqc.pretty.expr(r.query)) for r in p.reads] \
        == [("C", "q"), ("n", None)]
    assert seqc.pretty.expr(p.outputs["h"]) == "_read0_C / max(abs(q @ _read1_n), 1)"
    assert [let.name for let in p.prelude] == ["kt"]


# ---- the command line ---------------------------------------------------------------------------------

def _seqc(*args):
    return subprocess.run([sys.executable, "-m", "seqc.cli", *args], capture_output=True,
                          text=True, check=False)


def test_check_json_gives_kind_and_reason():
    result = _seqc("check", "--json", str(seqc.resources.stdlib_dir() / "lstm.seq"))
    data = json.loads(result.stdout)
    assert data["model"] == "lstm"
    assert data["states"]["c"]["kind"] == "sequential"
    assert data["states"]["c"]["reason"]["line"] == 16
    assert data["states"]["c"]["reason"]["message"] == "the decay depends on the state `h`"
    assert data["states"]["c"]["group"] == ["h", "c"]


def test_check_prints_verdict_in_words():
    result = _seqc("check", str(seqc.resources.stdlib_dir() / "gla.seq"))
    assert result.returncode == 0
    assert "`S`: chunk" in result.stdout and "key-wise decay `exp(g)`" in result.stdout


# ---- the Plan drives a backend --------------------------------------------------------------------

def _draw(torch, tensor: ir.Tensor, lead: tuple[int, ...], sizes: dict[str, int]):
    shape = lead + tuple(sizes[d] for d in tensor.dims)
    low, high = (-1.0, 1.0) if tensor.range is None else \
        (max(tensor.range.low, -2.0), min(tensor.range.high, 2.0))
    if tensor.range is not None and tensor.range.low >= 0:
        low = max(low, 0.05)
        high = 0.95 if tensor.range.high <= 1 else high
    return torch.empty(shape, dtype=torch.float64).uniform_(low, high)


@pytest.mark.parametrize("name", stdlib_names())
def test_plan_through_torch_backend_matches_reference(name):
    """The analysis' Plan, emitted by the torch backend, reproduces the step loop (fp64)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    program = seqc.load(name)
    spec = program.spec
    sizes = {d.name: 4 for d in spec.dims}
    args = {t.name: _draw(torch, t, (2, 37, 2), sizes) for t in spec.inputs}
    args.update({t.name: _draw(torch, t, (2,), sizes) for t in spec.params})
    if "delta" in name:
        args.update({n: torch.nn.functional.normalize(v, dim=-1) for n, v in args.items()
                     if n.startswith("k")})
    reference = program.kernel("reference")(**args, output_final_state=True)
    parallel = program.kernel("torch")(**args, output_final_state=True)
    for output in spec.outputs:
        torch.testing.assert_close(getattr(parallel, output.name), getattr(reference, output.name),
                                   rtol=1e-9, atol=1e-9)
    for state, value in reference.final_state.items():
        torch.testing.assert_close(parallel.final_state[state], value, rtol=1e-9, atol=1e-9)


# ---- refusal notes that name the real cause (issue 13 item 7) -------------------------------------

DELTA_HEADER = ("model d\ndims K, V\ninput q[K], k[K], v[V], x[K], w[V], beta in (0, 1), "
                "g in (-inf, 0)\nstate S[K, V] = 0\n")


@pytest.mark.parametrize("body, where, words", [
    # a delta rule read along the value dim: the read is the cause, not the transition
    ("S = S + beta * k * (v - k @ S)\noutput o = S @ w\n", (6, 16),
     "an output reads `S` as `S @ w`, contracting its value dim `V`"),
    ("S = S + beta * k * (v - k @ S)\noutput o = S\n", (6, 12), "an output reads `S` itself"),
    # a value-side step after a decay, read on the key side: the read is the cause (the
    # value-side rule itself has a form, tests/test_value_side.py)
    ("S = exp(g) * S\nS = S + beta * (x - S @ w) * w\noutput o = q @ S\n", (7, 12),
     "a value-side delta rule (its steps read `S @ k`) is read as `S @ q`"),
])
def test_refusal_notes_name_the_real_cause(body, where, words):
    reason = seqc.compile(DELTA_HEADER + body, "d.seq").analysis.proof("S").reason
    assert (reason.span.line, reason.span.col) == where
    assert words in reason.message
