"""`chunk_delta`, diagonal plus low rank (RWKV-7, Plan group `chunk_dplr`): after pure decays, one
update D * S - e (k @ S) + writes, D a decay and e, k over the key dim.
"""
from __future__ import annotations

from .. import plan
from ..pretty import expr as text
from .factors import dims_text, outer_products, transposed_fact
from .logs import log_of
from .low_rank import one_low_rank
from .proof import COMBINES, Proof
from .symbolic import Symbolic


def dplr_proof(sym: Symbolic, state, update, coefficient, write, dims, decayed, facts, side="left"):
    """After pure decays `decayed`: D * S - e (k @ S) + sum key (x) value, i.e. the coefficient
    D - e <k| with D and e over the key dim; k reads the state after `decayed`, before D."""
    key_dim, value_dim = dims
    low_rank = one_low_rank(sym, state, update, coefficient, key_dim, side)
    if low_rank is None:
        return None
    decay, erase, key = low_rank
    if sym.has_functional(decay) or sym.has_functional(erase) or sym.has_functional(write) \
            or not sym.dims(decay) <= {key_dim} or not sym.dims(erase) <= {key_dim}:
        return None
    writes = outer_products(sym, write, key_dim, value_dim)
    total = decayed * decay
    log_decay = None if total == 1 else log_of(sym, total, strict=True)
    unseen = None if decay == 1 else log_of(sym, decay, strict=True)
    if writes is None or (total != 1 and log_decay is None) or (decay != 1 and unseen is None):
        return None
    group = plan.DplrGroup(state, key_dim, value_dim, log_decay, sym.to_ir(erase), key, writes,
                           unseen)
    facts.append(f"the transition is a decay over {dims_text(sym.dims(total))} minus the rank "
                 f"one `{text(group.erase)}` `{text(key)}`^T: diagonal plus low rank")
    if side == "right":
        facts.append(transposed_fact(state, key_dim, value_dim))
    return Proof("chunk_delta", (state,), group,
                 {"decay": sym.to_ir(total), "log_decay": log_decay, "erase": group.erase,
                  "key": key, "unseen_decay": None if decay == 1 else sym.to_ir(decay),
                  "writes": writes, "low_rank": (f"{text(group.erase)} {text(key)}^T",),
                  "key_dim": key_dim, "value_dim": value_dim, "transposed": side == "right"},
                 COMBINES["chunk_dplr"], tuple(facts))
