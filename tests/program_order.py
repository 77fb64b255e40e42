"""The Triton interpreter with each launch's programs run in reverse order.

Under TRITON_INTERPRET=1 a launch runs its programs one after another, x, then y, then z, each
from 0 up. On a GPU they run at once, in no order. A kernel whose program reads what another
program of the same launch writes, or where two programs write one place, gives the interpreter's
answer only by luck of that order. Run the same call again in reverse order: such a kernel's
result changes, a kernel whose programs are independent gives the same bits.
"""
import inspect
import textwrap
from contextlib import contextmanager

FORWARD = ("for x in range(grid[0]):", "for y in range(grid[1]):", "for z in range(grid[2]):")


def _reversed_call():
    from triton.runtime import interpreter
    source = textwrap.dedent(inspect.getsource(interpreter.GridExecutor.__call__))
    for loop in FORWARD:
        assert loop in source, f"the interpreter's grid loop changed: {loop!r} not found"
        dim = loop.split("range(")[1].rstrip("):")
        source = source.replace(loop, f"{loop.split(' in ')[0]} in reversed(range({dim})):")
    namespace = {}
    exec(compile(source, "<reversed GridExecutor.__call__>", "exec"), vars(interpreter), namespace)
    return namespace["__call__"]


@contextmanager
def programs_in_reverse():
    """Inside the block, every interpreted launch runs its programs from the last to the first."""
    from triton.runtime import interpreter
    forward = interpreter.GridExecutor.__call__
    interpreter.GridExecutor.__call__ = _reversed_call()
    try:
        yield
    finally:
        interpreter.GridExecutor.__call__ = forward


def order_differences(name: str, mode: str, size: int, B: int = 2, T: int = 37, H: int = 3,
                      chunk_size: int = 16, block_split: int = 128) -> dict:
    """Per output, final state and gradient of `name`'s Triton `mode` (every dim at `size`, value
    blocks of at most `block_split` lanes), the largest difference between programs run in order
    and in reverse; all 0.0 when independent."""
    import seqc
    from oracles import SPECS, random_inputs, random_state
    from test_gradients import gradients_of

    dims = {d: size for d in SPECS[name].dims}
    x, p = random_inputs(name, B, T, H, dims=dims, seed=1)
    s = random_state(name, B, H, dims=dims, seed=1)
    kernel = seqc.load(name).kernel("triton", mode=mode, chunk_size=chunk_size,
                                    block_split=block_split)

    def run():
        out = kernel(**x, **p, initial_state=s, output_final_state=True)
        got = {f"output {n}": out[n] for n in out.keys()}
        got.update({f"final {n}": v for n, v in out.final_state.items()})
        got.update({f"grad {n}": g for n, g in gradients_of(kernel, x, p, s).items()
                    if g is not None})
        return got

    first = run()
    with programs_in_reverse():
        second = run()
    assert first.keys() == second.keys()
    return {n: (first[n].double() - second[n].double()).abs().nan_to_num(float("inf")).max().item()
            if not first[n].equal(second[n]) else 0.0 for n in first}
