"""Random call tensors for a spec: what `seqc run` and `seqc bench` feed the kernels.

A tensor declared with a range is drawn inside it: `(-inf, 0)` as logsigmoid of a normal (the log
gates of fla's tests), `(0, 1)` as sigmoid of a normal, `(0, inf)` as softplus, `(lo, hi)` as
lo + (hi - lo) * sigmoid, a half-open range by softplus from its finite end. A tensor with no range
is normal with variance 1/n, n the number of its elements a step (so that a key has norm about 1
and a delta-rule transition I - beta k k^T stays a contraction, as it is with normalised keys).
"""
from __future__ import annotations

import math

import torch

from . import ir
from .ranges import to_range


def random_tensor(tensor: ir.Tensor, shape: list[int], generator: torch.Generator,
                  dtype: torch.dtype) -> torch.Tensor:
    normal = torch.randn(shape, generator=generator, dtype=torch.float64)
    if tensor.range is None:
        per_step = math.prod(shape[-len(tensor.dims):]) if tensor.dims else 1
        return (normal / math.sqrt(per_step)).to(dtype)
    return to_range(normal, tensor.range).to(dtype)


def random_call(spec: ir.Spec, sizes: dict[str, int], dtype=torch.float32, seed: int = 0,
                with_initial_state: bool = False) -> tuple[dict, dict | None]:
    """Keyword tensors for a kernel call, and optionally a random initial state."""
    generator = torch.Generator().manual_seed(seed)
    missing = [d.name for d in spec.dims if d.name not in sizes]
    if missing:
        raise ValueError(f"give a size for dim {', '.join(missing)} (e.g. --dims "
                         f"{','.join(f'{d}=16' for d in missing)})")
    tensors = {}
    for tensor in spec.inputs + spec.params:
        lead = [sizes["B"], sizes["T"], sizes["H"]] if tensor.kind is ir.TensorKind.INPUT \
            else [sizes["H"]]
        tensors[tensor.name] = random_tensor(tensor, lead + [sizes[d] for d in tensor.dims],
                                             generator, dtype)
    if not with_initial_state:
        return tensors, None
    states = {}
    for state in spec.states:
        shape = [sizes["B"], sizes["H"]] + [sizes[d] for d in state.dims]
        states[state.name] = (torch.randn(shape, generator=generator, dtype=torch.float64)
                              * 0.5).to(torch.float32)
    return tensors, states
