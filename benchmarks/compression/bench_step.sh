#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench_step.sh: step time with and without 2-bit gradient compression. Trains `small` at
# N = 2 (one thread per rank) for STEPS steps per variant, ROUNDS times with the variants
# interleaved (so that load from other processes hits every variant alike), and writes the
# metrics to OUT/<variant>_r<round>.jsonl. project.py then prints the median step time, its
# parts and the projection to slower networks.
#
# Usage: benchmarks/compression/bench_step.sh [OUT]   (from the top directory, after make)
# Environment: TPMPI (default build/tpmpi), MPIRUN (mpirun), STEPS (60), ROUNDS (3), BATCH (8).
set -euo pipefail

out=${1:-build/compression_bench}
tpmpi=${TPMPI:-build/tpmpi}
mpirun=${MPIRUN:-mpirun}
steps=${STEPS:-60}
rounds=${ROUNDS:-3}
batch=${BATCH:-8}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

mkdir -p "$out"
{
    echo "# $(date -u +%FT%TZ) $(git describe --always --dirty 2>/dev/null || echo unknown)"
    echo "# steps=$steps rounds=$rounds batch=$batch; load: $(cut -d' ' -f1-3 /proc/loadavg)"
    grep -m1 'model name' /proc/cpuinfo || true
} >>"$out/bench.log"
for r in $(seq 1 "$rounds"); do
    for v in none ef-fp32 ef-bf16 stochastic; do
        case "$v" in
        none) opt="--grad-compression=none" ;;
        ef-fp32) opt="--grad-compression=2bit --compression-residual=fp32" ;;
        ef-bf16) opt="--grad-compression=2bit --compression-residual=bf16" ;;
        stochastic) opt="--grad-compression=2bit --compression-residual=none" ;;
        esac
        # shellcheck disable=SC2086
        "$mpirun" -np 2 "$tpmpi" --mode=train --model=small --steps="$steps" --batch="$batch" \
            --threads=1 --seed=1 --eval-batches=1 --log-every="$steps" $opt \
            --metrics="$out/${v}_r$r.jsonl" >>"$out/bench.log" 2>&1
    done
done
echo "# done $(date -u +%T); load: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/bench.log"
