"""The Plan: the backend-neutral lowering of a checked spec, built from the analysis.

Every backend except `reference` emits code from a Plan, never from a spec directly. A Plan says,
for each state group, which kernel family runs it and which expressions play which role. All
expressions are typed IR (`ir.Expr` with `dims` filled) over the spec's inputs, params, dims and
`let`s; none of them reads a state unless the family is `sequential`.

Vocabulary (per step t, dims by name as in the spec):

- `scan`     h_t = a_t * h_{t-1} + b_t  elementwise.  `ScanGroup.coefficient` is a_t
             (`log_coefficient` = log a_t when the analysis can prove a_t = exp(.) > 0, which
             lets backends cumulate in log space), `ScanGroup.offset` is b_t. A coupled group
             (jointly affine states) has a matrix of coefficients, `coupling[(i, j)]`: the
             coefficient of state j in the update of state i.
- `chunk`    S_t = exp(log_decay_t) * S_{t-1} + sum_w key_w,t (x) value_w,t   for S[Kd, Vd],
             log_decay over () or (Kd,): scalar or key-wise decay; outputs read S only as
             `query @ S` (contracting Kd) after the step's last update. `value_log_decay`
             (over (Vd,), or None) decays along the value dim too: S_t = exp(log_decay_t)
             exp(value_log_decay_t)^T * S_{t-1} + writes, an outer-product decay.
- `chunk_delta`  S_t = exp(log_decay_t) * S_{t-1}, then for each DeltaStep j in order:
             S <- S + beta_j * w_j (x) (value_j - key_j @ S), w_j = write_key_j, or key_j
             itself when write_key_j is None: the transition I - beta_j w_j key_j^T, the erase
             (read) key key_j apart from the write key w_j (Comba).
- `chunk_dplr`  S_t = exp(log_decay_t) * S_{t-1} - erase_t (x) (key_t @ S'_t)
             + sum_w key_w,t (x) value_w,t with S'_t = exp(log_decay_t - unseen_log_decay_t) S_{t-1}:
             diagonal plus low rank, the key reading the state before the decay (RWKV-7's
             generalised delta rule, unseen = log_decay) or after it (unseen None); its verdict
             is `chunk_delta`.
- `semiring` h_t = a_t (x) h_{t-1} (+) b_t in (max, +) or (logaddexp, +).
- `sequential`  the step body as written (the fallback; exact for any spec).

Outputs: `Plan.outputs` maps each output to an expression in which every read of a state
is replaced by a `ir.Name(id=read.name, ref=ir.Ref("read"))` placeholder; `Plan.reads` says
what each placeholder is (`query @ state`, or, for scan / semiring states, the state itself), and
whether it reads the state after the step (`previous=False`) or before it (`previous=True`:
S_{t-1}, the state after step t-1; at t = 0 the initial state).
`Plan.prelude` lists the `let`s that do not depend on any state, in program order: backends
compute them for all steps at once before the recurrence.

Stages: `Plan.groups` is in stage order (docs/analysis.md rule 6). A later stage's role
expressions (and the queries of its reads) may hold read placeholders of an earlier group's
state: its per-step values, which the earlier group's family has computed by then.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import ir


@dataclass(frozen=True)
class ScanGroup:
    kind = "scan"
    states: tuple[str, ...]
    coefficient: dict[str, ir.Expr]                 # state -> a_t (single-state groups)
    offset: dict[str, ir.Expr]                      # state -> b_t
    log_coefficient: dict[str, ir.Expr | None] = field(default_factory=dict)
    coupling: dict[tuple[str, str], ir.Expr] = field(default_factory=dict)   # coupled groups


@dataclass(frozen=True)
class Write:
    key: ir.Expr          # dims (Kd,) or () ...
    value: ir.Expr        # dims (Vd,) or ()


@dataclass(frozen=True)
class OneStateGroup:
    """A group of one state (`states` is its name alone)."""
    state: str

    @property
    def states(self) -> tuple[str, ...]:
        return (self.state,)


@dataclass(frozen=True)
class KeyValueGroup(OneStateGroup):
    """One state S[key_dim, value_dim] (or S[key_dim]) decayed along the key dim."""
    key_dim: str
    value_dim: str | None          # None for a vector state S[Kd] (a value of one)
    log_decay: ir.Expr | None      # dims () or (key_dim,); None = no decay


@dataclass(frozen=True)
class ChunkGroup(KeyValueGroup):
    kind = "chunk"
    writes: tuple[Write, ...]
    value_log_decay: ir.Expr | None = None    # dims (value_dim,): the decay along the value
    #   dim (GLA's outer-product gate exp(a) exp(b)^T with log_decay = a); None = none


@dataclass(frozen=True)
class DeltaStep:
    key: ir.Expr          # (key_dim,): the erase key, read as `key @ S`
    beta: ir.Expr         # ()
    value: ir.Expr        # (value_dim,)
    write_key: ir.Expr | None = None    # (key_dim,): the write direction; None: `key` itself

    @property
    def writes(self) -> ir.Expr:
        """The key the step writes along (beta * writes (x) value)."""
        return self.key if self.write_key is None else self.write_key


@dataclass(frozen=True)
class DeltaGroup(KeyValueGroup):
    kind = "chunk_delta"
    steps: tuple[DeltaStep, ...]


@dataclass(frozen=True)
class DplrGroup(KeyValueGroup):
    kind = "chunk_dplr"
    erase: ir.Expr                 # (key_dim,): what `key @ S` is taken off along
    key: ir.Expr                   # (key_dim,): the functional key, read as `key @ S`
    writes: tuple[Write, ...]
    unseen_log_decay: ir.Expr | None = None   # the log of the part of a step's decay applied
    #   after the key reads the state (RWKV-7: all of it); None: the key reads the decayed state


@dataclass(frozen=True)
class SemiringGroup(OneStateGroup):
    kind = "semiring"
    semiring: str                  # "maxplus" | "logsumexp"
    coefficient: ir.Expr           # a_t  (added to the state)
    offset: ir.Expr                # b_t  (combined with max / logaddexp)


@dataclass(frozen=True)
class SequentialGroup:
    kind = "sequential"
    states: tuple[str, ...]


Group = ScanGroup | ChunkGroup | DeltaGroup | DplrGroup | SemiringGroup | SequentialGroup
# the kinds whose state is a matrix [key_dim, value_dim], read only as `query @ state`
MATRIX_KINDS = frozenset({"chunk", "chunk_delta", "chunk_dplr"})


@dataclass(frozen=True)
class Read:
    name: str                      # the placeholder's name in output expressions
    state: str
    query: ir.Expr | None          # `query @ state`; None: the state itself (scan, semiring)
    previous: bool = False         # reads S_{t-1}, the state before the step's first update


@dataclass(frozen=True)
class Plan:
    spec: ir.Spec                  # the checked spec
    groups: tuple[Group, ...]
    prelude: tuple[ir.Let, ...]
    reads: tuple[Read, ...]
    outputs: dict[str, ir.Expr]

    @property
    def sequential(self) -> bool:
        return any(g.kind == "sequential" for g in self.groups)
