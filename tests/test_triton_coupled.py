"""The Triton blockwise kernel's coupled scan (backends/triton/coupled_scan.md): groups of jointly
affine states scanned as (A_t, b_t) tuples inside a time block, the states carried across blocks,
against the reference backend. The specs are those of test_torch_coupled.py.

Runs under the Triton interpreter (TRITON_INTERPRET=1, set before anything imports triton, as in
test_triton.py). Tolerance (fp32): rtol 1e-4, atol = 1e-4 * max(1, max |expected|).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import functools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from seqc.inputs import random_call  # noqa: E402
from test_torch_coupled import SPECS, assert_close, program, transposed_coupled_program  # noqa: E402,E501

pytestmark = pytest.mark.triton
RTOL = 1e-4
SIZES = {"B": 1, "H": 2, "D": 5, "E": 2}     # D = 5: padded lanes of BLOCK_D = 8 hold identities


@functools.lru_cache(maxsize=None)
def kernel(name, backend, **options):
    return program(name).kernel(backend, **options)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_scan_is_the_default_mode(name):
    module = kernel(name, "triton").module
    assert module.MODES == ("fused_recurrent", "scan_parallel", "scan")
    assert module.DEFAULT_MODE == "scan"
    source = program(name).emit("triton")
    assert "tl.associative_scan(" in source and "_coupled_combine_" in source


def test_structural_zeros_are_not_carried():
    # chain3 is lower triangular: its closure keeps 6 of the 9 entries (3 x 2 x 6 + 3 x 2 args)
    source = program("chain3").emit("triton")
    assert "a1_0_1" not in source and "a1_0_2" not in source and "a1_1_2" not in source
    assert "a1_2_0" in source        # r <- p through q: not coupled directly, but by products


@pytest.mark.parametrize("init", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("T", [1, 37, 70])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_matches_reference(name, T, init):
    x, s = random_call(program(name).spec, {**SIZES, "T": T}, dtype=torch.float32, seed=T,
                       with_initial_state=init)
    got = kernel(name, "triton", mode="scan", chunk_size=16)(**x, initial_state=s,
                                                              output_final_state=True)
    want = kernel(name, "reference")(**x, initial_state=s, output_final_state=True)
    for n in want.keys():
        assert got[n].shape == want[n].shape
        assert_close(got[n].float(), want[n].float(), RTOL, f"output {n}")
    assert set(got.final_state) == set(want.final_state)
    for n, v in want.final_state.items():
        assert_close(got.final_state[n].float(), v.float(), RTOL, f"final state {n}")


def test_different_dim_orders_keep_the_fused_kernel():
    assert transposed_coupled_program().kernel("triton").module.MODES == ("fused_recurrent",)
