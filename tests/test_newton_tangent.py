"""The Newton solver's step and Jacobian emitted symbolically from the IR
(backends/torch/newton_tangent.py, newton_step.md): equal to autograd's for every stdlib spec and
the test cells, used by the solver instead of autograd, and safe to overwrite."""
from pathlib import Path

import pytest
import torch

import seqc
import seqc.newton_linearise as newton_linearise
from seqc.analysis.jacobian import jacobian_structure
from seqc.inputs import random_call
from test_newton import CELLS

STDLIB = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "stdlib").glob("*.seq"))
SIZES = {"B": 2, "T": 5, "H": 2, "D": 3, "K": 3, "V": 3, "N": 3, "P": 3}


def _program(name):
    return seqc.compile(CELLS[name]) if name in CELLS else seqc.load(name)


def _at_random_states(program, seed=0):
    spec = program.spec
    tensors, _ = random_call(spec, SIZES, dtype=torch.float64, seed=seed)
    inputs = {x.name: tensors[x.name] for x in spec.inputs}
    params = {p.name: tensors[p.name] for p in spec.params}
    dims = {**SIZES, **{c.name: 0.5 for c in spec.consts}}
    packing = newton_linearise.Packing(spec, jacobian_structure(spec), SIZES)
    g = torch.Generator().manual_seed(seed + 1)
    prev = packing.pack([torch.randn(2, 5, 2, *(SIZES[d] for d in spec.tensor(s.name).dims),
                                     generator=g, dtype=torch.float64) for s in spec.states])
    return packing, prev, inputs, params, dims


@pytest.mark.parametrize("name", STDLIB + sorted(CELLS))
def test_emitted_jacobian_equals_autograd(name):
    program = _program(name)
    module = program.kernel("torch", solver="newton").module.step_module
    packing, prev, inputs, params, dims = _at_random_states(program)
    jacobians = newton_linearise.Jacobians(module, packing)
    expected_new, expected = newton_linearise.linearise(jacobians._step(inputs, params, dims), prev)
    emitted = (module.linearise(packing.unpack(prev), inputs, params, dims)
               if packing.diagonal else module.jvp(packing.unpack(prev),
                                                    packing.unpack(prev), inputs, params, dims))
    assert emitted is not None, "an operation without a tangent rule"
    new, J = jacobians(prev, inputs, params, dims)
    assert torch.allclose(new, expected_new, rtol=0, atol=1e-12)
    assert torch.allclose(J, expected, rtol=0, atol=1e-12), float((J - expected).abs().max())


@pytest.mark.parametrize("name", ["gated_diag", "pair_diag", "elman", "lstm"])
def test_the_solve_does_not_use_autograd(name, monkeypatch):
    """The iterations run on the emitted tangents: no autograd graph is built, forward-only."""
    def refuse(*args, **kwargs):
        raise AssertionError("autograd Jacobian used")
    monkeypatch.setattr(newton_linearise, "linearise", refuse)
    monkeypatch.setattr(torch.autograd, "grad", refuse)
    program = _program(name)
    tensors, _ = random_call(program.spec, {"B": 1, "T": 24, "H": 1, **SIZES}, seed=2)
    expected = program.kernel("reference")(**tensors)
    fn = program.kernel("torch", solver="newton")
    got = fn(**tensors)
    assert all(fn.stats.converged)
    for o in expected.keys():
        assert torch.allclose(got[o], expected[o], atol=1e-4), o


def test_a_jacobian_that_is_an_input_is_not_overwritten():
    """`h = x * h + u`: the emitted Jacobian of the step is the tensor x itself, which the
    elementwise scan (in place) must not overwrite."""
    program = seqc.compile("""model gate
dims D
input x[D] in (0, 1), u[D]
state h[D] = 0
h = x * h + u
output y = h
""")
    tensors, _ = random_call(program.spec, {"B": 2, "T": 40, "H": 2, "D": 3}, seed=4)
    kept = {k: v.clone() for k, v in tensors.items()}
    expected = program.kernel("reference")(**tensors).y
    got = program.kernel("torch", solver="newton")(**tensors).y
    assert all(torch.equal(tensors[k], kept[k]) for k in kept)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("name, dtype", [("gated_diag", torch.float32),
                                         ("elman", torch.float64)])
def test_compiled_iteration_matches_the_step_loop(name, dtype):
    """compile=True: the iteration (step, Jacobian, scan, update) through torch.compile, over the
    whole slab each time; the same answer as the loop, diagonal (elementwise scan) and dense."""
    from test_newton import _call, _compare
    program = seqc.compile(CELLS[name])
    tensors, initial = _call(program.spec, 40, dtype, seed=5)
    fn = _compare(program, tensors, initial, dtype, compile=True, slab=20)
    assert all(fn.stats.converged), fn.stats
    solver = next(iter(fn.module.solvers.values()))
    assert solver.compiled is not None
