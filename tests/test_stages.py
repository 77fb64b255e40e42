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
    assert "a later stage: its queries take the per-step values of `n`" in analysis.describe()


@pytest.mark.parametrize("source,previous", [(NORMALISED_QUERY, False),
                                             (PREVIOUS_NORMALISER, True)])
@pytest.mark.parametrize("backend,options", [("torch", {"chunk_size": 4}),
                                             ("triton", {"chunk_size": 16})])
def test_stages_match_the_equations_fp64(source, previous, backend, options):
    program = seqc.compile(source, "normq.seq")
    sizes = {"B": 2, "T": 23, "H": 2, "K": 4, "V": 5}
    tensors, initial = random_call(program.spec, sizes, torch.float64, seed=11,
                                   with_initial_state=True)
    initial = {name: state.to(torch.float64) for name, state in initial.items()}
    want_o, want_S, want_n = normalised_query_equations(
        tensors["q"], tensors["k"], tensors["v"], tensors["g"], initial["S"], initial["n"],
        previous)
    got = program.kernel(backend, **options)(**tensors, initial_state=initial,
                                             output_final_state=True)
    torch.testing.assert_close(got["o"], want_o, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.final_state["S"], want_S, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.final_state["n"], want_n, rtol=1e-10, atol=1e-10)


def test_stage_gradients_through_triton_match_the_reference():
    program = seqc.compile(NORMALISED_QUERY, "normq.seq")
    sizes = {"B": 1, "T": 19, "H": 2, "K": 3, "V": 4}
    tensors, initial = random_call(program.spec, sizes, torch.float64, seed=5,
                                   with_initial_state=True)
    grads = {}
    for backend, options in (("reference", {}), ("triton", {"chunk_size": 16})):
        leaves = {n: t.clone().requires_grad_() for n, t in tensors.items()}
        states = {n: s.to(torch.float64).requires_grad_() for n, s in initial.items()}
        out = program.kernel(backend, **options)(**leaves, initial_state=states,
                                                 output_final_state=True)
        weights = torch.linspace(-1, 1, out["o"].numel(), dtype=torch.float64)
        loss = (out["o"] * weights.reshape(out["o"].shape)).sum() \
            + sum(s.square().sum() for s in out.final_state.values())
        loss.backward()
        grads[backend] = {**{n: t.grad for n, t in leaves.items()},
                          **{f"init {n}": s.grad for n, s in states.items()}}
    for name, want in grads["reference"].items():
        torch.testing.assert_close(grads["triton"][name], want, rtol=1e-9, atol=1e-9,
                                   msg=lambda m: f"gradient of {name}: {m}")


def test_a_cycle_of_stages_is_refused_where_it_closes():
    source = ("model cyc\ndims K, V\ninput q[K], k[K], v[V], w[V]\nstate S[K, V] = 0\n"
              "state P[K, V] = 0\nS = S + k * v\nP = P + q * v\n"
              "output o = (q * (P @ w)) @ S\noutput p = (k * (S @ w)) @ P\n")
    analysis = seqc.compile(source, "cyc.seq").analysis
    reason = analysis.proof("S").reason
    assert analysis.kind("S") == analysis.kind("P") == "sequential"
    assert (reason.span.line, reason.span.col) == (8, 13)
    assert "no order of stages" in reason.message
