"""What `seqc check` prints: the analysis verdict per state, in words or as JSON."""
from __future__ import annotations


def _analysis(program):
    try:
        return program.analysis
    except ImportError:
        return None


def describe(program) -> str:
    analysis = _analysis(program)
    lines = [f"{program.spec.span.file}: ok: model `{program.name}`"]
    if analysis is None:
        return lines[0]
    lines.append(analysis.describe(program.source))
    return "\n".join(lines)


def to_json(program, path: str) -> dict:
    analysis = _analysis(program)
    states = analysis.to_json()["states"] if analysis is not None else {}
    return {"model": program.name, "file": path, "ok": True, "states": states,
            "diagnostics": [d.to_json() for d in program.warnings]}
