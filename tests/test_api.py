"""The Python API contract (ARCHITECTURE.md), call validation and the module cache."""
import re

import pytest
import torch

import seqc
from seqc import cache
from seqc.inputs import random_call

SIZES = {"B": 2, "T": 5, "H": 3, "K": 4, "V": 6}


def gla_call(**overrides):
    tensors, _ = random_call(seqc.load("gla").spec, SIZES)
    tensors.update(overrides)
    return tensors


def test_load_by_name_and_by_path_and_compile_agree(tmp_path):
    by_name = seqc.load("gla")
    path = tmp_path / "mine.seq"
    path.write_text(by_name.source)
    assert seqc.load(str(path)).spec == by_name.spec
    assert seqc.compile(by_name.source).spec == by_name.spec


def test_kernel_returns_outputs_as_attributes_and_final_state_on_request():
    fn = seqc.load("gla").kernel(backend="reference")
    out = fn(**gla_call())
    assert out.o.shape == (2, 5, 3, 6) and out.final_state is None
    out = fn(**gla_call(), output_final_state=True)
    assert set(out.final_state) == {"S"} and out.final_state["S"].shape == (2, 3, 4, 6)
    assert out.final_state["S"].dtype == torch.float32


def test_outputs_come_back_in_the_input_dtype_with_fp32_state():
    fn = seqc.load("gla").kernel()
    tensors = {k: v.to(torch.bfloat16) for k, v in gla_call().items()}
    out = fn(**tensors, output_final_state=True)
    assert out.o.dtype == torch.bfloat16 and out.final_state["S"].dtype == torch.float32


def test_splitting_a_sequence_with_initial_and_final_state_equals_one_run():
    fn = seqc.load("gla").kernel()
    tensors = gla_call()
    whole = fn(**tensors, output_final_state=True)
    first = fn(**{k: v[:, :2] for k, v in tensors.items()}, output_final_state=True)
    second = fn(**{k: v[:, 2:] for k, v in tensors.items()}, initial_state=first.final_state,
                output_final_state=True)
    torch.testing.assert_close(torch.cat([first.o, second.o], 1), whole.o)
    torch.testing.assert_close(second.final_state["S"], whole.final_state["S"])


def test_a_partial_initial_state_starts_the_other_states_from_their_declaration():
    fn = seqc.load("mlstm").kernel()
    tensors, states = random_call(seqc.load("mlstm").spec, SIZES, with_initial_state=True)
    both = fn(**tensors, initial_state={"C": states["C"], "n": torch.zeros_like(states["n"])})
    only_c = fn(**tensors, initial_state={"C": states["C"]})
    torch.testing.assert_close(both.h, only_c.h)


@pytest.mark.parametrize("call,pattern", [
    (lambda t: {k: v for k, v in t.items() if k != "g"},
     r"missing input `g` \(expected shape \[B, T, H, K\]\)"),
    (lambda t: {**t, "k": t["k"][..., :2]},
     r"input `k` has shape \[2, 5, 3, 2\] but expected \[B, T, H, K\] = \[2, 5, 3, 4\]"),
    (lambda t: {**t, "v": t["v"][0]},
     r"input `v` must have 4 dims \[B, T, H, V\], but has shape \[5, 3, 6\]"),
    (lambda t: {**t, "gk": t["g"]}, r"unknown argument `gk`"),
    (lambda t: {**t, "k": t["k"].double()}, r"`k` has dtype torch.float64 but `q` has"),
    (lambda t: {**t, "k": t["k"].to(torch.int32)}, r"`k` has dtype torch.int32; expected a floating"),
    (lambda t: {**t, "q": [1, 2]}, r"input `q` must be a torch.Tensor of shape \[B, T, H, K\]"),
    (lambda t: {**t, "v": t["v"][:, :, :2]}, r"input `v` has 2 heads but H = 3 \(the largest "
                                              r"head count, from input `q`\)"),
])
def test_bad_calls_raise_value_errors_naming_the_tensor_and_the_expected_shape(call, pattern):
    fn = seqc.load("gla").kernel()
    with pytest.raises(ValueError, match=pattern):
        fn(**call(gla_call()))


def test_bad_initial_states_are_named():
    fn = seqc.load("gla").kernel()
    with pytest.raises(ValueError, match=r"initial state `S` has shape \[2, 3, 4\] but expected|"
                                         r"initial state `S` must have 4 dims \[B, H, K, V\]"):
        fn(**gla_call(), initial_state={"S": torch.zeros(2, 3, 4)})
    with pytest.raises(ValueError, match=r"initial_state has unknown state `X`"):
        fn(**gla_call(), initial_state={"X": torch.zeros(2, 3, 4, 6)})
    with pytest.raises(ValueError, match=r"initial_state must be a dict"):
        fn(**gla_call(), initial_state=torch.zeros(2, 3, 4, 6))


def test_params_are_per_head_and_checked():
    fn = seqc.load("mamba2").kernel()
    tensors, _ = random_call(fn.program.spec, {"B": 2, "T": 3, "H": 2, "N": 4, "P": 5})
    fn(**tensors)
    with pytest.raises(ValueError, match=r"param `A` has shape \[3\] but expected \[H\] = \[2\]"):
        fn(**{**tensors, "A": torch.full((3,), -1.0)})


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="unknown backend `cuda`"):
        seqc.load("gla").kernel(backend="cuda")


def test_auto_backend_picks_triton_on_cuda_and_torch_on_the_cpu():
    from seqc.kernel import resolve_backend
    assert resolve_backend("auto", device_is_cuda=True) == "triton"
    assert resolve_backend("auto", device_is_cuda=False) == "torch"
    assert resolve_backend("reference", device_is_cuda=True) == "reference"


def test_auto_kernel_runs_the_torch_backend_for_cpu_tensors():
    fn = seqc.load("gla").kernel(backend="auto")
    tensors = gla_call()
    out = fn(**tensors, output_final_state=True)
    assert set(fn._kernels) == {"torch"}
    want = seqc.load("gla").kernel("reference")(**tensors)
    torch.testing.assert_close(out.o, want.o, rtol=1e-5, atol=1e-6)


def test_disk_cache_is_reused_and_a_corrupt_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "_MEMORY", {})
    program = seqc.compile(seqc.load("simple_gla").source + "\n# a comment makes a new key\n")
    program.kernel()
    entries = list(tmp_path.glob("reference_*.py"))
    assert len(entries) == 1
    first = entries[0].read_text()
    assert first.startswith("# seqc-cache ") and "def run(" in first

    entries[0].write_text(first.replace("def run(", "def run(((("))        # corrupt it
    monkeypatch.setattr(cache, "_MEMORY", {})
    fn = program.kernel()
    assert entries[0].read_text() == first                                  # rebuilt
    tensors, _ = random_call(program.spec, {"B": 1, "T": 2, "H": 1, "K": 2, "V": 2})
    assert fn(**tensors).o.shape == (1, 2, 1, 2)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing left over


def test_memory_cache_returns_the_same_module():
    program = seqc.load("gla")
    assert program.kernel().module is program.kernel().module


def test_the_cache_key_depends_on_spec_version_and_backend():
    assert len({cache.cache_key("a", "1", "reference"), cache.cache_key("b", "1", "reference"),
                cache.cache_key("a", "2", "reference"), cache.cache_key("a", "1", "torch")}) == 4


def test_spec_errors_are_spec_errors_not_tracebacks():
    with pytest.raises(seqc.SpecError) as error:
        seqc.compile("model m\ndims K\ninput x[K]\noutput o = y\n", "m.seq")
    assert re.search(r"m\.seq:4:12: error: unknown name `y`", str(error.value))


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_unknown_kernel_options_are_value_errors_listing_the_known_ones(backend):
    with pytest.raises(ValueError, match=r"unknown option `chunk_sise` for backend"):
        seqc.load("gla").kernel(backend, chunk_sise=16)


@pytest.mark.parametrize("size", [0, -3, 1.5, "8", True, None])
@pytest.mark.parametrize("backend", ["torch", "triton", "auto"])
def test_bad_chunk_size_is_a_value_error_when_the_kernel_is_built(backend, size):
    with pytest.raises(ValueError, match=rf"chunk_size must be a positive integer, not "
                                         rf"{re.escape(repr(size))}"):
        seqc.load("gla").kernel(backend, chunk_size=size)
