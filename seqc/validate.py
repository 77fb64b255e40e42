"""Check the tensors of a kernel call against the spec before anything runs.

Every problem raises one ValueError naming the tensor, the expected shape in dim names and sizes,
and what was given. Sizes of B, T, H and the spec's dims are bound by the first tensor that has
them and must agree everywhere after.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import ir
from .consts import const_values
from .errors import closest
from .pretty import expr as text

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class Call:
    """A validated call: tensors by role and the size of every dim."""
    inputs: dict[str, torch.Tensor]
    params: dict[str, torch.Tensor]
    initial_state: dict[str, torch.Tensor] | None
    dims: dict[str, int | float]     # every dim's size, and every const's value by its name
    dtype: torch.dtype               # the first input's: the outputs' dtype
    device: torch.device


@dataclass
class _Binder:
    sizes: dict[str, int] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def bind(self, what: str, tensor, layout: tuple[str, ...]) -> None:
        if not isinstance(tensor, torch.Tensor):
            self.problems.append(f"{what} must be a torch.Tensor of shape {_layout(layout)}, "
                                 f"not {type(tensor).__name__}")
            return
        shape = tuple(tensor.shape)
        if len(shape) != len(layout):
            self.problems.append(f"{what} must have {len(layout)} dims {_layout(layout)}"
                                 f"{self.expected(layout)}, but has shape {list(shape)}")
            return
        for dim, size in zip(layout, shape):
            if dim in self.sizes and self.sizes[dim] != size:
                self.problems.append(
                    f"{what} has shape {list(shape)} but expected {_layout(layout)}"
                    f"{self.expected(layout)}: {dim} = {size} disagrees with {dim} = "
                    f"{self.sizes[dim]} from {self.source[dim]}")
                return
        for dim, size in zip(layout, shape):
            if dim not in self.sizes:
                self.sizes[dim], self.source[dim] = size, what

    def expected(self, layout: tuple[str, ...]) -> str:
        if all(d in self.sizes for d in layout):
            return " = [" + ", ".join(str(self.sizes[d]) for d in layout) + "]"
        return ""


def _layout(layout: tuple[str, ...]) -> str:
    return "[" + ", ".join(layout) + "]"


def validate(spec: ir.Spec, arguments: dict, initial_state, output_final_state=False,
             const_defaults: bool = True) -> Call:
    """`arguments`: the call's tensors (inputs and params) and consts, by name. Without
    `const_defaults`, `dims` holds only the consts the call gives (seqc/consts.py)."""
    binder = _Binder()
    if not isinstance(output_final_state, bool):
        binder.problems.append(f"output_final_state must be True or False, not "
                               f"{output_final_state!r} ({type(output_final_state).__name__})")
    inputs, params = {}, {}
    known = {t.name: t for t in spec.inputs + spec.params}
    const_names = [c.name for c in spec.consts]
    tensors = {name: value for name, value in arguments.items() if name not in const_names}
    for name in tensors:
        if name not in known:
            guess = closest(name, [*known, *const_names])
            hint = f"; did you mean `{guess}`?" if guess else ""
            binder.problems.append(f"unknown argument `{name}`{hint} (the kernel takes "
                                   f"{_takes(known, const_names)})")
    tensors = _grouped_heads(binder, spec, tensors)
    for tensor in spec.inputs + spec.params:
        is_input = tensor.kind is ir.TensorKind.INPUT
        layout = (("B", "T", "H") if is_input else ("H",)) + tensor.dims
        what = f"{tensor.kind.value} `{tensor.name}`"
        if tensor.name not in tensors:
            binder.problems.append(f"missing {what} (expected shape {_layout(layout)})")
            continue
        if tensors[tensor.name] is None:
            continue
        binder.bind(what, tensors[tensor.name], layout)
        (inputs if is_input else params)[tensor.name] = tensors[tensor.name]
    _raise(binder)
    dtype, device = _dtype_and_device(binder, {**inputs, **params})
    states = _initial_states(binder, spec, initial_state, device)
    if binder.sizes.get("T") == 0:
        binder.problems.append("the sequence is empty (T = 0); pass at least one step")
    _empty_dims(binder, spec)
    _relabelled_sizes(binder, spec)
    _raise(binder)
    consts = const_values(spec, binder.sizes, arguments, binder.problems, const_defaults)
    _raise(binder)
    return Call(inputs, params, states, {**binder.sizes, **consts}, dtype, device)


def _takes(tensors, consts: list[str]) -> str:
    text = ", ".join(tensors) or "no tensors"
    return text + (f"; consts {', '.join(consts)}" if consts else "")


def _grouped_heads(binder: _Binder, spec: ir.Spec, tensors: dict) -> dict:
    """fla's grouped heads (GVA): H is the largest head count of the inputs, and an input with
    fewer heads, a divisor of H, is shared by consecutive groups of heads: head h reads its head
    h // (H / heads). Such an input is expanded to H heads here, before the run (an input with H
    heads is passed as it is, uncopied). Params and states have H heads. An input whose head
    count does not divide H is reported and maps to None."""
    heads = {t.name: tensors[t.name].shape[2] for t in spec.inputs
             if isinstance(tensors.get(t.name), torch.Tensor)
             and tensors[t.name].dim() == 3 + len(t.dims)}
    if not heads:
        return tensors
    most = next(iter(heads))        # the first with the most heads (a loop: traced by dynamo)
    for name, count in heads.items():
        if count > heads[most]:
            most = name
    H = heads[most]
    expanded = dict(tensors)
    for name, count in heads.items():
        if count == H:
            continue
        if count == 0 or H % count:
            binder.problems.append(
                f"input `{name}` has {count} heads but H = {H} (the largest head count, from "
                f"input `{most}`): an input has H heads, or a divisor of H whose heads are shared "
                f"by groups of H / {count} consecutive heads (fla's grouped heads)")
            expanded[name] = None        # reported; not bound
        else:
            expanded[name] = _repeat_heads(tensors[name], H // count)
    return expanded


def _repeat_heads(x: torch.Tensor, group: int) -> torch.Tensor:
    """[B, T, h, ...] -> [B, T, h * group, ...], head j * group + i being head j of x."""
    B, T, h, *rest = x.shape
    return x.unsqueeze(3).expand(B, T, h, group, *rest).reshape(B, T, h * group, *rest)


def _dtype_and_device(binder: _Binder, tensors: dict[str, torch.Tensor]):
    dtype = device = None
    for name, tensor in tensors.items():
        if tensor.dtype not in FLOATS:
            binder.problems.append(f"`{name}` has dtype {tensor.dtype}; expected a floating dtype "
                                   "(float32, bfloat16, float16 or float64)")
        elif dtype is None:
            dtype, first = tensor.dtype, name
        elif (tensor.dtype == torch.float64) != (dtype == torch.float64):
            binder.problems.append(f"`{name}` has dtype {tensor.dtype} but `{first}` has {dtype}: "
                                   "float64 does not mix with other dtypes (a call computes in "
                                   "float64 when its tensors are float64, else in float32)")
        if tensor.device.type == "meta":
            binder.problems.append(f"`{name}` is on the meta device, which holds shapes but no "
                                   "values: a kernel computes values (the step loop and the "
                                   "chunked forms read them), so pass tensors on a real device")
        if device is None:
            device, first_device = tensor.device, name
        elif tensor.device != device:
            binder.problems.append(f"`{name}` is on {tensor.device} but `{first_device}` is on "
                                   f"{device}: all tensors must be on one device")
    _raise(binder)
    return dtype, device


def _empty_dims(binder: _Binder, spec: ir.Spec) -> None:
    """A spec dim of size 0 has no meaning (`K ** -0.5` would divide by zero); B = 0 or H = 0 is
    an empty batch, which runs and returns empty outputs."""
    for dim in spec.dims:
        if binder.sizes.get(dim.name) == 0:
            binder.problems.append(f"dim `{dim.name}` has size 0 (from {binder.source[dim.name]}); "
                                   "every dim of the spec needs at least one element")


def _relabelled_sizes(binder: _Binder, spec: ir.Spec) -> None:
    """`k as [V]` reuses k's lanes as V's: each relabelled dim must have the new dim's size."""
    for statement in spec.body:
        for node in ir.walk(statement.value):
            if not (isinstance(node, ir.Call) and node.relabel is not None):
                continue
            for old, new in ir.relabelling(node).items():
                have, want = binder.sizes.get(old), binder.sizes.get(new)
                if have is not None and want is not None and have != want:
                    binder.problems.append(
                        f"`{text(node)}` (line {node.span.line}) relabels dim {old} of "
                        f"`{text(node.args[0])}` as {new}, but {old} = {have} (from "
                        f"{binder.source[old]}) and {new} = {want} (from {binder.source[new]}): "
                        "a relabelled dim must have the size of the dim it becomes")


def _initial_states(binder: _Binder, spec: ir.Spec, initial_state, device):
    if initial_state is None:
        return None
    if not isinstance(initial_state, dict):
        binder.problems.append("initial_state must be a dict from state name to a [B, H, ...] "
                               f"tensor, not {type(initial_state).__name__}")
        return None
    states = {s.name: s for s in spec.states}
    for name in initial_state:
        if name not in states:
            binder.problems.append(f"initial_state has unknown state `{name}` (the states are "
                                   f"{', '.join(states) or 'none'})")
    full = {}
    for name, state in states.items():
        layout = ("B", "H") + state.dims
        given = initial_state.get(name)
        if given is None:
            continue
        binder.bind(f"initial state `{name}`", given, layout)
        if isinstance(given, torch.Tensor):
            if given.dtype not in FLOATS:
                binder.problems.append(f"initial state `{name}` has dtype {given.dtype}; expected "
                                       "a floating dtype")
            if given.device != device:
                binder.problems.append(f"initial state `{name}` is on {given.device} but the "
                                       f"inputs are on {device}")
        full[name] = given
    _raise(binder)
    for name, state in states.items():
        if name not in full:
            shape = [binder.sizes[d] for d in ("B", "H") + state.dims]
            value = state.init if state.init is not None else 0.0
            full[name] = torch.full(shape, value, dtype=torch.float32, device=device)
    return full


def _raise(binder: _Binder) -> None:
    if binder.problems:
        raise ValueError("bad kernel call:\n  " + "\n  ".join(binder.problems))
