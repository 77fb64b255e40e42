"""Claims of the docs that a test can hold them to."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / "backends").glob("*/*.py.j2"))


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_template_sits_beside_a_md_stating_its_math(template):
    """docs/backends.md: each template sits beside a `.md` of the same name."""
    doc = template.with_name(template.name.replace(".py.j2", ".md"))
    assert doc.exists(), f"{template.relative_to(ROOT)} has no {doc.name}"
    assert template.name.split(".")[0] in doc.read_text().splitlines()[0]


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_final_states_are_fp32_or_fp64_for_fp64_inputs(backend):
    """docs/backends.md: final states are fp32 (fp64 for fp64 inputs); outputs the input dtype."""
    import torch

    import seqc
    from seqc.inputs import random_call
    program = seqc.load("gla")
    for dtype, state_dtype in [(torch.bfloat16, torch.float32), (torch.float32, torch.float32),
                               (torch.float64, torch.float64)]:
        tensors, _ = random_call(program.spec, {"B": 1, "T": 3, "H": 1, "K": 2, "V": 2}, dtype)
        out = program.kernel(backend)(**tensors, output_final_state=True)
        assert out.o.dtype == dtype and out.final_state["S"].dtype == state_dtype
