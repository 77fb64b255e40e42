"""External baselines for `seqc bench`: independent chunkwise implementations of a stdlib spec.

flash-linear-attention (PyPI `fla-core`) ships pure-PyTorch chunkwise references; where one
computes exactly a stdlib spec (same scale, layout and gates), `seqc bench` times it beside the
seqc backends. Each entry adapts the call tensors to the baseline's layout outside the timed call
and returns the output `o` in the call layout [B, T, H, V] (a head-first result is transposed, a
view), so that `seqc bench` can check it against the reference before timing it.
"""
from __future__ import annotations


def _simple_gla(t, sizes):
    from fla.ops.simple_gla.naive import naive_chunk_simple_gla
    return lambda: naive_chunk_simple_gla(t["q"], t["k"], t["v"], t["g"])[0]


def _gated_deltanet(t, sizes):
    from fla.ops.gated_delta_rule.naive import naive_chunk_gated_delta_rule
    return lambda: naive_chunk_gated_delta_rule(t["q"], t["k"], t["v"], t["g"], t["beta"])[0]


def _kda(t, sizes):
    from fla.ops.kda.naive import naive_chunk_kda
    if sizes["T"] % 64:
        return None
    return lambda: naive_chunk_kda(t["q"], t["k"], t["v"], t["g"], t["beta"])[0]


def _rwkv7(t, sizes):
    """fla's generalised delta rule (head-first, q scaled by K^-1/2, which RWKV-7 does not use):
    S <- exp(gk) S + k v^T + beta (alpha^T S) with alpha = -kk, beta = a * kk."""
    from fla.ops.generalized_delta_rule.dplr.naive import dplr_chunkwise
    if sizes["T"] % 32:
        return None
    r, k, v, kk, a, g = (t[n].transpose(1, 2).contiguous() for n in ("r", "k", "v", "kk", "a", "g"))
    r = r * sizes["K"] ** 0.5
    return lambda: dplr_chunkwise(r, k, v, -kk, a * kk, g)[0].transpose(1, 2)


def _rwkv6(t, sizes):
    """fla's naive_chunk_rwkv6 (head-first, no scale: r is scaled by K^-1/2 here, as rwkv6.seq
    does), the bonus `u` [H, K] as it is."""
    from fla.ops.rwkv6.chunk_naive import naive_chunk_rwkv6
    if sizes["T"] % 32:
        return None
    r, k, v, w = (t[n].transpose(1, 2).contiguous() for n in ("r", "k", "v", "w"))
    r = r * sizes["K"] ** -0.5
    return lambda: naive_chunk_rwkv6(r, k, v, w, t["u"]).transpose(1, 2)


def _deltanet(t, sizes):
    """fla's delta_rule_chunkwise (head-first) scales q by K^-1/2 itself, as deltanet.seq does."""
    from fla.ops.delta_rule.naive import delta_rule_chunkwise
    if sizes["T"] % 32:
        return None
    q, k, v, beta = (t[n].transpose(1, 2).contiguous() for n in ("q", "k", "v", "beta"))
    return lambda: delta_rule_chunkwise(q, k, v, beta)[0].transpose(1, 2)


BASELINES = {
    "simple_gla": ("fla naive_chunk_simple_gla", _simple_gla),
    "gated_deltanet": ("fla naive_chunk_gated_delta_rule", _gated_deltanet),
    "deltanet": ("fla delta_rule_chunkwise", _deltanet),
    "kda": ("fla naive_chunk_kda", _kda),
    "rwkv7": ("fla dplr_chunkwise", _rwkv7),
    "rwkv6": ("fla naive_chunk_rwkv6", _rwkv6),
}


def baseline_for(name: str, tensors: dict, sizes: dict):
    """(label, zero-argument callable returning `o`), a note (str) why there is none, or None."""
    if name not in BASELINES:
        return None
    label, make = BASELINES[name]
    try:
        fn = make(tensors, sizes)
    except ImportError as error:
        return f"baseline {label} skipped: {error.name or error} is not installed (pip install fla-core einops)"
    if fn is None:
        return f"baseline {label} skipped: it needs T a multiple of its chunk size"
    return label, fn
