"""16-bit sweep: every stdlib spec through every Triton mode of its module in bf16 (or fp16),
against the reference backend in fp64 on the same 16-bit-rounded values.

For each (spec, mode): random inputs and params drawn in fp32 and rounded to the call dtype, a
random fp32 initial state, the final state returned; a random incoming gradient (rounded to the
call dtype, the same values for both calls) on every output and final state. Compared:

- the outputs and the final states (forward),
- the gradient of every input, param and initial state,

each as max |got - want| / max |want| over the tensor (relative to the tensor's largest
magnitude). Flagged apart from the error: a NaN / inf where the reference is finite, a gradient
that is None or all zero where the reference's is not, an output (or gradient) whose dtype is not
its input's dtype.

Tolerance (defaults; docs/benchmarks.md "bf16 sweep" for the measured spread): bf16 keeps 8
significant bits, so one rounding is 2^-9 = 0.2% relative; a kernel that loads 16-bit operands,
accumulates in fp32 and rounds once on store stays near 0.5%; the states and cumulative gates of
a few dozen steps, 16-bit chunk states (h, dh rounded at every chunk boundary) and 16-bit dot
operands in the backward pile up a few roundings more. 3e-2 for forward tensors and 6e-2 for
gradients leave room for that and flag a lost factor, a wrong cast (fp16 overflow, a truncated
conversion, a bf16 cumulative sum) or a dropped term, which land at 10% or more.

    TRITON_INTERPRET=1 nice python scripts/bf16_sweep.py                    # all specs, bf16
    TRITON_INTERPRET=1 nice python scripts/bf16_sweep.py gla rwkv7 --dtype fp16 --T 100

Exit status 1 if any row fails.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]       # this checkout's seqc and the test helpers
os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

import seqc  # noqa: E402
from seqc.inputs import random_call  # noqa: E402

if os.environ["TRITON_INTERPRET"] == "1":
    import fast_interpreter  # noqa: E402
    fast_interpreter.install()   # the same results, less interpreter bookkeeping

STDLIB = sorted(p.stem for p in (ROOT / "stdlib").glob("*.seq"))
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FORWARD_TOL, GRAD_TOL = 3e-2, 6e-2
# a mode no module lists by default but the Triton tests force (tests/test_triton_gradients.py)
FORCED_MODES: dict[str, tuple[str, ...]] = {}


@dataclass
class Row:
    spec: str
    mode: str
    forward: dict = field(default_factory=dict)    # name -> relative error (outputs, "final S")
    grads: dict = field(default_factory=dict)      # name -> relative error
    flags: list = field(default_factory=list)      # NaN / None / zero / dtype findings
    error: str | None = None                      # an exception's last line
    seconds: float = 0.0

    def worst(self, table):
        return max(table.values(), default=0.0)

    def passed(self, forward_tol=FORWARD_TOL, grad_tol=GRAD_TOL):
        return (self.error is None and not self.flags and self.worst(self.forward) <= forward_tol
                and self.worst(self.grads) <= grad_tol)


def modes_of(program) -> list[str]:
    module = program.kernel("triton").module
    return list(module.MODES) + [m for m in FORCED_MODES.get(program.name, ())
                                 if m not in module.MODES]


def sizes_for(program, T: int, dims: int, B: int = 1, H: int = 2) -> dict[str, int]:
    return dict(B=B, T=T, H=H, **{d.name: dims for d in program.spec.dims})


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = want.abs().max().item()
    diff = (got.double() - want).abs().max().item()
    return diff / scale if scale > 0 else diff


def call(kernel, tensors, state, weights, dtype):
    """Outputs, final states and gradients of one call on `tensors` as they are (the state in
    fp32, fp64 for an fp64 `dtype`); the incoming gradient is `weights` (one per output and final
    state, in the call dtype's values)."""
    leaves = {n: t.detach().clone().requires_grad_() for n, t in tensors.items()}
    initial = {n: t.detach().to(torch.float64 if dtype == torch.float64 else torch.float32)
               .requires_grad_() for n, t in state.items()}
    out = kernel(**leaves, initial_state=initial, output_final_state=True)
    outputs = {n: out[n] for n in out.keys()}
    finals = {f"final {n}": v for n, v in out.final_state.items()}
    loss = sum((v.double() * weights[n]).sum() for n, v in {**outputs, **finals}.items()
               if weights[n] is not None)
    loss.backward()
    grads = {n: t.grad for n, t in leaves.items()}
    grads.update({f"initial {n}": t.grad for n, t in initial.items()})
    dtypes = {n: t.dtype for n, t in leaves.items()}
    dtypes.update({f"initial {n}": t.dtype for n, t in initial.items()})
    return outputs, finals, grads, dtypes


def check(program, mode: str, dtype=torch.bfloat16, T: int = 67, dims: int = 32,
          chunk_size: int | None = 16, seed: int = 0, reference=None, mixed: bool = False,
          resets: bool = False, B: int = 1, H: int = 2, **options) -> Row:
    """One row of the sweep: `program` through Triton `mode` in `dtype` against the reference
    in fp64 (`reference`: its (outputs, finals, grads) if already computed for these values;
    `options`: more kernel options, e.g. chunk_state_dtype)."""
    row = Row(program.name, mode)
    start = time.perf_counter()
    tensors, state = random_call(program.spec, sizes_for(program, T, dims, B, H), seed=seed,
                                 with_initial_state=True)
    tensors = call_tensors(program, tensors, dtype, mixed, resets)  # what both calls see
    try:
        if reference is None:
            reference = reference_call(program, tensors, state, dtype, seed)
        want_out, want_final, want_grads, weights = reference
        options = {"mode": mode, **options}
        if chunk_size is not None:
            options["chunk_size"] = chunk_size
        kernel = program.kernel("triton", **options)
        got_out, got_final, got_grads, dtypes = call(kernel, tensors, state, weights, dtype)
        with torch.no_grad():    # inference: the mode's own forward kernels (a training call
            #                      may run another form's cores: seqc/autograd.py)
            plain = kernel(**tensors, initial_state=state, output_final_state=True)
        got_out.update({f"{n} (no grad)": plain[n] for n in plain.keys()})
        got_final.update({f"final {n} (no grad)": v for n, v in plain.final_state.items()})
        want_out = {**want_out, **{f"{n} (no grad)": v for n, v in want_out.items()}}
        want_final = {**want_final, **{f"{n} (no grad)": v for n, v in want_final.items()}}
    except Exception as e:       # noqa: BLE001 - a row records any failure of the call
        row.error = traceback.format_exception_only(type(e), e)[-1].strip()[:160]
        row.seconds = time.perf_counter() - start
        return row
    first = next(iter(tensors.values())).dtype
    for n, want in {**want_out, **want_final}.items():
        got = {**got_out, **got_final}[n]
        if n in got_out and got.dtype != first:      # the first input's dtype (seqc/validate.py)
            row.flags.append(f"{n} is {str(got.dtype)[6:]}")
        finite = torch.isfinite(want)
        if not torch.isfinite(got[finite]).all():
            row.flags.append(f"{n} not finite")
        row.forward[n] = relative(torch.where(finite, got.double(), 0.0),
                                  torch.where(finite, want, 0.0))
    for n, want in want_grads.items():
        got = got_grads.get(n)
        if want is None:
            continue
        if got is None:
            row.flags.append(f"no gradient of {n}")
            continue
        if got.dtype != dtypes[n]:
            row.flags.append(f"d{n} is {str(got.dtype)[6:]}")
        finite = torch.isfinite(want)     # (a reset's -inf gate may have a NaN gradient there)
        if not torch.isfinite(got[finite]).all():
            row.flags.append(f"d{n} not finite")
            continue
        if not got.any() and want.any():
            row.flags.append(f"d{n} all zero")
        row.grads[n] = relative(torch.where(finite, got.double(), 0.0),
                                torch.where(finite, want, 0.0))
    row.seconds = time.perf_counter() - start
    return row


RESET_STEPS = [0, 5, 6, 15, 16, 31, 40]       # first, inside, a boundary of chunks of 16, ...


def call_tensors(program, tensors, dtype, mixed=False, resets=False):
    """`tensors` rounded to `dtype`; with `mixed`, those declared with a range (gates, betas)
    stay fp32, as fla's callers often pass them; with `resets`, every log-gate input (declared
    in (-inf, 0)) is -inf at RESET_STEPS and the last step (half the keys of a key-wise gate):
    tests/test_hard_resets.py's positions."""
    ranged = {t.name for t in program.spec.inputs + program.spec.params if t.range is not None}
    out = {n: t.float() if mixed and n in ranged else t.to(dtype) for n, t in tensors.items()}
    if resets:
        for t in program.spec.inputs:
            if t.range is not None and t.range.low == -math.inf and t.range.high == 0:
                g = out[t.name].clone()
                steps = [s for s in RESET_STEPS if s < g.shape[1]] + [g.shape[1] - 1]
                if g.dim() == 4:
                    g[:, steps, :, ::2] = -math.inf
                else:
                    g[:, steps] = -math.inf
                out[t.name] = g
    return out


def reference_call(program, tensors, state, dtype, seed: int):
    """The reference backend in fp64 on the call's values; the incoming gradients drawn here
    (rounded to `dtype`, then fp64) are returned for the Triton call to use as well."""
    gen = torch.Generator().manual_seed(seed + 1)
    kernel = program.kernel("reference")
    with torch.no_grad():
        probe = kernel(**{n: t.double() for n, t in tensors.items()},
                       initial_state={n: t.double() for n, t in state.items()},
                       output_final_state=True)
    shapes = {n: probe[n].shape for n in probe.keys()}
    shapes.update({f"final {n}": v.shape for n, v in probe.final_state.items()})
    weights = {n: torch.randn(s, generator=gen).to(dtype).double() for n, s in shapes.items()}
    out, finals, grads, _ = call(kernel, {n: t.double() for n, t in tensors.items()},
                                 {n: t.double() for n, t in state.items()}, weights,
                                 torch.float64)
    # a final state that is not finite (an -inf max) gets no incoming gradient: as
    # test_gradients.py's gradients_of; recompute without it
    bad = [n for n, v in finals.items() if not torch.isfinite(v).all()]
    if bad:
        for n in bad:
            weights[n] = None
        out, finals, grads, _ = call(kernel, {n: t.double() for n, t in tensors.items()},
                                     {n: t.double() for n, t in state.items()}, weights,
                                     torch.float64)
    return ({n: v.detach() for n, v in out.items()}, {n: v.detach() for n, v in finals.items()},
            grads, weights)


def fmt(e: float) -> str:
    return "nan" if math.isnan(e) else f"{e:.1e}"


def table(rows: list[Row], forward_tol=FORWARD_TOL, grad_tol=GRAD_TOL) -> str:
    lines = ["| spec | mode | outputs | final state | no grad: outputs / final | "
             "gradients (worst first) | result |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.error:
            lines.append(f"| {r.spec} | {r.mode} | | | | | ERROR {r.error} |")
            continue
        def worst(final, plain):
            return max((v for n, v in r.forward.items() if n.startswith("final") == final
                        and n.endswith("(no grad)") == plain), default=0.0)
        outs, fin = worst(False, False), worst(True, False)
        inference = f"{fmt(worst(False, True))} / {fmt(worst(True, True))}"
        grads = ", ".join(f"d{n} {fmt(v)}" for n, v in
                          sorted(r.grads.items(), key=lambda kv: -kv[1]))
        verdict = "pass" if r.passed(forward_tol, grad_tol) else "FAIL"
        if r.flags:
            verdict += " (" + "; ".join(r.flags) + ")"
        lines.append(f"| {r.spec} | {r.mode} | {fmt(outs)} | {fmt(fin)} | {inference} | {grads} "
                     f"| {verdict} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="*", help="stdlib specs (default: all)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--modes", help="comma-separated modes, those a spec offers run "
                        "(default: every mode of a spec)")
    parser.add_argument("--B", type=int, default=1)
    parser.add_argument("--H", type=int, default=2)
    parser.add_argument("--T", type=int, default=67)
    parser.add_argument("--dims", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=16, help="0: each mode's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed", action="store_true", help="inputs and params with a declared "
                        "range (gates, betas) in fp32, the rest in the call dtype (fla's mix)")
    parser.add_argument("--resets", action="store_true", help="hard resets: -inf in every log "
                        "gate input (range (-inf, 0)) at steps 0, 5, 6, 15, 16, 31, 40 and T - 1 "
                        "(half the keys of a key-wise gate)")
    parser.add_argument("--forward-tol", type=float, default=FORWARD_TOL)
    parser.add_argument("--grad-tol", type=float, default=GRAD_TOL)
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype]
    rows = []
    for name in args.specs or STDLIB:
        program = seqc.load(name)
        modes = [m for m in modes_of(program) if not args.modes or m in args.modes.split(",")]
        tensors, state = random_call(program.spec, sizes_for(program, args.T, args.dims, args.B,
                                                             args.H),
                                     seed=args.seed, with_initial_state=True)
        reference = reference_call(program, call_tensors(program, tensors, dtype, args.mixed,
                                                         args.resets), state, dtype, args.seed)
        for mode in modes:
            row = check(program, mode, dtype, args.T, args.dims, args.chunk_size or None,
                        args.seed, reference, args.mixed, args.resets, args.B, args.H)
            rows.append(row)
            print(table([row], args.forward_tol, args.grad_tol).splitlines()[-1],
                  f"({row.seconds:.0f} s)", flush=True)
    print(f"\n{args.dtype}, B={args.B}, H={args.H}, T={args.T}, dims {args.dims}, chunks of "
          f"{args.chunk_size}, seed {args.seed}; tolerance {args.forward_tol} forward, "
          f"{args.grad_tol} gradients (relative to each tensor's max magnitude)\n")
    print(table(rows, args.forward_tol, args.grad_tol))
    failed = [r for r in rows if not r.passed(args.forward_tol, args.grad_tol)]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} pass")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
