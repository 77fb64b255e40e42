"""Global memory a Triton program stores and loads back is ordered by a `tl.debug_barrier()`
(docs/backends.md, "Scratch read back in one program"): the interpreter runs a program as one
block and cannot show the race, so the emitted modules are checked statically
(tests/barrier_lint.py)."""
import textwrap

import pytest

import seqc
from barrier_lint import hazards

# every Triton kernel template is in one of these modules (each module holds every constexpr
# branch of its kernels); gru's backward has the per-program scratch and the R @ h products
SPECS = ["kda", "rwkv7", "gla", "mlstm", "gru", "mamba", "maxplus"]


@pytest.mark.parametrize("name", SPECS)
def test_emitted_kernels_order_their_read_back_scratch(name):
    assert hazards(seqc.load(name).emit("triton")) == []


def test_newton_kernels_order_their_read_back_scratch():
    """solver="newton"'s module: newton_step, with scan_core and coupled_scan_core."""
    from seqc.newton import triton_source
    assert hazards(triton_source(seqc.load("gru"))) == []


KERNEL = '''
@triton.jit
def kernel(ptr_x, ptr_y, ptr_out, N, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    p = ptr_y + o
    tl.store(p, tl.load(ptr_x + o))             # through the alias p
    {between}
    s = tl.sum(tl.load(ptr_y + o[:, None] * BLOCK + o[None, :]), axis=1)
    for i in range(0, N):                       # each iteration its own block: fine
        tl.store(ptr_out + i * BLOCK + o, tl.load(ptr_out + i * BLOCK + o) + s)
    {helper}
'''
PARK = '''
@triton.jit
def _park(ptr, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    tl.store(ptr + o, o)
    return tl.load(ptr + tl.flip(o, 0))
'''


def _lint(between="", helper=""):
    code = textwrap.dedent(KERNEL).format(between=between, helper=helper)
    return hazards(code + (PARK if helper else ""))


def test_lint_flags_a_read_back_without_barrier_and_only_it():
    assert _lint() == [("kernel", "ptr_y", 6, 8)]
    assert _lint(between="tl.debug_barrier()") == []
    # a helper parking in its pointer argument and reading it back: found through the call
    assert _lint(between="tl.debug_barrier()", helper="_park(ptr_x, BLOCK)") \
        == [("kernel", "ptr_x", 16, 17)]


def test_a_barrier_on_every_path_of_the_store_orders_a_later_load():
    """kda's WY kernel: dk stored and ordered under one test, read back under a wider one."""
    code = textwrap.dedent('''
    @triton.jit
    def kernel(ptr_x, ptr_y, A: tl.constexpr, B: tl.constexpr, BLOCK: tl.constexpr):
        o = tl.arange(0, BLOCK)
        if A and not B:
            tl.store(ptr_y + o, tl.load(ptr_x + o))
            {barrier}
        if A:
            tl.store(ptr_x + o, tl.load(ptr_y + tl.flip(o, 0)))
    ''')
    assert hazards(code.format(barrier="tl.debug_barrier()")) == []
    assert hazards(code.format(barrier="pass")) == [("kernel", "ptr_y", 6, 9)]
    # a barrier under another test does not order it
    other = code.format(barrier="pass").replace(
        "    if A:\n", "    if B:\n        tl.debug_barrier()\n    if A:\n")
    assert hazards(other) == [("kernel", "ptr_y", 6, 11)]
