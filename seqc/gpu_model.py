"""A GPU performance model that needs no GPU: a predicted floor per Triton kernel and per mode,
set against the roofline bound of the call (docs/benchmarks.md, "GPU performance model").

Per mode of a spec's Triton module, at a call shape (default B=4, T=4096, H=16, dims 128, bf16):

- per kernel (each `triton.jit` the mode launches), counted under the Triton interpreter while
  the mode runs at a small shape: the bytes of every load and store it executes, and the FLOPs of
  every `tl.dot` (2 M N K), split by operands: 16-bit (tensor cores), fp32 in "tf32" (tensor
  cores at half rate) and fp32 in "ieee" (fp32 FMA). Counted at B = H = 1 and two lengths
  (COUNT_T) and extrapolated as a + b T per batch x head: what a kernel moves once per sequence
  (the initial and final state) is not multiplied by T (the counts: seqc/gpu_counts.py);
- per kernel, its launch grid at the call shape (the module's `run` on `meta` tensors: nothing
  runs), hence its SM coverage min(1, programs / SMs): a program runs on one SM, so a kernel of
  fewer programs than SMs (a state pass walking the chunks in order in B x H x blocks programs,
  a single-kernel form) reaches only that share of the bandwidth and the compute;

      kernel time = max(bytes / (bandwidth x coverage), sum over units of FLOPs / (rate x coverage))
                    + LAUNCH_S
      mode time   = the sum of its kernels' times (they run one after another)

- the roofline bound of the call, one number per spec and shape whatever the mode:

      roofline = max(compulsory bytes / bandwidth, Plan FLOPs / dense bf16 tensor rate)

  compulsory bytes: every input and param read once (call dtype), every output written once in
  the call's dtype and the final state in fp32 (seqc/bench_io.py `compulsory`); Plan FLOPs:
  the matmul work of the chunkwise form at chunk 64 (seqc/bench.py `flops_per_token`). The fused
  recurrent kernel has no `tl.dot`: its FLOPs are the Plan's at chunk 1 (the recurrence), on
  fp32 FMA.

A mode whose kernels store fp32 outputs on a 16-bit call (outside its module's
CALL_DTYPE_OUTPUTS) is charged the host's cast after them too, as one more kernel (HOST_CAST):
the fp32 outputs read and the 16-bit ones written, over every SM.

The ratio predicted / roofline says how far a mode's kernels are from the best any kernel could
do on that GPU. The model charges extra bytes (chunk-boundary states, re-reads of blocks), dots
off the tensor cores and grids too small to fill the GPU; it does not charge latency, occupancy,
elementwise work (gates, exp2) or the dependency chain of a program's chunk loop.
"""
from __future__ import annotations

from dataclasses import dataclass

from .gpu_counts import (COMPULSORY, COUNT_T, HOST_CAST, UNITS, KernelCount, extrapolated,
                         launch_grids)


@dataclass(frozen=True)
class GPU:
    name: str
    bandwidth: float        # HBM bytes / s
    tensor: float           # dense bf16 tensor-core FLOP / s
    fma: float              # fp32 FMA FLOP / s
    sms: int
    arch: int               # the gpu-check target whose compiled kernels it runs

    @property
    def tf32(self) -> float:
        return self.tensor / 2


GPUS = {
    "h100": GPU("H100 SXM", 3.35e12, 990e12, 67e12, 132, 90),
    "h200": GPU("H200", 4.8e12, 990e12, 67e12, 132, 90),
}
MODEL_CHUNK = 64          # the family kernels' default chunk (module.py.j2)
LAUNCH_S = 2e-6           # a kernel launch after the previous one ends (no CUDA graph)


def kernel_time(gpu: GPU, count: KernelCount, programs: float, tensor_ok: bool = True) -> dict:
    """One kernel's floor. `tensor_ok` False: the compiled kernel has no tensor-core
    instruction (seqc gpu-check), so its 16-bit and tf32 dots run on fp32 FMA."""
    coverage = min(1.0, programs / gpu.sms)
    rates = dict(tensor=gpu.tensor, tf32=gpu.tf32, fma=gpu.fma) if tensor_ok \
        else dict.fromkeys(UNITS, gpu.fma)
    memory = count.bytes / (gpu.bandwidth * coverage)
    compute = sum(count.flops[u] / rates[u] for u in UNITS) / coverage
    if memory >= compute:
        bound = "memory"
    else:
        bound = max(UNITS, key=lambda u: count.flops[u] / rates[u])
        bound = {"tensor": "tensor cores", "tf32": "tf32 tensor cores", "fma": "fp32 FMA"}[
            bound if tensor_ok else "fma"]
    return dict(coverage=coverage, memory_s=memory, compute_s=compute,
                predicted_s=max(memory, compute) + LAUNCH_S, bound=bound)


def roofline(program, sizes: dict, gpu: GPU, compulsory_bytes: float) -> dict:
    """max(compulsory bytes / bandwidth, Plan FLOPs / tensor rate) of a call at `sizes`."""
    from .bench import flops_per_token
    plan = program.analysis.plan
    tokens = sizes["B"] * sizes["T"] * sizes["H"]
    flops = flops_per_token(plan, sizes, MODEL_CHUNK) * tokens if plan is not None else 0
    memory, compute = compulsory_bytes / gpu.bandwidth, flops / gpu.tensor
    return dict(bytes=compulsory_bytes, flops=flops, memory_s=memory, compute_s=compute,
                bound_s=max(memory, compute),
                bound="memory" if memory >= compute else "tensor cores")


def mode_model(program, mode: str, sizes: dict, gpu: GPU, dtype=None, options=None,
               tensor_ok=None) -> dict:
    """A mode's kernels and its predicted time at `sizes` (`tensor_ok`: kernel name -> whether
    its compiled form has tensor-core instructions, when gpu-check compiled it)."""
    import torch
    dtype = dtype or torch.bfloat16
    options = options or {}
    counts = extrapolated(program, mode, sizes, dtype, options)
    grids = launch_grids(program, mode, sizes, dtype, options)
    kernels = []
    compulsory_bytes = counts.pop(COMPULSORY).bytes
    if mode == "fused_recurrent":       # no dots: its step's matmul work, on fp32 FMA
        from .bench import flops_per_token
        plan = program.analysis.plan
        tokens = sizes["B"] * sizes["T"] * sizes["H"]
        for name, count in counts.items():
            if plan is not None and name != HOST_CAST and not any(count.flops.values()):
                count.flops["fma"] = flops_per_token(plan, sizes, 1) * tokens
    if HOST_CAST in counts:       # one elementwise torch kernel per output, over every SM
        grids[HOST_CAST] = [gpu.sms] * len(program.spec.outputs)
    for name, grid in grids.items():
        count = counts.get(name, KernelCount())
        programs = sum(grid) / len(grid)
        timed = kernel_time(gpu, count, programs, (tensor_ok or {}).get(name, True))
        timed["predicted_s"] += LAUNCH_S * (len(grid) - 1)
        kernels.append(dict(timed, kernel=name, programs=int(programs), launches=len(grid),
                            bytes=count.bytes, scratch=count.scratch, flops=dict(count.flops)))
    predicted = sum(k["predicted_s"] for k in kernels)
    slowest = max(kernels, key=lambda k: k["predicted_s"])
    return dict(mode=mode, kernels=kernels, predicted_s=predicted, bound=slowest["bound"],
                compulsory=compulsory_bytes,
                bytes=sum(k["bytes"] for k in kernels),
                scratch=sum(k["scratch"] for k in kernels),
                flops=sum(sum(k["flops"].values()) for k in kernels))


def spec_model(program, sizes: dict, gpu: GPU, modes=None, dtype=None, options=None,
               tensor_ok=None) -> dict:
    """The roofline bound and every (chunk-family) mode's prediction; `chosen`: the mode
    `mode=None` runs at `sizes` (the module's `_choose_mode`)."""
    import torch
    dtype = dtype or torch.bfloat16
    module = program.kernel("triton").module
    modes = modes or list(module.MODES)
    rows = [mode_model(program, m, sizes, gpu, dtype, options, tensor_ok) for m in modes]
    bound = roofline(program, sizes, gpu, rows[0]["compulsory"])
    for row in rows:
        row["ratio"] = row["predicted_s"] / bound["bound_s"]
    chosen = module.DEFAULT_MODE
    if hasattr(module, "_choose_mode"):
        dims = {**sizes}
        chosen = module._choose_mode(dims, (options or {}).get("block_split", 128))
    return dict(spec=program.name, sizes=dict(sizes), roofline=bound, modes=rows, chosen=chosen)


def model_table(models: list[dict], gpu: GPU, sizes: dict, kernels: bool = False) -> str:
    shape = ",".join(f"{k}={v}" for k, v in sizes.items())
    lines = [f"GPU model: {gpu.name} (HBM {gpu.bandwidth / 1e12:.2f} TB/s, bf16 tensor "
             f"{gpu.tensor / 1e12:.0f} TFLOP/s, fp32 FMA {gpu.fma / 1e12:.0f} TFLOP/s, "
             f"{gpu.sms} SMs); shape {shape}, bf16", "",
             "| spec | mode | kernels (programs) | GB moved | of which chunk states | GFLOP | "
             "predicted ms | bound | roofline ms | x roofline | mode=None |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in models:
        fastest = min(m["modes"], key=lambda r: r["predicted_s"])["mode"]
        for r in m["modes"]:
            grids = ", ".join(f"{k['programs']}" + (f" x{k['launches']}" if k["launches"] > 1
                                                    else "") for k in r["kernels"])
            pick = ("chosen" if r["mode"] == m["chosen"] else "") + \
                (" (fastest)" if r["mode"] == fastest else "")
            lines.append(
                f"| {m['spec']} | {r['mode']} | {grids} | {r['bytes'] / 1e9:.3f} | "
                f"{r['scratch'] / 1e9:.3f} | {r['flops'] / 1e9:.1f} | "
                f"{r['predicted_s'] * 1e3:.4g} | {r['bound']} | "
                f"{m['roofline']['bound_s'] * 1e3:.4g} ({m['roofline']['bound']}) | "
                f"{r['ratio']:.2f} | {pick.strip()} |")
    if kernels:
        lines += ["", "| spec | mode | kernel | programs | SM coverage | GB moved | GFLOP "
                  "(tensor / tf32 / FMA) | memory ms | compute ms | predicted ms | bound |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for m in models:
            for r in m["modes"]:
                for k in r["kernels"]:
                    f = k["flops"]
                    lines.append(
                        f"| {m['spec']} | {r['mode']} | {k['kernel']} | {k['programs']} | "
                        f"{k['coverage']:.0%} | {k['bytes'] / 1e9:.3f} | "
                        f"{f['tensor'] / 1e9:.1f} / {f['tf32'] / 1e9:.1f} / {f['fma'] / 1e9:.1f}"
                        f" | {k['memory_s'] * 1e3:.4g} | {k['compute_s'] * 1e3:.4g} | "
                        f"{k['predicted_s'] * 1e3:.4g} | {k['bound']} |")
    lines.append(f"\nbytes and dot FLOPs counted per kernel under the Triton interpreter at B=H=1, "
                 f"T={COUNT_T[0]} and {COUNT_T[1]}, extrapolated linearly in T and scaled in "
                 f"B x H; a mode's time is the sum of its kernels' (each max(bytes / (bandwidth x "
                 f"coverage), FLOPs / (rate x coverage)) + {LAUNCH_S * 1e6:.0f} us launch); "
                 f"roofline = max(compulsory bytes / bandwidth, Plan FLOPs / bf16 tensor rate)")
    return "\n".join(lines)


def model_rows(program, sizes: dict, gpu: GPU, checks) -> dict:
    """gpu-check's hook: the spec's model at `sizes`, trusting tensor cores only for kernels
    whose compiled form (sm_90a, bf16) has tensor-core instructions."""
    tensor_ok = {c.result["kernel"]: c.tensor_core > 0 for c in checks
                 if "error" not in c.result and c.result.get("mode") is not None
                 and " " not in c.result["mode"]}
    return spec_model(program, sizes, gpu, tensor_ok=tensor_ok)


MODEL_SHAPE = {"B": 4, "T": 4096, "H": 16}
MODEL_DIM = 128


def model_command(program, shape: str | None, gpu_name: str) -> int:
    """`seqc bench SPEC --model h100 [--shape ...]`: the model table of every Triton mode."""
    from .bench import parse_shape
    dims = tuple(d.name for d in program.spec.dims)
    given = parse_shape(shape, dims) if shape else {}
    named = {item.split("=")[0].strip() for item in (shape or "").split(",") if "=" in item}
    sizes = {**MODEL_SHAPE, **{d: MODEL_DIM for d in dims},
             **{k: v for k, v in given.items() if k in named}}
    gpu = GPUS[gpu_name]
    model = spec_model(program, sizes, gpu)
    print(model_table([model], gpu, {k: sizes[k] for k in ("B", "T", "H")}, kernels=True))
    print(f"\nmode=None runs {model['chosen']} at this shape (_choose_mode: "
          f"{choice_rule(program)})")
    return 0


def choice_rule(program) -> str:
    module = program.kernel("triton").module
    return getattr(module, "CHOICE_RULE", f"always {module.DEFAULT_MODE}")
