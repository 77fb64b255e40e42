"""A double backward (`create_graph=True`, then a gradient of the gradient) through a Triton
recurrence core or the Newton solver raises, as docs/backends.md ("Gradients") says: their
backward is written by hand (kernels, or an implicit-function scan) and is not itself
differentiable, so a second derivative would otherwise come back silently missing the core's
terms (each core's backward returned tensors with no history, while the rest of the graph, the
prelude's and the loss's, carried on). The second pass is `.backward()`, as a gradient penalty
does; `torch.autograd.grad(..., inputs)` prunes the error node and returns the gradient without
the core's terms, which torch does for every once-differentiable function.
"""
import pytest
import torch

import seqc
from oracles import random_inputs

CORES = {"chunk_core": "mlstm", "chunk_parallel_core": "gla", "scan_core": "hgrn", "chunk_delta_core": "gated_deltanet",
         "chunk_delta_parallel_core": "kda", "chunk_dplr_core": "rwkv7", "chunk_dplr_parallel_core": "rwkv7",
         "semiring_scan_core": "logsumexp"}


def second_derivative(kernel, name):
    x, p = random_inputs(name, 1, 9, 1, seed=5)
    leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
    out = kernel(**leaves, **p)
    loss = sum(o.square().sum() for o in list(out)[:-1])     # its incoming gradient has a graph
    first = torch.autograd.grad(loss, list(leaves.values()),
                                create_graph=True, allow_unused=True)
    total = sum(g.square().sum() for g in first if g is not None)
    total.backward()        # a gradient penalty's second pass


@pytest.mark.parametrize("core", sorted(CORES))
def test_double_backward_through_a_triton_core_raises(core, monkeypatch):
    name = CORES[core]
    # mode=None, a forced single-kernel mode too, trains on the parallel form's core: the
    # single-kernel cores as in a module with no parallel form
    kernel = seqc.load(name).kernel("triton", chunk_size=16)
    if core in ("chunk_core", "chunk_delta_core", "chunk_dplr_core"):
        monkeypatch.setattr(kernel.module, "MODE_CORES", {})
    own = {c.__name__ for cores in kernel.module.MODE_CORES.values() for c in cores.values()}
    assert core in set(kernel.module.CORES) | own
    with pytest.raises(RuntimeError, match="once_differentiable"):
        second_derivative(kernel, name)


def test_double_backward_through_newton_raises():
    kernel = seqc.load("gru").kernel("torch", solver="newton")
    with pytest.raises(RuntimeError, match="once_differentiable"):
        second_derivative(kernel, "gru")
