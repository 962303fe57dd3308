#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Push latency of --mode=trainserve's live weight push for the `small` and `gpt2-124m` shapes
# (GPT-2's vocabulary, 50257), fp32 and bf16, from 1 training rank to 1 serving rank (and
# to 2 with TPM_BENCH_WIDE=1), against the bound measured in the same run: bytes moved /
# rank 0's memcpy bandwidth (benchmarks/bench_push.c). Output: BUILD_DIR/bench_push.d/results.csv
#
#   benchmarks/bench_push.sh [BUILD_DIR]      (default: build)
# Env: TPM_BENCH_REPS (5), TPM_BENCH_WIDE (0).
set -euo pipefail
build=${1:-build}
reps=${TPM_BENCH_REPS:-5}
out=$build/bench_push.d
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
{
    echo "# $(date -u +%FT%TZ) $(git describe --always --dirty 2>/dev/null || echo unknown) load: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "model,params,train_ranks,serve_ranks,dtype,bytes,push_min_s,push_median_s,memcpy_GBs,bound_s,ratio"
} >"$out/results.csv"
layouts="1:1"
[ "${TPM_BENCH_WIDE:-0}" = 1 ] && layouts="1:1 1:2"
for model in small gpt2-124m; do
    for dtype in fp32 bf16; do
        for lay in $layouts; do
            nt=${lay%%:*} m=${lay##*:}
            mpirun -np $((nt + m)) "$build/benchmarks/bench_push" --serve="$m" --model="$model" \
                --push-dtype="$dtype" --reps="$reps" | tee -a "$out/results.csv"
        done
    done
done
echo "results: $out/results.csv"
