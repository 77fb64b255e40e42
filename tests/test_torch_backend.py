"""The torch backend (parallel families from the analysis' Plan) against the reference step loop,
on every stdlib spec, and against flash-linear-attention's own chunkwise implementations.

Tolerances (atol = rtol * max(1, max |expected|), so relative to the output's magnitude):
  fp32 inputs: rtol = 1e-5 — same math in a different order (chunked sums, a triangular solve);
    measured worst case over the stdlib: about 1.2e-6 (the semiring scans, whose log-gates are
    summed in a different order).
  bf16 inputs: rtol = 2e-2 — both backends compute in fp32 from the same bf16 values and round the
    output to bf16 (2^-8 ~ 4e-3 relative), as in test_stdlib_oracles.py.
  fla chunkwise references: rtol = 1e-5 in fp32.
"""
import functools
import types

import pytest
import torch

from hand_plans import HAND_PLANS, hand_plan
from oracles import SPECS, random_inputs, random_state

NAMES = sorted(SPECS)
B, H = 2, 2
FP32, BF16 = 1e-5, 2e-2


def assert_close(actual, expected, rtol, what=""):
    finite = expected[torch.isfinite(expected)]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=rtol * scale,
                               msg=lambda m: f"{what}: {m}")


@functools.lru_cache(maxsize=None)
def kernel(name, backend, **options):
    import seqc
    return seqc.load(name).kernel(backend=backend, **options)


def run_both(name, T, init, dtype=torch.float32, seed=0, **options):
    x, p = random_inputs(name, B, T, H, dtype=dtype, seed=seed)
    s = random_state(name, B, H, seed=seed) if init else None
    got = kernel(name, "torch", **options)(**x, **p, initial_state=s, output_final_state=True)
    want = kernel(name, "reference")(**x, **p, initial_state=s, output_final_state=True)
    return got, want


def compare(got, want, rtol, dtype):
    for n in want.keys():
        assert got[n].dtype == dtype and got[n].shape == want[n].shape
        assert_close(got[n], want[n], rtol, f"output {n}")
    assert set(got.final_state) == set(want.final_state)
    for n, s in want.final_state.items():
        assert got.final_state[n].shape == s.shape
        assert_close(got.final_state[n], s, rtol, f"final state {n}")


@pytest.mark.parametrize("init", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("T", [1, 63, 64, 65, 300])
@pytest.mark.parametrize("name", NAMES)
def test_torch_matches_reference_fp32(name, T, init):
    got, want = run_both(name, T, init)
    compare(got, want, FP32, torch.float32)


@pytest.mark.parametrize("name", NAMES)
def test_torch_matches_reference_bf16(name):
    got, want = run_both(name, 65, True, dtype=torch.bfloat16)
    compare(got, want, BF16, torch.bfloat16)


@pytest.mark.parametrize("chunk_size", [1, 7, 24, 128])
@pytest.mark.parametrize("name", ["gla", "gated_deltanet", "deltaproduct", "kda", "rwkv7", "hgrn",
                                  "maxplus", "mlstm"])
def test_any_chunk_size(name, chunk_size):
    got, want = run_both(name, 65, True, chunk_size=chunk_size)
    compare(got, want, FP32, torch.float32)


TWO_KEYWISE_WRITES = """model two_writes
dims K, V
input q[K], k[K], v[V], k2[K], v2[V]
input g[K] in (-inf, 0)
state S[K, V] = 0
S = exp(g) * S + k * v + k2 * v2
output o = q @ S
"""


@pytest.mark.parametrize("chunk_size", [1, 4, 6, 32])
def test_keywise_decay_with_two_writes_a_step(chunk_size):
    """The key-wise intra-chunk halving with W = 2 keys a position, also for a chunk padded up to
    a power of two (6 -> 8); fp64, so only rounding separates it from the step loop."""
    import seqc
    from seqc.inputs import random_call
    program = seqc.compile(TWO_KEYWISE_WRITES)
    assert program.analysis.kind("S") == "chunk"
    x, s = random_call(program.spec, dict(B=2, T=70, H=2, K=5, V=3), torch.float64, seed=1,
                       with_initial_state=True)
    s = {n: t.double() for n, t in s.items()}
    want = program.kernel("reference")(**x, initial_state=s, output_final_state=True)
    got = program.kernel("torch", chunk_size=chunk_size)(**x, initial_state=s,
                                                         output_final_state=True)
    compare(got, want, 1e-12, torch.float64)


@pytest.mark.parametrize("name", ["simple_gla", "gla", "gated_deltanet", "deltaproduct", "rwkv7",
                                  "mamba", "mlstm", "maxplus", "lstm"])
def test_several_slabs_of_time(name):
    """The module goes over time in slabs of about 1024 steps, carrying the states: T = 2100 is
    two whole slabs and a ragged third, with an initial state (every family, the step loop too)."""
    got, want = run_both(name, 2100, True, dtype=torch.float64)
    compare(got, want, 1e-10, torch.float64)


DECAY_THEN_DPLR = """model m
dims K, V
input r[K], k[K], v[V], kk[K], a[K] in (0, 1)
input g[K] in (-inf, 0), h in (-inf, 0)
state S[K, V] = 0
S = exp(g) * S
S = exp(h) * S - a * kk * (kk @ S) + k * v
output o = r @ S
"""


@pytest.mark.parametrize("chunk_size", [1, 5, 32])
def test_diagonal_plus_low_rank_with_the_key_between_two_decays(chunk_size):
    """The key of the low rank sees the key-wise decay `g` but not the scalar `h` (chunk_dplr's
    `unseen` gate); fp64 against the step loop."""
    import seqc
    from seqc.inputs import random_call
    program = seqc.compile(DECAY_THEN_DPLR)
    assert [g.kind for g in program.analysis.plan.groups] == ["chunk_dplr"]
    x, s = random_call(program.spec, dict(B=2, T=70, H=2, K=5, V=3), torch.float64, seed=2,
                       with_initial_state=True)
    x["kk"] = torch.nn.functional.normalize(x["kk"], dim=-1)
    s = {n: t.double() for n, t in s.items()}
    want = program.kernel("reference")(**x, initial_state=s, output_final_state=True)
    got = program.kernel("torch", chunk_size=chunk_size)(**x, initial_state=s,
                                                         output_final_state=True)
    compare(got, want, 1e-12, torch.float64)


def test_fp64_inputs_compute_in_fp64():
    got, want = run_both("gated_deltanet", 70, True, dtype=torch.float64)
    compare(got, want, 1e-10, torch.float64)


def test_bad_chunk_size_is_refused():
    x, p = random_inputs("simple_gla", B, 8, H)
    with pytest.raises(ValueError, match="chunk_size"):
        kernel("simple_gla", "torch", chunk_size=0)(**x, **p)


def test_initial_state_is_not_modified():
    x, p = random_inputs("gated_deltanet", B, 65, H)
    s = random_state("gated_deltanet", B, H)
    before = {n: t.clone() for n, t in s.items()}
    kernel("gated_deltanet", "torch")(**x, **p, initial_state=s, output_final_state=True)
    assert all(torch.equal(s[n], before[n]) for n in s)


@pytest.mark.parametrize("name", NAMES)
def test_emitted_module_is_standalone(name):
    import seqc
    code = seqc.load(name).emit("torch")
    imports = [line for line in code.splitlines() if line.startswith(("import ", "from "))]
    assert imports == ["import torch", "import torch.nn.functional as F"]


def test_families_follow_the_analysis():
    import seqc
    kinds = {n: sorted({g.kind for g in seqc.load(n).analysis.plan.groups}) for n in NAMES}
    assert kinds["simple_gla"] == ["chunk"] and kinds["gla"] == ["chunk"]
    assert kinds["gated_deltanet"] == ["chunk_delta"] and kinds["deltaproduct"] == ["chunk_delta"]
    assert kinds["kda"] == kinds["comba"] == ["chunk_delta"] and kinds["rwkv7"] == ["chunk_dplr"]
    assert kinds["hgrn"] == ["scan"] and kinds["maxplus"] == ["semiring"]
    assert kinds["lstm"] == ["sequential"]


@pytest.mark.parametrize("name", NAMES)
def test_every_parallel_verdict_runs_in_a_parallel_family(name):
    """What `seqc check` promises is what the torch backend runs: no spec whose groups are all
    parallel falls back to the step loop (key-wise chunk_delta, kda, once did)."""
    import seqc
    from seqc.backends.torch.roles import supported
    program = seqc.load(name)
    plan = program.analysis.plan
    if not plan.sequential:
        assert all(supported(g, program.spec) for g in plan.groups)
        assert "for t in range(T)" not in program.emit("torch")


# ---------------------------------------------------------------- hand-built Plans


def module_from_plan(plan):
    from seqc.backends.torch import emit_plan
    module = types.ModuleType(f"hand_{plan.spec.name}")
    exec(compile(emit_plan(plan), module.__name__, "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("name", sorted(HAND_PLANS))
def test_hand_built_plans(name):
    """The families driven by Plans written by hand (e.g. mLSTM's normaliser as a vector chunk
    state, which the analysis runs as a scan instead)."""
    from seqc.validate import validate
    module = module_from_plan(hand_plan(name))
    name = name.split("/")[0]           # `spec/variant`: another Plan of the same spec
    x, p = random_inputs(name, B, 65, H)
    s = random_state(name, B, H)
    want = kernel(name, "reference")(**x, **p, initial_state=s, output_final_state=True)
    call = validate(want_spec(name), {**x, **p}, s)
    outputs, final = module.run(call.inputs, call.params, call.dims, call.initial_state, True,
                                chunk_size=16)
    for n in want.keys():
        assert_close(outputs[n], want[n], FP32, f"output {n}")
    for n, state in want.final_state.items():
        assert_close(final[n], state, FP32, f"final state {n}")


def want_spec(name):
    import seqc
    return seqc.load(name).spec


# ---------------------------------------------------------------- fla's chunkwise references


FLA_DIMS = {"hgrn": {"D": 16}, **{n: {"K": 16, "V": 24} for n in
                                   ("simple_gla", "gated_deltanet", "linear_attn", "kda",
                                    "rwkv7")}}


def fla_case(name, T, seed=3):
    x, p = random_inputs(name, B, T, H, dims=FLA_DIMS[name], seed=seed)
    s = random_state(name, B, H, dims=FLA_DIMS[name], seed=seed)
    return x, p, s


FLA_CHUNKWISE = [   # spec, fla module, function, its tensor arguments, T (kda: a multiple of 64)
    ("simple_gla", "fla.ops.simple_gla.naive", "naive_chunk_simple_gla", "q k v g", (64, 100)),
    ("gated_deltanet", "fla.ops.gated_delta_rule.naive", "naive_chunk_gated_delta_rule",
     "q k v g beta", (64, 100)),
    ("kda", "fla.ops.kda.naive", "naive_chunk_kda", "q k v g beta", (64, 128)),
]


@pytest.mark.parametrize("name, module, function, arguments, T", [
    (*case[:4], T) for case in FLA_CHUNKWISE for T in case[4]])
def test_fla_naive_chunkwise_with_initial_and_final_state(name, module, function, arguments, T):
    naive = getattr(pytest.importorskip(module), function)
    x, _, s = fla_case(name, T)
    got = kernel(name, "torch")(**x, initial_state=s, output_final_state=True)
    o, S = naive(*(x[a] for a in arguments.split()), initial_state=s["S"].clone(),
                 output_final_state=True)
    assert_close(got.o, o, FP32, "o")
    assert_close(got.final_state["S"], S, FP32, "S")


def test_fla_dplr_chunkwise_rwkv7():
    """fla's chunkwise generalised delta rule (head-first; it scales q by K^-1/2, undone here)."""
    naive = pytest.importorskip("fla.ops.generalized_delta_rule.dplr.naive")
    x, _, s = fla_case("rwkv7", 64)
    got = kernel("rwkv7", "torch")(**x, initial_state=s, output_final_state=True)
    r, k, v, kk, a, g = (x[n].transpose(1, 2) for n in ("r", "k", "v", "kk", "a", "g"))
    o, S = naive.dplr_chunkwise(r * r.shape[-1] ** 0.5, k, v, -kk, a * kk, g,
                                initial_state=s["S"].clone(), output_final_state=True)
    assert_close(got.o, o.transpose(1, 2), FP32, "o")
    assert_close(got.final_state["S"], S, FP32, "S")


def test_fla_naive_chunk_linear_attn():
    naive = pytest.importorskip("fla.ops.linear_attn.naive")
    x, _, _ = fla_case("linear_attn", 128)
    got = kernel("linear_attn", "torch")(**x)
    assert_close(got.o, naive.naive_chunk_linear_attn(x["q"], x["k"], x["v"]), FP32, "o")


def test_fla_naive_chunk_hgrn():
    naive = pytest.importorskip("fla.ops.hgrn.naive")
    x, _, s = fla_case("hgrn", 64)          # fla's naive_chunk_hgrn handles T = 64 only
    got = kernel("hgrn", "torch")(**x, initial_state=s, output_final_state=True)
    flat = {n: t.reshape(B, 64, -1) for n, t in x.items()}
    o, h = naive.naive_chunk_hgrn(flat["x"], flat["g"], initial_state=s["h"].reshape(B, -1),
                                  output_final_state=True)
    assert_close(got.o.reshape(B, 64, -1), o, FP32, "o")
    assert_close(got.final_state["h"].reshape(B, -1), h, FP32, "h")


def _largest_tensor(call):
    """The most elements any op's output had while `call()` ran (forward and backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        most = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    Largest.most = max(Largest.most, t.numel())
            return out

    with Largest():
        call()
    return Largest.most


def test_a_contraction_of_a_product_is_not_formed_over_the_sequence():
    """rwkv6's bonus `r @ (u * k * v)` is computed as `(r @ (u * k)) * v` over the whole sequence
    (FactoringTorchRenderer): formed literally it was a [B, T, H, K, V] tensor (4 GB at B=4,
    T=4096, H=16, K=V=64). Its largest value, forward and backward, is no larger than gla's (the
    same chunk group without the bonus) at the same shape."""
    dims = {"K": 32, "V": 32}

    def step(spec):
        def call():
            x, p = random_inputs(spec, 1, 256, 1, dims=dims)
            for t in (*x.values(), *p.values()):
                t.requires_grad_(True)
            out = kernel(spec, "torch")(**x, **p)
            sum(out[n].sum() for n in out.keys()).backward()
        return _largest_tensor(call)

    assert step("rwkv6") <= step("gla") < 256 * 32 * 32
