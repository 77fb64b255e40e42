"""What `seqc check` prints: the analysis verdict per state, in words or as JSON.

The analysis imports sympy, whose import alone costs most of a second. `seqc check` is the edit
loop, so its verdicts are cached on disk, keyed by the file name, the spec text and a digest of
seqc's own code: re-checking an unchanged spec never imports sympy.
"""
from __future__ import annotations

import hashlib
import json

from .cache import cache_dir, generator_digest, write_atomic


def _verdict(program) -> dict:
    """{"text": the verdict in words, "states": the JSON verdict per state}, cached on disk."""
    key = hashlib.sha256("\0".join([generator_digest("analysis"), program.spec.span.file,
                                    program.source]).encode("utf-8")).hexdigest()[:32]
    path = cache_dir() / "verdicts" / f"{key}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(cached, dict) and isinstance(cached.get("text"), str) \
                and isinstance(cached.get("states"), dict):
            return cached
    except (OSError, ValueError):
        pass
    analysis = program.analysis
    verdict = {"text": analysis.describe(program.source),
               "states": analysis.to_json()["states"]}
    try:
        write_atomic(path, json.dumps(verdict))
    except OSError:
        pass                      # an unwritable cache only costs time
    return verdict


def describe(program, verbose: bool = False) -> str:
    """The verdict in words; `verbose` adds each group's adjoint (its kind and transposed
    transition, seqc/analysis/adjoint.py)."""
    verdict = _verdict(program)
    text = f"{program.spec.span.file}: ok: model `{program.name}`\n{verdict['text']}"
    return text + "".join(_adjoint_lines(verdict["states"])) if verbose else text


def _adjoint_lines(states: dict):
    seen = set()
    for entry in states.values():
        group = tuple(entry["group"])
        if group in seen or "adjoint" not in entry:
            continue
        seen.add(group)
        adjoint = entry["adjoint"]
        names = ", ".join(f"`{s}`" for s in group)
        yield (f"\n  {names} adjoint: {adjoint['kind']}, transition^T {adjoint['transition']}"
               f"\n      {adjoint['recurrence']}")


def to_json(program, path: str) -> dict:
    return {"model": program.name, "file": path, "ok": True,
            "states": _verdict(program)["states"],
            "diagnostics": [d.to_json() for d in program.warnings]}
