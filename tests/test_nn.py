"""seqc.nn.Mixer: decoding with the cache equals the full forward, gradients reach every
parameter, inputs land in their declared ranges, bad arguments are clear ValueErrors."""
import math

import pytest
import torch
import torch.nn.functional as F

import seqc
from seqc.nn import Mixer, MixerCache

HIDDEN, HEADS, T = 16, 2, 11

# spec -> Mixer options; chunk_size=4 makes T = 11 three chunks (the last one partial)
MIXERS = {
    "gla": dict(short_conv=("q", "k", "v"), dims={"K": 8, "V": 6}),
    "gated_deltanet": dict(short_conv=("q", "k", "v"), l2norm=("q", "k")),
    "simple_gla": dict(output_gate=False),
    "mamba2": dict(short_conv=("x", "B", "C"), dims={"N": 4, "P": 8}),
    "lstm": dict(head_dim=4),
    "rwkv7": dict(l2norm=("kk",), short_conv=("k",), conv_size=2),
    "retnet": dict(output_norm=False),
}


def make(spec, seed=0, **extra):
    torch.manual_seed(seed)
    options = {**MIXERS.get(spec, {}), **extra}
    return Mixer(spec, HIDDEN, HEADS, backend="torch", chunk_size=4, **options)


def tokens(batch=2, length=T, seed=1):
    return torch.randn(batch, length, HIDDEN, generator=torch.Generator().manual_seed(seed))


def decode(mixer, x, cache=None):
    ys = []
    for t in range(x.shape[1]):
        y, cache = mixer(x[:, t:t + 1], cache=cache, use_cache=True)
        ys.append(y)
    return torch.cat(ys, dim=1), cache


@pytest.mark.parametrize("spec", sorted(MIXERS))
def test_decoding_token_by_token_equals_the_full_forward(spec):
    mixer, x = make(spec), tokens()
    with torch.no_grad():
        full, _ = mixer(x)
        decoded, _ = decode(mixer, x)
    assert full.abs().max() > 1e-2                   # a real signal, not zeros
    torch.testing.assert_close(decoded, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", sorted(MIXERS))
@pytest.mark.parametrize("prompt", [2, 7])           # shorter and longer than the conv window
def test_prefill_then_decode_equals_the_full_forward(spec, prompt):
    mixer, x = make(spec), tokens()
    with torch.no_grad():
        full, _ = mixer(x)
        head, cache = mixer(x[:, :prompt], use_cache=True)
        tail, _ = decode(mixer, x[:, prompt:], cache)
    torch.testing.assert_close(torch.cat([head, tail], 1), full, atol=1e-5, rtol=1e-5)


def test_a_cache_carries_the_conv_tails_and_the_states():
    mixer, x = make("gla"), tokens()
    with torch.no_grad():
        _, cache = mixer(x[:, :5], use_cache=True)
        full, _ = mixer(x)
        rest, _ = mixer(x[:, 5:], cache=cache)
        no_tails, _ = mixer(x[:, 5:], cache=MixerCache(cache.states, {}))
    assert set(cache.conv) == {"q", "k", "v"} and set(cache.states) == {"S"}
    assert cache.conv["q"].shape == (2, 3, HEADS * 8)
    torch.testing.assert_close(rest, full[:, 5:], atol=1e-5, rtol=1e-5)
    assert (no_tails - full[:, 5:]).abs().max() > 1e-4     # the tails matter


def test_one_token_takes_the_step_path_not_the_chunked_kernel():
    mixer, x = make("gated_deltanet"), tokens(length=1)

    def chunked(**_):
        raise AssertionError("the T = 1 call went to the chunked kernel")
    mixer.kernel = chunked
    with torch.no_grad():
        y, cache = mixer(x, use_cache=True)
        mixer(x, cache=cache)
    with pytest.raises(AssertionError, match="chunked kernel"):
        mixer(tokens(length=2))


@pytest.mark.parametrize("spec", sorted(MIXERS))
def test_gradients_reach_every_parameter(spec):
    mixer, x = make(spec), tokens()
    y, _ = mixer(x)
    (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    for name, parameter in mixer.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().max() > 0, name


RANGES_SPEC = """
model ranges
dims D
input a[D] in (-inf, 0)
input b[D] in (0, 1)
input c[D] in (0, inf)
input d[D] in (2, 5)
input e[D] in (-inf, 3)
input f[D] in (-1, inf)
input u[D]
input values[D]
param p in (-inf, 0)
param r in (0, 1)
param W[D, D]
state h[D] = 0
h = 0.5 * h + a + b + c + d + e + f + u + values + p + r + W @ h
output y = h
"""

EXPECTED_MAPS = {           # the activation each declared range must get
    "a": F.logsigmoid,
    "b": torch.sigmoid,
    "c": F.softplus,
    "d": lambda z: 2 + 3 * torch.sigmoid(z),
    "e": lambda z: 3 - F.softplus(-z),
    "f": lambda z: -1 + F.softplus(z),
    "u": lambda z: z,
    "values": lambda z: z,
}


def ranges_mixer(**options):
    torch.manual_seed(0)
    return Mixer(seqc.compile(RANGES_SPEC), HIDDEN, HEADS, head_dim=4, **options).double()


def test_each_input_gets_the_activation_of_its_declared_range():
    mixer, x = ranges_mixer(), 3 * tokens().double()
    with torch.no_grad():
        inputs, _ = mixer.project(x)
        for name, expected in EXPECTED_MAPS.items():
            projection = mixer.in_proj[name if name != "values" else "values_"]
            want = expected(projection(x)).view(2, T, HEADS, 4)
            torch.testing.assert_close(inputs[name], want, msg=name)
    low_high = {t.name: t.range for t in mixer.program.spec.inputs if t.range is not None}
    for name, value_range in low_high.items():
        assert value_range.low < inputs[name].min() and inputs[name].max() < value_range.high
        span = inputs[name].max() - inputs[name].min()
        assert span > 0.5, name                     # spread over the range, not a constant


def test_params_stay_in_their_ranges_and_set_param_round_trips():
    mixer = ranges_mixer()
    values = mixer.param_values()
    assert (values["p"] < 0).all() and ((values["r"] > 0) & (values["r"] < 1)).all()
    with torch.no_grad():
        for raw in mixer.params.values():
            raw.add_(torch.randn_like(raw) * 50)        # any raw value maps into the range
    values = mixer.param_values()
    assert (values["p"] < 0).all() and ((values["r"] >= 0) & (values["r"] <= 1)).all()
    mixer.set_param("p", torch.tensor([-3.0, -0.25]))
    mixer.set_param("r", 0.9)
    torch.testing.assert_close(mixer.param_values()["p"], torch.tensor([-3.0, -0.25]).double())
    torch.testing.assert_close(mixer.param_values()["r"], torch.full((HEADS,), 0.9).double())
    with pytest.raises(ValueError, match="no param `q`"):
        mixer.set_param("q", 1.0)


def test_initial_gates_and_params_follow_the_documented_ranges():
    with torch.no_grad():
        gla = Mixer("gla", 64, 4)
        decay = torch.sigmoid(gla.in_proj["g"].bias)                    # exp(logsigmoid(b))
        assert 0.9 - 1e-6 <= decay.min() and decay.max() <= 0.999 + 1e-6
        mamba2 = Mixer("mamba2", 64, 4)
        dt = F.softplus(mamba2.in_proj["dt"].bias)
        assert 1e-3 - 1e-7 <= dt.min() and dt.max() <= 1e-1 + 1e-7
        A = mamba2.param_values()["A"]
        assert (-16 - 1e-4 <= A).all() and (A <= -1 + 1e-4).all()
        gamma = Mixer("retnet", 64, 8).param_values()["gamma"]
        assert (1 - 2 ** -5 - 1e-6 <= gamma).all() and (gamma <= 1 - 2 ** -12 + 1e-6).all()
        lstm = Mixer("lstm", 64, 4)
        bound = 1 / math.sqrt(16)
        assert 0.5 * bound < lstm.param_values()["Ri"].abs().max() <= bound


def test_an_input_named_like_a_module_dict_method_decodes_too():
    mixer, x = ranges_mixer(short_conv=("values", "u")), tokens().double()
    with torch.no_grad():
        full, _ = mixer(x)
        decoded, cache = decode(mixer, x)
    assert set(cache.conv) == {"values", "u"}
    torch.testing.assert_close(decoded, full, atol=1e-10, rtol=1e-10)


def test_dims_default_to_head_dim_then_to_hidden_over_heads():
    assert make("gla", dims={"K": 8}).sizes == {"K": 8, "V": HIDDEN // HEADS}
    assert make("gla", dims={"K": 8}, head_dim=3).sizes == {"K": 8, "V": 3}


@pytest.mark.parametrize("build, message", [
    (lambda: Mixer("no_such_spec", 16, 2), "no file or stdlib spec named `no_such_spec`"),
    (lambda: Mixer(42, 16, 2), "spec must be a stdlib name, a path to a .seq file"),
    (lambda: Mixer("gla", 16, 0), "num_heads must be a positive int, not 0"),
    (lambda: Mixer("gla", 15, 2), "hidden_size 15 is not a multiple of num_heads 2"),
    (lambda: Mixer("gla", 16, 2, dims={"D": 4}), "spec `gla` has no dim `D`"),
    (lambda: Mixer("gla", 16, 2, dims={"K": 0}), r"dims\['K'\] must be a positive int"),
    (lambda: Mixer("gla", 16, 2, short_conv=("kk",)), "short_conv: .*no input `kk`; did you mean `k`"),
    (lambda: Mixer("gated_deltanet", 16, 2, l2norm=("beta",)), "`beta` is a scalar per head"),
    (lambda: Mixer("gla", 16, 2, l2norm=("g",)), "`g` has a declared range"),
    (lambda: Mixer("mlstm", 16, 2, output="o"), "no output `o`.*its outputs: h"),
    (lambda: Mixer("gla", 16, 2, backend="cuda"), "unknown backend `cuda`"),
    (lambda: Mixer("gla", 16, 2, backend="torch", chunk=4), "unknown option `chunk`"),
])
def test_bad_arguments_are_clear_value_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_a_spec_with_errors_is_a_value_error_with_its_located_message(tmp_path):
    path = tmp_path / "broken.seq"
    path.write_text("model broken\ndims K\ninput q[K]\nstate S[K] = 0\nS = S + qq\noutput o = S\n")
    with pytest.raises(ValueError, match=r"broken.seq:5:9: error: unknown name `qq`"):
        Mixer(str(path), 16, 2)


def test_bad_calls_are_clear_value_errors():
    mixer = make("gla")
    with pytest.raises(ValueError, match=r"shape \[B, T, hidden_size = 16\], not \[2, 3\]"):
        mixer(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="T = 0"):
        mixer(torch.zeros(2, 0, HIDDEN))
    with pytest.raises(ValueError, match="cache must be the MixerCache"):
        mixer(tokens(), cache={"S": None})
    with torch.no_grad():
        _, cache = mixer(tokens(batch=2), use_cache=True)
    with pytest.raises(ValueError, match="cache holds 2 sequences but x has B = 3"):
        mixer(tokens(batch=3, length=1), cache=cache)    # the step path, which skips validation
    with pytest.raises(ValueError, match="cache has no state `S`"):
        mixer(tokens(length=1), cache=MixerCache({}, cache.conv))


@pytest.mark.triton
def test_the_triton_backend_runs_the_full_forward_and_agrees_with_decoding():
    torch.manual_seed(0)
    mixer = Mixer("gated_deltanet", 8, 2, short_conv=("k",), l2norm=("q", "k"), backend="triton")
    x = tokens(length=5)[..., :8]
    with torch.no_grad():
        full, _ = mixer(x)
        decoded, _ = decode(mixer, x)
    assert mixer.kernel.backend == "triton"
    torch.testing.assert_close(decoded, full, atol=1e-5, rtol=1e-5)
