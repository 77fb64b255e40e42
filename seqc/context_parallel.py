"""Context parallelism: one sequence split along time across the ranks of a torch.distributed
process group (docs/context_parallel.md).

    fn = seqc.load("gla").kernel("torch", context_parallel=True)    # group=None: the default group
    o, ht = fn(q=q_shard, k=k_shard, v=v_shard, g=g_shard, initial_state=h0, output_final_state=True)

Rank r passes its time shard of every input, [B, T_r, H, ...] (the lengths may differ), and the
state before rank 0's first step (the same on every rank); it gets its shard's outputs, and the
state after the whole sequence on every rank. Per state group:

1. each rank summarises its shard as one element of the analysis's combine (proof.COMBINES: the
   (a, b) of a scan, the (D, U) of a chunk state, the (A, U) of a delta rule, the semiring pair),
   from the Plan's role expressions evaluated on its shard (`Roles`, `shard_summary`);
2. the summaries are all-gathered in rank order: one collective of a fixed size per rank, the
   same for any T;
3. each rank folds the summaries of the ranks before it onto the initial state with the combine:
   its incoming state; folding them all gives the final state (`fold_ranks`);
4. each rank runs its shard with the wrapped kernel (any backend) from its incoming state.

Backward: steps 1 and 4 are local autograd; `_Exchange` is step 2 and 3, and its backward is the
adjoint of the fold (autograd of the same combines, run in reverse) followed by one all-reduce of
the summaries' gradients, so that each rank's summary gets the gradient of every rank's loss.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .kernel import KernelOutput
from .context_summary import (Roles, as_states, initial_states, shard_summary, to_layout,
                              unused_summary)
from .validate import validate


class ContextParallelKernel:
    """A kernel whose call takes this rank's time shard; see the module's docstring."""

    def __init__(self, program, kernel, group=None):
        plan = program.analysis.plan
        sequential = [g for g in plan.groups if g.kind == "sequential"]
        if sequential:
            names = ", ".join(f"`{s}`" for g in sequential for s in g.states)
            raise ValueError(
                f"context_parallel=True needs a parallel form for every state, but {names} of "
                f"`{program.name}` is sequential (no associative combine to join the ranks' "
                "shards; run the whole sequence on one rank)")
        self.program = program
        self.kernel = kernel
        self.group = group
        self.backend = kernel.backend
        self.combines = [program.analysis.proof(g.states[0]).combine for g in plan.groups]
        self._cores = None

    def __call__(self, initial_state=None, output_final_state: bool = False, cu_seqlens=None,
                 **tensors):
        if cu_seqlens is not None:
            raise ValueError("context_parallel=True takes no cu_seqlens: each rank passes one "
                             "time shard of the same batch of sequences")
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("context_parallel=True needs torch.distributed initialised "
                             "(torch.distributed.init_process_group) on every rank")
        spec, plan = self.program.spec, self.program.analysis.plan
        call = validate(spec, tensors, initial_state, output_final_state)
        compute = torch.float64 if call.dtype == torch.float64 else torch.float32
        initial = initial_states(spec, call, compute)
        roles = Roles(plan, {**call.inputs, **call.params}, call.dims, compute, call.device)
        rank = dist.get_rank(self.group)
        starts = [to_layout(group, spec, initial) for group in plan.groups]
        summaries = self._summaries(roles, starts, rank, output_final_state)
        fold = _Fold(self.combines, summaries, starts, rank)
        # in the graph on every rank whenever autograd records, whatever requires a gradient
        # here: each rank's backward then reaches the exchange's all_reduce (else the ranks
        # whose tensors need no gradient would skip it and the others wait forever)
        anchor = torch.zeros((), requires_grad=torch.is_grad_enabled())
        incoming, final = _Exchange.apply(fold, self.group, fold.summaries.pack(summaries),
                                          fold.states.pack(starts), anchor)
        incoming = as_states(plan.groups, spec, fold.states.unpack(incoming))
        out = self.kernel(initial_state=incoming, output_final_state=False, **tensors)
        final = as_states(plan.groups, spec, fold.states.unpack(final))
        return KernelOutput({name: out[name] for name in out.keys()},
                            final if output_final_state else None)

    def _summaries(self, roles, starts, rank: int, output_final_state: bool) -> list:
        """This rank's summary of each group, the pieces of all groups in one list."""
        spec, plan = self.program.spec, self.program.analysis.plan
        last = rank == dist.get_world_size(self.group) - 1
        summaries = []
        for group, combine, start in zip(plan.groups, self.combines, starts):
            if rank == 0:           # it knows the state before its shard: a constant map
                summaries += shard_summary(group, combine, roles, spec, self._torch_cores(), start)
            elif last and not output_final_state:   # its summary would serve the final state only
                summaries += unused_summary(group, start)
            else:
                summaries += shard_summary(group, combine, roles, spec, self._torch_cores())
        return summaries

    def _torch_cores(self):
        """The torch backend's module: its chunkwise functions compute the matrix kinds'
        summaries (whatever backend runs the shard)."""
        if self._cores is None:
            from .kernel import build_kernel
            self._cores = build_kernel(self.program, "torch").module
        return self._cores

    def __repr__(self) -> str:
        return f"<seqc.Kernel {self.program.name} backend={self.backend} context_parallel>"


# ---- 2, 3. the exchange -----------------------------------------------------------------------

class _Packing:
    """Tensors of fixed shapes <-> one flat vector (one collective carries them all)."""

    def __init__(self, tensors):
        self.shapes = [tuple(t.shape) for t in tensors]
        self.sizes = [math.prod(s) for s in self.shapes]

    def pack(self, tensors) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def unpack(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [part.view(shape) for part, shape in zip(flat.split(self.sizes), self.shapes)]


class _Fold:
    """Step 3: from the gathered summaries [R, n] and the initial states, this rank's incoming
    states and the final states, by the groups' combines in rank order."""

    def __init__(self, combines, summaries, starts, rank: int):
        self.combines = combines
        self.summaries = _Packing(summaries)
        self.states = _Packing(starts)
        self.rank = rank

    def __call__(self, gathered: torch.Tensor, initial: torch.Tensor):
        ranks = [self.summaries.unpack(row) for row in gathered]
        incoming, final = [], []
        for g, (combine, start) in enumerate(zip(self.combines, self.states.unpack(initial))):
            pieces = [(summary[2 * g], summary[2 * g + 1]) for summary in ranks]
            states = fold_ranks(combine, start, pieces)
            incoming.append(states[self.rank])
            final.append(states[-1])
        return self.states.pack(incoming), self.states.pack(final)


def fold_ranks(combine, start, summaries) -> list:
    """The state entering each run and the last: [start, s_0(start), s_1(s_0(start)), ...],
    applying a summary to a state as the combine of (identity's first piece, state) with it."""
    element = (combine.identity(summaries[0])[0], start)
    states = [start]
    for summary in summaries:
        element = combine.apply(element, summary)
        states.append(element[1])
    return states


class _Exchange(torch.autograd.Function):
    """(local summary, initial states) -> (incoming states, final states), flat vectors."""

    @staticmethod
    def forward(ctx, fold, group, local, initial, anchor):
        gathered = _all_gather(local, group)
        ctx.fold, ctx.group = fold, group
        ctx.save_for_backward(gathered, initial)
        return fold(gathered, initial)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_incoming, d_final):
        gathered, initial = ctx.saved_tensors
        with torch.enable_grad():
            gathered = gathered.detach().requires_grad_(True)
            initial = initial.detach().requires_grad_(True)
            incoming, final = ctx.fold(gathered, initial)
            d_gathered, d_initial = torch.autograd.grad(
                (incoming, final), (gathered, initial), (d_incoming, d_final), allow_unused=True)
        if d_gathered is None:
            d_gathered = torch.zeros_like(gathered)
        d_gathered = _all_reduce(d_gathered, ctx.group)     # every rank's loss, summed
        return None, None, d_gathered[ctx.fold.rank], d_initial, None


def _all_gather(tensor: torch.Tensor, group) -> torch.Tensor:
    """[R, n]: every rank's `tensor` [n], in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.stack(parts)


def _all_reduce(tensor: torch.Tensor, group) -> torch.Tensor:
    tensor = tensor.contiguous().clone()
    dist.all_reduce(tensor, group=group)
    return tensor
