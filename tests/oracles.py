"""Independent oracles for the stdlib specs: they never import seqc.

Every oracle follows seqc's call-time layout:
    inputs  [B, T, H, *dims]   params [H, *dims]   states [B, H, *dims]   outputs [B, T, H, *dims]
`ORACLES[name](inputs, params, initial_state)` returns `(outputs, final_state)`, both dicts of
fp32 tensors; it upcasts whatever it is given to fp32 first.

Where flash-linear-attention (fla-core) has a pure-PyTorch reference computing the same thing, the
oracle wraps it (Mamba-2 is simple GLA, Mamba's recurrence is HGRN's elementwise one); lstm and gru
use torch.nn's cells; the other seven (mingru, minlstm, lru, rglru, mlstm, maxplus, logsumexp)
write the paper's equations out as a plain loop over time. `SPECS` restates each spec's
interface by hand (dims, ranges, states) so that `random_inputs` can draw valid values without
seqc.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fla.ops.comba.naive import naive_recurrent_comba
from fla.ops.delta_rule.naive import delta_rule_recurrence
from fla.ops.gated_delta_product.naive import naive_recurrent_gated_delta_product
from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
from fla.ops.generalized_delta_rule.dplr.naive import dplr_recurrence
from fla.ops.gla.naive import naive_recurrent_gla
from fla.ops.hgrn.naive import naive_recurrent_hgrn
from fla.ops.kda.naive import naive_recurrent_kda
from fla.ops.linear_attn.naive import naive_recurrent_linear_attn
from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6
from fla.ops.simple_gla.naive import naive_recurrent_simple_gla

NEG = (-math.inf, 0.0)   # log gates, decays A
UNIT = (0.0, 1.0)        # betas, gamma
POS = (0.0, math.inf)    # step sizes dt


@dataclass(frozen=True)
class Spec:
    """The interface of one stdlib spec, restated by hand (kept in sync by test_stdlib_oracles)."""
    dims: tuple[str, ...]
    inputs: dict[str, tuple[str, ...]]
    outputs: dict[str, tuple[str, ...]]
    states: dict[str, tuple[tuple[str, ...], float]]
    params: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    l2_normalised: tuple[str, ...] = ()   # keys the caller L2-normalises (delta-rule family)


_QKV = {"q": ("K",), "k": ("K",), "v": ("V",)}
_SKV = {"S": (("K", "V"), 0.0)}
_OV = {"o": ("V",)}

SPECS: dict[str, Spec] = {
    "gla": Spec(("K", "V"), {**_QKV, "g": ("K",)}, _OV, _SKV, ranges={"g": NEG}),
    "simple_gla": Spec(("K", "V"), {**_QKV, "g": ()}, _OV, _SKV, ranges={"g": NEG}),
    "retnet": Spec(("K", "V"), _QKV, _OV, _SKV, params={"gamma": ()}, ranges={"gamma": UNIT}),
    "linear_attn": Spec(("K", "V"), _QKV, _OV, _SKV),
    "deltanet": Spec(("K", "V"), {**_QKV, "beta": ()}, _OV, _SKV,
                     ranges={"beta": UNIT}, l2_normalised=("k",)),
    "gated_deltanet": Spec(("K", "V"), {**_QKV, "g": (), "beta": ()}, _OV, _SKV,
                           ranges={"g": NEG, "beta": UNIT}, l2_normalised=("k",)),
    "comba": Spec(("K", "V"), {**_QKV, "p": ("K",), "g": (), "beta": ()}, _OV, _SKV,
                  ranges={"g": NEG, "beta": UNIT}, l2_normalised=("k", "p")),
    "kda": Spec(("K", "V"), {**_QKV, "g": ("K",), "beta": ()}, _OV, _SKV,
                ranges={"g": NEG, "beta": UNIT}, l2_normalised=("k",)),
    "deltaproduct": Spec(("K", "V"),
                         {"q": ("K",), "k1": ("K",), "k2": ("K",), "v1": ("V",), "v2": ("V",),
                          "beta1": (), "beta2": ()}, _OV, _SKV,
                         ranges={"beta1": UNIT, "beta2": UNIT}, l2_normalised=("k1", "k2")),
    "rwkv7": Spec(("K", "V"), {"r": ("K",), "k": ("K",), "v": ("V",), "kk": ("K",), "g": ("K",),
                                "a": ("K",)}, _OV, _SKV,
                  ranges={"g": NEG, "a": UNIT}, l2_normalised=("kk",)),
    "rwkv6": Spec(("K", "V"), {"r": ("K",), "k": ("K",), "v": ("V",), "w": ("K",)}, _OV, _SKV,
                  params={"u": ("K",)}, ranges={"w": NEG}),
    "hgrn": Spec(("D",), {"x": ("D",), "g": ("D",)}, {"o": ("D",)}, {"h": (("D",), 0.0)},
                 ranges={"g": NEG}),
    "hgrn2": Spec(("K", "V"), {"q": ("K",), "v": ("V",), "g": ("K",)}, _OV, _SKV,
                  ranges={"g": NEG}),
    "mamba2": Spec(("N", "P"), {"x": ("P",), "B": ("N",), "C": ("N",), "dt": ()},
                   {"y": ("P",)}, {"h": (("N", "P"), 0.0)}, params={"A": ()},
                   ranges={"dt": POS, "A": NEG}),
    "mamba": Spec(("D", "N"), {"x": ("D",), "B": ("N",), "C": ("N",), "dt": ("D",)},
                  {"y": ("D",)}, {"h": (("D", "N"), 0.0)}, params={"A": ("D", "N")},
                  ranges={"dt": POS, "A": NEG}),
    "lstm": Spec(("D",), {n: ("D",) for n in ("xi", "xf", "xz", "xo")}, {"y": ("D",)},
                 {"h": (("D",), 0.0), "c": (("D",), 0.0)},
                 params={n: ("D", "D") for n in ("Ri", "Rf", "Rz", "Ro")}),
    "gru": Spec(("D",), {n: ("D",) for n in ("xr", "xz", "xn")}, {"y": ("D",)},
                {"h": (("D",), 0.0)},
                params={"Rr": ("D", "D"), "Rz": ("D", "D"), "Rn": ("D", "D"), "bn": ("D",)}),
    "mingru": Spec(("D",), {"xz": ("D",), "xh": ("D",)}, {"y": ("D",)}, {"h": (("D",), 0.0)}),
    "minlstm": Spec(("D",), {"xf": ("D",), "xi": ("D",), "xh": ("D",)}, {"y": ("D",)},
                    {"h": (("D",), 0.0)}),
    "lru": Spec(("D",), {"x": ("D",)}, {"y": ("D",)}, {"h": (("D",), 0.0)},
                params={"nu": ("D",)}),
    "rglru": Spec(("D",), {"x": ("D",), "xr": ("D",), "xi": ("D",)}, {"y": ("D",)},
                  {"h": (("D",), 0.0)}, params={"Lambda": ("D",)}),
    "mlstm": Spec(("K", "V"), {**_QKV, "i": (), "f": ()}, {"h": ("V",)},
                  {"C": (("K", "V"), 0.0), "n": (("K",), 0.0)}, ranges={"f": NEG}),
    "maxplus": Spec(("D",), {"a": ("D",), "x": ("D",)}, {"y": ("D",)},
                    {"m": (("D",), -math.inf)}),
    "logsumexp": Spec(("D",), {"la": ("D",), "lb": ("D",)}, {"y": ("D",)},
                      {"s": (("D",), -math.inf)}),
}

DEFAULT_DIM_SIZES = {"K": 8, "V": 12, "D": 10, "N": 8, "P": 12}


def default_dims(name: str) -> dict[str, int]:
    return {d: DEFAULT_DIM_SIZES[d] for d in SPECS[name].dims}


# ---------------------------------------------------------------- random inputs


def _draw(shape, rng, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    if rng is None:
        return x
    if rng == NEG:
        return F.logsigmoid(x + 1.0)
    if rng == UNIT:
        return torch.sigmoid(x)
    if rng == POS:
        return F.softplus(x)
    raise ValueError(f"no sampler for range {rng}")


def random_inputs(name: str, B: int, T: int, H: int, dims: dict[str, int] | None = None,
                  dtype: torch.dtype = torch.float32, seed: int = 0):
    """Valid random `(inputs, params)` for spec `name`, cast to `dtype`.

    Values respect the declared ranges; delta-rule keys are L2-normalised; square recurrent
    matrices are scaled by D^-1/2 so the nonlinear cells do not saturate.
    """
    spec = SPECS[name]
    dims = dims or default_dims(name)
    gen = torch.Generator().manual_seed(seed)
    inputs, params = {}, {}
    for n, ds in spec.inputs.items():
        x = _draw((B, T, H, *(dims[d] for d in ds)), spec.ranges.get(n), gen)
        if n in spec.l2_normalised:
            x = F.normalize(x, dim=-1)
        inputs[n] = x.to(dtype)
    for n, ds in spec.params.items():
        x = _draw((H, *(dims[d] for d in ds)), spec.ranges.get(n), gen)
        if len(ds) == 2 and ds[0] == ds[1]:
            x = x / math.sqrt(dims[ds[0]])
        params[n] = x.to(dtype)
    return inputs, params


def random_state(name: str, B: int, H: int, dims: dict[str, int] | None = None,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """A random fp32 initial state `[B, H, *dims]` for every state of spec `name`."""
    spec = SPECS[name]
    dims = dims or default_dims(name)
    gen = torch.Generator().manual_seed(seed + 10_000)
    return {n: 0.5 * torch.randn((B, H, *(dims[d] for d in ds)), generator=gen)
            for n, (ds, _) in spec.states.items()}


def default_state(name: str, B: int, H: int, dims: dict[str, int]) -> dict[str, torch.Tensor]:
    """The declared initial state (`= 0`, `= -inf`, ...) as fp32 tensors."""
    return {n: torch.full((B, H, *(dims[d] for d in ds)), init)
            for n, (ds, init) in SPECS[name].states.items()}


def _prep(name, inputs, params, initial_state):
    """fp32 copies of inputs and params, and the initial state (the declared one if None)."""
    x = {n: t.float() for n, t in inputs.items()}
    p = {n: t.float() for n, t in params.items()}
    first = next(iter(x.values()))
    B, H = first.shape[0], first.shape[2]
    spec = SPECS[name]
    dims = {}
    for n, ds in spec.inputs.items():
        dims.update(zip(ds, x[n].shape[3:]))
    for n, ds in spec.params.items():
        dims.update(zip(ds, p[n].shape[1:]))
    s = default_state(name, B, H, dims) if initial_state is None else \
        {n: t.float().clone() for n, t in initial_state.items()}
    return x, p, s


# ---------------------------------------------------------------- fla-backed oracles


def oracle_gla(inputs, params, initial_state):
    x, _, s = _prep("gla", inputs, params, initial_state)
    o, S = naive_recurrent_gla(x["q"], x["k"], x["v"], x["g"], initial_state=s["S"],
                               output_final_state=True)
    return {"o": o.float()}, {"S": S}


def oracle_simple_gla(inputs, params, initial_state):
    x, _, s = _prep("simple_gla", inputs, params, initial_state)
    o, S = naive_recurrent_simple_gla(x["q"], x["k"], x["v"], x["g"], initial_state=s["S"],
                                      output_final_state=True)
    return {"o": o.float()}, {"S": S}


def oracle_retnet(inputs, params, initial_state):
    """Retention = simple GLA with the constant log decay log(gamma_h)."""
    x, p, s = _prep("retnet", inputs, params, initial_state)
    B, T, H = x["q"].shape[:3]
    g = p["gamma"].log().expand(B, T, H)
    o, S = naive_recurrent_simple_gla(x["q"], x["k"], x["v"], g, initial_state=s["S"],
                                      output_final_state=True)
    return {"o": o.float()}, {"S": S}


def oracle_linear_attn(inputs, params, initial_state):
    x, _, s = _prep("linear_attn", inputs, params, initial_state)
    o, S = naive_recurrent_linear_attn(x["q"], x["k"], x["v"], initial_state=s["S"],
                                       output_final_state=True)
    return {"o": o.float()}, {"S": S}


def oracle_deltanet(inputs, params, initial_state):
    """fla's delta_rule_recurrence is head-first: [B, H, T, ...]; scale K^-1/2 is built in."""
    x, _, s = _prep("deltanet", inputs, params, initial_state)
    q, k, v, beta = (x[n].transpose(1, 2) for n in ("q", "k", "v", "beta"))
    o, S = delta_rule_recurrence(q, k, v, beta, initial_state=s["S"], output_final_state=True)
    return {"o": o.transpose(1, 2).float()}, {"S": S}


def oracle_gated_deltanet(inputs, params, initial_state):
    x, _, s = _prep("gated_deltanet", inputs, params, initial_state)
    o, S = naive_recurrent_gated_delta_rule(x["q"], x["k"], x["v"], x["beta"], x["g"],
                                            initial_state=s["S"], output_final_state=True)
    return {"o": o.float()}, {"S": S}


def oracle_comba(inputs, params, initial_state):
    x, _, s = _prep("comba", inputs, params, initial_state)
    o, S = naive_recurrent_comba(x["q"], x["k"], x["v"], x["p"], x["beta"], x["g"],
                                 initial_state=s["S"], output_final_state=True)
    return {"o": o.float()}, {"S": S}


def oracle_kda(inputs, params, initial_state):
    x, _, s = _prep("kda", inputs, params, initial_state)
    o, S = naive_recurrent_kda(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=s["S"],
                               output_final_state=True)
    return {"o": o.float()}, {"S": S}


def oracle_deltaproduct(inputs, params, initial_state):
    """fla interleaves the Householder steps along time: k[:, 2t + j] is step j of token t."""
    x, _, s = _prep("deltaproduct", inputs, params, initial_state)
    B, T, H, K = x["q"].shape

    def interleave(a, b):
        return torch.stack([a, b], dim=2).reshape(B, 2 * T, H, *a.shape[3:])

    o, S = naive_recurrent_gated_delta_product(
        x["q"], interleave(x["k1"], x["k2"]), interleave(x["v1"], x["v2"]), None,
        interleave(x["beta1"], x["beta2"]), scale=K ** -0.5, initial_state=s["S"],
        output_final_state=True, num_householder=2)
    return {"o": o.float()}, {"S": S}


def oracle_rwkv7(inputs, params, initial_state):
    """fla's dplr_recurrence (head-first; S = exp(gk) S + k v^T + beta (alpha^T S)) with
    alpha = -kk, beta = a * kk as fla's RWKV-7 layer passes them; it hard-codes a K^-1/2 scale
    on q, which RWKV-7 does not use, so r is pre-multiplied by K^1/2."""
    x, _, s = _prep("rwkv7", inputs, params, initial_state)
    K = x["r"].shape[-1]
    hf = {n: t.transpose(1, 2) for n, t in x.items()}
    o, S = dplr_recurrence(hf["r"] * K ** 0.5, hf["k"], hf["v"], -hf["kk"], hf["a"] * hf["kk"],
                           hf["g"], initial_state=s["S"], output_final_state=True)
    return {"o": o.transpose(1, 2).float()}, {"S": S}


def oracle_rwkv6(inputs, params, initial_state):
    """fla's naive_recurrent_rwkv6 (head-first; o = (scale q)^T (S + u k v^T) before
    S = exp(w) S + k v^T), its default scale K^-1/2 as the spec's."""
    x, p, s = _prep("rwkv6", inputs, params, initial_state)
    hf = {n: t.transpose(1, 2) for n, t in x.items()}
    o, S = naive_recurrent_rwkv6(hf["r"], hf["k"], hf["v"], hf["w"], p["u"],
                                 initial_state=s["S"], output_final_state=True)
    return {"o": o.transpose(1, 2).float()}, {"S": S}


def oracle_hgrn(inputs, params, initial_state):
    """fla's naive_recurrent_hgrn is headless [B, T, D]: fold the heads into D."""
    x, _, s = _prep("hgrn", inputs, params, initial_state)
    B, T, H, D = x["x"].shape
    o, h = naive_recurrent_hgrn(x["x"].reshape(B, T, H * D), x["g"].reshape(B, T, H * D),
                                initial_state=s["h"].reshape(B, H * D), output_final_state=True)
    return {"o": o.reshape(B, T, H, D).float()}, {"h": h.reshape(B, H, D)}


def oracle_hgrn2(inputs, params, initial_state):
    """HGRN2 = GLA with k = 1 - exp(g); fla's naive GLA hard-codes the K^-1/2 scale, undone on q."""
    x, _, s = _prep("hgrn2", inputs, params, initial_state)
    K = x["q"].shape[-1]
    o, S = naive_recurrent_gla(x["q"] * K ** 0.5, 1 - x["g"].exp(), x["v"], x["g"],
                               initial_state=s["S"], output_final_state=True)
    return {"o": o.float()}, {"S": S}


# ---------------------------------------------------------------- Mamba through fla's recurrences


def oracle_mamba2(inputs, params, initial_state):
    """Mamba-2's SSD with A = a I (Dao & Gu 2024), h = e^{dt A} h + dt B x^T, y = h^T C, is simple
    GLA: fla's naive_recurrent_simple_gla with q = C, k = dt * B, v = x, log decay g = dt * A,
    scale 1."""
    x, p, s = _prep("mamba2", inputs, params, initial_state)
    y, h = naive_recurrent_simple_gla(x["C"], x["dt"][..., None] * x["B"], x["x"],
                                      x["dt"] * p["A"], scale=1.0, initial_state=s["h"],
                                      output_final_state=True)
    return {"y": y.float()}, {"h": h}


def oracle_mamba(inputs, params, initial_state):
    """Mamba's selective scan (Gu & Dao 2023; mamba_ssm's selective_scan_ref), per head:
    h[d, n] = exp(dt_d A_dn) h[d, n] + dt_d x_d B_n, y_d = sum_n h[d, n] C_n. The recurrence is
    elementwise: fla's naive_recurrent_hgrn (h = exp(g) h + x) over the folded [H * D * N] lanes,
    with g = dt A, x = dt x B; the read-out by C is done here."""
    x, p, s = _prep("mamba", inputs, params, initial_state)
    B, T, H, D = x["x"].shape
    N = x["B"].shape[-1]
    g = x["dt"][..., None] * p["A"]                                      # [B, T, H, D, N]
    write = (x["dt"] * x["x"])[..., None] * x["B"][..., None, :]         # [B, T, H, D, N]
    hs, h = naive_recurrent_hgrn(write.reshape(B, T, H * D * N), g.reshape(B, T, H * D * N),
                                 initial_state=s["h"].reshape(B, H * D * N),
                                 output_final_state=True)
    y = torch.einsum("bthdn,bthn->bthd", hs.reshape(B, T, H, D, N), x["C"])
    return {"y": y}, {"h": h.reshape(B, H, D, N)}


# ---------------------------------------------------------------- torch.nn cells


def oracle_lstm(inputs, params, initial_state):
    """torch.nn.LSTMCell per head: W_ih = identity on [xi; xf; xz; xo], W_hh = [Ri; Rf; Rz; Ro]."""
    x, p, s = _prep("lstm", inputs, params, initial_state)
    B, T, H, D = x["xi"].shape
    pre = torch.cat([x[n] for n in ("xi", "xf", "xz", "xo")], dim=-1)     # [B, T, H, 4D]
    ys, hs, cs = [], [], []
    for hd in range(H):
        cell = torch.nn.LSTMCell(4 * D, D)
        with torch.no_grad():
            cell.weight_ih.copy_(torch.eye(4 * D))
            cell.weight_hh.copy_(torch.cat([p[n][hd] for n in ("Ri", "Rf", "Rz", "Ro")], 0))
            cell.bias_ih.zero_()
            cell.bias_hh.zero_()
            h, c = s["h"][:, hd], s["c"][:, hd]
            out = []
            for t in range(T):
                h, c = cell(pre[:, t, hd], (h, c))
                out.append(h)
        ys.append(torch.stack(out, 1))
        hs.append(h)
        cs.append(c)
    return {"y": torch.stack(ys, 2)}, {"h": torch.stack(hs, 1), "c": torch.stack(cs, 1)}


def oracle_gru(inputs, params, initial_state):
    """torch.nn.GRUCell per head: W_ih = identity on [xr; xz; xn], W_hh = [Rr; Rz; Rn], b_hh = [0; 0; bn]."""
    x, p, s = _prep("gru", inputs, params, initial_state)
    B, T, H, D = x["xr"].shape
    pre = torch.cat([x[n] for n in ("xr", "xz", "xn")], dim=-1)
    ys, hs = [], []
    for hd in range(H):
        cell = torch.nn.GRUCell(3 * D, D)
        with torch.no_grad():
            cell.weight_ih.copy_(torch.eye(3 * D))
            cell.weight_hh.copy_(torch.cat([p[n][hd] for n in ("Rr", "Rz", "Rn")], 0))
            cell.bias_ih.zero_()
            cell.bias_hh.copy_(torch.cat([torch.zeros(2 * D), p["bn"][hd]]))
            h = s["h"][:, hd]
            out = []
            for t in range(T):
                h = cell(pre[:, t, hd], h)
                out.append(h)
        ys.append(torch.stack(out, 1))
        hs.append(h)
    return {"y": torch.stack(ys, 2)}, {"h": torch.stack(hs, 1)}


# ---------------------------------------------------------------- papers' equations


def _elementwise_loop(h, T, step):
    """Run h = step(h, t) for t < T, collecting every h: ([B, T, H, ...], final h)."""
    out = []
    for t in range(T):
        h = step(h, t)
        out.append(h)
    return torch.stack(out, 1), h


def oracle_mingru(inputs, params, initial_state):
    """Feng et al. 2024, sequential minGRU: h = (1 - z) h + z h~."""
    x, _, s = _prep("mingru", inputs, params, initial_state)
    z = torch.sigmoid(x["xz"])
    y, h = _elementwise_loop(s["h"], z.shape[1],
                             lambda h, t: (1 - z[:, t]) * h + z[:, t] * x["xh"][:, t])
    return {"y": y}, {"h": h}


def oracle_minlstm(inputs, params, initial_state):
    """Feng et al. 2024, sequential minLSTM with normalised gates f' = f/(f+i), i' = i/(f+i)."""
    x, _, s = _prep("minlstm", inputs, params, initial_state)
    f, i = torch.sigmoid(x["xf"]), torch.sigmoid(x["xi"])
    fn, in_ = f / (f + i), i / (f + i)
    y, h = _elementwise_loop(s["h"], f.shape[1],
                             lambda h, t: fn[:, t] * h + in_[:, t] * x["xh"][:, t])
    return {"y": y}, {"h": h}


def oracle_lru(inputs, params, initial_state):
    """Orvieto et al. 2023, real diagonal LRU: lambda = exp(-exp(nu)), gamma = sqrt(1 - lambda^2)."""
    x, p, s = _prep("lru", inputs, params, initial_state)
    lam = torch.exp(-torch.exp(p["nu"]))                       # [H, D]
    gamma = torch.sqrt(1 - lam ** 2)
    y, h = _elementwise_loop(s["h"], x["x"].shape[1],
                             lambda h, t: lam * h + gamma * x["x"][:, t])
    return {"y": y}, {"h": h}


def oracle_rglru(inputs, params, initial_state):
    """De et al. 2024 (Griffin), RG-LRU with c = 8: a_t = sigma(Lambda)^(c r_t)."""
    x, p, s = _prep("rglru", inputs, params, initial_state)
    r, i = torch.sigmoid(x["xr"]), torch.sigmoid(x["xi"])
    a = torch.sigmoid(p["Lambda"]) ** (8 * r)
    y, h = _elementwise_loop(
        s["h"], r.shape[1],
        lambda h, t: a[:, t] * h + torch.sqrt(1 - a[:, t] ** 2) * (i[:, t] * x["x"][:, t]))
    return {"y": y}, {"h": h}


def oracle_mlstm(inputs, params, initial_state):
    """xLSTM's stabilised mLSTM (Beck et al. 2024, eqs. 19-27), carrying m_t = max(f~ + m, i~).

    The stabilised C', n' are C, n scaled by exp(-m); the unstabilised state is returned.
    """
    x, _, s = _prep("mlstm", inputs, params, initial_state)
    q, v, ig, fg = x["q"], x["v"], x["i"], x["f"]
    B, T, H, K = q.shape
    k = x["k"] * K ** -0.5
    m = torch.zeros(B, H)
    C, n = s["C"], s["n"]
    hs = []
    for t in range(T):
        m_new = torch.maximum(fg[:, t] + m, ig[:, t])
        i_s = torch.exp(ig[:, t] - m_new)
        f_s = torch.exp(fg[:, t] + m - m_new)
        C = f_s[..., None, None] * C + i_s[..., None, None] * k[:, t, ..., :, None] * v[:, t, ..., None, :]
        n = f_s[..., None] * n + i_s[..., None] * k[:, t]
        m = m_new
        num = torch.einsum("bhk,bhkv->bhv", q[:, t], C)
        den = torch.maximum(torch.einsum("bhk,bhk->bh", q[:, t], n).abs(), torch.exp(-m))
        hs.append(num / den[..., None])
    scale = torch.exp(m)
    return {"h": torch.stack(hs, 1)}, {"C": C * scale[..., None, None], "n": n * scale[..., None]}


def oracle_maxplus(inputs, params, initial_state):
    x, _, s = _prep("maxplus", inputs, params, initial_state)
    y, m = _elementwise_loop(s["m"], x["a"].shape[1],
                             lambda m, t: torch.maximum(m + x["a"][:, t], x["x"][:, t]))
    return {"y": y}, {"m": m}


def oracle_logsumexp(inputs, params, initial_state):
    x, _, s = _prep("logsumexp", inputs, params, initial_state)
    y, sT = _elementwise_loop(s["s"], x["la"].shape[1],
                              lambda s, t: torch.logaddexp(s + x["la"][:, t], x["lb"][:, t]))
    return {"y": y}, {"s": sT}


ORACLES = {name: globals()[f"oracle_{name}"] for name in SPECS}
