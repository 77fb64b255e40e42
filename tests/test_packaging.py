"""A wheel built from the repository works on its own: installed into a clean venv (no system
site-packages) with `lark` as its only dependency, `seqc check` and `seqc list` run from outside
the repository and find the grammar and the stdlib inside the package. The analysis behind the
verdict of `seqc check` needs sympy, so sympy is installed too (never torch or triton)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

import pytest

from seqc.resources import stdlib_names

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "seqc", "grammar", "stdlib", "backends")

pytestmark = pytest.mark.slow


def _run(args, **kwargs):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300,
                            **kwargs)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


_CACHE = tempfile.mkdtemp(prefix="seqc-packaging-cache-")


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH into the repository, and a verdict cache of its own (a verdict cached by the
    work tree would hide a missing dependency of the analysis)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["SEQC_CACHE_DIR"] = _CACHE
    return env


def _no_isolation() -> list[str]:
    """Build with the running environment's setuptools when it is recent enough (fast, offline);
    otherwise let pip fetch the build requirements into an isolated environment."""
    try:
        import setuptools
        import wheel  # noqa: F401 - bdist_wheel of older setuptools
    except ImportError:
        return []
    return ["--no-build-isolation"] if int(setuptools.__version__.split(".")[0]) >= 69 else []


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """A copy of the sources, so no build/ or egg-info of the work tree leaks into the wheel."""
    root = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, root / name)
    return root


@pytest.fixture(scope="module")
def wheel(sources, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *_no_isolation(), "-q", "-w", out,
          sources],
         env=_clean_env(), cwd=out)
    wheels = list(out.glob("seqc-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def clean_venv(wheel, tmp_path_factory) -> Path:
    """A venv without pip (the running pip installs into it): the wheel, lark and sympy only."""
    where = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(system_site_packages=False, with_pip=False, symlinks=True).create(where)
    python = where / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel],
         env=_clean_env())
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "lark>=1.1", "sympy>=1.12"],
         env=_clean_env())
    return where


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "seqc/grammar/seqc.lark" in names
    assert "seqc/backends/__init__.py" in names
    assert {f"seqc/stdlib/{n}.seq" for n in stdlib_names()} <= set(names)
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"seqc"}, tops
    assert not any(n.startswith(("backends/", "grammar/", "stdlib/", "tests/")) for n in names)


def test_wheel_has_every_module_of_the_repository(sources, wheel):
    """A new subpackage must be added to pyproject.toml's package list, or installs break."""
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {str(p.relative_to(sources)) for p in (sources / "seqc").rglob("*.py")}
    for folder in ("grammar", "stdlib", "backends"):
        wanted |= {"seqc/" + str(p.relative_to(sources)) for p in (sources / folder).rglob("*")
                   if p.is_file() and p.suffix in (".py", ".j2", ".lark", ".seq")}
    assert not {w for w in wanted if "__pycache__" not in w} - names


def test_clean_venv_is_clean(clean_venv, tmp_path):
    result = _run([clean_venv / "bin" / "python", "-c",
                   "import importlib.util as u, seqc; "
                   "print(seqc.__file__); "
                   "print([m for m in ('torch', 'triton', 'numpy', 'jinja2') if u.find_spec(m)])"],
                  cwd=tmp_path, env=_clean_env())
    location, missing = result.stdout.splitlines()
    assert "site-packages" in location and str(REPO) not in location
    assert missing == "[]"


def test_check_a_stdlib_spec_by_name(clean_venv, tmp_path):
    for _ in range(2):       # the second run answers from the verdict cache
        result = _run([clean_venv / "bin" / "seqc", "check", "gla"], cwd=tmp_path,
                      env=_clean_env())
        assert result.stdout.startswith("gla.seq: ok: model `gla`")


def test_check_a_file_and_json(clean_venv, tmp_path):
    (tmp_path / "mine.seq").write_text("model mine\ndims K\ninput x[K]\nstate h[K]\n"
                                       "h = 0.5 * h + x\noutput y = h\n", encoding="utf-8")
    result = _run([clean_venv / "bin" / "seqc", "check", "--json", "mine.seq", "mamba"],
                  cwd=tmp_path, env=_clean_env())
    assert [line.startswith('{"model": ') for line in result.stdout.splitlines()] == [True, True]


def test_errors_do_not_leak_the_install_path(clean_venv, tmp_path):
    (tmp_path / "bad.seq").write_text("model bad\ndims K\ninput x[K]\noutput y = xx\n",
                                      encoding="utf-8")
    result = subprocess.run([clean_venv / "bin" / "seqc", "check", "bad.seq"], cwd=tmp_path,
                            env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("bad.seq:4:12: error: unknown name `xx`")
    assert "site-packages" not in result.stderr and "Traceback" not in result.stderr


def test_list(clean_venv, tmp_path):
    result = _run([clean_venv / "bin" / "seqc", "list"], cwd=tmp_path, env=_clean_env())
    assert [line.split()[0] for line in result.stdout.splitlines()] == stdlib_names()
