"""Every stdlib spec through every Triton kernel family its Plan allows, against the reference.

There is no GPU here: the kernels run under the Triton interpreter (TRITON_INTERPRET=1, numpy on
the CPU). The variable must be set before `triton.jit` decorates a kernel, so it is set here,
before seqc imports any emitted module (the emitted modules also set it themselves when CUDA is
absent). Shapes are tiny (B=1, H=2, dims 16, T in {1, 37, 70}) and chunks small (16) so that
several chunks and a ragged last one run; one odd-size case (K=48, V=20) per matrix family.

Tolerance (fp32): relative 1e-4 of the output's magnitude (atol = 1e-4 * max(1, max |ref|)); the
kernels reorder sums (chunkwise matmuls, scans), measured errors are ~1e-6.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import ast  # noqa: E402
import functools  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from oracles import random_inputs, random_state  # noqa: E402

pytestmark = pytest.mark.triton
STDLIB = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "stdlib").glob("*.seq"))
RTOL = 1e-4
B, H = 1, 2


@functools.lru_cache(maxsize=None)
def program(name):
    return seqc.load(name)


def kernel(name, backend="triton", **options):
    return program(name).kernel(backend, **options)


def modes(name):
    return kernel(name).module.MODES


CASES = [(name, mode) for name in STDLIB for mode in modes(name)]


def assert_close(actual, expected, what):
    finite = expected[torch.isfinite(expected)]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    torch.testing.assert_close(actual.float(), expected.float(), rtol=RTOL, atol=RTOL * scale,
                               msg=lambda m: f"{what}: {m}")


def compare(name, mode, T, dims=None, init=True, scale=None, **options):
    spec = program(name).spec
    dims = dims or {d.name: 16 for d in spec.dims}
    x, p = random_inputs(name, B, T, H, dims=dims, seed=T)
    if scale:
        x = {n: t * scale.get(n, 1.0) for n, t in x.items()}
    s = random_state(name, B, H, dims=dims, seed=T) if init else None
    want = kernel(name, "reference")(**x, **p, initial_state=s, output_final_state=True)
    got = kernel(name, mode=mode, **options)(**x, **p, initial_state=s, output_final_state=True)
    for o in want.keys():
        assert_close(got[o], want[o], f"{name}/{mode} T={T} output {o}")
    for n, state in want.final_state.items():
        assert_close(got.final_state[n], state, f"{name}/{mode} T={T} final state {n}")



@pytest.mark.parametrize("name,mode", CASES)
def test_family_against_reference(name, mode):
    for T in (1, 37, 70):
        compare(name, mode, T, init=T != 37, chunk_size=16)


@pytest.mark.parametrize("name,mode", [("gla", "chunk"), ("gla", "fused_recurrent"),
                                       ("gated_deltanet", "chunk_delta"), ("kda", "chunk_delta"),
                                       ("rwkv7", "chunk_dplr"),
                                       ("deltaproduct", "chunk_delta"), ("hgrn2", "chunk")])
def test_odd_sizes(name, mode):
    """K = 48 and V = 20 in blocks of 64 and 32 lanes: masks on every load, store and sum."""
    compare(name, mode, 37, dims={"K": 48, "V": 20}, chunk_size=16)


@pytest.mark.parametrize("name,mode,V", [("simple_gla", "chunk", 40), ("gla", "chunk", 40),
                                         ("gated_deltanet", "chunk_delta_parallel", 130)])
def test_wide_keys(name, mode, V):
    """K = 130 (256 key lanes) narrows the value blocks: chunk's to 32 lanes (V = 40 in two),
    chunk_delta_parallel's output kernel to 64 (V = 130 in three; 128 beside narrower keys):
    docs/benchmarks.md, "Dims beyond the targets"."""
    compare(name, mode, 37, dims={"K": 130, "V": V}, chunk_size=16)


@pytest.mark.parametrize("name,mode", [("mlstm", "chunk"), ("mlstm", "fused_recurrent"),
                                       ("gated_deltanet", "chunk_delta")])
def test_value_split(name, mode):
    """V = 20 in blocks of 16: two programs per head; states without V stored once."""
    compare(name, mode, 37, dims={"K": 16, "V": 20}, chunk_size=16, block_split=16)


def test_keywise_decay_reanchored_in_sub_chunks():
    """Strong key-wise decays (log gates down to ~ -30 a step): exp of un-anchored cumulative
    gates would overflow; the kernel stays exact. (Chunks of 32 asked; the single kernel runs 16,
    one exact diagonal sub-chunk: backends/triton/blockwise.md, "Blocks".)"""
    compare("gla", "chunk", 70, scale={"g": 30.0}, chunk_size=32)


def test_keywise_delta_rule_reanchored_in_sub_chunks():
    """kda (key-wise chunk_delta): the UT system and the read-out under the same strong decays
    (chunks of 16 in the single kernel, as above)."""
    compare("kda", "chunk_delta", 70, scale={"g": 30.0}, chunk_size=32)


def test_diagonal_plus_low_rank_reanchored_in_sub_chunks():
    """rwkv7: the key's gate is shifted a step (it reads the state before the decay); strong
    key-wise decays over two sub-chunks a chunk stay exact."""
    compare("rwkv7", "chunk_dplr", 70, scale={"g": 30.0}, chunk_size=32)


def test_diagonal_plus_low_rank_with_the_key_between_two_decays():
    """A decay update, then the DPLR update with a scalar decay of its own that the key does not
    see (the `unseen` gate of chunk_dplr.py.j2)."""
    from seqc.inputs import random_call
    spec = ("model m\ndims K, V\ninput r[K], k[K], v[V], kk[K], a[K] in (0, 1)\n"
            "input g[K] in (-inf, 0), h in (-inf, 0)\nstate S[K, V] = 0\nS = exp(g) * S\n"
            "S = exp(h) * S - a * kk * (kk @ S) + k * v\noutput o = r @ S\n")
    program = seqc.compile(spec)
    x, s = random_call(program.spec, dict(B=1, T=37, H=2, K=16, V=16), seed=3,
                       with_initial_state=True)
    x["kk"] = torch.nn.functional.normalize(x["kk"], dim=-1)
    want = program.kernel("reference")(**x, initial_state=s, output_final_state=True)
    got = program.kernel("triton", mode="chunk_dplr", chunk_size=16)(
        **x, initial_state=s, output_final_state=True)
    assert_close(got.o, want.o, "output o")
    assert_close(got.final_state["S"], want.final_state["S"], "final state S")


def test_decode_step_carries_state():
    """T = 1 with a state in and out, twice in a row, equals T = 2 in one call."""
    name = "gated_deltanet"
    x, p = random_inputs(name, B, 2, H, dims={"K": 16, "V": 16}, seed=1)
    s = random_state(name, B, H, dims={"K": 16, "V": 16}, seed=1)
    fn = kernel(name, mode="fused_recurrent")
    whole = fn(**x, **p, initial_state=s, output_final_state=True)
    state = s
    for t in range(2):
        step = fn(**{n: v[:, t:t + 1] for n, v in x.items()}, **p, initial_state=state,
                  output_final_state=True)
        assert_close(step.o[:, 0], whole.o[:, t], f"decode step {t}")
        state = step.final_state
    assert_close(state["S"], whole.final_state["S"], "decode final state")


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="chunk_delta"):
        compare("gla", "chunk_delta", 1)


def test_families_follow_the_plan():
    """Each spec gets the fused kernel plus the family of its Plan (when it has one), a chunk
    Plan with one group (or normalisers beside it: mlstm) also the two-kernel form
    (chunk_parallel.md), a chunk_delta Plan the
    three-kernel form (chunk_delta_parallel.md), a scan Plan the two-level scan
    (scan_parallel.md)."""
    delta = ("fused_recurrent", "chunk_delta_parallel", "chunk_delta")
    want = {"gla": ("fused_recurrent", "chunk_parallel", "chunk"), "deltanet": delta,
            "hgrn": ("fused_recurrent", "scan_parallel", "scan"), "kda": delta, "deltaproduct": delta,
            "comba": delta,
            "rwkv7": ("fused_recurrent", "chunk_dplr_parallel", "chunk_dplr"), "maxplus": ("fused_recurrent", "scan_parallel", "scan"),
            "lstm": ("fused_recurrent",), "mlstm": ("fused_recurrent", "chunk_parallel", "chunk"),
            "rwkv6": ("fused_recurrent", "chunk_parallel", "chunk"),
            "simple_gla": ("fused_recurrent", "chunk_parallel", "chunk")}
    for name, expected in want.items():
        assert modes(name) == expected, name


@pytest.mark.parametrize("name", STDLIB)
def test_module_is_emitted_and_parses(name):
    code = seqc.load(name).emit("triton")
    assert code.startswith(f"# Emitted by seqc {seqc.__version__} from spec `{name}`")
    tree = ast.parse(code)
    kernels = [f.name for f in tree.body if isinstance(f, ast.FunctionDef)
               and any("jit" in ast.unparse(d) for d in f.decorator_list)]
    assert "fused_recurrent_kernel" in kernels


def test_seqc_run_with_triton(capsys):
    from seqc.cli import main
    spec = Path(__file__).resolve().parents[1] / "stdlib" / "gated_deltanet.seq"
    assert main(["run", str(spec), "--backends", "triton", "--steps", "20"]) == 0
    out = capsys.readouterr().out
    assert "triton" in out and "MISMATCH" not in out


@pytest.mark.parametrize("name,limit", [("gla", 1.1), ("hgrn", 1.1), ("lstm", 1.1)])
def test_bytes_moved_against_compulsory(name, limit):
    """Counted under the interpreter: the fused kernel moves every byte once, the family
    kernel too (targets: fused <= 1.1x, chunkwise <= 2x of the compulsory traffic)."""
    from seqc.bench_io import measure
    from seqc.inputs import random_call
    sizes = {"B": 1, "T": 20, "H": 2, **{d.name: 16 for d in program(name).spec.dims}}
    tensors, _ = random_call(program(name).spec, sizes)
    for mode in modes(name):       # chunk_parallel's chunk states are their own traffic
        ratio = measure(program(name), tensors, mode, chunk_size=16)["ratio_io"]
        assert ratio <= (limit if mode == "fused_recurrent" else 2.0), (mode, ratio)
