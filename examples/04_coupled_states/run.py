"""Two states that read each other: seqc proves them jointly affine and scans them in parallel;
the parallel form is checked against the reference loop and against the equations written here."""
from pathlib import Path

import torch

import seqc
from seqc.inputs import random_call

program = seqc.load(str(Path(__file__).with_name("momentum.seq")))
print(program.analysis)

sizes = {"B": 2, "T": 500, "H": 2, "D": 16}
tensors, initial = random_call(program.spec, sizes, torch.float64, seed=3, with_initial_state=True)
initial = {k: v.double() for k, v in initial.items()}
parallel = program.kernel("torch")(**tensors, initial_state=initial, output_final_state=True)
reference = program.kernel("reference")(**tensors, initial_state=initial, output_final_state=True)

m, h, ys = initial["m"], initial["h"], []          # the equations, written out
for t in range(sizes["T"]):
    m = tensors["a"][:, t] * m + tensors["x"][:, t]
    h = tensors["b"][:, t] * h + m
    ys.append(h)
by_hand = torch.stack(ys, dim=1)

for name, got in [("torch", parallel.y), ("reference", reference.y)]:
    error = float((got - by_hand).abs().max() / by_hand.abs().max())
    print(f"{name:>9} vs the equations: relative error {error:.2e}")
    assert error < 1e-10
assert "_coupled_scan" in program.emit("torch")      # the parallel form, not a step loop
print("ok")
