"""`seqc run`: random inputs through every backend, each compared with the reference.

Without `--backends` it runs every backend that can run here: the reference, torch, and triton
when triton is installed and can run (a CUDA device, or its interpreter: `TRITON_INTERPRET=1`
already set, or nothing has imported triton yet, so that the emitted module can set it).
"""
from __future__ import annotations

import importlib.util
import os
import sys

TOLERANCE = {"float64": 1e-9, "float32": 1e-4, "bfloat16": 2e-2}


def triton_can_run() -> bool:
    """Whether the triton backend can run in this process (see the module docstring)."""
    if "triton" not in sys.modules and importlib.util.find_spec("triton") is None:
        return False
    import torch
    if torch.cuda.is_available():
        return True
    return os.environ.get("TRITON_INTERPRET") == "1" or "triton" not in sys.modules


def available_backends() -> list[str]:
    return ["reference", "torch"] + (["triton"] if triton_can_run() else [])


def parse_sizes(text: str) -> dict[str, int]:
    sizes = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"bad size `{item}`: write NAME=N with N >= 1, e.g. K=16")
        sizes[name.strip()] = int(value)
    return sizes


def compare(result, expected) -> tuple[float, float]:
    """Max absolute error and max error relative to the expected tensor's largest magnitude."""
    diff = (result.double() - expected.double()).abs()
    finite = expected.double().abs()
    finite = finite[finite.isfinite()]
    scale = float(finite.max()) if finite.numel() else 1.0
    both_inf = (result.double() == expected.double())
    max_abs = float(diff.masked_fill(both_inf, 0.0).max()) if diff.numel() else 0.0
    return max_abs, max_abs / max(scale, 1e-30)


def run_command(args) -> int:
    import torch

    from .api import load
    from .cli import reporting
    from .inputs import random_call
    with reporting("run"):
        program = load(args.file)
        sizes = {"B": args.batch, "T": args.steps, "H": args.heads}
        sizes.update({d.name: 16 for d in program.spec.dims})
        sizes.update(parse_sizes(args.dims))
        dtype = getattr(torch, args.dtype)
        tensors, initial = random_call(program.spec, sizes, dtype, args.seed,
                                       with_initial_state=True)
    backends = available_backends() if args.backends is None else \
        [b.strip() for b in args.backends.split(",") if b.strip()]
    reference = program.kernel("reference")(**tensors, initial_state=initial,
                                            output_final_state=True)
    tolerance = TOLERANCE[args.dtype]
    shape = ", ".join(f"{k}={v}" for k, v in sizes.items())
    print(f"{program.name}: {shape}, {args.dtype}, seed {args.seed}; relative tolerance "
          f"{tolerance:g} (max |error| / max |reference|)")
    print(f"{'backend':<12} {'tensor':<14} {'max abs err':>12} {'rel err':>10}  verdict")
    status = 0
    for backend in backends:
        try:
            result = program.kernel(backend)(**tensors, initial_state=initial,
                                             output_final_state=True)
        except Exception as error:  # a backend that cannot run is reported, not a traceback
            print(f"{backend:<12} {'-':<14} {'-':>12} {'-':>10}  FAILED: {error}")
            status = 1
            continue
        pairs = [(f"out {n}", result[n], reference[n]) for n in reference.keys()]
        pairs += [(f"state {n}", result.final_state[n], reference.final_state[n])
                  for n in reference.final_state]
        for label, got, want in pairs:
            max_abs, relative = compare(got, want)
            ok = relative <= tolerance
            status |= 0 if ok else 1
            print(f"{backend:<12} {label:<14} {max_abs:>12.3e} {relative:>10.3e}  "
                  f"{'ok' if ok else 'MISMATCH'}")
    return status
