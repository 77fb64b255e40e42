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
from test_triton_chunk_parallel_core import parallel_core_backwards  # noqa: E402
from test_triton_gradients import assert_gradients_equal, gradients_of  # noqa: E402

pytestmark = pytest.mark.triton
GATES = {"rwkv6": "w", "mlstm": "f"}
KEY_BLOCKS_OF_TWO = {"rwkv6": 20, "mlstm": 80}
RESETS = (3, 16, 20, 36)        # inside a chunk, a chunk's first step, the last step


def call(name, T, dims, resets=(), seed=0, dtype=torch.float32):
    x, p = random_inputs(name, 1, T, 2, dims=dims, seed=seed, dtype=dtype)
    gate = x[GATES[name]]
    for t in resets:                                    # a key-wise gate: on one key lane
        gate[(0, t, 1, 2) if gate.dim() == 4 else (0, t, 1)] = float("-inf")
    s = random_state(name, 1, 2, dims=dims, seed=seed)
    return x, p, {n: t.to(torch.float64 if dtype == torch.float64 else torch.float32)
                  for n, t in s.items()}


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
])
def test_forward_against_the_reference(name, T, dims, resets, options):
    assert_forward_matches(name, T, dims, resets, **options)


@pytest.mark.parametrize("name", list(GATES))
def test_key_and_value_blocks_split(name):
    """Two key blocks in the output kernel (rwkv6's key-wise one holds 16 lanes, mlstm's 64: the
    bonus and `q @ n` summed over them) and two value blocks (block_split=16)."""
    assert_forward_matches(name, 37, {"K": KEY_BLOCKS_OF_TWO[name], "V": 20}, block_split=16)


@pytest.mark.parametrize("name", list(GATES))
def test_forward_bf16(name):
    """bf16 operands into tl.dot (the reference on the same values in fp32)."""
    assert_forward_matches(name, 37, {"K": 5, "V": 20}, RESETS, dtype=torch.bfloat16)


@pytest.mark.parametrize("name", list(GATES))
def test_forward_and_gradients_fp64(name):
    """fp64 (dots in "ieee"), -inf log decays: outputs, final states and the gradients of every
    input, param and initial state through the parallel core equal the reference's tightly."""
    x, p, s = call(name, 37, {"K": 5, "V": 7}, RESETS, seed=4, dtype=torch.float64)
    program = seqc.load(name)
    kernel = program.kernel("triton", mode="chunk_parallel", chunk_size=16)
    got = kernel(**x, **p, initial_state=s, output_final_state=True)
    want = program.kernel("reference")(**x, **p, initial_state=s, output_final_state=True)
    for what, a, b in [(o, got[o], want[o]) for o in want.keys()] + [
            (f"final {n}", got.final_state[n], want.final_state[n]) for n in want.final_state]:
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"{what}: {m}")
    with parallel_core_backwards(name) as calls:
        grads = gradients_of(kernel, x, p, s)
    assert len(calls) == 1
    for n, g in gradients_of(program.kernel("reference"), x, p, s).items():
        torch.testing.assert_close(grads[n], g, rtol=1e-9, atol=1e-9,
                                   msg=lambda m: f"gradient of {n}: {m}")


@pytest.mark.parametrize("name", list(GATES))
def test_training_with_minus_infinity_log_decays(name):
    """mode=None trains on the parallel core (its backward runs once; mlstm's normaliser on the
    scan core): the gradients of every input, param (rwkv6's u) and initial state equal the
    reference's (fp32)."""
    x, p, s = call(name, 37, {"K": 5, "V": 5}, RESETS, seed=13)
    program = seqc.load(name)
    with parallel_core_backwards(name) as calls:
        got = gradients_of(program.kernel("triton", chunk_size=16), x, p, s)
    assert len(calls) == 1
    want = gradients_of(program.kernel("reference"), x, p, s)
    assert_gradients_equal(got, want, f"{name} with -inf log decays")


# the forms beyond the two stdlib specs: a read of S_{t-1} under a scalar gate and under none
# (its current-token term a `sum` over K), and a normaliser under a key-wise gate
GENERAL = {
    "prev_scalar": "input g in (-inf, 0)\nparam u[K]\nstate S[K, V] = 0\n"
                   "output o = q @ (S + u * k * v)\nS = exp(g) * S + k * v\n",
    "prev_none": "state S[K, V] = 0\noutput o = q @ S + sum(q * k, K) * v\nS = S + k * v\n",
    "norm_keywise": "input g[K] in (-inf, 0)\nstate C[K, V] = 0, n[K] = 0\n"
                    "C = exp(g) * C + k * v\nn = exp(g) * n + k\n"
                    "output h = q @ C / max(abs(q @ n), 1)\n",
}


@pytest.mark.parametrize("name", list(GENERAL))
def test_the_forms_follow_the_ir_not_the_spec(name):
    """Specs written here (not rwkv6 nor mlstm) take chunk_parallel and match the reference
    (K = 20: two key blocks of 16 in the key-wise output kernel), -inf gates at a chunk's first
    step and inside one; prev_scalar's gradients (u's too) through the parallel core."""
    from seqc.inputs import random_call
    source = f"model {name}\ndims K, V\ninput q[K], k[K], v[V]\n" + GENERAL[name]
    program = seqc.compile(source, f"{name}.seq")
    assert program.kernel("triton").module.PARALLEL_MODE == "chunk_parallel"
    x, s = random_call(program.spec, dict(B=1, T=37, H=2, K=20, V=7), seed=1,
                       with_initial_state=True)
    if "g" in x:
        for t in (3, 16):
            x["g"][(0, t, 1) + ((2,) if x["g"].dim() == 4 else ())] = float("-inf")
    kernel = program.kernel("triton", mode="chunk_parallel", chunk_size=16)
    want = program.kernel("reference")(**x, initial_state=s, output_final_state=True)
    got = kernel(**x, initial_state=s, output_final_state=True)
    for what, a, b in [(o, got[o], want[o]) for o in want.keys()] + [
            (f"final {n}", got.final_state[n], want.final_state[n]) for n in want.final_state]:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()),
                                   msg=lambda m: f"{name} {what}: {m}")
    if name == "prev_scalar":
        inputs = {n: t for n, t in x.items() if n != "u"}
        got = gradients_of(kernel, inputs, {"u": x["u"]}, s)
        want = gradients_of(program.kernel("reference"), inputs, {"u": x["u"]}, s)
        assert_gradients_equal(got, want, name)
