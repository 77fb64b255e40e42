"""Outputs that read the previous state (docs/analysis.md rule 5): RWKV-6's current-token bonus
`output o = r @ (S + u * k * v)` above `S = exp(w) * S + k * v` keeps the chunk form, and an
output above any state's first update keeps that state's kind; torch and Triton against the
paper's equations and the reference step loop (fp64), gradients through Triton."""
import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import seqc  # noqa: E402
from seqc.resources import stdlib_dir  # noqa: E402


def rwkv6_equations(r, k, v, w, u, S, scale):
    """Eagle and Finch (Peng et al. 2024), the WKV with bonus, written out per step (fp64):
    o_t = (scale r_t)^T (S_{t-1} + diag(u) k_t v_t^T),  S_t = diag(exp w_t) S_{t-1} + k_t v_t^T."""
    outputs = []
    for t in range(r.shape[1]):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]                   # [B, H, K, V]
        read = S + u[None, :, :, None] * kv
        outputs.append(torch.einsum("bhk,bhkv->bhv", scale * r[:, t], read))
        S = torch.exp(w[:, t])[..., None] * S + kv
    return torch.stack(outputs, 1), S


def rwkv6_call(T, B=2, H=2, K=8, V=12, seed=0, resets=False):
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)
    tensors = {"r": draw(B, T, H, K), "k": draw(B, T, H, K), "v": draw(B, T, H, V),
               "w": F.logsigmoid(draw(B, T, H, K) + 1.0), "u": draw(H, K)}
    if resets:                          # hard resets: the log decay -inf at some steps
        tensors["w"][:, ::5, 0] = -math.inf
    return tensors, 0.5 * draw(B, H, K, V)


def test_rwkv6_is_chunk_with_a_read_of_the_previous_state():
    analysis = seqc.load("rwkv6").analysis
    proof = analysis.proof("S")
    assert proof.kind == "chunk"
    [read] = analysis.plan.reads
    assert read.previous and seqc.pretty.expr(read.query) == "scale * r"
    assert seqc.pretty.expr(analysis.plan.outputs["o"]) == f"{read.name} + scale * r @ (u * k * v)"
    assert any("is the read of step t-1 by the query of step t" in fact for fact in proof.facts)
    assert "reading it before the step's update" in analysis.describe()


def test_a_read_between_two_updates_is_still_refused_with_help():
    source = ("model s\ndims D\ninput x[D]\nstate h[D] = 0\nh = h + x\noutput o = h\n"
              "h = 2 * h\n")
    reason = seqc.compile(source, "s.seq").analysis.proof("h").reason
    assert reason.span.line == 6 and "before its first update" in reason.help


@pytest.mark.parametrize("backend,options", [
    ("torch", {"chunk_size": 8}),
    ("triton", {"chunk_size": 16}),
    ("triton", {"mode": "fused_recurrent"}),
])
@pytest.mark.parametrize("resets", [False, True])
def test_rwkv6_matches_the_papers_equations_fp64(backend, options, resets):
    tensors, S0 = rwkv6_call(37, resets=resets)
    want_o, want_S = rwkv6_equations(tensors["r"], tensors["k"], tensors["v"], tensors["w"],
                                     tensors["u"], S0, 8 ** -0.5)
    got = seqc.load("rwkv6").kernel(backend, **options)(**tensors, initial_state={"S": S0},
                                                         output_final_state=True)
    torch.testing.assert_close(got["o"], want_o, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.final_state["S"], want_S, rtol=1e-10, atol=1e-10)


def test_rwkv6_torch_across_slabs_of_time():
    """The torch module runs time in slabs of ~1024 steps: each slab's first read is of the
    state entering it."""
    tensors, S0 = rwkv6_call(1100, B=1, H=1, K=2, V=2, seed=3)
    want_o, want_S = rwkv6_equations(tensors["r"], tensors["k"], tensors["v"], tensors["w"],
                                     tensors["u"], S0, 2 ** -0.5)
    got = seqc.load("rwkv6").kernel("torch")(**tensors, initial_state={"S": S0},
                                            output_final_state=True)
    torch.testing.assert_close(got["o"], want_o, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.final_state["S"], want_S, rtol=1e-10, atol=1e-10)


def test_rwkv6_gradients_through_triton_match_the_reference():
    """Training goes through the Triton chunk core (the shifted query is an ordinary query)."""
    tensors, S0 = rwkv6_call(21, B=1, K=4, V=4, seed=5)
    program = seqc.load("rwkv6")
    grads = {}
    for backend, options in (("reference", {}), ("triton", {"chunk_size": 16})):
        leaves = {n: t.clone().requires_grad_() for n, t in {**tensors, "S0": S0}.items()}
        state = {"S": leaves.pop("S0")}
        out = program.kernel(backend, **options)(**leaves, initial_state=state,
                                                 output_final_state=True)
        loss = (out["o"] * torch.linspace(-1, 1, out["o"].numel(), dtype=torch.float64)
                .reshape(out["o"].shape)).sum() + out.final_state["S"].square().sum()
        loss.backward()
        grads[backend] = {**{n: t.grad for n, t in leaves.items()}, "S0": state["S"].grad}
    assert program.kernel("triton").module.CORES, "rwkv6 trains through the chunk core"
    for name, want in grads["reference"].items():
        torch.testing.assert_close(grads["triton"][name], want, rtol=1e-9, atol=1e-9,
                                   msg=lambda m: f"gradient of {name}: {m}")


def early(name: str) -> str:
    """The stdlib spec `name` with its outputs moved above the first state update."""
    lines = (stdlib_dir() / f"{name}.seq").read_text().splitlines()
    states = {line.split()[1].split("[")[0] for line in lines if line.startswith("state ")}
    outputs = [line for line in lines if line.startswith("output ")]
    rest = [line for line in lines if not line.startswith("output ")]
    first = next(i for i, line in enumerate(rest) if line.split(" ")[0] in states
                 and line.split(" ")[1:2] == ["="])
    return "\n".join(rest[:first] + outputs + rest[first:]) + "\n"


# every kind reads its previous state: chunk (scalar, key-wise, no decay), chunk_delta (one and two
# delta steps), diagonal plus low rank, elementwise scan, semiring, and mlstm's two groups
EARLY = ["simple_gla", "gla", "linear_attn", "gated_deltanet", "deltaproduct", "rwkv7", "hgrn",
         "maxplus", "mlstm"]


@pytest.mark.parametrize("name", EARLY)
def test_every_kind_keeps_its_form_reading_the_previous_state(name):
    source = early(name)
    program = seqc.compile(source, f"{name}_early.seq")
    original = seqc.load(name).analysis
    assert [p.kind for p in program.analysis.proofs] == [p.kind for p in original.proofs]
    assert all(r.previous for r in program.analysis.plan.reads)


@pytest.mark.parametrize("name", EARLY)
@pytest.mark.parametrize("backend,options", [("torch", {"chunk_size": 4}),
                                             ("triton", {"chunk_size": 16})])
def test_previous_reads_agree_with_the_reference_fp64(name, backend, options):
    from seqc.inputs import random_call
    program = seqc.compile(early(name), f"{name}_early.seq")
    sizes = {"B": 1, "T": 19, "H": 2, **{d.name: 3 + i for i, d in enumerate(program.spec.dims)}}
    tensors, initial = random_call(program.spec, sizes, torch.float64, seed=7,
                                   with_initial_state=True)
    initial = {n: s.to(torch.float64) for n, s in initial.items()}
    want = program.kernel("reference")(**tensors, initial_state=initial, output_final_state=True)
    got = program.kernel(backend, **options)(**tensors, initial_state=initial,
                                             output_final_state=True)
    for n in want.keys():
        torch.testing.assert_close(got[n], want[n], rtol=1e-9, atol=1e-9)
    for n, state in want.final_state.items():
        torch.testing.assert_close(got.final_state[n], state, rtol=1e-9, atol=1e-9)
