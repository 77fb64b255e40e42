"""fp32 precision of the chunk forms when log decays span many orders of magnitude in one sequence.

Mamba-2's log decay `dt * A` with `dt` from 1e-6 to 1e4 (log-uniform, every step drawn anew), or a
log gate `g = -(1e-6 .. 1e4)`: a large step early in a chunk makes the cumulated log decay `b`
large, and a gap `b_i - b_j` between two later steps taken as a difference of prefix sums carries
the rounding of `b` (its ulp), not of the gap: fp32 torch was 1.2e-4 off the fp64 reference for
mamba2 at T = 4096 (the fp32 reference 1.1e-7), 2.6e-4 to 9e-4 for the others at T = 512-1024.
The gaps are now summed over the steps between them (chunk.md, precision): 0.7e-7 to 1.7e-7.
Bound: 1e-6 of the output's magnitude, about 10x the fp32 reference's own error here. One spec a
form: chunk (scalar, key-wise), chunk_delta (scalar, key-wise), chunk_dplr (scalar, key-wise).
"""
import functools

import pytest
import torch

from oracles import random_inputs

B, H, T = 1, 2, 512


@functools.lru_cache(maxsize=None)
def kernel(name, backend):
    import seqc
    return seqc.load(name).kernel(backend=backend)


def relative_error(got, want):
    return ((got.double() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("name,gate", [("mamba2", "dt"), ("gla", "g"), ("gated_deltanet", "g"),
                                       ("kda", "g"), ("comba", "g"), ("rwkv7", "g")])
def test_fp32_chunk_form_with_decays_over_ten_orders_of_magnitude(name, gate):
    x, p = random_inputs(name, B, T, H, seed=0)
    u = torch.rand(x[gate].shape, generator=torch.Generator().manual_seed(1))
    magnitude = 10 ** (10 * u - 6)                          # 1e-6 .. 1e4
    x[gate] = magnitude if gate == "dt" else -magnitude
    wide = {n: t.double() for n, t in x.items()}, {n: t.double() for n, t in p.items()}
    want = kernel(name, "reference")(**wide[0], **wide[1], output_final_state=True)
    got = kernel(name, "torch")(**x, **p, output_final_state=True)
    reference32 = kernel(name, "reference")(**x, **p, output_final_state=True)
    for n in want.keys():
        assert relative_error(reference32[n], want[n]) < 1e-6        # the bar: fp32 itself
        assert relative_error(got[n], want[n]) < 1e-6, n
    for n in want.final_state:
        assert relative_error(got.final_state[n], want.final_state[n]) < 1e-6, n
