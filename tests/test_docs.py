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
