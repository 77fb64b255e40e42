"""The fused recurrent kernel's backward: the reverse-time loop with the step's vector-Jacobian
product generated from its expressions (vjp.py), over segments of checkpointed states.
See fused_recurrent_bwd.md for its math.
"""
from __future__ import annotations

import re

from seqc import ir

from . import layout
from .fused import checkpoint_row, output_dims
from .render import Constants
from .vjp import Adjoint, NoRule, Step


def block_offsets(dims: tuple[str, ...]) -> tuple[str, str]:
    """Offsets of a whole padded block, row-major over its BLOCK sizes, and its element count."""
    axes = tuple((d, " * ".join(f"BLOCK_{e}" for e in dims[i + 1:]) or "1")
                 for i, d in enumerate(dims))
    if not axes:
        return "0", "1"
    offs = " + ".join(f"{_arange(d, i, len(dims))} * ({stride})" for i, (d, stride) in
                      enumerate(axes))
    return f"({offs})", " * ".join(f"BLOCK_{d}" for d in dims)


def _arange(d: str, axis: int, ndim: int) -> str:
    code = f"tl.arange(0, BLOCK_{d})"
    if ndim <= 1:
        return code
    return f"{code}[{', '.join(':' if i == axis else 'None' for i in range(ndim))}]"


class FusedBackward:
    """Lines of the backward kernel of the fused recurrent kernel for one spec; `Adjoint` raises
    `NoRule` when an operation of the step has no rule (the module then has no such kernel)."""

    template = "fused_recurrent_bwd.py.j2"

    def __init__(self, spec: ir.Spec, constants: Constants, split: str | None):
        self.spec = spec
        self.split = split
        self.step = Step(spec, constants)
        self.adjoint = Adjoint(self.step, outer_params(spec, split))
        self.factors = self.factor_sources()

    def accumulated(self) -> list[ir.Tensor]:
        """The params whose adjoint the kernel accumulates (every one but those reduced
        outside as outer products only)."""
        return [p for p in self.spec.params
                if any(line.startswith(f"dpar_{p.name} += ") for line in self.adjoint.lines)]

    def factor_sources(self) -> dict[tuple, str]:
        """Each factor of an outer term (variable, axes) -> the host expression of its
        [B, T, H, *axes] values: an input, an input's gradient when the factor is that whole
        gradient, else a buffer the kernel fills every step (`factors[i]`, ptr_fac_<i>)."""
        sources: dict[tuple, str] = {}
        stored = 0
        for term in self.adjoint.outer_terms:
            for block in (term.dy, term.other):
                key = (block.code, block.dims)
                if key in sources:
                    continue
                held = self.adjoint.input_holding(block.code, block.dims)
                read = re.fullmatch(r"in_(\w+)", block.code)
                if held is not None:
                    sources[key] = f'd_in["{held}"][0]'
                elif read and self.spec.tensor(read.group(1)).dims == block.dims:
                    sources[key] = f'x["{read.group(1)}"].to(compute)'
                else:
                    sources[key] = f"factors[{stored}]"
                    stored += 1
        return sources

    def factor_stores(self) -> tuple[list[dict], list[str]]:
        """The factors the kernel stores (index, axes) and its per-step store lines."""
        stored, lines = [], []
        for (var, dims), source in self.factors.items():
            if not source.startswith("factors["):
                continue
            i = len(stored)
            offs, mask = layout.block(layout.row_axes(dims))
            lines.append(f"tl.store(ptr_fac_{i} + ((i_b * T + t) * H + i_h) * "
                         f"({layout.size(dims)}) + {offs}, {var}, mask={mask})")
            stored.append(dict(index=i, dims=dims))
        return stored, lines

    def outer_reductions(self) -> dict[str, list[str]]:
        """Per param, the host einsums of its outer terms (sum over batch and time)."""
        out: dict[str, list[str]] = {}
        for term in self.adjoint.outer_terms:
            a, b, c = term.letters
            dy = self.factors[(term.dy.code, term.dy.dims)]
            other = self.factors[(term.other.code, term.other.dims)]
            out.setdefault(term.param, []).append(
                f'torch.einsum("bth{a},bth{b}->h{c}", {dy}, {other})')
        return out

    def weight_products(self) -> dict[str, tuple[str, ...]]:
        """The step's `@` values with a matrix param operand (variable -> axes): under
        RELOAD_PARAMS the recompute loop keeps them in a scratch and the reverse step reads
        them back instead of reading the weight again."""
        found: dict[str, tuple[str, ...]] = {}

        def walk(value):
            node = value.node
            if (isinstance(node, ir.Binary) and node.op is ir.Op.MATMUL
                    and any((a.symbol or ("",))[0] == "param" and len(a.dims) >= 2
                            for a in value.args)):
                found[value.var] = value.dims
            for arg in value.args:
                walk(arg)
        for _, root, _ in self.step.statements:
            walk(root)
        return found

    def product_slot(self, i: int, dims: tuple[str, ...]) -> str:
        offs, size = block_offsets(dims)
        return f"ptr_mm_{i} + (i_prog * SEGMENT + t - t0) * ({size}) + {offs}"

    def step_lines(self, loads: dict[str, str], reverse: bool) -> list[str]:
        """The step's forward lines, params reloaded before their reads (RELOAD_PARAMS); each
        weight product kept in the scratch by the recompute loop and, `reverse`, read back
        from it (the weight is then not read for it) rather than computed."""
        products = self.weight_products()
        out = []
        for line in self.step.lines:
            var = line.split(" = ", 1)[0]
            if var not in products:
                out.extend(self.reloaded([line], loads))
                continue
            slot = self.product_slot(list(products).index(var), products[var])
            if reverse:
                out += [f"if RELOAD_PARAMS: {var} = tl.load({slot})",
                        f"if not RELOAD_PARAMS: {line}"]
            else:
                out += self.reloaded([line], loads) + [f"if RELOAD_PARAMS: tl.store({slot}, {var})"]
        return out

    def reloaded(self, lines: list[str], loads: dict[str, str]) -> list[str]:
        """`lines` with each param loaded right before every line that reads it, under
        RELOAD_PARAMS (the held copy otherwise): one [D, D] weight live at a time."""
        out = []
        for line in lines:
            for name, load in loads.items():
                if re.search(rf"\bpar_{name}\b", line.split(" = ", 1)[-1]):
                    out.append(f"if RELOAD_PARAMS: {load}")
            out.append(line)
        return out

    def partial(self, dims: tuple[str, ...]) -> bool:
        """A tensor without the split dim gets one gradient share per split program."""
        return self.split is not None and self.split not in dims

    def owner(self, dims: tuple[str, ...], load: str) -> str:
        """An incoming gradient: a tensor without the split dim is held by every split program,
        and its incoming gradient enters through the first only."""
        return f"tl.where(i_split == 0, {load}, 0.0)" if self.partial(dims) else load

    def row(self, dims, lead: str) -> tuple[str, str]:
        """Offsets and mask of a gradient row `lead` (its N_SPLIT share when partial)."""
        offs, mask = layout.block(layout.row_axes(dims))
        if self.partial(dims):
            lead = f"({lead}) * N_SPLIT + i_split"
        return f"({lead}) * ({layout.size(dims)}) + {offs}", mask

    def context(self) -> dict:
        spec = self.spec
        step_row = "(i_b * T + t) * H + i_h"
        loads, stores, outputs = [], [], []
        for x in spec.inputs:
            offs, mask = layout.block(layout.row_axes(x.dims))
            loads.append(f"in_{x.name} = tl.load(ptr_in_{x.name} + ({step_row}) * "
                         f"({layout.size(x.dims)}) + {offs}, mask={mask}, other=0.0).to(ACC)")
            row, mask = self.row(x.dims, step_row)
            stores.append(f"tl.store(ptr_din_{x.name} + {row}, din_{x.name}, mask={mask})")
        for o in spec.outputs:
            dims = output_dims(o)
            offs, mask = layout.block(layout.row_axes(dims))
            load = (f"tl.load(ptr_do_{o.name} + ({step_row}) * ({layout.size(dims)}) + {offs}, "
                    f"mask={mask}, other=0.0).to(ACC)")
            outputs.append(f"do_{o.name} = {self.owner(dims, load)}")
        prologue = layout.prologue(spec, self.split)
        param_loads = dict(zip((p.name for p in spec.params), prologue["params"]))
        factors, factor_lines = self.factor_stores()
        return dict(prologue, split=self.split, loads=loads,
                    outputs=outputs, input_stores=stores + factor_lines,
                    recompute=self.step_lines(param_loads, reverse=False),
                    forward=self.step_lines(param_loads, reverse=True),
                    products=[dict(index=i, dims=dims) for i, dims in
                              enumerate(self.weight_products().values())],
                    backward=self.reloaded(self.adjoint.lines, param_loads),
                    states=self.states(), params_grad=self.params(), factors=factors,
                    outer=self.outer_reductions(),
                    final_versions={s.name: self.step.final_version(s.name) for s in spec.states},
                    held_lanes=self.held_lanes())

    def held_lanes(self) -> str:
        """Code of the values a backward program holds in registers (padded blocks): each
        state and its adjoint, the accumulated params' adjoints, the params (`reload`: twice
        the largest one, the block read and the next one in flight; at 4 warps lstm's
        [128, 128] weights spilled 92 B on sm_80, at 8 none), and each block the step holds in
        two layouts (`transposed_reads`): both layouts at each of its reads."""
        def lanes(dims):
            return "(" + (" * ".join(f'blocks["BLOCK_{d}"]' for d in dims) or "1") + ")"
        held = [f"2 * {lanes(t.dims)}" for t in self.spec.states] + \
            [lanes(t.dims) for t in self.accumulated()]
        params = [lanes(t.dims) for t in self.spec.params]
        if params:
            largest = f"max({', '.join(params)})" if len(params) > 1 else params[0]
            held.append(f"(2 * {largest} if reload else {' + '.join(params)})")
        held += [f"2 * {reads} * {lanes(dims)}" for dims, reads in self.transposed_reads()]
        return " + ".join(held)

    def transposed_reads(self) -> list[tuple[tuple[str, ...], int]]:
        """(axes, reads) of each block of two or more axes that the reverse step forms
        transposed (`v = tl.permute(...)`: the layout of its other axis order) and reads more
        than once. Read once, it is converted into the layout of its reader as it dies (gla's
        `q @ S` adjoint added to dS); read again after that, it is held in both layouts and
        each read converts it (rwkv6's adjoint of `r @ (S + u k v^T)`, read by dS, dk and dv:
        at 4 warps it spilled 60 / 240 B on sm_80 at K = V = 48 / 64, and fit (255 / 0) when
        the same product was formed untransposed; docs/benchmarks.md, "Fused recurrent
        backward: the warps rule sees blocks held in two layouts")."""
        lines = self.step.lines + self.adjoint.lines
        dims = {**self.step.dims, **self.adjoint.dims}
        out = []
        for line in lines:
            formed = re.match(r"(\w+) = tl\.permute\(", line)
            if formed is None or len(dims.get(formed.group(1), ())) < 2:
                continue
            var = formed.group(1)
            reads = sum(len(re.findall(rf"\b{var}\b", re.split(r" \+?= ", other, maxsplit=1)[-1]))
                        for other in lines)
            if reads > 1:
                out.append((dims[var], reads))
        return out

    def states(self) -> list[dict]:
        """Per state: its checkpoint load, scratch store and load, incoming final gradient, and
        the store of the initial state's gradient."""
        out = []
        for s in self.spec.states:
            offs, mask = layout.block(layout.row_axes(s.dims))
            scratch, size = block_offsets(s.dims)
            slot = f"ptr_scratch_{s.name} + (i_prog * SEGMENT + t - t0) * ({size}) + {scratch}"
            state_row = "i_b * H + i_h"
            row, dmask = self.row(s.dims, state_row)
            out.append(dict(
                name=s.name,
                checkpoint=f"st_{s.name} = tl.load(ptr_ckpt_{s.name} + "
                           f"{checkpoint_row(s, 'i_seg')}, mask={mask}, other=0.0).to(ACC)",
                keep=f"tl.store({slot}, st_{s.name})",
                restore=f"st_{s.name}_0 = tl.load({slot})",
                dfinal=f"dst_{s.name} = " + self.owner(
                    s.dims, f"tl.load(ptr_dfinal_{s.name} + ({state_row}) * "
                            f"({layout.size(s.dims)}) + {offs}, mask={mask}, other=0.0).to(ACC)"),
                dinit=f"tl.store(ptr_dinit_{s.name} + {row}, dst_{s.name}, mask={dmask})",
                lanes=size))
        return out

    def params(self) -> list[dict]:
        out = []
        for p in self.accumulated():
            offs, mask = layout.block(layout.row_axes(p.dims))
            shape = ", ".join(f"BLOCK_{d}" for d in p.dims)
            out.append(dict(
                name=p.name, dims=p.dims,
                zero=f"dpar_{p.name} = tl.zeros([{shape}], dtype=ACC)",
                store=f"tl.store(ptr_dpar_{p.name} + (i_prog) * ({layout.size(p.dims)}) + {offs}, "
                      f"dpar_{p.name}, mask={mask})"))
        return out


def outer_params(spec: ir.Spec, split: str | None) -> frozenset[str]:
    """The matrix params whose `@` adjoints are reduced outside the kernel (vjp.py's
    OuterTerm): every param of two or more dims, when no dim is split over programs (a split
    would make the factors per-program shares)."""
    if split is not None:
        return frozenset()
    return frozenset(p.name for p in spec.params if len(p.dims) >= 2)


def backward_builder(spec: ir.Spec, constants: Constants, split: str | None):
    """The backward kernel's builder, or None when a step operation has no rule."""
    try:
        return FusedBackward(spec, constants, split)
    except NoRule:
        return None

