"""fla's Triton ops under the Triton interpreter: the GPU comparison's baselines, run on a CPU.

`python -m seqc.gpu_bench` sets seqc's Triton kernels against fla-core's Triton ops on a GPU.
fla's ops also run under `TRITON_INTERPRET=1` once two things the interpreter does not do are
done for them, which `interpreted_fla()` does for the block it guards:

1. Autotuning: Triton's autotuner times its configurations on a device, which the interpreter has
   not (it asks for a driver and fails). Inside the block every autotuned kernel with more than
   one configuration runs the one with the widest blocks (the largest product of its `B*`
   block sizes, the first on a tie): the configuration that re-reads the least, so that bytes
   counted under the interpreter are the fewest fla's kernels can move, not a narrow choice.
2. Loop indices: fla's kernels write `i_t.to(tl.int64)` of a `for i_t in range(NT)` index. The
   interpreter runs the loop in Python, where the index is an `int` without `.to`. Inside the
   block the `range` of every loaded `fla.ops` module yields `LoopIndex`, an `int` with `.to`
   (a cast to an interpreter scalar); everything else an `int` does, it does (host code too).
3. Aliases of Triton builtins: `gather = tl.gather` in a module binds the builtin itself, which
   the interpreter does not replace (it patches `tl`'s attributes while a kernel runs), so the
   call fails. Inside the block such a global calls `tl`'s attribute of the same name at call
   time instead.
4. Masks: the interpreter's `&` of a block mask and a broadcast scalar comparison can give an
   int64 block, which its load and store reject ("mask has unsupported dtype"; fla's hgrn
   kernels). Inside the block a load's or store's mask is taken as `mask != 0`, as a GPU does.
5. bf16: the interpreter holds bf16 as its uint16 bits and computes on those (`a + b`, `-a`,
   `tl.dot`, comparisons, casts): fla's delta-rule ops, which take bf16 only, came out garbage.
   The block installs the hooks seqc's emitted modules install (backends/triton/
   interpreter_bf16.py: exact fp32 values, rounded to nearest even as a GPU rounds); they stay.

Nothing of fla is copied or edited; outside the block fla runs as installed.
"""
from __future__ import annotations

import builtins
import math
import sys
from contextlib import contextmanager


class LoopIndex(int):
    """A Python loop index that also answers the `.to(dtype)` of a Triton scalar, and so does
    integer arithmetic on it (`(i_t * BT).to(tl.int64)`)."""

    def to(self, dtype, **kwargs):
        import triton.language as tl
        return tl.full((), int(self), dtype)


def _closed(name):
    method = getattr(int, name)

    def apply(self, *other):
        result = method(self, *other)
        return LoopIndex(result) if type(result) is int else result
    return apply


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
              "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__neg__",
              "__lshift__", "__rshift__"):
    setattr(LoopIndex, _name, _closed(_name))


def _range(*bounds):
    return map(LoopIndex, builtins.range(*(int(b) for b in bounds)))


def widest(configs):
    """The configuration whose `B*` block sizes (BK, BV, BT, ...) have the largest product."""
    def width(config):
        return math.prod(v for k, v in config.kwargs.items()
                         if k.startswith("B") and isinstance(v, int) and v > 0)
    best = max(width(c) for c in configs)
    return next(c for c in configs if width(c) == best)


class _Builtin:
    """Calls `triton.language.<name>` as it is at call time (the interpreter's while it runs)."""

    def __init__(self, name):
        self.name = name

    def __call__(self, *args, **kwargs):
        import triton.language as tl
        return getattr(tl, self.name)(*args, **kwargs)


def _builtins_by_id():
    import triton.language as tl
    return {id(v): k for k, v in vars(tl).items() if getattr(v, "__triton_builtin__", False)}


def _fla_modules():
    return [m for name, m in list(sys.modules.items())
            if m is not None and (name == "fla.ops" or name.startswith("fla.ops."))]


@contextmanager
def interpreted_fla():
    """Run fla-core's Triton ops under the Triton interpreter inside the block (see above)."""
    from triton.runtime.autotuner import Autotuner
    import numpy as np
    from .backends.triton.interpreter_bf16 import bf16_in_the_interpreter
    from triton.runtime.interpreter import InterpretedFunction, InterpreterBuilder, TensorHandle
    run, interpreted_run = Autotuner.run, InterpretedFunction.run

    def run_widest(self, *args, **kwargs):
        if len(self.configs) <= 1:
            return run(self, *args, **kwargs)
        saved, self.configs = self.configs, [widest(self.configs)]
        try:
            return run(self, *args, **kwargs)
        finally:
            self.configs = saved

    def patch(module, name, value):
        patched.setdefault((module, name), module.__dict__.get(name, _MISSING))
        module.__dict__[name] = value

    def patch_modules():
        for module in _fla_modules():
            if module.__dict__.get("range") is not _range:
                patch(module, "range", _range)
            for name, value in list(module.__dict__.items()):
                if id(value) in builtins_by_id:
                    patch(module, name, _Builtin(builtins_by_id[id(value)]))

    def boolean_mask(method):
        def run(self, ptrs, *args, **kwargs):
            args = list(args)
            mask_at = 0 if method is load else 1    # load(ptrs, mask, ...), store(ptrs, value, mask)
            mask = args[mask_at]
            if mask is not None and mask.data.dtype != np.bool_:
                args[mask_at] = TensorHandle(mask.data != 0, mask.dtype.scalar)
            return method(self, ptrs, *args, **kwargs)
        return run

    def launch(self, *args, **kwargs):      # every launch: a lazy import may load modules
        patch_modules()
        return interpreted_run(self, *args, **kwargs)

    bf16_in_the_interpreter()
    patched: dict = {}
    builtins_by_id = _builtins_by_id()
    load, store = InterpreterBuilder.create_masked_load, InterpreterBuilder.create_masked_store
    Autotuner.run, InterpretedFunction.run = run_widest, launch
    InterpreterBuilder.create_masked_load = boolean_mask(load)
    InterpreterBuilder.create_masked_store = boolean_mask(store)
    try:
        yield
    finally:
        Autotuner.run, InterpretedFunction.run = run, interpreted_run
        InterpreterBuilder.create_masked_load, InterpreterBuilder.create_masked_store = load, store
        for (module, name), before in patched.items():
            if before is _MISSING:
                module.__dict__.pop(name, None)
            else:
                module.__dict__[name] = before


_MISSING = object()
