"""Where the grammar, the backends' templates and the stdlib live.

In the repository they are the top-level folders `grammar/`, `backends/` and `stdlib/`; in an
installed distribution they are the packages `seqc.grammar`, `seqc.backends` and `seqc.stdlib`
(pyproject.toml maps the folders there).
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The folder `name` (grammar, backends or stdlib), installed or in the repository."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"seqc is installed without its {name}/ folder")


def grammar_path() -> Path:
    return resource_dir("grammar") / "seqc.lark"


def stdlib_dir() -> Path:
    return resource_dir("stdlib")


def stdlib_names() -> list[str]:
    return sorted(p.stem for p in stdlib_dir().glob("*.seq"))
