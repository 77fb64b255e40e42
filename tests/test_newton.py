"""solver="newton" (seqc/newton.py, docs/newton.md): every step solved at once by Newton's method,
against the reference step loop.

Tolerances: atol = rtol * max(1, max |expected|), fp32 rtol 1e-4 (the issue's target), fp64 1e-9.
Measured worst cases: about 1e-6 (fp32) and 1e-15 (fp64) for the forward, 1e-15 for gradients.
"""
from pathlib import Path

import pytest
import torch

import seqc
from seqc.analysis.jacobian import jacobian_structure
from seqc.inputs import random_call

STDLIB = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "stdlib").glob("*.seq"))
RTOL = {torch.float32: 1e-4, torch.float64: 1e-9}
DIMS = {"D": 4, "K": 4, "V": 4, "N": 4, "P": 4}

CELLS = {
    # elementwise in the state: diagonal Jacobian, 1 x 1 blocks
    "tanh_diag": """model tanh_diag
dims D
input x[D]
param w[D]
state h[D] = 0
h = tanh(w * h + x)
output y = h
""",
    "gated_diag": """model gated_diag
dims D
input xf[D], xz[D]
param wf[D], wz[D]
state h[D] = 0
let f = sigmoid(xf + wf * h)
let z = tanh(xz + wz * h)
h = f * h + (1 - f) * z
output y = h
""",
    "softplus_diag": """model softplus_diag
dims D
input x[D], a[D] in (0, 1)
state h[D] = 0
h = a * softplus(h) + x - 0.5
output y = 2 * h
""",
    # two states, entries not mixed: 2 x 2 blocks
    "pair_diag": """model pair_diag
dims D
input x[D], u[D]
param w[D]
state h[D] = 0, c[D] = 0
c = sigmoid(u) * c + (1 - sigmoid(u)) * tanh(x + w * h)
h = tanh(c) * sigmoid(x - h)
output y = h + c
""",
    # a matrix mixes the entries: dense Jacobian
    "elman": """model elman
dims D
input x[D]
param R[D, D]
state h[D] = 0
h = tanh(R @ h + x)
output y = h
""",
    "softplus_dense": """model softplus_dense
dims D
input x[D]
param R[D, D]
state h[D] = 0
h = 0.5 * softplus(R @ h) + x - sigmoid(h)
output y = h
""",
}

# chaotic: the logistic map at r = 3.9 (Lyapunov exponent ~ 0.5 a step) from values in (0, 1).
# Newton's guesses leave (0, 1) and blow up; the answer must come from the step loop.
LOGISTIC = """model logistic
dims D
input x[D]
state h[D] = 0.5
h = 3.9 * h * (1 - h) + 0.001 * x
output y = h
"""


def _call(spec, T, dtype, seed=0, B=2, H=2):
    tensors, initial = random_call(spec, {"B": B, "T": T, "H": H, **DIMS}, dtype=dtype,
                                   seed=seed, with_initial_state=True)
    for p in spec.params:                      # recurrent matrices: keep the cells contractive
        if len(p.dims) == 2:
            tensors[p.name] = tensors[p.name] * 0.5
    initial = {k: v.to(dtype) for k, v in initial.items()}
    return tensors, initial


def _close(got, expected, dtype, what):
    atol = RTOL[dtype] * max(1.0, float(expected.abs().max()) if expected.numel() else 0.0)
    assert torch.allclose(got, expected, rtol=0, atol=atol), \
        f"{what}: max error {float((got - expected).abs().max()):.3e} > {atol:.1e}"


def _compare(program, tensors, initial, dtype, backend="torch", **options):
    ref = program.kernel("reference")(**tensors, initial_state=initial, output_final_state=True)
    fn = program.kernel(backend, solver="newton", **options)
    out = fn(**tensors, initial_state=initial, output_final_state=True)
    for o in program.spec.outputs:
        _close(out[o.name], ref[o.name], dtype, o.name)
    for s in program.spec.states:
        _close(out.final_state[s.name], ref.final_state[s.name], dtype, f"final {s.name}")
    return fn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", STDLIB)
def test_stdlib_matches_the_step_loop(name, dtype):
    program = seqc.load(name)
    tensors, initial = _call(program.spec, 64, dtype)
    fn = _compare(program, tensors, initial, dtype)
    assert all(fn.stats.converged), fn.stats


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_cells_match_the_step_loop(name, dtype):
    program = seqc.compile(CELLS[name])
    tensors, initial = _call(program.spec, 128, dtype, seed=1)
    fn = _compare(program, tensors, initial, dtype, slab=48)    # 3 slabs, the last short
    assert all(fn.stats.converged) and fn.stats.max_iterations < 20, fn.stats


@pytest.mark.parametrize("name, kind", [("tanh_diag", "diagonal"), ("gated_diag", "diagonal"),
                                        ("softplus_diag", "diagonal"), ("pair_diag", "diagonal"),
                                        ("elman", "dense"), ("softplus_dense", "dense")])
def test_jacobian_structure_from_the_ir(name, kind):
    assert jacobian_structure(seqc.compile(CELLS[name]).spec).kind == kind


def test_structure_words():
    lstm = seqc.load("lstm").spec
    assert jacobian_structure(lstm).describe(lstm) == (
        "dense Jacobian (`Ri @ h` mixes the state's entries along `D`), O(N^3) a step with "
        "N = D + D")
    pair = seqc.compile(CELLS["pair_diag"]).spec
    assert jacobian_structure(pair).describe(pair) == "diagonal Jacobian (2 x 2 blocks)"
    mlstm = seqc.load("mlstm").spec
    assert "differ in shape" in jacobian_structure(mlstm).reason


def test_long_sequence_diagonal():
    program = seqc.compile(CELLS["gated_diag"])
    tensors, initial = _call(program.spec, 4096, torch.float32, B=1, H=1)
    fn = _compare(program, tensors, initial, torch.float32)
    assert all(fn.stats.converged), fn.stats


@pytest.mark.parametrize("name", ["gru", "pair_diag", "elman"])
def test_quasi_newton_converges_to_the_same_answer(name):
    program = seqc.load(name) if name == "gru" else seqc.compile(CELLS[name])
    tensors, initial = _call(program.spec, 64, torch.float64)
    exact = _compare(program, tensors, initial, torch.float64)
    quasi = _compare(program, tensors, initial, torch.float64, jacobian="quasi")
    assert all(quasi.stats.converged)
    assert quasi.stats.max_iterations >= exact.stats.max_iterations


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_iter_hit_falls_back_to_the_step_loop(dtype):
    program = seqc.load("lstm")
    tensors, initial = _call(program.spec, 64, dtype)
    fn = _compare(program, tensors, initial, dtype, max_iter=2)
    assert fn.stats.converged == [False] and 0 < fn.stats.loop_steps[0] < 64
    assert fn.stats.iterations == [2]


def test_chaotic_cell_falls_back_and_equals_the_loop():
    """A chaotic map amplifies every rounding (here ~e^0.5 a step), so "equal" is measured
    against the loop's own spread: the loop run again from initial states moved by 1e-15
    (relative), the size of one fp64 rounding."""
    program = seqc.compile(LOGISTIC)
    tensors, _ = _call(program.spec, 48, torch.float64)
    initial = {"h": torch.rand(2, 2, 4, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(3)) * 0.8 + 0.1}
    loop = program.kernel("reference")
    expected = loop(**tensors, initial_state=initial).y
    moved = loop(**tensors, initial_state={"h": initial["h"] * (1 + 1e-15)}).y
    spread = float((moved - expected).abs().max())
    fn = program.kernel("torch", solver="newton", max_iter=8)
    got = fn(**tensors, initial_state=initial).y
    assert fn.stats.converged == [False] and fn.stats.loop_steps[0] > 0, fn.stats
    assert 0 < spread < 1e-3
    assert float((got - expected).abs().max()) <= 10 * spread


def _grads(fn, tensors, initial, leaves):
    out = fn(**tensors, initial_state=initial, output_final_state=True)
    weights = torch.Generator().manual_seed(7)
    loss = sum((out[o] * torch.randn(out[o].shape, generator=weights, dtype=out[o].dtype)).sum()
               for o in out.keys())
    loss = loss + sum((v * torch.randn(v.shape, generator=weights, dtype=v.dtype)).sum()
                      for v in out.final_state.values())
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("name", ["lstm", "gru", "gated_diag", "pair_diag", "softplus_dense"])
def test_gradients_match_the_reference_autograd(name):
    program = seqc.load(name) if name in ("lstm", "gru") else seqc.compile(CELLS[name])
    tensors, initial = _call(program.spec, 40, torch.float64)
    tensors = {k: v.requires_grad_() for k, v in tensors.items()}
    initial = {k: v.requires_grad_() for k, v in initial.items()}
    leaves = list(tensors.values()) + list(initial.values())
    expected = _grads(program.kernel("reference"), tensors, initial, leaves)
    got = _grads(program.kernel("torch", solver="newton", slab=16), tensors, initial, leaves)
    for g, e, leaf in zip(got, expected, tensors.keys() | initial.keys()):
        _close(g, e, torch.float64, f"grad {leaf}")


def test_gradients_after_a_fallback():
    program = seqc.load("gru")
    tensors, initial = _call(program.spec, 32, torch.float64)
    tensors = {k: v.requires_grad_() for k, v in tensors.items()}
    leaves = list(tensors.values())
    expected = _grads(program.kernel("reference"), tensors, initial, leaves)
    fn = program.kernel("torch", solver="newton", max_iter=1)
    got = _grads(fn, tensors, initial, leaves)
    assert fn.stats.loop_steps[0] > 0
    for g, e in zip(got, expected):
        _close(g, e, torch.float64, "grad")


def test_default_stays_the_step_loop():
    assert not hasattr(seqc.load("gru").kernel("torch"), "stats")


@pytest.mark.parametrize("options, message", [
    ({"tol": -1.0}, "tol must be a positive number"),
    ({"max_iter": 0}, "max_iter must be a positive integer"),
    ({"jacobian": "full"}, "jacobian must be one of exact, quasi"),
    ({"chunk": 3}, "unknown option `chunk` for solver=\"newton\""),
])
def test_bad_options_are_value_errors(options, message):
    with pytest.raises(ValueError, match=message):
        seqc.load("gru").kernel("torch", solver="newton", **options)


def test_unknown_solver_and_backend():
    with pytest.raises(ValueError, match="unknown solver `jacobi`"):
        seqc.load("gru").kernel("torch", solver="jacobi")
    with pytest.raises(ValueError, match="runs on the torch or the triton backend"):
        seqc.load("gru").kernel("reference", solver="newton")


def test_check_and_bench_report_newton(capsys):
    from seqc.cli import main
    assert main(["check", "stdlib/gru.seq"]) == 0
    assert 'solver="newton": dense Jacobian (`Rr @ h` mixes' in capsys.readouterr().out
    assert main(["bench", "gru", "--backends", "reference,newton", "--shape",
                 "B=1,T=32,H=1,D=4", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| newton |" in out
    assert 'newton (the torch backend, solver="newton"), last run: 1 slab(s), at most' in out


@pytest.mark.parametrize("sizes", [{"B": 0, "T": 5, "H": 2}, {"B": 2, "T": 1, "H": 2},
                                   {"B": 1, "T": 3, "H": 0}])
def test_empty_batch_and_single_step(sizes):
    program = seqc.load("gru")
    tensors, _ = random_call(program.spec, {**sizes, "D": 3})
    ref = program.kernel("reference")(**tensors, output_final_state=True)
    out = program.kernel("torch", solver="newton")(**tensors, output_final_state=True)
    assert out.y.shape == ref.y.shape
    _close(out.y, ref.y, torch.float32, "y")
    _close(out.final_state["h"], ref.final_state["h"], torch.float32, "final h")
