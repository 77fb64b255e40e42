"""The three-kernel diagonal-plus-low-rank form (chunk_dplr_parallel.md): a per-chunk kernel
parallel over (chunks, batch x head) forming each chunk's WY factors (w, u0) and the keys decayed
to the chunk end, a state pass writing the chunk-boundary states and the pseudo-values, and an
output kernel parallel over (value blocks, chunks, batch x head), for a Plan whose only group is a
`chunk_dplr` group S[K, V] with one write a token (rwkv7, comba).

Role expressions are rendered as in chunk_parallel.py (whose loads, operands and setup this
builder shares, with chunk_delta_parallel.py's lanes of the three kernels); what enters a
`tl.dot` is in the call's dot dtype `DOT`, the states, gates and accumulators stay fp32.
"""
from __future__ import annotations

from . import layout
from .blockwise import LOG2E
from .chunk_delta_parallel import ChunkDeltaParallelKernel
from .chunk_parallel import free_of_dim, lone_group, reduces


def supported(plan) -> bool:
    """One chunk_dplr group S[K, V] (key dim first) with one write a token, a scalar or key-wise
    log decay (or none), and values and outputs (and a scalar decay or unseen part of it) that do
    not need the key dim (the output kernel loops over key blocks)."""
    group = lone_group(plan, "chunk_dplr")
    if group is None or len(group.writes) != 1:
        return False
    K, V = group.key_dim, group.value_dim
    write = group.writes[0]
    if write.key.dims != (K,) or write.value.dims != (V,) \
            or group.erase.dims != (K,) or group.key.dims != (K,):
        return False
    gates = [e for e in (group.log_decay, group.unseen_log_decay) if e is not None]
    if any(e.dims not in ((), (K,)) for e in gates):
        return False
    free = [write.value] + list(plan.outputs.values()) + [e for e in gates if e.dims == ()]
    return free_of_dim(plan, K, free)


class ChunkDplrParallelKernel(ChunkDeltaParallelKernel):
    template = "chunk_dplr_parallel.py.j2"

    def __init__(self, plan, constants):
        super().__init__(plan, constants)
        self.mode = "chunk_dplr_parallel"

    def keys(self) -> list:
        g = self.group
        return [g.erase, g.key, g.writes[0].key]

    def gate(self, expr, K: str) -> str | None:
        """A log gate's role as a [BLOCK_T, BLOCK_K] block (a scalar one broadcast over the key
        lanes: every gate of this form is key-wise, chunk_dplr_parallel.md)."""
        if expr is None:
            return None
        if expr.dims == (K,):
            return self.role(expr, (K,))
        return f"({self.role(expr, ())})[:, None] + tl.zeros([BLOCK_T, BLOCK_{K}], dtype=ACC)"

    def context(self) -> dict:
        g = self.group
        K, V = g.key_dim, g.value_dim
        spec = self.spec
        every, bound, _, _ = self.group_basics()
        zeros = f"tl.zeros([BLOCK_T, BLOCK_{K}], dtype=ACC)"
        decay = self.gate(g.log_decay, K) or zeros
        unseen = self.gate(g.unseen_log_decay, K)
        erase, key = self.role(g.erase, (K,)), self.role(g.key, (K,))
        write_key = self.role(g.writes[0].key, (K,))
        value_op = self.operand(g.writes[0].value, (V,))
        reads = []
        for name, query in self.reads_of(g.state):
            self.reads[name] = ("T", V)
            reads.append(dict(name=name, query=self.role(query, (K,))))
        stores = [self.store(name, v) for name, v in self.plan.outputs.items()]
        key_names = {n for n in every if n in bound or self.has_dim(n, K)}
        free_names = every - key_names
        gates = "\n".join([decay, unseen or ""])
        # what each of the per-chunk kernel's key loops reads: L (with eg, kg), R, then w
        loops = {"L": [key, erase, write_key], "R": [key, write_key], "w": [key]}
        inner_code = "\n".join([erase, write_key, decay] + [r["query"] for r in reads])
        outer_code = "\n".join([value_op] + stores)
        full_key = any(reduces(e, K) for e in self.key_exprs())
        return dict(K=K, V=V, S=g.state, log2e=LOG2E, decay=decay, unseen=unseen,
                    erase=erase, key=key, write_key=write_key, value_op=value_op,
                    reads=reads, stores=stores,
                    **self.kernel_lanes(K, V),
                    key_setups={loop: self.setup("\n".join(roles + [gates]), every)
                                for loop, roles in loops.items()},
                    value_setup=self.setup(value_op, every),
                    init=layout.prologue(spec, V)["states"][0],
                    **self.outer_setups(outer_code, inner_code, "", free_names),
                    inner=self.setup(inner_code, key_names),
                    full_key=full_key, split_v=layout.split_dim(spec) == V,
                    final_store=self.final_store(g.state, K, V))
