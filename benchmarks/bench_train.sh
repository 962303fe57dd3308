#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench_train.sh: one tpmpi training benchmark point: MODEL on NRANKS ranks with THREADS
# threads each, STEPS steps at batch 4, sequence length 64 (the suite's fixed shape), writing
# the metrics JSONL, the resolved config.json and the log under OUTDIR/NAME/. benchmarks/run
# calls it for every point and benchmarks/report.py reads what it writes; it also runs alone:
#
#   benchmarks/bench_train.sh small 2 1 60 build/bench/raw small-n2 [--more-tpmpi-options]
#
# Environment: TPMPI (binary; default build/tpmpi), MPIRUN (default mpirun), TPMPI_CACHE
# (built-in corpus; default build/cache), TPM_BENCH_BATCH, TPM_BENCH_SEQ (default 4, 64).
# OpenBLAS: the environment's OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE pin the slow Haswell kernels
# on this machine, so they are unset here, and the thread counts are pinned (PLATFORM.md §8).
set -euo pipefail

if [ $# -lt 6 ]; then
    echo "usage: $0 MODEL NRANKS THREADS STEPS OUTDIR NAME [tpmpi options...]" >&2
    exit 2
fi
model=$1 nranks=$2 threads=$3 steps=$4 outdir=$5 name=$6
shift 6
top=$(cd "$(dirname "$0")/.." && pwd)
tpmpi=${TPMPI:-$top/build/tpmpi}
mpirun=${MPIRUN:-mpirun}
export TPMPI_CACHE=${TPMPI_CACHE:-$(dirname "$tpmpi")/cache}

dir=$outdir/$name
rm -rf "$dir" && mkdir -p "$dir"
# One multi-threaded rank must not be bound to one core (Open MPI's default for <= 2 ranks);
# more ranks than cores is for memory figures only and needs oversubscription.
bind=(--bind-to core)
if [ "$threads" -gt 1 ] || [ "$nranks" -gt "$(nproc)" ]; then
    bind=(--bind-to none --oversubscribe)
fi
# GPT-2 124M keeps its real 50257-token vocabulary (padded 50304): the built-in corpus only
# uses the first 4096 ids, which changes nothing in the compute.
vocab=()
case "$model" in gpt2-*) vocab=(--vocab-size=50257) ;; esac

cmd=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE
    OMP_NUM_THREADS="$threads" OPENBLAS_NUM_THREADS="$threads"
    "$mpirun" "${bind[@]}" -np "$nranks" "$tpmpi" --mode=train --model="$model" "${vocab[@]}"
    --batch="${TPM_BENCH_BATCH:-4}" --seq-len="${TPM_BENCH_SEQ:-64}" --steps="$steps"
    --threads="$threads" --eval-batches=1 --log-every=1000000
    --out="$dir" --metrics="$dir/metrics.jsonl" "$@")
echo "${cmd[*]}" >"$dir/command"
if ! "${cmd[@]}" >"$dir/log" 2>&1; then
    echo "bench_train: $name failed; its log:" >&2
    cat "$dir/log" >&2
    exit 1
fi
grep '"type":"summary"' "$dir/metrics.jsonl"
