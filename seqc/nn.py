"""seqc.nn: a token-mixing layer built from any spec (docs/nn.md).

    mixer = seqc.nn.Mixer("gated_deltanet", hidden_size=256, num_heads=4,
                          short_conv=("q", "k", "v"), l2norm=("q", "k"))
    y, cache = mixer(x, use_cache=True)            # x, y [B, T, hidden]
    y_next, cache = mixer(x_next, cache=cache, use_cache=True)

For each spec input: a linear projection [B, T, hidden] -> [B, T, H, *dims], an optional short
causal depthwise convolution, the map onto the input's declared range (seqc/ranges.py) or SiLU
after a convolution of an unranged input, an optional L2 normalisation; the recurrence runs through
`seqc.load(spec).kernel(backend)`; its output, per head, goes through an RMSNorm times
silu(gate) and the output projection back to `hidden`. At T = 1 the recurrence takes one step of
the reference backend's step loop instead of the chunked parallel form.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import ir
from .api import Program, load
from .consts import const_values
from .errors import SpecError, closest
from .ranges import form_of, from_range, to_range

DISTANCE_OF_INPUT_GATES = (1e-3, 1e-1)   # half-open input: bias at this distance from the end
DISTANCE_OF_PARAMS = (1.0, 16.0)         # half-open param (Mamba's A): this far from the end
UPPER_GAP_BITS_OF_PARAMS = (5.0, 12.0)   # finite-range param (RetNet's gamma): 1 - 2^-u of it


@dataclass
class MixerCache:
    """What decoding carries between calls: the recurrent states ([B, H, ...], fp32, by state
    name) and, for each convolved input, the last `conv_size - 1` projected tokens [B, W - 1, C]."""
    states: dict[str, torch.Tensor]
    conv: dict[str, torch.Tensor] = field(default_factory=dict)


class ShortConvolution(nn.Module):
    """A causal depthwise convolution over time, [B, T, C] -> [B, T, C], fed the tail of the
    previous call (zeros at the start) so that a sequence cut anywhere convolves the same."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        bound = 1 / math.sqrt(kernel_size)        # nn.Conv1d's default for a depthwise filter
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, tail: torch.Tensor | None):
        B, T, C = x.shape
        if tail is None:
            tail = x.new_zeros(B, self.kernel_size - 1, C)
        window = torch.cat([tail.to(x.dtype), x], dim=1)
        if T == 1:                               # one token: a dot product, no conv1d call
            y = torch.einsum("bwc,cw->bc", window, self.weight[:, 0]).unsqueeze(1)
        else:
            y = F.conv1d(window.transpose(1, 2), self.weight, groups=C).transpose(1, 2)
        return y, window[:, window.shape[1] - (self.kernel_size - 1):]


class GatedRMSNorm(nn.Module):
    """RMSNorm over the last dim (a head's output), times a learned weight, times silu(gate) when
    a gate is given (flash-linear-attention's FusedRMSNormGated, in plain torch); at least fp32."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)
        wide = x.to(compute)
        y = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        if gate is not None:
            y = y * F.silu(gate.to(compute))
        return y.to(x.dtype)


class Mixer(nn.Module):
    """A token mixer [B, T, hidden] -> [B, T, hidden] whose recurrence is a seqc spec.

    spec:        a stdlib name, a path to a .seq file, or a seqc Program
    hidden_size: the model width; num_heads: H, the spec's head count
    dims:        sizes of the spec's dims, e.g. {"K": 64, "V": 128}; a dim not named here gets
                 `head_dim`, which defaults to hidden_size // num_heads
    short_conv:  inputs to convolve (e.g. ("q", "k", "v")) with a causal depthwise convolution of
                 width `conv_size`
    l2norm:      inputs to L2-normalise over their last dim (delta-rule keys: ("q", "k"))
    output:      which spec output to read (default: the first declared)
    output_gate: multiply the normed output by silu(W_g x); output_norm: RMSNorm each head's
                 output; norm_eps: its epsilon
    backend:     the kernel for T > 1 ("auto": Triton on CUDA, torch otherwise); `options` go to it
    """

    def __init__(self, spec, hidden_size: int, num_heads: int, *, dims: dict | None = None,
                 head_dim: int | None = None, short_conv=(), conv_size: int = 4, l2norm=(),
                 output: str | None = None, output_gate: bool = True, output_norm: bool = True,
                 norm_eps: float = 1e-5, backend: str = "auto", **options):
        super().__init__()
        self.program = _program(spec)
        spec_ir = self.program.spec
        _check_positive(hidden_size=hidden_size, num_heads=num_heads, conv_size=conv_size)
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.sizes = _dim_sizes(spec_ir, dims or {}, head_dim, hidden_size, num_heads)
        self.consts = const_values(spec_ir, self.sizes, {}, [])   # their defaults (seqc/consts.py)
        self.short_conv = _names_of(spec_ir, short_conv, "short_conv")
        self.l2norm = _names_of(spec_ir, l2norm, "l2norm")
        _check_l2norm(spec_ir, self.l2norm)
        if not spec_ir.inputs:
            raise ValueError(f"spec `{spec_ir.name}` has no inputs: a Mixer projects its input "
                             "x onto the spec's inputs, so it needs at least one")
        self.output = _output_of(spec_ir, output)

        self.in_proj = nn.ModuleDict()
        self.conv = nn.ModuleDict()
        for tensor in spec_ir.inputs:
            width = num_heads * self._per_head(tensor.dims)
            projection = nn.Linear(hidden_size, width, bias=tensor.range is not None)
            if tensor.range is not None:
                _init_input_bias(projection.bias, tensor.range)
            self.in_proj[_key(tensor.name)] = projection
            if tensor.name in self.short_conv:
                self.conv[_key(tensor.name)] = ShortConvolution(width, conv_size)
        self.params = nn.ParameterDict()
        for tensor in spec_ir.params:
            shape = (num_heads, *(self.sizes[d] for d in tensor.dims))
            self.params[_key(tensor.name)] = nn.Parameter(_initial_param(shape, tensor.range))

        out_dims = self.output.value.dims
        self.head_out = self._per_head(out_dims)
        self.gate_proj = nn.Linear(hidden_size, num_heads * self.head_out, bias=False) \
            if output_gate else None
        self.norm = GatedRMSNorm(self.head_out, norm_eps) if output_norm else None
        self.out_proj = nn.Linear(num_heads * self.head_out, hidden_size, bias=False)

        self.backend = backend
        self.kernel = self.program.kernel(backend, **options)
        self.step = self.program.kernel("reference")

    def _per_head(self, dims: tuple[str, ...]) -> int:
        return math.prod(self.sizes[d] for d in dims)

    # ---- the pieces of forward ----------------------------------------------------------------

    def param_values(self) -> dict[str, torch.Tensor]:
        """The spec's params [H, ...] as the kernel sees them: mapped into their ranges."""
        return {t.name: to_range(self.params[_key(t.name)], t.range)
                for t in self.program.spec.params}

    @torch.no_grad()
    def set_param(self, name: str, value) -> None:
        """Set a spec param to `value` (inside its range; a tensor [H, ...] or a number)."""
        tensor = self.program.spec.tensor(name)
        if tensor is None or tensor.kind is not ir.TensorKind.PARAM:
            raise ValueError(_unknown("param", name, [t.name for t in self.program.spec.params]))
        raw = self.params[_key(name)]
        raw.copy_(from_range(torch.as_tensor(value, dtype=raw.dtype).expand_as(raw), tensor.range))

    def project(self, x: torch.Tensor, conv_tails: dict | None = None):
        """The spec's inputs [B, T, H, *dims] computed from x [B, T, hidden], and the new
        convolution tails (by input name)."""
        B, T, _ = x.shape
        inputs, tails = {}, {}
        for tensor in self.program.spec.inputs:
            key = _key(tensor.name)
            value = self.in_proj[key](x)
            if tensor.name in self.short_conv:
                value, tails[tensor.name] = self.conv[key](value, (conv_tails or {}).get(tensor.name))
                value = F.silu(value) if tensor.range is None else value
            value = to_range(value, tensor.range)
            value = value.reshape(B, T, self.num_heads, *(self.sizes[d] for d in tensor.dims))
            if tensor.name in self.l2norm:
                value = F.normalize(value, dim=-1)
            inputs[tensor.name] = value
        return inputs, tails

    def recurrence(self, inputs: dict, states: dict | None, want_states: bool):
        """The spec's output [B, T, H, *dims] and (when wanted) its final states. One token takes
        the reference step loop (one step, no padded chunk); longer inputs take `self.kernel`."""
        first = next(iter(inputs.values()))
        params = {name: value.to(first.dtype) for name, value in self.param_values().items()}
        if first.shape[1] == 1:
            return self._one_step(inputs, params, states, want_states)
        result = self.kernel(**inputs, **params, initial_state=states,
                             output_final_state=want_states)
        return result[self.output.name], result.final_state

    def _one_step(self, inputs: dict, params: dict, states: dict | None, want_states: bool):
        """One step of the reference module's `run` (docs/backends.md), called directly: the
        tensors are the Mixer's own, so the kernel call's validation (a third of a step's time at
        decoding sizes) is skipped."""
        first = next(iter(inputs.values()))
        dims = {"B": first.shape[0], "T": 1, "H": self.num_heads, **self.sizes,
                **self.consts}
        outputs, final = self.step.module.run(inputs, params, dims, states, want_states)
        return outputs[self.output.name].to(first.dtype), final

    def read_out(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """[B, T, H, *dims] -> [B, T, hidden]: per head RMSNorm times silu(gate), then out_proj."""
        B, T = o.shape[:2]
        o = o.reshape(B, T, self.num_heads, self.head_out)
        gate = None
        if self.gate_proj is not None:
            gate = self.gate_proj(x).view(B, T, self.num_heads, self.head_out)
        if self.norm is not None:
            o = self.norm(o, gate)
        elif gate is not None:
            o = o * F.silu(gate)
        return self.out_proj(o.reshape(B, T, self.num_heads * self.head_out))

    def forward(self, x: torch.Tensor, cache: MixerCache | None = None, use_cache: bool = False):
        """x [B, T, hidden] -> (y [B, T, hidden], a MixerCache to continue from, or None).

        `cache` (from an earlier call with use_cache=True) continues that sequence."""
        self._check_call(x, cache)
        inputs, tails = self.project(x, cache.conv if cache is not None else None)
        o, states = self.recurrence(inputs, cache.states if cache is not None else None, use_cache)
        y = self.read_out(o, x)
        return y, (MixerCache(states, tails) if use_cache else None)

    def _check_call(self, x, cache) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.hidden_size:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"Mixer input x must have shape [B, T, hidden_size = "
                             f"{self.hidden_size}], not {shape}")
        if x.shape[1] == 0:
            raise ValueError("Mixer input x is empty (T = 0); pass at least one token")
        if cache is None:
            return
        if not isinstance(cache, MixerCache):
            raise ValueError(f"cache must be the MixerCache an earlier call returned with "
                             f"use_cache=True, not {type(cache).__name__}")
        missing = [s.name for s in self.program.spec.states if s.name not in cache.states]
        if missing:
            raise ValueError(f"cache has no state {', '.join(f'`{n}`' for n in missing)}: pass the "
                             "MixerCache an earlier call returned with use_cache=True")
        batch = {int(t.shape[0]) for t in (*cache.states.values(), *cache.conv.values())}
        if batch != {x.shape[0]}:
            raise ValueError(f"cache holds {' and '.join(map(str, sorted(batch)))} sequences but "
                             f"x has B = {x.shape[0]}")

    def extra_repr(self) -> str:
        sizes = ", ".join(f"{d}={n}" for d, n in self.sizes.items())
        return (f"spec={self.program.name}, hidden_size={self.hidden_size}, "
                f"num_heads={self.num_heads}, {sizes}, backend={self.backend}")


# ---- construction helpers -----------------------------------------------------------------------

def _program(spec) -> Program:
    if isinstance(spec, Program):
        return spec
    if not isinstance(spec, (str, Path)):
        raise ValueError(f"spec must be a stdlib name, a path to a .seq file or a seqc Program, "
                         f"not {type(spec).__name__}")
    try:
        return load(spec)
    except SpecError as error:
        raise ValueError(f"cannot build a Mixer from spec `{spec}`:\n{error}") from error


def _check_positive(**sizes) -> None:
    for name, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{name} must be a positive int, not {size!r}")


def _dim_sizes(spec: ir.Spec, dims: dict, head_dim, hidden_size: int, num_heads: int) -> dict:
    """The size of every spec dim: from `dims`, else `head_dim`, else hidden_size // num_heads."""
    declared = [d.name for d in spec.dims]
    for name in dims:
        if name not in declared:
            raise ValueError(_unknown("dim", name, declared, f"spec `{spec.name}`"))
    missing = [d for d in declared if d not in dims]
    if missing and head_dim is None:
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads "
                             f"{num_heads}: give head_dim= or dims= for {', '.join(missing)}")
        head_dim = hidden_size // num_heads
    sizes = {d: dims.get(d, head_dim) for d in declared}
    _check_positive(**({"head_dim": head_dim} if missing else {}),
                    **{f"dims['{d}']": dims[d] for d in dims})
    return sizes


def _names_of(spec: ir.Spec, names, argument: str) -> tuple[str, ...]:
    """Validate a tuple of input names given as `argument`."""
    if isinstance(names, str):
        names = (names,)
    inputs = [t.name for t in spec.inputs]
    for name in names:
        if name not in inputs:
            raise ValueError(f"{argument}: " + _unknown("input", name, inputs, f"spec `{spec.name}`"))
    return tuple(names)


def _check_l2norm(spec: ir.Spec, names: tuple[str, ...]) -> None:
    for name in names:
        tensor = spec.tensor(name)
        if not tensor.dims:
            raise ValueError(f"l2norm: input `{name}` is a scalar per head; only a vector can be "
                             "L2-normalised")
        if tensor.range is not None:
            raise ValueError(f"l2norm: input `{name}` has a declared range, which L2 "
                             "normalisation would leave")


def _output_of(spec: ir.Spec, name: str | None) -> ir.Output:
    outputs = spec.outputs
    if name is None:
        return outputs[0]
    for out in outputs:
        if out.name == name:
            return out
    raise ValueError(_unknown("output", name, [o.name for o in outputs], f"spec `{spec.name}`"))


def _unknown(kind: str, name: str, known: list[str], where: str = "the spec") -> str:
    guess = closest(name, known)
    hint = f"; did you mean `{guess}`?" if guess else ""
    return f"{where} has no {kind} `{name}`{hint} (its {kind}s: {', '.join(known) or 'none'})"


_TAKEN = frozenset(dir(nn.ModuleDict()) + dir(nn.ParameterDict()))


def _key(name: str) -> str:
    """A spec name as a ModuleDict / ParameterDict key: `values`, `type`, `training`... are
    attributes of the dicts, so those get a trailing underscore."""
    return f"{name}_" if name in _TAKEN else name


@torch.no_grad()
def _init_input_bias(bias: torch.Tensor, value_range: ir.Range) -> None:
    """A ranged input's projection bias: half-open ranges start at a distance log-uniform in
    DISTANCE_OF_INPUT_GATES from their finite end (decays exp(g) in [0.90, 0.999], Mamba's dt),
    anything else at the centre of the map (sigmoid(0) = 1/2 of a finite range)."""
    form = form_of(value_range)
    if form in ("line", "between"):
        bias.zero_()
        return
    distance = _log_uniform(bias.shape, *DISTANCE_OF_INPUT_GATES)
    target = value_range.high - distance if form == "below" else value_range.low + distance
    bias.copy_(from_range(target, value_range))


@torch.no_grad()
def _initial_param(shape: tuple[int, ...], value_range: ir.Range | None) -> torch.Tensor:
    """A spec param, stored unconstrained (the kernel gets to_range of it):

    half-open range      its finite end -+ uniform(1, 16)           (Mamba's A = -uniform(1, 16))
    finite (lo, hi)      lo + (hi - lo)(1 - 2^-u), u ~ uniform(5, 12)   (RetNet's decays gamma)
    none, matrix [H, .., n]   uniform(-1/sqrt(n), 1/sqrt(n))   (torch.nn.LSTMCell's weights)
    none, vector or scalar    0
    """
    form = form_of(value_range)
    if form == "line":
        if len(shape) < 3:
            return torch.zeros(shape)
        bound = 1 / math.sqrt(shape[-1])
        return torch.empty(shape).uniform_(-bound, bound)
    if form == "between":
        gap = torch.exp2(-torch.empty(shape).uniform_(*UPPER_GAP_BITS_OF_PARAMS))
        return from_range(value_range.low + (value_range.high - value_range.low) * (1 - gap),
                          value_range)
    distance = torch.empty(shape).uniform_(*DISTANCE_OF_PARAMS)
    end = value_range.high - distance if form == "below" else value_range.low + distance
    return from_range(end, value_range)


def _log_uniform(shape, low: float, high: float) -> torch.Tensor:
    return torch.exp(torch.empty(shape).uniform_(math.log(low), math.log(high)))
