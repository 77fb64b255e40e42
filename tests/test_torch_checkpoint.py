"""The torch backend's checkpointed slabs (`prog.kernel("torch", checkpoint=True)`,
backends/torch/module.md "Checkpointed slabs"): under autograd, each slab of time keeps only its
inputs and the state entering it, and backward runs the slab again. Gradients must equal those of
plain autograd through the ops (fp64, one spec per family, with initial states, a slab boundary
inside a chunk-aligned sequence and a last partial slab), and the slabs must really be recomputed.
"""
import pytest
import torch

from oracles import random_inputs, random_state
from test_gradients import ONE_PER_FAMILY, gradients_of

FAMILIES = {**ONE_PER_FAMILY, "chunk + scan (two groups)": "mlstm", "coupled sequential": "lstm"}
SLAB = 16       # steps a slab in these tests (the emitted default is about 1024)


def checkpointed(name, monkeypatch, counter):
    import seqc
    fn = seqc.load(name).kernel("torch", chunk_size=8, checkpoint=True)
    module = fn.module
    monkeypatch.setattr(module, "_slab_steps", lambda dims, chunk_size: SLAB)
    run_slab = module._run_slab

    def counted(*args):
        counter.append(torch.is_grad_enabled())
        return run_slab(*args)
    monkeypatch.setattr(module, "_run_slab", counted)
    return fn


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_checkpointed_gradients_equal_autograd(family, monkeypatch):
    import seqc
    name = FAMILIES[family]
    x, p = random_inputs(name, 2, 37, 2, dtype=torch.float64, seed=3)
    s = {n: t.double() for n, t in random_state(name, 2, 2, seed=3).items()}
    calls = []
    got = gradients_of(checkpointed(name, monkeypatch, calls), x, p, s)
    slabs = -(-37 // SLAB)
    assert len(calls) == 2 * slabs, "each slab runs once forward and once again in backward"
    plain = seqc.load(name).kernel("torch", chunk_size=8)
    monkeypatch.setattr(plain.module, "_slab_steps", lambda dims, chunk_size: SLAB)
    want = gradients_of(plain, x, p, s)
    for n, g in want.items():
        assert got[n] is not None, n
        torch.testing.assert_close(got[n], g, rtol=1e-12, atol=1e-12,
                                   msg=lambda m: f"gradient of {n}: {m}")


def test_checkpoint_is_inert_without_autograd(monkeypatch):
    name = "gated_deltanet"
    x, p = random_inputs(name, 1, 20, 2, seed=4)
    calls = []
    fn = checkpointed(name, monkeypatch, calls)
    with torch.no_grad():
        out = fn(**x, **p)
    assert len(calls) == 2          # two slabs, each run once
    import seqc
    want = seqc.load(name).kernel("torch", chunk_size=8)(**x, **p)
    torch.testing.assert_close(out.o, want.o, rtol=0, atol=0)
