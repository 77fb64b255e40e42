"""Context parallelism: one sequence split along time across the ranks of a torch.distributed
process group (docs/context_parallel.md).

    fn = seqc.load("gla").kernel("torch", context_parallel=True)    # group=None: the default group
    o, ht = fn(q=q_shard, k=k_shard, v=v_shard, g=g_shard, initial_state=h0, output_final_state=True)

Rank r passes its time shard of every input, [B, T_r, H, ...] (the lengths may differ), and the
state before rank 0's first step (the same on every rank); it gets its shard's outputs, and the
state after the whole sequence on every rank. Per state group:

1. each rank summarises its shard as one element of the analysis's combine (proof.COMBINES: the
   (a, b) of a scan, the (D, U) of a chunk state, the (A, U) of a delta rule, the semiring pair),
   from the Plan's role expressions evaluated on its shard (`Roles`, `shard_summary`);
2. the summaries are all-gathered in rank order: one collective of a fixed size per rank, the
   same for any T;
3. each rank folds the summaries of the ranks before it onto the initial state with the combine:
   its incoming state; folding them all gives the final state (`fold_ranks`);
4. each rank runs its shard with the wrapped kernel (any backend) from its incoming state.

Backward: steps 1 and 4 are local autograd; `_Exchange` is step 2 and 3, and its backward is the
adjoint of the fold (autograd of the same combines, run in reverse) followed by one all-reduce of
the summaries' gradients, so that each rank's summary gets the gradient of every rank's loss.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import ir
from .kernel import KernelOutput
from .plan import MATRIX_KINDS
from .validate import validate


class ContextParallelKernel:
    """A kernel whose call takes this rank's time shard; see the module's docstring."""

    def __init__(self, program, kernel, group=None):
        plan = program.analysis.plan
        sequential = [g for g in plan.groups if g.kind == "sequential"]
        if sequential:
            names = ", ".join(f"`{s}`" for g in sequential for s in g.states)
            raise ValueError(
                f"context_parallel=True needs a parallel form for every state, but {names} of "
                f"`{program.name}` is sequential (no associative combine to join the ranks' "
                "shards; run the whole sequence on one rank)")
        self.program = program
        self.kernel = kernel
        self.group = group
        self.backend = kernel.backend
        self.combines = [program.analysis.proof(g.states[0]).combine for g in plan.groups]
        self._cores = None

    def __call__(self, initial_state=None, output_final_state: bool = False, cu_seqlens=None,
                 **tensors):
        if cu_seqlens is not None:
            raise ValueError("context_parallel=True takes no cu_seqlens: each rank passes one "
                             "time shard of the same batch of sequences")
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("context_parallel=True needs torch.distributed initialised "
                             "(torch.distributed.init_process_group) on every rank")
        spec, plan = self.program.spec, self.program.analysis.plan
        call = validate(spec, tensors, initial_state, output_final_state)
        compute = torch.float64 if call.dtype == torch.float64 else torch.float32
        initial = _initial_states(spec, call, compute)
        roles = Roles(plan, {**call.inputs, **call.params}, call.dims, compute, call.device)
        rank = dist.get_rank(self.group)
        starts = [to_layout(group, spec, initial) for group in plan.groups]
        summaries = self._summaries(roles, starts, rank, output_final_state)
        fold = _Fold(self.combines, summaries, starts, rank)
        # in the graph on every rank whenever autograd records, whatever requires a gradient
        # here: each rank's backward then reaches the exchange's all_reduce (else the ranks
        # whose tensors need no gradient would skip it and the others wait forever)
        anchor = torch.zeros((), requires_grad=torch.is_grad_enabled())
        incoming, final = _Exchange.apply(fold, self.group, fold.summaries.pack(summaries),
                                          fold.states.pack(starts), anchor)
        incoming = _as_states(plan.groups, spec, fold.states.unpack(incoming))
        out = self.kernel(initial_state=incoming, output_final_state=False, **tensors)
        final = _as_states(plan.groups, spec, fold.states.unpack(final))
        return KernelOutput({name: out[name] for name in out.keys()},
                            final if output_final_state else None)

    def _summaries(self, roles, starts, rank: int, output_final_state: bool) -> list:
        """This rank's summary of each group, the pieces of all groups in one list."""
        spec, plan = self.program.spec, self.program.analysis.plan
        last = rank == dist.get_world_size(self.group) - 1
        summaries = []
        for group, combine, start in zip(plan.groups, self.combines, starts):
            if rank == 0:           # it knows the state before its shard: a constant map
                summaries += shard_summary(group, combine, roles, spec, self._torch_cores(), start)
            elif last and not output_final_state:   # its summary would serve the final state only
                summaries += unused_summary(group, start)
            else:
                summaries += shard_summary(group, combine, roles, spec, self._torch_cores())
        return summaries

    def _torch_cores(self):
        """The torch backend's module: its chunkwise functions compute the matrix kinds'
        summaries (whatever backend runs the shard)."""
        if self._cores is None:
            from .kernel import build_kernel
            self._cores = build_kernel(self.program, "torch").module
        return self._cores

    def __repr__(self) -> str:
        return f"<seqc.Kernel {self.program.name} backend={self.backend} context_parallel>"


# ---- 1. a shard's summary --------------------------------------------------------------------

class Roles:
    """The Plan's expressions over a whole shard, as tensors [B, T, H, *dims] (broadcast views),
    computed from the call's inputs, params and consts as the torch backend computes them."""

    def __init__(self, plan, tensors, sizes, dtype=torch.float64, device=None):
        from .backends.torch_render import PRELUDE, TorchRenderer
        self.sizes, self.dtype, self.device = sizes, dtype, device
        self.env = {name: t.to(dtype) for name, t in tensors.items()}
        self.scope = {"torch": torch, "F": F, "env": self.env, "dims": sizes, "compute": dtype,
                      "device": device}      # `head` renders as an arange of them
        exec(PRELUDE, self.scope)           # the renderer's `_permute`
        self.render = TorchRenderer(lambda n: str(sizes[n.id]) if n.ref.kind == "dim"
                                    else f"env[{n.id!r}]")
        for let in plan.prelude:
            self.env[let.name] = self(let.value, let.value.dims)

    def __call__(self, expr: ir.Expr, dims: tuple[str, ...]) -> torch.Tensor:
        value = eval(self.render(expr, dims), self.scope)
        value = torch.as_tensor(value, device=self.device).to(self.dtype)
        sizes = self.sizes
        return value.expand(sizes["B"], sizes["T"], sizes["H"], *(sizes[d] for d in dims))

    def zeros(self, *dims: str | int, lead=("B", "T", "H")) -> torch.Tensor:
        """Zeros [B, T, H, *dims] (a dim by name or size; `lead=("B", "H")`: a state's)."""
        shape = [self.sizes[d] if isinstance(d, str) else d for d in (*lead, *dims)]
        return torch.zeros(shape, dtype=self.dtype, device=self.device)


def shard_summary(group, combine, roles: Roles, spec: ir.Spec, cores,
                  start=None) -> list[torch.Tensor]:
    """The combine's element for the whole shard: elementwise kinds reduce one element a step in
    log2(T) rounds of the combine; the matrix kinds run the torch backend's chunkwise function
    once, without queries (no outputs), from a state that yields the summary.

    Given `start`, the state before the shard (rank 0 knows it), the element is the constant map
    to the state after it, (0, F(start)) (a semiring's 0 is -inf): the matrix kinds then run
    from `start` at the state's width, with no K x K transition to form."""
    matrix = getattr(cores, "_" + group.kind, None) if group.kind in MATRIX_KINDS else None
    if getattr(group, "value_log_decay", None) is not None:    # decayed along the value dim
        matrix = getattr(cores, "_chunk_value_gated", None)
    if matrix is not None:
        return SUMMARIES[group.kind](group, roles, matrix, start)
    element = reduce_in_order(combine, step_elements(group, roles, spec))
    if start is None:
        return list(element)
    after = combine.apply((combine.identity(element)[0], start), element)[1]
    return [_absorbing(combine, element[0]), after]


def _absorbing(combine, transition):
    """The transition of a constant map: zero, or -inf for a semiring (it adds to the state)."""
    if combine.name in ("maxplus", "logsumexp"):
        return torch.full_like(transition, float("-inf"))
    return torch.zeros_like(transition)


def unused_summary(group, start) -> list[torch.Tensor]:
    """Zeros shaped like the group's summary, for a rank whose summary nobody reads (the last,
    when the final state is not asked for): the collective needs one size on every rank."""
    if group.kind == "chunk" and group.value_log_decay is not None:
        transition = torch.zeros_like(start)                              # D [B, H, K, V]
    elif group.kind == "chunk":
        transition = start.new_zeros(start.shape[:-1])                    # D [B, H, K]
    elif group.kind in MATRIX_KINDS:
        transition = start.new_zeros(*start.shape[:-1], start.shape[-2])  # A [B, H, K, K]
    elif group.kind == "scan" and group.coupling:
        transition = start.new_zeros(*start.shape, start.shape[-1])       # A [..., n, n]
    else:
        transition = torch.zeros_like(start)
    return [transition, torch.zeros_like(start)]


SUMMARY_CHUNK = 32          # the chunk size of the chunkwise functions computing a summary
SUMMARY_SLAB = 1024         # steps a call of them, the state carried from one slab to the next:
#   their backward through the loop over chunks costs the square of the chunks a call (each
#   chunk's slice gradient is a zero tensor of the whole call's size), as in the module's slabs


def _in_slabs(run, roles, state):
    """state after `run(cut, state)` over the shard's slabs in order; `cut(x)` slices a role
    [B, T, H, ...] (or None) to the slab."""
    T = roles.sizes["T"]
    for t0 in range(0, T, SUMMARY_SLAB):
        state = run(lambda x: None if x is None else x[:, t0:t0 + SUMMARY_SLAB], state)
    return state


def _log_decay(group, roles):
    """The log decay as the chunkwise functions take it: None, [B, T, H] or [B, T, H, K]."""
    log = group.log_decay
    return None if log is None else roles(log, log.dims and (group.key_dim,))


def _value_log_decay(group, roles):
    """A chunk state's log decay along its value dim, [B, T, H, V], or None."""
    log = getattr(group, "value_log_decay", None)
    return None if log is None else roles(log, (group.value_dim,))


def _chunk_summary(group, roles, chunk, start):
    """(D, U): D = exp(sum_t log_decay_t) [B, H, K], U the shard's writes run from a zero state
    (from `start`: (0, the state after the shard))."""
    kd, vector = (group.key_dim,), group.value_dim is None
    if group.log_decay is None:
        decay = roles.zeros(group.key_dim, lead=("B", "H")) + 1.0
    else:
        decay = roles(group.log_decay, kd).sum(1).exp()
    value_log_decay = _value_log_decay(group, roles)
    if value_log_decay is not None:         # D over both dims [B, H, K, V] (proof.py, _chunk)
        decay = decay[..., None] * value_log_decay.sum(1).exp()[..., None, :]
    keys = [roles(w.key, kd) for w in group.writes] or [roles.zeros(group.key_dim)]
    values = [roles.zeros(1) + 1.0 if vector else roles(w.value, (group.value_dim,))
              for w in group.writes] or [roles.zeros(1 if vector else group.value_dim)]
    log_decay = _log_decay(group, roles)

    def run(cut, state):
        if value_log_decay is not None:     # `chunk` is the module's `_chunk_value_gated`
            return chunk([], [cut(k) for k in keys], [cut(v) for v in values], cut(log_decay),
                         cut(value_log_decay), state, SUMMARY_CHUNK)[1]
        return chunk([], [cut(k) for k in keys], [cut(v) for v in values], cut(log_decay), state,
                     SUMMARY_CHUNK)[1]
    if start is None:
        zero = roles.zeros(group.key_dim, values[0].shape[-1], lead=("B", "H"))
        return [decay, _in_slabs(run, roles, zero)]
    return [torch.zeros_like(decay), _in_slabs(run, roles, start)]


def _with_identity(run, values, roles, K, start):
    """(A, U) of a K x K transition A and writes U from `run(cut, values, state) -> final state`
    (over the slab `cut` cuts, `_in_slabs`):
    each value [B, T, H, V] widened by K zero columns, run from the state [0 | I]
    [B, H, K, V + K], ends as [U | A]. Given `start`, (0, run(values, start))."""
    if start is not None:
        after = _in_slabs(lambda cut, state: run(cut, values, state), roles, start)
        return [after.new_zeros(*after.shape[:-1], K), after]
    V = values[0].shape[-1]
    widened = [torch.cat([v, roles.zeros(K)], -1) for v in values]
    state = roles.zeros(K, V + K, lead=("B", "H"))
    state[..., V:] = torch.eye(K, dtype=roles.dtype, device=roles.device)
    final = _in_slabs(lambda cut, state: run(cut, widened, state), roles, state)
    return [final[..., V:], final[..., :V]]


def _delta_summary(group, roles, chunk_delta, start):
    """(A, U): A [B, H, K, K] the product of the shard's transitions exp(g) (I - beta k k^T),
    U [B, H, K, V] its writes from zero: one chunkwise run of width V + K (`_with_identity`)."""
    kd, vd = (group.key_dim,), (group.value_dim,)
    keys = [roles(step.key, kd) for step in group.steps]
    writes = [roles(step.beta, kd) * key for step, key in zip(group.steps, keys)]
    log_decay = _log_decay(group, roles)

    def run(cut, values, state):
        return chunk_delta([], [cut(k) for k in keys], [cut(w) for w in writes],
                           [cut(v) for v in values], cut(log_decay), state, SUMMARY_CHUNK)[1]
    return _with_identity(run, [roles(step.value, vd) for step in group.steps], roles,
                          roles.sizes[group.key_dim], start)


def _dplr_summary(group, roles, chunk_dplr, start):
    """(A, U) of a diagonal-plus-low-rank state, as `_delta_summary`."""
    kd, vd = (group.key_dim,), (group.value_dim,)
    keys = [roles(w.key, kd) for w in group.writes] or [roles.zeros(group.key_dim)]
    values = [roles(w.value, vd) for w in group.writes] or [roles.zeros(group.value_dim)]
    unseen = group.unseen_log_decay
    unseen = None if unseen is None else roles(unseen, unseen.dims and kd)
    erase, key, log_decay = roles(group.erase, kd), roles(group.key, kd), _log_decay(group, roles)

    def run(cut, values, state):
        return chunk_dplr([], cut(erase), cut(key), [cut(k) for k in keys],
                          [cut(v) for v in values], cut(log_decay), cut(unseen), state,
                          SUMMARY_CHUNK)[1]
    return _with_identity(run, values, roles, roles.sizes[group.key_dim], start)


SUMMARIES = {"chunk": _chunk_summary, "chunk_delta": _delta_summary, "chunk_dplr": _dplr_summary}


def reduce_in_order(combine, element):
    """The summary of a run from one element a step (pieces [B, T, H, ...]): neighbours combined
    in pairs, the earlier on the left, log2(T) rounds; an odd last element waits a round."""
    while element[0].shape[1] > 1:
        even = element[0].shape[1] // 2 * 2
        paired = combine.apply(tuple(p[:, 0:even:2] for p in element),
                               tuple(p[:, 1:even:2] for p in element))
        element = tuple(torch.cat([x, p[:, even:]], 1) for x, p in zip(paired, element))
    return tuple(p[:, 0] for p in element)


# One transition summary a step, [B, T, H, ...] per piece (the combine's element for one step):
# the whole summary of the elementwise kinds, and the fallback for a matrix kind the torch
# backend runs as a step loop.

def step_elements(group, roles: Roles, spec: ir.Spec) -> tuple[torch.Tensor, torch.Tensor]:
    return globals()[f"_steps_{group.kind}"](group, roles, spec)


def _outer(key, value):
    return key[..., :, None] * value[..., None, :]


def _exp_or_one(roles, log_decay, key_dim):
    if log_decay is None:
        return roles.zeros(key_dim) + 1.0
    return torch.exp(roles(log_decay, (key_dim,)))


def _steps_scan(group, roles, spec):
    if group.coupling:          # the states stacked on the last axis: A [.., n, n], b [.., n]
        dims = spec.tensor(group.states[0]).dims
        zero = torch.zeros_like(roles(group.offset[group.states[0]], dims))
        a = torch.stack([torch.stack([roles(group.coupling[(i, j)], dims)
                                      if (i, j) in group.coupling else zero
                                      for j in group.states], -1) for i in group.states], -2)
        return a, torch.stack([roles(group.offset[s], dims) for s in group.states], -1)
    [state] = group.states
    dims = spec.tensor(state).dims
    return roles(group.coefficient[state], dims), roles(group.offset[state], dims)


def _steps_semiring(group, roles, spec):
    dims = spec.tensor(group.state).dims
    return roles(group.coefficient, dims), roles(group.offset, dims)


def _writes(group, roles):
    """The summed key (x) value writes of a step: [B, T, H, key, value] (value 1: a vector)."""
    kd, vd = (group.key_dim,), (group.value_dim,) if group.value_dim else ()
    total = roles.zeros(group.key_dim, group.value_dim if vd else 1)
    for write in group.writes:
        value = roles(write.value, vd)
        total = total + _outer(roles(write.key, kd), value if vd else value[..., None])
    return total


def _steps_chunk(group, roles, spec):
    decay = _exp_or_one(roles, group.log_decay, group.key_dim)
    value_log_decay = _value_log_decay(group, roles)
    if value_log_decay is not None:         # D over both dims [B, T, H, K, V]
        decay = decay[..., None] * value_log_decay.exp()[..., None, :]
    return decay, _writes(group, roles)


def _steps_chunk_delta(group, roles, spec):
    kd, vd = (group.key_dim,), (group.value_dim,)
    decay = _exp_or_one(roles, group.log_decay, group.key_dim)
    transition = torch.diag_embed(decay)
    offset = roles.zeros(group.key_dim, group.value_dim)
    eye = torch.eye(roles.sizes[group.key_dim], dtype=roles.dtype, device=roles.device)
    for step in group.steps:
        key, beta = roles(step.key, kd), roles(step.beta, kd)
        householder = eye - _outer(beta * key, key)
        transition = householder @ transition
        offset = householder @ offset + _outer(beta * key, roles(step.value, vd))
    return transition, offset


def _steps_chunk_dplr(group, roles, spec):
    kd = (group.key_dim,)
    decay = _exp_or_one(roles, group.log_decay, group.key_dim)
    seen = roles(group.key, kd) * decay
    if group.unseen_log_decay is not None:
        seen = seen / torch.exp(roles(group.unseen_log_decay, kd))
    return torch.diag_embed(decay) - _outer(roles(group.erase, kd), seen), _writes(group, roles)


# ---- states as the combines hold them -----------------------------------------------------------

def to_layout(group, spec: ir.Spec, states: dict):
    """A group's [B, H, ...] states as the combine holds them: a matrix state [key, value], a
    vector chunk state [key, 1], a coupled group's states stacked last."""
    if group.kind == "scan" and group.coupling:
        return _stack([states[s] for s in group.states])
    value = states[group.states[0]]
    if group.kind in MATRIX_KINDS:
        declared = spec.tensor(group.state).dims
        if len(declared) == 1:
            return value[..., None]
        if declared[0] != group.key_dim:
            return value.swapaxes(-1, -2)
    return value


def _stack(values):
    if isinstance(values[0], torch.Tensor):
        return torch.stack(values, -1)
    import numpy
    return numpy.stack(values, -1)


def from_layout(group, spec: ir.Spec, value) -> dict:
    """The inverse of `to_layout`: {state: [B, H, ...]}."""
    if group.kind == "scan" and group.coupling:
        return {s: value[..., i] for i, s in enumerate(group.states)}
    if group.kind in MATRIX_KINDS:
        declared = spec.tensor(group.state).dims
        if len(declared) == 1:
            value = value[..., 0]
        elif declared[0] != group.key_dim:
            value = value.swapaxes(-1, -2)
    return {group.states[0]: value}


def _as_states(groups, spec, values) -> dict:
    states = {}
    for group, value in zip(groups, values):
        states.update(from_layout(group, spec, value))
    return states


def _initial_states(spec: ir.Spec, call, compute: torch.dtype) -> dict:
    """Every state's initial value [B, H, ...] in the compute dtype: the given one, else the
    spec's declared initial value."""
    given = call.initial_state or {}
    states = {}
    for state in spec.states:
        if state.name in given:
            states[state.name] = given[state.name].to(compute)
            continue
        shape = [call.dims[d] for d in ("B", "H") + state.dims]
        value = state.init if state.init is not None else 0.0
        states[state.name] = torch.full(shape, value, dtype=compute, device=call.device)
    return states


# ---- 2, 3. the exchange -----------------------------------------------------------------------

class _Packing:
    """Tensors of fixed shapes <-> one flat vector (one collective carries them all)."""

    def __init__(self, tensors):
        self.shapes = [tuple(t.shape) for t in tensors]
        self.sizes = [math.prod(s) for s in self.shapes]

    def pack(self, tensors) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def unpack(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [part.view(shape) for part, shape in zip(flat.split(self.sizes), self.shapes)]


class _Fold:
    """Step 3: from the gathered summaries [R, n] and the initial states, this rank's incoming
    states and the final states, by the groups' combines in rank order."""

    def __init__(self, combines, summaries, starts, rank: int):
        self.combines = combines
        self.summaries = _Packing(summaries)
        self.states = _Packing(starts)
        self.rank = rank

    def __call__(self, gathered: torch.Tensor, initial: torch.Tensor):
        ranks = [self.summaries.unpack(row) for row in gathered]
        incoming, final = [], []
        for g, (combine, start) in enumerate(zip(self.combines, self.states.unpack(initial))):
            pieces = [(summary[2 * g], summary[2 * g + 1]) for summary in ranks]
            states = fold_ranks(combine, start, pieces)
            incoming.append(states[self.rank])
            final.append(states[-1])
        return self.states.pack(incoming), self.states.pack(final)


def fold_ranks(combine, start, summaries) -> list:
    """The state entering each run and the last: [start, s_0(start), s_1(s_0(start)), ...],
    applying a summary to a state as the combine of (identity's first piece, state) with it."""
    element = (combine.identity(summaries[0])[0], start)
    states = [start]
    for summary in summaries:
        element = combine.apply(element, summary)
        states.append(element[1])
    return states


class _Exchange(torch.autograd.Function):
    """(local summary, initial states) -> (incoming states, final states), flat vectors."""

    @staticmethod
    def forward(ctx, fold, group, local, initial, anchor):
        gathered = _all_gather(local, group)
        ctx.fold, ctx.group = fold, group
        ctx.save_for_backward(gathered, initial)
        return fold(gathered, initial)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_incoming, d_final):
        gathered, initial = ctx.saved_tensors
        with torch.enable_grad():
            gathered = gathered.detach().requires_grad_(True)
            initial = initial.detach().requires_grad_(True)
            incoming, final = ctx.fold(gathered, initial)
            d_gathered, d_initial = torch.autograd.grad(
                (incoming, final), (gathered, initial), (d_incoming, d_final), allow_unused=True)
        if d_gathered is None:
            d_gathered = torch.zeros_like(gathered)
        d_gathered = _all_reduce(d_gathered, ctx.group)     # every rank's loss, summed
        return None, None, d_gathered[ctx.fold.rank], d_initial, None


def _all_gather(tensor: torch.Tensor, group) -> torch.Tensor:
    """[R, n]: every rank's `tensor` [n], in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.stack(parts)


def _all_reduce(tensor: torch.Tensor, group) -> torch.Tensor:
    tensor = tensor.contiguous().clone()
    dist.all_reduce(tensor, group=group)
    return tensor
