"""Registers and spills of the fused recurrent training kernels (the forward keeping its
checkpoints, fused_recurrent_bwd_kernel), compiled for a GPU without one, as `seqc gpu-check` does:

    python scripts/fused_backward_gpu_check.py lstm:128 gla:64 --arch 80 90 --dtype bf16

Each SPEC:SIZE sets every dim of the spec to SIZE; call shape B=4, T=4096, H=16. The training
call runs on meta tensors with the kernels recorded (seqc.gpu_compile's Recorder), then each
recorded launch is compiled by seqc.gpu_compile (results cached on disk per kernel).
Run without TRITON_INTERPRET=1.
"""
import argparse
import os
import sys

import torch

import seqc
from seqc import gpu_compile
from seqc.gpu_jobs import DEFAULT_SHAPE, emitted_module, spec_jobs


def training_launches(module, job):
    """The launches of one training call (forward and backward) on meta tensors."""
    from triton.runtime.jit import JITFunction
    launches, mode = [], ["fused_recurrent"]
    jitted = {n: v for n, v in vars(module).items() if isinstance(v, JITFunction)}
    dtype = getattr(torch, gpu_compile.TORCH_DTYPES[job["dtype"]])

    def meta(shapes, dtype):
        return {n: torch.empty(s, dtype=dtype, device="meta", requires_grad=True)
                for n, s in shapes.items()}
    for name, fn in jitted.items():
        setattr(module, name, gpu_compile.Recorder(name, fn, launches, mode))
    try:
        outputs, final = module.train(meta(job["inputs"], dtype), meta(job["params"], dtype),
                                      {**job["dims"], **job.get("consts", {})},
                                      meta(job["states"], torch.float32), True)
        loss = sum(o.sum() for o in outputs.values()) + sum(s.sum() for s in final.values())
        loss.backward()
    finally:
        for name, fn in jitted.items():
            setattr(module, name, fn)
    return launches


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--arch", nargs="+", type=int, default=[80, 90])
    parser.add_argument("--dtype", default="bf16")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("run without TRITON_INTERPRET=1")
    print("| spec | size | arch | kernel | grid | registers | spill bytes |")
    print("|---|---|---|---|---|---|---|")
    for item in args.specs:
        name, size = item.split(":")
        program = seqc.load(name)
        for job in spec_jobs(program, {"*": int(size)}, dict(DEFAULT_SHAPE), args.arch,
                             [args.dtype]):
            payload = job.payload()
            module = gpu_compile.import_module(payload["module"])
            for launch in training_launches(module, payload):
                report, compile_it = gpu_compile.bind_launch(launch, payload)
                result = compile_it()
                spill = result.get("spill_store", 0) + result.get("spill_load", 0)
                print(f"| {name} | {size} | sm_{job.arch} | {report['kernel']} | "
                      f"{report['grid']} | {result.get('registers', result.get('error'))} | "
                      f"{spill} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
