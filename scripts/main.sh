#!/usr/bin/env bash
# The README's main job: set up, compile a stdlib spec, run it on the CPU against the reference.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
seqc check stdlib/gated_deltanet.seq
seqc compile gated_deltanet -b torch -o out/gated_deltanet_torch.py
echo "emitted out/gated_deltanet_torch.py ($(wc -l < out/gated_deltanet_torch.py) lines)"
seqc run gated_deltanet --backends reference,torch
python examples/01_gated_deltanet/run.py
