"""The vector-Jacobian rules of backends/triton/vjp.py, one operation at a time, against
torch.autograd of the same step.

Each case is a one-statement spec exercising one operation. The generated Triton lines (the
step's SSA forward and its adjoint) run on fp64 torch tensors through a small stand-in for
`triton.language` (`tl.exp` -> `torch.exp`, `tl.sum` -> `Tensor.sum`, ...): the forward under
autograd gives the reference VJP, the adjoint lines give the generated one. Blocks are padded (4
lanes for dims of 3, the padded lanes filled with NaN), so the masking of every transposed
broadcast is checked too: only real lanes are compared, and they must be finite. Tolerance 1e-7
(fp64): the forward's tanh near 0 is a polynomial (render.py) whose derivative differs from the
rule's 1 - y^2 by O(a^6).
"""
import types

import pytest
import torch

import seqc
from seqc.backends.triton.render import HELPERS, REDUCTION_HELPERS, Constants
from seqc.backends.triton.vjp import Adjoint, NoRule, Step, missing_rules

SIZE, BLOCK = 3, 4
HEAD, HEADS = 1, 2          # the program's head index and the head count (`head`, `H`)

HEADER = """model rule
dims K, V
input a[K], b[K], c[V], m[K, V]
param R[K, K], w[K]
state S[K, V] = 0
"""

CASES = {       # operation -> the update of S exercising it (S, K x V, broadcast from the value)
    "neg": "S = 0.5 * S + (-m)",
    "add": "S = 0.5 * S + (a + c)",
    "sub": "S = 0.5 * S + (m - a)",
    "mul": "S = 0.5 * S * m + a * c",
    "div": "S = S / (2 + exp(b)) + m / (1 + exp(c))",
    "pow number": "S = 0.5 * S + a ** 2 + m ** 3 + exp(b) ** 0.5",
    "pow tensor": "S = 0.5 * S + exp(b) ** m",
    "matmul vector-matrix": "S = 0.5 * S + a * (b @ S) + c * (a @ m)",
    "matmul matrix-vector": "S = 0.5 * S + (R @ a) * c",
    "exp": "S = exp(0.1 * S) + exp(m)",
    "log": "S = log(1 + exp(S)) + log(exp(a) + 1)",
    "sigmoid": "S = sigmoid(S) + sigmoid(m)",
    "logsigmoid": "S = logsigmoid(S) + logsigmoid(a) * c",
    "tanh": "S = tanh(S + m)",
    "softplus": "S = softplus(S) + softplus(m)",
    "silu": "S = silu(S) + silu(a) * c",
    "relu": "S = relu(S) + relu(m)",
    "sqrt": "S = sqrt(exp(S)) + sqrt(exp(a)) * c",
    "rsqrt": "S = rsqrt(1 + exp(S)) + rsqrt(exp(m))",
    "abs": "S = abs(S) + abs(m)",
    "max": "S = max(S, m) + max(relu(a), relu(b)) * c",
    "min": "S = min(S, a) + min(relu(m), relu(-a))",
    "logaddexp": "S = logaddexp(S, m) + logaddexp(a, c)",
    "sum": "S = 0.5 * S + sum(m * S, K) * a",
    "norm": "S = 0.5 * S + norm(m + S, K) * a",
    "l2norm": "S = 0.5 * S + l2norm(m + S, K)",
    "let and params": "let u = w * a + sum(R @ a, K)\nS = u * S + u * c",
    "max over a dim": "S = 0.5 * S + max(m + S, K) * a",
    "max over a dim, tied lanes": "S = 0.5 * S + max(c + 0 * m, K) * a",
    "min over a dim": "S = 0.5 * S + min(m - S, V) * c",
    "mean": "S = 0.5 * S + mean(m * S, K) * a",
    "logsumexp": "S = 0.5 * S + logsumexp(m + S, K) * a",
    "softmax": "S = 0.5 * S + softmax(m + S, K)",
    "softmax over V": "S = softmax(S, V) + m",
    "relabel": "S = 0.5 * S + (a as [V]) * m + (m as [V, K]) * S",
    "head and H": "S = exp(-(head + 1) / H) * S + m",
}


def tl_standin(mask):
    """The subset of `triton.language` the generated step and adjoint use, over torch."""
    tl = types.SimpleNamespace(
        exp=torch.exp, log=torch.log, sqrt=torch.sqrt, rsqrt=torch.rsqrt, abs=torch.abs,
        sigmoid=torch.sigmoid, exp2=torch.exp2, log2=torch.log2,
        maximum=lambda a, b: torch.maximum(torch.as_tensor(a, dtype=torch.float64),
                                           torch.as_tensor(b, dtype=torch.float64)),
        minimum=lambda a, b: torch.minimum(torch.as_tensor(a, dtype=torch.float64),
                                           torch.as_tensor(b, dtype=torch.float64)),
        where=lambda c, a, b: torch.where(torch.as_tensor(c), torch.as_tensor(a, dtype=torch.float64),
                                          torch.as_tensor(b, dtype=torch.float64)),
        sum=lambda x, axis: x.sum(dim=axis),
        max=lambda x, axis: x.amax(dim=axis), min=lambda x, axis: x.amin(dim=axis),
        expand_dims=lambda x, axis: x.unsqueeze(axis), constexpr=None,
        zeros=lambda shape, dtype: torch.zeros(shape, dtype=torch.float64),
        full=lambda shape, value, dtype: torch.full(shape, float(value), dtype=torch.float64),
        permute=lambda x, dims: x.permute(*dims),
    )
    namespace = {"tl": tl, "triton": types.SimpleNamespace(jit=lambda f: f),
                 "ACC": torch.float64, "i_h": torch.tensor(HEAD),
                 "BLOCK_K": BLOCK, "BLOCK_V": BLOCK, "mask_K": mask, "mask_V": mask,
                 "dim_K": SIZE, "dim_V": SIZE}
    exec(HELPERS + "".join(REDUCTION_HELPERS.values()), namespace)
    return namespace


def padded(shape, gen):
    """A random fp64 block, its padded lanes NaN."""
    x = torch.full(shape, float("nan"), dtype=torch.float64)
    real = tuple(slice(0, SIZE) for _ in shape)
    x[real] = torch.randn([SIZE] * len(shape), generator=gen, dtype=torch.float64)
    return x


def real(x):
    return x[tuple(slice(0, SIZE) for _ in range(x.dim()))]


@pytest.mark.parametrize("case", CASES)
def test_rule_matches_autograd(case):
    program = seqc.compile(HEADER + CASES[case] + "\noutput o = S\n")
    constants = Constants()
    step = Step(program.spec, constants)
    adjoint = Adjoint(step)
    gen = torch.Generator().manual_seed(11)
    spec = program.spec
    values = {f"in_{t.name}": padded([BLOCK] * len(t.dims), gen) for t in spec.inputs}
    values.update({f"par_{t.name}": padded([BLOCK] * len(t.dims), gen) for t in spec.params})
    values["st_S_0"] = padded([BLOCK, BLOCK], gen)
    # the reference's padded lanes are finite (autograd would spread NaN through broadcasts
    # whose adjoint there is 0); the generated lines get NaN there and must mask it
    leaves = {n: torch.nan_to_num(v, nan=0.5).requires_grad_() for n, v in values.items()}
    do, d_final = padded([BLOCK, BLOCK], gen), padded([BLOCK, BLOCK], gen)
    mask = torch.arange(BLOCK) < SIZE
    namespace = {**tl_standin(mask), **leaves,
                 **{name: eval(code, {"float": float, "torch": torch,
                                      "dims": {"K": SIZE, "V": SIZE, "H": HEADS}})
                    for name, code in constants.host.items()}}
    exec("\n".join(step.lines), namespace)
    final, out = namespace[f"st_S_{step.final_version('S')}"], namespace["st_S_1"]
    # the update's value is both the new state (adjoint d_final) and, read by `output o = S`,
    # the output (adjoint do): the reference VJP of the whole step
    loss = (real(final) * real(d_final)).sum() + (real(out) * real(do)).sum()
    want = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)))

    namespace.update(values)
    namespace.update({"dst_S": d_final, "do_o": do})
    namespace.update({f"dpar_{p.name}": torch.zeros([BLOCK] * len(p.dims), dtype=torch.float64)
                      for p in spec.params})
    exec("\n".join(step.lines + adjoint.lines), namespace)
    got = {f"in_{t.name}": namespace[f"din_{t.name}"] for t in spec.inputs}
    got.update({f"par_{t.name}": namespace[f"dpar_{t.name}"] for t in spec.params})
    got["st_S_0"] = namespace["dst_S"]
    for name, g in want.items():
        expected = torch.zeros_like(real(values[name])) if g is None else real(g)
        assert torch.isfinite(real(got[name])).all(), f"{case}: d{name} is not finite"
        torch.testing.assert_close(real(got[name]), expected, rtol=1e-7, atol=1e-7,
                                   msg=lambda m: f"{case}: d{name}: {m}")


def test_an_operation_without_a_rule_is_named(monkeypatch):
    from seqc.backends.triton import vjp
    monkeypatch.delitem(vjp.UNARY_SLOPES, "tanh")
    spec = seqc.load("lstm").spec
    assert missing_rules(spec) == ["tanh"]
    with pytest.raises(NoRule, match="tanh"):
        Adjoint(Step(spec, Constants()))


def test_without_a_rule_the_module_has_no_fused_backward(monkeypatch):
    """A step with an operation lacking a rule: the emitted module says FUSED_BACKWARD = False
    and has no backward kernel, and seqc/autograd.py then keeps the recompute path."""
    from seqc.autograd import fused_backward
    from seqc.backends.triton import emit, vjp
    monkeypatch.delitem(vjp.UNARY_SLOPES, "tanh")
    code = emit(seqc.load("lstm"))
    assert "FUSED_BACKWARD = False" in code and "fused_recurrent_bwd_kernel" not in code
    module = types.SimpleNamespace(DEFAULT_MODE="fused_recurrent", FUSED_BACKWARD=False)
    assert not fused_backward(module, {})
    assert fused_backward(types.SimpleNamespace(DEFAULT_MODE="fused_recurrent",
                                                FUSED_BACKWARD=True), {})
    assert not fused_backward(types.SimpleNamespace(DEFAULT_MODE="chunk", FUSED_BACKWARD=True), {})
