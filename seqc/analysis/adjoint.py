"""The adjoint of a proven recurrence: its kind and decomposition (docs/analysis.md, "The adjoint
per kind").

For `S_t = A_t S_{t-1} + U_t` read by `R_t`, the gradient of the state runs backward in time,
`dS_{t-1} = A_t^T dS_t + R_{t-1}^*(do_{t-1})`: the same kind with the transition transposed and
the reads as writes. `adjoint_of(proof)` states, per kind, which kind the reverse recurrence is,
its transposed transition in words, and its decomposition: the proof's roles with the factors
transposed (a coupled scan's couplings swap their direction, a diagonal-plus-low-rank
transition swaps its erase direction and key, several delta steps a token run in reverse order,
a semiring linearises to its softmax weights or argmax). The Triton backend's adjoint kernels
(backends/triton/*_core.md) compute these recurrences.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..pretty import expr as _text


@dataclass(frozen=True)
class Adjoint:
    """The reverse-time recurrence of a group's gradient."""
    kind: str                   # the adjoint's kind: scan | chunk | chunk_delta | sequential
    transition: str             # A_t^T in words, with the proof's roles
    recurrence: str             # the reverse recurrence of the state's gradient
    decomposition: dict = field(default_factory=dict)    # role -> ir.Expr | tuple | str


def _t(node) -> str:
    return "1" if node is None else f"`{_text(node)}`"


def adjoint_of(proof) -> Adjoint:
    """The adjoint of `proof`'s group (sequential: the reverse loop of the step's vector-Jacobian
    product, no parallel form)."""
    d, state = proof.decomposition, proof.states[0]
    if proof.kind == "scan" and len(proof.states) == 1:
        return Adjoint(
            "scan", f"the coefficient {_t(d['coefficient'])} (diagonal, its own transpose)",
            f"d{state}_(t-1) += a_t d{state}_t",
            {"coefficient": d["coefficient"], "log_coefficient": d["log_coefficient"]})
    if proof.kind == "scan":
        transposed = {(b, a): c for (a, b), c in d["coupling"].items()}
        pairs = ", ".join(f"{_t(c)} ({a} <- {b})" for (a, b), c in transposed.items())
        return Adjoint("scan", f"the couplings transposed: {pairs}",
                       "dS_(t-1) = A_t^T dS_t + do_(t-1), A_t the n x n elementwise couplings",
                       {"coupling": transposed})
    if proof.kind == "chunk":
        both = d.get("value_log_decay") is not None     # elementwise along both dims: its own
        return Adjoint("chunk", "the decay (diagonal, its own transpose"     # transpose too
                       + (", along both dims)" if both else ")"),
                       f"d{state}_(t-1) = D_t d{state}_t + q_(t-1) (x) do_(t-1)",
                       {"log_decay": d["log_decay"], "value_log_decay": d.get("value_log_decay"),
                        "keys": "the queries q", "values": "the outputs' gradients do"})
    if proof.kind == "chunk_delta" and "erase" in d:
        return Adjoint(
            "chunk_delta",
            f"D_t - D'_t {_t(d['key'])} (x) {_t(d['erase'])}: diagonal plus low rank, the "
            "erase direction and the key swapped",
            f"d{state}_(t-1) = (D_t - D'_t kp_t e_t^T) d{state}_t + q_(t-1) (x) do_(t-1)",
            {"log_decay": d["log_decay"], "unseen_decay": d["unseen_decay"],
             "erase": d["key"], "key": d["erase"], "keys": "the queries q",
             "values": "the outputs' gradients do"})
    if proof.kind == "chunk_delta":
        # A_t = H_J ... H_1 D_t, so A_t^T = D_t H_1^T ... H_J^T: dS_t meets step J first;
        # H = I - beta w (x) k transposes to I - beta k (x) w (the keys swap; one key: symmetric)
        factors = " ".join(f"(I - {_t(s.beta)} {_t(s.key)} (x) {_t(s.writes)})" for s in d["steps"])
        steps = tuple(reversed(d["steps"]))
        each = ("transposed (the erase and write keys swapped)"
                if any(s.write_key is not None for s in d["steps"]) else "symmetric")
        return Adjoint(
            "chunk_delta",
            f"D_t {factors}: each delta factor {each}, the product reversed (the last step "
            "first)",
            f"d{state}_(t-1) = A_t^T d{state}_t + q_(t-1) (x) do_(t-1)",
            {"log_decay": d["log_decay"], "steps": steps, "keys": "the queries q",
             "values": "the outputs' gradients do"})
    if proof.kind == "semiring":
        carried = f"{state}_(t-1) + {_t(d['coefficient'])}"
        weight = (f"exp({carried} - {state}_t), the softmax weight"
                  if d["semiring"] == "logsumexp" else
                  f"[{carried} > {_t(d['offset'])}] (1/2 on a tie), the argmax")
        return Adjoint("scan", f"the weight w_t = {weight} (diagonal)",
                       f"d{state}_(t-1) += w_t d{state}_t, in (+, x)",
                       {"coefficient": f"w_t = {weight}", "offset_weight": "1 - w_t"})
    return Adjoint("sequential", "the step's Jacobian",
                   "the reverse-time loop of the step's vector-Jacobian product", {})
