"""Launch configurations of the parallel forms (backends/triton/parallel_host.md): the fixed
fallback runs under the interpreter and gives exactly what the configuration list's first entry
gives; the list path (TUNING "time", forced here, and "all") matches the reference; the
chunk-boundary states' dtype (`chunk_state_dtype`).
One spec per parallel form, tiny shapes, fp32 unless said (rtol / atol 1e-4 x max |expected|)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from seqc.inputs import random_call  # noqa: E402

pytestmark = pytest.mark.triton
# spec, its parallel mode, the function giving its kernels' lists, tiny lists (one block override)
FORMS = [
    ("simple_gla", "chunk_parallel", "_chunk_parallel_configs",
     {"state": [{}, {"num_warps": 8}], "output": [{}, {"BLOCK_V": 16}]}),
    ("deltanet", "chunk_delta_parallel", "_chunk_delta_parallel_configs",
     {"prepare": [{"num_warps": 8}], "state": [{}, {"num_stages": 2}],
      "output": [{}, {"BLOCK_V": 16}]}),
    ("rwkv7", "chunk_dplr_parallel", "_chunk_dplr_parallel_configs",
     {"prepare": [{"num_warps": 8}], "state": [{"num_warps": 8}],
      "output": [{"num_warps": 8}, {"BLOCK_V": 16}]}),
    ("hgrn", "scan_parallel", "_scan_parallel_configs", [{}, {"num_warps": 8}]),
]


def call(name, T=24, size=32):
    spec = seqc.load(name).spec
    dims = {d.name: size for d in spec.dims}
    dims.update(B=1, H=1, T=T)
    return random_call(spec, dims, dtype=torch.float32, seed=1, with_initial_state=True)


def run(name, mode, x, s, **options):
    kernel = seqc.load(name).kernel("triton", mode=mode, chunk_size=16, **options)
    return kernel(**x, initial_state=s, output_final_state=True)


def close(got, want, rtol=1e-4):
    for o in want.keys():
        scale = max(1.0, want[o].abs().max().item())
        torch.testing.assert_close(got[o].float(), want[o].float(), rtol=rtol, atol=rtol * scale)
    for n, v in want.final_state.items():
        scale = max(1.0, v.abs().max().item())
        torch.testing.assert_close(got.final_state[n], v, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("name,mode,lists,tiny", FORMS)
def test_the_fallback_runs_under_the_interpreter_and_the_list_matches_the_reference(
        name, mode, lists, tiny, monkeypatch):
    module = seqc.load(name).kernel("triton").module
    assert module._tuning() == "fallback"
    x, s = call(name)
    default = run(name, mode, x, s)
    first_only = getattr(module, lists)(*([32] if isinstance(tiny, dict) else []))
    first_only = {k: v[:1] for k, v in first_only.items()} if isinstance(first_only, dict) \
        else first_only[:1]
    monkeypatch.setattr(module, lists, lambda *a: first_only)
    monkeypatch.setattr(module, "TUNING", "time")
    fallback = run(name, mode, x, s)
    for o in default.keys():                    # the fallback: bit for bit the default run
        assert torch.equal(default[o], fallback[o])
    for n in default.final_state:
        assert torch.equal(default.final_state[n], fallback.final_state[n])

    monkeypatch.setattr(module, lists, lambda *a: tiny)
    monkeypatch.setattr(module, "_TUNED", {})
    want = seqc.load(name).kernel("reference")(**x, initial_state=s, output_final_state=True)
    close(run(name, mode, x, s), want)                 # timed: each entry launched, one kept
    assert len(module._TUNED) == sum(len(v) > 1 for v in (tiny.values() if isinstance(
        tiny, dict) else [tiny, tiny]))
    monkeypatch.setattr(module, "TUNING", "all")       # every entry in turn, as gpu-check does
    close(run(name, mode, x, s), want)


@pytest.mark.parametrize("name,mode", [f[:2] for f in FORMS[:3]])
def test_chunk_state_dtypes(name, mode):
    """A bf16 call stores its chunk-boundary states in bf16 (fla's default), `chunk_state_dtype`
    choosing otherwise: the output
    kernels cast them to bf16 before their dots either way, so the outputs are the same bit for
    bit with "input" and "fp32"; an fp32 call keeps them fp32."""
    x, s = call(name, T=48)
    x16 = {k: v.to(torch.bfloat16) for k, v in x.items()}
    for o in (got := run(name, mode, x16, s, chunk_state_dtype="input")).keys():
        assert torch.equal(got[o], run(name, mode, x16, s, chunk_state_dtype="fp32")[o])
    module = seqc.load(name).kernel("triton").module
    spare = torch.empty(1)
    assert module._chunk_state_dtype(spare, x16, {}) == torch.bfloat16
    assert module._chunk_state_dtype(spare, x16, {}, "fp32") == torch.float32
    assert module._chunk_state_dtype(spare, x16, {"chunk_state_dtype": "fp32"}) == torch.float32
    assert module._chunk_state_dtype(spare, x16, {"chunk_state_dtype": "input"}, "fp32") \
        == torch.bfloat16
    assert module._chunk_state_dtype(spare, x, {}) == torch.float32
    with pytest.raises(ValueError, match="chunk_state_dtype"):
        run(name, mode, x, s, chunk_state_dtype="fp8")
