"""Kernels as torch custom ops, so that `torch.compile(fullgraph=True)` and `torch.export` see one
opaque op per call: no graph break, no recompile per sequence length (docs/compile.md).

Every Kernel registers two ops under `torch.ops.seqc` when it is built:

    seqc::<spec>_<backend>_<digest>(Tensor[] inputs, Tensor[] params, Tensor?[] initial_state,
        Tensor? cu_seqlens, bool output_final_state, float? <const>...) -> Tensor[]
    seqc::<spec>_<backend>_<digest>_backward(<the same>, Tensor?[] grads, bool[] needs) -> Tensor[]

`<digest>` hashes the spec's source, the backend, seqc's generator and the kernel's options, so
that one kernel is one op in every process. The forward returns the outputs in declaration
order (in the first input's dtype), then, with `output_final_state`, the final states (fp32; fp64
for fp64 inputs), every one a fresh contiguous tensor. Its fake implementation computes those
shapes and dtypes from the inputs' shapes alone. Its autograd is the backward op, which runs the
backend's own backward: the kernel's eager call again under `torch.enable_grad()` (autograd of
the emitted torch code; for Triton, seqc/autograd.py) and `torch.autograd.grad`.

Under compile, `Kernel.__call__` validates the call's shapes in traced code (guards, no values
read), fills the default initial states and calls the forward op. What reads values stays eager,
inside the op when it runs, never traced: `cu_seqlens` (the sequence bounds), the consts'
defaults (computed from the dim sizes), and the emitted module's own branches.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import torch

from .validate import validate

_LIBRARY = torch.library.Library("seqc", "FRAGMENT")
_REGISTERED: dict[str, "KernelOps"] = {}


@dataclass
class KernelOps:
    name: str
    forward: object         # torch.ops.seqc.<name>
    backward: object        # torch.ops.seqc.<name>_backward


def op_name(kernel) -> str:
    """`<spec>_<backend>_<12 hex digits>`: stable across processes, a valid op name."""
    from . import __version__
    from .cache import generator_digest
    options = ",".join(f"{key}={_stable(value)}" for key, value in sorted(kernel.options.items()))
    # a solver's kernel (seqc/newton.py) keeps its options in its module, not in `options`
    solver = repr(getattr(kernel.module, "options", "")) if type(kernel).__name__ != "Kernel" else ""
    text = "\n".join([kernel.program.source, kernel.backend, __version__,
                      generator_digest(kernel.backend), options, type(kernel).__name__, solver])
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    spec = re.sub(r"\W", "_", kernel.program.name)
    return f"{spec}_{kernel.backend}_{digest}"


def _stable(value) -> str:
    """An option's value as text: its repr, the same in every process; a function (a recurrence
    core, `chunk_core=`) is told apart by its identity too, so its op is named per process."""
    if callable(value):
        return f"{getattr(value, '__qualname__', '')}@{id(value):x}"
    return repr(value)


def register(kernel) -> KernelOps:
    """The ops of `kernel`, defined on first use (a kernel built twice shares them)."""
    name = op_name(kernel)
    if name not in _REGISTERED:
        _REGISTERED[name] = _define(name, kernel)
    return _REGISTERED[name]


def _define(name: str, kernel) -> KernelOps:
    spec = kernel.program.spec
    consts = "".join(f", float? {c.name}" for c in spec.consts)
    call = ("Tensor[] inputs, Tensor[] params, Tensor?[] initial_state, Tensor? cu_seqlens, "
            "bool output_final_state")
    _LIBRARY.define(f"{name}({call}{consts}) -> Tensor[]")
    _LIBRARY.define(f"{name}_backward({call}, Tensor?[] grads, bool[] needs{consts}) -> Tensor[]")
    qualified = f"seqc::{name}"
    forward, backward = _Implementation(kernel), _Backward(kernel)
    torch.library.impl(qualified, "CompositeExplicitAutograd", lib=_LIBRARY)(forward)
    torch.library.register_fake(qualified, lib=_LIBRARY)(_Fake(spec))
    torch.library.impl(f"{qualified}_backward", "CompositeExplicitAutograd",
                       lib=_LIBRARY)(backward)
    torch.library.register_fake(f"{qualified}_backward", lib=_LIBRARY)(_fake_backward)
    ops = KernelOps(name, getattr(torch.ops.seqc, name), getattr(torch.ops.seqc, f"{name}_backward"))
    torch.library.register_autograd(qualified, _Autograd(ops, len(spec.consts)),
                                    setup_context=_setup_context, lib=_LIBRARY)
    return ops


class _Arguments:
    """The op's flat arguments back as a kernel call's keywords."""

    def __init__(self, spec):
        self.inputs = [t.name for t in spec.inputs]
        self.params = [t.name for t in spec.params]
        self.states = [s.name for s in spec.states]
        self.consts = [c.name for c in spec.consts]

    def call(self, inputs, params, initial_state, cu_seqlens, output_final_state, consts):
        given = {name: value for name, value in zip(self.consts, consts) if value is not None}
        states = {name: s for name, s in zip(self.states, initial_state) if s is not None}
        return dict(initial_state=states or None, output_final_state=output_final_state,
                    cu_seqlens=cu_seqlens, **dict(zip(self.inputs, inputs)),
                    **dict(zip(self.params, params)), **given)


class _Implementation:
    """The forward op: the kernel's eager call, its results fresh contiguous tensors."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.arguments = _Arguments(kernel.program.spec)

    def results(self, inputs, params, initial_state, cu_seqlens, output_final_state, consts):
        out = self.kernel.eager_call(**self.arguments.call(
            inputs, params, initial_state, cu_seqlens, output_final_state, consts))
        compute = _compute_dtype(inputs[0].dtype)
        results = [out[name] for name in out.keys()]
        if output_final_state:
            results += [out.final_state[name].to(compute) for name in self.arguments.states]
        return results

    def __call__(self, inputs, params, initial_state, cu_seqlens, output_final_state, *consts):
        with torch.no_grad():
            results = self.results(inputs, params, initial_state, cu_seqlens, output_final_state,
                                   consts)
        given = [t for t in [*inputs, *params, *initial_state] if t is not None]
        return [_fresh(r, given) for r in results]


class _Backward:
    """The backward op: the kernel's eager call again, differentiable, and autograd.grad of it."""

    def __init__(self, kernel):
        self.forward = _Implementation(kernel)

    def __call__(self, inputs, params, initial_state, cu_seqlens, output_final_state, grads,
                 needs, *consts):
        given = [*inputs, *params, *initial_state]
        leaves = [None if t is None else t.detach().requires_grad_(need)
                  for t, need in zip(given, needs)]
        n_in, n_par = len(inputs), len(params)
        with torch.enable_grad(), _autograd_dispatch():
            results = self.forward.results(leaves[:n_in], leaves[n_in:n_in + n_par],
                                           leaves[n_in + n_par:], cu_seqlens,
                                           output_final_state, consts)
        pairs = [(r, g) for r, g in zip(results, grads) if g is not None and r.requires_grad]
        wanted = [leaf for leaf in leaves if leaf is not None and leaf.requires_grad]
        found = iter(torch.autograd.grad([r for r, _ in pairs], wanted, [g for _, g in pairs],
                                         allow_unused=True) if pairs else [None] * len(wanted))
        gradients = []
        for leaf in leaves:
            gradient = next(found) if leaf is not None and leaf.requires_grad else None
            gradients.append(inputs[0].new_zeros(0) if leaf is None else
                             torch.zeros_like(leaf) if gradient is None else
                             torch.empty_like(leaf).copy_(gradient))   # the fake's strides
        return gradients


def _autograd_dispatch():
    """A context recording autograd even where the caller's dispatch does not (the op run below
    a dispatch mode, e.g. opcheck's schema check, has the autograd keys excluded)."""
    excluded = torch._C._dispatch_tls_local_exclude_set()
    for key in (torch._C.DispatchKey.AutogradFunctionality, torch._C.DispatchKey.ADInplaceOrView):
        excluded = excluded.remove(key)
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), excluded)


def _fake_backward(inputs, params, initial_state, cu_seqlens, output_final_state, grads, needs,
                   *consts):
    """A gradient like each argument (an empty tensor for an initial state not given)."""
    return [inputs[0].new_empty(0) if t is None else torch.empty_like(t)
            for t in [*inputs, *params, *initial_state]]


def _setup_context(ctx, inputs, output):
    tensors, cu_seqlens, output_final_state = inputs[:3], inputs[3], inputs[4]
    ctx.counts = [len(group) for group in tensors]
    flat = [t for group in tensors for t in group]
    ctx.present = [t is not None for t in flat]
    ctx.needs = [t is not None and t.requires_grad for t in flat]
    ctx.save_for_backward(*[t for t in flat if t is not None],
                          *([cu_seqlens] if cu_seqlens is not None else []))
    ctx.has_cu_seqlens = cu_seqlens is not None
    ctx.output_final_state = output_final_state
    ctx.consts = inputs[5:]


class _Autograd:
    """Backward of the forward op: the backward op, its gradients regrouped as the arguments."""

    def __init__(self, ops: KernelOps, n_consts: int):
        self.ops = ops
        self.n_consts = n_consts

    def __call__(self, ctx, grads):
        saved = list(ctx.saved_tensors)
        cu_seqlens = saved.pop() if ctx.has_cu_seqlens else None
        present = iter(saved)
        flat = [next(present) if here else None for here in ctx.present]
        n_in, n_par, _ = ctx.counts
        gradients = self.ops.backward(flat[:n_in], flat[n_in:n_in + n_par], flat[n_in + n_par:],
                                      cu_seqlens, ctx.output_final_state, list(grads), ctx.needs,
                                      *ctx.consts)
        gradients = [g if need else None for g, need in zip(gradients, ctx.needs)]
        groups = [gradients[:n_in], gradients[n_in:n_in + n_par], gradients[n_in + n_par:]]
        # a list argument holding a None (an initial state not given) takes no gradient: None
        lists = [group if all(ctx.present[start:start + count]) else None
                 for group, start, count in zip(groups, (0, n_in, n_in + n_par), ctx.counts)]
        return (*lists, None, None, *([None] * self.n_consts))


class _Fake:
    """Shapes and dtypes of the forward op's results from the arguments' shapes (no data)."""

    def __init__(self, spec):
        from .backends.torch.roles import output_dims
        self.spec = spec
        self.output_dims = [output_dims(o) for o in spec.outputs]

    def __call__(self, inputs, params, initial_state, cu_seqlens, output_final_state, *consts):
        sizes = self.sizes(inputs, params, initial_state)
        first = inputs[0]
        B, T = first.shape[0], first.shape[1]
        H = max(x.shape[2] for x in inputs)     # grouped heads: the largest head count
        results = [first.new_empty((B, T, H, *[sizes[d] for d in dims]))
                   for dims in self.output_dims]
        if output_final_state:
            batch = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
            compute = _compute_dtype(first.dtype)
            results += [first.new_empty((batch, H, *[sizes[d] for d in s.dims]), dtype=compute)
                        for s in self.spec.states]
        return results

    def sizes(self, inputs, params, initial_state) -> dict:
        """The size of every spec dim, from the first tensor that has it."""
        sizes: dict = {}
        layouts = [(3, t.dims, x) for t, x in zip(self.spec.inputs, inputs)]
        layouts += [(1, t.dims, x) for t, x in zip(self.spec.params, params)]
        layouts += [(2, s.dims, x) for s, x in zip(self.spec.states, initial_state)
                    if x is not None]
        for lead, dims, tensor in layouts:
            for dim, size in zip(dims, tensor.shape[lead:]):
                sizes.setdefault(dim, size)
        return sizes


def _packed_states(spec, inputs, params, initial_state, cu_seqlens) -> list:
    """With cu_seqlens, the initial states as the op takes them: all None when none is given;
    else every state, the missing ones at their declared init, [N, H, ...] (a list argument
    holding a None takes no gradient: the given states' gradients would be lost)."""
    given = initial_state if isinstance(initial_state, dict) else {}
    if not given or not all(isinstance(x, torch.Tensor) for x in inputs):
        return [given.get(s.name) for s in spec.states]     # a bad call: the op names it
    sizes = _Fake(spec).sizes(inputs, params, [given.get(s.name) for s in spec.states])
    N, H = cu_seqlens.shape[0] - 1, max(x.shape[2] for x in inputs)
    return [given.get(s.name) if given.get(s.name) is not None else
            torch.full((N, H, *[sizes[d] for d in s.dims]), s.init if s.init is not None else 0.0,
                       dtype=torch.float32, device=inputs[0].device)
            for s in spec.states]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fresh(result: torch.Tensor, given: list) -> torch.Tensor:
    """`result` contiguous and sharing no memory with the op's arguments (a custom op's outputs
    may not alias its inputs)."""
    result = result.contiguous()
    storages = {t.untyped_storage().data_ptr() for t in given}
    return result.clone() if result.untyped_storage().data_ptr() in storages else result


def call(kernel, arguments: dict, initial_state, output_final_state: bool, cu_seqlens):
    """`kernel(...)` through its forward op: what `Kernel.__call__` runs under compile."""
    from .kernel import KernelOutput
    spec = kernel.program.spec
    names = _Arguments(spec)
    consts = [arguments.get(name) for name in names.consts]
    tensors = {name: value for name, value in arguments.items() if name not in names.consts}
    if cu_seqlens is None:
        checked = validate(spec, arguments, initial_state, output_final_state,
                           const_defaults=False)
        inputs, params = list(checked.inputs.values()), list(checked.params.values())
        states = [(checked.initial_state or {}).get(name) for name in names.states]
    else:       # validated when the op runs (the bounds are values)
        inputs = [tensors.get(name) for name in names.inputs]
        params = [tensors.get(name) for name in names.params]
        states = _packed_states(spec, inputs, params, initial_state, cu_seqlens)
    results = kernel.ops.forward(inputs, params, states, cu_seqlens, output_final_state, *consts)
    outputs = dict(zip([o.name for o in spec.outputs], results))
    final = (dict(zip(names.states, results[len(outputs):])) if output_final_state else None)
    return KernelOutput(outputs, final)
