"""The three-kernel delta-rule form (chunk_delta_parallel.md): a per-chunk kernel parallel over
(chunks, batch x head) forming the WY factors w, u of each chunk, a state pass writing the
chunk-boundary states and the new values, and an output kernel parallel over (value blocks,
chunks, batch x head), for a Plan whose only group is a `chunk_delta` group S[K, V] with one
delta step a token and a scalar or key-wise log decay, or none (deltanet, gated_deltanet, kda,
comba: its write key apart from its erase key).

Role expressions are rendered as in chunk_parallel.py (whose loads, operands and setup this
builder shares); what enters a `tl.dot` is in the call's dot dtype `DOT`, the states, gates and
accumulators stay fp32.
"""
from __future__ import annotations

import re

from . import layout
from .blockwise import LOG2E
from .chunk_parallel import ChunkParallelKernel, free_of_dim, lone_group, reduces


def supported(plan) -> bool:
    """One chunk_delta group S[K, V] (key dim first) with one or two delta steps a token (scalar
    betas), a scalar decay or none (key-wise: one step a token), and values, betas and outputs
    (and a scalar decay) that do not need the key dim (the output kernel loops over key
    blocks); no relabel."""
    group = lone_group(plan, "chunk_delta")
    if group is None or len(group.steps) not in (1, 2):
        return False
    K, V = group.key_dim, group.value_dim
    if any(s.key.dims != (K,) or s.writes.dims != (K,) or s.value.dims != (V,) or s.beta.dims != ()
           for s in group.steps):
        return False
    if group.log_decay is not None and group.log_decay.dims not in ((), (K,)[:len(group.steps) == 1]):
        return False
    free = [e for s in group.steps for e in (s.value, s.beta)] + list(plan.outputs.values())
    if group.log_decay is not None and group.log_decay.dims == ():
        free.append(group.log_decay)
    return free_of_dim(plan, K, free)


class ChunkDeltaParallelKernel(ChunkParallelKernel):
    template = "chunk_delta_parallel.py.j2"

    def __init__(self, plan, constants):
        super().__init__(plan, constants)
        self.mode = "chunk_delta_parallel"

    def keys(self) -> list:
        """The group's key-dim role expressions besides the queries (here the delta steps' erase
        keys and, where apart, their write keys)."""
        return [s.key for s in self.group.steps] + [s.write_key for s in self.group.steps
                                                     if s.write_key is not None]

    def key_exprs(self):
        queries = [q for _, q in self.reads_of(self.group.state)]
        return self.keys() + queries + [let.value for let in self.plan.prelude]

    def kernel_lanes(self, K: str, V: str) -> dict:
        """The lane lines of the three kernels: the per-chunk kernel's (no key or value lanes:
        it loops over both), the state pass's (all of K), the output kernel's (no key lanes)."""
        offsets, masks = self.lanes(K, V)
        whole_key = [f"o_{K} = tl.arange(0, BLOCK_{K})" if line.startswith(f"o_{K} =") else line
                     for line in offsets] + masks
        prepare = [line for line in whole_key if not line.startswith(
            (f"o_{V} =", f"mask_{V} =", f"o_{K} =", f"mask_{K} ="))]
        outer = [line for line in offsets + masks
                 if not line.startswith((f"o_{K} =", f"mask_{K} ="))]
        return dict(prepare_lanes=prepare, state_lanes=whole_key, outer_lanes=outer)

    def context(self) -> dict:
        g = self.group
        K, V = g.key_dim, g.value_dim
        spec = self.spec
        every, bound, keywise, decay = self.group_basics()
        # key_op the erase keys (read as k @ S: the UT system's rows, w = T beta k), write_op the
        # write keys (the UT system's columns, the state pass, the read-out): the erase keys
        # themselves unless a step writes along another key (Comba: chunk_delta_parallel.md)
        two_keys = any(s.write_key is not None for s in g.steps)
        steps = [dict(key_op=self.operand(s.key, (K,)), beta=self.role(s.beta, ()),
                      value=self.role(s.value, (V,)), write_op=self.operand(s.writes, (K,)))
                 for s in g.steps]
        key = self.role(g.steps[0].key, (K,))       # the fp32 keys (key-wise: one step)
        write = self.role(g.steps[0].writes, (K,))
        key_op, beta, value, write_op = (by_step([s[role] for s in steps], axis)
                                         for role, axis in (("key_op", "[:, None]"), ("beta", ""),
                                                            ("value", "[:, None]"),
                                                            ("write_op", "[:, None]")))
        row_decay = decay       # per row of the per-chunk kernel: before a token's first step
        if decay is not None and len(steps) > 1:
            row_decay = f"tl.where(step == 0, {decay}, 0.0)"
        reads = []
        for name, query in self.reads_of(g.state):
            self.reads[name] = ("T", V)
            reads.append(dict(name=name, query=self.role(query, (K,)),
                              query_op=self.operand(query, (K,))))
        stores = [self.store(name, v) for name, v in self.plan.outputs.items()]
        key_names = {n for n in every if n in bound or self.has_dim(n, K)}
        free_names = every - key_names
        inner = [r["query_op"] for r in reads] + [s["write_op"] for s in steps]
        outer = stores
        if keywise:     # the gates, the fp32 query and key of each key block (keywise_scores)
            inner += [decay, write] + [r["query"] for r in reads]
        elif decay:
            outer = outer + [decay]
        inner_code, outer_code = "\n".join(inner), "\n".join(outer)
        full_key = any(reduces(e, K) for e in self.key_exprs())
        beta_code = beta if keywise else "\n".join([beta, row_decay or ""])
        key_code = "\n".join([key_op, write_op] + ([decay] if keywise else []))
        # one step a token, no key-wise decay: the state pass decays the keys itself
        kg_from_keys = len(steps) == 1 and not keywise
        return dict(K=K, V=V, S=g.state, decay=decay, keywise=keywise, log2e=LOG2E,
                    steps=steps, n=len(steps), row_decay=row_decay,
                    key=key, key_op=key_op, beta=beta, value=value, reads=reads, stores=stores,
                    write=write, write_op=write_op, two_keys=two_keys,
                    **self.kernel_lanes(K, V),
                    beta_setup=own_step_loads(steps, self.setup(beta_code, every - key_names)),
                    key_setup=own_step_loads(steps, self.setup(key_code, every)),
                    kg_from_keys=kg_from_keys,
                    state_setup=self.setup("\n".join([write_op, decay or ""]), every),
                    value_setup=own_step_loads(steps, self.setup(value, every)),
                    init=layout.prologue(spec, V)["states"][0],
                    outer=self.setup(outer_code + "\n" + inner_code, free_names),
                    inner=self.setup(inner_code, key_names),
                    full_key=full_key, split_v=layout.split_dim(spec) == V,
                    wide_output=not full_key,
                    # all of K up to 128 with one step and no key-wise decay (kda's per-sub-chunk
                    # key-wise gates spilled at 128); two steps hold both steps' keys a row
                    prepare_key_block=128 if kg_from_keys else 64 if len(steps) == 1 else 16,
                    final_store=self.final_store(g.state, K, V))


def by_step(codes: list[str], axis: str) -> str:
    """A row's role among the delta steps' (the per-chunk kernel's rows alternate steps,
    `step = row % NSTEP`)."""
    if len(codes) == 1:
        return codes[0]
    return f"tl.where((step == 0){axis}, {codes[0]}, {codes[1]})"


def own_step_loads(steps: list[dict], setup: dict) -> dict:
    """Two delta steps a token: the per-chunk kernel's rows alternate steps (`step = row %
    NSTEP`) and select their step's roles, so an input only one step's roles read (deltaproduct's
    k1, v1, beta1) is loaded on that step's rows only (its load mask `mask_T & (step == j)`):
    the other rows never use it, and each token's row of it is read once, not once per step."""
    if len(steps) == 1:
        return setup
    body = []
    for line in setup["body"]:
        name = re.match(r"raw_(\w+) = tl\.load\(", line)
        if name:
            words = re.compile(rf"\b(raw|in)_{name.group(1)}\b")
            others = [other for other in setup["body"]
                      if not other.startswith((f"raw_{name.group(1)} =", f"in_{name.group(1)} ="))]
            readers = [j for j, step in enumerate(steps) if words.search(" ".join(step.values()))]
            if len(readers) == 1 and not any(words.search(other) for other in others):
                line = re.sub(r"\bmask_T\b", f"(mask_T & (step == {readers[0]}))", line)
        body.append(line)
    return dict(setup, body=body)
