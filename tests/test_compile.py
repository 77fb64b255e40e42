"""Compile-clean kernels (seqc/custom_ops.py, docs/compile.md): every stdlib spec's torch kernel
is one `torch.ops.seqc` op under torch.compile(fullgraph=True, dynamic=True) and torch.export,
with no graph break, no recompile when T changes, and gradients equal to eager.

Compiled with the `aot_eager` backend (the graph and the autograd graph as inductor gets them,
without inductor's slow C++ compile on a 2-core machine).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import seqc
from seqc.inputs import random_call

STDLIB = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "stdlib").glob("*.seq"))
SIZES = {"B": 2, "H": 2}
DIM = 4


def _call(prog, T: int, seed: int, grad: bool = False, initial_state: bool = True):
    """fla-style positional tensors and a random initial state (a dict by state name)."""
    sizes = {**SIZES, "T": T, **{d.name: DIM for d in prog.spec.dims}}
    tensors, states = random_call(prog.spec, sizes, seed=seed, with_initial_state=initial_state)
    tensors = [t.requires_grad_(grad) for t in tensors.values()]
    states = {n: s.requires_grad_(grad) for n, s in (states or {}).items()} or None
    return tensors, states


def _flat(results) -> list[torch.Tensor]:
    *outputs, final = results
    return [*outputs, *(final.values() if isinstance(final, dict) else [final])]


def _runner(prog, backend="torch"):
    op = prog.op(backend)

    def run(tensors, states):
        return _flat(op(*tensors, initial_state=states, output_final_state=True))
    return op, run


def _close(got, expected, tol=1e-5):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=tol, atol=tol)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", STDLIB)
def test_compiled_call_is_one_op_without_break_or_recompile_and_with_eager_gradients(name):
    prog = seqc.load(name)
    op, run = _runner(prog)
    tensors, states = _call(prog, 5, seed=1)
    explained = torch._dynamo.explain(run)(tensors, states)
    assert explained.graph_break_count == 0, explained.break_reasons
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(run, backend=counter, fullgraph=True, dynamic=True)
    for T, seed in ((5, 1), (40, 2)):               # 40 > one chunk of 32
        tensors, states = _call(prog, T, seed, grad=True)
        got, expected = compiled(tensors, states), run(tensors, states)
        _close(got, expected)
        if T == 5:
            _same_gradients(got, expected, [*tensors, *states.values()])
    assert counter.frame_count == 1                 # one compile for every T
    name_of_op = op.kernel.ops.name
    assert hasattr(torch.ops.seqc, name_of_op)
    graph_ops = [str(node.target) for graph in counter.graphs for node in graph.graph.nodes
                 if node.op == "call_function"]
    assert f"seqc.{name_of_op}" in graph_ops          # dynamo's graph: the op, nothing of its body


def _same_gradients(got, expected, leaves, tol=1e-5):
    """Gradients of one random weighting of the results, through the compiled and the eager call."""
    weights = [torch.randn(r.shape, generator=torch.Generator().manual_seed(i))
               for i, r in enumerate(expected)]
    grads = [torch.autograd.grad(sum((r * w).sum() for r, w in zip(results, weights)), leaves,
                                 allow_unused=True)
             for results in (got, expected)]
    for g, e in zip(*grads):
        if e is None:
            assert g is None or not g.any()
        else:
            torch.testing.assert_close(g, e, rtol=tol, atol=tol)


class _Exported(torch.nn.Module):
    def __init__(self, run):
        super().__init__()
        self.run = run

    def forward(self, tensors, states):
        return self.run(tensors, states)


@pytest.mark.parametrize("name", STDLIB)
def test_torch_export_with_a_dynamic_sequence_length(name):
    prog = seqc.load(name)
    op, run = _runner(prog)
    tensors, states = _call(prog, 6, seed=5)
    T = torch.export.Dim("T", min=2, max=1 << 16)
    inputs = {t.name for t in prog.spec.inputs}
    names = [t.name for t in prog.spec.inputs + prog.spec.params]
    shapes = ([{1: T} if n in inputs else None for n in names], {n: None for n in states})
    exported = torch.export.export(_Exported(run), (tensors, states), dynamic_shapes=shapes)
    targets = [str(node.target) for node in exported.graph.nodes if node.op == "call_function"]
    assert f"seqc.{op.kernel.ops.name}.default" in targets     # the registered op, by name
    tensors, states = _call(prog, 13, seed=6)
    _close(list(exported.module()(tensors, states)), run(tensors, states))


def test_packed_sequences_compile_into_the_op():
    """cu_seqlens reaches the op as a tensor: its bounds are read when the op runs, not traced."""
    prog = seqc.load("simple_gla")
    op = prog.op("torch")

    def run(tensors, cu_seqlens):
        o, final = op(*tensors, cu_seqlens=cu_seqlens, output_final_state=True)
        return [o, final]
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(run, backend=counter, fullgraph=True, dynamic=True)
    for lengths, seed in (([3, 5], 7), ([2, 6, 4], 8)):
        tensors, _ = _call(prog, sum(lengths), seed)
        tensors = [t[:1] for t in tensors]
        cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
        _close(compiled(tensors, cu_seqlens), run(tensors, cu_seqlens))
    assert counter.frame_count == 1


def test_bad_call_under_compile_is_the_eager_value_error():
    prog = seqc.load("gla")
    op = prog.op("torch")
    tensors, _ = _call(prog, 5, seed=9, initial_state=False)
    tensors[2] = tensors[2][:, :4]          # v shorter in time than q
    compiled = torch.compile(lambda *xs: op(*xs)[0], backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match=r"input `v` has shape \[2, 4, 2, 4\].*T = 4 disagrees"):
        compiled(*tensors)


def test_op_names_are_stable_and_tell_options_apart():
    prog = seqc.load("gla")
    default, other = prog.kernel("torch"), prog.kernel("torch", chunk_size=16)
    assert default.ops.name == prog.kernel("torch").ops.name
    assert default.ops.name != other.ops.name
    assert default.ops.name.startswith("gla_torch_") and default.ops.name.isidentifier()
    cores = [prog.kernel("torch", chunk_core=lambda *a: None) for _ in range(2)]
    assert cores[0].ops.name != cores[1].ops.name      # two functions of one name: two ops
    newton = [prog.kernel("torch", solver="newton"), prog.kernel("torch", solver="newton", tol=1e-3)]
    names = {default.ops.name, newton[0].ops.name, newton[1].ops.name}
    assert len(names) == 3, "a solver's kernel is not the step loop's op, nor another tol's"


def test_triton_kernel_compiles_into_its_op():
    """TRITON_INTERPRET (tests/conftest.py): the Triton kernel is a registered op too."""
    prog = seqc.load("simple_gla")
    _, run = _runner(prog, "triton")
    tensors, states = _call(prog, 5, seed=10, grad=True)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(run, backend=counter, fullgraph=True, dynamic=True)
    got, expected = compiled(tensors, states), run(tensors, states)
    _close(got, expected, tol=1e-4)
    _same_gradients(got, expected, [*tensors, *states.values()], tol=1e-4)
    assert counter.frame_count == 1


def test_auto_backend_compiles_on_its_first_call():
    """`prog.op()` (backend "auto") builds its likely kernel up front: none is built in a trace."""
    prog = seqc.load("gla")
    op = prog.op()
    tensors, _ = _call(prog, 5, seed=11, initial_state=False)
    compiled = torch.compile(lambda *xs: op(*xs, scale=0.5)[0], backend="aot_eager",
                             fullgraph=True, dynamic=True)
    _close([compiled(*tensors)], [op(*tensors, scale=0.5)[0]])


def test_opcheck_forward_and_backward_ops_with_strided_inputs():
    """torch.library.opcheck: schema, fake vs real shapes and strides, autograd registration,
    AOT dispatch, for both ops; q is a non-contiguous view (its gradient keeps q's strides)."""
    prog = seqc.load("gla")
    kernel = prog.kernel("torch")
    tensors, states = _call(prog, 6, seed=12, grad=True)
    q = tensors[0].detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    assert not q.is_contiguous()
    tensors[0] = q
    n_in, consts = len(prog.spec.inputs), [None] * len(prog.spec.consts)
    call = (tensors[:n_in], tensors[n_in:], list(states.values()), None, True)
    for result in torch.library.opcheck(kernel.ops.forward, (*call, *consts)).values():
        assert result == "SUCCESS"
    grads = [torch.randn(r.shape) for r in kernel.ops.forward(*call, *consts)]
    needs = [True] * (len(tensors) + len(states))
    checks = torch.library.opcheck(kernel.ops.backward, (*call, grads, needs, *consts),
                                   test_utils=("test_schema", "test_faketensor"))
    assert set(checks.values()) == {"SUCCESS"}


def test_packed_sequences_with_one_of_two_initial_states_get_its_gradient():
    """lstm has states h and c: with cu_seqlens and only `c` given, the op gets `h` at its init,
    so that `c`'s gradient flows through the compiled call as through the eager one."""
    prog = seqc.load("lstm")
    op = prog.op("torch")
    tensors, _ = _call(prog, 7, seed=13, initial_state=False)
    n_in = len(prog.spec.inputs)
    tensors = [(t[:1] if i < n_in else t).requires_grad_() for i, t in enumerate(tensors)]
    c = torch.randn(2, 2, DIM, generator=torch.Generator().manual_seed(14)).requires_grad_()
    cu_seqlens = torch.tensor([0, 3, 7])

    def run(tensors, c):
        *outputs, final = op(*tensors, cu_seqlens=cu_seqlens, initial_state={"c": c},
                             output_final_state=True)
        return [*outputs, *final.values()]
    compiled = torch.compile(run, backend="aot_eager", fullgraph=True, dynamic=True)
    got, expected = compiled(tensors, c), run(tensors, c)
    _close(got, expected)
    _same_gradients(got, expected, [*tensors, c])
