"""`chunk_parallel` and its training core for a chunk group whose output reads the previous
state with a current-token term (rwkv6: `o = scale r @ (S + u k v)` above the update;
backends/triton/chunk_parallel.md, "Reads of the previous state and sums over the key dim"),
under the Triton interpreter, against the reference (fp32, rel 1e-4; fp64 tightly): ragged
lengths, odd dims, key and value blocks split, -inf log decays inside a chunk and at a chunk's
first step, initial and final states, and the gradients of every input, param (the bonus u)
and initial state through the parallel core."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from oracles import random_inputs, random_state  # noqa: E402
from test_previous_reads import rwkv6_call, rwkv6_equations  # noqa: E402
from test_triton_chunk_adjoint import assert_trains_through_core  # noqa: E402
from test_triton_chunk_parallel_core import parallel_core_backwards  # noqa: E402
from test_triton_gradients import assert_gradients_equal, gradients_of  # noqa: E402

pytestmark = pytest.mark.triton
GATES = {"rwkv6": "w"}
RESETS = (3, 16, 20, 36)        # inside a chunk, a chunk's first step, the last step


def call(name, T, dims, resets=(), seed=0, dtype=torch.float32):
    x, p = random_inputs(name, 1, T, 2, dims=dims, seed=seed)
    gate = x[GATES[name]]
    for t in resets:                                    # a key-wise gate: on one key lane
        gate[(0, t, 1, 2) if gate.dim() == 4 else (0, t, 1)] = float("-inf")
    s = random_state(name, 1, 2, dims=dims, seed=seed)
    return {n: t.to(dtype) for n, t in x.items()}, {n: t.to(dtype) for n, t in p.items()}, s


def assert_forward_matches(name, T, dims, resets=(), dtype=torch.float32, **options):
    x, p, s = call(name, T, dims, resets, dtype=dtype)
    program = seqc.load(name)
    want = program.kernel("reference")(**{n: t.float() for n, t in {**x, **p}.items()},
                                       initial_state=s, output_final_state=True)
    got = program.kernel("triton", mode="chunk_parallel", chunk_size=16, **options)(
        **x, **p, initial_state=s, output_final_state=True)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for what, a, b in [(o, got[o], want[o]) for o in want.keys()] + [
            (f"final {n}", got.final_state[n], want.final_state[n]) for n in want.final_state]:
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.float(), b, rtol=tol, atol=tol * scale,
                                   msg=lambda m: f"{name} T={T} {dims} {what}: {m}")


@pytest.mark.parametrize("name", list(GATES))
def test_the_module_offers_chunk_parallel_and_trains_on_its_core(name):
    module = seqc.load(name).kernel("triton").module
    assert module.PARALLEL_MODE == "chunk_parallel"
    assert "chunk_parallel" in module.MODE_CORES


@pytest.mark.parametrize("name", list(GATES))
@pytest.mark.parametrize("T, dims, resets, options", [
    (1, {"K": 5, "V": 20}, (), {}),
    (37, {"K": 5, "V": 20}, (), {}),
    (37, {"K": 5, "V": 20}, RESETS, {}),
    (37, {"K": 80, "V": 20}, (), {"block_split": 16}),      # two key blocks, two value blocks
])
def test_forward_against_the_reference(name, T, dims, resets, options):
    assert_forward_matches(name, T, dims, resets, **options)


@pytest.mark.parametrize("name", list(GATES))
def test_forward_bf16(name):
    """bf16 operands into tl.dot (the reference on the same values in fp32)."""
    assert_forward_matches(name, 37, {"K": 5, "V": 20}, RESETS, dtype=torch.bfloat16)


def test_rwkv6_forward_and_gradients_fp64_against_the_papers_equations():
    """fp64 (dots in "ieee"): the outputs and final state tightly; the gradients through the
    parallel core against the reference's autograd."""
    tensors, S0 = rwkv6_call(37, B=1, H=2, K=5, V=7, resets=True)
    program = seqc.load("rwkv6")
    kernel = program.kernel("triton", mode="chunk_parallel", chunk_size=16)
    got = kernel(**tensors, initial_state={"S": S0}, output_final_state=True)
    want_o, want_S = rwkv6_equations(tensors["r"], tensors["k"], tensors["v"], tensors["w"],
                                     tensors["u"], S0, 5 ** -0.5)
    torch.testing.assert_close(got["o"], want_o, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.final_state["S"], want_S, rtol=1e-10, atol=1e-10)
    x = {n: t for n, t in tensors.items() if n != "u"}
    with parallel_core_backwards("rwkv6") as calls:
        grads = gradients_of(kernel, x, {"u": tensors["u"]}, {"S": S0})
    assert len(calls) == 1
    want = gradients_of(program.kernel("reference"), x, {"u": tensors["u"]}, {"S": S0})
    for n, g in want.items():
        torch.testing.assert_close(grads[n], g, rtol=1e-9, atol=1e-9,
                                   msg=lambda m: f"gradient of {n}: {m}")


@pytest.mark.parametrize("name", list(GATES))
def test_mode_none_trains_through_the_parallel_core(name):
    """Gradients of every input, param and initial state equal the reference's (fp32)."""
    assert_trains_through_core(name, "chunk_core", "_ChunkParallelCore")


@pytest.mark.parametrize("name", list(GATES))
def test_training_with_minus_infinity_log_decays(name):
    x, p, s = call(name, 37, {"K": 5, "V": 5}, RESETS, seed=13)
    program = seqc.load(name)
    with parallel_core_backwards(name) as calls:
        got = gradients_of(program.kernel("triton", chunk_size=16), x, p, s)
    assert len(calls) == 1
    want = gradients_of(program.kernel("reference"), x, p, s)
    assert_gradients_equal(got, want, f"{name} with -inf log decays")
