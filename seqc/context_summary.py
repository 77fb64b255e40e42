"""Context parallelism, step 1 (seqc/context_parallel.py, docs/context_parallel.md): a time shard
summarised as one element of its state group's combine, from the Plan's role expressions evaluated
on the shard; and the states as the combines hold them (`to_layout`, `from_layout`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import ir
from .plan import MATRIX_KINDS


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
    """(A, U): A [B, H, K, K] the product of the shard's transitions exp(g) (I - beta w k^T)
    (k the erase key, w the write key: k itself in the delta rule), U [B, H, K, V] its writes
    from zero: one chunkwise run of width V + K (`_with_identity`)."""
    kd, vd = (group.key_dim,), (group.value_dim,)
    keys = [roles(step.key, kd) for step in group.steps]
    writes = [roles(step.beta, kd) * (key if step.write_key is None else roles(step.write_key, kd))
              for step, key in zip(group.steps, keys)]
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
        key, write = roles(step.key, kd), roles(step.beta, kd) * roles(step.writes, kd)
        householder = eye - _outer(write, key)
        transition = householder @ transition
        offset = householder @ offset + _outer(write, roles(step.value, vd))
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


def as_states(groups, spec, values) -> dict:
    states = {}
    for group, value in zip(groups, values):
        states.update(from_layout(group, spec, value))
    return states


def initial_states(spec: ir.Spec, call, compute: torch.dtype) -> dict:
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
