"""Golden files of emitted code: every change to what a backend emits is reviewed in a diff.

Regenerate after an intended change with:  SEQC_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py
"""
import ast
import os
from pathlib import Path

import pytest

import seqc

GOLDEN = Path(__file__).parent / "golden"
CASES = [("reference", "gla"), ("reference", "lstm"), ("reference", "maxplus"),
         ("reference", "mamba"), ("triton", "gla"), ("triton", "gated_deltanet"),
         ("triton", "hgrn")]


@pytest.mark.parametrize("backend,name", CASES)
def test_emitted_code_matches_golden(backend, name):
    code = seqc.load(name).emit(backend)
    path = GOLDEN / backend / f"{name}.py"
    if os.environ.get("SEQC_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code, encoding="utf-8")
    assert path.exists(), f"no golden file {path}; run with SEQC_UPDATE_GOLDEN=1"
    assert code == path.read_text(encoding="utf-8"), \
        f"{backend}/{name} changed; review and regenerate with SEQC_UPDATE_GOLDEN=1"


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(seqc.__file__).parent.parent / "stdlib").glob("*.seq")))
def test_reference_module_is_standalone(name):
    code = seqc.load(name).emit("reference")
    assert code.startswith(f"# Emitted by seqc {seqc.__version__} from spec `{name}`")
    tree = ast.parse(code)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module.split(".")[0] for node in ast.walk(tree)
                                            if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"torch"}, imported
