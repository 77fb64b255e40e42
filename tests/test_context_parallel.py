"""Context parallelism (seqc/context_parallel.py) across 2 and 3 processes with gloo on the CPU.

One spawn per world size runs every spec inside (tiny shapes, fp64, uneven shards): each rank
runs its shard forward and backward and compares with the single-process reference backend over
the whole sequence (outputs, final state, gradients of inputs, params and initial state) at
1e-10; the ranks also count the bytes they pass to collectives at two sequence lengths.
"""
from __future__ import annotations

import datetime
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import seqc
from seqc import context_parallel
from seqc.inputs import random_call

SIZES = {"B": 1, "H": 2, "K": 3, "V": 4, "D": 3, "N": 3, "P": 4}
SHARDS = {2: (5, 8), 3: (3, 7, 4)}           # uneven time shards, per world size
PARALLEL = [name for name in seqc.resources.stdlib_names()
            if not seqc.load(name).analysis.plan.sequential]
CASES = ([(name, "torch") for name in PARALLEL]
         + [("examples/04_coupled_states/momentum.seq", "torch"), ("gated_deltanet", "triton")]
         # value-side forms: a state held transposed, a decay along both dims (D [K, V])
         + [("examples/08_value_side/delta_wx.seq", "torch"),
            ("examples/08_value_side/gated_kv.seq", "torch")])
# without the final state (the last rank then sends no summary): one spec of each kind
NO_FINAL_STATE = ("gla", "gated_deltanet", "rwkv7", "hgrn", "maxplus",
                  "examples/04_coupled_states/momentum.seq")
TOLERANCE = 1e-10
K, V, D = SIZES["K"], SIZES["V"], SIZES["D"]
# a summary's numbers per (batch, head), docs/context_parallel.md: (D, U) of a key-wise chunk
# state, (A, U) of a delta rule, the (a, b) of a scan and of a semiring
SUMMARY_SIZE = {"gla": K + K * V, "gated_deltanet": K * K + K * V, "hgrn": 2 * D, "maxplus": 2 * D}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sizes(spec, T):
    names = {d.name for d in spec.dims}
    return {k: v for k, v in SIZES.items() if k in ("B", "H") or k in names} | {"T": T}


def _problem(name, T, seed=5):
    """Inputs, params and an initial state for the whole sequence, and the loss weights."""
    program = seqc.load(name)
    spec = program.spec
    tensors, initial = random_call(spec, _sizes(spec, T), torch.float64, seed=seed,
                                   with_initial_state=True)
    initial = {n: s.double() for n, s in initial.items()}
    generator = torch.Generator().manual_seed(seed + 1)
    reference = program.kernel("reference")(**tensors, initial_state=initial,
                                            output_final_state=True)
    weights = {n: torch.randn(reference[n].shape, generator=generator, dtype=torch.float64)
               for n in reference.keys()}
    final_weights = {n: torch.randn(s.shape, generator=generator, dtype=torch.float64)
                     for n, s in reference.final_state.items()}
    return program, tensors, initial, weights, final_weights


def _loss(out, weights, final_weights, final_share, window=slice(None)):
    loss = sum((out[n] * w[:, window]).sum() for n, w in weights.items())
    return loss + final_share * sum((out.final_state[n] * w).sum()
                                    for n, w in final_weights.items())


def _leaves(tensors, initial):
    tensors = {n: t.clone().requires_grad_(True) for n, t in tensors.items()}
    initial = {n: s.clone().requires_grad_(True) for n, s in initial.items()}
    return tensors, initial


def _error(got, want) -> float:
    return float(((got - want).abs() / (1.0 + want.abs())).max().detach())


def _compare(name, backend, shards, rank, world, final=True):
    """The largest relative error of this rank's shard against the whole-sequence reference;
    `final`: with the final state (its gradient too), else without asking for it."""
    T = sum(shards)
    program, tensors, initial, weights, final_weights = _problem(name, T)
    final_weights = final_weights if final else {}
    inputs = {t.name for t in program.spec.inputs}
    ref_tensors, ref_initial = _leaves(tensors, initial)
    ref = program.kernel("reference")(**ref_tensors, initial_state=ref_initial,
                                      output_final_state=True)
    _loss(ref, weights, final_weights, 1.0).backward()

    start = sum(shards[:rank])
    window = slice(start, start + shards[rank])
    mine = {n: (t[:, window] if n in inputs else t) for n, t in tensors.items()}
    my_tensors, my_initial = _leaves(mine, initial)
    options = {"chunk_size": 4} if backend == "torch" else {}
    fn = program.kernel(backend, context_parallel=True, **options)
    out = fn(**my_tensors, initial_state=my_initial, output_final_state=final)
    _loss(out, weights, final_weights, 1.0 / world, window).backward()

    errors = [_error(out[n], ref[n][:, window]) for n in ref.keys()]
    if final:
        errors += [_error(out.final_state[n], ref.final_state[n]) for n in ref.final_state]
    else:
        assert out.final_state is None
    for n, t in my_tensors.items():
        grad = t.grad if t.grad is not None else torch.zeros_like(t)
        if n not in inputs:             # a param: every rank holds a share of its gradient
            dist.all_reduce(grad)
            errors.append(_error(grad, ref_tensors[n].grad))
        else:
            errors.append(_error(grad, ref_tensors[n].grad[:, window]))
    for n, s in my_initial.items():
        grad = s.grad if s.grad is not None else torch.zeros_like(s)
        dist.all_reduce(grad)
        errors.append(_error(grad, ref_initial[n].grad))
    return max(errors)


def _count_collectives():
    """Wrap torch.distributed's collectives: a list collecting the bytes each call passes."""
    passed = []
    all_gather, all_reduce = dist.all_gather, dist.all_reduce

    def counted_gather(parts, tensor, **kw):
        passed.append(tensor.numel() * tensor.element_size())
        return all_gather(parts, tensor, **kw)

    def counted_reduce(tensor, **kw):
        passed.append(tensor.numel() * tensor.element_size())
        return all_reduce(tensor, **kw)

    dist.all_gather, dist.all_reduce = counted_gather, counted_reduce
    return passed, lambda: setattr(dist, "all_gather", all_gather) or setattr(
        dist, "all_reduce", all_reduce)


def _volume(name, T, rank, world):
    """Bytes this rank passes to collectives in one forward and backward with shards of T.

    Only the inputs ask for gradients, and no final state: the last rank's summary and the
    initial state then need none, yet its backward must meet the others' all_reduce."""
    program, tensors, _, weights, _ = _problem(name, T * world)
    inputs = {t.name for t in program.spec.inputs}
    window = slice(rank * T, (rank + 1) * T)
    mine = {n: (t[:, window].clone().requires_grad_(True) if n in inputs else t)
            for n, t in tensors.items()}
    passed, restore = _count_collectives()
    try:
        out = program.kernel("torch", context_parallel=True)(**mine)
        _loss(out, weights, {}, 0.0, window).backward()
    finally:
        restore()
    return sum(passed)


def _worker(rank, world, port, directory):
    torch.set_num_threads(1)
    # summaries of several chunks and slabs, at these tiny shapes
    context_parallel.SUMMARY_CHUNK, context_parallel.SUMMARY_SLAB = 2, 4
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    results = {"errors": {}, "volume": {}}
    try:
        for name, backend in CASES:
            results["errors"][f"{name}:{backend}"] = _compare(name, backend, SHARDS[world],
                                                              rank, world)
            if backend == "torch" and name in NO_FINAL_STATE:
                results["errors"][f"{name}:{backend}:no final state"] = _compare(
                    name, backend, SHARDS[world], rank, world, final=False)
        for name in SUMMARY_SIZE:
            results["volume"][name] = [_volume(name, T, rank, world) for T in (4, 40)]
    finally:
        with open(os.path.join(directory, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
        dist.destroy_process_group()


@pytest.fixture(scope="module", params=sorted(SHARDS))
def spawned(request, tmp_path_factory):
    world = request.param
    directory = tmp_path_factory.mktemp(f"cp{world}")
    mp.spawn(_worker, args=(world, _free_port(), str(directory)), nprocs=world, join=True)
    ranks = [json.loads((directory / f"rank{r}.json").read_text()) for r in range(world)]
    return world, ranks


def test_every_parallel_spec_matches_the_reference_on_each_rank(spawned):
    world, ranks = spawned
    assert len(ranks[0]["errors"]) == len(CASES) + len(NO_FINAL_STATE)
    bad = {case: [rank["errors"][case] for rank in ranks] for case in ranks[0]["errors"]
           if max(rank["errors"][case] for rank in ranks) > TOLERANCE}
    assert not bad, f"{world} ranks: relative errors above {TOLERANCE}: {bad}"


def test_communication_per_rank_does_not_grow_with_the_sequence(spawned):
    world, ranks = spawned
    for name in SUMMARY_SIZE:
        for rank in ranks:
            # forward: the summary, all-gathered; backward: the R summaries' gradients, all-reduced
            summary_bytes = SUMMARY_SIZE[name] * SIZES["B"] * SIZES["H"] * 8
            assert rank["volume"][name] == [(1 + world) * summary_bytes] * 2, (name, world)


def test_a_sequential_spec_is_refused_with_the_states_named():
    with pytest.raises(ValueError, match=r"`h`, `c` of `lstm` is sequential"):
        seqc.load("lstm").kernel("torch", context_parallel=True)


def test_a_call_without_torch_distributed_says_so():
    program = seqc.load("hgrn")
    tensors, _ = random_call(program.spec, {"B": 1, "T": 4, "H": 1, "D": 2})
    with pytest.raises(ValueError, match="init_process_group"):
        program.kernel("torch", context_parallel=True)(**tensors)


def test_group_without_context_parallel_is_refused():
    with pytest.raises(ValueError, match="context_parallel=True"):
        seqc.load("hgrn").kernel("torch", group=object())
