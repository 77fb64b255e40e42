"""The Triton step + Jacobian kernel of `solver="newton"` (newton.md): the step and the diagonal
blocks of its Jacobian in the states, at every position at once, one program per (batch x step,
head) holding every dim as a block, as the fused recurrent kernel holds a step.

The values are the Triton backward's SSA form of the step (vjp.Step, rendered by render.py); the
tangents are the Newton solver's symbolic forward-mode rules (backends/torch/tangent_rules.py)
spelled in `tl` (`TritonDialect`), with the seeds 1 / 0 of one column of every diagonal block.
A dense Jacobian, or an operation without a rule here, keeps the torch tangents (`KERNEL` None).
"""
from __future__ import annotations

from seqc import ir
from seqc.backends.torch.newton_tangent import Tangents, straight_line
from seqc.backends.torch.tangent_rules import ONE, NoRule, Term

from . import layout
from .render import HELPERS, Block, Constants, align
from .vjp import UNARY_SLOPES, Step, full, symbol_var


class TritonDialect:
    """How tangent code is spelled in Triton: blocks aligned by dim name (render.py); no
    reductions (a diagonal Jacobian never reduces a state-dependent value over a state dim)."""
    where, exp, log = "tl.where", "tl.exp", "tl.log"
    reductions = False
    slopes = UNARY_SLOPES

    @staticmethod
    def align(term: Term, dims: tuple[str, ...]) -> str:
        return term.code if term.scalar else align(Block(term.code, term.dims), dims)

    @staticmethod
    def power_slope(b: str, e: str, exponent: ir.Expr) -> str:
        if isinstance(exponent, ir.Num) and float(exponent.value) in (1.0, 2.0, 3.0):
            return {1.0: "1.0", 2.0: f"(2.0 * {b})",
                    3.0: f"(3.0 * {b} * {b})"}[float(exponent.value)]
        return f"({e} * _pow({b}, {e} - 1.0))"

    def state(self, term: Term | None, dims: tuple[str, ...], like: str) -> str:
        if term is None:
            shape = ", ".join(f"BLOCK_{d}" for d in dims)
            return f"tl.zeros([{shape}], dtype=ACC)"
        return full(Block(self.align(term, dims), () if term.scalar else dims), dims)


def state_var(name: str, version: int) -> str:
    return symbol_var(("state", name, version))


class NewtonStepKernel:
    """The context of newton_step.py.j2 for one spec with a diagonal Jacobian; `error` says why
    there is none (dense, or an operation without a Triton tangent rule)."""

    template = "newton_step.py.j2"

    def __init__(self, spec: ir.Spec, diagonal: bool):
        self.spec = spec
        self.constants = Constants()
        self.error = "" if diagonal else "the Jacobian is dense"
        self.lines: list[str] = []
        self.new: list[str] = []
        self.columns: list[list[str]] = []
        if diagonal:
            try:
                self._build()
            except NoRule as e:
                self.error = str(e)

    def _build(self) -> None:
        spec = self.spec
        step = Step(spec, self.constants)
        names = [s.name for s in spec.states]
        dims = {s.name: s.dims for s in spec.states}
        new = [state_var(s, step.final_version(s)) for s in names]
        dialect, tangent_lines = TritonDialect(), []
        for j, seed in enumerate(names):
            column = Tangents(step, {s: ONE if s == seed else None for s in names},
                              prefix=f"c{j}_", dialect=dialect)
            tangent_lines += column.lines
            self.columns.append([dialect.state(column.result[s], dims[s], v)
                                 for s, v in zip(names, new)])
        values = [tuple(line.split(" = ", 1)) for line in step.lines]
        before = [state_var(s, 0) for s in names]
        self.lines = straight_line(values + tangent_lines,
                                   new + [c for col in self.columns for c in col], before)
        self.new = new

    def context(self) -> dict:
        spec = self.spec
        pro = layout.prologue(spec, None)
        loads = []
        for tensor, prefix in [(x, "in_") for x in spec.inputs] + \
                [(s, "prev_") for s in spec.states]:
            offs, mask = layout.block(layout.row_axes(tensor.dims))
            row = f"((i_b * T + t) * H + i_h) * ({layout.size(tensor.dims)}) + {offs}"
            var = f"in_{tensor.name}" if prefix == "in_" else state_var(tensor.name, 0)
            loads.append(f"{var} = tl.load(ptr_{prefix}{tensor.name} + {row}, mask={mask}, "
                         f"other=0.0).to(ACC)")
        stores = []
        targets = [(f"new_{s.name}", v, s) for s, v in zip(spec.states, self.new)]
        targets += [(f"jac_{j}_{i}", code, s) for j, column in enumerate(self.columns)
                    for i, (code, s) in enumerate(zip(column, spec.states))]
        for pointer, code, s in targets:
            offs, mask = layout.block(layout.row_axes(s.dims))
            row = f"((i_b * T + t) * H + i_h) * ({layout.size(s.dims)}) + {offs}"
            stores.append(f"tl.store(ptr_{pointer} + {row}, {code}, mask={mask})")
        return dict(offsets=pro["offsets"], masks=pro["masks"], params=pro["params"],
                    loads=loads, body=self.lines, stores=stores,
                    jacobian=[(j, i) for j in range(len(spec.states))
                              for i in range(len(spec.states))],
                    constants=self.constants.host, helpers=HELPERS, error=self.error)
