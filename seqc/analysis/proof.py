"""The proof objects: what the analysis concludes for a state group, and why.

A `Proof` names the kind, the group's states, the decomposition of its update (which expression is
the decay, which the key/value writes, which the low-rank part, as typed IR), the associative
combine of transition summaries with its identity, the algebraic facts sympy established, and for
a refusal the `Reason`: the offending sub-expression, its span and a one-line message.

A `Combine` is also executable, on numpy arrays or torch tensors alike: tests check associativity
and that a tree of combines reproduces the step loop, and context parallelism
(seqc/context_parallel.py) combines the ranks' summaries with it. Elements are transition
summaries of a run of steps; the earlier run is the left operand.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .. import ir
from ..errors import Diagnostic


@dataclass(frozen=True)
class Reason:
    """Why a group is refused a parallel form: the offending sub-expression and a one-line message."""
    message: str
    span: ir.Span
    node: ir.Expr | None = field(default=None, compare=False)
    help: str | None = None

    def diagnostic(self) -> Diagnostic:
        return Diagnostic("note", self.message, self.span, self.help)

    def to_json(self) -> dict:
        return {"line": self.span.line, "col": self.span.col, "end_line": self.span.end_line,
                "end_col": self.span.end_col, "message": self.message}


@dataclass(frozen=True)
class Combine:
    """An associative operator on transition summaries, with its identity."""
    name: str
    text: str
    identity_text: str
    apply: Callable = field(compare=False, repr=False)      # (earlier, later) -> combined
    identity: Callable = field(compare=False, repr=False)   # (like element) -> identity element


def _np():
    import numpy
    return numpy


def _xp(x):
    """The array module of x: torch for a torch tensor, else numpy (same names for what the
    combines use: einsum, maximum, logaddexp, ones_like, zeros_like, full_like)."""
    if type(x).__module__.startswith("torch"):
        import torch
        return torch
    return _np()


def _eye_like(a):
    """Identity matrices shaped like a [..., n, n], of a's array type (and dtype, device)."""
    n = a.shape[-1]
    if type(a).__module__.startswith("torch"):
        import torch
        return torch.eye(n, dtype=a.dtype, device=a.device).expand(a.shape).clone()
    np = _np()
    return np.broadcast_to(np.eye(n), a.shape).copy()


def _scan(first, second):
    (a1, b1), (a2, b2) = first, second
    return a1 * a2, a2 * b1 + b2


def _coupled(first, second):
    (a1, b1), (a2, b2) = first, second
    xp = _xp(a2)
    return xp.einsum("...ij,...jk->...ik", a2, a1), xp.einsum("...ij,...j->...i", a2, b1) + b2


def _chunk(first, second):
    """D over the key dim [.., K] (scalar decays broadcast), or over both dims [.., K, V] when
    the state also decays along its value dim: elementwise either way."""
    (d1, u1), (d2, u2) = first, second
    along = d2 if d2.ndim == u1.ndim else d2[..., None]
    return d1 * d2, along * u1 + u2


def _delta(first, second):
    (a1, u1), (a2, u2) = first, second
    return a2 @ a1, a2 @ u1 + u2


def _maxplus(first, second):
    (a1, b1), (a2, b2) = first, second
    return a1 + a2, _xp(b2).maximum(b1 + a2, b2)


def _logsumexp(first, second):
    (a1, b1), (a2, b2) = first, second
    return a1 + a2, _xp(b2).logaddexp(b1 + a2, b2)


def _ones_zeros(element):
    xp = _xp(element[0])
    return xp.ones_like(element[0]), xp.zeros_like(element[1])


def _zero_neginf(element):
    xp = _xp(element[0])
    return xp.zeros_like(element[0]), xp.full_like(element[1], float("-inf"))


def _eye_zeros(element):
    a, u = element
    return _eye_like(a), _xp(u).zeros_like(u)


COMBINES = {
    "scan": Combine("scan", "(a1, b1) o (a2, b2) = (a1 * a2, a2 * b1 + b2)", "(1, 0)",
                    _scan, _ones_zeros),
    "coupled": Combine("coupled", "(A1, b1) o (A2, b2) = (A2 A1, A2 b1 + b2), A the matrix of "
                       "elementwise couplings", "(I, 0)", _coupled, _eye_zeros),
    "chunk": Combine("chunk", "(D1, U1) o (D2, U2) = (D2 D1, D2 U1 + U2), D diagonal "
                     "(exp of the summed log decay), U the summed key (x) value writes", "(1, 0)",
                     _chunk, _ones_zeros),
    "chunk_delta": Combine("chunk_delta", "(A1, U1) o (A2, U2) = (A2 A1, A2 U1 + U2), "
                           "A = exp(log_decay) (I - beta w k^T) per step, k the erase key, "
                           "w the write key (k itself in the delta rule)", "(I, 0)",
                           _delta, _eye_zeros),
    "chunk_dplr": Combine("chunk_dplr", "(A1, U1) o (A2, U2) = (A2 A1, A2 U1 + U2), "
                          "A = diag(exp(log_decay)) - erase key^T per step", "(I, 0)",
                          _delta, _eye_zeros),
    "maxplus": Combine("maxplus", "(a1, b1) o (a2, b2) = (a1 + a2, max(b1 + a2, b2))",
                       "(0, -inf)", _maxplus, _zero_neginf),
    "logsumexp": Combine("logsumexp", "(a1, b1) o (a2, b2) = (a1 + a2, logaddexp(b1 + a2, b2))",
                         "(0, -inf)", _logsumexp, _zero_neginf),
}


@dataclass(frozen=True)
class Proof:
    """The verdict for one group of states."""
    kind: str                                  # scan | chunk | chunk_delta | semiring | sequential
    states: tuple[str, ...]
    group: object                              # the seqc.plan group it lowers to
    decomposition: dict = field(default_factory=dict)    # role -> ir.Expr | tuple | str
    combine: Combine | None = None
    facts: tuple[str, ...] = ()
    reason: Reason | None = None

    @property
    def adjoint(self):
        """The reverse-time recurrence of the group's gradient: its kind and decomposition
        (adjoint.py)."""
        from .adjoint import adjoint_of
        return adjoint_of(self)
