"""The two-kernel chunk form (chunk_parallel.md): a state pass, then an output kernel parallel
over chunks, for a Plan whose first group is a `chunk` group S[K, V] and whose others (if any)
are normalisers of it (`normalisers`: mlstm's n, carried by the state pass beside S).

The state pass (grid: key blocks, value blocks, batch x head) walks the chunks in order and
writes the state entering each chunk to an fp32 buffer `[B, H, NT, K, V]`; the output kernel
(grid: value blocks, chunks, batch x head) reads it back and forms each chunk's outputs, looping
over key blocks. Role expressions are rendered as in the single-kernel form (blockwise.py); what
enters a `tl.dot` is cast to the call's dot dtype `DOT` (16-bit inputs stay 16-bit), the state,
gates and accumulators stay fp32.
"""
from __future__ import annotations

import re

from seqc import ir, pretty

from . import layout
from .blockwise import LOG2E, BlockKernel
from .key_sums import FactoringRenderer, KeySums, key_sum, reads_state
from .render import Block

# the output kernel's widest value block, by whether the decay is key-wise (chunk_parallel.md,
# "Blocks"): one block of 128 lanes fits beside a scalar decay (key blocks of 16, 8 warps, one
# stage) with 0 spill bytes on sm_80 and sm_90a, q and k then read once; beside key-wise gates
# 128 lanes spilled 184 B on sm_90a (gla), so that kernel keeps 64
OUTPUT_VALUE_CAP = {False: 128, True: 64}


def supported(plan) -> bool:
    """One chunk group S[K, V] (key dim first), a scalar or key-wise decay, and values and
    outputs (and a scalar decay) that do not depend on the key dim (the output kernel loops over
    key blocks) but through sums over it (`key_sums_only`: rwkv6's bonus `r @ (u * k * v)`,
    mlstm's `q @ n` of a normaliser, accumulated in the key loop); reads of S_t or of S_{t-1};
    any further group a normaliser of it (`normalisers`); no relabel (`relabels`)."""
    if plan is None or plan.groups[0].kind != "chunk":
        return False
    if relabels(plan.spec):
        return False
    group = plan.groups[0]
    K, V = group.key_dim, group.value_dim
    if V is None or plan.spec.tensor(group.state).dims != (K, V) \
            or group.value_log_decay is not None:
        return False
    if group.log_decay is not None and group.log_decay.dims not in ((), (K,)):
        return False
    if not all(w.key.dims == (K,) and w.value.dims == (V,) for w in group.writes):
        return False
    if len(normalisers(plan)) != len(plan.groups) - 1:
        return False
    bound = key_bound_lets(plan, K)
    free = [w.value for w in group.writes]
    if group.log_decay is not None and group.log_decay.dims == ():
        free.append(group.log_decay)
    return not any(mentions(e, K, bound) for e in free) \
        and all(key_sums_only(e, K, bound, plan) for e in plan.outputs.values())


def normalisers(plan) -> dict[str, int]:
    """The scan groups beside the chunk group S that are its normalisers: a state n[K] with S's
    log decay and one of S's write keys as its offset, n_t = exp(g_t) n_{t-1} + k_w,t (mlstm's
    n), i.e. the column S would have with that write's value 1. State name -> the write's
    index; the state pass carries n beside S, the output kernel reads `q @ n` from the same
    scores as `q @ S` (`normaliser_sum`)."""
    group, found = plan.groups[0], {}
    K = group.key_dim
    for g in plan.groups[1:]:
        if g.kind != "scan" or g.coupling or len(g.states) != 1:
            continue
        [n] = g.states
        log = g.log_coefficient.get(n)
        if plan.spec.tensor(n).dims != (K,) or log is None or group.log_decay is None \
                or pretty.expr(log) != pretty.expr(group.log_decay):
            continue
        keys = [pretty.expr(w.key) for w in group.writes]
        if pretty.expr(g.offset[n]) in keys:
            found[n] = keys.index(pretty.expr(g.offset[n]))
    return found


def normaliser_sum(node: ir.Expr, plan) -> tuple[str, str, int] | None:
    """`x @ n` for a normaliser n (`normalisers`) with x the query of a read of S (taken at the
    same step, S_t or S_{t-1}, as n's read): (that read, n, the write) or None. Then
    x_t . n_t = 2^G0_t x_t . n[chunk start] + sum_s A_ts, A the read's decayed scores."""
    if not (isinstance(node, ir.Binary) and node.op is ir.Op.MATMUL
            and isinstance(node.right, ir.Name) and node.right.ref is not None
            and node.right.ref.kind == "read"):
        return None
    read = next(r for r in plan.reads if r.name == node.right.id)
    norms = normalisers(plan)
    if read.state not in norms or read.query is not None:
        return None
    for r in plan.reads:
        if r.state == plan.groups[0].state and r.previous == read.previous \
                and pretty.expr(r.query) == pretty.expr(node.left):
            return r.name, read.state, norms[read.state]
    return None


def key_sums_only(expr: ir.Expr, dim: str, bound: set[str], plan) -> bool:
    """Whether `expr` needs lanes of `dim` only inside sums over it (`key_sum`) that read no
    state and hold no other reduction over it, or that are a normaliser's `q @ n`
    (`normaliser_sum`): those the output kernel accumulates over its key blocks
    (`KeySumRenderer`)."""
    if normaliser_sum(expr, plan) is not None:
        return True
    if key_sum(expr, dim):
        return not reads_state(expr) and not any(
            n is not expr and isinstance(n, ir.Call) and n.dim == dim for n in ir.walk(expr))
    if dim in (getattr(expr, "dims", None) or ()) or (
            isinstance(expr, ir.Name) and expr.ref is not None and expr.ref.kind == "let"
            and expr.id in bound):
        return False
    return all(key_sums_only(child, dim, bound, plan) for child in ir.children(expr))


class KeySumRenderer(KeySums):
    """The output kernel's renderer of output expressions: each sum over the key dim becomes an
    accumulator `ksum<i>` [BLOCK_T, ...] that the key loop adds each key block's share to
    (`KeySums`); a normaliser's `q @ n` becomes `ksum<i>` formed from the read's scores
    (`normalised`)."""

    def __init__(self, inner: FactoringRenderer, dim: str, plan):
        super().__init__(inner, dim)
        self.plan = plan
        self.normalised: list[dict] = []

    def matmul(self, node: ir.Binary) -> Block:
        found = normaliser_sum(node, self.plan)
        if found is None:
            return super().matmul(node)
        read, state, write = found
        name = self.next_name()
        self.normalised.append(dict(name=name, read=read, state=state, write=write))
        return Block(name, ("T",))

    def next_name(self) -> str:
        return f"ksum{len(self.sums) + len(self.normalised)}"


def relabels(spec: ir.Spec) -> bool:
    """Whether the step relabels a dim (`x as [...]`). The multi-kernel forms hold blocks of the
    key dim and of the value dim (key blocks in the state pass, value blocks in the output
    kernel): lanes relabelled between dims would come from another program's block, so these
    forms are not offered and the single-kernel form runs (docs/backends.md)."""
    return any(isinstance(node, ir.Call) and node.relabel is not None
               for statement in spec.body for node in ir.walk(statement.value))


def mentions(expr: ir.Expr, dim: str, bound: set[str]) -> bool:
    """Whether computing `expr` needs lanes of `dim`: a node over it, or a let that does."""
    for node in ir.walk(expr):
        if dim in (getattr(node, "dims", None) or ()):
            return True
        if isinstance(node, ir.Name) and node.ref is not None and node.ref.kind == "let" \
                and node.id in bound:
            return True
        if isinstance(node, ir.Binary) and node.op is ir.Op.MATMUL \
                and node.left.dims[-1] == dim:
            return True
    return False


def lone_group(plan, kind: str):
    """The plan's one group when it is the only one, of `kind`, with a state S[K, V] (key dim
    first), in a spec without relabels (blocks of K and V: `relabels`); else None."""
    if plan is None or len(plan.groups) != 1 or plan.groups[0].kind != kind \
            or relabels(plan.spec):
        return None
    group = plan.groups[0]
    if plan.spec.tensor(group.state).dims != (group.key_dim, group.value_dim):
        return None
    return group


def free_of_dim(plan, dim: str, exprs) -> bool:
    """Whether none of `exprs` needs `dim` (directly or through a let that does)."""
    bound = key_bound_lets(plan, dim)
    return not any(mentions(e, dim, bound) for e in exprs)


def key_bound_lets(plan, dim: str) -> set[str]:
    bound: set[str] = set()
    for let in plan.prelude:
        if mentions(let.value, dim, bound):
            bound.add(let.name)
    return bound


def reduces(expr: ir.Expr, dim: str) -> bool:
    """Whether `expr` sums over `dim` (sum / norm / l2norm or the contraction of `@`)."""
    for node in ir.walk(expr):
        if isinstance(node, ir.Call) and node.dim == dim:
            return True
        if isinstance(node, ir.Binary) and node.op is ir.Op.MATMUL \
                and node.left.dims[-1] == dim:
            return True
    return False


def used(lines: list[str], code: str, prefix: str) -> list[str]:
    """The definitions `prefix<name> = ...` among `lines` that `code` (or a kept line) uses."""
    kept: list[str] = []
    for line in reversed(lines):
        name = line.split(" = ", 1)[0].strip()
        if re.search(rf"\b{re.escape(name)}\b", "\n".join([code, *kept])):
            kept.insert(0, line)
    return kept


class ChunkParallelKernel(BlockKernel):
    template = "chunk_parallel.py.j2"

    def __init__(self, plan, constants):
        super().__init__(plan, constants)
        self.mode = "chunk_parallel"
        self.group = plan.groups[0]

    def loads(self, names) -> tuple[list[str], list[str]]:
        raw, cast = [], []
        for x in self.spec.inputs:
            if x.name not in names:
                continue
            offs, mask = layout.block(layout.time_axes(x.dims))
            raw.append(f"raw_{x.name} = tl.load(ptr_in_{x.name} + (i_b * T * H + i_h) * "
                       f"({layout.size(x.dims)}) + {offs}, mask={mask}, other=0.0)")
            cast.append(f"in_{x.name} = raw_{x.name}.to(ACC)")
        return raw, cast

    def prelude_lines(self, names) -> list[str]:
        lines = []
        for let in self.plan.prelude:
            value = self.expr.bound(let.value)
            self.lets[let.name] = value.dims
            if let.name in names:
                lines.append(f"let_{let.name} = {value.code}")
        return lines

    def param_lines(self, names) -> list[str]:
        lines = []
        for p in self.spec.params:
            if p.name in names:
                offs, mask = layout.block(layout.row_axes(p.dims))
                lines.append(f"par_{p.name} = tl.load(ptr_par_{p.name} + i_h * "
                             f"({layout.size(p.dims)}) + {offs}, mask={mask}, other=0.0).to(ACC)")
        return lines

    def setup(self, code: str, names) -> dict:
        """Loads, params and lets (of `names`) that `code` uses, in dependency order."""
        lets = self.prelude_lines(names)
        raw, cast = self.loads(names)
        params = self.param_lines(names)
        lets = used(lets, code, "let_")
        body = "\n".join([code, *lets])       # one line each: `...in_v` + `in_x` is no `in_v`
        cast = used(cast, body, "in_")
        params = used(params, body, "par_")
        raw = used(raw, "\n".join([body, *cast]), "raw_")
        return dict(params=params, body=raw + cast + lets)

    def group_basics(self):
        """What both parallel forms' contexts start from: every name a kernel may read (inputs,
        params, lets), the lets that need all of K, whether the decay is key-wise, and the
        decay's role (None without one). Records every let's dims for rendering."""
        g, K = self.group, self.group.key_dim
        spec = self.spec
        every = {x.name for x in spec.inputs} | {p.name for p in spec.params} | \
            {let.name for let in self.plan.prelude}
        bound = key_bound_lets(self.plan, K)
        for let in self.plan.prelude:
            self.lets[let.name] = self.expr(let.value).dims
        keywise = g.log_decay is not None and g.log_decay.dims == (K,)
        decay = None if g.log_decay is None else self.role(g.log_decay, (K,) if keywise else ())
        return every, bound, keywise, decay

    def context(self) -> dict:
        g = self.group
        K, V = g.key_dim, g.value_dim
        spec = self.spec
        every, bound, keywise, decay = self.group_basics()
        writes = [dict(key=self.role(w.key, (K,)), key_op=self.operand(w.key, (K,)),
                       value_op=self.operand(w.value, (V,))) for w in g.writes]
        reads = []
        previous = {r.name for r in self.plan.reads if r.previous}
        for name, query in self.reads_of(g.state):
            self.reads[name] = ("T", V)
            reads.append(dict(name=name, query=self.role(query, (K,)), before=name in previous,
                              query_op=self.operand(query, (K,))))
        stores, key_sums, normalised = self.output_stores(K)
        state_code = "\n".join([decay or ""] + [w["key"] + w["value_op"] + w["key_op"]
                                                for w in writes])
        key_names = {n for n in every if n in bound or self.has_dim(n, K)}
        free_names = every - key_names
        inner = [r["query_op"] for r in reads] + [w["key_op"] for w in writes] + \
            [ks["code"] for ks in key_sums]
        outer = [w["value_op"] for w in writes] + stores
        if keywise:     # the gates, the fp32 query and key of each key block (keywise_scores)
            inner += [decay] + [r["query"] for r in reads] + [w["key"] for w in writes]
        elif decay:
            outer.append(decay)
        # what needs no key lanes is set up once, before the key loop, for both
        inner_code, outer_code = "\n".join(inner), "\n".join(outer)
        full_key = any(reduces(e, K) for e in self.key_exprs())
        offsets, masks = self.lanes(K, V)
        outer_lanes = [line for line in offsets + masks
                       if not line.startswith((f"o_{K} =", f"mask_{K} ="))]
        prologue = layout.prologue(spec, V)
        index = {s.name: i for i, s in enumerate(spec.states)}
        state = prologue["states"][index[g.state]]
        norms = [dict(state=n, write=w, init=prologue["states"][index[n]],
                      final=prologue["finals"][index[n]]) for n, w in normalisers(self.plan).items()]
        return dict(K=K, V=V, S=g.state, decay=decay, keywise=keywise, log2e=LOG2E, writes=writes,
                    reads=reads, stores=stores, offsets=offsets, masks=masks,
                    key_sums=key_sums, normalisers=norms, normalised=normalised,
                    previous=bool(previous),
                    outer_lanes=outer_lanes,
                    state_setup=self.setup(state_code, every), init=state,
                    **self.state_reads(state_code, every, K, V),
                    **self.outer_setups(outer_code, inner_code,
                                        decay if decay and not keywise else "", free_names),
                    inner=self.setup(inner_code, key_names),
                    full_key=full_key, split_v=layout.split_dim(spec) == V,
                    output_value_cap=64 if full_key else OUTPUT_VALUE_CAP[keywise],
                    final_store=self.final_store(g.state, K, V))

    def state_reads(self, state_code: str, names, K: str, V: str) -> dict:
        """The [T, K] and [T, V] inputs the state pass loads (`state_key_reads`,
        `state_value_reads`): what a program re-reads per block of the other dim, weighed by
        `_chunk_parallel_state_time` (chunk_parallel.md, "Blocks")."""
        loaded = set(self.setup(state_code, names)["body"])
        dims = {x.name: x.dims for x in self.spec.inputs
                if any(line.startswith(f"raw_{x.name} = ") for line in loaded)}
        return dict(state_key_reads=max(1, sum(K in d for d in dims.values())),
                    state_value_reads=max(1, sum(V in d for d in dims.values())))

    def outer_setups(self, outer_code: str, inner_code: str, early_code: str, names) -> dict:
        """What the output kernel sets up outside its key loop, from `names`: before it (`outer`)
        what the loop and the scalar gates (`early_code`) use; after it (`late`) the rest, the
        values and what only the outputs use: loaded after the loop, a [BLOCK_T, BLOCK_V] value
        block is not live through it (chunk_parallel.md, "Blocks")."""
        outer = self.setup(inner_code + "\n" + early_code, names)
        full = self.setup(outer_code + "\n" + inner_code, names)
        late = {part: [line for line in full[part] if line not in outer[part]]
                for part in ("params", "body")}
        return dict(outer=outer, late=late)

    def output_stores(self, K: str) -> tuple[list[str], list[dict], list[dict]]:
        """The outputs' stores, each sum over K in them an accumulator of the key loop
        (`KeySumRenderer`); those sums (name, the key block's share, the accumulator's block
        shape) and the normalisers' `q @ n` (name, read, state, write)."""
        plain, self.expr = self.expr, KeySumRenderer(self.expr, K, self.plan)
        try:
            stores = [self.store(name, value) for name, value in self.plan.outputs.items()]
            sums, normalised = self.expr.sums, self.expr.normalised
        finally:
            self.expr = plain
        return stores, [dict(name=name, code=block.code,
                             shape=", ".join(f"BLOCK_{d}" for d in block.dims))
                        for name, block in sums], normalised

    def has_dim(self, name: str, dim: str) -> bool:
        if name in self.lets:
            return dim in self.lets[name]
        return dim in self.spec.tensor(name).dims

    def key_exprs(self) -> list[ir.Expr]:
        g = self.group
        exprs = [w.key for w in g.writes] + [q for _, q in self.reads_of(g.state)]
        return exprs + [let.value for let in self.plan.prelude]

    def lanes(self, K: str, V: str) -> tuple[list[str], list[str]]:
        offsets, masks = [], []
        for d in self.spec.dims:
            start = {K: "i_k * BLOCK_{d} + ", V: "i_split * BLOCK_{d} + "}.get(d.name, "")
            offsets.append(f"o_{d.name} = {start.format(d=d.name)}tl.arange(0, BLOCK_{d.name})")
            masks.append(f"mask_{d.name} = o_{d.name} < dim_{d.name}")
        return offsets, masks

    def final_store(self, S: str, K: str, V: str) -> str:
        offs, mask = layout.block(layout.row_axes((K, V)))
        return (f"tl.store(ptr_final_{S} + (i_b * H + i_h) * ({layout.size((K, V))}) + {offs}, "
                f"st_{S}, mask={mask})")
