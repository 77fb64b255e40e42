"""Value-side forms: a state updated and read along its last dim (`W @ k`), and a decay along
both dims of a matrix state. seqc proves each parallel, runs them chunkwise, and both backends
are checked here against the equations written out in plain PyTorch (not by seqc)."""
from pathlib import Path

import torch

import seqc
from seqc.inputs import random_call

SIZES = {"B": 2, "T": 200, "H": 2, "K": 8, "V": 6}


def by_hand_delta_wx(x, W):
    """W_t = a_t W (I - beta_t k_t k_t^T) + beta_t v_t k_t^T, o_t = W_t q_t; W [B, H, V, K]."""
    outputs = []
    for t in range(x["q"].shape[1]):
        q, k, v = x["q"][:, t], x["k"][:, t], x["v"][:, t]          # [B, H, K], [B, H, V]
        a, beta = torch.exp(x["g"][:, t]), x["beta"][:, t]          # [B, H]
        W = a[..., None, None] * W
        W = W + beta[..., None, None] * (v - torch.einsum("bhvk,bhk->bhv", W, k))[..., None] \
            * k[..., None, :]
        outputs.append(torch.einsum("bhvk,bhk->bhv", W, q))
    return {"o": torch.stack(outputs, 1), "W": W}


def by_hand_gated_kv(x, S):
    """S_t = (exp(a_t) exp(b_t)^T) * S + k_t v_t^T, o_t = S_t^T q_t; S [B, H, K, V]."""
    outputs = []
    for t in range(x["q"].shape[1]):
        gate = torch.exp(x["a"][:, t])[..., :, None] * torch.exp(x["b"][:, t])[..., None, :]
        S = gate * S + x["k"][:, t, :, :, None] * x["v"][:, t, :, None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", x["q"][:, t], S))
    return {"o": torch.stack(outputs, 1), "S": S}


def check(name, by_hand, core):
    program = seqc.load(str(Path(__file__).with_name(f"{name}.seq")))
    print(program.analysis)
    tensors, initial = random_call(program.spec, SIZES, seed=1, with_initial_state=True)
    if "beta" in tensors:                 # the delta rule expects unit keys
        tensors["k"] = torch.nn.functional.normalize(tensors["k"], dim=-1)
    state = program.spec.states[0].name
    want = by_hand({n: t.double() for n, t in tensors.items()}, initial[state].double())
    for backend in ("reference", "torch"):
        got = program.kernel(backend)(**tensors, initial_state=initial, output_final_state=True)
        for what, value in [("o", got.o), (state, got.final_state[state])]:
            error = float((value.double() - want[what]).abs().max() / want[what].abs().max())
            print(f"{name} {backend:>9} {what}: vs the equations, relative error {error:.2e}")
            assert error < 1e-5
    assert core in program.emit("torch")          # the chunkwise form, not a step loop


check("delta_wx", by_hand_delta_wx, "cores['chunk_delta']")
check("gated_kv", by_hand_gated_kv, "_chunk_value_gated([")
print("ok")
