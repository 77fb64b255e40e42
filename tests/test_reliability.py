"""Issue 9: constants in the step, unbound dims, autocast, and the small call errors.

Each test here failed before its fix: the reference emitter wrote invalid Python for constant
states and outputs and crashed on constant lets; a dim no tensor binds was a bare KeyError at call
time; autocast crashed the torch backend or dropped its matmuls to bf16; odd call arguments
(chunk_size="8", output_final_state="no", meta tensors, a dim of size 0) were deep torch errors or
silently wrong; a KernelOutput could not be unpacked.
"""
from __future__ import annotations

import pytest
import torch

import seqc
from seqc.inputs import random_call
from seqc.resources import stdlib_names

SIZES = {"B": 2, "T": 5, "H": 2, "K": 3, "V": 4, "D": 3}
BACKENDS = ["reference", "torch", pytest.param("triton", marks=pytest.mark.triton)]

KV = "model m\ndims K, V\ninput q[K], k[K], v[V]\nstate S[K, V] = 0\nS = S + k * v\n"
CONSTANT_SPECS = {
    "state assigned a number": "model m\ninput x\nstate h\nh = 2\noutput y = h + x\n",
    "state assigned a dim's power": "model m\ndims D\ninput x[D]\nstate h\n"
                                    "h = D ** -0.5\noutput y = h * x\n",
    "let of a number": KV + "let a = 0.5\noutput o = a * q @ S\n",
    "let of a dim's power": KV + "let a = K ** -0.5\noutput o = a * q @ S\n",
    "output of a number": "model m\ninput x\nstate h\nh = 0.5 * h + x\noutput y = h\n"
                          "output c = 3\n",
}


def _call(program, seed=0, **sizes):
    tensors, initial = random_call(program.spec, {**SIZES, **sizes}, seed=seed,
                                   with_initial_state=True)
    return tensors, initial


# ---- item 2: constants in lets, states and outputs ---------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CONSTANT_SPECS))
def test_constants_in_lets_states_and_outputs_run_on_every_backend_and_agree(name, backend):
    program = seqc.compile(CONSTANT_SPECS[name])
    tensors, initial = _call(program)
    want = _expected(program, tensors, initial)
    got = program.kernel(backend)(**tensors, initial_state=initial, output_final_state=True)
    for output in want:
        torch.testing.assert_close(got[output], want[output], rtol=1e-5, atol=1e-5)


def _expected(program, tensors, initial):
    """The five specs' outputs written out by hand (not by any backend)."""
    spec_name = next(k for k, v in CONSTANT_SPECS.items() if v == program.source)
    if "let" in spec_name:
        q, k, v = tensors["q"], tensors["k"], tensors["v"]
        S = initial["S"][:, None] + torch.cumsum(torch.einsum("bthk,bthv->bthkv", k, v), 1)
        scale = 0.5 if "number" in spec_name else 3 ** -0.5
        return {"o": scale * torch.einsum("bthk,bthkv->bthv", q, S)}
    x = tensors["x"]
    if spec_name == "state assigned a number":
        return {"y": 2 + x}
    if spec_name == "state assigned a dim's power":
        return {"y": 3 ** -0.5 * x}
    h, ys = initial["h"], []
    for t in range(x.shape[1]):
        h = 0.5 * h + x[:, t]
        ys.append(h)
    return {"y": torch.stack(ys, 1), "c": torch.full_like(x, 3.0)}


# ---- item 5: autocast --------------------------------------------------------------------------

def _stdlib_call(name, seed=0):
    program = seqc.load(name)
    sizes = {"B": 1, "T": 9, "H": 2, **{d.name: 4 for d in program.spec.dims}}
    return program, *random_call(program.spec, sizes, seed=seed, with_initial_state=True)


def _under_bf16_autocast_equals_fp32(program, backend, tensors, initial, **options):
    fn = program.kernel(backend, **options)
    want = fn(**tensors, initial_state=initial, output_final_state=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(**tensors, initial_state=initial, output_final_state=True)
    for name in want.keys():
        assert got[name].dtype == torch.float32
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-6)
    for name in want.final_state:
        torch.testing.assert_close(got.final_state[name], want.final_state[name], rtol=1e-6,
                                   atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("name", stdlib_names())
def test_under_autocast_every_spec_runs_and_accumulates_in_fp32(name, backend):
    """bf16 autocast crashed 9 specs on torch (`Input dtypes must be the same` at a baddbmm_) and
    put gla's matmuls in bf16 (error 3e-3); the kernel now runs with autocast off."""
    program, tensors, initial = _stdlib_call(name)
    _under_bf16_autocast_equals_fp32(program, backend, tensors, initial)


@pytest.mark.triton
@pytest.mark.parametrize("name", ["gla", "deltanet"])
def test_under_autocast_triton_accumulates_in_fp32(name):
    program, tensors, initial = _stdlib_call(name)
    _under_bf16_autocast_equals_fp32(program, "triton", tensors, initial, chunk_size=16)


def test_gradients_under_autocast_are_the_fp32_gradients():
    program, tensors, initial = _stdlib_call("gla")
    fn = program.kernel("torch")
    grads = []
    for autocast in (False, True):
        q = tensors["q"].clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = fn(**{**tensors, "q": q}, initial_state=initial)
            loss = (out.o * torch.linspace(-1, 1, out.o.shape[-1])).sum()
        loss.backward()
        grads.append(q.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-6)


# ---- item 6: small call errors, and KernelOutput as a tuple ------------------------------------

def _gla(**sizes):
    program = seqc.load("gla")
    tensors, _ = random_call(program.spec, {"B": 1, "T": 3, "H": 2, "K": 4, "V": 4, **sizes})
    return program, tensors


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_a_dim_of_size_zero_is_a_value_error_naming_it(backend):
    program, tensors = _gla(K=0)          # K ** -0.5 was a ZeroDivisionError
    with pytest.raises(ValueError, match=r"dim `K` has size 0 \(from input `q`\)"):
        program.kernel(backend)(**tensors)


def test_an_empty_batch_still_runs():
    program, tensors = _gla(B=0)
    assert program.kernel("torch")(**tensors).o.shape == (0, 3, 2, 4)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_meta_tensors_are_a_value_error_naming_the_device(backend):
    program, tensors = _gla()
    tensors = {name: t.to("meta") for name, t in tensors.items()}
    with pytest.raises(ValueError, match=r"`q` is on the meta device"):
        program.kernel(backend)(**tensors)


@pytest.mark.parametrize("flag", ["no", 1, None, torch.tensor(True)])
def test_output_final_state_must_be_a_bool(flag):
    program, tensors = _gla()
    with pytest.raises(ValueError, match=r"output_final_state must be True or False"):
        program.kernel()(**tensors, output_final_state=flag)


def test_a_kernel_output_unpacks_and_iterates_like_fla_o_and_final_state():
    program = seqc.compile(CONSTANT_SPECS["output of a number"])
    tensors, initial = _call(program)
    out = program.kernel()(**tensors, initial_state=initial, output_final_state=True)
    y, c, final = out
    assert y is out.y and c is out.c and final is out.final_state
    assert list(out) == [out.y, out.c, out.final_state]
    assert out[0] is out.y and out[-1] is out.final_state and out["c"] is out.c
    assert "y" in out and "c" in out and "h" not in out and "final_state" not in out
    assert len(out) == 3
    o, ht = seqc.load("gla").kernel()(**_gla()[1])
    assert o.shape == (1, 3, 2, 4) and ht is None
