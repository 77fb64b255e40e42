"""seqc's ops called exactly as fla's are (positional tensors, `scale=`, a tensor `initial_state`,
`output_final_state=True`) against fla-core's naive recurrences, and the README's three-line swap
run as written."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
from fla.ops.gla.naive import naive_recurrent_gla
from fla.ops.simple_gla.naive import naive_recurrent_simple_gla

import seqc

B, T, H, K, V = 2, 9, 3, 4, 5
SCALE = 0.37
README = Path(__file__).resolve().parent.parent / "README.md"


def _inputs(seed: int, gate_shape: tuple[int, ...]):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(*gate_shape, generator=gen))
    beta = torch.rand(B, T, H, generator=gen)
    h0 = torch.randn(B, H, K, V, generator=gen)
    return q, k, v, g, beta, h0


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_gated_deltanet_as_chunk_gated_delta_rule(backend):
    q, k, v, g, beta, h0 = _inputs(0, (B, T, H))
    chunk_gated_delta_rule = seqc.load("gated_deltanet").op(backend=backend)
    o, ht = chunk_gated_delta_rule(q, k, v, g, beta, scale=SCALE, initial_state=h0,
                                   output_final_state=True)
    want_o, want_ht = naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale=SCALE,
                                                       initial_state=h0, output_final_state=True)
    torch.testing.assert_close(o, want_o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ht, want_ht, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_gla_as_chunk_gla(backend):
    """fla's naive GLA has its scale K^-1/2 built in: the oracle gets q * SCALE * K^1/2."""
    q, k, v, g, _, h0 = _inputs(1, (B, T, H, K))
    chunk_gla = seqc.load("gla").op(backend=backend)
    o, ht = chunk_gla(q, k, v, g, scale=SCALE, initial_state=h0, output_final_state=True)
    want_o, want_ht = naive_recurrent_gla(q * SCALE * K ** 0.5, k, v, g, initial_state=h0,
                                          output_final_state=True)
    torch.testing.assert_close(o, want_o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ht, want_ht, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_simple_gla_as_chunk_simple_gla(backend):
    q, k, v, g, _, h0 = _inputs(2, (B, T, H))
    chunk_simple_gla = seqc.load("simple_gla").op(backend=backend)
    o, ht = chunk_simple_gla(q, k, v, g, scale=SCALE, initial_state=h0, output_final_state=True)
    want_o, want_ht = naive_recurrent_simple_gla(q, k, v, g, scale=SCALE, initial_state=h0,
                                                 output_final_state=True)
    torch.testing.assert_close(o, want_o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ht, want_ht, rtol=1e-5, atol=1e-5)


def test_default_scale_is_fla_default():
    q, k, v, g, beta, h0 = _inputs(3, (B, T, H))
    o, _ = seqc.load("gated_deltanet").op(backend="torch")(q, k, v, g, beta, scale=None)
    want_o, _ = naive_recurrent_gated_delta_rule(q, k, v, beta, g)
    torch.testing.assert_close(o, want_o, rtol=1e-5, atol=1e-5)


def test_readme_swap_runs_as_written():
    """The README's swap block, executed: three lines replace fla's import."""
    block = re.search(r"```python\n(# from fla\.ops.*?)```", README.read_text(), re.S).group(1)
    lines = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 3, block
    q, k, v, g, beta, h0 = _inputs(4, (B, T, H))
    scope = dict(q=q, k=k, v=v, g=g, beta=beta, scale=SCALE, h0=h0)
    exec(block, scope)           # noqa: S102 - the README's own text
    want_o, want_ht = naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale=SCALE,
                                                       initial_state=h0, output_final_state=True)
    torch.testing.assert_close(scope["o"], want_o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scope["ht"], want_ht, rtol=1e-5, atol=1e-5)
