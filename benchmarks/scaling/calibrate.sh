#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# calibrate.sh: the runs the scaling model (benchmarks/scaling/model.py, docs/SCALING.md) is
# calibrated on: bench_comm at N = 2 and 4 (alpha-beta of all-gather, reduce-scatter and
# all-to-all through tpmpi's comm layer) and the same training run at N = 1, 2, 4 with
# TPMPI_PROFILE=1 (per-op compute at each N; 1 thread per rank; N = 4 oversubscribes a 2-core
# machine), and at N = 2, 4 with 2-bit compression, then prints model.py's
# prediction-vs-measurement table:
#
#   benchmarks/scaling/calibrate.sh [OUTDIR]      (default build/scaling)
#
# Environment: TPMPI (default build/tpmpi), CALIB_MODEL (default small), CALIB_BATCH (4),
# CALIB_SEQ (64), CALIB_STEPS (30), MPIRUN (mpirun), TPMPI_CACHE (build/cache).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$top/build/scaling}
tpmpi=${TPMPI:-$top/build/tpmpi}
comm=$(dirname "$tpmpi")/benchmarks/scaling/bench_comm
model=${CALIB_MODEL:-small} B=${CALIB_BATCH:-4} T=${CALIB_SEQ:-64} steps=${CALIB_STEPS:-30}
mpirun=${MPIRUN:-mpirun}
export TPMPI_CACHE=${TPMPI_CACHE:-$(dirname "$tpmpi")/cache}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# the fast OpenBLAS kernels and one thread per rank (PLATFORM.md section 8)
run_env=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1)
mkdir -p "$out"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm), $(nproc) cores,$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
    echo "commit: $(git -C "$top" describe --always --dirty 2>/dev/null || echo unknown)"
    echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out/machine.txt" >&2
: >"$out/comm.txt"
for n in 2 4; do
    "${run_env[@]}" "$mpirun" --oversubscribe --bind-to none -np "$n" "$comm" -e $((16 << 20)) \
        -n 20 | tee -a "$out/comm.txt" >&2
done
train() { # N TAG [tpmpi options...]
    local n=$1 tag=$2
    shift 2
    "${run_env[@]}" TPMPI_PROFILE=1 "$mpirun" --oversubscribe --bind-to none -np "$n" "$tpmpi" \
        --mode=train --model="$model" --batch="$B" --seq-len="$T" --steps="$steps" --threads=1 \
        --eval-batches=1 --log-every=1000000 --metrics="$out/$tag.jsonl" "$@" >"$out/$tag.log" 2>&1
}
for n in 1 2 4; do
    train "$n" "n$n"
done
for n in 2 4; do
    train "$n" "n$n-2bit" --grad-compression=2bit
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/machine.txt" >&2
printf '{"model": "%s", "batch": %d, "seq_len": %d, "cores": %d, "ranks": [1, 2, 4]}\n' \
    "$model" "$B" "$T" "$(nproc)" >"$out/calib.json"
python3 "$top/benchmarks/scaling/model.py" calibrate "$out" | tee "$out/calibration.md"
