# A GPU's bf16 for Triton's interpreter (TRITON_INTERPRET=1), whose own bf16 is its uint16 bits.
# Emitted Triton modules carry this file verbatim (module.py.j2 includes it), so that they stand
# alone; seqc.fla_interpreted imports it to run fla's bf16 ops under the interpreter. Each hook
# changes the interpreter only (a GPU runs none of it); installing twice is a no-op.
import triton.language as tl  # noqa: E402 - emitted modules have imported it already


def _bf16_dots_in_the_interpreter():
    """Triton's interpreter holds bf16 as its uint16 bits and multiplies those in `tl.dot`
    (create_dot converts only 8-bit floats): give it bf16 operands widened to fp32 exactly, as
    a GPU's tensor cores multiply them. Nothing changes on a GPU."""
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_dot, "widens_bf16", False):
        return
    dot = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        a, b = (self.cast_impl(t, tl.float32) if t.dtype.scalar == tl.bfloat16 else t
                for t in (a, b))
        return dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    create_dot.widens_bf16 = True
    builder.create_dot = create_dot


def _bf16_rounded(values):
    """fp32 values (numpy) -> bf16 bits (uint16), rounded to nearest, ties to even, as a GPU
    (cvt.rn.bf16.f32) and torch round; NaN stays a quiet NaN."""
    import numpy as np

    values = np.asarray(values, dtype=np.float32)
    bits = values.view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)      # kept NaN (quiet), whatever the carry did to its bits
    rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def _bf16_widened(bits):
    """bf16 bits (uint16, numpy) -> their fp32 values, exactly."""
    import numpy as np

    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)


def _bf16_rounding_in_the_interpreter():
    """Triton's interpreter converts fp32 to bf16 (a `.to(tl.bfloat16)`, a store of fp32 values
    to a bf16 tensor) by dropping the low 16 bits, rounding toward zero; a GPU (cvt.rn.bf16.f32)
    and torch round to nearest, ties to even: give the interpreter that rounding, so that
    interpreted kernels write the GPU's bf16 outputs bit for bit. Other dtypes to bf16 (a
    comparison's booleans, integers) and bf16 to dtypes but fp32 go through fp32 (the
    interpreter reinterprets the uint16 bits otherwise). Nothing changes on a GPU."""
    import numpy as np
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.cast_impl, "rounds_bf16", False):
        return
    cast, Handle = builder.cast_impl, interpreter.TensorHandle

    def cast_impl(self, src, dst_type):
        bf16_in, bf16_out = src.dtype.scalar == tl.bfloat16, dst_type.scalar == tl.bfloat16
        if bf16_out and not bf16_in:
            return Handle(_bf16_rounded(np.asarray(src.data).astype(np.float32)), tl.bfloat16)
        if bf16_in and not bf16_out and dst_type.scalar != tl.float32:
            return cast(self, Handle(_bf16_widened(src.data), tl.float32), dst_type)
        return cast(self, src, dst_type)

    cast_impl.rounds_bf16 = True
    builder.cast_impl = cast_impl


def _bf16_arithmetic_in_the_interpreter():
    """Triton's interpreter applies numpy's operators to bf16's uint16 bits: `a + b`, `-a`,
    `a * b`, comparisons, `tl.maximum`, `tl.exp`, and the min / max / sum / cumsum of bf16
    blocks come out garbage. Give it a GPU's arithmetic: operands widened to fp32 exactly, the
    operation there, the result rounded to nearest even (a comparison's: booleans). A
    `tl.where` moves bits and stays as it is. Nothing changes on a GPU."""
    import numpy as np
    from triton.runtime import interpreter

    builder, Handle = interpreter.InterpreterBuilder, interpreter.TensorHandle
    if getattr(builder.binary_op, "widens_bf16", False):
        return

    def wide(handle):
        return _bf16_widened(handle.data) if handle.dtype.scalar == tl.bfloat16 else handle.data

    def narrowed(values):
        values = np.asarray(values)
        if values.dtype == np.bool_:
            return Handle(values, tl.int1)
        return Handle(_bf16_rounded(values), tl.bfloat16)

    binary, unary, ternary, fma = (builder.binary_op, builder.unary_op, builder.ternary_op,
                                   builder.create_fma)

    def binary_op(self, lhs, rhs, op):
        if lhs.dtype.scalar != tl.bfloat16:
            return binary(self, lhs, rhs, op)
        return narrowed(op(wide(lhs), wide(rhs)))

    def unary_op(self, arg, op):
        if arg.dtype.scalar != tl.bfloat16:
            return unary(self, arg, op)
        return narrowed(op(wide(arg)))

    def ternary_op(self, lhs, rhs, other, op):
        if op is np.where or other.dtype.scalar != tl.bfloat16:
            return ternary(self, lhs, rhs, other, op)
        return narrowed(op(wide(lhs), wide(rhs), wide(other)))

    def create_fma(self, x, y, z):
        if z.dtype.scalar != tl.bfloat16:
            return fma(self, x, y, z)
        product = np.multiply(wide(x), wide(y), dtype=np.float64)
        return narrowed(np.add(product, wide(z), dtype=np.float64).astype(np.float32))

    def widening(method):    # a reduction's or scan's numpy fast path on one tensor
        def fast_path(self, input, *args, **kwargs):
            first = input[0] if isinstance(input, tuple) else input
            if first.dtype != tl.bfloat16:
                return method(self, input, *args, **kwargs)
            kind = first.type.with_element_ty(tl.float32) if first.type.is_block() \
                else tl.float32
            out = method(self, tl.core.tensor(Handle(wide(first.handle), tl.float32), kind),
                         *args, **kwargs)
            return _tensors_to_bf16(out)
        return fast_path

    def _tensors_to_bf16(out):
        if isinstance(out, (list, tuple)):
            return type(out)(_tensors_to_bf16(t) for t in out)
        if out.dtype != tl.float32:         # an argmin's / argmax's index
            return out
        kind = out.type.with_element_ty(tl.bfloat16) if out.type.is_block() else tl.bfloat16
        return tl.core.tensor(narrowed(out.handle.data), kind)

    for name, method in (("binary_op", binary_op), ("unary_op", unary_op),
                         ("ternary_op", ternary_op), ("create_fma", create_fma)):
        method.widens_bf16 = True
        setattr(builder, name, method)
    for owner, names in ((interpreter.ReduceOps, ("min_max", "sum")),
                         (interpreter.ScanOps, ("cumsum", "cumprod"))):
        for name in names:
            setattr(owner, name, widening(getattr(owner, name)))


def bf16_in_the_interpreter():
    """All three hooks (the emitted module runs this under TRITON_INTERPRET=1)."""
    _bf16_dots_in_the_interpreter()
    _bf16_rounding_in_the_interpreter()
    _bf16_arithmetic_in_the_interpreter()
