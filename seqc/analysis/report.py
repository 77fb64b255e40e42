"""The verdicts in words (what `seqc check` prints) and as JSON (`seqc check --json`)."""
from __future__ import annotations

from .. import ir, plan
from ..pretty import expr as _text

KIND_WORDS = {
    "scan": "a parallel scan",
    "chunk": "the chunkwise form",
    "chunk_delta": "the chunkwise delta-rule form (WY/UT)",
    "semiring": "a parallel scan in a semiring",
    "sequential": "the sequential loop only",
}


def text(node) -> str | None:
    return None if node is None else _text(node)


def summary(proof) -> str:
    """One plain sentence: what the update is, in the terms of its kind."""
    d = proof.decomposition
    if proof.kind == "scan" and len(proof.states) == 1:
        log = d["log_coefficient"]
        logged = f" (log coefficient `{text(log)}`)" if log is not None else ""
        return (f"affine in itself with the elementwise coefficient `{text(d['coefficient'])}`"
                f"{logged} and the offset `{text(d['offset'])}`")
    if proof.kind == "scan":
        pairs = ", ".join(f"`{text(c)}` ({a} <- {b})" for (a, b), c in d["coupling"].items())
        return f"jointly affine with elementwise couplings {pairs}"
    state = proof.states[0]
    held = _held(d, state)
    if proof.kind == "chunk":
        writes = " + ".join(f"`{text(w.key)}` (x) `{text(w.value)}`" for w in d["writes"])
        decay = _decay(d)
        return (f"matrix state over ({d['key_dim']}, {d['value_dim']}): {decay}, written by "
                f"{writes or 'nothing'}, read as {_read(d, state)}{held}")
    if proof.kind == "chunk_delta" and "erase" in d:
        writes = " + ".join(f"`{text(w.key)}` (x) `{text(w.value)}`" for w in d["writes"])
        unseen = d["unseen_decay"]
        where = f"before the decay `{text(unseen)}`" if unseen is not None else "after the decay"
        return (f"{_decay(d)} minus the low rank `{text(d['erase'])}` (x) "
                f"({_functional(d, state, d['key'])}), the key reading the state {where}, "
                f"written by {writes or 'nothing'}{held}")
    if proof.kind == "chunk_delta":
        steps = "; then ".join(f"`{text(s.beta)}` * `{text(s.writes)}` (x) (`{text(s.value)}` - "
                               f"{_functional(d, state, s.key)})" for s in d["steps"])
        return (f"{_decay(d)}, then identity minus low rank: {steps}{held}")
    if proof.kind == "semiring":
        add = "max" if d["semiring"] == "maxplus" else "logaddexp"
        return (f"({add}, +) linear: {proof.states[0]} = {add}({proof.states[0]} + "
                f"`{text(d['coefficient'])}`, `{text(d['offset'])}`)")
    return f"no parallel form: {proof.reason.message}"


def _functional(d: dict, state: str, key) -> str:
    """`k` @ S, or S @ `k` for a value-side form (the state held transposed)."""
    return f"{state} @ `{text(key)}`" if d.get("transposed") else f"`{text(key)}` @ {state}"


def _read(d: dict, state: str) -> str:
    return f"`{state} @ q`" if d.get("transposed") else f"`q @ {state}`"


def _held(d: dict, state: str) -> str:
    if not d.get("transposed"):
        return ""
    return (f"; the value-side form: {state} along `{d['key_dim']}` is the key side of "
            f"{state}^T, held transposed")


def _decay(d: dict) -> str:
    value_log = d.get("value_log_decay")
    if d["log_decay"] is None and value_log is None:
        return "no decay"
    if value_log is not None and d["log_decay"] is None:
        return (f"value-wise decay `{text(d['decay'])}` (log `{text(value_log)}`, along "
                f"`{d['value_dim']}`)")
    if value_log is not None:
        return (f"decay `{text(d['decay'])}` (logs `{text(d['log_decay'])}` along "
                f"`{d['key_dim']}` and `{text(value_log)}` along `{d['value_dim']}`: an outer "
                "product)")
    dims = d["log_decay"].dims
    where = "scalar" if not dims else \
        f"value-wise (over `{dims[0]}`)" if d.get("transposed") else "key-wise"
    return f"{where} decay `{text(d['decay'])}` (log `{text(d['log_decay'])}`)"


def describe(analysis, source: str) -> str:
    lines, notes = [], []
    for proof in analysis.proofs:
        names = ", ".join(f"`{s}`" for s in proof.states)
        coupled = " (coupled)" if len(proof.states) > 1 else ""
        lines.append(f"  {names}: {proof.kind}{coupled} -> {KIND_WORDS[proof.kind]}")
        lines.append(f"      {summary(proof)}")
        upstream = proof.decomposition.get("upstream")
        if upstream and proof.kind != "sequential":
            lines.append(f"      a later stage: it takes the per-step values of "
                         f"{', '.join(f'`{u}`' for u in upstream)}")
        previous = proof.decomposition.get("previous_reads")
        if previous and proof.kind != "sequential":
            lines.append(f"      {', '.join(f'`{o}`' for o in previous)} reading it before the "
                         "step's update (the previous step's state)")
        if proof.kind == "sequential":
            lines.append(f"      {newton_line(analysis.spec)}")
        if proof.kind == "chunk" and proof.decomposition.get("value_log_decay") is not None:
            lines.append("      torch runs it chunkwise; Triton in the fused recurrent kernel "
                         "(no Triton chunk kernel takes a decay along the value dim)")
        if proof.combine is not None:
            lines.append(f"      combine {proof.combine.text}; identity {proof.combine.identity_text}")
        if proof.reason is not None:
            notes.append(proof.reason.diagnostic().render(source))
    return "\n".join(lines + notes)


def newton_line(spec: ir.Spec) -> str:
    """What `solver="newton"` (seqc/newton.py) would linearise: the Jacobian's structure."""
    from .jacobian import jacobian_structure
    return f"solver=\"newton\": {jacobian_structure(spec).describe(spec)}"


def _json_value(value):
    if isinstance(value, dict):
        return {_key(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    if isinstance(value, (plan.Write, plan.DeltaStep)):
        return {f: None if getattr(value, f) is None else text(getattr(value, f))
                for f in value.__dataclass_fields__}
    if isinstance(value, (ir.Num, ir.Name, ir.Unary, ir.Binary, ir.Call)):
        return text(value)
    return value


def _key(key) -> str:
    return " <- ".join(key) if isinstance(key, tuple) else str(key)


def _adjoint_json(adjoint) -> dict:
    return {"kind": adjoint.kind, "transition": adjoint.transition,
            "recurrence": adjoint.recurrence,
            "decomposition": _json_value(adjoint.decomposition)}


def to_json(analysis) -> dict:
    states = {}
    for proof in analysis.proofs:
        entry = {"kind": proof.kind,
                 "reason": proof.reason.to_json() if proof.reason else None,
                 "group": list(proof.states),
                 "combine": proof.combine.text if proof.combine else None,
                 "identity": proof.combine.identity_text if proof.combine else None,
                 "decomposition": _json_value(proof.decomposition),
                 "summary": summary(proof),
                 "adjoint": _adjoint_json(proof.adjoint),
                 "proof": list(proof.facts)}
        if proof.kind == "sequential":
            entry["newton"] = newton_line(analysis.spec).partition(": ")[2]
        for state in proof.states:
            states[state] = entry
    return {"model": analysis.spec.name, "states": states}
