"""Randomly edited stdlib specs through the Triton backend (interpreter), against the reference.

The kernels are generated from the Plan, so a spec nobody wrote on purpose must run and agree
too: its default family kernel and its fused recurrent kernel, for edited specs of every kind.
fp32, relative 1e-4 of the output's magnitude. Few examples: each compiles kernels under the
slow interpreter.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from test_analysis_robust import KINDS, agrees_with_the_reference, edited_specs  # noqa: E402

pytestmark = pytest.mark.triton


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_triton_agrees_with_the_reference_on_edited_specs(kind, data):
    """Every kind's edited specs reach the kernels (chunk_delta and semiring included)."""
    source = data.draw(edited_specs(kind))
    mode = data.draw(st.sampled_from(["auto", "fused_recurrent"]))
    options = {} if mode == "auto" else {"mode": mode}
    agrees_with_the_reference(source, 7, "triton", torch.float32, 1e-4, chunk_size=16, **options)
