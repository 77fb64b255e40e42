"""A GPU performance model that needs no GPU: a lower bound on each Triton kernel's time.

Per mode of a spec's Triton module, at a call shape (default B=4, T=4096, H=16, dims 128, bf16):

- bytes moved: every load and store the kernel executes, counted under the Triton interpreter
  (seqc/bench_io.py) at a shape capped for the interpreter and scaled linearly in B x T x H;
- FLOPs: the Plan's matmul work (seqc/bench.py `flops_per_token`) at the kernel's chunk size
  (64) for the family kernels, at chunk size 1 for the fused recurrent kernel (the chunkwise form
  of one step is the recurrence);
- the rate those FLOPs run at: dense bf16 tensor cores when `seqc gpu-check` finds tensor-core
  instructions in the compiled kernel, else fp32 FMA;
- SM coverage: the launch grid's programs over the GPU's SMs (at most 1). A program runs on one
  SM, so with fewer programs than SMs only that share of bandwidth and compute is reachable.

    predicted = max(bytes / (bandwidth x coverage), FLOPs / (rate x coverage))

and what bounds it is the larger term. It is a lower bound: no latency, no occupancy, no
serial time loop inside a program (the sequential chunk walk of today's family kernels is what
keeps their grid small).
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    name: str
    bandwidth: float        # HBM bytes / s
    tensor: float           # dense bf16 tensor-core FLOP / s
    fma: float              # fp32 FMA FLOP / s
    sms: int
    arch: int               # the gpu-check target whose compiled kernels it runs


GPUS = {
    "h100": GPU("H100 SXM", 3.35e12, 990e12, 67e12, 132, 90),
    "h200": GPU("H200", 4.8e12, 990e12, 67e12, 132, 90),
}
MODEL_CHUNK = 64          # the family kernels' default chunk (module.py.j2)


def predict(gpu: GPU, bytes_moved: float, flops: float, tensor_core: bool,
            programs: int) -> dict:
    coverage = min(1.0, programs / gpu.sms)
    memory = bytes_moved / (gpu.bandwidth * coverage)
    rate = gpu.tensor if tensor_core else gpu.fma
    compute = flops / (rate * coverage)
    bound = "memory" if memory >= compute else ("tensor cores" if tensor_core else "fp32 FMA")
    return dict(coverage=coverage, memory_s=memory, compute_s=compute,
                predicted_s=max(memory, compute), bound=bound)


def traffic(program, mode: str, sizes: dict, dtype) -> tuple[int, dict]:
    """Bytes one call of `mode` moves at `sizes`: counted at the interpreter's capped shape,
    scaled in B x T x H. (Also the capped shape, for the table.)"""
    from .bench_io import INTERPRETED_CAP, counting
    from .inputs import random_call
    os.environ.setdefault("TRITON_INTERPRET", "1")
    capped = {k: min(v, INTERPRETED_CAP[k]) if k in INTERPRETED_CAP else v
              for k, v in sizes.items()}
    tensors, _ = random_call(program.spec, capped, dtype=dtype)
    kernel = program.kernel("triton", mode=mode)
    with counting() as counts:
        kernel(**tensors, output_final_state=True)
    scale = (sizes["B"] * sizes["T"] * sizes["H"]) / (capped["B"] * capped["T"] * capped["H"])
    return int((counts["loaded"] + counts["stored"]) * scale), capped


def model_rows(program, sizes: dict, gpu: GPU, checks) -> list[dict]:
    """One row per compiled kernel of `checks` (KernelChecks of this spec at `sizes`)."""
    import torch

    from .bench import flops_per_token
    plan = program.analysis.plan
    tokens = sizes["B"] * sizes["T"] * sizes["H"]
    rows = []
    for check in checks:
        mode = check.result.get("mode")
        if "error" in check.result or mode is None:
            continue
        chunk = 1 if mode == "fused_recurrent" else MODEL_CHUNK
        flops = flops_per_token(plan, sizes, chunk) * tokens if plan is not None else 0
        moved, capped = traffic(program, mode, sizes, torch.bfloat16)
        row = predict(gpu, moved, flops, check.tensor_core > 0, check.result["programs"])
        rows.append(dict(row, spec=program.name, mode=mode, kernel=check.result["kernel"],
                         programs=check.result["programs"], bytes=moved, flops=flops,
                         tensor_core=check.tensor_core > 0, counted_at=capped))
    return rows


def model_table(rows: list[dict], gpu: GPU, sizes: dict) -> str:
    shape = ",".join(f"{k}={v}" for k, v in sizes.items())
    lines = [f"GPU model: {gpu.name} (HBM {gpu.bandwidth / 1e12:.2f} TB/s, bf16 tensor "
             f"{gpu.tensor / 1e12:.0f} TFLOP/s, fp32 FMA {gpu.fma / 1e12:.0f} TFLOP/s, "
             f"{gpu.sms} SMs); shape {shape}, bf16; lower bounds", "",
             "| spec | mode | programs | SM coverage | MB moved | GFLOP | units | memory ms | "
             "compute ms | predicted ms | bound |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['spec']} | {r['mode']} | {r['programs']} | {r['coverage']:.0%} | "
                     f"{r['bytes'] / 1e6:.1f} | {r['flops'] / 1e9:.2f} | "
                     f"{'tensor' if r['tensor_core'] else 'FMA'} | {r['memory_s'] * 1e3:.3g} | "
                     f"{r['compute_s'] * 1e3:.3g} | {r['predicted_s'] * 1e3:.3g} | {r['bound']} |")
    lines.append("bytes counted under the Triton interpreter at a capped shape and scaled in "
                 "B x T x H; FLOPs from the Plan (seqc/bench.py); units: tensor cores when the "
                 "compiled kernel has mma/wgmma (seqc gpu-check), else fp32 FMA")
    return "\n".join(lines)
