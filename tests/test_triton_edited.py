"""Randomly edited stdlib specs through the Triton backend (interpreter), against the reference.

The kernels are generated from the Plan, so a spec nobody wrote on purpose must run and agree
too: its default family kernel and its fused recurrent kernel. fp32, relative 1e-4 of the
output's magnitude. Few examples: each compiles kernels under the slow interpreter.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from test_analysis_robust import agrees_with_the_reference, edited_specs  # noqa: E402

pytestmark = pytest.mark.triton


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(edited_specs(), st.sampled_from(["auto", "fused_recurrent"]), st.booleans())
def test_triton_agrees_with_the_reference_on_edited_specs(source, mode, extremes):
    """Also across hard resets (`-inf` log gates) and zero gates (test_hard_resets.py)."""
    options = {} if mode == "auto" else {"mode": mode}
    agrees_with_the_reference(source, 7, "triton", torch.float32, 1e-4, extremes, chunk_size=16,
                              **options)
