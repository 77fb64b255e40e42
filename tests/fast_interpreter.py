"""Two shortcuts for Triton's interpreter in the suite; each leaves what a kernel computes bit for
bit as it was (tests/test_fast_interpreter.py), only the interpreter's own bookkeeping is cut.

1. Custom scans and reduces a slice at a time. Triton's interpreter runs `tl.associative_scan` and `tl.reduce` with a combine function of
the kernel's own (seqc's affine, semiring and coupled combines) one ELEMENT at a time: for a
[16, 256] block scanned along axis 0 it calls the combine 4096 times on scalars, and that loop
was most of the time of the scan tests (a mamba `scan_parallel` call at T = 70: 46 s).

`install()` replaces those two fallbacks by the same left-to-right fold taken one SLICE at a
time: position i along the axis is combined with the accumulator of positions < i for every other
index at once. Each element sees exactly the combines, in exactly the order, of the element-wise
loop (out[0] = x[0]; out[i] = combine(out[i-1], x[i]) with the accumulator stored in the input's
dtype between steps), so the kernels compute what they computed before, only with one combine call
per position instead of one per element. Only the interpreter's generic paths are replaced; its
own fast paths (sums, products, min / max, argmin / argmax) are untouched.

2. The language patched once per launch. Every call of a `@triton.jit` device function (seqc's
kernels call many: combines, gates, dot helpers) re-ran the interpreter's `_patch_lang`, which
walks every member of triton.language (inspect.getmembers) to wrap its builtins, although the
launch had wrapped them already: 42% of an rwkv7 `chunk_dplr` call. A wrapped builtin is no longer
a builtin, so when every language module the function sees already has its builtins wrapped, the
walk would change nothing, and it is skipped (with an empty scope to restore).
"""
import numpy as np
import triton.language as tl
from triton.runtime import interpreter


def _slice(array, i, axis):
    return np.take(array, i, axis=axis)


def _fold(op, inputs, axis, keep):
    """The left fold of op.combine_fn along axis; keep(j, i, acc) records the accumulator of
    input j after position i and returns it as stored (in the input's dtype)."""
    data = [arg.handle.data for arg in inputs]
    acc = [keep(j, 0, _slice(d, 0, axis)) for j, d in enumerate(data)]
    for i in range(1, data[0].shape[axis]):
        previous = tuple(op.to_tensor(a, arg.dtype) for a, arg in zip(acc, inputs))
        current = tuple(op.to_tensor(_slice(d, i, axis), arg.dtype) for d, arg in zip(data, inputs))
        result = op.combine_fn.fn(*previous, *current)
        result = result if isinstance(result, tuple) else (result,)
        acc = [keep(j, i, r.handle.data if isinstance(r, tl.core.tensor) else r)
               for j, r in enumerate(result)]
    return acc


def _generic_scan(self, input):
    data = [arg.handle.data for arg in input]
    out = [np.zeros(d.shape, dtype=d.dtype) for d in data]

    def keep(j, i, value):
        view = np.moveaxis(out[j], self.axis, 0)
        view[i] = np.reshape(value, view.shape[1:]) if np.size(value) == view[i].size else value
        return view[i].copy()

    _fold(self, input, self.axis, keep)
    return [self.to_tensor(o, arg.dtype) for o, arg in zip(out, input)]


def _generic_reduce(self, input):
    input, axis = self.unravel(input, self.axis)  # axis None: a reduce over the flat block
    shape = input[0].handle.data.shape
    reduced = shape[:axis] + shape[axis + 1:]

    def keep(j, i, value):
        stored = np.zeros(reduced, dtype=input[j].handle.data.dtype)
        stored[...] = np.reshape(value, reduced) if np.size(value) == stored.size else value
        return stored

    ret = []
    for data, arg in zip(_fold(self, input, axis, keep), input):
        if self.keep_dims:
            if self.axis is not None:
                data = np.expand_dims(data, axis)
            else:
                for _ in range(len(shape)):
                    data = np.expand_dims(data, 0)
        elif self.axis is None:
            data = data.item()
        ret.append(self.to_tensor(data, arg.dtype))
    return ret


def _patch_lang_once(fn):
    languages = {id(v): v for v in fn.__globals__.values() if v is tl or v is tl.core}.values()
    if languages and not any(tl.core.is_builtin(lang.dot) for lang in languages):
        return interpreter._LangPatchScope()
    return ORIGINAL["patch_lang"](fn)


ORIGINAL = {"scan": interpreter.ScanOps.generic_scan, "reduce": interpreter.ReduceOps.generic_reduce,
            "patch_lang": interpreter._patch_lang}


def install():
    interpreter.ScanOps.generic_scan = _generic_scan
    interpreter.ReduceOps.generic_reduce = _generic_reduce
    interpreter._patch_lang = _patch_lang_once
