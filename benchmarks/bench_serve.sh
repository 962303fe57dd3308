#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Single-stream decode and prefill speed of `tpmpi --mode=serve`'s engine against the
# memory-bandwidth bound, for random-init checkpoints of the `small` and `gpt2-124m` shapes
# (one training step each, GPT-2's vocabulary of 50257), at M = 1 and 2 ranks with the cores
# split evenly, for each serving weight format (--serve-dtype: fp32, bf16, int8). Output: BUILD_DIR/bench_serve.d/results.csv (+ checkpoints, logs; the gpt2-124m
# checkpoint with its AdamW moments is 1.5 GB, so it stays out of the source tree).
#
#   benchmarks/bench_serve.sh [BUILD_DIR]      (default: build)
# Env: TPM_BENCH_CORES (default: nproc), TPM_BENCH_TOKENS (64), TPM_BENCH_PROMPT (128),
# TPM_BENCH_REPS (5), TPM_BENCH_DTYPES ("fp32 bf16 int8"). On a shared machine the lockstep ranks and the OpenMP team wait for
# each other while descheduled, so waiting ranks yield (mpi_yield_when_idle=1) unless
# OMPI_MCA_mpi_yield_when_idle is set; on a dedicated node set it to 0.
set -euo pipefail
build=${1:-build}
cores=${TPM_BENCH_CORES:-$(nproc)}
tokens=${TPM_BENCH_TOKENS:-64}
prompt=${TPM_BENCH_PROMPT:-128}
dtypes=${TPM_BENCH_DTYPES:-fp32 bf16 int8}
reps=${TPM_BENCH_REPS:-5}
out=$build/bench_serve.d
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}
{
    echo "# $(date -u +%FT%TZ) $(git describe --always --dirty 2>/dev/null || echo unknown)"
    echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) x $cores cores"
    echo "ranks,threads,dtype,L,C,NH,V,weight_bytes_per_token,read_GBs,memcpy_GBs,bound_toks,decode_toks,prefill_ms,prefill_toks,wrong,load1,cpu_share"
} >"$out/results.csv"

for model in small gpt2-124m; do
    ck="$out/ck-$model"
    if [ ! -e "$ck/latest" ]; then
        "$build/tpmpi" --mode=train --model="$model" --vocab-size=50257 --steps=1 --batch=1 \
            --seq-len=64 --threads="$cores" --ckpt-dir="$ck" --out="$out/run-$model" \
            >"$out/train-$model.log" 2>&1
    fi
    # M = 1 with all cores, M = 1 with one core (the per-core reference), M = 2 x 1 core
    for mt in "1 $cores" "1 1" "2 $((cores / 2 > 0 ? cores / 2 : 1))"; do
        set -- $mt
        m=$1 t=$2
        for dt in $dtypes; do
            mpirun -np "$m" --bind-to none "$build/benchmarks/bench_serve" --ckpt="$ck" \
                --threads="$t" --prompt="$prompt" --tokens="$tokens" --reps="$reps" \
                --dtype="$dt" | tee "$out/$model-M$m-t$t-$dt.log" | grep -v '^csv,'
            grep '^csv,' "$out/$model-M$m-t$t-$dt.log" | cut -d, -f2- >>"$out/results.csv"
        done
    done
done
