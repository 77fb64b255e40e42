"""Compiled modules, cached in memory and on disk.

The key is a hash of the spec text, the seqc version (plus a digest of the generator code) and
the backend. A disk entry is
`<key>.py` whose first line is `# seqc-cache <sha256 of the rest>`; writes are atomic (a temporary
file renamed into place), and an entry whose checksum or syntax is wrong is rebuilt, not trusted.
Modules are imported from their file so that `inspect` (and so `triton.jit`) can read the source.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

_MEMORY: dict[str, object] = {}
_MARK = "# seqc-cache "


def cache_dir() -> Path:
    configured = os.environ.get("SEQC_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "seqc"


def cache_key(source: str, version: str, backend: str) -> str:
    digest = hashlib.sha256(f"{version}\0{backend}\0{source}".encode("utf-8")).hexdigest()
    return f"{backend}_{digest[:32]}"


@lru_cache(maxsize=None)
def generator_digest(backend: str) -> str:
    """A hash of the code that emits a backend's modules (its folder, the shared renderers and
    seqc itself), so that a changed generator never serves a stale cached module."""
    from .resources import resource_dir
    digest = hashlib.sha256()
    roots = [resource_dir("backends"), Path(__file__).resolve().parent]
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.suffix in (".py", ".j2", ".lark") and "__pycache__" not in path.parts:
                digest.update(path.name.encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def load_module(key: str, build: Callable[[], str]):
    """The module cached under `key`, emitting it with `build()` when absent or corrupt."""
    if key in _MEMORY:
        return _MEMORY[key]
    path = _writable_dir() / f"{key}.py"
    if _read_valid(path) is None:
        write_atomic(path, _sealed(build()))
    module = _import(key, path)
    _MEMORY[key] = module
    return module


def _sealed(code: str) -> str:
    return f"{_MARK}{hashlib.sha256(code.encode('utf-8')).hexdigest()}\n{code}"


def _read_valid(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    first, _, code = text.partition("\n")
    if first != _MARK + hashlib.sha256(code.encode("utf-8")).hexdigest():
        return None
    try:
        compile(code, str(path), "exec")
    except SyntaxError:
        return None
    return code


def _import(key: str, path: Path):
    name = f"seqc_compiled.{key}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _writable_dir() -> Path:
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".probe"
        probe.write_text("")
        probe.unlink()
        return directory
    except OSError:
        fallback = Path(tempfile.gettempdir()) / f"seqc-cache-{os.getuid() if hasattr(os, 'getuid') else 0}"
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def write_atomic(path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
