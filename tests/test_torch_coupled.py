"""The torch backend's coupled scan (backends/torch/coupled_scan.md): groups of jointly affine
states with elementwise couplings run in parallel, not in the step loop, and agree with the
reference backend.

Tolerances (atol = rtol * max(1, max |expected|)): fp64 rtol = 1e-9, fp32 rtol = 1e-5 — the same
products summed in another order (chunk by chunk); measured worst case about 1e-15 / 1e-6.
"""
import functools

import pytest
import torch

import seqc
from seqc.inputs import random_call

SPECS = {
    # the brief's example: h reads the NEW m, so its coupling to m is `a`
    "momentum": """model momentum
dims D
input x[D], a[D] in (0, 1), b[D] in (0, 1)
state m[D] = 0, h[D] = 0
m = a * m + x
h = b * h + m
output y = h
""",
    # a chain of three (a lower-triangular coupling matrix), two outputs
    "chain3": """model chain3
dims D
input x[D], a[D] in (0, 1), b[D] in (0, 1), c[D] in (0, 1)
state p[D] = 0, q[D] = 0, r[D] = 0
p = a * p + x
q = b * q + p
r = c * r + 0.5 * q
output y = r + p
output z = q
""",
    # cross couplings in both directions (v <- u is `a * d`, v <- v is `b + c * d`)
    "cross": """model cross
dims D
input x[D], y[D], a[D] in (0, 1), b[D] in (0, 1), c[D] in (-0.5, 0.5), d[D] in (-0.5, 0.5)
state u[D] = 0, v[D] = 0
u = a * u + c * v + x
v = b * v + d * u + y
output o = u + 2 * v
""",
    # matrix states, couplings over fewer dims than the states (a scalar, a param), a non-zero
    # declared initial value
    "cross_matrix": """model cross_matrix
dims E, D
input x[E, D], y[E, D], b[E, D] in (0, 1), c in (-0.5, 0.5), d[D] in (-0.5, 0.5)
param a[D] in (0, 1)
state u[E, D] = 0, v[E, D] = 1
u = a * u + c * v + x
v = b * v + d * u + y
output o = u * v
""",
    # a state that does not read itself (its diagonal coupling is structurally zero)
    "lag": """model lag
dims D
input x[D], y[D], a[D] in (0, 1), c[D] in (-1, 1)
state u[D] = 0, v[D] = 0
u = a * u + x
v = c * u + y
output o = v
""",
}
SIZES = {"B": 2, "H": 3, "D": 5, "E": 2}
RTOL = {torch.float64: 1e-9, torch.float32: 1e-5}


@functools.lru_cache(maxsize=None)
def program(name):
    return seqc.compile(SPECS[name], f"{name}.seq")


@functools.lru_cache(maxsize=None)
def kernel(name, backend, **options):
    return program(name).kernel(backend, **options)


def assert_close(actual, expected, rtol, what):
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale,
                               msg=lambda m: f"{what}: {m}")


def call(name, T, dtype, init, seed=0):
    x, s = random_call(program(name).spec, {**SIZES, "T": T}, dtype=dtype, seed=seed,
                       with_initial_state=init)
    return x, (None if s is None else {n: t.to(dtype) for n, t in s.items()})


def compare(name, T, dtype, init, **options):
    x, s = call(name, T, dtype, init, seed=T)
    got = kernel(name, "torch", **options)(**x, initial_state=s, output_final_state=True)
    want = kernel(name, "reference")(**x, initial_state=s, output_final_state=True)
    for n in want.keys():
        assert got[n].dtype == dtype and got[n].shape == want[n].shape
        assert_close(got[n], want[n], RTOL[dtype], f"output {n}")
    assert set(got.final_state) == set(want.final_state)
    for n, v in want.final_state.items():
        assert got.final_state[n].shape == v.shape
        assert_close(got.final_state[n], v, RTOL[dtype], f"final state {n}")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_analysis_says_coupled_scan(name):
    (group,) = program(name).analysis.plan.groups
    assert group.kind == "scan" and len(group.states) > 1 and group.coupling


def test_momentum_coupling_reads_the_new_state():
    (group,) = program("momentum").analysis.plan.groups
    assert {k: seqc.pretty.expr(v) for k, v in group.coupling.items()} == {
        ("m", "m"): "a", ("h", "m"): "a", ("h", "h"): "b"}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_emitted_module_is_the_parallel_form(name):
    source = program(name).emit("torch")
    assert "_coupled_scan(" in source
    assert "for t in range(T)" not in source and "st_" not in source


@pytest.mark.parametrize("init", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("T", [1, 5, 64, 65, 300])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_matches_reference(name, T, dtype, init):
    compare(name, T, dtype, init)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 128])
@pytest.mark.parametrize("name", ["momentum", "cross", "lag"])
def test_any_chunk_size(name, chunk_size):
    compare(name, 65, torch.float64, True, chunk_size=chunk_size)


def transposed_coupled_program():
    """cross_matrix with v declared [D, E]: a coupled scan whose states differ in dim order."""
    source = SPECS["cross_matrix"].replace("state u[E, D] = 0, v[E, D] = 1",
                                           "state u[E, D] = 0, v[D, E] = 1")
    source = source.replace("y[E, D]", "y[D, E]").replace("b[E, D]", "b[D, E]")
    prog = seqc.compile(source, "transposed.seq")
    (group,) = prog.analysis.plan.groups
    assert group.kind == "scan" and len(group.states) == 2
    return prog


def test_different_dim_orders_fall_back_to_the_step_loop():
    assert "for t in range(T)" in transposed_coupled_program().emit("torch")


@pytest.mark.parametrize("name", ["cross", "lag"])
def test_gradcheck(name):
    x, s = call(name, 5, torch.float64, True, seed=1)
    x = {n: t[:1, :, :1, :2] for n, t in x.items()}           # B = H = 1, D = 2
    s = {n: t[:1, :1, :2] for n, t in s.items()}
    names = list(x)
    fn = kernel(name, "torch", chunk_size=2)

    def f(*tensors):
        out = fn(**dict(zip(names, tensors[:len(names)])),
                 initial_state=dict(zip(s, tensors[len(names):])), output_final_state=True)
        return (*(out[n] for n in out.keys()), *out.final_state.values())

    leaves = [t.clone().requires_grad_() for t in (*x.values(), *s.values())]
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["momentum", "cross_matrix"])
def test_gradients_match_reference(name):
    x, s = call(name, 37, torch.float64, True, seed=2)

    def grads(backend, **options):
        leaves = {n: t.clone().requires_grad_() for n, t in {**x, **s}.items()}
        out = kernel(name, backend, **options)(**{n: leaves[n] for n in x},
                                               initial_state={n: leaves[n] for n in s},
                                               output_final_state=True)
        gen = torch.Generator().manual_seed(7)
        loss = sum((v * torch.randn(v.shape, generator=gen, dtype=v.dtype)).sum()
                   for v in [*(out[n] for n in out.keys()), *out.final_state.values()])
        loss.backward()
        return {n: t.grad for n, t in leaves.items()}

    got, want = grads("torch", chunk_size=8), grads("reference")
    for n, g in want.items():
        assert_close(got[n], g, 1e-9, f"gradient of {n}")
