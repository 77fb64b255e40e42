"""seqc's Triton kernels against fla's Triton ops, on a GPU: `python -m seqc.gpu_bench`.

    python -m seqc.gpu_bench [--shape B=4,T=4096,H=16,D=128] [--specs simple_gla,gla] [--dry-run]

For every stdlib spec that fla-core computes with a Triton op (FLA_TRITON below: the op and how
seqc's call tensors map onto its arguments), both run on the same random bf16 tensors (layout
[B, T, H, ...], which fla uses too); each is timed forward and forward + backward, median of
`--repeats` after a warm-up, with CUDA synchronised around each run. The outputs, and the
gradients of their sums into every input both reach, are compared first: a relative RMS
difference above MISMATCH (bf16 inputs, fp32 states on both sides) is a mismatch, printed as
such, and the exit status is 1.

`--dry-run` is the same pipeline on the CPU under the Triton interpreter at a tiny fp32 shape,
for CI: fla's Triton ops themselves, made to run interpreted by seqc/fla_interpreted.py, through
the same adapters (FLA_TRITON) as on a GPU; timings mean nothing there. Two ops refuse fp32
inputs (FP32_REFUSED): the dry run gives those, and seqc, the same bf16 tensors and holds them
to the GPU's tolerance (the interpreter computes bf16 as a GPU does once seqc's hooks are in,
backends/triton/interpreter_bf16.py).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import nullcontext

from .fla_interpreted import interpreted_fla

MISMATCH = 2e-2          # relative RMS difference that fails (bf16 inputs)
DRY_MISMATCH = 1e-3      # fp32 under the interpreter
GPU_SHAPE = "B=4,T=4096,H=16,D=128"
FP32_REFUSED = {"deltanet", "deltaproduct"}   # fla asserts bf16 inputs (chunk_delta_rule, ...)
DRY_SHAPE = "B=1,T=64,H=2,D=16"


def _fla(module: str, name: str):
    import importlib
    return getattr(importlib.import_module(f"fla.ops.{module}"), name)


def _log(t):
    return t.float().log().to(t.dtype)


def _simple_gla(t, s):
    return lambda: _fla("simple_gla", "chunk_simple_gla")(t["q"], t["k"], t["v"], t["g"])[0]


def _retnet(t, s):       # S = gamma S + k v^T: simple GLA with a constant per-head log gate
    return lambda: _fla("simple_gla", "chunk_simple_gla")(t["q"], t["k"], t["v"],
                                                           g_gamma=_log(t["gamma"]).float())[0]


def _mamba2(t, s):       # h = exp(dt A) h + dt B x^T, y = C^T h: simple GLA, no scale
    g = t["dt"] * t["A"][None, None, :]
    k = t["B"] * t["dt"][..., None]
    return lambda: _fla("simple_gla", "chunk_simple_gla")(t["C"], k, t["x"], g, scale=1.0)[0]


def _gla(t, s):
    return lambda: _fla("gla", "chunk_gla")(t["q"], t["k"], t["v"], t["g"])[0]


def _hgrn2(t, s):        # GLA with k = 1 - exp(g), no scale
    k = 1 - t["g"].float().exp().to(t["g"].dtype)
    return lambda: _fla("gla", "chunk_gla")(t["q"], k, t["v"], t["g"], scale=1.0)[0]


def _linear_attn(t, s):
    return lambda: _fla("linear_attn", "chunk_linear_attn")(t["q"], t["k"], t["v"],
                                                            normalize=False)[0]


def _gated_deltanet(t, s):
    return lambda: _fla("gated_delta_rule", "chunk_gated_delta_rule")(
        t["q"], t["k"], t["v"], t["g"], t["beta"])[0]


def _deltanet(t, s):
    return lambda: _fla("delta_rule", "chunk_delta_rule")(t["q"], t["k"], t["v"], t["beta"])[0]


def _kda(t, s):
    return lambda: _fla("kda", "chunk_kda")(t["q"], t["k"], t["v"], t["g"], t["beta"])[0]


def _comba(t, s):
    """seqc's comba decays S before p reads it, as fla's naive_recurrent_comba does:
    S <- exp(g) (I - beta k p^T) S + beta k v^T. fla's chunk_comba (and naive_chunk_comba) read
    the undecayed state, S <- (exp(g) I - beta k p^T) S + beta k v^T: the same recurrence with
    p scaled by exp(g)."""
    p = t["p"] * t["g"].float().exp().to(t["p"].dtype)[..., None]
    return lambda: _fla("comba", "chunk_comba")(t["q"], t["k"], t["v"], p, t["g"],
                                                t["beta"])[0]


def _deltaproduct(t, s):  # two Householder steps a token, interleaved along time
    import torch

    def interleave(a, b):
        return torch.stack([a, b], dim=2).flatten(1, 2)
    k, v = interleave(t["k1"], t["k2"]), interleave(t["v1"], t["v2"])
    beta = interleave(t["beta1"], t["beta2"])
    g = torch.zeros_like(t["beta1"])
    return lambda: _fla("gated_delta_product", "chunk_gated_delta_product")(
        t["q"], k, v, g, beta, num_householder=2)[0]


def _rwkv7(t, s):        # S = exp(g) S + b (a^T S) + k v^T with a = -kk, b = a * kk; no scale
    return lambda: _fla("generalized_delta_rule", "chunk_dplr_delta_rule")(
        t["r"], t["k"], t["v"], -t["kk"], t["a"] * t["kk"], t["g"], scale=1.0)[0]


def _rwkv6(t, s):        # o = scale r^T (S + u k v^T) before S = exp(w) S + k v^T; scale K^-1/2
    return lambda: _fla("rwkv6", "chunk_rwkv6")(t["r"], t["k"], t["v"], t["w"], t["u"])[0]


def _hgrn(t, s):         # headless [B, T, D]: the heads folded into D
    B, T = s["B"], s["T"]
    x, g = (t[n].reshape(B, T, -1) for n in ("x", "g"))
    return lambda: _fla("hgrn", "chunk_hgrn")(x, g)[0].reshape(t["x"].shape)


FLA_TRITON = {
    "simple_gla": ("chunk_simple_gla", _simple_gla),
    "retnet": ("chunk_simple_gla (g_gamma)", _retnet),
    "mamba2": ("chunk_simple_gla (SSD)", _mamba2),
    "gla": ("chunk_gla", _gla),
    "hgrn2": ("chunk_gla (k = 1 - exp g)", _hgrn2),
    "linear_attn": ("chunk_linear_attn", _linear_attn),
    "gated_deltanet": ("chunk_gated_delta_rule", _gated_deltanet),
    "deltanet": ("chunk_delta_rule", _deltanet),
    "kda": ("chunk_kda", _kda),
    "comba": ("chunk_comba", _comba),
    "deltaproduct": ("chunk_gated_delta_product", _deltaproduct),
    "rwkv7": ("chunk_dplr_delta_rule", _rwkv7),
    "rwkv6": ("chunk_rwkv6", _rwkv6),
    "hgrn": ("chunk_hgrn", _hgrn),
}


def parse_shape(text: str) -> dict[str, int]:
    sizes = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = item.partition("=")
        sizes[name.strip()] = int(value)
    return sizes


def relative_rms(got, want) -> float:
    got, want = got.float(), want.float()
    return ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt().clamp_min(1e-12)).item()


def timed(fn, repeats: int, sync) -> float:
    """Median seconds of `fn()` after one warm-up run, synchronised around each run."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def with_backward(fn, tensors):
    """fn() then backward of its output's sum into every floating input (grads cleared)."""
    def run():
        for t in tensors.values():
            t.grad = None
        fn().float().sum().backward()
    return run


def gradient_error(ours, theirs, tensors) -> float:
    """The largest relative RMS difference between the gradients of seqc's output and the
    baseline's (the sum of each output, into every floating input both reach)."""
    import torch
    grads = []
    for fn in (ours, theirs):
        leaves = {n: t.detach().clone().requires_grad_(True) for n, t in tensors.items()}
        out = _first(fn(leaves))
        grads.append(dict(zip(leaves, torch.autograd.grad(out.float().sum(), list(leaves.values()),
                                                          allow_unused=True))))
    pairs = [(grads[0][n], grads[1][n]) for n in tensors
             if grads[0][n] is not None and grads[1][n] is not None]
    return max((relative_rms(a, b) for a, b in pairs), default=0.0)


def bench_spec(name: str, shape: dict, dry: bool, repeats: int) -> dict:
    import torch

    import seqc
    from .inputs import random_call
    program = seqc.load(name)
    sizes = dict(B=shape["B"], T=shape["T"], H=shape["H"],
                 **{d.name: shape.get(d.name, shape["D"]) for d in program.spec.dims})
    device = "cpu" if dry else "cuda"
    fp32 = dry and name not in FP32_REFUSED
    tensors, _ = random_call(program.spec, sizes, dtype=torch.float32 if fp32 else torch.bfloat16,
                             seed=0)
    tensors = {n: t.to(device) for n, t in tensors.items()}
    label, make = FLA_TRITON[name]
    label = f"fla {label}" + (f" (interpreted{'' if fp32 else ', bf16: it refuses fp32'})"
                              if dry else "")
    baseline = make(tensors, sizes)
    tolerance = DRY_MISMATCH if fp32 else MISMATCH
    kernel = program.kernel("triton")
    output = program.spec.outputs[0].name

    def ours():
        return kernel(**tensors)[output]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad():
        error = relative_rms(ours(), baseline())
        row = dict(spec=name, baseline=label, sizes=sizes, error=error,
                   mismatch=error > tolerance,
                   seqc_fwd=timed(ours, repeats, sync), fla_fwd=timed(baseline, repeats, sync))
    row["grad_error"] = gradient_error(lambda leaves: kernel(**leaves)[output],
                                       lambda leaves: make(leaves, sizes)(), tensors)
    row["mismatch"] = row["mismatch"] or row["grad_error"] > tolerance
    if not dry:
        leaves = {n: t.detach().clone().requires_grad_(True) for n, t in tensors.items()}
        ours_bwd = with_backward(lambda: kernel(**leaves)[output], leaves)
        fla_leaves = {n: t.detach().clone().requires_grad_(True) for n, t in tensors.items()}
        theirs_bwd = with_backward(make(fla_leaves, sizes), fla_leaves)
        row.update(seqc_fwdbwd=timed(ours_bwd, repeats, sync),
                   fla_fwdbwd=timed(theirs_bwd, repeats, sync))
    else:
        row["backward"] = "forward + backward not timed in the dry run"
    return row


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def table(rows: list[dict], shape: dict, dry: bool) -> str:
    what = "dry run: CPU, Triton interpreter, fp32 but where fla refuses it" if dry else "GPU, bf16"
    lines = [f"seqc Triton vs fla Triton ops ({what}; shape "
             f"{','.join(f'{k}={v}' for k, v in shape.items())}; medians, ms)", "",
             "| spec | fla op | rel. RMS diff | grad diff | seqc fwd | fla fwd | x | seqc fwd+bwd | "
             "fla fwd+bwd | x |", "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for r in rows:
        if "skipped" in r:
            notes.append(f"{r['spec']}: skipped ({r['skipped']})")
            continue
        verdict = f"{r['error']:.1e}" + (" MISMATCH" if r["mismatch"] else "")
        fwd = [f"{r['seqc_fwd'] * 1e3:.3f}", f"{r['fla_fwd'] * 1e3:.3f}",
               f"{r['fla_fwd'] / r['seqc_fwd']:.2f}"]
        if "seqc_fwdbwd" in r:
            bwd = [f"{r['seqc_fwdbwd'] * 1e3:.3f}", f"{r['fla_fwdbwd'] * 1e3:.3f}",
                   f"{r['fla_fwdbwd'] / r['seqc_fwdbwd']:.2f}"]
        else:
            bwd = ["-", "-", "-"]
            notes.append(f"{r['spec']}: {r['backward']}")
        grad = f"{r['grad_error']:.1e}"
        lines.append("| " + " | ".join([r["spec"], r["baseline"], verdict, grad, *fwd, *bwd])
                     + " |")
    lines += ["", "`x` = fla's time / seqc's (above 1: seqc is faster)."]
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def can_run(dry: bool, program: str) -> bool:
    """A dry run runs the kernels under the Triton interpreter; a GPU run needs a CUDA device
    (else a message on stderr and False)."""
    if dry:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        return True
    import torch
    if not torch.cuda.is_available():
        print(f"{program}: no CUDA device; use --dry-run to test it on the CPU", file=sys.stderr)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seqc.gpu_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default=None, help=f"default {GPU_SHAPE} ({DRY_SHAPE} dry)")
    parser.add_argument("--specs", default=",".join(FLA_TRITON))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    dry = args.dry_run
    if not can_run(dry, "seqc.gpu_bench"):
        return 2
    shape = parse_shape(args.shape or (DRY_SHAPE if dry else GPU_SHAPE))
    specs = [s.strip() for s in args.specs.split(",") if s.strip()]
    unknown = [s for s in specs if s not in FLA_TRITON]
    if unknown:
        print(f"seqc.gpu_bench: no fla Triton op known for {', '.join(unknown)}; known: "
              f"{', '.join(FLA_TRITON)}", file=sys.stderr)
        return 2
    repeats = args.repeats or (1 if dry else 10)
    with interpreted_fla() if dry else nullcontext():
        rows = [bench_spec(name, shape, dry, repeats) for name in specs]
    print(table(rows, shape, dry))
    bad = [r["spec"] for r in rows if r.get("mismatch")]
    if bad:
        print(f"\nMISMATCH: seqc's Triton output or gradient differs from fla's for {', '.join(bad)} "
              f"(relative RMS above {DRY_MISMATCH if dry else MISMATCH}"
              f"{f', {MISMATCH} on bf16 calls' if dry else ''})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
