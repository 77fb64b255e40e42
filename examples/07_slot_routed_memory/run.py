"""Reductions over a dim (`softmax(r, N)`), a relabelled dim (`k as [V]`) and the head index
(`head`, `H`) in one spec: seqc proves it a delta rule (chunk_delta), and every backend matches
the equations written out here in plain PyTorch (not by seqc)."""
import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")      # no GPU: the Triton interpreter

import torch  # noqa: E402

import seqc  # noqa: E402
from seqc.inputs import random_call  # noqa: E402

program = seqc.load(str(Path(__file__).with_name("slot_routed_delta.seq")))
print(program.analysis)
assert program.analysis.kind("S") == "chunk_delta"

sizes = {"B": 1, "T": 12, "H": 3, "K": 8, "V": 8, "N": 4}
tensors, initial = random_call(program.spec, sizes, seed=1, with_initial_state=True)

# the equations of slot_routed_delta.seq, one step at a time, in fp64 ([B, H, ...] per step)
q, k, v, r, beta = (tensors[n].double() for n in ("q", "k", "v", "r", "beta"))
gain = tensors["slot_gain"].double()                                   # [H, N]
gamma = torch.exp(-(8 / sizes["H"]) * (torch.arange(sizes["H"]) + 1) / 16).double()
S, outputs = initial["S"].double(), []
for t in range(sizes["T"]):
    p = torch.softmax(r[:, t], dim=-1)                                 # [B, H, N]
    w = torch.sigmoid((p * gain).sum(-1))                              # [B, H]
    S = gamma[:, None, None] * S
    error = (v[:, t] - k[:, t]) - torch.einsum("bhk,bhkv->bhv", k[:, t], S)
    S = S + (w * beta[:, t])[..., None, None] * k[:, t, ..., None] * error[..., None, :]
    outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
by_hand = {"o": torch.stack(outputs, dim=1), "S": S}

modes = program.kernel("triton").module.MODES
runs = [("reference", {}), ("torch", {})] + [("triton", {"mode": m}) for m in modes]
for backend, options in runs:
    result = program.kernel(backend, **options)(**tensors, initial_state=initial,
                                                output_final_state=True)
    for name, got in [("o", result.o), ("S", result.final_state["S"])]:
        want = by_hand[name]
        error = float((got.double() - want).abs().max() / want.abs().max())
        print(f"{backend:>9} {options.get('mode', ''):>15} {name}: relative error {error:.2e}")
        assert error < 1e-5

try:                                        # K and V must have one size: `k as [V]`
    program.kernel("reference")(**{**tensors, "v": torch.randn(1, 12, 3, 9)})
except ValueError as problem:
    assert "relabels dim K of `k` as V" in str(problem)
    print("a call with K != V:", str(problem).splitlines()[-1].strip())
print("ok")
