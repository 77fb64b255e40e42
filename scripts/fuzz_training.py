"""The gradient fuzz: edited stdlib specs trained through every parallel form, against the
reference's autograd (tests/gradient_agreement.py).

Specs come from tests/test_analysis_robust.py's `edited_specs` (swapped functions and operators,
duplicated or dropped lines, added constants, an output read before the update; every kind,
coupled scans included); with `--training-edits` half of them from `training_edited_specs`
instead, swaps (TRAINING_SWAPS too) drawn among those that apply to the spec. Each spec is called at a random length (1, 5 or 9 steps; chunks of 4) with
random inputs, half of the time with hard resets and zero gates, and the gradients of every input,
param and initial state are compared in fp64 for each torch variant (derived adjoints, plain
autograd, checkpointed slabs); every `--triton-every`-th spec also through every mode of its
Triton module (interpreter, 21 steps, chunks of 16). A failure is a gradient off the reference's
by more than 1e-9 relative, a non-finite gradient where the reference's is finite, or an
exception. A non-finite failure that goes away when the zero gates are left out (hard resets
kept) is the documented limitation of a (0, 1) gate at exactly 0 (its decay taken as log(gamma):
docs/backends.md "Numerics") and is counted apart.

    python scripts/fuzz_training.py --minutes 25 --seed 1 --out /tmp/fuzz_training.jsonl
    python scripts/fuzz_training.py --minutes 10 --seed 2 --training-edits   # more edits

Prints the counts (specs, checks, failures by kind) at the end; every failure's spec and
report goes to `--out`, one JSON line each.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]       # this checkout's seqc and the test helpers
os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import seqc  # noqa: E402
from gradient_agreement import compare, variants  # noqa: E402
from test_analysis_robust import KINDS, SWAPS, edited_specs, kinds_of, sources_by_kind  # noqa: E402

# With --training-edits, swaps aimed at what only training meets, beside the forward fuzz's:
# several writes and reads a token, constants under a function, a sigmoid decay.
TRAINING_SWAPS = [("+ k * v", "+ k * v + q * (v * v)"), ("+ k * v", "+ k * v + r * (v * v)"),
                  ("@ S", "@ S + 0.5 * (k @ S)"),
                  ("exp(", "exp(0.3) * exp("), ("output o = ", "output o = sigmoid(0.5) * "),
                  ("exp(g) * S", "sigmoid(g) * S"), ("exp(g) * h", "sigmoid(g) * h"),
                  ("output o = ", "output o2 = k @ S\noutput o = ")]


@st.composite
def training_edited_specs(draw, kind: str):
    """A stdlib spec with a group of `kind` after 1-3 swaps (of SWAPS and TRAINING_SWAPS) each
    drawn among those that apply to some line of it, and kept when the spec still checks with a
    group of that kind (`edited_specs` draws the line first: most swaps then do not apply)."""
    lines = draw(st.sampled_from(sources_by_kind()[kind])).splitlines()
    wanted, applied = draw(st.integers(1, 3)), 0
    for _ in range(4 * wanted):
        places = [(i, old, new) for i, line in enumerate(lines) if not line.startswith("#")
                  for old, new in SWAPS + TRAINING_SWAPS if old in line]
        if not places:
            break
        i, old, new = draw(st.sampled_from(places))
        edited = lines[:i] + [lines[i].replace(old, new, 1)] + lines[i + 1:]
        kinds = kinds_of("\n".join(edited) + "\n")
        if kinds is not None and kind in kinds:
            lines, applied = edited, applied + 1
            if applied == wanted:
                break
    return "\n".join(lines) + "\n"


class TimeUp(Exception):
    """The fuzz's time is over: raised from inside the hypothesis run to end it."""


class Fuzz:
    """Counts and failures of one run."""

    def __init__(self, out: Path, triton_every: int):
        self.out, self.triton_every = out, triton_every
        self.specs, self.checks = Counter(), Counter()
        self.failures, self.known = Counter(), Counter()

    def check_spec(self, source: str, kind: str, steps: int, extremes: bool) -> None:
        program = seqc.compile(source, "edited.seq")
        self.specs[kind] += 1
        runs = [("torch", options, steps, 0) for options in variants(program, "torch")]
        if self.triton_every and sum(self.specs.values()) % self.triton_every == 0:
            runs += [("triton", {**options, "chunk_size": 16}, 21, 0)
                     for options in variants(program, "triton")]
        for backend, options, length, seed_ in runs:
            self.checks[backend] += 1
            self.check_call(program, source, kind, backend, options, length, seed_, extremes)

    def check_call(self, program, source, kind, backend, options, steps, seed_, extremes):
        call = dict(steps=steps, seed=seed_, dtype=torch.float64)
        try:
            found = compare(program, backend, options, extremes=extremes, **call)
        except Exception:                              # noqa: BLE001 - a crash is a failure
            found = [traceback.format_exc(limit=-3)]
        if not found:
            return
        nonfinite = all(getattr(d, "error", 0) == float("inf") for d in found)
        if extremes and nonfinite and not compare(program, backend, options,
                                                  extremes="resets", **call):
            self.known[(kind, backend)] += 1
            verdict = "known: a (0, 1) gate at 0"
        else:
            self.failures[(kind, backend)] += 1
            verdict = "failure"
        with self.out.open("a") as out:
            out.write(json.dumps({"verdict": verdict, "kind": kind, "backend": backend,
                                  "options": options, "steps": steps, "extremes": extremes,
                                  "found": [str(d) for d in found], "source": source}) + "\n")

    def summary(self) -> str:
        lines = [f"specs {sum(self.specs.values())} ({dict(self.specs)})",
                 f"checks {sum(self.checks.values())} ({dict(self.checks)})",
                 f"failures {sum(self.failures.values())} ({dict(self.failures)})",
                 f"known (a (0, 1) gate at 0) {sum(self.known.values())} ({dict(self.known)})"]
        return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--triton-every", type=int, default=10,
                        help="every N-th spec also through Triton's modes (0: never)")
    parser.add_argument("--out", type=Path, default=Path("fuzz_training.jsonl"))
    parser.add_argument("--training-edits", action="store_true",
                        help="half of the specs from training_edited_specs")
    args = parser.parse_args()
    fuzz, deadline = Fuzz(args.out, args.triton_every), time.monotonic() + 60 * args.minutes

    @seed(args.seed)
    @settings(max_examples=10 ** 6, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data):
        kind = data.draw(st.sampled_from(KINDS))
        training = args.training_edits and data.draw(st.booleans())
        source = data.draw(training_edited_specs(kind) if training else edited_specs(kind))
        steps, extremes = data.draw(st.sampled_from([1, 5, 9])), data.draw(st.booleans())
        if time.monotonic() > deadline:     # after the draws: hypothesis replays this example
            raise TimeUp
        fuzz.check_spec(source, kind, steps, extremes)
        if sum(fuzz.specs.values()) % 20 == 0:
            print(fuzz.summary().replace("\n", "; "), flush=True)

    try:
        run()
    except TimeUp:
        pass
    print(fuzz.summary())


if __name__ == "__main__":
    main()
