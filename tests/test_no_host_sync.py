"""The emitted torch code reads no tensor value back to the host on a device other than the CPU
(docs/compile.md): every stdlib spec's torch module runs on `meta` tensors, which have no values,
so any `.item()`, `bool(tensor)`, `float(tensor)` or `.tolist()` on the way raises. Hard resets
(-inf log decays) are still exact there: the complex reset form is taken without asking whether
any gate is -inf (backends/torch/helpers.md, `_with_resets`), tested on the CPU against the
reference in tests/test_hard_resets.py and here with the branch forced.
"""
import pytest
import torch

import seqc
from seqc.consts import const_values
from seqc.inputs import random_call

NAMES = seqc.resources.stdlib_names()


def call(name, T=70, device="cpu"):
    prog = seqc.load(name)
    sizes = {"B": 2, "T": T, "H": 2, **{d.name: 8 for d in prog.spec.dims}}
    tensors, _ = random_call(prog.spec, sizes)
    inputs = {t.name: tensors[t.name].to(device) for t in prog.spec.inputs}
    params = {t.name: tensors[t.name].to(device) for t in prog.spec.params}
    dims = {**sizes, **const_values(prog.spec, sizes, {}, [])}
    return prog.kernel("torch").module, inputs, params, dims


@pytest.mark.parametrize("name", NAMES)
def test_runs_on_meta_tensors(name):
    module, inputs, params, dims = call(name, device="meta")
    outputs, final = module.run(inputs, params, dims, None, True)
    for o in prog_outputs(name):
        assert outputs[o].shape[:3] == (2, 70, 2), o
    assert set(final) == set(module.STATES)


def prog_outputs(name):
    return [o.name for o in seqc.load(name).spec.outputs]


@pytest.mark.parametrize("name", ["gla", "mamba2", "gated_deltanet", "rwkv7"])
def test_reset_form_without_resets_is_exact(name, monkeypatch):
    """The path a non-CPU device takes (the complex reset form, whether or not a gate is -inf),
    run on the CPU by making the module believe its tensors are elsewhere: equal to the real path
    to rounding."""
    module, inputs, params, dims = call(name)
    want, want_final = module.run(inputs, params, dims, None, True)
    monkeypatch.setattr(module, "_values_are_cheap", lambda tensor: False)
    got, got_final = module.run(inputs, params, dims, None, True)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6)
    for n in want_final:
        torch.testing.assert_close(got_final[n], want_final[n], rtol=1e-5, atol=1e-6)
