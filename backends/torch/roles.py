"""The role expressions of each Plan group, rendered as calls of the family functions.

A role (a key, a decay, a scan coefficient, ...) is an expression over whole sequences; it is
aligned by name to the dims the family expects and laid out `[B, H, T, *dims]` by `_seq` (scan,
semiring), or handed over in the call layout `[B, T, H, *dims]` (chunk, chunk_delta: they copy it
into blocks `[B, H, N, C, *dims]` once).
"""
from __future__ import annotations

from seqc import ir
from seqc.backends.torch_render import TorchRenderer, constant_tensor, is_constant

FAMILIES = {"chunk": "chunk.py.j2", "chunk_delta": "chunk_delta.py.j2",
            "chunk_dplr": "chunk_dplr.py.j2", "scan": "scan.py.j2",
            "semiring": "semiring.py.j2", "coupled_scan": "coupled_scan.py.j2"}
SEMIRING_ADD = {"maxplus": "torch.maximum", "logsumexp": "torch.logaddexp"}


def plain_reads(plan) -> frozenset[str]:
    """The matrix reads of the current state that are a whole output expression and appear in
    no other (module.md, "Call-dtype reads"): such a read reaches its output unchanged."""
    def reads(expr):
        return [n.id for n in ir.walk(expr)
                if isinstance(n, ir.Name) and n.ref is not None and n.ref.kind == "read"]
    used = [name for expr in plan.outputs.values() for name in reads(expr)]
    whole = [expr.id for expr in plan.outputs.values() if reads(expr) == [getattr(expr, "id", None)]]
    return frozenset(r.name for r in plan.reads if r.query is not None and not r.previous
                     and r.name in whole and used.count(r.name) == whole.count(r.name))


def output_dims(output: ir.Output) -> tuple[str, ...]:
    return output.declared_dims if output.declared_dims is not None else output.value.dims


def family(group) -> str:
    """The template of the family that runs a (supported) group."""
    return FAMILIES["coupled_scan" if group.kind == "scan" and group.coupling else group.kind]


def templates(group) -> tuple[str, ...]:
    """The family's template, and the value-gated chunk form's beside it when it needs one."""
    gated = group.kind == "chunk" and group.value_log_decay is not None
    return (family(group),) + (("chunk_value_gated.py.j2",) if gated else ())


def supported(group, spec: ir.Spec) -> bool:
    """Whether the torch families run this group (else the whole spec runs the step loop)."""
    if group.kind == "scan":
        # a coupled group stacks its states on one axis: their dims must agree in order too
        # (the analysis only guarantees the same set of dims)
        return not group.coupling or len({spec.tensor(s).dims for s in group.states}) == 1
    if group.kind == "chunk_delta":     # a key-wise decay with one delta step a token
        return group.log_decay is None or group.log_decay.dims == () or len(group.steps) == 1
    return group.kind in ("chunk", "chunk_dplr", "semiring")


def chunk_write_scale(g) -> tuple[ir.Expr, ir.Expr] | None:
    """(the factor, the key) of a chunk group's one key that is a non-constant scalar times a
    vector (`dt * B`: mamba2; `exp(i) * kt`: mlstm) when no value-wise gate comes with it: a
    core given under `call_dtype` takes the factor as `write_scale` and forms the key itself
    (module.md, "A write scale")."""
    if len(g.writes) != 1 or g.value_dim is None or g.value_log_decay is not None:
        return None
    key = g.writes[0].key
    if not (isinstance(key, ir.Binary) and key.op is ir.Op.MUL):
        return None
    for scale, rest in ((key.left, key.right), (key.right, key.left)):
        if not scale.dims and not is_constant(scale) and rest.dims:
            return scale, rest
    return None


class GroupEmitter:
    def __init__(self, spec: ir.Spec, reads, whole: TorchRenderer,
                 plain: frozenset[str] = frozenset()):
        self.spec = spec
        self.reads = reads
        self.whole = whole
        self.plain = plain      # the reads that are a whole output (`plain_reads`)

    def seq(self, value: ir.Expr, dims: tuple[str, ...]) -> str:
        """`value` over [B, H, T, *dims]."""
        code = (constant_tensor(self.whole(value)) if is_constant(value)
                else self.whole(value, dims))
        return f"_seq({code}, B, T, H{''.join(f', dim_{d}' for d in dims)})"

    def call(self, value: ir.Expr, dims: tuple[str, ...]) -> str:
        """`value` over [B, T, H, *dims], the call layout (the chunk families block it themselves)."""
        code = (constant_tensor(self.whole(value)) if is_constant(value)
                else self.whole(value, dims))
        return f"{code}.expand(B, T, H{''.join(f', dim_{d}' for d in dims)})"

    def reads_of(self, state: str):
        return [r for r in self.reads if r.state == state]

    def queries(self, reads, kd, kind: str = "") -> tuple[list[str], str]:
        """Lines binding the queries of previous-state reads, and the core's query list: such a
        read's query goes in one step later (`_next_query`, module.md). The one query of a
        `kind` core call that is a constant times a query (`query_scale`) is `_query(raw, ...)`:
        unscaled when the core given under call_dtype scales it itself (module.md, "A constant
        query scale")."""
        lines, queries = [], []
        scale = self.query_scale(reads) if kind else None
        for r in reads:
            code = self.call(r.query, kd)
            if scale is not None:
                code = f"_query(raw, '{kind}', {scale[0]}, {self.call(scale[1], kd)})"
            if r.previous:
                lines.append(f"q_{r.name} = {code}")
                code = f"_next_query(q_{r.name})"
            queries.append(code)
        return lines, ", ".join(queries)

    def query_scale(self, reads) -> tuple[str, ir.Expr] | None:
        """(the constant's code, the query) when the group's one read is of the current state by
        a constant times a query (`scale * q`: a number, a dim size or a const of the call)."""
        if len(reads) != 1 or reads[0].previous or not isinstance(reads[0].query, ir.Binary):
            return None
        query = reads[0].query
        if query.op is not ir.Op.MUL:
            return None
        for scale, rest in ((query.left, query.right), (query.right, query.left)):
            if is_constant(scale) and not is_constant(rest):
                return self.whole(scale), rest
        return None

    def options(self, kind: str, reads, extra: tuple[str, ...] = ()) -> str:
        """The core call's call-dtype keywords (module.md, "Call-dtype reads", "A constant query
        scale", "A write scale"): under `call_dtype`, a core given for `kind` stores its reads
        in the call's dtype when each is a whole output (`plain_reads`), so that no fp32 read is
        cast after it, and takes the query's constant factor as `query_scale`; `extra`, further
        keywords (`write_scale=[...]`)."""
        options = list(extra)
        if reads and all(r.name in self.plain for r in reads):
            options.append("read_dtype=first.dtype")
        scale = self.query_scale(reads)
        if scale is not None:
            options.append(f"query_scale={scale[0]}")
        return f", **_given(raw, '{kind}', {', '.join(options)})" if options else ""

    def matrix_read_lines(self, reads, init: str, squeeze: str = "") -> list[str]:
        """rd_<read> from the core's `reads` [B, H, T, V]; a previous-state read comes out one
        step later, its step 0 the entering state `init` [B, H, K, V] read by its own query."""
        lines = []
        for i, r in enumerate(reads):
            read = f"reads[{i}].transpose(1, 2)"
            if r.previous:
                first = f"torch.einsum('bhk,bhkv->bhv', q_{r.name}[:, 0], {init})"
                read = f"_previous_read({read}, {first})"
            lines.append(f"rd_{r.name} = {read}{squeeze}")
        return lines

    def state_read_lines(self, state: str, held: str) -> list[str]:
        """rd_<read> of a state read as itself, from `held` [B, T, H, ...] (its value after each
        step); a previous-state read is one step later, the entering state at step 0."""
        return [f"rd_{r.name} = _previous_read({held}, init_{state})" if r.previous
                else f"rd_{r.name} = {held}" for r in self.reads_of(state)]

    def lines(self, group) -> list[str]:
        return getattr(self, group.kind)(group)

    def chunk(self, g) -> list[str]:
        vector = g.value_dim is None
        kd = (g.key_dim,)
        vd = () if vector else (g.value_dim,)
        keys = ", ".join(self.call(w.key, kd) for w in g.writes)
        scaled = chunk_write_scale(g)
        extra, bound = (), []
        if scaled is not None:  # the core scales the key (module.md, "A write scale")
            scale, key = self.call(scaled[0], ()), self.call(scaled[1], kd)
            if not isinstance(scaled[0], ir.Name):      # computed once (mlstm's exp(i))
                bound, scale = [f"scale_{g.state} = {scale}"], f"scale_{g.state}"
            keys = f"_written(raw, 'chunk', {scale}, {key})"
            extra = (f"write_scale=[{scale}]",)
        values = ", ".join("torch.ones(B, T, H, 1, dtype=compute, device=device)" if vector
                           else self.call(w.value, vd) for w in g.writes)
        if not g.writes:        # a state that is only decayed (or constant): one zero write
            keys = f"torch.zeros(B, T, H, dim_{g.key_dim}, dtype=compute, device=device)"
            values = (f"torch.zeros(B, T, H, {'1' if vector else 'dim_' + g.value_dim}, "
                      "dtype=compute, device=device)")
        reads = self.reads_of(g.state)
        lines, queries = self.queries(reads, kd, "chunk" if g.value_log_decay is None else "")
        lines = bound + lines
        decay = "None" if g.log_decay is None else self.call(g.log_decay, g.log_decay.dims and kd)
        swapped = self.swapped(g)
        init = f"init_{g.state}" + ("[..., None]" if vector else "") + swapped
        squeeze = ".squeeze(-1)" if vector else ""
        if g.value_log_decay is None:
            lines += [f"reads, final_{g.state} = cores['chunk']([{queries}], [{keys}], "
                      f"[{values}], {decay}, {init}, chunk_size"
                      f"{self.options('chunk', reads, extra)})"]
        else:                   # a torch-only core: no Triton kernel takes a value-wise gate
            lines += [f"reads, final_{g.state} = _chunk_value_gated([{queries}], [{keys}], "
                      f"[{values}], {decay}, {self.call(g.value_log_decay, vd)}, {init}, "
                      "chunk_size)"]
        lines += self.matrix_read_lines(reads, init, squeeze)
        if vector:
            lines.append(f"final_{g.state} = final_{g.state}.squeeze(-1)")
        elif swapped:
            lines.append(f"final_{g.state} = final_{g.state}{swapped}")
        return lines

    def swapped(self, g) -> str:
        """The kernels hold a matrix state as [K, V] (key dim first); a state declared [V, K]
        (read as `S @ q`) is transposed on the way in and out."""
        declared = self.spec.tensor(g.state).dims
        return ".transpose(-1, -2)" if len(declared) == 2 and declared[0] != g.key_dim else ""

    def chunk_delta(self, g) -> list[str]:
        kd, vd = (g.key_dim,), (g.value_dim,)
        s = g.state
        lines, extra = [], ()
        scales = self.write_scales(g)
        if scales is not None:  # the core scales the write keys (module.md, "A write scale")
            key_codes, writes_codes = [], []
            for step, scale in zip(g.steps, scales):
                key = self.call(step.key, kd)
                written = key if step.write_key is None else self.call(step.write_key, kd)
                key_codes.append(key)
                writes_codes.append(f"_written(raw, 'chunk_delta', {scale}, {written})")
            keys, writes = ", ".join(key_codes), ", ".join(writes_codes)
            extra = (f"write_scale=[{', '.join(scales)}]",)
        else:
            for j, step in enumerate(g.steps):
                lines.append(f"key_{s}_{j} = {self.call(step.key, kd)}")
                written = (f"key_{s}_{j}" if step.write_key is None
                           else self.call(step.write_key, kd))
                lines.append(f"write_{s}_{j} = {self.call(step.beta, kd)} * {written}")
            keys = ", ".join(f"key_{s}_{j}" for j in range(len(g.steps)))
            writes = ", ".join(f"write_{s}_{j}" for j in range(len(g.steps)))
        values = ", ".join(self.call(step.value, vd) for step in g.steps)
        reads = self.reads_of(s)
        query_lines, queries = self.queries(reads, kd, "chunk_delta")
        decay = "None" if g.log_decay is None else self.call(g.log_decay, g.log_decay.dims and kd)
        lines += query_lines
        lines.append(f"reads, final_{s} = cores['chunk_delta']([{queries}], [{keys}], "
                     f"[{writes}], [{values}], {decay}, init_{s}{self.swapped(g)}, "
                     f"chunk_size{self.options('chunk_delta', reads, extra)})")
        lines += self.matrix_read_lines(reads, f"init_{s}{self.swapped(g)}")
        if self.swapped(g):
            lines.append(f"final_{s} = final_{s}{self.swapped(g)}")
        return lines

    def write_scales(self, g) -> list[str] | None:
        """The per-token factors of a delta group's write keys (`beta` in
        `beta * k * (v - k @ S)`), as the code of each step's [B, T, H] sequence, when every
        step's factor is a non-constant scalar (one step a token: gated_deltanet, deltanet, kda,
        comba; several: deltaproduct): a core given under `call_dtype` takes them as
        `write_scale` and forms `beta k` itself (module.md, "A write scale")."""
        if any(step.beta.dims or is_constant(step.beta) for step in g.steps):
            return None
        return [self.call(step.beta, ()) for step in g.steps]

    def chunk_dplr(self, g) -> list[str]:
        kd, vd, s = (g.key_dim,), (g.value_dim,), g.state
        keys = ", ".join(self.call(w.key, kd) for w in g.writes)
        values = ", ".join(self.call(w.value, vd) for w in g.writes)
        if not g.writes:
            keys = f"torch.zeros(B, T, H, dim_{g.key_dim}, dtype=compute, device=device)"
            values = f"torch.zeros(B, T, H, dim_{g.value_dim}, dtype=compute, device=device)"
        reads = self.reads_of(s)
        lines, queries = self.queries(reads, kd, "chunk_dplr")
        decay, unseen = ("None" if log is None else self.call(log, log.dims and kd)
                         for log in (g.log_decay, g.unseen_log_decay))
        lines += [f"reads, final_{s} = cores['chunk_dplr']([{queries}], {self.call(g.erase, kd)}, "
                  f"{self.call(g.key, kd)}, [{keys}], [{values}], {decay}, {unseen}, "
                  f"init_{s}{self.swapped(g)}, chunk_size{self.options('chunk_dplr', reads)})"]
        lines += self.matrix_read_lines(reads, f"init_{s}{self.swapped(g)}")
        if self.swapped(g):
            lines.append(f"final_{s} = final_{s}{self.swapped(g)}")
        return lines

    def scan(self, g) -> list[str]:
        if g.coupling:
            return self.coupled_scan(g)
        lines = []
        for s in g.states:
            dims = self.spec.tensor(s).dims
            roles = (g.coefficient[s], g.offset[s])
            leaves = self.leaves(*roles)
            lines.append(f"all_{s}, final_{s} = _scan_roles(cores['scan'], lambda "
                         f"{', '.join(leaves)}: ({self.seq(roles[0], dims)}, "
                         f"{self.seq(roles[1], dims)}), ({''.join(f'{x}, ' for x in leaves)}), "
                         f"init_{s}, chunk_size)")
            lines += self.state_read_lines(s, f"all_{s}.transpose(1, 2)")
        return lines

    def leaves(self, *values: ir.Expr) -> list[str]:
        """The tensors (inputs, params, prelude lets) the expressions read, as the code names
        them, in first-read order: what `_scan_roles` forms the roles from again in backward."""
        names = [self.whole(node) for value in values for node in ir.walk(value)
                 if isinstance(node, ir.Name) and node.ref is not None
                 and node.ref.kind in ("input", "param", "let")]
        return list(dict.fromkeys(names))

    def coupled_scan(self, g) -> list[str]:
        """The couplings as an n x n list of elementwise coefficients over [B, H, T, ...]
        (`None` where a state does not read another), the offsets and states as lists."""
        dims = self.spec.tensor(g.states[0]).dims
        rows = ", ".join("[" + ", ".join(
            self.seq(g.coupling[(i, j)], dims) if (i, j) in g.coupling else "None"
            for j in g.states) + "]" for i in g.states)
        offsets = ", ".join(self.seq(g.offset[s], dims) for s in g.states)
        inits = ", ".join(f"init_{s}" for s in g.states)
        alls = ", ".join(f"all_{s}" for s in g.states)
        finals = ", ".join(f"final_{s}" for s in g.states)
        lines = [f"({alls},), ({finals},) = cores['coupled_scan']([{rows}], [{offsets}], [{inits}], "
                 "chunk_size)"]
        for s in g.states:
            lines += self.state_read_lines(s, f"all_{s}.transpose(1, 2)")
        return lines

    def semiring(self, g) -> list[str]:
        s = g.state
        dims = self.spec.tensor(s).dims
        lines = [f"all_{s}, final_{s} = cores['semiring_scan']({self.seq(g.coefficient, dims)}, "
                 f"{self.seq(g.offset, dims)}, init_{s}, chunk_size, {SEMIRING_ADD[g.semiring]})"]
        return lines + self.state_read_lines(s, f"all_{s}.transpose(1, 2)")
