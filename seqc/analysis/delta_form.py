"""`chunk_delta`, the delta rule: a matrix state whose coefficient holds `k @ S`, pure decays then
steps S + beta w (v - k @ S) with beta scalar, k (the erase key, read) and w (the write key: k
itself, or another one, Comba's I - beta w k^T) over the key dim, v over the value dim; a single
update of the diagonal-plus-low-rank shape the steps do not take (a decay inside the update, a
write of its own) goes to dplr_form.py. On the value side (`S @ k`, read
`S @ q`) the same rules hold for S^T: its last dim is the key dim.
"""
from __future__ import annotations

import sympy as sp

from .. import plan
from ..pretty import expr as text
from .affine import Refused, not_affine
from .blame import Blame, dense_transition
from .dplr_form import dplr_proof
from .factors import dims_text, transposed_fact
from .logs import log_of
from .low_rank import one_low_rank
from .proof import COMBINES, Proof, Reason
from .reads import ReadForms
from .symbolic import Symbolic


def delta_proof(sym: Symbolic, state: str, reads: ReadForms, facts) -> Proof:
    dims = sym.spec.tensor(state).dims
    if len(dims) != 2:
        raise Refused(dense_transition(sym, (state,)) or not_affine(sym, state))
    side = _step_side(sym, state)
    if side is None:
        raise Refused(dense_transition(sym, (state,)) or not_affine(sym, state))
    if reads.matmul_side not in (None, side):
        raise Refused(_not_a_key_read(state, dims, reads, side))
    # a value-side rule (`S @ k`, k over the last dim) is the key-side rule of S^T: the key dim
    # is the one the steps contract, and the backends hold the state transposed (docs/analysis.md)
    key_dim, value_dim = dims if side == "left" else dims[::-1]
    decay, steps = sp.Integer(1), []
    for n, update in enumerate(sym.updates[state], 1):
        poly = sym.poly(sym.per_update(state, n), (state,))
        if poly is None or poly.total_degree() > 1:
            raise Refused(Blame(sym, (state,)).find() or not_affine(sym, state))
        symbol = sym.state_symbols[state]
        coefficient, write = poly.coeff_monomial(symbol), poly.coeff_monomial(1)
        if not sym.has_functional(coefficient):
            if steps or write != 0:
                raise Refused(Reason(f"`{state}` is decayed or written outside a delta step after "
                                     "a delta step", update.span, update.value))
            if not sym.dims(coefficient) <= {key_dim}:
                raise Refused(_decay_off_key_dim(sym, state, update, coefficient, key_dim,
                                                 value_dim))
            decay *= coefficient
            continue
        step = _delta_step(sym, state, update, coefficient, write, key_dim, value_dim, side)
        if step is None and n == len(sym.updates[state]) and not steps:
            dplr = dplr_proof(sym, state, update, coefficient, write, (key_dim, value_dim), decay,
                         facts, side)
            if dplr is not None:
                return dplr
        if step is None:
            raise Refused(dense_transition(sym, (state,), low_rank=_rank_one(sym, coefficient,
                                                                             key_dim, side))
                          or not_affine(sym, state))
        steps.append(step)
    log_decay = None if decay == 1 else log_of(sym, decay, strict=True)
    if decay != 1 and log_decay is None:
        update = sym.updates[state][0]
        raise Refused(Reason(f"the decay `{text(sym.to_ir(decay))}` is not provably positive, so "
                             "it cannot be cumulated in log space", update.span, update.value))
    group = plan.DeltaGroup(state, key_dim, value_dim, log_decay, tuple(steps))
    facts.append(f"each step's transition is {_transitions(steps)}, keys over {key_dim}: "
                 "identity minus rank one, after a decay over "
                 f"{dims_text(sym.dims(decay))}")
    if side == "right":
        facts.append(transposed_fact(state, key_dim, value_dim))
    low_rank = tuple(f"{text(s.beta)} * {text(s.writes)} {text(s.key)}^T" for s in steps)
    return Proof("chunk_delta", (state,), group,
                 {"decay": sym.to_ir(decay), "log_decay": log_decay, "low_rank": low_rank,
                  "steps": tuple(steps), "key_dim": key_dim, "value_dim": value_dim,
                  "transposed": side == "right"},
                 COMBINES["chunk_delta"], tuple(facts))


def _step_side(sym: Symbolic, state: str) -> str | None:
    """Which side the state's updates read it on through a vector: "left" (`k @ S`, the key
    dim first) or "right" (`S @ k`, a value-side rule); None when they mix the two (or read it
    through anything but a vector)."""
    sides = set()
    for n in range(1, len(sym.updates[state]) + 1):
        expr = sym.per_update(state, n)
        sides |= {sym.functionals[s][0] for s in expr.free_symbols if s in sym.functionals}
    return next(iter(sides)) if len(sides) == 1 and sides <= {"left", "right"} else None


def _decay_off_key_dim(sym: Symbolic, state, update, coefficient, key_dim, value_dim) -> Reason:
    """A decay before the delta steps that is not over their key dim (nor scalar)."""
    return Reason(f"the decay `{text(sym.to_ir(coefficient))}` is over "
                  f"{dims_text(sym.dims(coefficient))}, but the delta steps contract `{state}` "
                  f"along `{key_dim}`: the delta-rule forms decay along the key dim only (a "
                  f"scalar or over `{key_dim}`)", update.span, update.value)


def _not_a_key_read(state: str, dims, reads: ReadForms, side: str = "left") -> Reason:
    """Why a delta rule's outputs stop its form: a read on the other side than its steps',
    or of the state itself, located there."""
    if side == "left" and reads.right:
        query = reads.right[0]
        return Reason(f"an output reads `{state}` as `{state} @ {text(query)}`, contracting its "
                      f"value dim `{dims[1]}`; the delta-rule forms read `q @ {state}` (the key "
                      f"dim `{dims[0]}`)", query.span, query)
    if side == "right" and reads.left:
        query = reads.left[0]
        return Reason(f"an output reads `{state}` as `{text(query)} @ {state}`, contracting its "
                      f"dim `{dims[0]}`; a value-side delta rule (its steps read `{state} @ k`) "
                      f"is read as `{state} @ q` (along `{dims[1]}`)", query.span, query)
    name = reads.direct[0]
    read = f"q @ {state}" if side == "left" else f"{state} @ q"
    return Reason(f"an output reads `{state}` itself; the delta-rule forms read `{read}`",
                  name.span, name)


def _transitions(steps) -> str:
    """The steps' transitions as the facts say them: (I - beta k k^T), or, with a write key w
    apart from the erase key p, (I - beta w p^T) in the spec's names."""
    kinds = {"(I - beta k k^T)" if s.write_key is None else
             f"(I - {text(s.beta)} {text(s.write_key)} {text(s.key)}^T), the write key "
             f"`{text(s.write_key)}` apart from the erase key `{text(s.key)}`" for s in steps}
    return " or ".join(sorted(kinds))


def _delta_step(sym: Symbolic, state, update, coefficient, write, key_dim, value_dim,
                side="left"):
    """S + beta w (v - k @ S): coefficient 1 - beta w <k|, write beta w v, with w the erase key k
    itself (the delta rule) or another write key over the key dim (Comba's I - beta k p^T, p the
    erase key); on the value side, S + beta (v - S @ k) w: coefficient 1 - beta |k> w."""
    low_rank = one_low_rank(sym, state, update, coefficient, key_dim, side)
    if low_rank is None or sp.simplify(low_rank[0] - 1) != 0:
        return None
    _, weight, key = low_rank
    split = _scalar_times_key(sym, weight, key, key_dim)
    if split is None:
        return None
    beta, write_key = split
    value = sp.cancel(write / weight) if write != 0 else sp.Integer(0)
    if not sym.dims(value) <= {value_dim} or sym.has_functional(value):
        return None
    return plan.DeltaStep(key, sym.to_ir(beta), sym.to_ir(value),
                          None if write_key is None else sym.to_ir(write_key))


def _scalar_times_key(sym: Symbolic, weight: sp.Expr, key, key_dim: str):
    """The erase weight e of `1 - e <k|` as beta w, beta scalar: (beta, None) when w is the key
    k itself, (beta, w) for a write key w over the key dim apart from k (the factors of e that
    carry a dim; a key-wise beta joins w); None when e is not over the key dim."""
    if sym.has_functional(weight):
        return None
    beta = sp.cancel(weight / sym.convert(key))
    if not sym.dims(beta):
        return beta, None
    factors = sp.Mul.make_args(sp.factor_terms(sp.cancel(weight)))
    beta = sp.Mul(*[f for f in factors if not sym.dims(f)])
    write_key = sp.Mul(*[f for f in factors if sym.dims(f)])
    if sym.dims(write_key) != {key_dim}:
        return None
    return beta, write_key


def _rank_one(sym: Symbolic, coefficient: sp.Expr, key_dim: str, side: str = "left") -> bool:
    """Whether every functional in the coefficient is a key over `key_dim` read on `side`."""
    functionals = [sym.functionals[s] for s in coefficient.free_symbols if s in sym.functionals]
    return all(read_side == side and key.dims == (key_dim,) for read_side, key in functionals)
