"""Every Triton mode of a spec timed on a GPU, beside the mode `mode=None` picks:
`python -m seqc.gpu_modes`.

    python -m seqc.gpu_modes [--specs simple_gla,gla] [--shapes "B=4,T=4096,H=16,D=128;B=1,T=4096,H=4,D=128"]
                             [--modes chunk,chunk_parallel] [--dry-run]

`mode=None` chooses between a family's single-kernel and multi-kernel forms by a rule on programs
against SMs (`_choose_mode` of the emitted module, docs/backends.md) that follows the GPU model
(seqc/gpu_model.py), which no GPU has checked yet. One run of this on a GPU says, per spec and
shape, which form is faster forward and forward + backward, and whether the rule picks it. Each
mode's output is compared with the chosen mode's first (relative RMS above gpu_bench.MISMATCH is
a mismatch: exit status 1); a rule that picks a slower mode is a finding, printed, not a failure.

Beside each measured forward the GPU model's prediction for it (seqc/gpu_model.py, the GPU the
run is on when the model knows it, H100 otherwise: `--model`), and measured / predicted: the one
run a lent GPU gives is also the model's calibration. The model counts kernels under the
interpreter, so it runs in a child process (TRITON_INTERPRET=1, no CUDA device) started first and
working on the CPU while the GPU is timed; `--model none` skips it.

`--dry-run`: the same on the CPU under the Triton interpreter at a tiny fp32 shape (CI).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from .gpu_bench import (DRY_MISMATCH, MISMATCH, can_run, parse_shape, relative_rms, timed,
                        with_backward)

SPECS = "simple_gla,gla,gated_deltanet,kda,rwkv7,comba,mamba2,hgrn"
GPU_SHAPES = "B=4,T=4096,H=16,D=128;B=1,T=4096,H=4,D=128"
DRY_SHAPES = "B=1,T=64,H=2,D=16"


def spec_sizes(name: str, shape: dict) -> dict:
    """B, T, H and each of the spec's dims (`D` where the shape does not name it)."""
    import seqc
    dims = seqc.load(name).spec.dims
    return dict(B=shape["B"], T=shape["T"], H=shape["H"],
                **{d.name: shape.get(d.name, shape["D"]) for d in dims})


def bench_modes(name: str, shape: dict, dry: bool, repeats: int, modes=None) -> list[dict]:
    """One row per Triton mode of `name` at `shape`: forward and forward + backward medians (s),
    the output's relative RMS difference from the chosen mode's, and whether the rule chose it."""
    import torch

    import seqc
    from .inputs import random_call
    program = seqc.load(name)
    sizes = spec_sizes(name, shape)
    device = "cpu" if dry else "cuda"
    tensors, _ = random_call(program.spec, sizes, dtype=torch.float32 if dry else torch.bfloat16,
                             seed=0)
    tensors = {n: t.to(device) for n, t in tensors.items()}
    module = program.kernel("triton").module
    chosen = module._choose_mode(sizes, 128) if hasattr(module, "_choose_mode") \
        else module.DEFAULT_MODE
    output = program.spec.outputs[0].name
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad():
        want = program.kernel("triton", mode=chosen)(**tensors)[output]
    rows = []
    for mode in modes or module.MODES:
        kernel = program.kernel("triton", mode=mode)
        leaves = {n: t.detach().clone().requires_grad_(t.is_floating_point())
                  for n, t in tensors.items()}
        with torch.no_grad():
            error = relative_rms(kernel(**tensors)[output], want)
            forward = timed(lambda: kernel(**tensors)[output], repeats, sync)
        both = timed(with_backward(lambda: kernel(**leaves)[output], leaves), repeats, sync)
        rows.append(dict(spec=name, sizes=sizes, mode=mode, chosen=mode == chosen, error=error,
                         mismatch=error > (DRY_MISMATCH if dry else MISMATCH),
                         fwd=forward, fwdbwd=both))
    return rows


MODEL_OF_DEVICE = {"H100": "h100", "H200": "h200"}    # a word of torch's device name -> GPUS key
_PREDICT = """
import json, sys
import seqc
from seqc.gpu_model import GPUS, spec_model
gpu, jobs = GPUS[sys.argv[1]], json.loads(sys.argv[2])
out = {}
for name, sizes, modes in jobs:
    model = spec_model(seqc.load(name), sizes, gpu, modes=modes)
    for row in model["modes"]:
        out[json.dumps([name, sizes, row["mode"]])] = row["predicted_s"]
print(json.dumps(out))
"""


def model_gpu(choice: str | None, dry: bool) -> str | None:
    """The GPU model to set beside the measurements: `choice` ("none": no model), else the
    device's when the model knows it, else h100."""
    if choice:
        return None if choice == "none" else choice
    if dry:
        return "h100"
    import torch
    device = torch.cuda.get_device_name()
    return next((key for word, key in MODEL_OF_DEVICE.items() if word in device), "h100")


def start_predictions(gpu: str, jobs: list) -> subprocess.Popen:
    """The model's forward time of every (spec, sizes, modes) job, in a child process under the
    interpreter with no CUDA device (its counts run kernels interpreted)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, "-c", _PREDICT, gpu, json.dumps(jobs)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def join_predictions(child: subprocess.Popen, rows: list[dict]) -> str | None:
    """Each row's `model` (s) from the child's output; a note when the child failed."""
    out, err = child.communicate()
    if child.returncode != 0:
        return f"the GPU model failed (exit {child.returncode}): {err.strip()[-500:]}"
    predicted = json.loads(out.strip().splitlines()[-1])
    for r in rows:
        r["model"] = predicted.get(json.dumps([r["spec"], r["sizes"], r["mode"]]))
    return None


def verdicts(rows: list[dict]) -> list[str]:
    """Per spec and shape: does the chosen mode have the fastest forward (and fwd+bwd)?"""
    lines = []
    groups = {}
    for r in rows:
        groups.setdefault((r["spec"], tuple(r["sizes"].items())), []).append(r)
    for (spec, sizes), group in groups.items():
        chosen = next((r for r in group if r["chosen"]), None)
        if chosen is None:
            continue
        shape = ",".join(f"{k}={v}" for k, v in sizes)
        for what in ("fwd", "fwdbwd"):
            best = min(group, key=lambda r: r[what])
            if best is not chosen:
                lines.append(f"{spec} at {shape}: mode=None runs {chosen['mode']} "
                             f"({chosen[what] * 1e3:.3f} ms {what}); {best['mode']} took "
                             f"{best[what] * 1e3:.3f} ms ({chosen[what] / best[what]:.2f}x faster)")
    return lines


def table(rows: list[dict], dry: bool, gpu: str | None = None) -> str:
    what = "dry run: CPU, Triton interpreter, fp32" if dry else "GPU, bf16"
    model = f"; model: {gpu} at bf16, forward" if gpu else ""
    lines = [f"every Triton mode of each spec ({what}; medians, ms{model})", "",
             "| spec | shape | mode | mode=None | rel. RMS diff vs chosen | fwd | model fwd | "
             "fwd / model | fwd+bwd |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shape = ",".join(f"{k}={v}" for k, v in r["sizes"].items())
        diff = f"{r['error']:.1e}" + (" MISMATCH" if r["mismatch"] else "")
        predicted = r.get("model")
        model_cells = f"{predicted * 1e3:.3f} | {r['fwd'] / predicted:.2f}" if predicted \
            else "- | -"
        lines.append(f"| {r['spec']} | {shape} | {r['mode']} | {'chosen' if r['chosen'] else ''} "
                     f"| {diff} | {r['fwd'] * 1e3:.3f} | {model_cells} | "
                     f"{r['fwdbwd'] * 1e3:.3f} |")
    found = verdicts(rows)
    lines += ["", "the rule picks the fastest measured mode everywhere" if not found else
              "where the rule (docs/backends.md, _choose_mode) picks a slower mode:"]
    lines += [f"- {line}" for line in found]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seqc.gpu_modes",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default=SPECS)
    parser.add_argument("--shapes", default=None,
                        help=f"';'-separated, default {GPU_SHAPES!r} ({DRY_SHAPES!r} dry)")
    parser.add_argument("--modes", default=None, help="comma-separated (default: every mode)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--model", default=None,
                        help="the GPU model beside the times: h100, h200 or none (default: the "
                             "device's when known, else h100)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    dry = args.dry_run
    if not can_run(dry, "seqc.gpu_modes"):
        return 2
    shapes = [parse_shape(s) for s in (args.shapes or (DRY_SHAPES if dry else GPU_SHAPES))
              .split(";") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",")] if args.modes else None
    repeats = args.repeats or (1 if dry else 10)
    specs = [name.strip() for name in args.specs.split(",") if name.strip()]
    gpu = model_gpu(args.model, dry)
    child = start_predictions(gpu, [(name, spec_sizes(name, shape), modes) for name in specs
                                    for shape in shapes]) if gpu else None
    rows = [row for name in specs for shape in shapes
            for row in bench_modes(name, shape, dry, repeats, modes)]
    failed = join_predictions(child, rows) if child else None
    print(table(rows, dry, None if failed else gpu))
    if failed:
        print(f"\nnote: {failed}")
    bad = sorted({f"{r['spec']} {r['mode']}" for r in rows if r["mismatch"]})
    if bad:
        print(f"\nMISMATCH: these modes' outputs differ from the chosen mode's: {', '.join(bad)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
