"""The proof object carries its group's adjoint (seqc/analysis/adjoint.py; docs/analysis.md, "The
adjoint per kind"): the kind of the gradient's reverse recurrence and its decomposition, the
transition transposed. `seqc check -v` prints it, `seqc check --json` carries it."""
from __future__ import annotations

import json

import pytest

import seqc
from seqc.cli import main
from test_torch_coupled import SPECS as COUPLED


def adjoint(name, state):
    return seqc.load(name).analysis.proof(state).adjoint


@pytest.mark.parametrize("name,state,kind", [
    ("gla", "S", "chunk"), ("mamba", "h", "scan"), ("gated_deltanet", "S", "chunk_delta"),
    ("deltaproduct", "S", "chunk_delta"), ("rwkv7", "S", "chunk_delta"),
    ("logsumexp", "s", "scan"), ("maxplus", "m", "scan"), ("lstm", "c", "sequential")])
def test_every_kind_has_an_adjoint_kind(name, state, kind):
    assert adjoint(name, state).kind == kind


def test_diagonal_plus_low_rank_swaps_its_erase_direction_and_key():
    """rwkv7: A = D - (a * kk) kk^T (the key reading before the decay) transposes to
    D - kk (a * kk)^T."""
    proof = seqc.load("rwkv7").analysis.proof("S")
    a = proof.adjoint.decomposition
    assert (str(a["erase"]), str(a["key"])) == (str(proof.decomposition["key"]),
                                                str(proof.decomposition["erase"]))
    assert "`kk` (x) `a * kk`" in proof.adjoint.transition


def test_several_delta_steps_reverse_their_order():
    """deltaproduct: A = H2 H1, A^T = H1 H2: the reverse recurrence meets step 2 first."""
    proof = seqc.load("deltaproduct").analysis.proof("S")
    steps = proof.adjoint.decomposition["steps"]
    assert [s.key.id for s in steps] == ["k2", "k1"]
    assert "(I - `beta1` `k1` (x) `k1`) (I - `beta2` `k2` (x) `k2`)" in proof.adjoint.transition


def test_semirings_linearise_to_softmax_weights_or_the_argmax():
    assert "softmax" in adjoint("logsumexp", "s").transition
    assert "argmax" in adjoint("maxplus", "m").transition
    assert "1/2 on a tie" in adjoint("maxplus", "m").transition


def test_a_coupled_scan_transposes_its_couplings():
    """cross: u <- v is `c`, v <- u is `d`; the adjoint's v <- u is `c`, u <- v is `d`."""
    proof = seqc.compile(COUPLED["cross"]).analysis.proof("u")
    forward = {k: str(v) for k, v in proof.decomposition["coupling"].items()}
    backward = {k: str(v) for k, v in proof.adjoint.decomposition["coupling"].items()}
    assert backward == {(b, a): c for (a, b), c in forward.items()}
    assert forward[("u", "v")] != forward[("v", "u")]


def test_check_verbose_prints_the_adjoint_and_json_carries_it(capsys):
    assert main(["check", "-v", "rwkv7"]) == 0
    out = capsys.readouterr().out
    assert "`S` adjoint: chunk_delta, transition^T D_t - D'_t `kk` (x) `a * kk`" in out
    assert main(["check", "rwkv7"]) == 0
    assert "adjoint" not in capsys.readouterr().out
    assert main(["check", "--json", "maxplus"]) == 0
    entry = json.loads(capsys.readouterr().out)["states"]["m"]
    assert entry["adjoint"]["kind"] == "scan" and "argmax" in entry["adjoint"]["transition"]
