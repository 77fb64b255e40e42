"""A parallel mode trains on its own training core (`MODE_CORES`), else on its single-kernel
form's adjoint core (seqc/autograd.py, `training_cores`): the checks the parallel modes' tests
share (which core trains, which mode a call runs, which dtypes a kernel is launched with)."""
import contextlib

import torch

import seqc
from oracles import random_inputs, random_state
from seqc.autograd import training_cores


def check_trains_on_core(name: str, core_name: str, mode: str, monkeypatch,
                         shared_core_unused: bool = False) -> None:
    """Training `name` with `mode=mode` runs the module's MODE_CORES[mode][core_name], else its
    CORES[core_name] (not the torch recomputation), and the gradients of every input and the
    initial state equal the reference's. `shared_core_unused`: CORES[core_name] is replaced by
    None as well (the call must not reach the single kernel's core)."""
    program = seqc.load(name)
    module = program.kernel("triton").module
    cores = module.MODE_CORES.get(mode, module.CORES)     # the mode's own, else the shared ones
    core, used = cores[core_name], []

    def counted(*args, **kwargs):
        used.append(1)
        return core(*args, **kwargs)
    monkeypatch.setitem(cores, core_name, counted)
    if shared_core_unused:
        monkeypatch.setitem(module.CORES, core_name, None)
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


def set_log_decay(g, steps, value) -> None:
    """The log decay `g` ([B, T, H] or key-wise [B, T, H, K]) of batch 0, head 1 at `steps` set
    to `value` (a key-wise one on key lane 2 only)."""
    for t in steps:
        g[(0, t, 1, 2) if g.dim() == 4 else (0, t, 1)] = value


def check_mode(name: str, mode: str, T: int, dims: dict, dtype=torch.float32, gates=(), seed=0,
               tol=None, cast_params=False, **options) -> None:
    """The Triton call of `name` in `mode` (kernel `options`) against the reference: one batch,
    T steps, two heads, an initial state; the log decay set by `gates` ((steps, value) pairs:
    `set_log_decay`); inputs (and params, `cast_params`) in `dtype`, the reference on the same values
    in fp32 (fp64 for fp64). Outputs in `dtype`, finite, and with the final state within `tol`
    (default: 1e-4 fp32, 1e-10 fp64, 3e-2 16-bit) of the reference's, atol scaled by the
    magnitude."""
    program = seqc.load(name)
    x, p = random_inputs(name, 1, T, 2, dims=dims, seed=seed)
    for steps, value in gates:
        if steps:                           # a spec with no gate takes none (deltanet)
            set_log_decay(x["g"], steps, value)
    s = random_state(name, 1, 2, dims=dims, seed=seed)
    x = {n: t.to(dtype) for n, t in x.items()}
    if cast_params:
        p = {n: t.to(dtype) for n, t in p.items()}
    ref = torch.float64 if dtype == torch.float64 else torch.float32
    want = program.kernel("reference")(**{n: t.to(ref) for n, t in x.items()},
                                       **{n: t.to(ref) for n, t in p.items()},
                                       initial_state={n: t.to(ref) for n, t in s.items()},
                                       output_final_state=True)
    got = program.kernel("triton", mode=mode, **options)(
        **x, **p, initial_state=s, output_final_state=True)
    tol = tol or {torch.float32: 1e-4, torch.float64: 1e-10}.get(dtype, 3e-2)
    for o in want.keys():
        scale = max(1.0, want[o].abs().max().item())
        assert got[o].dtype == dtype        # outputs in the input dtype
        assert torch.isfinite(got[o]).all()
        torch.testing.assert_close(got[o].to(ref), want[o], rtol=tol, atol=tol * scale,
                                   msg=lambda m: f"{name} T={T} {dtype} output {o}: {m}")
    for n, state in want.final_state.items():
        scale = max(1.0, state.abs().max().item())
        torch.testing.assert_close(got.final_state[n].to(ref), state, rtol=tol,
                                   atol=tol * scale, msg=lambda m: f"{name} final {n}: {m}")


def modes_run(name: str, batch_heads=((1, 1),), **consts) -> list:
    """The modes `name`'s Triton `run` launches at mode=None (its RUNNERS stubbed), a call for
    each (B, H) of `batch_heads`: 3 steps, K = V = 4, the spec's `consts` (scale=...)."""
    module = seqc.load(name).kernel("triton").module
    ran = []
    saved = dict(module.RUNNERS)
    module.RUNNERS.update({m: (lambda *a, m=m: ran.append(m)) for m in saved})
    try:
        for B, H in batch_heads:
            x, p = random_inputs(name, B, 3, H, dims={"K": 4, "V": 4})
            module.run(x, p, {"B": B, "T": 3, "H": H, "K": 4, "V": 4, **consts})
    finally:
        module.RUNNERS.update(saved)
    return ran


def assert_training_follows_the_mode(name: str, core_name: str, single_mode: str,
                                     parallel_mode: str) -> None:
    """`name` trains on the parallel core (`{parallel_mode}_core`) at mode=None at any B x H
    (even where the forward alone picks `single_mode`) and when forced, with the call's 16-bit
    dtype for its dots; so does a forced `single_mode`; a forced `fused_recurrent` on no core."""
    module = seqc.load(name).kernel("triton").module
    parallel_core = getattr(module, f"{parallel_mode}_core")
    small = dict(B=1, T=64, H=2, K=64, V=64)
    large = dict(B=8, T=64, H=64, K=64, V=64)

    def core(options, sizes, dtype=None):
        return training_cores(module, options, sizes, dtype)[core_name]

    chosen = core({}, small, torch.bfloat16)
    assert chosen.func is parallel_core
    assert chosen.keywords == {"dot_dtype": torch.bfloat16, "precision": None}
    assert module._choose_mode(large, 128) == single_mode       # the forward alone: one kernel
    assert core({}, large).func is parallel_core
    forced = core({"mode": parallel_mode, "precision": "ieee"}, large, torch.float32)
    assert forced.func is parallel_core and forced.keywords["precision"] == "ieee"
    assert core({"mode": single_mode}, small).func is parallel_core
    assert training_cores(module, {"mode": "fused_recurrent"}, small) == {}


@contextlib.contextmanager
def recorded_launches(module, kernel: str, record):
    """Inside the block, every launch of the Triton module's `kernel` appends `record(args)` (of
    the launch's positional arguments) to the list the block gets, then runs."""
    launch, seen = getattr(module, kernel), []

    class Spy:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                seen.append(record(args))
                return launch[grid](*args, **kwargs)
            return run

    setattr(module, kernel, Spy())
    try:
        yield seen
    finally:
        setattr(module, kernel, launch)
