"""Compiled modules, cached in memory and on disk.

The key is a hash of the spec text, the seqc version (plus a digest of the generator code) and
the backend. A disk entry is
`<key>.py` whose first line is `# seqc-cache <sha256 of the rest>`; writes are atomic (a temporary
file renamed into place), and an entry whose checksum or syntax is wrong is rebuilt, not trusted;
so is, once, an entry that fails at import or defines no `run`, and a directory in an entry's place.
Modules are imported from their file so that `inspect` (and so `triton.jit`) can read the source.

When the configured directory cannot be created, the cache falls back to a private directory in
the temp dir, `seqc-cache-<uid>`: created mode 0700, and before every use verified to be a real
directory owned by this user that no one else can write or read; otherwise seqc refuses it
(UnsafeCacheError) rather than import what another local user may have planted there.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import stat
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

_MEMORY: dict[str, object] = {}
_MARK = "# seqc-cache "


class UnsafeCacheError(RuntimeError):
    """The fallback cache directory is not private to this user: seqc will not import from it."""


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
    """The module cached under `key`, emitting it with `build()` when absent or corrupt, or (once)
    when the cached entry fails at import or defines no `run`."""
    if key in _MEMORY:
        return _MEMORY[key]
    path = _writable_dir() / f"{key}.py"
    fresh = _read_valid(path) is None
    if fresh:
        _write_entry(path, build)
    try:
        module = _import(key, path)
    except Exception:
        if fresh:
            raise                       # just emitted: a bug of the generator, not of the cache
        _write_entry(path, build)
        module = _import(key, path)
    _MEMORY[key] = module
    return module


def _write_entry(path: Path, build: Callable[[], str]) -> None:
    if path.is_dir() and not path.is_symlink():      # a directory squatting on the entry's name
        shutil.rmtree(path)
    write_atomic(path, _sealed(build()))


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
    try:
        spec.loader.exec_module(module)
        if not callable(getattr(module, "run", None)):
            raise ImportError(f"cached module {path} defines no `run`")
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _writable_dir() -> Path:
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass                        # a name of its own: concurrent processes never share it
        return directory
    except OSError:
        return private_fallback(directory)


def private_fallback(configured: Path) -> Path:
    """`<tempdir>/seqc-cache-<uid>`, created 0700 and verified private before every use."""
    uid = _uid()
    fallback = Path(tempfile.gettempdir()) / f"seqc-cache-{uid if uid is not None else 0}"
    try:
        fallback.mkdir(mode=0o700)
        os.chmod(fallback, 0o700)          # whatever the umask
    except FileExistsError:
        pass
    except OSError as error:
        raise UnsafeCacheError(f"seqc cannot create its cache {configured} nor the fallback "
                               f"{fallback}: {error}; set SEQC_CACHE_DIR to a directory you "
                               "can write") from error
    problem = _not_private(fallback, uid)
    if problem:
        raise UnsafeCacheError(
            f"seqc cannot create its cache {configured}, and refuses the fallback {fallback}: "
            f"{problem}, so another user could plant code in it. Set SEQC_CACHE_DIR to a "
            f"directory you own, or remove {fallback}")
    return fallback


def _not_private(path: Path, uid: int | None) -> str | None:
    """Why `path` is not a private directory of user `uid` (None when it is)."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a directory"
    if uid is not None and info.st_uid != uid:
        return f"it is owned by uid {info.st_uid}, not by you (uid {uid})"
    if uid is not None and stat.S_IMODE(info.st_mode) & 0o077:
        return f"its mode is {stat.S_IMODE(info.st_mode):o}, open to other users (expected 700)"
    return None


def _uid() -> int | None:
    """This user's id; None where there is none (Windows: the temp dir is per user there)."""
    return os.getuid() if hasattr(os, "getuid") else None


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
