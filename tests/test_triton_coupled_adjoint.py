"""The coupled scan core of the Triton backend and its adjoint kernels (backends/triton/
coupled_scan_core.py.j2, coupled_scan_core.md): n states per lane, h_t = A_t h_{t-1} + b_t with
A_t an n x n matrix of elementwise couplings; the adjoint runs the transposed couplings back in
time. No stdlib spec has a coupled group: the specs are test_torch_coupled.py's (a chain, cross
couplings both ways, matrix states with a param coupling, a state that does not read itself).

Checked on its own against the torch `_coupled_scan`'s autograd (fp64, rtol 1e-10) and through
whole specs against the reference's autograd (fp32, rtol 1e-4).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from seqc.inputs import random_call  # noqa: E402
from test_gradients import gradients_of  # noqa: E402
from test_torch_coupled import SPECS, program  # noqa: E402
from test_triton_gradients import assert_gradients_equal  # noqa: E402

pytestmark = pytest.mark.triton
COUPLED = ["momentum", "chain3", "cross", "cross_matrix", "lag"]


def core_inputs(seed=0, B=1, H=2, T=19, dims=(3,)):
    """A 3 x 3 coupling with a structural zero, offsets, states; fp64."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    coupling = [[0.5 * randn(B, H, T, *dims) if (i, j) != (0, 2) else None for j in range(3)]
                for i in range(3)]
    coupling[1][1] = 0.5 * randn(1, 1, 1, *dims)      # broadcast, as a param coefficient
    return coupling, [randn(B, H, T, *dims) for _ in range(3)], \
        [randn(B, H, *dims) for _ in range(3)]


def core_gradients(core, tensors, seed=1):
    coupling, offset, state = tensors
    leaf = lambda x: None if x is None else x.clone().requires_grad_()      # noqa: E731
    coupling = [[leaf(x) for x in row] for row in coupling]
    offset, state = [leaf(x) for x in offset], [leaf(x) for x in state]
    h, final = core(coupling, offset, state, 16)
    gen = torch.Generator().manual_seed(seed)
    results = list(h) + list(final)
    loss = sum((r * torch.randn(r.shape, generator=gen, dtype=r.dtype)).sum() for r in results)
    leaves = [x for row in coupling for x in row if x is not None] + offset + state
    return [r.detach() for r in results] + list(torch.autograd.grad(loss, leaves))


def test_core_adjoint_matches_torch_autograd_fp64():
    """T = 19 (not a multiple of the chunk), 3 states, lanes of 3 in a block of 16."""
    triton_module = program("cross").kernel("triton").module
    torch_module = program("cross").kernel("torch").module
    tensors = core_inputs()
    got = core_gradients(triton_module.coupled_scan_core, tensors)
    want = core_gradients(torch_module._coupled_scan, tensors)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * max(1.0, b.abs().max().item()),
                                   msg=lambda m: f"result {i}: {m}")


@pytest.mark.parametrize("name", COUPLED)
def test_coupled_specs_train_through_the_adjoint_kernels(name, monkeypatch):
    """The Triton call's gradients equal the reference's, and the torch family `_coupled_scan`
    is never called (the recurrence is the core's kernels)."""
    prog = program(name)
    kernel = prog.kernel("triton", chunk_size=16)
    assert "coupled_scan_core" in kernel.module.CORES
    torch_module = prog.kernel("torch").module

    def refuse(*args, **kwargs):
        raise AssertionError("the torch _coupled_scan ran")

    monkeypatch.setattr(torch_module, "_coupled_scan", refuse)
    sizes = {"B": 1, "T": 37, "H": 2, **{d.name: 3 for d in prog.spec.dims}}
    tensors, s = random_call(prog.spec, sizes, seed=7, with_initial_state=True)
    inputs = {x.name: tensors[x.name] for x in prog.spec.inputs}
    params = {p.name: tensors[p.name] for p in prog.spec.params}
    got = gradients_of(kernel, inputs, params, s)
    want = gradients_of(prog.kernel("reference"), inputs, params, s)
    for n in [n for n, g in want.items() if g is None]:     # lag's v never reads its initial value
        assert got[n] is None or not got[n].any(), f"{name}: gradient of {n}"
        del got[n], want[n]
    assert_gradients_equal(got, want, f"{name} through coupled_scan_core")
