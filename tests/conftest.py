"""Test-wide setup.

There is no GPU here, so the Triton backend runs under the interpreter. Triton's standard library
(tl.sum, tl.cumsum, ...) is decorated when triton is first imported, and fla-core imports triton
as soon as an oracle module loads it: TRITON_INTERPRET must be set before any test module is
collected, i.e. here.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings  # noqa: E402

# Every property test is deterministic in CI: the same examples on every run.
settings.register_profile("seqc", derandomize=True, database=None)
settings.load_profile("seqc")
