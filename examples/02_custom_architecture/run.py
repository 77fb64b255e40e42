"""Write a new architecture as a spec; seqc proves it parallel and builds both backends, each
checked against the spec's equations written out here in plain PyTorch (not by seqc)."""
from pathlib import Path

import torch

import seqc
from seqc.inputs import random_call

program = seqc.load(str(Path(__file__).with_name("normalized_gla.seq")))
print(program.analysis)                       # which parallel form each state admits, and why

sizes = {"B": 2, "T": 300, "H": 2, "K": 16, "V": 16}
tensors, initial = random_call(program.spec, sizes, seed=1, with_initial_state=True)
reference = program.kernel("reference")(**tensors, initial_state=initial, output_final_state=True)
parallel = program.kernel("torch")(**tensors, initial_state=initial, output_final_state=True)

# the equations of normalized_gla.seq, one step at a time, in fp64 ([B, H, ...] per step)
q, k, v, g = (tensors[n].double() for n in ("q", "k", "v", "g"))
S, z, outputs = initial["S"].double(), initial["z"].double(), []
for t in range(sizes["T"]):
    a = torch.exp(g[:, t])[..., None]                                  # [B, H, 1]
    S = a[..., None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]   # S_t = a_t S + k_t v_t^T
    z = a * z + k[:, t]                                                # z_t = a_t z + k_t
    qS = torch.einsum("bhk,bhkv->bhv", q[:, t], S)
    qz = torch.einsum("bhk,bhk->bh", q[:, t], z)
    outputs.append(qS / torch.clamp(qz.abs(), min=1.0)[..., None])
by_hand = {"o": torch.stack(outputs, dim=1), "S": S, "z": z}

for backend, result in [("reference", reference), ("torch", parallel)]:
    for name, got in [("o", result.o), ("S", result.final_state["S"]),
                      ("z", result.final_state["z"])]:
        want = by_hand[name]
        error = float((got.double() - want).abs().max() / want.abs().max())
        print(f"{backend:>9} {name}: vs the equations, relative error {error:.2e}")
        assert error < 1e-5
assert "_chunk(" in program.emit("torch")        # the parallel form, not a step loop
print("ok")
