#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# run_study.sh: the 2-bit gradient compression convergence study. Trains `small` on the
# built-in corpus at N = 2 for every variant and seed, one run after the other, writing each
# run's metrics (JSON lines) to OUT/<variant>_s<seed>.jsonl; then summarize.py makes the
# table and plot.py the PNG. Runs already complete in OUT are skipped, so the script can be
# restarted after an interruption.
#
# Usage: benchmarks/compression/run_study.sh [OUT]   (from the top directory, after make)
# Environment: TPMPI (binary, default build/tpmpi), MPIRUN (default mpirun), STEPS (600),
# BATCH (8), SEEDS ("1 2 3"), VARIANTS (the first five below; ef-fp32-warmup-freezev on request),
# EXTRA (more tpmpi options).
set -euo pipefail

out=${1:-build/compression_study}
tpmpi=${TPMPI:-build/tpmpi}
mpirun=${MPIRUN:-mpirun}
steps=${STEPS:-600}
batch=${BATCH:-8}
seeds=${SEEDS:-1 2 3}
warm=$((steps / 10))
variants=${VARIANTS:-none ef-fp32 ef-bf16 stochastic ef-fp32-warmup}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

options_of() {
    case "$1" in
    none) echo "--grad-compression=none" ;;
    ef-fp32) echo "--grad-compression=2bit --compression-residual=fp32" ;;
    ef-bf16) echo "--grad-compression=2bit --compression-residual=bf16" ;;
    stochastic) echo "--grad-compression=2bit --compression-residual=none" ;;
    ef-fp32-warmup) echo "--grad-compression=2bit --compression-residual=fp32 --compression-warmup=$warm" ;;
    ef-fp32-warmup-freezev)
        echo "--grad-compression=2bit --compression-residual=fp32 --compression-warmup=$warm --compression-freeze-v" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
    esac
}

mkdir -p "$out"
{
    echo "# $(date -u +%FT%TZ) $(git describe --always --dirty 2>/dev/null || echo unknown)"
    echo "# steps=$steps batch=$batch seeds=$seeds warmup=$warm variants=$variants"
    nproc
    grep -m1 'model name' /proc/cpuinfo || true
} >>"$out/study.log"

for seed in $seeds; do
    for v in $variants; do
        m="$out/${v}_s${seed}.jsonl"
        if [ -s "$m" ] && grep -q '"type":"summary"' "$m"; then
            continue
        fi
        echo "$(date -u +%T) $v seed $seed" >>"$out/study.log"
        # shellcheck disable=SC2046
        "$mpirun" -np 2 "$tpmpi" --mode=train --model=small --steps="$steps" --batch="$batch" \
            --lr=1e-3 --min-lr=1e-4 --warmup=30 --seed="$seed" --threads=1 \
            --eval-every=50 --eval-batches=8 --log-every=100 \
            $(options_of "$v") ${EXTRA:-} --metrics="$m.tmp" >>"$out/study.log" 2>&1
        mv "$m.tmp" "$m"
    done
done
echo "$(date -u +%T) done" >>"$out/study.log"
