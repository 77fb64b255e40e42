"""Located diagnostics: `file:line:col: error: message`, the source line, a caret, a help line."""
from __future__ import annotations

from dataclasses import dataclass

from .ir import Span


@dataclass(frozen=True)
class Diagnostic:
    severity: str                 # "error" | "warning" | "note"
    message: str
    span: Span
    help: str | None = None

    def render(self, source: str) -> str:
        head = f"{self.span}: {self.severity}: {self.message}"
        lines = [head]
        excerpt = _excerpt(source, self.span)
        if excerpt:
            lines.extend(excerpt)
        if self.help:
            lines.append(f"  = help: {self.help}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"severity": self.severity, "message": self.message, "file": self.span.file,
                "line": self.span.line, "col": self.span.col, "end_line": self.span.end_line,
                "end_col": self.span.end_col, "help": self.help}


def _excerpt(source: str, span: Span) -> list[str]:
    if span.line <= 0 or not source:
        return []
    source_lines = split_lines(source)
    if span.line > len(source_lines):
        return []
    text = source_lines[span.line - 1].expandtabs(1)
    if len(text) > 200:
        start = max(0, span.col - 80)
        text = text[start:start + 160]
        col = span.col - start
    else:
        col = span.col
    end = span.end_col if span.end_line == span.line and span.end_col > span.col else col + 1
    width = max(1, min(end - span.col, len(text) - col + 1))
    return ["    " + text, "    " + " " * (col - 1) + "^" * width]


def split_lines(source: str) -> list[str]:
    """The lines of a source as an editor numbers them: split at `\n` only (not at form feeds,
    `\u2028` and the other breaks of str.splitlines), without a trailing `\r`."""
    return [line.removesuffix("\r") for line in source.split("\n")]


class SpecError(Exception):
    """A spec has errors. Carries every diagnostic and the source to render them against."""

    def __init__(self, diagnostics: list[Diagnostic], source: str):
        self.diagnostics = diagnostics
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        errors = [d for d in self.diagnostics if d.severity == "error"]
        body = "\n".join(d.render(self.source) for d in self.diagnostics)
        return f"{body}\n{len(errors)} error{'s' if len(errors) != 1 else ''}"


def closest(name: str, candidates) -> str | None:
    """The candidate nearest to `name` by edit distance, if it is near enough to be a typo.

    Case is ignored, except to break ties (`kk` suggests `k` rather than the dim `K`)."""
    best, best_distance, best_key = None, None, None
    for candidate in candidates:
        distance = _edit_distance(name.lower(), candidate.lower())
        key = (distance, _edit_distance(name, candidate))
        if best_key is None or key < best_key:
            best, best_distance, best_key = candidate, distance, key
    if best is not None and best_distance <= max(1, len(name) // 3) and best_distance < len(name):
        return best
    return None


def _edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
