"""A parallel mode trains on its own training core (`MODE_CORES`), else on its single-kernel
form's adjoint core (seqc/autograd.py, `training_cores`): the check the three-kernel modes'
tests run."""
import torch

import seqc
from oracles import random_inputs, random_state


def check_trains_on_core(name: str, core_name: str, mode: str, monkeypatch) -> None:
    """Training `name` with `mode=mode` runs the module's MODE_CORES[mode][core_name], else its
    CORES[core_name] (not the torch recomputation), and the gradients of every input and the initial state equal the
    reference's."""
    program = seqc.load(name)
    module = program.kernel("triton").module
    cores = module.MODE_CORES.get(mode, module.CORES)     # the mode's own, else the shared ones
    core, used = cores[core_name], []

    def counted(*args, **kwargs):
        used.append(1)
        return core(*args, **kwargs)
    monkeypatch.setitem(cores, core_name, counted)
    dims = {"K": 5, "V": 6}
    x, p = random_inputs(name, 1, 21, 2, dims=dims, seed=3)
    s = random_state(name, 1, 2, dims=dims, seed=3)

    def grads(backend, **options):
        leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
        s0 = {n: t.clone().requires_grad_() for n, t in s.items()}
        out = program.kernel(backend, **options)(**leaves, **p, initial_state=s0,
                                                 output_final_state=True)
        loss = (out.o * torch.linspace(-1, 1, out.o.shape[-1])).sum() \
            + out.final_state["S"].square().sum()
        return torch.autograd.grad(loss, [*leaves.values(), *s0.values()])

    got = grads("triton", mode=mode, chunk_size=16, precision="ieee")
    assert used, f"the training call did not run {core_name}"
    want = grads("reference")
    for name_, g, w in zip([*x, *s], got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4, msg=lambda m: f"d{name_}: {m}")
