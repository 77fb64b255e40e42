"""Write a new architecture as a spec; seqc proves it parallel and builds both backends."""
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

for name, got, want in [("o", parallel.o, reference.o),
                        ("S", parallel.final_state["S"], reference.final_state["S"]),
                        ("z", parallel.final_state["z"], reference.final_state["z"])]:
    error = float((got - want).abs().max() / want.abs().max())
    print(f"{name}: torch vs reference, relative error {error:.2e}")
    assert error < 1e-4
print("ok")
