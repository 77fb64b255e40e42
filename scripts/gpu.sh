#!/usr/bin/env bash
# One command for a machine with CUDA (issue 10):
#   1. the Triton tests, compiled for and run on the GPU (TRITON_INTERPRET=0; tests/conftest.py
#      moves each Triton kernel call's tensors to CUDA when SEQC_TEST_DEVICE=cuda);
#   2. seqc's Triton kernels against fla's Triton ops (python -m seqc.gpu_bench) at B=4, T=4096,
#      H=16, K=V=128, bf16: forward and forward + backward timed; outputs and gradients compared
#      (any mismatch exits 1); a markdown table;
#   3. every Triton mode of one spec per family timed side by side at B=4 and B=1 (python -m
#      seqc.gpu_modes): whether `mode=None`'s rule (docs/backends.md) picks the fastest form, and
#      beside each forward the GPU model's prediction (seqc/gpu_model.py, computed on the CPU
#      meanwhile) and measured / predicted: the model's calibration.
#
#   bash scripts/gpu.sh [--dry-run] [--specs simple_gla,gla,...]
#
# --dry-run: the same steps on the CPU under the Triton interpreter, at a tiny fp32 shape (step 1
# runs the Triton tests of the first spec only; step 2 runs fla's Triton ops interpreted, through
# the same adapters as on the GPU, seqc/fla_interpreted.py). CI runs it (tests/test_gpu_bench.py);
# tests/test_fla_triton_adapters.py checks every adapter against seqc's reference.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -x .venv/bin/python ]; then . .venv/bin/activate; fi

dry=0
specs="simple_gla,gla,gated_deltanet,kda,deltanet,retnet,linear_attn,hgrn2,mamba2,comba,deltaproduct,rwkv7,hgrn"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1; specs="simple_gla,gated_deltanet" ;;
        --specs) specs="$2"; shift ;;
        *) echo "gpu.sh: unknown argument $1 (use --dry-run, --specs A,B)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$dry" = 1 ]; then
    export TRITON_INTERPRET=1
    first="${specs%%,*}"
    echo "== 1/3 Triton tests (dry run: interpreter, $first only)"
    python -m pytest -q -x -p no:cacheprovider tests/test_triton.py \
        -k "test_family_against_reference and $first-"
    echo "== 2/3 seqc Triton vs fla (dry run)"
    python -m seqc.gpu_bench --dry-run --specs "$specs"
    echo "== 3/3 every Triton mode (dry run: $first, chunk and chunk_parallel)"
    python -m seqc.gpu_modes --dry-run --specs "$first" --modes chunk,chunk_parallel
else
    if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu.sh: no CUDA device visible to torch; run with --dry-run to test on the CPU" >&2
        exit 2
    fi
    export TRITON_INTERPRET=0 SEQC_TEST_DEVICE=cuda
    echo "== 1/3 Triton tests on the GPU"
    python -m pytest -q -x -p no:cacheprovider -m triton tests/
    echo "== 2/3 seqc Triton vs fla Triton ops (B=4, T=4096, H=16, K=V=128, bf16)"
    python -m seqc.gpu_bench --specs "$specs"
    echo "== 3/3 every Triton mode, side by side (bf16, K=V=128; B=4,H=16 and B=1,H=4)"
    python -m seqc.gpu_modes
fi
