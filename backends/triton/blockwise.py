"""The parallel family kernel a Plan allows: time in blocks of `BLOCK_T` steps, states carried.

One program per (value block, batch x head) walks the sequence block by block. Inside a block,
the Plan's role expressions are rendered over `[BLOCK_T, ...]` register blocks (the pseudo-dim
`T`), each state group advances the whole block at once with its family's algebra (scan.md,
coupled_scan.md, chunk.md, chunk_delta.md, chunk_dplr.md), and the outputs are evaluated from the groups'
reads. Inputs are read once and outputs written once, as in the fused recurrent kernel; the
parallelism inside a block is what replaces the step loop. The role renderers are key_sums.py's,
the coupled scan's combine coupled_combine.py's.
"""
from __future__ import annotations

from seqc import ir
from seqc.plan import MATRIX_KINDS
from seqc.templates import render

from . import layout
from .coupled_combine import closure, combine_code
from .fused import PREFIX, full, output_dims
from .key_sums import FactoringRenderer, KeySums
from .render import Block, Constants, align, index

# the modes whose sections dot 16-bit operands (what enters a `tl.dot` is in the call's dtype DOT)
DOT_MODES = ("chunk", "chunk_delta", "chunk_dplr")
SECTION = {"scan": "scan.py.j2", "coupled_scan": "coupled_scan.py.j2", "semiring": "scan.py.j2",
           "chunk": "chunk.py.j2", "chunk_delta": "chunk_delta.py.j2",
           "chunk_dplr": "chunk_dplr.py.j2"}
LOG2E = "1.4426950408889634"


def mode_of(plan) -> str | None:
    """The family kernel of a Plan, or None when some group has none (sequential, coupled with
    states of different dim orders, vector-valued chunk states, chunk states decayed along the
    value dim, more than two delta steps, reads of the state before the step outside a chunk
    group)."""
    if plan is None or not all(_supported(g, plan.spec, plan.reads) for g in plan.groups):
        return None
    kinds = {g.kind for g in plan.groups}
    for mode in ("chunk_dplr", "chunk_delta", "chunk"):
        if mode in kinds:
            return mode
    return "scan"


def _supported(group, spec, reads=()) -> bool:
    if any(r.previous for r in reads if r.state in group.states) and group.kind != "chunk":
        return False    # only the chunk section reads S_{t-1} (chunk.md); the others: fused
    if group.kind == "scan":
        # a coupled group is scanned entry by entry: its states' dims must agree in order too
        # (the analysis only guarantees the same set of dims)
        return not group.coupling or len({spec.tensor(s).dims for s in group.states}) == 1
    if group.kind == "chunk":       # a decay along the value dim too: fused (chunk.md)
        return group.value_dim is not None and group.value_log_decay is None and all(
            w.key.dims == (group.key_dim,) and w.value.dims == (group.value_dim,)
            for w in group.writes)
    if group.kind == "chunk_delta":     # a key-wise decay with one delta step a token
        return (len(group.steps) <= 2 and all(s.beta.dims == () for s in group.steps)
                and (group.log_decay is None or group.log_decay.dims == ()
                     or len(group.steps) == 1))
    return group.kind in ("chunk_dplr", "semiring")


def linked(dims: set[str], spec: ir.Spec) -> set[str]:
    """`dims` and every dim a relabel (`x as [...]`) links to one of them, transitively: linked
    dims have equal sizes, so they get equal blocks (a dot dim's are at least 16 lanes)."""
    pairs = [pair for statement in spec.body for node in ir.walk(statement.value)
             if isinstance(node, ir.Call) and node.relabel is not None
             for pair in ir.relabelling(node).items()]
    found = set(dims)
    while True:
        more = {b for a, b in pairs if a in found} | {a for a, b in pairs if b in found}
        if more <= found:
            return found
        found |= more


class BlockKernel:
    template = "blockwise.py.j2"

    def __init__(self, plan, constants: Constants):
        self.plan = plan
        self.spec = plan.spec
        self.mode = mode_of(plan)
        self.split = layout.split_dim(self.spec)
        self.lets: dict[str, tuple[str, ...]] = {}
        self.reads: dict[str, tuple[str, ...]] = {}
        self.expr = FactoringRenderer(self.name_block, constants)
        self.dot_dims = linked({d for g in plan.groups if g.kind in MATRIX_KINDS
                                for d in (g.key_dim, g.value_dim)}, self.spec)
        self.combines: list[str] = []       # generated combine functions of coupled groups

    def name_block(self, node: ir.Name) -> Block:
        kind = node.ref.kind
        if kind == "let":
            return Block(f"let_{node.id}", self.lets[node.id])
        if kind == "read":
            return Block(f"read_{node.id}", self.reads[node.id])
        dims = self.spec.tensor(node.id).dims
        return Block(PREFIX[kind] + node.id, ("T",) + dims if kind == "input" else dims)

    def role(self, node: ir.Expr, dims: tuple[str, ...], identity: str = "0.0") -> str:
        """A role expression as a full `[BLOCK_T, *dims]` block; padded steps and lanes hold
        `identity` so that they neither move a state nor reach a reduction."""
        want = ("T",) + dims
        _, mask = layout.block(tuple((d, "1") for d in want))
        return f"tl.where({mask}, {full(self.expr(node), want)}, {identity})"

    def context(self) -> dict:
        spec = self.spec
        loads = []
        for x in spec.inputs:
            load = f"tl.load({self.time_block('ptr_in_' + x.name, x.dims)}, other=0.0)"
            if self.mode in DOT_MODES:      # the load as it is, for operand(); fp32 for the rest
                loads += [f"raw_{x.name} = {load}", f"in_{x.name} = raw_{x.name}.to(ACC)"]
            else:
                loads.append(f"in_{x.name} = {load}.to(ACC)")
        prelude = []
        for let in self.plan.prelude:
            value = self.expr.bound(let.value)
            self.lets[let.name] = value.dims
            prelude.append(f"let_{let.name} = {value.code}")
        sections = [self.section(g) for g in self.plan.groups]
        stores, early_sums = self.early_sum_stores()
        return dict(layout.prologue(spec, self.split, self.transposed_states()), loads=loads,
                    prelude=prelude, early_sums=early_sums, sections=sections, stores=stores,
                    split=self.split,
                    dot_dims=self.dot_dims, mode=self.mode, combines=self.combines,
                    dot_mode=self.mode in DOT_MODES, value_cap=self.value_cap(),
                    value_traffic=self.value_traffic())

    def value_cap(self) -> str:
        """The dot modes' widest value block (code over `blocks`): 64 lanes in chunk beside a key
        block of at most 128, 32 beside a wider one (K = 256: 64 spilled 64-88 B on sm_80); in
        chunk_dplr 32, 64 when a key dim's block is wider than 64 (its value side is formed
        transposed, `[BLOCK_V, C]` blocks: chunk_dplr.md); in chunk_delta 64 beside a
        key block of at most 128 (with one or two delta steps a token: chunk_delta.md, "Two
        delta steps a token"; two with a decay: 32 beside one of 128), 16 beside a wider one
        (the program holds the key dim whole: blockwise.md, "Blocks")."""
        if self.mode not in ("chunk", "chunk_delta", "chunk_dplr"):
            return "64"
        keys = [d for d in sorted(self.dot_dims) if d != self.split] or sorted(self.dot_dims)
        def fits(widest_key: int) -> str:
            return " and ".join(f'blocks["BLOCK_{d}"] <= {widest_key}' for d in keys)
        if self.mode == "chunk":            # 256 x 64 fp32 lanes spilled 64-88 B on sm_80
            return f"64 if {fits(128)} else 32"
        if self.mode == "chunk_dplr":       # its value side transposed (chunk_dplr.md)
            return f"32 if {fits(64)} else 64"
        if self.decayed_delta_steps():
            return f"64 if {fits(64)} else 32 if {fits(128)} else 16"
        return f"64 if {fits(128)} else 16"

    def decayed_delta_steps(self) -> bool:
        """A chunk_delta group with several delta steps a token and a decay (deltaproduct with a
        gate, not in the stdlib): at K = V = 128 with 64 lanes it spilled 100 B on sm_90a, with
        32 0 (chunk_delta.md, "Two delta steps a token")."""
        return any(len(g.steps) > 1 and g.log_decay is not None
                   for g in self.plan.groups if g.kind == "chunk_delta")

    def value_traffic(self) -> dict | None:
        """chunk_delta's choice of value block (blockwise.md, "Blocks"): code of the lanes a
        token's inputs and outputs hold without the split dim (read again for each value block)
        and with it (read or written once), over the call's `dims`."""
        if self.mode != "chunk_delta" or self.split is None:
            return None

        def lanes(tensors) -> str:
            return " + ".join(" * ".join(f'dims["{d}"]' for d in dims) or "1"
                              for dims in tensors) or "0"
        tensors = [x.dims for x in self.spec.inputs] + [output_dims(o) for o in self.spec.outputs]
        return dict(shared=lanes([t for t in tensors if self.split not in t]),
                    split=lanes([t for t in tensors if self.split in t]))

    def early_sum_stores(self) -> tuple[list[str], list[str]]:
        """The outputs' stores and, in the chunk kernel, the lines `ksum<i> = ...` of the sums
        over the chunk group's key dim in them that read no state (`KeySums`), formed before the
        sections so that the `[BLOCK_T, K]` blocks they read are not live up to the stores
        (rwkv6's bonus `scale r @ (u * k * v)`: formed at the store, its bf16 store spilled 24 B
        on sm_80 at K = V = 128; blockwise.md, "Outputs")."""
        keys = {g.key_dim for g in self.plan.groups if g.kind == "chunk"}
        if self.mode != "chunk" or len(keys) != 1:
            return [self.store(name, value) for name, value in self.plan.outputs.items()], []
        plain, self.expr = self.expr, KeySums(self.expr, keys.pop())
        try:
            stores = [self.store(name, value) for name, value in self.plan.outputs.items()]
            sums = self.expr.sums
        finally:
            self.expr = plain
        return stores, [f"{name} = {block.code}" for name, block in sums]

    def transposed_states(self) -> frozenset[str]:
        """The matrix states held in the other order than declared: chunk kernels hold a state
        key dim first, except chunk_delta's, held value dim first (chunk_delta.md, "Layout")."""
        return frozenset({g.state for g in self.plan.groups if g.kind in MATRIX_KINDS
                          and g.value_dim is not None
                          and (self.spec.tensor(g.state).dims[0] == g.key_dim)
                          == (g.kind == "chunk_delta")})

    def operand(self, node: ir.Expr, dims: tuple[str, ...]) -> str:
        """A role expression as a `tl.dot` operand in the dot dtype: a bare input is its load
        in the call's dtype (padded lanes loaded as 0), anything else the fp32 role cast."""
        if isinstance(node, ir.Name) and node.ref is not None and node.ref.kind == "input" \
                and node.dims == dims:
            return f"raw_{node.id}.to(DOT)"
        return f"({self.role(node, dims)}).to(DOT)"

    def guard(self, dims: tuple[str, ...], store: str) -> str:
        return layout.guard(self.split, dims, store)

    def store(self, name: str, value: ir.Expr) -> str:
        output = next(o for o in self.spec.outputs if o.name == name)
        dims = output_dims(output)
        code = full(self.expr(value), ("T",) + dims)
        return self.guard(dims, f"tl.store({self.time_block('ptr_out_' + name, dims, code)})")

    def time_block(self, ptr: str, dims: tuple[str, ...], value: str | None = None) -> str:
        """The arguments of a load (or, with `value`, a store) of the block's steps of a
        `[B, T, H, *dims]` tensor. In the dot modes the int64 part of the address is one scalar,
        the block's first step, and the lanes' offsets from it are int32 (`o_t`, below 2^31 for
        any T: one block's steps): int64 offsets per lane cost those kernels registers."""
        size = layout.size(dims)
        offs, mask = layout.block(layout.time_axes(dims))
        if self.mode in DOT_MODES:
            start = f"{ptr} + ((i_b * T + t0) * H + i_h) * ({size})"
            offs = layout.block((("t", f"H * {size}"),) + layout.row_axes(dims))[0]
        else:
            start = f"{ptr} + (i_b * T * H + i_h) * ({size})"
        stored = "" if value is None else f", {value}"
        return f"{start} + {offs}{stored}, mask={mask}"

    def reads_of(self, state: str) -> list[tuple[str, ir.Expr | None]]:
        return [(r.name, r.query) for r in self.plan.reads if r.state == state]

    def section(self, group) -> str:
        kind = "coupled_scan" if group.kind == "scan" and group.coupling else group.kind
        context = getattr(self, f"_{kind}")(group)
        return render("triton", SECTION[kind], group=group, **context)

    def _coupled_scan(self, group) -> dict:
        """The group's (A_t, b_t) scanned as one tuple of n x n + n blocks (coupled_scan.md):
        entries of A the analysis proved zero, and that no product of A's can fill, are not
        carried."""
        names = group.states
        n = len(names)
        dims = self.spec.tensor(names[0]).dims
        entries = closure(n, {(names.index(i), names.index(j)) for i, j in group.coupling})
        want = ("T",) + dims
        _, mask = layout.block(tuple((d, "1") for d in want))
        zeros = f"tl.zeros([{', '.join(f'BLOCK_{d}' for d in want)}], dtype=ACC)"
        tag = names[0]
        a = {}
        for i, j in entries:
            coupling = group.coupling.get((names[i], names[j]))
            if coupling is not None:
                code = self.role(coupling, dims, "1.0" if i == j else "0.0")
            elif i == j:        # a state that does not read itself: 0, the identity's 1 in padding
                code = f"(tl.where({mask}, 0.0, 1.0) + {zeros})"
            else:
                code = zeros
            a[i, j] = (f"ca_{tag}_{i}_{j}", code)
        states = []
        for i, s in enumerate(names):
            reads = [read for read, _ in self.reads_of(s)]
            for read in reads:
                self.reads[read] = want
            terms = [f"{a[i, j][0]} * {align(Block(f'st_{names[j]}', dims), want)}"
                     for j in range(n) if (i, j) in a]
            states.append(dict(name=s, b=self.role(group.offset[s], dims, "0.0"), reads=reads,
                               apply=" + ".join(terms + [f"cb_{s}"]),
                               last=index("last_T", 0, len(dims) + 1)))
        combine = f"_coupled_combine_{tag}"
        self.combines.append(render("triton", "coupled_combine.py.j2", name=combine,
                                    **combine_code(n, entries)))
        scanned = [a[e][0] for e in entries] + [f"cb_{s}" for s in names]
        return dict(entries=[a[e] for e in entries], states=states, combine=combine,
                    scanned=", ".join(scanned))

    def _scan(self, group) -> dict:
        states = []
        for s in group.states:
            dims = self.spec.tensor(s).dims
            states.append(self.scan_state(s, dims, group.coefficient[s], group.offset[s],
                                          ("1.0", "0.0"), "{a} * {h} + {b}"))
        return dict(states=states, combine="_affine_combine")

    def _semiring(self, group) -> dict:
        dims = self.spec.tensor(group.state).dims
        maxplus = group.semiring == "maxplus"
        apply = "tl.maximum({a} + {h}, {b})" if maxplus else "_logaddexp({a} + {h}, {b})"
        state = self.scan_state(group.state, dims, group.coefficient, group.offset,
                                ("0.0", 'float("-inf")'), apply)
        return dict(states=[state], combine="_max_combine" if maxplus else "_logaddexp_combine")

    def scan_state(self, name: str, dims, coefficient, offset, identity, apply) -> dict:
        """h_t = A_t (x) h_0 (+) B_t from the scanned (A, B); `last` selects the block's end."""
        reads = [read for read, _ in self.reads_of(name)]
        for read in reads:
            self.reads[read] = ("T",) + dims
        held = align(Block(f"st_{name}", dims), ("T",) + dims)
        return dict(name=name, reads=reads,
                    a=self.role(coefficient, dims, identity[0]),
                    b=self.role(offset, dims, identity[1]),
                    apply=apply.format(a=f"a_{name}", h=held, b=f"b_{name}"),
                    last=index("last_T", 0, len(dims) + 1))

    def matrix_reads(self, group) -> list[tuple[str, str]]:
        reads = []
        for name, query in self.reads_of(group.state):
            self.reads[name] = ("T", group.value_dim)
            reads.append((name, self.role(query, (group.key_dim,))))
        return reads

    def query_operands(self, group) -> dict[str, str]:
        """Each read's query as a dot operand (matrix_reads gives it in fp32)."""
        return {name: self.operand(query, (group.key_dim,))
                for name, query in self.reads_of(group.state)}

    def matrix_roles(self, group) -> dict:
        """What every matrix-state section takes: its dims, its (log) decay, its reads."""
        K, V = group.key_dim, group.value_dim
        keywise = group.log_decay is not None and group.log_decay.dims == (K,)
        decay = None
        if group.log_decay is not None:
            decay = self.role(group.log_decay, (K,) if keywise else ())
        return dict(K=K, V=V, decay=decay, keywise=keywise, reads=self.matrix_reads(group),
                    log2e=LOG2E)

    def writes(self, group) -> list[tuple[str, str]]:
        return [(self.role(w.key, (group.key_dim,)), self.role(w.value, (group.value_dim,)))
                for w in group.writes]

    def dot_writes(self, group) -> list[tuple[str, str, str]]:
        """Per write: its key (fp32, gates scale it), the key and the value as dot operands."""
        K, V = (group.key_dim,), (group.value_dim,)
        return [(self.role(w.key, K), self.operand(w.key, K), self.operand(w.value, V))
                for w in group.writes]

    def _chunk(self, group) -> dict:
        previous = {r.name for r in self.plan.reads if r.state == group.state and r.previous}
        return dict(self.matrix_roles(group), writes=self.dot_writes(group), previous=previous,
                    query_ops=self.query_operands(group))

    def _chunk_delta(self, group) -> dict:
        K, V = group.key_dim, group.value_dim
        two_keys = any(s.write_key is not None for s in group.steps)
        steps = [(self.role(s.key, (K,)), self.role(s.beta, ()), self.role(s.value, (V,)),
                  self.role(s.writes, (K,)) if two_keys else None) for s in group.steps]
        return dict(self.matrix_roles(group), steps=steps, n=len(steps), two_keys=two_keys)

    def _chunk_dplr(self, group) -> dict:
        K = (group.key_dim,)
        unseen = group.unseen_log_decay
        keywise = unseen is not None and unseen.dims == K
        return dict(self.matrix_roles(group), writes=self.writes(group),
                    erase=self.role(group.erase, K), key=self.role(group.key, K),
                    unseen=None if unseen is None else self.role(unseen, K if keywise else ()),
                    unseen_keywise=keywise)
