"""The map from the real line onto a declared range `in (lo, hi)`, and its inverse.

    (-inf, inf)   x                                  (no map)
    (-inf, hi)    hi - softplus(-x)                  (logsigmoid when hi = 0)
    (lo, inf)     lo + softplus(x)                   (softplus when lo = 0)
    (lo, hi)      lo + (hi - lo) * sigmoid(x)        (sigmoid for (0, 1))

Random call tensors (seqc/inputs.py) draw a ranged tensor as the map of a normal; `seqc.nn.Mixer`
applies it to the projection of each ranged input and to its stored (unconstrained) params.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import ir


def to_range(x: torch.Tensor, value_range: ir.Range | None) -> torch.Tensor:
    """Map real x into the open interval `value_range` (unchanged when there is none)."""
    forward, _ = _MAPS[form_of(value_range)]
    return forward(x, *_bounds(value_range))


def from_range(y: torch.Tensor, value_range: ir.Range | None) -> torch.Tensor:
    """The inverse of `to_range`: the real x with to_range(x) = y, for y inside the range."""
    _, inverse = _MAPS[form_of(value_range)]
    return inverse(y, *_bounds(value_range))


def _bounds(value_range: ir.Range | None) -> tuple[float, float]:
    return (value_range.low, value_range.high) if value_range else (-math.inf, math.inf)


def form_of(value_range: ir.Range | None) -> str:
    """"line" (no range or (-inf, inf)), "below" (-inf, hi), "above" (lo, inf), "between"."""
    low, high = _bounds(value_range)
    return {(True, True): "line", (True, False): "below", (False, True): "above",
            (False, False): "between"}[(math.isinf(low), math.isinf(high))]


def _softplus_inverse(z: torch.Tensor) -> torch.Tensor:
    """log(exp(z) - 1) for z > 0, written so that it neither overflows nor cancels."""
    return z + torch.log(-torch.expm1(-z))


_MAPS = {   # form -> (map, inverse), each taking (tensor, low, high)
    "line": (lambda x, low, high: x, lambda y, low, high: y),
    "below": (lambda x, low, high: F.logsigmoid(x) if high == 0 else high - F.softplus(-x),
              lambda y, low, high: -_softplus_inverse(high - y)),
    "above": (lambda x, low, high: low + F.softplus(x),
              lambda y, low, high: _softplus_inverse(y - low)),
    "between": (lambda x, low, high: low + (high - low) * torch.sigmoid(x),
                lambda y, low, high: torch.logit((y - low) / (high - low))),
}
