#!/bin/sh
# Reproduce the table of docs/benchmarks.md: `seqc bench` on the CPU, fp32, B=2 T=4096 H=4,
# every named dim 64 (mamba: N=16), torch vs the reference step loop (and fla's chunkwise reference where one
# exists for the spec), alternating rounds, median of 7 (reference: of 3).
# (`seqc bench` refuses dims a spec does not have, so each spec names its own.)
set -e
run() {
    seqc bench "$1" --backends torch,reference --shape "B=2,T=4096,H=4,$2" --repeats 7
    echo
}
run simple_gla K=64,V=64
run gated_deltanet K=64,V=64
run kda K=64,V=64
run rwkv7 K=64,V=64
run gla K=64,V=64
run mamba2 N=64,P=64
run mamba D=64,N=16
run hgrn D=64
