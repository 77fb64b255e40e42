"""The two-level scan `scan_parallel` (backends/triton/scan_parallel.md) against the reference,
under the Triton interpreter: every stdlib spec whose Plan runs the `scan` mode (elementwise
affine and semiring groups), the coupled scans of test_torch_coupled.py, lengths that are not a
multiple of the chunk, initial and final states, -inf gates, and the rule `mode=None` follows.
Tolerance (fp32): rtol 1e-4, atol 1e-4 * max(1, max |expected|)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import functools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from seqc.inputs import random_call  # noqa: E402
from test_torch_coupled import SPECS as COUPLED  # noqa: E402
from test_torch_coupled import program as coupled_program  # noqa: E402

pytestmark = pytest.mark.triton
SCAN_SPECS = ["hgrn", "logsumexp", "lru", "mamba", "maxplus", "mingru", "minlstm", "rglru"]
RTOL = 1e-4


@functools.lru_cache(maxsize=None)
def program(name):
    return coupled_program(name) if name in COUPLED else seqc.load(name)


def call(name, T, init, seed=0, size=5):
    spec = program(name).spec
    dims = {d.name: size for d in spec.dims}
    dims.update(B=1, H=2, T=T, E=2) if name in COUPLED else dims.update(B=1, H=2, T=T)
    return random_call(spec, dims, dtype=torch.float32, seed=seed, with_initial_state=init)


def assert_matches_reference(name, x, s, **options):
    want = program(name).kernel("reference")(**x, initial_state=s, output_final_state=True)
    got = program(name).kernel("triton", mode="scan_parallel", chunk_size=16, **options)(
        **x, initial_state=s, output_final_state=True)
    for o in want.keys():
        scale = max(1.0, want[o][want[o].isfinite()].abs().max().item())
        torch.testing.assert_close(got[o], want[o], rtol=RTOL, atol=RTOL * scale,
                                   msg=lambda m: f"{name} output {o}: {m}")
    for n, v in want.final_state.items():
        scale = max(1.0, v[v.isfinite()].abs().max().item())
        torch.testing.assert_close(got.final_state[n], v, rtol=RTOL, atol=RTOL * scale,
                                   msg=lambda m: f"{name} final state {n}: {m}")


def test_every_scan_spec_has_the_two_level_mode():
    from seqc.resources import stdlib_names
    have = [n for n in stdlib_names() if "scan_parallel" in seqc.load(n).kernel("triton").module
            .MODES]
    assert have == SCAN_SPECS


# T = 37 (chunks 16, 16, 5) and 70 (16 x 4, 6) take the same paths (full chunks, a ragged last
# one, a carry loop over several chunks): 70 runs for one spec per group kind (elementwise affine,
# semiring, coupled), 37 for every spec
LONG = ["hgrn", "logsumexp", sorted(COUPLED)[0]]


@pytest.mark.parametrize("init", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("name,T", [(name, T) for name in SCAN_SPECS + sorted(COUPLED)
                                    for T in [1, 37] + [70] * (name in LONG)])
def test_matches_reference(name, T, init):
    """chunk_size 16 at B x H = 2: chunks of one 16-step block, T = 37 and 70 end mid-chunk."""
    x, s = call(name, T, init, seed=T)
    assert_matches_reference(name, x, s)


def test_chunks_of_several_blocks_and_a_split_lane_dim():
    """block_split 2: three lane blocks of D = 5; B x H = 16: 48 programs want 6 chunks, and
    T = 200 (13 blocks of 16) gets 7 chunks of 2 blocks, the last one ragged."""
    module = program("hgrn").kernel("triton").module
    assert module._scan_chunk(200, 48, 16) == 32
    assert module._scan_chunk(4096, 64, 64) == 768 and module._scan_chunk(4096, 512, 64) == 4096
    spec = program("hgrn").spec
    x, s = random_call(spec, {"B": 2, "H": 8, "T": 200, "D": 5}, dtype=torch.float32, seed=3,
                       with_initial_state=True)
    assert_matches_reference("hgrn", x, s, block_split=2)


@pytest.mark.parametrize("name", ["hgrn", "maxplus", "logsumexp"])
def test_minus_infinity_gates(name):
    """-inf gates (hgrn: exp(g) = 0, a reset; maxplus, logsumexp: a = -inf drops the state) at
    step 3 (inside the first chunk), 16 (a chunk's first step), 20, 36 (the last), and a whole
    chunk of -inf semiring offsets (steps 16-31: the summary's offset is -inf there)."""
    x, s = call(name, 37, True, seed=5)
    gate = {"hgrn": "g", "maxplus": "a", "logsumexp": "la"}[name]
    for t in (3, 16, 20, 36):
        x[gate][0, t, 1, 2] = float("-inf")
    if name != "hgrn":
        x[{"maxplus": "x", "logsumexp": "lb"}[name]][0, 16:32, 0] = float("-inf")
    assert_matches_reference(name, x, s)


def test_mode_none_runs_the_two_level_scan_below_twice_the_sms():
    module = program("hgrn").kernel("triton").module
    assert module.PARALLEL_MODE == "scan_parallel" and module.DEFAULT_MODE == "scan"
    small = {"B": 4, "H": 16, "T": 4096, "D": 64}       # 4 lane blocks of 16: 256 programs
    assert module._scan_programs(small, 128) == 256
    assert module._choose_mode(small, 128) == "scan_parallel"
    large = {"B": 8, "H": 16, "T": 4096, "D": 128}      # 8 lane blocks: 1024 programs
    assert module._choose_mode(large, 128) == "scan"


def test_scan_programs_hold_at_most_1024_time_by_state_values():
    """mamba's h[D, N] is split over D (N is contracted by the read-out): at D = N = 64 a program
    holds [16, 1, 64] (time x D x N), 64 programs a head; hgrn's [64, 16], 4 a head (at 2048,
    [64, 32], logsumexp's and rglru's scan kernels spilled 8-12 B on sm_80)."""
    mamba = program("mamba").kernel("triton").module
    blocks, n_split, block_t = mamba._scan_blocks({"D": 64, "N": 64}, {})
    assert (block_t, blocks["BLOCK_D"], blocks["BLOCK_N"], n_split) == (16, 1, 64, 64)
    hgrn = program("hgrn").kernel("triton").module
    blocks, n_split, block_t = hgrn._scan_blocks({"D": 64}, {})
    assert (block_t, blocks["BLOCK_D"], n_split) == (64, 16, 4)
