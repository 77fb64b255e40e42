#!/bin/sh
# Reproduce the table of docs/benchmarks.md: `seqc bench` on the CPU, fp32, B=2 T=4096 H=4,
# every named dim 64, torch vs the reference step loop (and fla's chunkwise reference where one
# exists for the spec), alternating rounds, median of 7 (reference: of 3).
set -e
for spec in simple_gla gated_deltanet gla mamba2 hgrn; do
    seqc bench "$spec" --backends torch,reference --shape B=2,T=4096,H=4,K=64,V=64 --repeats 7
    echo
done
