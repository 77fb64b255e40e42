"""chunk_parallel's kernels load only the inputs their code uses (`used`): a let that aliases an
input (`let vv = v`) next to another used input must not hide it. Before, the search for
`in_v` ran over `... = in_v` joined without a newline to the next kept line `in_x = ...`
(`in_vin_x`), so `in_v` was never loaded and the output kernel raised a NameError."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from seqc.inputs import random_call  # noqa: E402

pytestmark = pytest.mark.triton

SPEC = """model aliased
dims K, V, N
input q[K], k[K], v[V], x[N]
state S[K, V] = 0
let vv = v
S = exp(-1) * S + k * vv
output o = q @ S + sum(x, N)
"""


def test_a_let_aliasing_an_input_is_loaded():
    program = seqc.compile(SPEC, "aliased.seq")
    assert "chunk_parallel" in program.kernel("triton").module.MODES
    sizes = {"B": 1, "T": 5, "H": 2, "K": 4, "V": 4, "N": 3}
    tensors, initial = random_call(program.spec, sizes, torch.float32, seed=1,
                                   with_initial_state=True)
    want = program.kernel("reference")(**tensors, initial_state=initial, output_final_state=True)
    got = program.kernel("triton", mode="chunk_parallel", chunk_size=4)(
        **tensors, initial_state=initial, output_final_state=True)
    torch.testing.assert_close(got["o"], want["o"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.final_state["S"], want.final_state["S"], rtol=1e-5, atol=1e-5)
