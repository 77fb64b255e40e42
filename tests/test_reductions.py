"""Issue 13 item 4: reductions over a dim (`max min logsumexp softmax mean`) on every backend,
against the same step computed directly in torch here (not by seqc).

Each case is a gated linear-attention spec whose decay `d`, key `kk` or value `vv` uses the
feature; `truth` runs S_t = exp(d_t) S_{t-1} + kk_t vv_t^T, o_t = q_t @ S_t with the feature
written as torch calls. Reductions over input-only dims keep the chunk verdict; over a state dim
they make the update nonlinear (sequential, with a note naming the reduction). Tiny shapes: the
Triton kernels run under the interpreter. The tests of the head index and of relabels reuse the
harness.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import seqc  # noqa: E402
from seqc.errors import SpecError  # noqa: E402
from test_check_errors import expect, run_check  # noqa: E402
from test_gradients import GRAD_RTOL  # noqa: E402

TEMPLATE = """model feature
dims K, V, N
input q[K], k[K], v[V], x[N]
state S[K, V] = 0
let d = {d}
let kk = {kk}
let vv = {vv}
S = exp(d) * S + kk * vv
output o = q @ S
"""
SIZES = {"B": 2, "T": 7, "H": 3, "K": 4, "V": 4, "N": 3}


# name -> spec expressions (d, kk, vv) and the same in torch over [B, T, H, ...] tensors
CASES = {
    "max": (("-softplus(max(x, N))", "k", "v"),
            lambda q, k, v, x: (-F.softplus(x.amax(-1)), k, v)),
    "min": (("-softplus(min(x, N))", "k", "v"),
            lambda q, k, v, x: (-F.softplus(x.amin(-1)), k, v)),
    "logsumexp": (("-softplus(logsumexp(x, N))", "k", "v"),
                  lambda q, k, v, x: (-F.softplus(torch.logsumexp(x, -1)), k, v)),
    "mean": (("-softplus(mean(x, N))", "k", "v"),
             lambda q, k, v, x: (-F.softplus(x.mean(-1)), k, v)),
    "softmax over slots": (("-softplus(sum(softmax(x, N) * x, N))", "k", "v"),
                           lambda q, k, v, x: (-F.softplus((torch.softmax(x, -1) * x).sum(-1)),
                                               k, v)),
    "reductions of the key dim in the key": (
        ("-1", "softmax(k, K) + mean(k, K) - 0.5 * max(k, K) + 0.25 * min(k, K)", "v"),
        lambda q, k, v, x: (-torch.ones(k.shape[:3], dtype=k.dtype),
                            torch.softmax(k, -1) + k.mean(-1, keepdim=True)
                            - 0.5 * k.amax(-1, keepdim=True) + 0.25 * k.amin(-1, keepdim=True),
                            v)),
    "reductions of the value dim in the value": (
        ("-1", "k", "v - logsumexp(v, V) + softmax(v, V)"),
        lambda q, k, v, x: (-torch.ones(k.shape[:3], dtype=k.dtype), k,
                            v - torch.logsumexp(v, -1, keepdim=True) + torch.softmax(v, -1))),
}


def source(entry):
    d, kk, vv = entry[0]
    return TEMPLATE.format(d=d, kk=kk, vv=vv)


def truth(entry, tensors, initial):
    """o and the final S of a case's recurrence, in fp64, computed here."""
    q, k, v, x = (tensors[n].double() for n in ("q", "k", "v", "x"))
    d, kk, vv = entry[1](q, k, v, x)
    S, outputs = initial["S"].double(), []
    for t in range(q.shape[1]):
        S = torch.exp(d[:, t])[..., None, None] * S + kk[:, t, ..., None] * vv[:, t, :, None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return {"o": torch.stack(outputs, 1), "S": S}


def call(seed=5, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    B, T, H = SIZES["B"], SIZES["T"], SIZES["H"]
    tensors = {n: torch.randn(B, T, H, SIZES[d], generator=gen, dtype=dtype)
               for n, d in (("q", "K"), ("k", "K"), ("v", "V"), ("x", "N"))}
    initial = {"S": torch.randn(B, H, SIZES["K"], SIZES["V"], generator=gen, dtype=dtype)}
    return tensors, initial


def runs(program):
    """(backend, options) for every backend and every Triton mode the module offers (the value
    dim split over programs in blocks of 2 lanes where it can be: not where it is reduced)."""
    modes = program.kernel("triton").module.MODES
    return [("reference", {}), ("torch", {"chunk_size": 4})] + \
        [("triton", {"mode": m, "chunk_size": 4, "block_split": 2}) for m in modes]


def assert_near(got, want, what, tolerance=2e-5):
    scale = max(1.0, float(want.abs().max()))
    torch.testing.assert_close(got.double(), want, rtol=tolerance, atol=tolerance * scale,
                               msg=lambda m: f"{what}: {m}")


def on_every_backend(name, entry):
    """The case's spec is a chunk state and every backend and Triton mode matches `truth`."""
    program = seqc.compile(source(entry), "feature.seq")
    assert program.analysis.kind("S") == "chunk", program.analysis.describe()
    tensors, initial = call()
    want = truth(entry, tensors, initial)
    for backend, options in runs(program):
        out = program.kernel(backend, **options)(**tensors, initial_state=initial,
                                                 output_final_state=True)
        what = f"{name} / {backend} {options}"
        assert_near(out["o"], want["o"], what)
        assert_near(out.final_state["S"], want["S"], what)


def gradients_match(name, entry):
    """Gradients of every input and the initial state through torch and Triton (its default
    mode and the fused recurrent kernel's generated backward), against autograd of `truth`."""
    program = seqc.compile(source(entry), "feature.seq")
    tensors, initial = call(seed=9)
    gen = torch.Generator().manual_seed(4)
    do = torch.randn(SIZES["B"], SIZES["T"], SIZES["H"], SIZES["V"], generator=gen)
    dS = torch.randn(SIZES["B"], SIZES["H"], SIZES["K"], SIZES["V"], generator=gen)

    def gradients(run):
        leaves = {n: t.clone().double().requires_grad_() for n, t in tensors.items()}
        state = {"S": initial["S"].clone().double().requires_grad_()}
        o, S = run(leaves, state)
        ((o.double() * do).sum() + (S.double() * dS).sum()).backward()
        return {**{n: t.grad for n, t in leaves.items()}, "initial S": state["S"].grad}

    want = gradients(lambda x, s: tuple(truth(entry, x, s).values()))
    modes = [{}, {"mode": "fused_recurrent"}]
    for backend, options in [("torch", {})] + [("triton", m) for m in modes]:
        def run(x, s):
            x32 = {n: t.float() for n, t in x.items()}
            out = program.kernel(backend, chunk_size=4, **options)(
                **x32, initial_state={"S": s["S"].float()}, output_final_state=True)
            return out["o"], out.final_state["S"]
        got = gradients(run)
        for n, g in want.items():
            if g is None:       # an input the case does not read
                assert got[n] is None or not got[n].any(), f"{name}: {n}"
                continue
            assert got[n] is not None, f"{name}/{backend} {options}: no gradient of {n}"
            assert_near(got[n], g, f"{name}/{backend} {options}: gradient of {n}", GRAD_RTOL)


@pytest.mark.parametrize("case", CASES)
def test_reduction_on_every_backend_matches_torch(case):
    on_every_backend(case, CASES[case])


@pytest.mark.parametrize("case", ["softmax over slots", "reductions of the key dim in the key",
                                  "reductions of the value dim in the value"])
def test_reduction_gradients_match_torch(case):
    gradients_match(case, CASES[case])


# ---- reductions over a state dim: the step loop, with the reason -------------------------

SEQUENTIAL = {
    "softmax of the state": ("""model slots
dims N
input x[N], g
state h[N] = 0
h = exp(-softplus(g)) * softmax(h, N) + x
output o = logsumexp(h, N) + max(h, N) - min(h, N) + mean(h, N)
""", "`h` appears under softmax over `N`, a reduction over a dim of the state, which is not "
     "linear"),
    "max of the state": ("""model slots
dims N
input x[N], g
state h[N] = 0
h = sigmoid(g) * h + x - max(h, N)
output o = h
""", "`h` appears under max over `N`, a reduction over a dim of the state, which is not linear"),
}


def sequential_truth(name, x, rest, h):
    """The SEQUENTIAL specs' steps, written here: (outputs, final h)."""
    outputs = []
    for t in range(x.shape[1]):
        if name == "softmax of the state":
            h = torch.exp(-F.softplus(rest[:, t]))[..., None] * torch.softmax(h, -1) + x[:, t]
            outputs.append(torch.logsumexp(h, -1) + h.amax(-1) - h.amin(-1) + h.mean(-1))
        else:
            h = torch.sigmoid(rest[:, t])[..., None] * h + x[:, t] - h.amax(-1, keepdim=True)
            outputs.append(h)
    return torch.stack(outputs, 1), h


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_a_reduction_over_a_state_dim_runs_the_step_loop(name):
    text, note = SEQUENTIAL[name]
    program = seqc.compile(text, "s.seq")
    assert program.analysis.kind("h") == "sequential"
    assert note in program.analysis.describe()
    B, T, H, N = 2, 6, 2, 3
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(B, T, H, N, generator=gen)
    rest = torch.randn(B, T, H, generator=gen)
    h0 = torch.randn(B, H, N, generator=gen)
    tensors = {"x": x, "g": rest}
    want_o, want_h = sequential_truth(name, x.double(), rest.double(), h0.double())
    for backend in ("reference", "torch", "triton"):
        out = program.kernel(backend)(**tensors, initial_state={"h": h0}, output_final_state=True)
        assert_near(out["o"], want_o, f"{name}/{backend}")
        assert_near(out.final_state["h"], want_h, f"{name}/{backend}")


# ---- located errors ----------------------------------------------------------------------------

SPEC = """model m
dims K, V
input q[K], k[K], v[V]
state S[K, V] = 0
S = S + k * v
output o = q @ S
"""


def with_line(line, text):
    lines = SPEC.splitlines()
    lines.insert(line - 1, text)
    return "\n".join(lines) + "\n"


@pytest.fixture
def check_source(tmp_path, monkeypatch, capsys):
    return lambda source, name="spec.seq": run_check(tmp_path, monkeypatch, capsys, source, name)


@pytest.mark.parametrize("text, col, width, message, help", [
    ("let a = max(q, V)", 16, 1, "`max` over `V`, but its argument has dims [K]",
     "reduce over `K`"),
    ("let a = softmax(q, VV)", 20, 2, "`softmax` reduces over a dim, and `VV` is not a declared dim",
     "did you mean `V`?"),
    ("let a = logsumexp(q)", 9, 12, "`logsumexp` takes an expression and the dim to reduce, as in "
     "`logsumexp(x, K)`", None),
    ("let a = mean(1, K)", 17, 1, "`mean` over `K`, but its argument has dims [] (a scalar)",
     "a scalar has no dim to reduce"),
])
def test_misuse_is_a_located_error(check_source, text, col, width, message, help):
    assert_located(check_source, text, col, width, message, help)


def assert_located(check_source, text, col, width, message, help):
    """`text` as line 5 of SPEC: `seqc check` reports one error there, with this caret, message
    and help (test_check_errors.py's `expect`)."""
    err = check_source(with_line(5, text))
    expect(err, 5, col, width, message, help, text)


def error_lines(text):
    """The lines of the errors of SPEC with `text` as its line 5 (and on), all reported at once."""
    with pytest.raises(SpecError) as caught:
        seqc.compile(with_line(5, text), "m.seq")
    return [d.span.line for d in caught.value.diagnostics if d.severity == "error"]


def test_every_misuse_is_reported_at_once():
    assert error_lines("let a = max(q, V) + softmax(q, VV)\nlet b = mean(q, V)") == [5, 5, 6]


def test_max_of_a_scalar_and_a_dim_stays_elementwise():
    """`max(K, V)` (two dim sizes) and `max(x, y)` with a tensor `y` are the elementwise max."""
    program = seqc.compile(with_line(5, "let a = max(K, 2 * V) * max(q, k)"), "m.seq")
    let = program.spec.body[0]
    assert [c.dim for c in (let.value.left, let.value.right)] == [None, None]
