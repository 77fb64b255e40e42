"""The rules: group the states, then give each group a kind and its proof.

A group is a connected set of states whose updates read one another (composition in program order
included); stages.py orders the groups and splits those no form covers whole into stages. Per
group, in this order:

    semiring     one update `h = max(h + a, b)` or `logaddexp(h + a, b)`, a and b state-free
    refused      the composed update is not a polynomial of degree <= 1 in the group's states
                 (sympy), or an output reads a state between two of its updates
    chunk_delta  a matrix state whose coefficient holds `k @ S`: pure decays, then steps
                 S + beta k (v - k @ S) with beta scalar, k over the key dim, v over the value dim;
                 or one update D * S - e (k @ S) + writes, D a decay and e, k over the key dim
                 (diagonal plus low rank, RWKV-7); on the value side (`S @ k`, read `S @ q`)
                 the same rules hold for S^T: its last dim is the key dim
    chunk        a matrix state [Kd, Vd] read only as `q @ S` (or only as `S @ q`: Kd is then
                 its last dim), decay over () or (Kd,) times a factor over (Vd,), and every
                 write term a key over Kd times a value over Vd
    scan         affine with elementwise coefficients (coupled groups: a matrix of them)
    sequential   everything else, with the Reason

An output may read a state before the step's first update (S_{t-1}, e.g. RWKV-6's bonus
`q @ (S + u * k * v)`) under every kind: S_{t-1} is the state after step t-1, so the read is the
previous step's read by this step's query (a fact of the proof; docs/analysis.md).
"""
from __future__ import annotations

from dataclasses import replace

import sympy as sp

from .. import ir, plan
from ..pretty import expr as text
from .blame import Blame, dense_transition
from .logs import log_of
from .proof import COMBINES, Proof, Reason
from .reads import ReadForms
from .symbolic import Symbolic


class Refused(Exception):
    def __init__(self, reason: Reason):
        super().__init__(reason.message)
        self.reason = reason


def groups(sym: Symbolic) -> list[tuple[str, ...]]:
    """Connected components of `state reads state`, in declaration order."""
    order = [t.name for t in sym.spec.states]
    neighbours = {s: set(sym.update_deps(s)) - {s} for s in order}
    for state, reads in list(neighbours.items()):
        for other in reads:
            neighbours[other].add(state)
    seen: set[str] = set()
    result = []
    for state in order:
        if state in seen:
            continue
        component, stack = set(), [state]
        while stack:
            current = stack.pop()
            if current not in component:
                component.add(current)
                stack.extend(neighbours[current])
        seen |= component
        result.append(tuple(s for s in order if s in component))
    return result


def classify(sym: Symbolic, group: tuple[str, ...], reads: dict[str, ReadForms],
             upstream: tuple[str, ...] = (), cycle: Reason | None = None) -> Proof:
    try:
        if cycle is not None:
            raise Refused(cycle)
        _check_fresh_reads(sym, group, reads)
        proof = _single(sym, group[0], reads[group[0]]) if len(group) == 1 \
            else _coupled(sym, group)
    except Refused as refused:
        return Proof("sequential", group, plan.SequentialGroup(group), reason=refused.reason)
    extra = {}
    outputs = sorted({output for state in group for output, _ in reads[state].previous})
    if outputs:
        proof = replace(proof, facts=proof.facts + _previous_facts(group, reads))
        extra["previous_reads"] = tuple(outputs)
    if upstream:
        proof = replace(proof, facts=proof.facts + (
            f"it reads {', '.join(f'`{u}`' for u in upstream)} only through their per-step "
            "values, computed by an earlier stage: inputs here, like the spec's inputs",))
        extra["upstream"] = upstream
    return replace(proof, decomposition={**proof.decomposition, **extra}) if extra else proof


def _check_fresh_reads(sym: Symbolic, group, reads) -> None:
    for state in group:
        for output, name in reads[state].stale:
            raise Refused(Reason(f"output `{output}` reads `{state}` before its last update",
                                 name.span, name,
                                 help="an output may read a state as it was before the step "
                                      "(before its first update) or after its last update"))


def _previous_facts(group, reads) -> tuple[str, ...]:
    """Why a read of S_{t-1} keeps the form: it is step t-1's read, by step t's query."""
    outputs = sorted({output for state in group for output, _ in reads[state].previous})
    if not outputs:
        return ()
    states = ", ".join(s for s in group if reads[s].previous)
    return (f"{', '.join(f'`{o}`' for o in outputs)} read {states} before the step's update: "
            f"{states}_(t-1) is the state after step t-1, so q_t @ {states}_(t-1) is the read of "
            "step t-1 by the query of step t (queries shifted one step later, reads one step "
            "earlier, the initial state read at t = 0)",)


def _affine(sym: Symbolic, group: tuple[str, ...]) -> dict[str, sp.Poly]:
    """Each state's composed update as a polynomial of degree <= 1 in the group, or Refused."""
    polys = {}
    for state in group:
        poly = sym.poly(sym.composed(state), group)
        if poly is None or poly.total_degree() > 1:
            reason = Blame(sym, group).find() or _not_affine(sym, state)
            raise Refused(reason)
        polys[state] = poly
    return polys


def _not_affine(sym: Symbolic, state: str) -> Reason:
    update = sym.updates[state][-1]
    return Reason(f"the update of `{state}` is not affine in the state", update.value.span,
                  update.value)


def _facts(sym: Symbolic, state: str, poly: sp.Poly, group) -> list[str]:
    terms = ", ".join(f"{sym.state_symbols[s]}: {poly.coeff_monomial(sym.state_symbols[s])}"
                      for s in group)
    return [f"{state}_t = {poly.as_expr()}",
            f"degree {poly.total_degree()} in {', '.join(group)}",
            f"coefficients ({terms}) are free of the states"]


# ---- one state -----------------------------------------------------------------------------------

def _single(sym: Symbolic, state: str, reads: ReadForms) -> Proof:
    semiring = _semiring(sym, state)
    if semiring is not None:
        return semiring
    poly = _affine(sym, (state,))[state]
    symbol = sym.state_symbols[state]
    decay, writes = poly.coeff_monomial(symbol), poly.coeff_monomial(1)
    facts = _facts(sym, state, poly, (state,))
    if sym.has_functional(decay):
        return _delta(sym, state, reads, facts)
    chunk = _chunk(sym, state, decay, writes, reads, facts)
    return chunk if chunk is not None else _scan(sym, state, decay, writes, facts)


def _scan(sym: Symbolic, state: str, decay: sp.Expr, offset: sp.Expr, facts) -> Proof:
    coefficient, offset_ir = sym.to_ir(decay), sym.to_ir(offset)
    log = log_of(sym, decay, strict=True)
    group = plan.ScanGroup((state,), {state: coefficient}, {state: offset_ir}, {state: log})
    facts.append("the coefficient is elementwise: a diagonal transition")
    return Proof("scan", (state,), group, {"coefficient": coefficient, "log_coefficient": log,
                                          "offset": offset_ir}, COMBINES["scan"], tuple(facts))


def _key_dim(sym: Symbolic, dims, decay_dims: set[str], reads: ReadForms) -> str | None:
    side = reads.matmul_side
    if side == "left":
        return dims[0]
    if side == "right":
        return dims[-1]
    if side is None:
        return next((d for d in dims if decay_dims <= {d}), dims[0])
    return None


def _chunk(sym: Symbolic, state, decay, writes, reads: ReadForms, facts) -> Proof | None:
    dims = sym.spec.tensor(state).dims
    if len(dims) != 2:
        return None
    key_dim = _key_dim(sym, dims, sym.dims(decay), reads)
    if key_dim is None:
        return None
    value_dim = next(d for d in dims if d != key_dim)
    sides = _decay_sides(sym, decay, key_dim, value_dim)
    split = _outer_products(sym, writes, key_dim, value_dim)
    if sides is None or split is None:
        return None
    key_decay, value_decay = sides
    log_decay = None if key_decay == 1 else log_of(sym, key_decay, strict=True)
    value_log_decay = None if value_decay == 1 else log_of(sym, value_decay, strict=True)
    if (key_decay != 1 and log_decay is None) or (value_decay != 1 and value_log_decay is None):
        return None   # the chunkwise form cumulates log decays: a decay of unknown sign scans
    group = plan.ChunkGroup(state, key_dim, value_dim, log_decay, split, value_log_decay)
    facts.append(f"the decay is over {_dims_text(sym.dims(decay))}, every write is a key over "
                 f"{key_dim} times a value over {value_dim}, and outputs read `{state}` by `@`")
    if value_decay != 1:
        facts.append(f"the decay `{text(sym.to_ir(decay))}` factors into "
                     f"`{text(sym.to_ir(key_decay))}` over {_dims_text(sym.dims(key_decay))} "
                     f"and `{text(sym.to_ir(value_decay))}` over ({value_dim}): an outer product "
                     f"(diag(a) {state} diag(b)), elementwise along both dims")
    transposed = key_dim != dims[0]
    if transposed:
        facts.append(_transposed_fact(state, key_dim, value_dim))
    return Proof("chunk", (state,), group,
                 {"decay": sym.to_ir(decay), "log_decay": log_decay,
                  "value_log_decay": value_log_decay, "writes": split,
                  "key_dim": key_dim, "value_dim": value_dim, "transposed": transposed},
                 COMBINES["chunk"], tuple(facts))


def _decay_sides(sym: Symbolic, decay: sp.Expr, key_dim: str, value_dim: str):
    """The decay as (a factor over () or the key dim, a factor over the value dim), or None when
    some factor spans both (`exp(a + b)` with a over K and b over V is one atom: write
    `exp(a) * exp(b)`)."""
    return _split_factors(sym, decay, key_dim, value_dim)


def _split_factors(sym: Symbolic, product: sp.Expr, key_dim, value_dim):
    """(the factors over () or key_dim, the factors over value_dim) of a product, or None when
    a factor spans other dims."""
    key, value = sp.Integer(1), sp.Integer(1)
    for factor in sp.Mul.make_args(product):
        factor_dims = sym.dims(factor)
        if factor_dims <= {key_dim}:
            key *= factor
        elif factor_dims <= {value_dim}:
            value *= factor
        else:
            return None
    return key, value


def _dims_text(dims: set[str]) -> str:
    return "()" if not dims else "(" + ", ".join(sorted(dims)) + ")"


def _outer_products(sym: Symbolic, writes: sp.Expr, key_dim, value_dim):
    """The writes as (key over key_dim) x (value over value_dim) terms, grouped by value."""
    by_value: dict[sp.Expr, sp.Expr] = {}
    for term in sp.Add.make_args(sp.expand(writes)):
        if term == 0:
            continue
        split = _split_factors(sym, term, key_dim, value_dim)
        if split is None:
            return None
        key, value = split
        by_value[value] = by_value.get(value, 0) + key
    return tuple(plan.Write(sym.to_ir(sp.factor_terms(k)), sym.to_ir(v))
                 for v, k in by_value.items())


# ---- delta rule ----------------------------------------------------------------------------------

def _delta(sym: Symbolic, state: str, reads: ReadForms, facts) -> Proof:
    dims = sym.spec.tensor(state).dims
    if len(dims) != 2:
        raise Refused(dense_transition(sym, (state,)) or _not_affine(sym, state))
    side = _step_side(sym, state)
    if side is None:
        raise Refused(dense_transition(sym, (state,)) or _not_affine(sym, state))
    if reads.matmul_side not in (None, side):
        raise Refused(_not_a_key_read(state, dims, reads, side))
    # a value-side rule (`S @ k`, k over the last dim) is the key-side rule of S^T: the key dim
    # is the one the steps contract, and the backends hold the state transposed (docs/analysis.md)
    key_dim, value_dim = dims if side == "left" else dims[::-1]
    decay, steps = sp.Integer(1), []
    for n, update in enumerate(sym.updates[state], 1):
        poly = sym.poly(sym.per_update(state, n), (state,))
        if poly is None or poly.total_degree() > 1:
            raise Refused(Blame(sym, (state,)).find() or _not_affine(sym, state))
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
            dplr = _dplr(sym, state, update, coefficient, write, (key_dim, value_dim), decay,
                         facts, side)
            if dplr is not None:
                return dplr
        if step is None:
            raise Refused(dense_transition(sym, (state,), low_rank=_rank_one(sym, coefficient,
                                                                             key_dim, side))
                          or _not_affine(sym, state))
        steps.append(step)
    log_decay = None if decay == 1 else log_of(sym, decay, strict=True)
    if decay != 1 and log_decay is None:
        update = sym.updates[state][0]
        raise Refused(Reason(f"the decay `{text(sym.to_ir(decay))}` is not provably positive, so "
                             "it cannot be cumulated in log space", update.span, update.value))
    group = plan.DeltaGroup(state, key_dim, value_dim, log_decay, tuple(steps))
    facts.append(f"each step's transition is (I - beta k k^T) with k over {key_dim}: "
                 "identity minus rank one, after a decay over "
                 f"{_dims_text(sym.dims(decay))}")
    if side == "right":
        facts.append(_transposed_fact(state, key_dim, value_dim))
    low_rank = tuple(f"{text(s.beta)} * {text(s.key)} {text(s.key)}^T" for s in steps)
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


def _transposed_fact(state: str, key_dim: str, value_dim: str) -> str:
    return (f"`{state}` is updated and read on its last dim `{key_dim}` (`{state} @ k`): "
            f"{state}^T[{key_dim}, {value_dim}] follows the key-side rule "
            f"(S @ k = k @ S^T, exp(b) * S = (exp(b) * S^T)^T for b over {key_dim}), so the "
            f"backends hold `{state}` transposed")


def _decay_off_key_dim(sym: Symbolic, state, update, coefficient, key_dim, value_dim) -> Reason:
    """A decay before the delta steps that is not over their key dim (nor scalar)."""
    return Reason(f"the decay `{text(sym.to_ir(coefficient))}` is over "
                  f"{_dims_text(sym.dims(coefficient))}, but the delta steps contract `{state}` "
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


def _delta_step(sym: Symbolic, state, update, coefficient, write, key_dim, value_dim,
                side="left"):
    """S + beta k (v - k @ S): coefficient 1 - beta k <k|, write beta k v (or, on the value
    side, S + beta (v - S @ k) k: coefficient 1 - beta |k> k)."""
    low_rank = _one_low_rank(sym, state, update, coefficient, key_dim, side)
    if low_rank is None or sp.simplify(low_rank[0] - 1) != 0:
        return None
    _, weight, key = low_rank
    beta = sp.cancel(weight / sym.convert(key))
    value = sp.cancel(write / weight) if write != 0 else sp.Integer(0)
    if sym.dims(beta) or not sym.dims(value) <= {value_dim} or sym.has_functional(value):
        return None
    return plan.DeltaStep(key, sym.to_ir(beta), sym.to_ir(value))


def _one_low_rank(sym: Symbolic, state, update, coefficient, key_dim, side="left"):
    """The coefficient as D - e <k| for one key k over the key dim read as `k @ S` (or as
    `S @ k` on the value side): (D, e, k)."""
    functionals = [s for s in coefficient.free_symbols if s in sym.functionals]
    if len(functionals) != 1 or not _reads_state_plainly(sym, state, update.value, side):
        return None
    read_side, key = sym.functionals[functionals[0]]
    if read_side != side or key.dims != (key_dim,):
        return None
    poly = sp.expand(coefficient).as_poly(functionals[0])
    if poly is None or poly.total_degree() != 1:
        return None
    return poly.coeff_monomial(1), -poly.coeff_monomial(functionals[0]), key


def _dplr(sym: Symbolic, state, update, coefficient, write, dims, decayed, facts, side="left"):
    """After pure decays `decayed`: D * S - e (k @ S) + sum key (x) value, i.e. the coefficient
    D - e <k| with D and e over the key dim; k reads the state after `decayed`, before D."""
    key_dim, value_dim = dims
    low_rank = _one_low_rank(sym, state, update, coefficient, key_dim, side)
    if low_rank is None:
        return None
    decay, erase, key = low_rank
    if sym.has_functional(decay) or sym.has_functional(erase) or sym.has_functional(write) \
            or not sym.dims(decay) <= {key_dim} or not sym.dims(erase) <= {key_dim}:
        return None
    writes = _outer_products(sym, write, key_dim, value_dim)
    total = decayed * decay
    log_decay = None if total == 1 else log_of(sym, total, strict=True)
    unseen = None if decay == 1 else log_of(sym, decay, strict=True)
    if writes is None or (total != 1 and log_decay is None) or (decay != 1 and unseen is None):
        return None
    group = plan.DplrGroup(state, key_dim, value_dim, log_decay, sym.to_ir(erase), key, writes,
                           unseen)
    facts.append(f"the transition is a decay over {_dims_text(sym.dims(total))} minus the rank "
                 f"one `{text(group.erase)}` `{text(key)}`^T: diagonal plus low rank")
    if side == "right":
        facts.append(_transposed_fact(state, key_dim, value_dim))
    return Proof("chunk_delta", (state,), group,
                 {"decay": sym.to_ir(total), "log_decay": log_decay, "erase": group.erase,
                  "key": key, "unseen_decay": None if decay == 1 else sym.to_ir(decay),
                  "writes": writes, "low_rank": (f"{text(group.erase)} {text(key)}^T",),
                  "key_dim": key_dim, "value_dim": value_dim, "transposed": side == "right"},
                 COMBINES["chunk_dplr"], tuple(facts))


def _rank_one(sym: Symbolic, coefficient: sp.Expr, key_dim: str, side: str = "left") -> bool:
    """Whether every functional in the coefficient is a key over `key_dim` read on `side`."""
    functionals = [sym.functionals[s] for s in coefficient.free_symbols if s in sym.functionals]
    return all(read_side == side and key.dims == (key_dim,) for read_side, key in functionals)


def _reads_state_plainly(sym: Symbolic, state: str, node: ir.Expr, side: str = "left") -> bool:
    """Every `@` touching the state is `k @ S` (side "left") or `S @ k` ("right") with S the
    state itself."""
    for inner in ir.walk(node):
        if isinstance(inner, ir.Binary) and inner.op is ir.Op.MATMUL and sym.deps(inner):
            held, key = (inner.right, inner.left) if side == "left" else (inner.left, inner.right)
            if not (isinstance(held, ir.Name) and held.id == state) or sym.deps(key):
                return False
    return True


# ---- semiring ------------------------------------------------------------------------------------

def _semiring(sym: Symbolic, state: str) -> Proof | None:
    if len(sym.updates[state]) != 1:
        return None
    value = sym.updates[state][0].value
    while isinstance(value, ir.Name) and value.ref.kind == "let" and sym.deps(value):
        value = sym.lets[value.id].value
    if not isinstance(value, ir.Call) or value.func not in ("max", "logaddexp") \
            or value.dim is not None:       # `max(x, D)` reduces a dim: no semiring sum
        return None
    symbol = sym.state_symbols[state]
    for inner, other in (value.args, value.args[::-1]):
        if sym.deps(other) or sym.deps(inner) != {state}:
            continue
        shift = sp.expand(sym.convert(inner) - symbol)
        if shift.has(symbol) or sym.has_functional(shift):
            continue
        semiring = "maxplus" if value.func == "max" else "logsumexp"
        coefficient = sym.to_ir(shift)
        group = plan.SemiringGroup(state, semiring, coefficient, other)
        add = "max" if semiring == "maxplus" else "logaddexp"
        facts = (f"{state}_t = {add}({state} + {shift}, {text(other)})",
                 f"`+` distributes over `{add}`: a linear recurrence in the ({add}, +) semiring")
        return Proof("semiring", (state,), group,
                     {"semiring": semiring, "coefficient": coefficient, "offset": other},
                     COMBINES[semiring], facts)
    return None


# ---- coupled states ------------------------------------------------------------------------------

def _coupled(sym: Symbolic, group: tuple[str, ...]) -> Proof:
    polys = _affine(sym, group)
    coupling, offsets, facts = {}, {}, []
    for state in group:
        for other in group:
            coefficient = polys[state].coeff_monomial(sym.state_symbols[other])
            if sym.has_functional(coefficient):
                raise Refused(dense_transition(sym, group) or _not_affine(sym, state))
            if coefficient != 0:
                coupling[(state, other)] = sym.to_ir(coefficient)
        offsets[state] = sym.to_ir(polys[state].coeff_monomial(1))
        facts.extend(_facts(sym, state, polys[state], group))
    dims = {s: set(sym.spec.tensor(s).dims) for s in group}
    for state, other in coupling:
        if dims[state] != dims[other]:
            update = sym.updates[state][0]
            raise Refused(Reason(f"coupled states `{state}` and `{other}` have different dims",
                                 update.span, update.value))
    diagonal = {s: coupling.get((s, s), ir.Num(0.0, dims=())) for s in group}
    scan = plan.ScanGroup(group, diagonal, offsets, {}, coupling)
    facts.append("jointly affine with elementwise coefficients: a scan over the stacked states")
    return Proof("scan", group, scan, {"coupling": coupling, "offset": offsets},
                 COMBINES["coupled"], tuple(facts))
