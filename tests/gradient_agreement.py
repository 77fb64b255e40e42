"""Gradients of a backend's parallel forms against the sequential reference's (torch.autograd).

For a compiled spec and random inputs (a fixed seed, tiny shapes), `compare` takes the gradient
of one random scalar loss (every output and every finite final state weighted by fixed random
tensors) with respect to every input, param and initial state, under the reference and under one
backend call, and reports each tensor's error relative to the largest reference gradient of that
tensor (at least 1). A gradient that is NaN or inf where the reference's is finite is a failure
whatever the tolerance: a training step must never be handed a non-finite gradient the
definition does not have. Where the reference's own gradient is not finite the entry is skipped
(the spec's math has no finite gradient there; docs/backends.md "Numerics").

`variants(program, backend)` lists the calls worth comparing: for torch the default (derived
adjoints), autograd through the ops (`adjoint=False`) and checkpointed slabs; for Triton every
mode the module offers for the spec (`MODES`), each training on its own core or recomputation.
Used by tests/test_gradients_edited.py (the CI slice) and scripts/fuzz_training.py (the fuzz).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from seqc.inputs import random_call

TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-4}


@dataclass(frozen=True)
class Disagreement:
    """One gradient that failed: its tensor, the call's options, the relative error (inf for a
    non-finite gradient where the reference is finite) and a short reason."""
    tensor: str
    options: tuple
    error: float
    reason: str

    def __str__(self) -> str:
        return f"d{self.tensor} {dict(self.options)}: {self.reason} (error {self.error:.3g})"


def variants(program, backend: str) -> list[dict]:
    """The kernel options of each parallel call of `program` on `backend` (module-level: no call
    is made). Triton: one per mode of its module; torch: adjoint cores, plain autograd, and
    checkpointed slabs (chunks of 4 so that a few steps make several chunks)."""
    if backend == "torch":
        return [{"chunk_size": 4}, {"chunk_size": 4, "adjoint": False},
                {"chunk_size": 4, "checkpoint": True}]
    module = program.kernel("triton").module
    return [{"mode": mode, "chunk_size": 16} for mode in module.MODES]


def call_tensors(program, steps: int, seed: int, dtype, extremes: bool | str = False):
    """Random inputs and params ([B=1, T=steps, H=2], spec dims 3, 4, ...) and an initial state,
    in `dtype`; with `extremes`, hard resets and zero gates (tests/test_hard_resets.py), or
    with `extremes="resets"` the hard resets alone (`-inf` log gates; gates in (0, 1) kept)."""
    sizes = {"B": 1, "T": steps, "H": 2, **{d.name: 3 + i for i, d in enumerate(program.spec.dims)}}
    tensors, initial = random_call(program.spec, sizes, dtype, seed=seed, with_initial_state=True)
    if extremes:
        from test_hard_resets import with_extreme_gates
        extreme = with_extreme_gates(program.spec, tensors, steps)
        gates = {t.name for t in program.spec.inputs + program.spec.params
                 if t.range and (t.range.low, t.range.high) == (0.0, 1.0)}
        tensors = {n: tensors[n] if extremes == "resets" and n in gates else t
                   for n, t in extreme.items()}
    return tensors, {n: t.to(dtype) for n, t in initial.items()}


def gradients(kernel, tensors: dict, initial: dict, seed: int = 7) -> dict[str, torch.Tensor]:
    """d loss / d every tensor of the call and every initial state (`initial X`), the loss a
    fixed random weighting of every output and every finite final state."""
    leaves = {n: t.clone().requires_grad_() for n, t in tensors.items()}
    state = {n: t.clone().requires_grad_() for n, t in initial.items()}
    out = kernel(**leaves, initial_state=state, output_final_state=True)
    gen = torch.Generator().manual_seed(seed)
    weigh = lambda v: (v * torch.randn(v.shape, generator=gen, dtype=torch.float64)  # noqa: E731
                       .to(v.dtype)).where(torch.isfinite(v), 0).sum()
    loss = sum(weigh(out[n]) for n in out.keys()) + sum(weigh(v)
                                                      for v in out.final_state.values())
    wanted = {**leaves, **{f"initial {n}": t for n, t in state.items()}}
    grads = torch.autograd.grad(loss, list(wanted.values()), allow_unused=True)
    return {n: torch.zeros_like(t) if g is None else g
            for (n, t), g in zip(wanted.items(), grads)}


def disagreements(got: dict, want: dict, tolerance: float, options: dict) -> list[Disagreement]:
    """Every tensor whose gradient `got` is non-finite where `want` is finite, or further from
    `want` than `tolerance` relative to max(1, max |want|) over the finite entries of `want`."""
    found = []
    key = tuple(sorted(options.items()))
    for name, expected in want.items():
        result = got[name].to(expected.dtype)
        finite = torch.isfinite(expected)
        if not torch.isfinite(result[finite]).all():
            found.append(Disagreement(name, key, float("inf"),
                                      "non-finite where the reference is finite"))
            continue
        if not finite.any():
            continue
        scale = max(1.0, float(expected[finite].abs().max()))
        error = float((result[finite] - expected[finite]).abs().max()) / scale
        if error > tolerance:
            found.append(Disagreement(name, key, error, f"relative error > {tolerance:g}"))
    return found


def compare(program, backend: str, options: dict, steps: int = 7, seed: int = 0,
            dtype=torch.float64, extremes: bool | str = False,
            tolerance: float | None = None) -> list[Disagreement]:
    """The gradients of `program` called on `backend` with `options` against the reference's,
    on the same random call (`call_tensors`); [] when they agree."""
    tensors, initial = call_tensors(program, steps, seed, dtype, extremes)
    reference_dtype = torch.float64
    want = gradients(program.kernel("reference"),
                     {n: t.to(reference_dtype) for n, t in tensors.items()},
                     {n: t.to(reference_dtype) for n, t in initial.items()}, seed + 7)
    got = gradients(program.kernel(backend, **options), tensors, initial, seed + 7)
    return disagreements(got, want, tolerance or TOLERANCE[dtype], options)
