"""What each kernel of a mode moves, computes and launches, counted under the Triton interpreter:
the inputs of the GPU performance model (seqc/gpu_model.py).

- `count_mode`: per kernel, the bytes of every load and store it executes and the FLOPs of
  every `tl.dot` (2 M N K) by the unit its operands run on (`UNITS`: 16-bit on the tensor cores,
  fp32 in "tf32", fp32 in "ieee" on fp32 FMA), for one call at a small shape; beside them the
  call's compulsory bytes (`COMPULSORY`) and the host's cast of fp32 outputs (`HOST_CAST`);
- `extrapolated`: those counts at a call shape, counted at B = H = 1 and the two lengths
  `COUNT_T` and taken as a + b T per batch x head;
- `launch_grids`: per kernel, the programs of each launch at the call shape (the module's `run`
  on `meta` tensors: nothing runs).
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field

COUNT_T = (128, 256)      # the lengths counted under the interpreter (B = H = 1): whole
                          # chunks of every default (chunk_parallel's 128), so counts are linear
UNITS = ("tensor", "tf32", "fma")
COMPULSORY = ""           # count_mode's entry for the call's compulsory bytes (no kernel)
HOST_CAST = "output cast (torch)"   # count_mode's entry for the cast of fp32 outputs to 16 bits
LAUNCH_THRESHOLD = "WIDE_VALUE_PROGRAMS"    # a module's launch-size rule (blockwise.md "Blocks")


@dataclass
class KernelCount:
    """What one kernel (all its launches in one call) moved and computed."""
    bytes: float = 0.0
    scratch: float = 0.0                # of which buffers the mode allocates (chunk states)
    flops: dict = field(default_factory=lambda: dict.fromkeys(UNITS, 0.0))

    def add(self, other: "KernelCount", scale: float = 1.0) -> None:
        self.bytes += scale * other.bytes
        self.scratch += scale * other.scratch
        for unit in UNITS:
            self.flops[unit] += scale * other.flops[unit]


def dot_unit(a, precision) -> str:
    if a.dtype.scalar.primitive_bitwidth == 16:
        return "tensor"
    return "tf32" if "TF32" in str(precision).upper() else "fma"


@contextmanager
def counting_kernels():
    """Per interpreted launch, in order: (kernel name, KernelCount). Bytes as seqc/bench_io.py
    counts them; FLOPs of every `tl.dot` by the unit its operands run on."""
    from triton.runtime import interpreter

    from .bench_io import counting
    launches: list[tuple[str, KernelCount, int]] = []
    builder, executor = interpreter.InterpreterBuilder, interpreter.GridExecutor
    dot, call = builder.create_dot, executor.__call__

    def counted_dot(self, a, b, d, precision, imprecise):
        if launches:
            m, k = a.data.shape[-2:]
            n = b.data.shape[-1]
            launches[-1][1].flops[dot_unit(a, precision)] += 2.0 * m * n * k
        return dot(self, a, b, d, precision, imprecise)

    with counting() as counts:
        def counted_call(self, *args, **kwargs):
            launches.append((self.fn.__name__, KernelCount(), len(counts["events"])))
            before = counts["loaded"] + counts["stored"]
            try:
                return call(self, *args, **kwargs)
            finally:
                launches[-1][1].bytes = counts["loaded"] + counts["stored"] - before

        builder.create_dot, executor.__call__ = counted_dot, counted_call
        try:
            yield launches, counts
        finally:
            builder.create_dot, executor.__call__ = dot, call


def count_mode(program, mode: str, sizes: dict, dtype, options: dict) -> dict[str, KernelCount]:
    """Per kernel name, what one call of `mode` at `sizes` (small: interpreted) moves; under
    COMPULSORY, the bytes of the call's tensors (inputs, params, outputs in `dtype`, final state
    fp32); under HOST_CAST, the cast of outputs the kernels wrote wider than `dtype`."""
    from .bench_io import compulsory, scratch_bytes
    from .inputs import random_call
    os.environ.setdefault("TRITON_INTERPRET", "1")
    tensors, _ = random_call(program.spec, sizes, dtype=dtype)
    inputs, params, dims = call_args(program, sizes, tensors)
    module = program.kernel("triton").module
    with counting_kernels() as (launches, counts):
        outputs, final = module.run(inputs, params, dims, None, True, mode=mode, **options)
    mine = [*tensors.values(), *outputs.values(), *final.values()]
    kernels: dict[str, KernelCount] = {COMPULSORY: KernelCount(sum(compulsory(
        tensors, outputs, final, dtype)))}
    wide = [o for o in outputs.values() if o.dtype.itemsize > dtype.itemsize]
    if wide:        # seqc/kernel.py casts them after the kernels: read them, write the call's
        kernels[HOST_CAST] = KernelCount(sum(o.numel() * (o.element_size() + dtype.itemsize)
                                             for o in wide))
    starts = [start for _, _, start in launches] + [len(counts["events"])]
    for (name, count, start), end in zip(launches, starts[1:]):
        count.scratch = scratch_bytes(counts["events"][start:end], mine)
        kernels.setdefault(name, KernelCount()).add(count)
    return kernels


def call_shapes(spec, sizes: dict):
    from . import ir
    lead = {ir.TensorKind.INPUT: [sizes["B"], sizes["T"], sizes["H"]]}
    return [(t, lead.get(t.kind, [sizes["H"]]) + [sizes[d] for d in t.dims])
            for t in spec.inputs + spec.params]


def call_args(program, sizes: dict, tensors: dict) -> tuple[dict, dict, dict]:
    """The emitted module's `run` arguments: inputs, params, dims (with the spec's consts)."""
    from .consts import const_values
    spec = program.spec
    inputs = {x.name: tensors[x.name] for x in spec.inputs}
    params = {p.name: tensors[p.name] for p in spec.params}
    return inputs, params, {**sizes, **const_values(spec, sizes, {}, [])}


_COUNTED: dict = {}


def extrapolated(program, mode: str, sizes: dict, dtype, options: dict) -> dict[str, KernelCount]:
    """Per kernel, the count at `sizes`: counted at B = H = 1 and T in COUNT_T, a + b T per
    batch x head."""
    small = dict(sizes, B=1, H=1)
    (t1, t2) = COUNT_T
    heads, T = sizes["B"] * sizes["H"], sizes["T"]
    module = program.kernel("triton").module
    wide = getattr(module, LAUNCH_THRESHOLD, None)
    key = (program.name, program.emit("triton"), mode, tuple(sorted(dict(small, T=0).items())),
           str(dtype), tuple(sorted(options.items())), None if wide is None else wide / heads)
    if key not in _COUNTED:         # other B, T, H of the same call: the same two counts
        with launch_threshold_per_head(module, heads):
            _COUNTED[key] = (count_mode(program, mode, dict(small, T=t1), dtype, options),
                             count_mode(program, mode, dict(small, T=t2), dtype, options))
    first, second = _COUNTED[key]
    (w1, w2) = count_weights(T, heads)
    out: dict[str, KernelCount] = {}
    for name in first.keys() | second.keys():
        total = KernelCount()
        total.add(first.get(name, KernelCount()), w1)
        total.add(second.get(name, KernelCount()), w2)
        out[name] = total
    return out


def count_weights(T: int, heads: int) -> tuple[float, float]:
    """The weights of the counts at COUNT_T that give a + b T at length T, times `heads`:
    a(T) = a(t1) + (a(t2) - a(t1)) (T - t1) / (t2 - t1)."""
    (t1, t2) = COUNT_T
    slope = (T - t1) / (t2 - t1)
    return heads * (1 - slope), heads * slope


@contextmanager
def launch_threshold_per_head(module, heads: int):
    """A module's threshold on a launch's programs (`WIDE_VALUE_PROGRAMS`: the SMs chunk_delta's
    choice of value block weighs a launch's programs against, `_chunk_delta_value_time`) divided
    by the call's B x H while counting at B = H = 1, so that the count takes the call shape's
    blocks."""
    wide = getattr(module, LAUNCH_THRESHOLD, None)
    if wide is None:
        yield
        return
    setattr(module, LAUNCH_THRESHOLD, wide / heads)
    try:
        yield
    finally:
        setattr(module, LAUNCH_THRESHOLD, wide)


def launch_grids(program, mode: str, sizes: dict, dtype, options: dict) -> dict[str, list[int]]:
    """Per kernel name, the programs of each of its launches at `sizes`: the module's `run` on
    `meta` tensors under the interpreter, every launch recorded and none run."""
    import inspect

    import torch
    from triton.runtime import interpreter

    os.environ.setdefault("TRITON_INTERPRET", "1")
    spec, module = program.spec, program.kernel("triton").module
    grids: dict[str, list[int]] = {}

    def record(self, *args, grid, warmup, **kwargs):
        if callable(grid):
            grid = grid(inspect.getcallargs(self.fn, *args, **kwargs))
        grids.setdefault(self.fn.__name__, []).append(math.prod(int(g) for g in grid))

    tensors = {t.name: torch.empty(list(shape), dtype=dtype, device="meta")
               for t, shape in call_shapes(spec, sizes)}
    inputs, params, dims = call_args(program, sizes, tensors)
    run = interpreter.InterpretedFunction.run
    interpreter.InterpretedFunction.run = record
    try:
        module.run(inputs, params, dims, None, True, mode=mode, **options)
    finally:
        interpreter.InterpretedFunction.run = run
    return grids
