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
from dataclasses import dataclass, field

import torch

from .analysis.jacobian import Structure, jacobian_structure
from .kernel import Kernel
from .newton_gradient import NewtonStates
from .newton_linearise import Jacobians, Packing, damp, diagonal_of, flushed_denormals
from .newton_scan import apply, diagonal_scan, diagonal_scan_, linear_scan

DEFAULT_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
DEFAULT_MAX_ITER = 50
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


# ---- the runner behind the kernel ----------------------------------------------------------------

class NewtonRunner:
    """The `module` of a Newton kernel: run(inputs, params, dims, initial_state,
    output_final_state) like an emitted module's, solving slab after slab of time; its gradients
    are its own (`NewtonStates`), also on the triton backend."""

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
        attached to one (`NewtonStates`) when a gradient is wanted; the outputs from them by
        the statements the outputs need (newton_step.md, `outputs`)."""
        names = (tuple(inputs), tuple(params))
        with torch.no_grad(), flushed_denormals():
            held = solver.solve(h0, inputs, params, dims, stats)
        solved = held[:, 1:]
        tensors = (h0, *inputs.values(), *params.values())
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            states = NewtonStates.apply(solver, names, dims, solved, h0, *tensors[1:])
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
