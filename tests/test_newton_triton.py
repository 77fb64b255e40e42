"""prog.kernel("triton", solver="newton") (seqc/newton_triton.py, backends/triton/newton_step.md):
the step and its diagonal Jacobian blocks by a generated Triton kernel, the linear solves by the
scan and coupled-scan cores, under TRITON_INTERPRET=1 (tests/conftest.py) with tiny shapes,
against the step loop. Tolerances as tests/test_newton.py (fp32 1e-4, fp64 1e-9, relative to the
largest magnitude)."""
import pytest
import torch

import seqc
from test_newton import CELLS, LOGISTIC, STDLIB, _call, _close, _grads
from test_newton import _compare as compare

DIAGONAL_CELLS = ["tanh_diag", "gated_diag", "softplus_diag", "pair_diag"]


def _compare(program, tensors, initial, dtype, **options):
    return compare(program, tensors, initial, dtype, backend="triton", **options)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", DIAGONAL_CELLS + ["elman"])
def test_cells_match_the_step_loop(name, dtype):
    program = seqc.compile(CELLS[name])
    tensors, initial = _call(program.spec, 20, dtype, B=1, H=2, seed=1)
    fn = _compare(program, tensors, initial, dtype, slab=8)      # 3 slabs, the last short
    assert fn.backend == "triton" and all(fn.stats.converged), fn.stats
    kernels = fn.module.kernels
    assert kernels.NO_KERNEL == ("the Jacobian is dense" if name == "elman" else "")


@pytest.mark.parametrize("name", STDLIB)
def test_stdlib_matches_the_step_loop(name):
    program = seqc.load(name)
    tensors, initial = _call(program.spec, 12, torch.float32, B=1, H=1)
    fn = _compare(program, tensors, initial, torch.float32)
    assert all(fn.stats.converged), fn.stats


def test_the_step_kernel_computes_the_jacobian(monkeypatch):
    """A diagonal cell's iterations take their Jacobian from the Triton kernel: with the torch
    tangents removed the answer is the same."""
    program = seqc.compile(CELLS["pair_diag"])
    fn = program.kernel("triton", solver="newton")
    step = fn.module.step_module
    monkeypatch.setattr(step, "linearise", None)
    monkeypatch.setattr(step, "jvp", None)
    tensors, initial = _call(program.spec, 10, torch.float64, B=1, H=1, seed=2)
    out = fn(**tensors, initial_state=initial)
    ref = program.kernel("reference")(**tensors, initial_state=initial)
    _close(out.y, ref.y, torch.float64, "y")


def test_quasi_newton_on_blocks_runs_on_the_coupled_core():
    program = seqc.compile(CELLS["pair_diag"])
    tensors, initial = _call(program.spec, 16, torch.float64, B=1, H=1)
    fn = _compare(program, tensors, initial, torch.float64, jacobian="quasi")
    assert all(fn.stats.converged)


def test_max_iter_hit_falls_back_to_the_step_loop():
    program = seqc.compile(CELLS["gated_diag"])
    tensors, initial = _call(program.spec, 16, torch.float32, B=1, H=1)
    fn = _compare(program, tensors, initial, torch.float32, max_iter=1)
    assert fn.stats.converged == [False] and fn.stats.loop_steps[0] > 0


def test_a_chaotic_cell_falls_back():
    program = seqc.compile(LOGISTIC)
    tensors, _ = _call(program.spec, 12, torch.float64, B=1, H=1)
    initial = {"h": torch.full((1, 1, 4), 0.3, dtype=torch.float64)}
    expected = program.kernel("reference")(**tensors, initial_state=initial).y
    fn = program.kernel("triton", solver="newton", max_iter=4)
    got = fn(**tensors, initial_state=initial).y
    assert fn.stats.converged == [False]
    assert float((got - expected).abs().max()) < 1e-9


@pytest.mark.parametrize("name", ["gated_diag", "pair_diag"])
def test_gradients_match_the_reference_autograd(name):
    program = seqc.compile(CELLS[name])
    tensors, initial = _call(program.spec, 12, torch.float64, B=1, H=2)
    tensors = {k: v.requires_grad_() for k, v in tensors.items()}
    initial = {k: v.requires_grad_() for k, v in initial.items()}
    leaves = list(tensors.values()) + list(initial.values())
    expected = _grads(program.kernel("reference"), tensors, initial, leaves)
    got = _grads(program.kernel("triton", solver="newton", slab=5), tensors, initial, leaves)
    for g, e, leaf in zip(got, expected, list(tensors) + list(initial)):
        _close(g, e, torch.float64, f"grad {leaf}")


def test_compile_is_a_torch_option():
    with pytest.raises(ValueError, match="compile=True compiles the torch solver"):
        seqc.load("gru").kernel("triton", solver="newton", compile=True)
