"""The three-kernel delta-rule form (chunk_delta_parallel.md): a per-chunk kernel parallel over
(chunks, batch x head) forming the WY factors w, u of each chunk, a state pass writing the
chunk-boundary states and the new values, and an output kernel parallel over (value blocks,
chunks, batch x head), for a Plan whose only group is a `chunk_delta` group S[K, V] with one
delta step a token and a scalar or key-wise log decay, or none (deltanet, gated_deltanet, kda).

Role expressions are rendered as in chunk_parallel.py (whose loads, operands and setup this
builder shares); what enters a `tl.dot` is in the call's dot dtype `DOT`, the states, gates and
accumulators stay fp32.
"""
from __future__ import annotations

from . import layout
from .blockwise import LOG2E
from .chunk_parallel import ChunkParallelKernel, key_bound_lets, mentions, reduces


def supported(plan) -> bool:
    """One chunk_delta group S[K, V] (key dim first) with one delta step a token (a scalar
    beta), a scalar or key-wise decay or none, and values, betas and outputs (and a scalar decay)
    that do not need the key dim (the output kernel loops over key blocks)."""
    if plan is None or len(plan.groups) != 1 or plan.groups[0].kind != "chunk_delta":
        return False
    group = plan.groups[0]
    K, V = group.key_dim, group.value_dim
    if plan.spec.tensor(group.state).dims != (K, V) or len(group.steps) != 1:
        return False
    step = group.steps[0]
    if step.key.dims != (K,) or step.value.dims != (V,) or step.beta.dims != ():
        return False
    if group.log_decay is not None and group.log_decay.dims not in ((), (K,)):
        return False
    bound = key_bound_lets(plan, K)
    free = [step.value, step.beta] + list(plan.outputs.values())
    if group.log_decay is not None and group.log_decay.dims == ():
        free.append(group.log_decay)
    return not any(mentions(e, K, bound) for e in free)


class ChunkDeltaParallelKernel(ChunkParallelKernel):
    template = "chunk_delta_parallel.py.j2"

    def __init__(self, plan, constants):
        super().__init__(plan, constants)
        self.mode = "chunk_delta_parallel"

    def key_exprs(self):
        g = self.group
        exprs = [g.steps[0].key] + [q for _, q in self.reads_of(g.state)]
        return exprs + [let.value for let in self.plan.prelude]

    def context(self) -> dict:
        g = self.group
        K, V = g.key_dim, g.value_dim
        step = g.steps[0]
        spec = self.spec
        every = {x.name for x in spec.inputs} | {p.name for p in spec.params} | \
            {let.name for let in self.plan.prelude}
        bound = key_bound_lets(self.plan, K)
        for let in self.plan.prelude:      # dims of every let, for rendering
            self.lets[let.name] = self.expr(let.value).dims
        keywise = g.log_decay is not None and g.log_decay.dims == (K,)
        decay = None if g.log_decay is None else self.role(g.log_decay, (K,) if keywise else ())
        key, key_op = self.role(step.key, (K,)), self.operand(step.key, (K,))
        beta, value = self.role(step.beta, ()), self.role(step.value, (V,))
        reads = []
        for name, query in self.reads_of(g.state):
            self.reads[name] = ("T", V)
            reads.append(dict(name=name, query=self.role(query, (K,)),
                              query_op=self.operand(query, (K,))))
        stores = [self.store(name, v) for name, v in self.plan.outputs.items()]
        key_names = {n for n in every if n in bound or self.has_dim(n, K)}
        free_names = every - key_names
        inner = [r["query_op"] for r in reads] + [key_op]
        outer = stores
        if keywise:     # the gates, the fp32 query and key of each key block (keywise_scores)
            inner += [decay, key] + [r["query"] for r in reads]
        elif decay:
            outer = outer + [decay]
        inner_code, outer_code = "\n".join(inner), "\n".join(outer)
        full_key = any(reduces(e, K) for e in self.key_exprs())
        offsets, masks = self.lanes(K, V)
        whole_key = [f"o_{K} = tl.arange(0, BLOCK_{K})" if line.startswith(f"o_{K} =") else line
                     for line in offsets] + masks
        prepare_lanes = [line for line in whole_key if not line.startswith(
            (f"o_{V} =", f"mask_{V} =", f"o_{K} =", f"mask_{K} ="))]
        outer_lanes = [line for line in offsets + masks
                       if not line.startswith((f"o_{K} =", f"mask_{K} ="))]
        beta_code = beta if keywise else "\n".join([beta, decay or ""])
        key_code = "\n".join([key_op, decay]) if keywise else key_op
        return dict(K=K, V=V, S=g.state, decay=decay, keywise=keywise, log2e=LOG2E,
                    key=key, key_op=key_op, beta=beta, value=value, reads=reads, stores=stores,
                    prepare_lanes=prepare_lanes, state_lanes=whole_key, outer_lanes=outer_lanes,
                    beta_setup=self.setup(beta_code, every - key_names),
                    key_setup=self.setup(key_code, every),
                    value_setup=self.setup(value, every),
                    init=layout.prologue(spec, V)["states"][0],
                    outer=self.setup(outer_code + "\n" + inner_code, free_names),
                    inner=self.setup(inner_code, key_names),
                    full_key=full_key, split_v=layout.split_dim(spec) == V,
                    final_store=self.final_store(g.state, K, V))
