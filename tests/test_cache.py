"""The module cache: a private fallback directory, and entries that are rebuilt instead of trusted.

The tests run as root here, so ownership is tested by pretending to be another user
(monkeypatching os.getuid) rather than by a second account.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tempfile

import pytest

import seqc
from seqc import cache

SPEC = "model cached\ninput x\nstate h\nh = 0.5 * h + x\noutput y = h\n"


@pytest.fixture
def unwritable_cache(tmp_path, monkeypatch):
    """SEQC_CACHE_DIR under a plain file (cannot be created, even by root); temp dir in tmp_path.
    Returns the fallback directory seqc is to use."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("SEQC_CACHE_DIR", str(blocker / "cache"))
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(cache, "_MEMORY", {})
    return temp / f"seqc-cache-{os.getuid()}"


def _plant(directory, program, backend="reference"):
    """An entry with a valid checksum under the key seqc will look up; returns the marker path."""
    from seqc import __version__
    key = cache.cache_key(program.source, f"{__version__}+{cache.generator_digest(backend)}",
                          backend)
    marker = directory / "planted-code-ran"
    code = f"open({str(marker)!r}, 'w').close()\ndef run(*args, **kwargs):\n    return {{}}, None\n"
    seal = hashlib.sha256(code.encode()).hexdigest()
    (directory / f"{key}.py").write_text(f"# seqc-cache {seal}\n{code}")
    return marker


def test_the_fallback_is_created_private_and_used(unwritable_cache):
    seqc.compile(SPEC).kernel()
    info = os.lstat(unwritable_cache)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    assert list(unwritable_cache.glob("reference_*.py"))


def test_a_fallback_open_to_other_users_is_refused_and_nothing_in_it_runs(unwritable_cache):
    unwritable_cache.mkdir(mode=0o777)
    os.chmod(unwritable_cache, 0o777)
    marker = _plant(unwritable_cache, seqc.compile(SPEC))
    with pytest.raises(cache.UnsafeCacheError, match=r"mode is 777.*SEQC_CACHE_DIR"):
        seqc.compile(SPEC).kernel()
    assert not marker.exists()


def test_a_fallback_owned_by_another_user_is_refused_and_nothing_in_it_runs(unwritable_cache,
                                                                             monkeypatch):
    unwritable_cache.mkdir(mode=0o700)
    marker = _plant(unwritable_cache, seqc.compile(SPEC))
    real_uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real_uid + 1000)     # we are someone else now
    monkeypatch.setattr(tempfile, "tempdir", str(unwritable_cache.parent))
    planted = unwritable_cache.parent / f"seqc-cache-{real_uid + 1000}"
    os.rename(unwritable_cache, planted)                         # the other user's name for it
    with pytest.raises(cache.UnsafeCacheError, match=rf"owned by uid {real_uid}, not by you"):
        seqc.compile(SPEC).kernel()
    assert not marker.exists() and not (planted / "planted-code-ran").exists()


def test_a_fallback_that_is_a_symbolic_link_is_refused(unwritable_cache, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    unwritable_cache.symlink_to(elsewhere)
    with pytest.raises(cache.UnsafeCacheError, match="symbolic link"):
        seqc.compile(SPEC).kernel()


def test_the_fallback_is_verified_before_every_use(unwritable_cache):
    seqc.compile(SPEC).kernel()
    os.chmod(unwritable_cache, 0o757)
    with pytest.raises(cache.UnsafeCacheError, match="mode is 757"):
        seqc.compile(SPEC + "output z = h\n").kernel()


def _one_entry(tmp_path, monkeypatch):
    """A program compiled into an empty cache in tmp_path: (program, its entry, the entry's text);
    the memory cache is cleared, so that the next kernel() reads the disk again."""
    monkeypatch.setenv("SEQC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "_MEMORY", {})
    program = seqc.compile(SPEC)
    program.kernel()
    [entry] = tmp_path.glob("reference_*.py")
    monkeypatch.setattr(cache, "_MEMORY", {})
    return program, entry, entry.read_text()


@pytest.mark.parametrize("broken", ["raise RuntimeError('half written')\n", "x = 1\n",
                                    "run = 3\n"])
def test_an_entry_with_a_valid_checksum_that_cannot_run_is_rebuilt(tmp_path, monkeypatch, broken):
    program, entry, good = _one_entry(tmp_path, monkeypatch)
    entry.write_text(f"# seqc-cache {hashlib.sha256(broken.encode()).hexdigest()}\n{broken}")
    fn = program.kernel()
    assert entry.read_text() == good
    assert callable(fn.module.run)


def test_an_entry_replaced_by_a_directory_is_recovered(tmp_path, monkeypatch):
    program, entry, good = _one_entry(tmp_path, monkeypatch)
    entry.unlink()
    entry.mkdir()
    (entry / "junk").write_text("")
    program.kernel()
    assert entry.is_file() and entry.read_text() == good


def test_concurrent_processes_all_get_the_configured_cache(tmp_path, monkeypatch):
    """Many processes probing the cache at once (pytest workers, DDP ranks) must not see each
    other's probe vanish and fall back: a shared `.probe` name raced and sent some to the fallback."""
    import subprocess
    import sys
    monkeypatch.setenv("SEQC_CACHE_DIR", str(tmp_path / "cache"))
    code = ("from seqc import cache\n"
            "for _ in range(300):\n"
            "    assert cache._writable_dir() == cache.cache_dir(), cache._writable_dir()\n")
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
