"""The fused recurrent kernel: the step body in registers, the time loop inside one program.

Exact for every spec (it runs the statements as written, like the reference), and the decode
kernel (T = 1 with a state in and out). See fused_recurrent.md for the statement of its math.
"""
from __future__ import annotations

from seqc import ir

from . import layout
from .render import Block, Constants, TritonRenderer, align

PREFIX = {"input": "in_", "param": "par_", "state": "st_", "let": "let_"}


def output_dims(output: ir.Output) -> tuple[str, ...]:
    return output.declared_dims if output.declared_dims is not None else output.value.dims


def full(block: Block, dims: tuple[str, ...]) -> str:
    """`block` as a block with exactly the axes `dims` (broadcast when it lacks some)."""
    code = align(block, dims)
    if set(block.dims) != set(dims) and dims:
        shape = ", ".join(f"BLOCK_{d}" for d in dims)
        code = f"({code} + tl.zeros([{shape}], dtype=ACC))"
    return code


def checkpoint_row(state: ir.Tensor, segment: str = "t // SEGMENT") -> str:
    """Offsets of the checkpoint of a segment of a state (by default the one step `t` is in)."""
    offs, _ = layout.block(layout.row_axes(state.dims))
    return f"(i_bh * tl.cdiv(T, SEGMENT) + {segment}) * ({layout.size(state.dims)}) + {offs}"


class FusedKernel:
    """Lines of the fused recurrent kernel for one spec."""

    mode = "fused_recurrent"
    template = "fused_recurrent.py.j2"

    def __init__(self, spec: ir.Spec, constants: Constants):
        self.spec = spec
        self.constants = constants
        self.split = layout.split_dim(spec)
        self.lets: dict[str, tuple[str, ...]] = {}
        self.expr = TritonRenderer(self.name_block, constants)

    def name_block(self, node: ir.Name) -> Block:
        kind = node.ref.kind
        if kind == "let":
            return Block(f"let_{node.id}", self.lets[node.id])
        return Block(PREFIX[kind] + node.id, self.spec.tensor(node.id).dims)

    def guard(self, dims: tuple[str, ...], store: str) -> str:
        return layout.guard(self.split, dims, store)

    def context(self) -> dict:
        spec = self.spec
        loads, body = [], []
        for x in spec.inputs:
            offs, mask = layout.block(layout.row_axes(x.dims))
            row = f"((i_b * T + t) * H + i_h) * ({layout.size(x.dims)}) + {offs}"
            loads.append(f"in_{x.name} = tl.load(ptr_in_{x.name} + {row}, mask={mask}, "
                         f"other=0.0).to(ACC)")
        prologue = layout.prologue(spec, self.split)
        param_loads = dict(zip((p.name for p in spec.params), prologue["params"]))
        for statement in spec.body:
            # RELOAD_PARAMS: a param is loaded right before the first statement that uses it,
            # so that one [D, D] weight at a time is live (gru, lstm at D = 128)
            used = [n.id for n in ir.walk(statement.value)
                    if isinstance(n, ir.Name) and n.ref.kind == "param" and n.id in param_loads]
            reloads = [param_loads.pop(name) for name in dict.fromkeys(used)]
            body.append((reloads, self.statement(statement)))
        blocks = self.block_names()
        return dict(prologue, loads=loads, body=body, blocks=blocks,
                    split=self.split,
                    split_lanes=layout.lanes([*spec.states, *(
                        p for p in spec.params if self.split in p.dims)]),
                    param_lanes=layout.lanes(spec.params),
                    checkpoints=self.checkpoints())

    def checkpoints(self) -> list[str]:
        """Training: the state entering step t stored when t is a multiple of SEGMENT, at
        `[B, H, cdiv(T, SEGMENT), *dims]` (fused_recurrent_bwd.md)."""
        return [self.guard(s.dims, f"tl.store(ptr_ckpt_{s.name} + {checkpoint_row(s)}, "
                                   f"st_{s.name}, mask={layout.block(layout.row_axes(s.dims))[1]})")
                for s in self.spec.states]

    def statement(self, statement) -> str:
        value = self.expr.bound(statement.value)
        if isinstance(statement, ir.Let):
            self.lets[statement.name] = value.dims
            return f"let_{statement.name} = {value.code}"
        if isinstance(statement, ir.Update):
            dims = self.spec.tensor(statement.state).dims
            return f"st_{statement.state} = {full(value, dims)}"
        dims = output_dims(statement)
        offs, mask = layout.block(layout.row_axes(dims))
        row = f"((i_b * T + t) * H + i_h) * ({layout.size(dims)}) + {offs}"
        return self.guard(dims, f"tl.store(ptr_out_{statement.name} + {row}, "
                                f"{full(value, dims)}, mask={mask})")

    def block_names(self) -> list[str]:
        return [f"BLOCK_{d.name}" for d in self.spec.dims]
