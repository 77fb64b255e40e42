"""Per-token decoding time of `seqc.nn.Mixer` on the CPU against a hand-written torch step.

For gated_deltanet and gla: a Mixer (short convolutions on q, k, v, output gate and RMSNorm) and
the same layer's decoding step written by hand in plain torch, reading the Mixer's own weights
(checked equal first), each fed one token at a time with its cache. Also the recurrence alone:
the Mixer's step kernel (one step of the reference step loop, through the validating kernel call)
against the hand-written state update. Prints microseconds per token (median of REPEATS runs of
TOKENS tokens, the two sides timed in alternation) and the ratios; the target is at most 2x.

    python benchmarks/mixer_step.py [--hidden 256] [--heads 4] [--batch 1] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from seqc.nn import Mixer

TOKENS, REPEATS = 200, 7


def gated_deltanet_update(inputs, S):
    """One step of Gated DeltaNet: S = exp(g) S + beta k (v - k^T exp(g) S); o = S^T q / sqrt(K)."""
    q, k, v, g, beta = (inputs[n][:, 0] for n in ("q", "k", "v", "g", "beta"))
    S = S * g.exp()[..., None, None]
    delta = v - torch.einsum("bhk,bhkv->bhv", k, S)
    S = S + (beta[..., None] * k)[..., :, None] * delta[..., None, :]
    return torch.einsum("bhk,bhkv->bhv", q * q.shape[-1] ** -0.5, S), S


def gla_update(inputs, S):
    """One step of GLA: S = diag(exp g) S + k v^T; o = S^T q / sqrt(K)."""
    q, k, v, g = (inputs[n][:, 0] for n in ("q", "k", "v", "g"))
    S = S * g.exp()[..., :, None] + k[..., :, None] * v[..., None, :]
    return torch.einsum("bhk,bhkv->bhv", q * q.shape[-1] ** -0.5, S), S


SPECS = {
    "gated_deltanet": (gated_deltanet_update, dict(short_conv=("q", "k", "v"), l2norm=("q", "k"))),
    "gla": (gla_update, dict(short_conv=("q", "k", "v"))),
}


class HandStep:
    """The Mixer's layer, one token, written out in torch with the Mixer's weights."""

    def __init__(self, mixer: Mixer, update):
        self.m, self.update = mixer, update
        self.spec = mixer.program.spec

    def __call__(self, x, cache):
        m, (S, tails) = self.m, cache
        B, H = x.shape[0], m.num_heads
        inputs, new_tails = {}, {}
        for t in self.spec.inputs:
            u = F.linear(x, m.in_proj[t.name].weight, m.in_proj[t.name].bias)
            if t.name in m.short_conv:
                window = torch.cat([tails[t.name], u], dim=1)
                new_tails[t.name] = window[:, 1:]
                u = F.silu(torch.einsum("bwc,cw->bc", window, m.conv[t.name].weight[:, 0]))[:, None]
            elif t.range is not None:
                u = F.logsigmoid(u) if t.range.high == 0 else torch.sigmoid(u)
            u = u.view(B, 1, H, *(m.sizes[d] for d in t.dims))
            inputs[t.name] = F.normalize(u, dim=-1) if t.name in m.l2norm else u
        o, S = self.update(inputs, S)
        gate = F.linear(x, m.gate_proj.weight).view(B, H, -1)
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + m.norm.eps) * m.norm.weight
        y = F.linear((o * F.silu(gate)).reshape(B, 1, -1), m.out_proj.weight)
        return y, (S, new_tails)

    def empty_cache(self, B):
        m = self.m
        state = self.spec.states[0]
        S = torch.zeros(B, m.num_heads, *(m.sizes[d] for d in state.dims))
        tails = {n: torch.zeros(B, m.conv[n].kernel_size - 1, m.in_proj[n].out_features)
                 for n in m.short_conv}
        return S, tails


def decode_time(step, x, cache) -> float:
    """Microseconds per token of decoding x [B, TOKENS, hidden] one token at a time."""
    start = time.perf_counter()
    for t in range(x.shape[1]):
        _, cache = step(x[:, t:t + 1], cache)
    return (time.perf_counter() - start) / x.shape[1] * 1e6


def paired(first, second, x) -> tuple[float, float]:
    """Median us per token of two (step, empty cache) pairs, timed in alternation so that a
    shared machine's load falls on both alike."""
    times = [[], []]
    for _ in range(REPEATS):
        for runs, (step, cache) in zip(times, (first, second)):
            runs.append(decode_time(step, x, cache))
    return statistics.median(times[0]), statistics.median(times[1])


def recurrence_only(mixer: Mixer, update, x):
    """(step kernel us, hand update us) per token on the Mixer's projected inputs."""
    inputs, _ = mixer.project(x[:, :1])
    state = mixer.program.spec.states[0]
    S0 = torch.zeros(x.shape[0], mixer.num_heads, *(mixer.sizes[d] for d in state.dims))
    kernel = lambda _x, states: (None, mixer.recurrence(inputs, states, True)[1])
    hand = lambda _x, S: (None, update(inputs, S)[1])
    return paired((kernel, {state.name: S0}), (hand, S0), x)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"B={args.batch} hidden={args.hidden} H={args.heads} head dims "
          f"{args.hidden // args.heads}, {args.threads} thread(s), us per token")
    print(f"{'spec':16} {'Mixer':>8} {'hand':>8} {'ratio':>6}   {'kernel':>8} {'hand':>8} {'ratio':>6}")
    for name, (update, options) in SPECS.items():
        mixer = Mixer(name, args.hidden, args.heads, **options).eval()
        hand = HandStep(mixer, update)
        x = torch.randn(args.batch, TOKENS, args.hidden)
        _check_equal(mixer, hand, x[:, :8])
        layer_mixer, layer_hand = paired(
            (lambda xt, c: mixer(xt, cache=c, use_cache=True), None),
            (hand, hand.empty_cache(args.batch)), x)
        kernel, update_hand = recurrence_only(mixer, update, x)
        print(f"{name:16} {layer_mixer:8.1f} {layer_hand:8.1f} {layer_mixer / layer_hand:5.2f}x"
              f"   {kernel:8.1f} {update_hand:8.1f} {kernel / update_hand:5.2f}x")


def _check_equal(mixer, hand, x) -> None:
    cache, hand_cache = None, hand.empty_cache(x.shape[0])
    for t in range(x.shape[1]):
        y, cache = mixer(x[:, t:t + 1], cache=cache, use_cache=True)
        y_hand, hand_cache = hand(x[:, t:t + 1], hand_cache)
        torch.testing.assert_close(y, y_hand, atol=1e-5, rtol=1e-5)


if __name__ == "__main__":
    main()
