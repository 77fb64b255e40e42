"""States in stages (docs/analysis.md rule 6): a group whose reads take another group's per-step
values into their queries (a normaliser scaling the query of a matrix state) runs after it, in its
own parallel form; torch and Triton against the reference and the equations written out (fp64),
gradients through Triton, a cycle of stages refused with a located note."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from seqc.inputs import random_call  # noqa: E402

NORMALISED_QUERY = """model normq
dims K, V
input q[K], k[K], v[V], g in (-inf, 0)
state S[K, V] = 0
state n[K] = 0
S = exp(g) * S + k * v
n = exp(g) * n + k
output o = (q / (1 + abs(n))) @ S
"""
# the output above n's update reads n_{t-1}
PREVIOUS_NORMALISER = NORMALISED_QUERY.replace(
    "n = exp(g) * n + k\noutput o = (q / (1 + abs(n))) @ S\n",
    "output o = (q / (1 + abs(n))) @ S\nn = exp(g) * n + k\n")


def normalised_query_equations(q, k, v, g, S, n, previous=False):
    """S_t = exp(g_t) S_{t-1} + k_t v_t^T, n_t = exp(g_t) n_{t-1} + k_t,
    o_t = (q_t / (1 + |n|))^T S_t with n = n_t (or n_{t-1}), per step (fp64)."""
    outputs = []
    for t in range(q.shape[1]):
        decay = torch.exp(g[:, t])[..., None]
        S = decay[..., None] * S + k[:, t, ..., :, None] * v[:, t, ..., None, :]
        before = n
        n = decay * n + k[:, t]
        scale = 1 + (before if previous else n).abs()
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] / scale, S))
    return torch.stack(outputs, 1), S, n


def test_a_normaliser_scaling_the_query_is_an_earlier_stage():
    analysis = seqc.compile(NORMALISED_QUERY, "normq.seq").analysis
    assert [(p.states, p.kind) for p in analysis.proofs] == [(("n",), "scan"), (("S",), "chunk")]
    assert analysis.proofs[1].decomposition["upstream"] == ("n",)
    normaliser, matrix = analysis.plan.reads
    assert normaliser.state == "n" and normaliser.query is None
    assert seqc.pretty.expr(matrix.query) == f"q / (1 + abs({normaliser.name}))"
    assert "a later stage: it takes the per-step values of `n`" in analysis.describe()


@pytest.mark.parametrize("source,previous", [(NORMALISED_QUERY, False),
                                             (PREVIOUS_NORMALISER, True)])
@pytest.mark.parametrize("backend,options", [("torch", {"chunk_size": 4}),
                                             ("triton", {"chunk_size": 16})])
def test_stages_match_the_equations_fp64(source, previous, backend, options):
    def equations(t, initial):
        return normalised_query_equations(t["q"], t["k"], t["v"], t["g"], initial["S"],
                                          initial["n"], previous)
    matches_the_equations(source, backend, options, equations, ("S", "n"))


def matches_the_equations(source, backend, options, equations, states):
    """The kernel on random fp64 tensors (second-moment-like states taken nonnegative) against
    `equations(tensors, initial) -> (o, *final states)`, at 1e-10."""
    program = seqc.compile(source, "staged.seq")
    sizes = {"B": 2, "T": 21, "H": 2, "K": 4, "V": 5}
    tensors, initial = random_call(program.spec, sizes, torch.float64, seed=13,
                                   with_initial_state=True)
    initial = {name: state.to(torch.float64).abs() for name, state in initial.items()}
    want_o, *want_states = equations(tensors, initial)
    got = program.kernel(backend, **options)(**tensors, initial_state=initial,
                                             output_final_state=True)
    torch.testing.assert_close(got["o"], want_o, rtol=1e-10, atol=1e-10)
    for name, want in zip(states, want_states):
        torch.testing.assert_close(got.final_state[name], want, rtol=1e-10, atol=1e-10)


def test_a_cycle_of_stages_is_refused_where_it_closes():
    source = ("model cyc\ndims K, V\ninput q[K], k[K], v[V], w[V]\nstate S[K, V] = 0\n"
              "state P[K, V] = 0\nS = S + k * v\nP = P + q * v\n"
              "output o = (q * (P @ w)) @ S\noutput p = (k * (S @ w)) @ P\n")
    analysis = seqc.compile(source, "cyc.seq").analysis
    reason = analysis.proof("S").reason
    assert analysis.kind("S") == analysis.kind("P") == "sequential"
    assert (reason.span.line, reason.span.col) == (8, 13)
    assert "no order of stages" in reason.message


PRECONDITIONED_KEY = """model precond
dims K, V
input q[K], k[K], v[V], x[K], beta in (0, 1), a[K] in (0, 1)
state P[K] = 0
state S[K, V] = 0
P = a * P + (1 - a) * x * x
let kp = l2norm(k * rsqrt(P + 1), K)
S = S + beta * kp * (v - kp @ S)
output o = q @ S
"""
# a state whose decay is another's previous value (the update above the other's)
UPSTREAM_DECAY = """model decayup
dims K, V
input q[K], k[K], v[V], x[K]
state S[K, V] = 0
state n[K] = 0
S = exp(-softplus(n)) * S + k * v
n = 0.5 * n + x
output o = q @ S
"""


def preconditioned_key_equations(q, k, v, x, beta, a, P, S):
    """P_t = a_t P_{t-1} + (1 - a_t) x_t^2,  kp_t = l2norm(k_t / sqrt(P_t + 1)),
    S_t = S_{t-1} + beta_t kp_t (v_t - kp_t^T S_{t-1}),  o_t = S_t^T q_t (fp64)."""
    outputs = []
    for t in range(q.shape[1]):
        P = a[:, t] * P + (1 - a[:, t]) * x[:, t] ** 2
        kp = torch.nn.functional.normalize(k[:, t] / torch.sqrt(P + 1), dim=-1)
        error = v[:, t] - torch.einsum("bhk,bhkv->bhv", kp, S)
        S = S + beta[:, t, :, None, None] * kp[..., None] * error[..., None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outputs, 1), S, P


def test_a_preconditioner_forming_a_delta_rules_key_is_an_earlier_stage():
    analysis = seqc.compile(PRECONDITIONED_KEY, "precond.seq").analysis
    assert [(p.states, p.kind) for p in analysis.proofs] == [(("P",), "scan"),
                                                             (("S",), "chunk_delta")]
    [step] = analysis.plan.groups[1].steps
    [read] = [r for r in analysis.plan.reads if r.state == "P"]
    assert not read.previous
    assert seqc.pretty.expr(step.key) == f"l2norm(k * rsqrt({read.name} + 1), K)"
    assert "a later stage: it takes the per-step values of `P`" in analysis.describe()


@pytest.mark.parametrize("backend,options", [("torch", {"chunk_size": 4}),
                                             ("triton", {"chunk_size": 16}),
                                             ("triton", {"mode": "fused_recurrent"})])
def test_preconditioned_key_matches_the_equations_fp64(backend, options):
    def equations(t, initial):
        return preconditioned_key_equations(*(t[n] for n in ("q", "k", "v", "x", "beta", "a")),
                                            initial["P"], initial["S"])
    matches_the_equations(PRECONDITIONED_KEY, backend, options, equations, ("S", "P"))


@pytest.mark.parametrize("source", [NORMALISED_QUERY, PREVIOUS_NORMALISER, PRECONDITIONED_KEY,
                                    UPSTREAM_DECAY])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_update_stages_agree_with_the_reference_with_gradients(source, backend):
    """fp64 outputs, final states and gradients against the reference's autograd."""
    program = seqc.compile(source, "staged.seq")
    assert all(p.kind != "sequential" for p in program.analysis.proofs)
    sizes = {"B": 1, "T": 19, "H": 2, "K": 3, "V": 4}
    tensors, initial = random_call(program.spec, sizes, torch.float64, seed=17,
                                   with_initial_state=True)
    results = {}
    for name, options in (("reference", {}), (backend, {"chunk_size": 16})):
        leaves = {n: t.clone().requires_grad_() for n, t in tensors.items()}
        states = {n: s.to(torch.float64).abs().requires_grad_() for n, s in initial.items()}
        out = program.kernel(name, **options)(**leaves, initial_state=states,
                                              output_final_state=True)
        weights = torch.linspace(-1, 1, out["o"].numel(), dtype=torch.float64)
        loss = (out["o"] * weights.reshape(out["o"].shape)).sum() \
            + sum(s.square().sum() for s in out.final_state.values())
        loss.backward()
        results[name] = {"o": out["o"].detach(), **{n: t.grad for n, t in leaves.items()},
                         **{f"init {n}": s.grad for n, s in states.items()}}
    for name, want in results["reference"].items():
        torch.testing.assert_close(results[backend][name], want, rtol=1e-9, atol=1e-9,
                                   msg=lambda m: f"{name}: {m}")


def test_a_later_stage_reading_a_matrix_state_whole_is_refused_there():
    source = ("model whole\ndims K, V\ninput k[K], v[V]\nstate S[K, V] = 0\nstate h[V] = 0\n"
              "S = S + k * v\nh = 0.5 * h + sum(S, K)\noutput o = h\n")
    analysis = seqc.compile(source, "whole.seq").analysis
    assert analysis.kind("S") == "chunk" and analysis.kind("h") == "sequential"
    reason = analysis.proof("h").reason
    assert (reason.span.line, reason.span.col) == (7, 19)
    assert "reads the chunk state `S` as a whole" in reason.message


def test_a_cycle_through_an_update_and_a_query_is_refused_at_both():
    """`n` reads `S` (split from it: no form covers the pair), and the query of `S`'s read
    reads `n`'s previous value: no order (conservative: S is scanned whole here, so its read could
    follow both); each group gets a located note, no exception."""
    source = ("model cyc2\ndims K, V\ninput q[K], k[K], v[V], w[V]\nstate S[K, V] = 0\n"
              "state n[K] = 0\nS = S + k * v\noutput o = (q * n) @ S\n"
              "n = 0.5 * n + S @ w\n")
    analysis = seqc.compile(source, "cyc2.seq").analysis
    assert analysis.kind("S") == analysis.kind("n") == "sequential"
    assert (analysis.proof("S").reason.span.line, analysis.proof("n").reason.span.line) == (7, 8)
    assert all("no order of stages" in analysis.proof(s).reason.message for s in "Sn")
