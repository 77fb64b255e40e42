"""`chunk`: a matrix state [Kd, Vd] read only as `q @ S` (or only as `S @ q`: Kd is then its last
dim), decay over () or (Kd,) times a factor over (Vd,), and every write term a key over Kd times a
value over Vd.
"""
from __future__ import annotations

import sympy as sp

from .. import plan
from ..pretty import expr as text
from .factors import dims_text, outer_products, split_factors, transposed_fact
from .logs import log_of
from .proof import COMBINES, Proof
from .reads import ReadForms
from .symbolic import Symbolic


def _key_dim(sym: Symbolic, dims, decay_dims: set[str], reads: ReadForms) -> str | None:
    side = reads.matmul_side
    if side == "left":
        return dims[0]
    if side == "right":
        return dims[-1]
    if side is None:
        return next((d for d in dims if decay_dims <= {d}), dims[0])
    return None


def chunk_proof(sym: Symbolic, state, decay, writes, reads: ReadForms, facts) -> Proof | None:
    dims = sym.spec.tensor(state).dims
    if len(dims) != 2:
        return None
    key_dim = _key_dim(sym, dims, sym.dims(decay), reads)
    if key_dim is None:
        return None
    value_dim = next(d for d in dims if d != key_dim)
    sides = _decay_sides(sym, decay, key_dim, value_dim)
    split = outer_products(sym, writes, key_dim, value_dim)
    if sides is None or split is None:
        return None
    key_decay, value_decay = sides
    log_decay = None if key_decay == 1 else log_of(sym, key_decay, strict=True)
    value_log_decay = None if value_decay == 1 else log_of(sym, value_decay, strict=True)
    if (key_decay != 1 and log_decay is None) or (value_decay != 1 and value_log_decay is None):
        return None   # the chunkwise form cumulates log decays: a decay of unknown sign scans
    group = plan.ChunkGroup(state, key_dim, value_dim, log_decay, split, value_log_decay)
    facts.append(f"the decay is over {dims_text(sym.dims(decay))}, every write is a key over "
                 f"{key_dim} times a value over {value_dim}, and outputs read `{state}` by `@`")
    if value_decay != 1:
        facts.append(f"the decay `{text(sym.to_ir(decay))}` factors into "
                     f"`{text(sym.to_ir(key_decay))}` over {dims_text(sym.dims(key_decay))} "
                     f"and `{text(sym.to_ir(value_decay))}` over ({value_dim}): an outer product "
                     f"(diag(a) {state} diag(b)), elementwise along both dims")
    transposed = key_dim != dims[0]
    if transposed:
        facts.append(transposed_fact(state, key_dim, value_dim))
    return Proof("chunk", (state,), group,
                 {"decay": sym.to_ir(decay), "log_decay": log_decay,
                  "value_log_decay": value_log_decay, "writes": split,
                  "key_dim": key_dim, "value_dim": value_dim, "transposed": transposed},
                 COMBINES["chunk"], tuple(facts))


def _decay_sides(sym: Symbolic, decay: sp.Expr, key_dim: str, value_dim: str):
    """The decay as (a factor over () or the key dim, a factor over the value dim), or None when
    some factor spans both (`exp(a + b)` with a over K and b over V is one atom: write
    `exp(a) * exp(b)`)."""
    return split_factors(sym, decay, key_dim, value_dim)
