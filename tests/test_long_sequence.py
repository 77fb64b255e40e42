"""Numerics over long sequences: T = 16384 with decays near 0 and near 1, torch vs reference, fp64.

Gates near 0 (log decay -40: a chunk of 64 steps cumulates to -2560) would overflow any
exponential of a positive cumulated gap; gates near 1 (log decay -1e-4) keep state for the whole
sequence. The chunk families must stay finite and agree with the step loop to rounding:
rtol = 1e-9 relative to the largest value (fp64). Small B, H and dims keep this a few seconds.
"""
import pytest
import torch

from oracles import random_inputs, random_state

T = 16384
B, H = 1, 1
DIMS = {"K": 4, "V": 4, "D": 4}
RTOL = 1e-9


def extreme_log_decays(shape, gen):
    """Half the entries near 0 (log -40), half near 1 (log -1e-4), with some randomness."""
    near_zero = -40.0 * (1 + torch.rand(shape, generator=gen, dtype=torch.float64))
    near_one = -1e-4 * torch.rand(shape, generator=gen, dtype=torch.float64)
    pick = torch.rand(shape, generator=gen, dtype=torch.float64) < 0.5
    return torch.where(pick, near_zero, near_one)


def case(name, gate):
    dims = {d: DIMS[d] for d in ("K", "V", "D") if d in SPEC_DIMS[name]}
    x, p = random_inputs(name, B, T, H, dims=dims, dtype=torch.float64, seed=5)
    gen = torch.Generator().manual_seed(11)
    x[gate] = extreme_log_decays(x[gate].shape, gen)
    s = {n: v.double() for n, v in random_state(name, B, H, dims=dims, seed=5).items()}
    return x, p, s


SPEC_DIMS = {"gla": "KV", "simple_gla": "KV", "gated_deltanet": "KV", "hgrn": "D"}
GATES = {"gla": "g", "simple_gla": "g", "gated_deltanet": "g", "hgrn": "g"}


@pytest.mark.parametrize("name", sorted(GATES))
def test_long_sequence_extreme_decays(name):
    import seqc
    x, p, s = case(name, GATES[name])
    program = seqc.load(name)
    got = program.kernel(backend="torch")(**x, **p, initial_state=s, output_final_state=True)
    want = program.kernel(backend="reference")(**x, **p, initial_state=s, output_final_state=True)
    for n in want.keys():
        assert torch.isfinite(got[n]).all(), f"{name}: output {n} is not finite"
        scale = max(1.0, want[n].abs().max().item())
        torch.testing.assert_close(got[n], want[n], rtol=RTOL, atol=RTOL * scale)
    for n, state in want.final_state.items():
        scale = max(1.0, state.abs().max().item())
        torch.testing.assert_close(got.final_state[n].double(), state, rtol=RTOL,
                                   atol=RTOL * scale)


@pytest.mark.parametrize("name", sorted(GATES))
def test_strong_decays_in_fp32(name):
    """Log decays of about -25 a step: within a chunk the cumulated gaps pass -87, where fp32 exp
    turns denormal; the chunk families flush those factors to 0 (helpers `_exp`) and must still
    agree with the step loop to fp32 rounding."""
    import seqc
    dims = {d: DIMS[d] for d in ("K", "V", "D") if d in SPEC_DIMS[name]}
    x, p = random_inputs(name, B, 500, 2, dims=dims, seed=7)
    x[GATES[name]] = x[GATES[name]] * 30
    s = random_state(name, B, 2, dims=dims, seed=7)
    program = seqc.load(name)
    got = program.kernel(backend="torch")(**x, **p, initial_state=s, output_final_state=True)
    want = program.kernel(backend="reference")(**x, **p, initial_state=s, output_final_state=True)
    for n in want.keys():
        scale = max(1.0, want[n].abs().max().item())
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-5 * scale)
