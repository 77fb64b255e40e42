"""The delta rule with its erase key apart from its write key (issues 10/11): a step
S + beta w (v - p @ S), the transition I - beta w p^T (Comba's, without its decay here), proven
`chunk_delta` with `DeltaStep.write_key` (docs/analysis.md, rule 5) and run by every delta-rule
family: the torch chunkwise form and its adjoint, the Triton single kernel, `chunk_delta_parallel`
and its training core, the fused recurrent kernel.

Independent truth: the recurrences written out here in plain PyTorch, never through seqc's roles
(the key side, S[K, V] read `q @ S`; the value side, W[V, K] read `W @ q`; a key-wise decay, kda
with a second key). Reference and torch in fp64 (1e-9), Triton under the interpreter in fp32
(1e-4), tiny shapes; gradients against the reference's autograd.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import functools  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import seqc  # noqa: E402
from seqc import plan  # noqa: E402
from seqc.analysis.proof import COMBINES  # noqa: E402
from seqc.inputs import random_call  # noqa: E402
from test_analysis_props import summary_applied, tree_reduce  # noqa: E402
from test_gradients import GRAD_RTOL, gradients_of  # noqa: E402

SIZES = {"B": 1, "T": 21, "H": 2, "K": 5, "V": 3}

# key side, no decay: the write key k, the erase key p
TWO_KEYS = """model two_keys
dims K, V
input q[K], k[K], v[V], p[K]
input beta in (0, 1)
{decl}state S[K, V] = 0
{decay}S = S + beta * k * (v - p @ S)
output o = q @ S
"""
# value side: W[V, K], the step reads `W @ p` and writes along k
TWO_KEYS_WX = """model two_keys_wx
dims K, V
input q[K], k[K], v[V], p[K]
input beta in (0, 1)
{decl}state W[V, K] = 0
{decay}W = W + beta * (v - W @ p) * k
output o = W @ q
"""
DECAYS = {"none": ("", ""), "keywise": ("input g[K] in (-inf, 0)\n", "{s} = exp(g) * {s}\n")}


def source(template: str, decay: str = "none") -> str:
    decl, update = DECAYS[decay]
    state = "S" if "S[K, V]" in template else "W"
    return template.format(decl=decl, decay=update.format(s=state))


@functools.lru_cache(maxsize=None)
def program(text: str):
    return seqc.compile(text, "two_keys.seq")


def by_hand(x: dict, state: torch.Tensor, value_side: bool) -> dict:
    """S_t = diag(exp g_t) S_{t-1}; S_t = S_t + beta_t k_t (v_t - p_t^T S_t)^T; o_t = S_t^T q_t,
    S [B, H, K, V] (the value side: W = S^T [B, H, V, K], computed in its own orientation)."""
    outputs = []
    S = state
    for t in range(x["q"].shape[1]):
        q, k, v, p, beta = (x[n][:, t] for n in ("q", "k", "v", "p", "beta"))
        if value_side:
            if "g" in x:
                S = S * torch.exp(x["g"][:, t])[..., None, :]
            error = v - torch.einsum("bhvk,bhk->bhv", S, p)
            S = S + beta[..., None, None] * error[..., :, None] * k[..., None, :]
            outputs.append(torch.einsum("bhvk,bhk->bhv", S, q))
        else:
            if "g" in x:
                S = S * torch.exp(x["g"][:, t])[..., :, None]
            error = v - torch.einsum("bhk,bhkv->bhv", p, S)
            S = S + beta[..., None, None] * k[..., :, None] * error[..., None, :]
            outputs.append(torch.einsum("bhk,bhkv->bhv", q, S))
    return {"o": torch.stack(outputs, 1), "S": S}


def call(text: str, dtype=torch.float64, seed=0):
    tensors, initial = random_call(program(text).spec, SIZES, dtype, seed=seed,
                                   with_initial_state=True)
    for n in ("k", "p"):
        tensors[n] = F.normalize(tensors[n], dim=-1)
    return tensors, {n: s.to(dtype) for n, s in initial.items()}


def check(text: str, kernel, dtype, tol):
    tensors, initial = call(text, dtype)
    value_side = "W @ p" in text
    state = "W" if value_side else "S"
    want = by_hand({n: t.double() for n, t in tensors.items()}, initial[state].double(),
                   value_side)
    got = kernel(**tensors, initial_state=initial, output_final_state=True)
    torch.testing.assert_close(got.o.double(), want["o"], rtol=tol, atol=tol)
    torch.testing.assert_close(got.final_state[state].double(), want["S"], rtol=tol, atol=tol)


# ---- the analysis -------------------------------------------------------------------------------

@pytest.mark.parametrize("template", [TWO_KEYS, TWO_KEYS_WX])
def test_two_keys_prove_the_delta_rule_with_a_write_key(template):
    proof = program(source(template)).analysis.proof("W" if "W[V, K]" in template else "S")
    assert proof.kind == "chunk_delta" and isinstance(proof.group, plan.DeltaGroup), proof.reason
    (step,) = proof.group.steps
    text = seqc.pretty.expr
    assert (text(step.key), text(step.write_key), text(step.beta), text(step.value)) \
        == ("p", "k", "beta", "v")
    assert proof.decomposition["low_rank"] == ("beta * k p^T",)
    assert any("(I - beta k p^T)" in fact for fact in proof.facts)
    assert proof.decomposition["transposed"] == (template is TWO_KEYS_WX)


def test_one_key_keeps_no_write_key():
    """The delta rule proper (the write key is the erase key): `write_key` None, the facts say
    I - beta k k^T."""
    proof = seqc.load("gated_deltanet").analysis.proof("S")
    assert [s.write_key for s in proof.group.steps] == [None]
    assert any("(I - beta k k^T)" in fact for fact in proof.facts)


def test_a_key_wise_beta_joins_the_write_key():
    """beta over the key dim: the erase weight beta * k is a write key of its own, the step's
    beta 1 (the delta form takes it; a decay inside the update still goes to chunk_dplr)."""
    text = source(TWO_KEYS).replace("input beta in (0, 1)", "input beta[K] in (0, 1)")
    proof = program(text).analysis.proof("S")
    assert proof.kind == "chunk_delta" and isinstance(proof.group, plan.DeltaGroup)
    (step,) = proof.group.steps
    assert seqc.pretty.expr(step.key) == "p" and seqc.pretty.expr(step.beta) == "1"
    assert set(seqc.pretty.expr(step.write_key).split(" * ")) == {"beta", "k"}


def test_comba_is_a_two_key_delta_rule():
    proof = seqc.load("comba").analysis.proof("S")
    assert proof.kind == "chunk_delta" and isinstance(proof.group, plan.DeltaGroup)
    (step,) = proof.group.steps
    assert (seqc.pretty.expr(step.key), seqc.pretty.expr(step.write_key)) == ("p", "k")
    assert seqc.pretty.expr(proof.group.log_decay) == "g"
    assert any("(I - beta k p^T)" in fact for fact in proof.facts)
    assert "erase and write keys swapped" in proof.adjoint.transition


def test_the_combine_of_comba_steps_is_the_step_loop():
    """COMBINES["chunk_delta"] over comba's per-step elements (exp(g) (I - beta k p^T),
    beta k v^T), reduced in a random tree, equals the step loop written from the spec."""
    combine = COMBINES[seqc.load("comba").analysis.proof("S").combine.name]
    rng = np.random.default_rng(0)
    K, V, T = 4, 3, 9
    state = rng.normal(size=(K, V))
    elements, looped = [], state
    for _ in range(T):
        k, p, v = rng.normal(size=K), rng.normal(size=K), rng.normal(size=V)
        k, p = k / np.linalg.norm(k), p / np.linalg.norm(p)
        g, beta = -rng.uniform(0, 1), rng.uniform()
        looped = np.exp(g) * looped
        looped = looped + beta * np.outer(k, v - p @ looped)
        elements.append((np.exp(g) * (np.eye(K) - beta * np.outer(k, p)), beta * np.outer(k, v)))
    summary = tree_reduce(combine, elements, rng)
    np.testing.assert_allclose(summary_applied(combine, summary, state), looped, rtol=1e-10,
                               atol=1e-10)


# ---- the backends -------------------------------------------------------------------------------

@pytest.mark.parametrize("template", [TWO_KEYS, TWO_KEYS_WX])
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_two_keys_match_the_equations(template, backend):
    text = source(template)
    check(text, program(text).kernel(backend, **({"chunk_size": 4} if backend == "torch" else {})),
          torch.float64, 1e-9)
    if backend == "torch":
        assert "cores['chunk_delta']" in program(text).emit("torch")


@pytest.mark.triton
@pytest.mark.parametrize("template,decay,mode", [
    (TWO_KEYS, "none", "chunk_delta"), (TWO_KEYS, "none", "chunk_delta_parallel"),
    (TWO_KEYS, "none", "fused_recurrent"), (TWO_KEYS_WX, "none", "chunk_delta"),
    (TWO_KEYS, "keywise", "chunk_delta"), (TWO_KEYS, "keywise", "chunk_delta_parallel")])
def test_two_keys_through_the_triton_modes(template, decay, mode):
    """Every Triton mode of a two-key delta rule; a key-wise decay (kda with a second key) in the
    single kernel's and the per-chunk kernel's key-wise scores (erase keys against write keys)."""
    text = source(template, decay)
    kernel = program(text).kernel("triton", chunk_size=16, mode=mode, precision="ieee")
    assert mode in kernel.module.MODES
    check(text, kernel, torch.float32, 1e-4)


@pytest.mark.parametrize("template,backend", [(TWO_KEYS, "torch"), (TWO_KEYS_WX, "torch"),
                                              pytest.param(TWO_KEYS, "triton",
                                                           marks=pytest.mark.triton),
                                              pytest.param(TWO_KEYS_WX, "triton",
                                                           marks=pytest.mark.triton)])
def test_two_key_gradients_match_the_reference(template, backend):
    """Through the torch chunk_delta adjoint (fp64) and the Triton training cores (fp32): the
    erase key's and the write key's gradients apart."""
    text = source(template)
    dtype = torch.float64 if backend == "torch" else torch.float32
    tensors, initial = call(text, dtype, seed=5)
    inputs = {t.name for t in program(text).spec.inputs}
    x = {n: v for n, v in tensors.items() if n in inputs}
    p = {n: v for n, v in tensors.items() if n not in inputs}
    got = gradients_of(program(text).kernel(backend, chunk_size=8), x, p, initial)
    want = gradients_of(program(text).kernel("reference"), x, p, initial)
    assert set(got) == set(want)
    for n, g in want.items():
        scale = max(1.0, g.abs().max().item())
        torch.testing.assert_close(got[n].to(g.dtype), g, rtol=GRAD_RTOL, atol=GRAD_RTOL * scale,
                                   msg=lambda m: f"{backend}: gradient of {n}: {m}")


@pytest.mark.triton
def test_comba_against_fla_naive_recurrent_comba_in_every_triton_mode():
    """comba's Triton modes (chunk_delta, chunk_delta_parallel, fused_recurrent) against fla's
    naive_recurrent_comba (tests/oracles.py, never through seqc), forward and final state; the
    gradients of a training call (mode=None: the chunk_delta_parallel core) against autograd
    through the same oracle. fp32 under the interpreter, 1e-4 of the magnitude."""
    from oracles import ORACLES, random_inputs, random_state
    dims = {"K": 5, "V": 7}
    x, p = random_inputs("comba", 1, 21, 2, dims=dims, seed=4)
    s = random_state("comba", 1, 2, dims=dims, seed=4)
    want_out, want_final = ORACLES["comba"](x, p, s)
    module = seqc.load("comba").kernel("triton").module
    assert module.MODES == ("fused_recurrent", "chunk_delta_parallel", "chunk_delta")
    for mode in module.MODES:
        got = seqc.load("comba").kernel("triton", mode=mode, chunk_size=8, precision="ieee")(
            **x, **p, initial_state=s, output_final_state=True)
        for what, a, b in (("o", got.o, want_out["o"]), ("S", got.final_state["S"],
                                                        want_final["S"])):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()),
                                       msg=lambda m: f"{mode} {what}: {m}")

    def oracle(**kw):
        state = kw.pop("initial_state")
        kw.pop("output_final_state")
        out, final = ORACLES["comba"](kw, {}, state)

        class Out(dict):
            final_state = final
        return Out(out)
    got = gradients_of(seqc.load("comba").kernel("triton", chunk_size=8, precision="ieee"),
                       x, p, s)
    want = gradients_of(oracle, x, p, s)
    for n, g in want.items():
        torch.testing.assert_close(got[n], g, rtol=GRAD_RTOL,
                                   atol=GRAD_RTOL * max(1.0, g.abs().max().item()),
                                   msg=lambda m: f"gradient of {n}: {m}")
