"""fla's calling convention: `const` call-time scalars and `Program.op()`.

    o, ht = seqc.load("gla").op()(q, k, v, g, scale=s, initial_state=h0, output_final_state=True)
"""
from __future__ import annotations

import pytest
import torch

import seqc
from seqc.errors import SpecError
from seqc.parse import parse
from seqc.pretty import pretty

LINEAR = """model lin
dims K, V
input q[K], k[K], v[V]
const scale = K ** -0.5
state S[K, V] = 0
S = S + k * v
output o = scale * q @ S
"""


def errors(source: str) -> list[tuple[int, int, str]]:
    with pytest.raises(SpecError) as info:
        seqc.compile(source, "spec.seq")
    return [(d.span.line, d.span.col, d.message) for d in info.value.diagnostics
            if d.severity == "error"]


def with_line(line: int, text: str, source: str = LINEAR) -> str:
    lines = source.splitlines()
    lines.insert(line - 1, text)
    return "\n".join(lines) + "\n"


def tensors(seed=0, B=2, T=5, H=3, K=4, V=6, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(B, T, H, d, generator=gen, dtype=dtype)
            for n, d in (("q", K), ("k", K), ("v", V))}


# ---- the language ------------------------------------------------------------------------------

def test_const_round_trips_through_pretty():
    spec = parse(LINEAR)
    assert [c.name for c in spec.consts] == ["scale"]
    assert parse(pretty(spec)) == spec


def test_const_defined_twice_is_located():
    assert errors(with_line(5, "const scale = 2")) == [
        (5, 1, "const `scale` is defined twice")]


def test_const_default_must_not_read_a_tensor():
    assert errors(with_line(5, "const c = 2 * q")) == [
        (5, 15, "the default of const `c` must be a scalar of numbers, dims and earlier consts, "
                "but `q` is an input")]


def test_const_used_before_its_declaration():
    source = LINEAR.replace("const scale = K ** -0.5\n", "") + "const scale = K ** -0.5\n"
    assert errors(source) == [(6, 12, "const `scale` is used before its declaration (line 7)")]


def test_const_default_reading_a_later_const_or_itself():
    assert errors(with_line(5, "const a = b + 1\nconst b = 2")) == [
        (5, 11, "const `b` is used before its declaration (line 6)")]
    assert errors(with_line(5, "const a = a + 1")) == [
        (5, 11, "const `a` is used before its declaration (line 5)")]


@pytest.mark.parametrize("text,message", [
    ("const K = 2", "`K` is already declared (at line 2)"),
    ("const q = 2", "`q` is already declared (at line 3)"),
    ("const T = 2", "`T` is reserved (batch, time and heads are implicit dims)"),
    ("const exp = 2", "`exp` is a reserved word and cannot be a const name"),
])
def test_const_name_clashes(text, message):
    assert errors(with_line(5, text)) == [(5, 1, message)]


def test_let_clashing_with_a_const():
    assert errors(with_line(7, "let scale = q")) == [
        (7, 1, "`scale` is already declared (at line 4)")]


def test_const_may_use_dims_functions_and_earlier_consts():
    program = seqc.compile(with_line(5, "const half = sqrt(scale) * max(K, V) / 2"))
    assert [c.name for c in program.spec.consts] == ["scale", "half"]


# ---- calls -------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_const_given_at_call_time_on_every_backend(backend):
    """`scale=0.3` equals the same spec with 0.3 written in; omitted, the default K ** -0.5."""
    x = tensors()
    fn = seqc.compile(LINEAR).kernel(backend)
    for value, written in ((0.3, "0.3"), (None, "(K ** -0.5)")):
        want = seqc.compile(LINEAR.replace("scale * q", f"{written} * q")).kernel("reference")
        got = fn(**x, scale=value) if value is not None else fn(**x)
        torch.testing.assert_close(got.o, want(**x).o, rtol=1e-5, atol=1e-5)


def test_const_default_computed_from_dims_and_earlier_consts():
    source = with_line(5, "const c = scale * sqrt(V) + 1").replace("scale * q", "c * q")
    x = tensors(K=4, V=9)
    got = seqc.compile(source).kernel("reference")(**x, scale=2.0).o
    want = seqc.compile(LINEAR).kernel("reference")(**x, scale=(2.0 * 3 + 1)).o
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("value,message", [
    ("0.1", "const `scale` must be a real number, not str"),
    (True, "const `scale` must be a real number, not bool"),
    (float("nan"), "const `scale` must be finite, not nan"),
    (torch.tensor(0.1), "const `scale` must be a real number, not Tensor"),
])
def test_bad_const_value_is_a_value_error(value, message):
    with pytest.raises(ValueError, match=message):
        seqc.compile(LINEAR).kernel("reference")(**tensors(), scale=value)


def test_unknown_keyword_lists_the_consts():
    with pytest.raises(ValueError, match=r"unknown argument `scal`; did you mean `scale`\? "
                                         r"\(the kernel takes q, k, v; consts scale\)"):
        seqc.compile(LINEAR).kernel("reference")(**tensors(), scal=0.1)


# ---- Program.op(): fla's call ------------------------------------------------------------------

def test_op_takes_positional_tensors_and_returns_output_then_state():
    x = tensors()
    h0 = torch.randn(2, 3, 4, 6, generator=torch.Generator().manual_seed(1))
    program = seqc.compile(LINEAR)
    o, ht = program.op(backend="torch")(x["q"], x["k"], x["v"], scale=0.25, initial_state=h0,
                                        output_final_state=True)
    want = program.kernel("reference")(**x, scale=0.25, initial_state={"S": h0},
                                       output_final_state=True)
    torch.testing.assert_close(o, want.o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ht, want.final_state["S"], rtol=1e-5, atol=1e-5)
    o2, none = program.op(backend="reference")(x["q"], k=x["k"], v=x["v"], scale=None)
    torch.testing.assert_close(o2, program.kernel("reference")(**x).o)
    assert none is None


def test_op_with_several_outputs_and_states_uses_dicts():
    """lstm: outputs in declaration order, then the final state as a dict."""
    program = seqc.load("lstm")
    names = [t.name for t in program.spec.inputs + program.spec.params]
    gen = torch.Generator().manual_seed(0)
    fn = program.kernel("reference")
    shapes = {}
    probe = {t.name: t for t in program.spec.inputs + program.spec.params}
    D = 3
    for name, t in probe.items():
        lead = (2, 4, 2) if t.kind.value == "input" else (2,)
        shapes[name] = torch.randn(*lead, *(D for _ in t.dims), generator=gen)
    want = fn(**shapes, output_final_state=True)
    got = program.op(backend="reference")(*(shapes[n] for n in names), output_final_state=True)
    assert len(got) == len(program.spec.outputs) + 1
    for value, name in zip(got, [o.name for o in program.spec.outputs]):
        torch.testing.assert_close(value, want[name])
    assert set(got[-1]) == {s.name for s in program.spec.states}


def test_op_call_errors():
    x = tensors()
    fn = seqc.compile(LINEAR).op(backend="reference")
    with pytest.raises(ValueError, match="lin takes 3 tensors"):
        fn(x["q"], x["k"], x["v"], x["v"])
    with pytest.raises(ValueError, match="`q` is given both by position and by name"):
        fn(x["q"], x["k"], x["v"], q=x["q"])
    no_scale = seqc.compile(LINEAR.replace("scale * q", "q").replace(
        "const scale = K ** -0.5\n", "")).op(backend="reference")
    with pytest.raises(ValueError, match="lin has no const `scale`"):
        no_scale(x["q"], x["k"], x["v"], scale=0.5)
    no_scale(x["q"], x["k"], x["v"], scale=None)       # fla's default is accepted
    with pytest.raises(ValueError, match="lstm has 2 states"):
        seqc.load("lstm").op(backend="reference")(initial_state=torch.zeros(1))


# ---- grouped heads (fla's GVA) -------------------------------------------------------------------

def _gated_deltanet_inputs(B=2, T=7, HK=2, HV=4, K=4, V=5, seed=3):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, HK, K, generator=gen) for _ in range(2))
    k = torch.nn.functional.normalize(k, dim=-1)
    v = torch.randn(B, T, HV, V, generator=gen)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, HV, generator=gen))
    beta = torch.rand(B, T, HV, generator=gen)
    return dict(q=q, k=k, v=v, g=g, beta=beta)


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_grouped_heads_equal_inputs_repeated_by_hand(backend):
    """q, k with 2 heads, v, g, beta with 4: head h reads q, k head h // 2."""
    x = _gated_deltanet_inputs(T=5 if backend == "triton" else 7)
    program = seqc.load("gated_deltanet")
    h0 = torch.randn(2, 4, 4, 5, generator=torch.Generator().manual_seed(4))
    got = program.kernel(backend)(**x, initial_state={"S": h0}, output_final_state=True)
    by_hand = {**x, "q": x["q"].repeat_interleave(2, dim=2),
               "k": x["k"].repeat_interleave(2, dim=2)}
    want = program.kernel("reference")(**by_hand, initial_state={"S": h0},
                                       output_final_state=True)
    torch.testing.assert_close(got.o, want.o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.final_state["S"], want.final_state["S"], rtol=1e-5, atol=1e-5)


def test_grouped_heads_gradients_reach_the_shared_heads():
    x = {n: t.requires_grad_() for n, t in _gated_deltanet_inputs().items()}
    seqc.load("gated_deltanet").kernel("torch")(**x).o.sum().backward()
    y = {n: t.detach().clone().requires_grad_() for n, t in x.items()}
    by_hand = {**y, "q": y["q"].repeat_interleave(2, dim=2), "k": y["k"].repeat_interleave(2, dim=2)}
    seqc.load("gated_deltanet").kernel("torch")(**by_hand).o.sum().backward()
    for name in x:
        torch.testing.assert_close(x[name].grad, y[name].grad, rtol=1e-5, atol=1e-5)


def test_head_count_that_does_not_divide_h_is_a_value_error():
    x = _gated_deltanet_inputs(HK=3, HV=4)
    with pytest.raises(ValueError, match=r"input `q` has 3 heads but H = 4 \(the largest head "
                                         r"count, from input `v`\)") as info:
        seqc.load("gated_deltanet").kernel("reference")(**x)
    assert "input `k` has 3 heads" in str(info.value)
    assert "missing" not in str(info.value)


def test_params_and_states_keep_h_heads():
    """retnet's gamma is a param [H]: it must have the H of the inputs' largest head count."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 2, 4, generator=gen)
    v = torch.randn(1, 3, 4, 4, generator=gen)
    with pytest.raises(ValueError, match="param `gamma` has shape \\[2\\]"):
        seqc.load("retnet").kernel("reference")(q=q, k=q, v=v, gamma=torch.rand(2))


# ---- mixed dtypes --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_bf16_qkv_with_fp32_gates_as_fla(backend):
    """gla with bf16 q, k, v and an fp32 g: the output is bf16 (the first input's dtype), the final
    state fp32, both equal to the reference on fp32 copies (the output up to its bf16 rounding)."""
    gen = torch.Generator().manual_seed(5)
    x = {n: torch.randn(2, 6, 2, 4, generator=gen).to(torch.bfloat16) for n in ("q", "k", "v")}
    x["g"] = torch.nn.functional.logsigmoid(torch.randn(2, 6, 2, 4, generator=gen))
    got = seqc.load("gla").kernel(backend)(**x, output_final_state=True)
    want = seqc.load("gla").kernel("reference")(**{n: t.float() for n, t in x.items()},
                                                output_final_state=True)
    assert got.o.dtype == torch.bfloat16 and got.final_state["S"].dtype == torch.float32
    # Triton's chunk_parallel (chosen here: few programs) rounds its computed dot operands (the
    # scaled queries, decayed keys, scores) to bf16 as fla does: each output element is then
    # within a bf16 rounding of the output's magnitude, not of its own value
    # (docs/backends.md, chunk_parallel); the other backends keep the state fp32-exact
    bf16 = lambda x: 8e-3 * float(x.abs().max())     # noqa: E731 - one bf16 rounding of |x|
    triton = backend == "triton"
    torch.testing.assert_close(got.o, want.o.to(torch.bfloat16), rtol=8e-3,
                               atol=bf16(want.o) if triton else 1e-5)
    torch.testing.assert_close(got.final_state["S"], want.final_state["S"], rtol=1e-5,
                               atol=bf16(want.final_state["S"]) if triton else 1e-5)


def test_gated_deltanet_fp16_qkv_fp32_gate_and_beta():
    x = _gated_deltanet_inputs(HK=4)
    mixed = {**x, **{n: x[n].half() for n in ("q", "k", "v")}}
    got = seqc.load("gated_deltanet").kernel("torch")(**mixed)
    want = seqc.load("gated_deltanet").kernel("reference")(
        **{n: t.float() for n, t in mixed.items()})
    assert got.o.dtype == torch.float16
    torch.testing.assert_close(got.o, want.o.half(), rtol=2e-3, atol=1e-4)


def test_float64_does_not_mix():
    x = tensors()
    with pytest.raises(ValueError, match="`k` has dtype torch.float64 but `q` has torch.float32: "
                                         "float64 does not mix"):
        seqc.compile(LINEAR).kernel("reference")(**{**x, "k": x["k"].double()})


# ---- cu_seqlens: packed variable-length sequences -------------------------------------------------

LENGTHS = (3, 7, 3, 1)


def _packed(seed=6, H=2, K=4, V=5):
    total = sum(LENGTHS)
    x = _gated_deltanet_inputs(B=1, T=total, HK=H, HV=H, K=K, V=V, seed=seed)
    h0 = torch.randn(len(LENGTHS), H, K, V, generator=torch.Generator().manual_seed(seed + 1))
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()])
    return x, h0, cu


def _one_by_one(fn, x, h0, cu):
    """The reference: every sequence called alone, from its own initial state."""
    outs, finals = [], []
    for i in range(len(cu) - 1):
        s, e = int(cu[i]), int(cu[i + 1])
        out = fn(**{n: t[:, s:e] for n, t in x.items()}, initial_state={"S": h0[i:i + 1]},
                 output_final_state=True)
        outs.append(out.o)
        finals.append(out.final_state["S"])
    return torch.cat(outs, 1), torch.cat(finals)


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_cu_seqlens_equals_each_sequence_called_alone(backend, dtype):
    x, h0, cu = _packed()
    fn = seqc.load("gated_deltanet").kernel(backend)
    got = fn(**x, initial_state={"S": h0}, output_final_state=True, cu_seqlens=cu.to(dtype))
    want_o, want_S = _one_by_one(seqc.load("gated_deltanet").kernel("reference"), x, h0, cu)
    torch.testing.assert_close(got.o, want_o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.final_state["S"], want_S, rtol=1e-5, atol=1e-5)


def test_cu_seqlens_resets_to_the_declared_state_and_differentiates():
    x, h0, cu = _packed()
    x = {n: t.requires_grad_() for n, t in x.items()}
    fn = seqc.load("gated_deltanet").kernel("torch")
    fn(**x, cu_seqlens=cu).o.square().sum().backward()
    y = {n: t.detach().clone().requires_grad_() for n, t in x.items()}
    zero = torch.zeros_like(h0)
    _one_by_one(fn, y, zero, cu)[0].square().sum().backward()
    for name in x:
        torch.testing.assert_close(x[name].grad, y[name].grad, rtol=1e-5, atol=1e-5)


def test_cu_seqlens_through_fla_call_against_fla_per_sequence():
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
    x, h0, cu = _packed()
    op = seqc.load("gated_deltanet").op(backend="torch")
    o, ht = op(x["q"], x["k"], x["v"], x["g"], x["beta"], scale=0.3, initial_state=h0,
               output_final_state=True, cu_seqlens=cu)
    for i in range(len(LENGTHS)):
        s, e = int(cu[i]), int(cu[i + 1])
        want_o, want_S = naive_recurrent_gated_delta_rule(
            *(x[n][:, s:e] for n in ("q", "k", "v", "beta", "g")), scale=0.3,
            initial_state=h0[i:i + 1], output_final_state=True)
        torch.testing.assert_close(o[:, s:e], want_o, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ht[i:i + 1], want_S, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change,message", [
    (lambda x, h0, cu: (x, h0, cu.float()), "cu_seqlens must be a 1-D int32 or int64 tensor"),
    (lambda x, h0, cu: (x, h0, [0, 3, 14]), "not list"),
    (lambda x, h0, cu: (x, h0, cu + 1), "must start at 0 and increase strictly"),
    (lambda x, h0, cu: (x, h0, torch.tensor([0, 3, 3, 14])), "must start at 0 and increase"),
    (lambda x, h0, cu: (x, h0, torch.tensor([0, 3, 10])),
     r"input `q` is packed \[1, total_T, H, ...\] = \[1, 10, ...\], but has shape \[1, 14, 2, 4\]"),
    (lambda x, h0, cu: ({n: t.expand(2, *t.shape[1:]) for n, t in x.items()}, h0, cu),
     r"but has shape \[2, 14, 2, 4\]"),
    (lambda x, h0, cu: (x, h0[:2], cu),
     r"initial state `S` is \[N, H, ...\] with N = 4 sequences, but has shape \[2, 2, 4, 5\]"),
])
def test_bad_cu_seqlens_is_a_value_error(change, message):
    x, h0, cu = change(*_packed())
    with pytest.raises(ValueError, match=message):
        seqc.load("gated_deltanet").kernel("reference")(**x, initial_state={"S": h0},
                                                         cu_seqlens=cu)


def test_cu_seqlens_is_reserved_in_specs():
    assert errors(LINEAR.replace("input q[K], k[K], v[V]", "input q[K], k[K], v[V], "
                                 "cu_seqlens[K]")) [0][2] == \
        "`cu_seqlens` is a reserved word and cannot be an input name"


def test_unused_const_is_a_warning():
    program = seqc.compile(with_line(5, "const spare = 2"), "spec.seq")
    assert [(w.span.line, w.message) for w in program.warnings] == [
        (5, "const `spare` is never used")]
