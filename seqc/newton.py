"""`solver="newton"`: a recurrence solved over all steps at once by Newton's method (DEER).

    fn = seqc.load("gru").kernel("torch", solver="newton", tol=None, max_iter=50)
    out = fn(xr=xr, xz=xz, xn=xn, Rr=Rr, Rz=Rz, Rn=Rn, bn=bn)
    fn.stats        # iterations per slab, converged or not, steps finished by the step loop

The states of every step, h_1 .. h_T, solve h_t = f(h_{t-1}, x_t). Given a guess of all of them,
linearise f at the guessed h_{t-1}: h_t = J_t h_{t-1} + (f(h_{t-1}) - J_t h_{t-1}), a linear
recurrence in the new guess, solved by a parallel scan. docs/newton.md states the math, the
convergence rule (the update below `tol`, relative), the fallback (the step loop from the first
step that has not converged: never a silently wrong answer), the damping and the gradients (the
implicit function theorem: one reverse linear scan, not backpropagation through the iterations).

The step f is emitted from the spec (backends/torch/newton_step.py.j2: the reference's
statements over all positions at once); its Jacobian in the states comes from forward-mode
derivatives (`torch.func.jvp`), one per entry of a Jacobian block, its structure (diagonal blocks
or dense) from the IR (seqc/analysis/jacobian.py).
"""
from __future__ import annotations

import functools
import math
import numbers
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .analysis.jacobian import Structure, jacobian_structure
from .kernel import Kernel
from .newton_scan import apply, diagonal_scan, diagonal_scan_, linear_scan

DEFAULT_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
DEFAULT_MAX_ITER = 50
SMALL_BLOCK = 64     # Jacobian blocks up to this size: one reverse-mode pass a row
JACOBIANS = ("exact", "quasi")


@dataclass
class NewtonStats:
    """What the last call did: per slab of time, the iterations taken, whether Newton converged,
    and how many of its steps the step loop finished (0 when it converged)."""
    iterations: list[int] = field(default_factory=list)
    converged: list[bool] = field(default_factory=list)
    loop_steps: list[int] = field(default_factory=list)
    damped: list[bool] = field(default_factory=list)

    @property
    def max_iterations(self) -> int:
        return max(self.iterations, default=0)

    def __str__(self) -> str:
        loop = sum(self.loop_steps)
        return (f"{len(self.iterations)} slab(s), at most {self.max_iterations} iterations"
                f"{'' if all(self.converged) else f', {loop} step(s) by the step loop'}")


# ---- packing: the states of a step as one tensor [..., E, S] ----------------------------------

class Packing:
    """The states as blocks: [*lead, E, S], E entries of S-vectors. A diagonal Jacobian (every
    state of the same shape, entries not mixed) has one S x S block per entry, S the number of
    states; a dense one is one block (E = 1) of all the states' values (S = their total size)."""

    def __init__(self, spec, structure: Structure, sizes: dict):
        self.shapes = [tuple(sizes[d] for d in spec.tensor(s).dims) for s in structure.states]
        self.numels = [math.prod(shape) for shape in self.shapes]
        self.diagonal = structure.kind == "diagonal"
        self.entries = self.numels[0] if self.diagonal else 1
        self.block = len(self.shapes) if self.diagonal else sum(self.numels)

    def pack(self, states) -> torch.Tensor:
        lead = states[0].shape[:states[0].dim() - len(self.shapes[0])]
        flat = [s.reshape(*lead, n) for s, n in zip(states, self.numels)]
        if self.diagonal:
            return flat[0].unsqueeze(-1) if len(flat) == 1 else torch.stack(flat, -1)
        return torch.cat(flat, -1)[..., None, :]

    def unpack(self, packed: torch.Tensor) -> tuple:
        lead = packed.shape[:-2]
        if self.diagonal:
            return tuple(packed[..., i].reshape(*lead, *shape)
                         for i, shape in enumerate(self.shapes))
        pieces = packed[..., 0, :].split(self.numels, -1)
        return tuple(p.reshape(*lead, *shape) for p, shape in zip(pieces, self.shapes))


@contextmanager
def flushed_denormals():
    """Denormal floats flushed to zero on the CPU while the scan runs: cumulated products of
    contracting Jacobians sink below 2^-126 (2^-1022), where every multiply is 30-100x slower
    (a gru at D = 8 spent 97% of its time there); a flushed value changes a term by less than
    2^-126 times its other factors. The caller's setting is restored."""
    before = bool(torch.tensor(1e-45) * 1.0 == 0.0)      # already flushing?
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


# ---- the Jacobian of the step in the states ------------------------------------------------------

def linearise(step, prev: torch.Tensor):
    """(f(prev), J): J the Jacobian blocks of f at prev, [..., E, S, S] (J[..., i, j] = d new_i /
    d prev_j), or [..., E, 1] (elementwise) when S = 1. Small blocks: one reverse-mode pass a
    block row (the entries do not mix, so the row sums of the whole Jacobian are the block rows;
    torch's forward-mode derivatives of broadcasting products run through slow Python
    decompositions); large blocks: one forward-mode derivative a column, `torch.func.vmap`ped."""
    S = prev.shape[-1]
    if S > SMALL_BLOCK:
        basis = torch.eye(S, dtype=prev.dtype, device=prev.device)
        tangents = basis.view(S, *([1] * (prev.dim() - 1)), S).expand(S, *prev.shape)
        new, columns = torch.func.vmap(lambda u: torch.func.jvp(step, (prev,), (u,)),
                                       out_dims=(None, 0))(tangents)
        return new, columns.movedim(0, -1)
    with torch.enable_grad():
        prev = prev.detach().requires_grad_(True)
        new = step(prev)
        rows = [torch.autograd.grad(new, prev, _unit(new, i), retain_graph=i < S - 1,
                                    allow_unused=True)[0] for i in range(S)]
    rows = [torch.zeros_like(prev) if row is None else row for row in rows]
    return new.detach(), rows[0] if S == 1 else torch.stack(rows, -2)


def _unit(x: torch.Tensor, i: int) -> torch.Tensor:
    unit = torch.zeros_like(x)
    unit[..., i] = 1.0
    return unit


class Jacobians:
    """The step f and its Jacobian in the states at packed states `prev` [B, L, H, E, S]:
    (f(prev) packed, J), J [..., E, S] (elementwise) when S = 1, else [..., E, S, S] (J[..., i, j]
    = d new_i / d prev_j). From the emitted symbolic code (newton_step.md: `linearise` for a
    diagonal Jacobian, one elementwise column a state; `jvp` along the N basis directions at once
    for a dense one, the directions a leading dim), no autograd graph; by autograd (`linearise`
    above) when an operation has no tangent rule."""

    def __init__(self, module, packing: Packing):
        self.module = module
        self.packing = packing

    def __call__(self, prev, inputs, params, dims, exp_forms: bool = False):
        """`exp_forms`: tanh and sigmoid through exp (compile=True)."""
        unpacked = self.packing.unpack(prev)
        ops = self.module.EXP_FORMS if exp_forms else torch
        if self.packing.diagonal:
            emitted = self.module.linearise(unpacked, inputs, params, dims, ops)
            if emitted is not None:
                new, columns = emitted
                if len(columns) == 1:
                    return self.packing.pack(new), self.packing.pack(columns[0])
                return self.packing.pack(new), torch.stack(
                    [self.packing.pack(column) for column in columns], -1)
        if self.module.HAS_JVP and not self.packing.diagonal:
            return self._dense(prev, unpacked, inputs, params, dims, ops)
        return linearise(self._step(inputs, params, dims), prev)

    def _dense(self, prev, unpacked, inputs, params, dims, ops):
        N = prev.shape[-1]
        basis = torch.eye(N, dtype=prev.dtype, device=prev.device)
        directions = basis.view(N, *([1] * (prev.dim() - 1)), N)
        new, tangents = self.module.jvp(unpacked, self.packing.unpack(directions), inputs,
                                        params, dims, ops)
        lead = (N, *prev.shape[:-2])
        tangents = [t.expand(*lead, *t.shape[t.dim() - len(shape):])
                    for t, shape in zip(tangents, self.packing.shapes)]
        return self.packing.pack(new), self.packing.pack(tangents).movedim(0, -1)

    def _step(self, inputs, params, dims):
        def f(prev):
            new, _ = self.module.step(self.packing.unpack(prev), inputs, params, dims)
            return self.packing.pack(new)
        return f


def diagonal_of(J: torch.Tensor, S: int) -> torch.Tensor:
    """The Jacobian's diagonal (quasi-Newton, ELK's quasi-DEER), elementwise [..., E, S]."""
    return J if S == 1 else J.diagonal(dim1=-2, dim2=-1)


def damp(a: torch.Tensor, elementwise: bool) -> torch.Tensor:
    """The coefficients scaled so that each block's infinity norm is at most 1: the linear
    scan then cannot blow up; the fixed point is unchanged (docs/newton.md, damping)."""
    if elementwise:
        return a.clamp(-1.0, 1.0)
    norm = a.abs().sum(-1, keepdim=True).amax(-2, keepdim=True)
    return a / norm.clamp(min=1.0)


# ---- the solver ----------------------------------------------------------------------------------

@dataclass
class Options:
    tol: float | None = None
    max_iter: int = DEFAULT_MAX_ITER
    jacobian: str = "exact"
    damping: bool = True
    slab: int | None = None
    compile: bool = False

    def tolerance(self, dtype) -> float:
        return self.tol if self.tol is not None else DEFAULT_TOL[dtype]


class Solver:
    """Newton over one slab of time: `solve(h0, inputs, params, dims)` -> the packed states of
    every step [B, T, H, E, S] (converged, or finished by the step loop), and its stats."""

    def __init__(self, step_module, packing: Packing, options: Options, kernels=None):
        self.step_module = step_module
        self.packing = packing
        self.options = options
        self.jacobians = Jacobians(step_module, packing)
        self.linear_solve = None                # the torch scans; Triton: its scan cores
        if kernels is not None:
            from .newton_triton import TritonJacobians, TritonLinearSolve
            self.jacobians = TritonJacobians(step_module, packing, kernels)
            self.linear_solve = TritonLinearSolve(kernels)
        self.compiled = None
        if options.compile:
            self.compiled = torch.compile(functools.partial(self.update, in_place=False),
                                          dynamic=False)

    def step(self, inputs: dict, params: dict, dims: dict):
        """f on packed states: [B, T, H, E, S] before the steps -> after them."""
        return self.jacobians._step(inputs, params, dims)

    def solve(self, h0, inputs: dict, params: dict, dims: dict, stats: NewtonStats):
        """The states of every step, in one buffer [B, T + 1, ...] whose position t holds the
        state before step t (position 0: h0), so that the states before the steps and the guess
        of the states after them are views, never copies. Eager, an iteration solves from the
        first unsettled step on; compiled, the whole slab (fixed shapes: no recompilation), and
        keeps the settled steps as they were."""
        T = dims["T"]
        tol = self.options.tolerance(h0.dtype)
        held = h0.new_empty((h0.shape[0], T + 1, *h0.shape[1:]))
        held.copy_(h0[:, None].expand_as(held))
        done, iterations, damped, previous_update = 0, 0, False, math.inf
        if held[:, 1:].numel() == 0:           # no batch, heads or entries: nothing to solve
            done = T
        while done < T and iterations < self.options.max_iter:
            iterations += 1
            origin = 0 if self.compiled is not None else done
            part = ({k: x[:, origin:] for k, x in inputs.items()}, params,
                    {**dims, "T": T - origin})
            prev, guess = held[:, origin:T], held[:, origin + 1:]
            new, change, peak = self._iterate(prev, guess, part, damped)
            skip = done - origin
            update = float(peak[skip:].max())
            if self.options.damping and not damped and (not math.isfinite(update) or
                                                         update > 2 * previous_update):
                damped = True                  # diverging: retry with damped coefficients
                new, change, peak = self._iterate(prev, guess, part, damped)
                update = float(peak[skip:].max())
            previous_update = update
            new, guess = new[:, skip:], guess[:, skip:]
            first = self._first_unsettled(change[:, skip:], peak[skip:], new, tol)
            if math.isfinite(update):
                guess.copy_(new)
            else:                              # keep the last finite guess where new is not
                guess.copy_(torch.where(torch.isfinite(new), new, guess))
            done += first
        converged = done >= T
        if not converged:
            self._loop(held[:, 1:], h0, done, inputs, params, dims)
        stats.iterations.append(iterations)
        stats.converged.append(converged)
        stats.loop_steps.append(T - done)
        stats.damped.append(damped)
        return held

    def _iterate(self, prev, guess, part, damped: bool):
        if self.compiled is not None:
            return self.compiled(prev, guess, *part, damped)
        return self.update(prev, guess, *part, damped)

    def update(self, prev, guess, inputs, params, dims, damped: bool, in_place: bool = True):
        """One Newton update of the steps from prev[:, 0] on: the linear scan h_t = J_t h_{t-1} +
        (f(prev_t) - J_t prev_t) from prev[:, 0]; also |new - guess| and its largest value at
        each step (over batch, heads and entries)."""
        new_f, J = self.jacobians(prev, inputs, params, dims, exp_forms=not in_place)
        S = prev.shape[-1]
        a = diagonal_of(J, S) if self.options.jacobian == "quasi" else J
        elementwise = a.dim() == prev.dim()
        if damped:
            a = damp(a, elementwise)
        if self.linear_solve is not None:
            new = self.linear_solve(a, new_f - apply(a, prev), prev[:, 0])
        elif not elementwise:
            new = linear_scan(a, new_f - apply(a, prev), prev[:, 0])
        elif in_place:
            b = torch.addcmul(new_f, a, prev, value=-1.0)
            new = diagonal_scan_(_owned(a, prev, *inputs.values(), *params.values()), b,
                                 prev[:, 0])
        else:
            new = diagonal_scan(a, new_f - a * prev, prev[:, 0])
        change = torch.sub(new, guess).abs_() if in_place else (new - guess).abs()
        return new, change, change.transpose(0, 1).flatten(1).amax(1)

    @staticmethod
    def _first_unsettled(change, peak, new, tol: float) -> int:
        """The first step whose update is above tol, relative (|dh| > tol (1 + |h|)), or not
        finite (NaN compares false), for any batch element, head or entry; the number of steps
        when there is none. The absolute test (the step's largest |dh| <= tol) settles most
        steps; the relative one is evaluated from the first step it does not settle."""
        L = change.shape[1]
        absolute = peak <= tol
        if bool(absolute.all()):
            return L
        k = int((~absolute).nonzero()[0])
        if not bool((change[:, k] <= tol * (1.0 + new[:, k].abs())).all()):
            return k                           # the usual case before convergence
        relative = (change[:, k:] <= tol * (1.0 + new[:, k:].abs()))
        settled = relative.transpose(0, 1).flatten(1).all(1)
        return L if bool(settled.all()) else k + int((~settled).nonzero()[0])

    def _loop(self, guess, h0, done: int, inputs, params, dims):
        """The step loop from step `done` (Newton did not settle it), in place in guess."""
        state = guess[:, done - 1] if done else h0
        rest = {k: x[:, done:] for k, x in inputs.items()}
        history = self.step_module.steps(self.packing.unpack(state), rest, params,
                                         {**dims, "T": dims["T"] - done})
        guess[:, done:] = self.packing.pack(history)


def _owned(a: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
    """a, or a contiguous copy of it when it is not contiguous or shares memory with one of
    `others` (the emitted Jacobian of `h = x * h` is the input x itself): the scan overwrites
    it."""
    storage = a.untyped_storage().data_ptr()
    if a.is_contiguous() and all(o.untyped_storage().data_ptr() != storage for o in others):
        return a
    return a.clone(memory_format=torch.contiguous_format)


class _NewtonStates(torch.autograd.Function):
    """The solved states of every step (packed), a function of h0 and the inputs' and params'
    tensors; backward by the implicit function theorem (docs/newton.md, gradients). The solve
    itself runs before, outside: forward-mode derivatives are off inside a Function's forward."""

    @staticmethod
    def forward(ctx, solver, names, dims, states, h0, *tensors):
        ctx.solver, ctx.names, ctx.dims = solver, names, dims
        ctx.save_for_backward(h0, states, *tensors)
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_states):
        h0, states, *tensors = ctx.saved_tensors
        solver, names, dims = ctx.solver, ctx.names, ctx.dims
        prev = torch.cat([h0[:, None], states[:, :-1]], 1)
        with torch.enable_grad():
            prev = prev.detach().requires_grad_(True)
            leaves = [t.detach().requires_grad_(t.requires_grad) for t in tensors]
            inputs, params = _split(names, leaves)
            f = solver.step(inputs, params, dims)
            with torch.no_grad():
                _, J = solver.jacobians(prev.detach(), inputs, params, dims)
            with flushed_denormals():
                adjoint = _reverse_scan(J, grad_states)
            wanted = [prev] + [t for t in leaves if t.requires_grad]
            grads = iter(torch.autograd.grad(f(prev), wanted, adjoint, allow_unused=True))
        grad_prev = next(grads)
        grad_tensors = [next(grads) if t.requires_grad else None for t in leaves]
        grad_h0 = None if grad_prev is None else grad_prev[:, 0]
        return (None, None, None, None, grad_h0, *grad_tensors)


def _reverse_scan(J: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """lambda_t = grad_t + J_{t+1}^T lambda_{t+1}, lambda_T = grad_T: the adjoint of the states,
    a linear scan run backwards in time."""
    Jt = J if J.dim() == grad.dim() else J.transpose(-1, -2)
    following = torch.cat([Jt[:, 1:], torch.zeros_like(Jt[:, :1])], 1)
    adjoint = linear_scan(following.flip(1), grad.flip(1), torch.zeros_like(grad[:, 0]))
    return adjoint.flip(1)


def _split(names, tensors):
    inputs_names, params_names = names
    n = len(inputs_names)
    return dict(zip(inputs_names, tensors[:n])), dict(zip(params_names, tensors[n:]))


# ---- the runner behind the kernel ----------------------------------------------------------------

class NewtonRunner:
    """The `module` of a Newton kernel: run(inputs, params, dims, initial_state,
    output_final_state) like an emitted module's, solving slab after slab of time; its gradients
    are its own (`_NewtonStates`), also on the triton backend."""

    differentiable = True

    def __init__(self, program, step_module, options: Options, kernels=None):
        self.spec = program.spec
        self.structure = jacobian_structure(self.spec)
        self.step_module = step_module
        self.kernels = kernels                     # the Triton module, or None (torch)
        self.options = options
        self.last_stats: NewtonStats | None = None
        self.solvers: dict[tuple, Solver] = {}     # per state shape: a compiled one compiles once

    def run(self, inputs, params, dims, initial_state=None, output_final_state=False):
        first = next(iter(inputs.values()))
        compute = torch.float64 if first.dtype == torch.float64 else torch.float32
        inputs = {k: x.to(compute) for k, x in inputs.items()}
        params = {k: p.to(compute) for k, p in params.items()}
        packing = Packing(self.spec, self.structure, dims)
        key = tuple(packing.shapes)
        if key not in self.solvers:
            self.solvers[key] = Solver(self.step_module, packing, self.options, self.kernels)
        solver = self.solvers[key]
        state = packing.pack(self._initial(initial_state, dims, compute, first.device))
        stats = NewtonStats()
        T = dims["T"]
        span = self._slab(dims, packing)
        pieces = []
        for t0 in range(0, T, span):
            part = {k: x[:, t0:t0 + span] for k, x in inputs.items()}
            slab_dims = {**dims, "T": min(span, T - t0)}
            outputs, state = self._slab_run(solver, state, part, params, slab_dims, stats)
            pieces.append(outputs)
        self.last_stats = stats
        outputs = {name: torch.cat([p[name] for p in pieces], 1) for name in pieces[0]}
        final = dict(zip(self.structure.states, packing.unpack(state)))
        return outputs, final if output_final_state else None

    def _slab_run(self, solver, h0, inputs, params, dims, stats):
        """The outputs and final state of one slab: the states solved without a graph, then
        attached to one (`_NewtonStates`) when a gradient is wanted; the outputs from them by
        the statements the outputs need (newton_step.md, `outputs`)."""
        names = (tuple(inputs), tuple(params))
        with torch.no_grad(), flushed_denormals():
            held = solver.solve(h0, inputs, params, dims, stats)
        solved = held[:, 1:]
        tensors = (h0, *inputs.values(), *params.values())
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            states = _NewtonStates.apply(solver, names, dims, solved, h0, *tensors[1:])
            prev = torch.cat([h0[:, None], states[:, :-1]], 1)
        else:
            states, prev = solved, held[:, :-1]
        unpack = solver.packing.unpack
        outputs = self.step_module.outputs(unpack(prev), unpack(states), inputs, params, dims)
        lead = prev.shape[:3]
        outputs = {k: v.expand(*lead, *v.shape[3:]) for k, v in outputs.items()}
        return outputs, states[:, -1]

    def _initial(self, initial_state, dims, compute, device):
        B, H = dims["B"], dims["H"]
        states = []
        for tensor in self.spec.states:
            shape = (B, H, *(dims[d] for d in tensor.dims))
            if initial_state is None:
                init = float(tensor.init if tensor.init is not None else 0.0)
                states.append(torch.full(shape, init, dtype=compute, device=device))
            else:
                states.append(initial_state[tensor.name].to(compute))
        return states

    def _slab(self, dims, packing: Packing) -> int:
        """Steps a Newton solve covers: the whole sequence up to 1024 steps, fewer when the
        Jacobian blocks of a slab would pass 2^22 values."""
        if self.options.slab is not None:
            return self.options.slab
        per_step = dims["B"] * dims["H"] * packing.entries * packing.block ** 2
        return max(16, min(1024, (1 << 22) // max(1, per_step)))


def step_source(program) -> str:
    """The emitted batched step of a spec (backends/torch/newton_step.py.j2)."""
    from .backends.reference import _init as init_code, step_statements
    from .backends.torch_render import PRELUDE
    from .emit import header
    from .templates import render
    from .backends.torch.newton_tangent import PRELUDE as TANGENT_PRELUDE, emit
    diagonal = jacobian_structure(program.spec).kind == "diagonal"
    return header(program, "torch") + render(
        "torch", "newton_step.py.j2", spec=program.spec, helpers=PRELUDE,
        tangent_helpers=TANGENT_PRELUDE, statements=step_statements(program.spec),
        emitted=emit(program.spec, diagonal),
        inits={s.name: init_code(s) for s in program.spec.states})


def newton_kernel(program, backend: str, options: dict):
    """The Kernel behind `prog.kernel(backend, solver="newton", ...)`: backend "torch" (or
    "auto"), or "triton" (seqc/newton_triton.py: the step, its Jacobian and the linear solves on
    Triton kernels)."""
    from . import __version__
    from .cache import cache_key, generator_digest, load_module
    if backend not in ("torch", "auto", "triton"):
        raise ValueError(f'solver="newton" runs on the torch or the triton backend, not '
                         f'`{backend}`')
    parsed = _options(options)
    if backend == "triton" and parsed.compile:
        raise ValueError('compile=True compiles the torch solver\'s iteration; the triton '
                         'backend\'s is already kernels')
    key = cache_key(program.source, f"{__version__}+{generator_digest('torch')}", "newton_step")
    module = load_module(key, lambda: step_source(program))
    kernels = None
    if backend == "triton":
        key = cache_key(program.source, f"{__version__}+{generator_digest('triton')}",
                        "newton_triton")
        kernels = load_module(key, lambda: triton_source(program))
    return NewtonKernel(program, "triton" if kernels else "torch",
                        NewtonRunner(program, module, parsed, kernels), {})


def triton_source(program) -> str:
    """The Triton kernels of a spec's Newton solver (backends/triton/newton_step.py.j2)."""
    from .backends.triton.newton import NewtonStepKernel
    from .emit import header
    from .templates import render
    diagonal = jacobian_structure(program.spec).kind == "diagonal"
    builder = NewtonStepKernel(program.spec, diagonal)
    return header(program, "triton") + render(
        "triton", builder.template, spec=program.spec,
        scan_core=render("triton", "scan_core.py.j2"),
        coupled_scan_core=render("triton", "coupled_scan_core.py.j2"), **builder.context())


def _options(options: dict) -> Options:
    known = ("tol", "max_iter", "jacobian", "damping", "slab", "compile")
    unknown = [name for name in options if name not in known]
    if unknown:
        raise ValueError(f"unknown option {', '.join(f'`{n}`' for n in unknown)} for "
                         f'solver="newton"; its options are: {", ".join(known)}')
    parsed = Options(**options)
    if parsed.tol is not None and not (isinstance(parsed.tol, numbers.Real) and parsed.tol > 0):
        raise ValueError(f"tol must be a positive number, not {parsed.tol!r}")
    for name in ("max_iter", "slab"):
        value = getattr(parsed, name)
        if value is not None and (not isinstance(value, numbers.Integral) or
                                  isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
    if parsed.jacobian not in JACOBIANS:
        raise ValueError(f"jacobian must be one of {', '.join(JACOBIANS)}, not "
                         f"{parsed.jacobian!r}")
    return parsed


class NewtonKernel(Kernel):
    """A Kernel whose module is a NewtonRunner; `.stats` is the last call's NewtonStats."""

    @property
    def stats(self) -> NewtonStats | None:
        return self.module.last_stats

    @property
    def structure(self) -> Structure:
        return self.module.structure
