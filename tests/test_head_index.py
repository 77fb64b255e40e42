"""Issue 13 item 6: the head index `head` (0-based) and the head count `H` in expressions, per-head
constants on every backend (the step loop, the parallel forms, every Triton mode, context
parallelism's roles), against the same step computed in torch here (test_reductions.py's
harness)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from test_reductions import (SIZES, assert_located, assert_near, call,  # noqa: E402,F401
                             check_source, gradients_match, on_every_backend, runs, source,
                             truth)


def heads(x):
    """The head index over [B, T, H] (broadcast), as `head` is."""
    return torch.arange(SIZES["H"], dtype=x.dtype).expand(x.shape[:3])


HEAD = (("-(8 / H) * (head + 1) / 4", "k", "v"),
        lambda q, k, v, x: (-(8 / SIZES["H"]) * (heads(k) + 1) / 4, k, v))


def test_head_decay_on_every_backend_matches_torch():
    on_every_backend("head", HEAD)


def test_head_decay_gradients_match_torch():
    gradients_match("head", HEAD)


ALIBI = """model alibi_decay
dims K, V
input q[K], k[K], v[V]
state S[K, V] = 0
const base = 8 / H
S = exp(-base * (head + 1) / 4) * S + k * v
output o = q @ S
output slope = head / H
"""


def test_head_and_H_are_per_head_constants():
    program = seqc.compile(ALIBI, "alibi.seq")
    assert program.analysis.kind("S") == "chunk"
    tensors, initial = call()
    tensors.pop("x")
    H = SIZES["H"]
    for backend, options in runs(program):
        out = program.kernel(backend, **options)(**tensors, initial_state=initial,
                                                 output_final_state=True)
        slope = (torch.arange(H, dtype=torch.float64) / H).expand(SIZES["B"], SIZES["T"], H)
        assert_near(out["slope"], slope, f"slope / {backend} {options}")
        want = truth(HEAD, {**tensors, "x": tensors["q"]}, initial)
        assert_near(out["o"], want["o"], f"o / {backend} {options}")


@pytest.mark.parametrize("text, col, width, message, help", [
    ("head = 1", 1, 8, "`head` is the head index, a built-in, and cannot be assigned",
     "use `let` with a name of your own for a new value"),
    ("let head = q", 1, 12, "`head` is a reserved word and cannot be a name", None),
    ("const c = head", 11, 4, "the default of const `c` must be a scalar of numbers, dims and "
     "earlier consts, but `head` is the head index, one value a head",
     "a const is a call-time number such as `const scale = K ** -0.5`; use `let` for a value "
     "computed from tensors"),
])
def test_misuse_is_a_located_error(check_source, text, col, width, message, help):
    assert_located(check_source, text, col, width, message, help)


def test_context_parallel_roles_compute_head():
    """Context parallelism evaluates the Plan's roles itself (seqc/context_parallel.py, Roles):
    `head` there is the same per-head constant."""
    from seqc.context_summary import Roles
    program = seqc.compile(source(HEAD), "feature.seq")
    plan = program.analysis.plan
    tensors, _ = call(dtype=torch.float64)
    roles = Roles(plan, tensors, dict(SIZES))
    decay = roles(plan.groups[0].log_decay, ())
    want = HEAD[1](*(tensors[n] for n in ("q", "k", "v", "x")))[0]
    assert_near(decay, want, "the log decay")
