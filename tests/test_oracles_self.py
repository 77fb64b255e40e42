"""The oracles checked against each other and against the papers' equations (no seqc needed).

Each cross-check pairs two computations that share nothing but the math: an fla naive function
against a loop written here, or a sequential loop against a closed form (cumulative products,
cummax, logcumsumexp, chunked fla forms). Tolerance: fp32 with rtol = atol = 1e-5 (scaled to the
output magnitude) unless a comment says otherwise.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from fla.ops.gated_delta_rule.naive import naive_chunk_gated_delta_rule
from fla.ops.gla.naive import naive_recurrent_gla
from fla.ops.retention.naive import naive_retention
from fla.ops.simple_gla.naive import naive_chunk_simple_gla, naive_parallel_simple_gla

from oracles import (NEG, ORACLES, POS, SPECS, UNIT, default_dims, default_state,
                     random_inputs, random_state)

B, T, H = 2, 37, 2
NAMES = sorted(ORACLES)


def close(actual, expected, rtol=1e-5):
    finite = expected[torch.isfinite(expected)]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=rtol * scale)


def run(name, T=T, seed=0, init=False):
    x, p = random_inputs(name, B, T, H, seed=seed)
    s = random_state(name, B, H, seed=seed) if init else None
    return x, p, s, *ORACLES[name](x, p, s)


# ---------------------------------------------------------------- generic properties


def test_specs_and_oracles_agree():
    assert set(SPECS) == set(ORACLES)


@pytest.mark.parametrize("name", NAMES)
def test_random_inputs_are_valid(name):
    spec = SPECS[name]
    dims = default_dims(name)
    x, p = random_inputs(name, B, 5, H, dims, seed=3)
    x2, _ = random_inputs(name, B, 5, H, dims, seed=3)
    assert set(x) == set(spec.inputs) and set(p) == set(spec.params)
    for n, ds in spec.inputs.items():
        assert x[n].shape == (B, 5, H, *(dims[d] for d in ds)) and x[n].dtype == torch.float32
        assert torch.equal(x[n], x2[n])
    for n, ds in spec.params.items():
        assert p[n].shape == (H, *(dims[d] for d in ds))
    for n, (lo, hi) in spec.ranges.items():
        t = {**x, **p}[n]
        assert (t > lo).all() and (t < hi).all(), n
    for n in spec.l2_normalised:
        close(x[n].norm(dim=-1), torch.ones(x[n].shape[:-1]))
    xb, _ = random_inputs(name, B, 5, H, dims, dtype=torch.bfloat16, seed=3)
    assert all(t.dtype == torch.bfloat16 for t in xb.values())


@pytest.mark.parametrize("name", NAMES)
def test_oracle_shapes_and_declared_init(name):
    spec, dims = SPECS[name], default_dims(name)
    x, p, _, out, fin = run(name)
    assert set(out) == set(spec.outputs) and set(fin) == set(spec.states)
    for n, ds in spec.outputs.items():
        assert out[n].shape == (B, T, H, *(dims[d] for d in ds)) and out[n].dtype == torch.float32
        assert torch.isfinite(out[n]).all()
    for n, (ds, _) in spec.states.items():
        assert fin[n].shape == (B, H, *(dims[d] for d in ds)) and fin[n].dtype == torch.float32
    out2, fin2 = ORACLES[name](x, p, default_state(name, B, H, dims))
    for n in out:
        close(out2[n], out[n], rtol=0)
    for n in fin:
        close(fin2[n], fin[n], rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_oracle_resumes_from_its_final_state(name):
    """Running T steps equals running 15 steps, then T - 15 from the returned state."""
    x, p, s, out, fin = run(name, init=True)
    first = {n: t[:, :15] for n, t in x.items()}
    rest = {n: t[:, 15:] for n, t in x.items()}
    out1, mid = ORACLES[name](first, p, s)
    out2, fin2 = ORACLES[name](rest, p, mid)
    for n in out:
        close(torch.cat([out1[n], out2[n]], 1), out[n])
    for n in fin:
        close(fin2[n], fin[n])


# ---------------------------------------------------------------- matrix-state cross-checks


def matrix_loop(q, k, v, log_decay, S):
    """S_t = exp(log_decay_t)[K] * S_{t-1} + k_t v_t^T, o_t = q_t S_t, written out per step."""
    os = []
    for t in range(q.shape[1]):
        S = log_decay[:, t].exp()[..., None] * S + k[:, t, ..., :, None] * v[:, t, ..., None, :]
        os.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(os, 1), S


def delta_loop(q, keys, values, betas, log_decay, S):
    """Per step: S *= exp(g); then for each (k, v, beta): S += beta k (v - k^T S)^T; o = q S."""
    os = []
    for t in range(q.shape[1]):
        decay = log_decay[:, t].exp()                        # [B, H] or key-wise [B, H, K]
        S = (decay[..., None] if decay.dim() == 3 else decay[..., None, None]) * S
        for k, v, beta in zip(keys, values, betas):
            kt, vt = k[:, t], v[:, t]
            err = vt - torch.einsum("bhk,bhkv->bhv", kt, S)
            S = S + beta[:, t, ..., None, None] * kt[..., :, None] * err[..., None, :]
        os.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(os, 1), S


@pytest.mark.parametrize("init", [False, True])
def test_gla_matches_paper_loop(init):
    x, _, s, out, fin = run("gla", init=init)
    S0 = s["S"] if init else torch.zeros_like(fin["S"])
    o, S = matrix_loop(x["q"] * 8 ** -0.5, x["k"], x["v"], x["g"], S0)
    close(out["o"], o)
    close(fin["S"], S)


@pytest.mark.parametrize("init", [False, True])
def test_simple_gla_matches_fla_chunk_form(init):
    x, _, s, out, fin = run("simple_gla", init=init)
    S0 = s["S"] if init else None
    o, S = naive_chunk_simple_gla(x["q"], x["k"], x["v"], x["g"], initial_state=S0,
                                  output_final_state=True, chunk_size=16)
    close(out["o"], o)
    close(fin["S"], S)
    if not init:
        close(out["o"], naive_parallel_simple_gla(x["q"], x["k"], x["v"], x["g"])[0])


def test_retnet_matches_fla_naive_retention():
    """naive_retention fixes gamma_h = 1 - 2^(-5-h) and is head-first [B, H, T, D]."""
    x, _ = random_inputs("retnet", B, T, H)
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(H, dtype=torch.float32))
    out, _ = ORACLES["retnet"](x, {"gamma": gamma}, None)
    o = naive_retention(*(x[n].transpose(1, 2) for n in ("q", "k", "v"))).transpose(1, 2)
    close(out["o"], o)


@pytest.mark.parametrize("init", [False, True])
def test_linear_attn_matches_paper_loop(init):
    x, _, s, out, fin = run("linear_attn", init=init)
    S0 = s["S"] if init else torch.zeros_like(fin["S"])
    o, S = matrix_loop(x["q"] * 8 ** -0.5, x["k"], x["v"], torch.zeros_like(x["q"]), S0)
    close(out["o"], o)
    close(fin["S"], S)


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet", "kda", "deltaproduct"])
@pytest.mark.parametrize("init", [False, True])
def test_delta_family_matches_paper_loop(name, init):
    x, _, s, out, fin = run(name, init=init)
    S0 = s["S"] if init else torch.zeros_like(fin["S"])
    g = x.get("g", torch.zeros(x["q"].shape[:3]))
    if name == "deltaproduct":
        kvb = ([x["k1"], x["k2"]], [x["v1"], x["v2"]], [x["beta1"], x["beta2"]])
    else:
        kvb = ([x["k"]], [x["v"]], [x["beta"]])
    o, S = delta_loop(x["q"] * 8 ** -0.5, *kvb, g, S0)
    close(out["o"], o)
    close(fin["S"], S)


@pytest.mark.parametrize("init", [False, True])
def test_rwkv7_matches_paper_value_by_key_form(init):
    """The paper's orientation: S[V, K] <- S (diag(w) - kk^T (a * kk)) + v^T k, o = S r."""
    x, _, s, out, fin = run("rwkv7", init=init)
    S = s["S"].transpose(-1, -2) if init else torch.zeros_like(fin["S"]).transpose(-1, -2)
    eye = torch.eye(x["r"].shape[-1])
    for t in range(T):
        kk, a = x["kk"][:, t], x["a"][:, t]
        M = eye * x["g"][:, t].exp()[..., None, :] - kk[..., :, None] * (a * kk)[..., None, :]
        S = S @ M + x["v"][:, t, ..., :, None] * x["k"][:, t, ..., None, :]
        close(out["o"][:, t], torch.einsum("bhvk,bhk->bhv", S, x["r"][:, t]))
    close(fin["S"], S.transpose(-1, -2))


@pytest.mark.parametrize("init", [False, True])
def test_gated_deltanet_matches_fla_chunk_form(init):
    x, _, s, out, fin = run("gated_deltanet", init=init)
    o, S = naive_chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], chunk_size=16,
                                        initial_state=s["S"] if init else None,
                                        output_final_state=True)
    close(out["o"], o)
    close(fin["S"], S)


@pytest.mark.parametrize("init", [False, True])
def test_hgrn2_matches_paper_loop(init):
    x, _, s, out, fin = run("hgrn2", init=init)
    S0 = s["S"] if init else torch.zeros_like(fin["S"])
    o, S = matrix_loop(x["q"], 1 - x["g"].exp(), x["v"], x["g"], S0)
    close(out["o"], o)
    close(fin["S"], S)


@pytest.mark.parametrize("init", [False, True])
def test_mamba2_matches_the_ssd_paper_loop(init):
    """The oracle (fla's simple GLA with q = C, k = dt B, v = x, g = dt A, scale 1) against the
    SSD recurrence written out: h = e^{dt A} h + dt B x^T, y = h^T C (Dao & Gu 2024)."""
    x, p, s, out, fin = run("mamba2", init=init)
    h = s["h"] if init else torch.zeros_like(fin["h"])
    ys = []
    for t in range(x["x"].shape[1]):
        dt = x["dt"][:, t]                                       # [B, H]
        h = torch.exp(dt * p["A"])[..., None, None] * h + torch.einsum(
            "bh,bhn,bhp->bhnp", dt, x["B"][:, t], x["x"][:, t])
        ys.append(torch.einsum("bhn,bhnp->bhp", x["C"][:, t], h))
    close(out["y"], torch.stack(ys, 1))
    close(fin["h"], h)


@pytest.mark.parametrize("init", [False, True])
def test_mamba_matches_the_selective_scan_paper_loop(init):
    """The oracle (fla's HGRN recurrence over folded lanes) against mamba_ssm's
    selective_scan_ref written out: deltaA = exp(delta A), deltaB_u = delta B u, y = h C."""
    x, p, s, out, fin = run("mamba", init=init)
    delta, u = x["dt"], x["x"]                                   # [B, T, H, D]
    deltaA = torch.exp(torch.einsum("bthd,hdn->bthdn", delta, p["A"]))
    deltaB_u = torch.einsum("bthd,bthn,bthd->bthdn", delta, x["B"], u)
    h = s["h"] if init else torch.zeros_like(fin["h"])
    ys = []
    for t in range(u.shape[1]):
        h = deltaA[:, t] * h + deltaB_u[:, t]
        ys.append(torch.einsum("bhdn,bhn->bhd", h, x["C"][:, t]))
    close(out["y"], torch.stack(ys, 1))
    close(fin["h"], h)


@pytest.mark.parametrize("init", [False, True])
def test_mamba_matches_fla_gla_per_channel(init):
    """S6 channel d is GLA over N with one value: g = dt_d A_d, k = dt_d B, v = x_d, q = C."""
    x, p, s, out, fin = run("mamba", init=init)
    Bb, Tt, Hh, D = x["x"].shape
    N = x["B"].shape[-1]
    fold = lambda t: t.reshape(Bb, Tt, Hh * D, *t.shape[4:])    # noqa: E731
    g = fold(x["dt"][..., None] * p["A"])                        # [B, T, H*D, N]
    k = fold(x["dt"][..., None] * x["B"][..., None, :])
    q = fold(x["C"][..., None, :].expand(Bb, Tt, Hh, D, N)) * N ** 0.5
    v = fold(x["x"][..., None])
    S0 = s["h"].reshape(Bb, Hh * D, N, 1) if init else None
    o, S = naive_recurrent_gla(q, k, v, g, initial_state=S0, output_final_state=True)
    close(out["y"], o.reshape(Bb, Tt, Hh, D))
    close(fin["h"], S.reshape(Bb, Hh, D, N))


@pytest.mark.parametrize("init", [False, True])
def test_mlstm_matches_unstabilised_form_via_fla(init):
    """Numerator and normaliser are both simple GLA with k' = exp(i) K^-1/2 k (fla, scale 1)."""
    x, _, s, out, fin = run("mlstm", init=init)
    k = x["i"].exp()[..., None] * x["k"] * 8 ** -0.5
    C0, n0 = (s["C"], s["n"][..., None]) if init else (None, None)
    num, C = naive_chunk_simple_gla(x["q"], k, x["v"], x["f"], initial_state=C0,
                                    output_final_state=True, chunk_size=16, scale=1.0)
    qn, n = naive_chunk_simple_gla(x["q"], k, torch.ones_like(x["v"][..., :1]), x["f"],
                                   initial_state=n0, output_final_state=True, chunk_size=16,
                                   scale=1.0)
    close(out["h"], num / qn.abs().clamp_min(1.0))
    close(fin["C"], C)
    close(fin["n"], n[..., 0])


# ---------------------------------------------------------------- cells written out


def sigma(x):
    return 1 / (1 + torch.exp(-x))


@pytest.mark.parametrize("init", [False, True])
def test_lstm_cell_matches_equations(init):
    x, p, s, out, fin = run("lstm", init=init)
    h = s["h"] if init else torch.zeros_like(fin["h"])
    c = s["c"] if init else torch.zeros_like(fin["c"])
    R = lambda n, h: torch.einsum("hij,bhj->bhi", p[n], h)  # noqa: E731
    for t in range(T):
        i = sigma(x["xi"][:, t] + R("Ri", h))
        f = sigma(x["xf"][:, t] + R("Rf", h))
        z = torch.tanh(x["xz"][:, t] + R("Rz", h))
        o = sigma(x["xo"][:, t] + R("Ro", h))
        c = f * c + i * z
        h = o * torch.tanh(c)
        close(out["y"][:, t], h)
    close(fin["c"], c)


@pytest.mark.parametrize("init", [False, True])
def test_gru_cell_matches_equations(init):
    x, p, s, out, fin = run("gru", init=init)
    h = s["h"] if init else torch.zeros_like(fin["h"])
    R = lambda n, h: torch.einsum("hij,bhj->bhi", p[n], h)  # noqa: E731
    for t in range(T):
        r = sigma(x["xr"][:, t] + R("Rr", h))
        z = sigma(x["xz"][:, t] + R("Rz", h))
        n = torch.tanh(x["xn"][:, t] + r * (R("Rn", h) + p["bn"]))
        h = (1 - z) * n + z * h
        close(out["y"][:, t], h)


# ---------------------------------------------------------------- closed forms of scans


def linear_scan_closed_form(a, b, h0):
    """h_t = a_t h_{t-1} + b_t as h_t = P_t (h0 + sum_{s<=t} b_s / P_s), P_t = prod a, in fp64."""
    a, b, h0 = a.double(), b.double(), h0.double()
    P = torch.cumprod(a, dim=1)
    return P * (h0[:, None] + torch.cumsum(b / P, dim=1))


def scan_coefficients(name, x, p):
    if name == "mingru":
        z = sigma(x["xz"])
        return 1 - z, z * x["xh"]
    if name == "minlstm":
        f, i = sigma(x["xf"]), sigma(x["xi"])
        return f / (f + i), i / (f + i) * x["xh"]
    if name == "lru":
        lam = torch.exp(-torch.exp(p["nu"])).expand_as(x["x"])
        return lam, torch.sqrt(1 - lam ** 2) * x["x"]
    if name == "rglru":
        a = torch.exp(8 * sigma(x["xr"]) * F.logsigmoid(p["Lambda"]))
        return a, torch.sqrt(1 - a ** 2) * sigma(x["xi"]) * x["x"]
    if name == "hgrn":
        return x["g"].exp(), x["x"]
    raise KeyError(name)


@pytest.mark.parametrize("name", ["mingru", "minlstm", "lru", "rglru", "hgrn"])
@pytest.mark.parametrize("init", [False, True])
def test_elementwise_scans_match_closed_form(name, init):
    x, p, s, out, fin = run(name, T=20, init=init)
    (y_name,), (h_name,) = SPECS[name].outputs, SPECS[name].states
    h0 = s[h_name] if init else torch.zeros_like(fin[h_name])
    y = linear_scan_closed_form(*scan_coefficients(name, x, p), h0)
    close(out[y_name], y.float())
    close(fin[h_name], y[:, -1].float())


def test_hgrn_kernel_input_is_the_gated_candidate():
    """The paper's h = f h + (1 - f) c is the kernel fed with x = (1 - exp(g)) c."""
    x, _ = random_inputs("hgrn", B, T, H)
    c = x["x"]
    out, _ = ORACLES["hgrn"]({"x": (1 - x["g"].exp()) * c, "g": x["g"]}, {}, None)
    h = torch.zeros(B, H, c.shape[-1])
    for t in range(T):
        f = x["g"][:, t].exp()
        h = f * h + (1 - f) * c[:, t]
        close(out["o"][:, t], h)


@pytest.mark.parametrize("init", [False, True])
def test_maxplus_matches_cummax_closed_form(init):
    """m_t = c_t + max(m_0, max_{s<=t} (x_s - c_s)), with c_t = sum_{r<=t} a_r."""
    x, _, s, out, fin = run("maxplus", init=init)
    c = torch.cumsum(x["a"].double(), 1)
    best = torch.cummax(x["x"].double() - c, dim=1).values
    if init:
        best = torch.maximum(best, s["m"].double()[:, None])
    close(out["y"], (c + best).float())
    close(fin["m"], (c + best)[:, -1].float())


@pytest.mark.parametrize("init", [False, True])
def test_logsumexp_matches_logcumsumexp(init):
    """s_t = c_t + logaddexp(s_0, logcumsumexp_{s<=t}(lb_s - c_s)), with c_t = sum la."""
    x, _, s, out, fin = run("logsumexp", init=init)
    c = torch.cumsum(x["la"].double(), 1)
    acc = torch.logcumsumexp(x["lb"].double() - c, dim=1)
    if init:
        acc = torch.logaddexp(acc, s["s"].double()[:, None])
    close(out["y"], (c + acc).float())
    close(fin["s"], (c + acc)[:, -1].float())


def test_ranges_are_the_declared_constants():
    assert NEG == (-math.inf, 0.0) and UNIT == (0.0, 1.0) and POS == (0.0, math.inf)
