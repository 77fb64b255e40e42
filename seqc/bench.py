"""`seqc bench FILE`: time backends side by side on random inputs, with ratios and GFLOP/s.

Every runner (each backend, and the external baseline when one is known for the spec) is warmed
up, then timed in alternating rounds (runner A, B, C, A, B, C, ...) so that a noisy machine slows
them all alike; the table shows medians. The reference step loop is slow at long T: it takes part
in the first `REFERENCE_ROUNDS` rounds only, and the table says so.

Before timing, every runner's result on the benchmark's inputs is checked once against the
reference's (every output of a seqc backend, the baseline's only output), to the tolerance of
`seqc run` (1e-4 of the reference's magnitude, fp32): a runner that disagrees stops the command with
exit status 1, since the timing of a wrong kernel is worse than none.

FLOPs are counted from the Plan, the same count for every runner of a spec (so GFLOP/s compare
like time): the matmul work of seqc's chunkwise form at the chunk size used (2 per multiply-add);
for scan and semiring states the recurrence's own arithmetic, 2 per state element per step;
elementwise gate arithmetic is not counted. The share of peak divides by the fp32 matmul rate
measured in the same run (a 2048^3 torch.matmul, median of 5).
"""
from __future__ import annotations

import statistics
import sys
import time

REFERENCE_ROUNDS = 3
PEAK_SIZE = 2048
DEFAULT_SIZES = {"B": 2, "T": 4096, "H": 4}
DEFAULT_DIM = 64


def parse_shape(text: str | None, dims: tuple[str, ...]) -> dict[str, int]:
    """`B=2,T=4096,H=4,K=64` -> sizes for B, T, H (default 2, 4096, 4) and every dim of the spec
    (default 64); no text: all defaults."""
    sizes = dict(DEFAULT_SIZES)
    given = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, _, value = item.partition("=")
        if not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"--shape: `{item}` is not NAME=POSITIVE_INTEGER")
        given[name.strip()] = int(value)
    unknown = [name for name in given if name not in ("B", "T", "H") + tuple(dims)]
    if unknown:
        raise ValueError(f"--shape: unknown dim {', '.join(unknown)}; the spec's dims are "
                         f"{', '.join(dims) or 'none'} (and B, T, H)")
    sizes.update({k: v for k, v in given.items() if k in ("B", "T", "H")})
    for dim in dims:
        sizes[dim] = given.get(dim, DEFAULT_DIM)
    return sizes


def flops_per_token(plan, sizes: dict[str, int], chunk: int) -> int:
    """Matmul FLOPs a token of the chunkwise forms does (see the module docstring)."""
    spec = plan.spec
    total = 0
    for group in plan.groups:
        reads = sum(1 for r in plan.reads if r.state in group.states)
        if group.kind == "chunk":
            k, v = sizes[group.key_dim], sizes[group.value_dim] if group.value_dim else 1
            w = len(group.writes)
            total += 2 * w * k * v + reads * (2 * chunk * w * (k + v) + 2 * k * v)
        elif group.kind == "chunk_dplr":      # the UT system, the pass, four score products
            k, v, w = sizes[group.key_dim], sizes[group.value_dim], len(group.writes)
            total += 2 * chunk * k * (1 + w) + 2 * chunk * (w * v + k + v) + (4 + 2 * w) * k * v
            total += reads * (2 * k * v + 2 * chunk * (1 + w) * (k + v))
        elif group.kind == "chunk_delta":
            k, v, j = sizes[group.key_dim], sizes[group.value_dim], len(group.steps)
            total += j * (2 * chunk * j * k + chunk * j * (k + v) + 4 * k * v)
            total += reads * (2 * k * v + 2 * chunk * j * (k + v))
        else:
            for state in group.states:
                size = 1
                for dim in spec.tensor(state).dims:
                    size *= sizes[dim]
                total += 2 * size
    return total


def measure_peak(torch) -> float:
    """GFLOP/s of a large fp32 torch.matmul on this machine, now."""
    a = torch.randn(PEAK_SIZE, PEAK_SIZE)
    b = torch.randn(PEAK_SIZE, PEAK_SIZE)
    a @ b
    times = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * PEAK_SIZE ** 3 / statistics.median(times) / 1e9


class Progress:
    """A plain-text progress bar on stderr (only when the run is long enough to need one): redrawn
    in place on a terminal; on a pipe or a file, one flushed line a step, so that a reader sees
    each step as it ends (a `\r`-redrawn bar would arrive as one line at the end)."""

    def __init__(self, total: int, enabled: bool, terminal: bool | None = None):
        self.total, self.done, self.enabled = total, 0, enabled
        self.terminal = sys.stderr.isatty() if terminal is None else terminal

    def step(self, label: str) -> None:
        self.done += 1
        if self.enabled:
            filled = 30 * self.done // self.total
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} "
            sys.stderr.write(f"\r{bar}{label:<28}" if self.terminal else f"{bar}{label}\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.terminal:
            sys.stderr.write("\n")


def time_runners(runners: dict, repeats: int, progress: Progress) -> dict[str, list[float]]:
    times = {name: [] for name in runners}
    for round_ in range(repeats):
        for name, (fn, rounds) in runners.items():
            if round_ >= rounds:
                continue
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            progress.step(name)
    return times


def build_runners(program, backends, tensors, sizes, repeats):
    """{name: (zero-argument callable returning its outputs {name: tensor}, rounds)}, notes."""
    import torch

    from .baselines import baseline_for
    runners, notes = {}, []
    for backend in backends:
        if backend == "newton":        # the torch backend with solver="newton": seqc/newton.py
            kernel = program.kernel(backend="torch", solver="newton")
            notes.append(_IterationsNote(kernel))
        else:
            kernel = program.kernel(backend=backend)
        rounds = min(repeats, REFERENCE_ROUNDS) if backend == "reference" else repeats
        runners[backend] = (_no_grad(torch, lambda kernel=kernel: _outputs(kernel(**tensors))),
                            rounds)
        if rounds < repeats:
            notes.append(f"reference: median of {rounds} runs, not {repeats} (the step loop is "
                         f"slow; it takes part in the first {rounds} alternating rounds only)")
    baseline = baseline_for(program.name, tensors, sizes)
    if isinstance(baseline, str):
        notes.append(baseline)
    elif baseline is not None:
        label, fn = baseline
        [output] = [o.name for o in program.spec.outputs]
        runners[label] = (_no_grad(torch, lambda: {output: fn()}), repeats)
    return runners, notes


class _IterationsNote:
    """The Newton runner's iterations, read when the notes are printed (after the timing)."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __str__(self) -> str:
        return f"newton (the torch backend, solver=\"newton\"), last run: {self.kernel.stats}"


def _outputs(result) -> dict:
    return {name: result[name] for name in result.keys()}


def _no_grad(torch, fn):
    def run():
        with torch.no_grad():
            return fn()
    return run


def mismatches(results: dict[str, dict], expected: dict) -> list[str]:
    """One line per runner output that disagrees with the reference's beyond `seqc run`'s fp32
    tolerance (relative to the reference's largest magnitude)."""
    from .run import TOLERANCE, compare
    lines = []
    for runner, outputs in results.items():
        for name, value in outputs.items():
            want = expected[name]
            if value.shape != want.shape:
                lines.append(f"{runner}: output `{name}` has shape {list(value.shape)}, the "
                             f"reference's is {list(want.shape)}")
                continue
            _, relative = compare(value, want)
            if not relative <= TOLERANCE["float32"]:
                lines.append(f"{runner}: output `{name}` is off by {relative:.3g} of the "
                             f"reference's magnitude (tolerance {TOLERANCE['float32']:g})")
    return lines


def bench_command(args) -> int:
    from .api import load
    from .cli import reporting
    with reporting("bench"):
        program = load(args.file)
        if getattr(args, "model", None):
            from .gpu_model import model_command
            return model_command(program, args.shape, args.model)
        sizes = parse_shape(args.shape, tuple(d.name for d in program.spec.dims))
    if args.plot and not _has_matplotlib():
        return 1            # said before the benchmark runs, not after it
    import torch

    from .inputs import random_call
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    repeats = max(1, args.repeats)
    tensors, _ = random_call(program.spec, sizes)
    runners, notes = build_runners(program, backends, tensors, sizes, repeats)
    peak = measure_peak(torch)
    total = len(runners) + sum(rounds for _, rounds in runners.values())
    progress = Progress(total, enabled=sys.stderr.isatty() or sizes["T"] >= 1024)
    results = {}
    for name, (fn, _) in runners.items():
        results[name] = fn()
        progress.step(f"warm-up {name}")
    expected = results.get("reference") or \
        _no_grad(torch, lambda: _outputs(program.kernel("reference")(**tensors)))()
    wrong = mismatches(results, expected)
    if wrong:
        progress.close()
        print("seqc bench: error: a runner disagrees with the reference on the benchmark's "
              "inputs, so its timing would be of a wrong computation; nothing timed:\n  "
              + "\n  ".join(wrong), file=sys.stderr)
        return 1
    times = time_runners(runners, repeats, progress)
    progress.close()
    chunk = 32          # the torch backend's default chunk size (module.md)
    flops = flops_per_token(program.analysis.plan, sizes, chunk) * sizes["B"] * sizes["T"] * \
        sizes["H"]
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(format_table(program, sizes, medians, times, flops, peak, notes, torch))
    status = 0
    if args.io:
        status = _io_report(program, sizes, backends, tensors)
    if args.plot:
        status = plot(medians, args.plot, f"seqc bench {program.name} "
                      f"({', '.join(f'{k}={v}' for k, v in sizes.items())})") or status
    return status


def format_table(program, sizes, medians, times, flops, peak, notes, torch) -> str:
    shape = ",".join(f"{k}={v}" for k, v in sizes.items())
    kinds = ", ".join(sorted({g.kind for g in program.analysis.plan.groups}))
    baseline = next((n for n in medians if n not in ("reference", "torch", "triton", "newton")),
                    None)
    header = ["runner", "median ms", "runs", "x vs reference"]
    header += [f"x vs {baseline}"] if baseline else []
    header += ["GFLOP/s", "% of peak"]
    lines = [f"seqc bench {program.name}  --shape {shape}  (family: {kinds}; fp32; "
             f"{torch.get_num_threads()} threads; alternating rounds, medians)",
             f"measured fp32 matmul peak ({PEAK_SIZE}^3 torch.matmul): {peak:.1f} GFLOP/s; "
             f"work counted: {flops / 1e9:.3f} GFLOP a call",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, median in medians.items():
        rate = flops / median / 1e9
        row = [name, f"{median * 1e3:.1f}", str(len(times[name])),
               _ratio(medians.get("reference"), median)]
        row += [_ratio(medians[baseline], median)] if baseline else []
        row += [f"{rate:.2f}", f"{100 * rate / peak:.0f}%"]
        lines.append("| " + " | ".join(row) + " |")
    lines += [""] + [f"note: {n}" for n in notes]
    lines.append("`x vs R` = R's median time / this runner's (above 1: this runner is faster).")
    return "\n".join(lines)


def _ratio(other: float | None, mine: float) -> str:
    return "-" if other is None else f"{other / mine:.2f}x"


def _io_report(program, sizes, backends, tensors) -> int:
    try:
        from . import bench_io
    except ImportError:
        print("seqc bench: --io needs seqc.bench_io (the byte counter of the Triton backend), "
              "which this installation does not have; timings above are complete",
              file=sys.stderr)
        return 1
    print(bench_io.report(program, sizes, backends, tensors))
    return 0


NO_MATPLOTLIB = "seqc bench: --plot needs matplotlib: pip install 'seqc[plot]' (or matplotlib)"


def _has_matplotlib() -> bool:
    import importlib.util
    if importlib.util.find_spec("matplotlib") is not None:
        return True
    print(NO_MATPLOTLIB, file=sys.stderr)
    return False


def plot(medians: dict[str, float], path: str, title: str) -> int:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(NO_MATPLOTLIB, file=sys.stderr)
        return 1
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    names = list(medians)
    milliseconds = [medians[n] * 1e3 for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(names) + 1.5))
    bars = ax.barh(names, milliseconds)
    ax.bar_label(bars, labels=[f"{ms:.3g} ms" for ms in milliseconds], padding=3, fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(min(milliseconds) / 1.5, max(milliseconds) * 3)
    ax.set_xlabel("median time per call (ms, log scale)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")
    return 0
