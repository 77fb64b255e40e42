"""The two-level (chunked) scan (scan_parallel.md): the `scan` mode's kernel with time split into
chunks, each its own program, for Plans of `scan` (elementwise or coupled) and `semiring` groups.

Pass 1 (grid: lane blocks, batch x head, chunks) runs each chunk from the identity and writes its
summary: the state it ends in (the aggregate offset) and the composition of its coefficients (the
aggregate coefficient: a product, a log-space sum for a semiring, a matrix product for a coupled
group). Pass 2 (grid: lane blocks, batch x head) folds the summaries over the chunks in order from
the initial state, writing the state entering each chunk and the final state. Pass 3 (the grid of
pass 1) reruns each chunk from its carried-in state and writes the outputs. The three passes are one
generated kernel, `PASS` a constexpr; role expressions and sections are the blockwise kernel's
(blockwise.py), each section also composing its aggregate in pass 1.
"""
from __future__ import annotations

from seqc.templates import render

from . import layout
from .blockwise import SECTION, BlockKernel
from .coupled_combine import closure
from .render import index

LAST = "tl.sum(tl.where({last}, {block}, 0.0), axis=0)"      # a block's last row (time axis 0)


class ScanParallelKernel(BlockKernel):
    template = "scan_parallel.py.j2"

    def __init__(self, plan, constants):
        super().__init__(plan, constants)
        self.mode = "scan_parallel"
        self.summaries: list[dict] = []     # per state: its pass-1 identity and pass-2 fold
        self.aggregates: list[dict] = []    # per aggregate coefficient: name, dims, identity
        self.summarising = False            # sections also compose their aggregates (pass 1)

    def section(self, group) -> str:
        kind = "coupled_scan" if group.kind == "scan" and group.coupling else group.kind
        context = getattr(self, f"_{kind}")(group)
        aggregate = getattr(self, f"_aggregate_{kind}")(group) if self.summarising else []
        return render("triton", SECTION[kind], group=group, aggregate=aggregate, **context)

    def _last(self, block: str, dims) -> str:
        return LAST.format(last=index("last_T", 0, len(dims) + 1), block=block)

    def _aggregate_scan(self, group) -> list[str]:
        """x -> a x + b composed over the chunk: the coefficient's product."""
        lines = []
        for s in group.states:
            dims = self.spec.tensor(s).dims
            self._summary(s, dims, "0.0", f"cagg_{s} * st_{s} + csum_{s}")
            self.aggregates.append(dict(name=f"agg_{s}", dims=dims, identity="1.0"))
            lines.append(f"agg_{s} = {self._last(f'a_{s}', dims)} * agg_{s}")
        return lines

    def _aggregate_semiring(self, group) -> list[str]:
        """x -> a (x) x (+) b composed: the coefficients' (log-space) sum."""
        s = group.state
        dims = self.spec.tensor(s).dims
        fold = ("tl.maximum({0}, {1})" if group.semiring == "maxplus" else "_logaddexp({0}, {1})")
        self._summary(s, dims, 'float("-inf")', fold.format(f"cagg_{s} + st_{s}", f"csum_{s}"))
        self.aggregates.append(dict(name=f"agg_{s}", dims=dims, identity="0.0"))
        return [f"agg_{s} = {self._last(f'a_{s}', dims)} + agg_{s}"]

    def _aggregate_coupled_scan(self, group) -> list[str]:
        """(A, b) composed: the chunk's matrix product A_last ... A_first, entry by entry over
        the entries a product can fill (coupled_combine.closure)."""
        names = group.states
        n = len(names)
        dims = self.spec.tensor(names[0]).dims
        tag = names[0]
        entries = closure(n, {(names.index(i), names.index(j)) for i, j in group.coupling})
        for i, s in enumerate(names):
            terms = [f"cagg_{tag}_{i}_{j} * st_{names[j]}" for j in range(n) if (i, j) in entries]
            self._summary(s, dims, "0.0", " + ".join(terms + [f"csum_{s}"]))
        for i, j in entries:
            self.aggregates.append(dict(name=f"agg_{tag}_{i}_{j}", dims=dims,
                                        identity="1.0" if i == j else "0.0"))
        lines = [f"last_{tag}_{i}_{j} = {self._last(f'ca_{tag}_{i}_{j}', dims)}"
                 for i, j in entries]
        products = [" + ".join(f"last_{tag}_{i}_{j} * agg_{tag}_{j}_{k}" for j in range(n)
                               if (i, j) in entries and (j, k) in entries) for i, k in entries]
        lines.append(", ".join(f"agg_{tag}_{i}_{k}" for i, k in entries) + " = "
                     + ", ".join(products))
        return lines

    def _summary(self, name: str, dims, identity: str, fold: str) -> None:
        self.summaries.append(dict(name=name, dims=dims, identity=identity, fold=fold))

    def context(self) -> dict:
        context = super().context()
        combines = list(self.combines)
        self.summarising = True
        summary_sections = [self.section(g) for g in self.plan.groups]
        self.combines = combines        # the second rendering's combine functions: the same
        buffers = []        # (name, dims) of the [NC, B * H, *dims] summary buffers
        for s in self.summaries:
            buffers += [(f"sum_{s['name']}", s["dims"]), (f"carry_{s['name']}", s["dims"])]
        buffers += [(a["name"], a["dims"]) for a in self.aggregates]
        # the pass-2 fold of every state at once (a coupled state's reads the others' old value)
        fold = (", ".join(f"st_{s['name']}" for s in self.summaries) + " = "
                + ", ".join(s["fold"] for s in self.summaries))
        return dict(context, summary_sections=summary_sections, fold=fold,
                    summaries=[self._summary_code(s) for s in self.summaries],
                    aggregates=[self._aggregate_code(a) for a in self.aggregates],
                    buffers=buffers, state_lanes=self.state_lanes())

    def _slot(self, pointer: str, dims, chunk: str) -> tuple[str, str]:
        """Address and mask of chunk `chunk`'s row of a `[NC, B * H, *dims]` summary buffer."""
        offs, mask = layout.block(layout.row_axes(dims))
        return f"ptr_{pointer} + (({chunk}) * BH + i_bh) * ({layout.size(dims)}) + {offs}", mask

    def _summary_code(self, s: dict) -> dict:
        name, dims = s["name"], s["dims"]
        shape = ", ".join(f"BLOCK_{d}" for d in dims)
        sum_slot, mask = self._slot(f"sum_{name}", dims, "i_c")
        carry_in, _ = self._slot(f"carry_{name}", dims, "i_c")
        carry_out, _ = self._slot(f"carry_{name}", dims, "c")
        csum, _ = self._slot(f"sum_{name}", dims, "c")
        return dict(
            identity=f"st_{name} = tl.full([{shape}], {s['identity']}, dtype=ACC)",
            store_sum=self.guard(dims, f"tl.store({sum_slot}, st_{name}, mask={mask})"),
            load_carry=f"st_{name} = tl.load({carry_in}, mask={mask}, other=0.0)",
            store_carry=self.guard(dims, f"tl.store({carry_out}, st_{name}, mask={mask})"),
            load_sum=f"csum_{name} = tl.load({csum}, mask={mask}, other=0.0)")

    def _aggregate_code(self, a: dict) -> dict:
        name, dims = a["name"], a["dims"]
        shape = ", ".join(f"BLOCK_{d}" for d in dims)
        slot, mask = self._slot(name, dims, "i_c")
        chunk_slot, _ = self._slot(name, dims, "c")
        return dict(identity=f"{name} = tl.full([{shape}], {a['identity']}, dtype=ACC)",
                    store=self.guard(dims, f"tl.store({slot}, {name}, mask={mask})"),
                    load=f"c{name} = tl.load({chunk_slot}, mask={mask}, other=0.0)")

    def state_lanes(self) -> str:
        return layout.lanes(self.spec.states)
