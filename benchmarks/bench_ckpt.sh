#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench_ckpt.sh: checkpoint write and read throughput for gpt2-124m (124.5 M parameters,
# V = 50257 padded to 50304; weights + AdamW m + v = 1.49 GB) at N = 1 and 2 ranks, next to
# a plain sequential write and read of the same number of bytes with dd on the same disk.
#
#   write: tpmpi trains 1 step (--batch=1 --seq-len=64) with --ckpt-dir; the time is the one
#          tpm_ckpt_save logs: HDF5 create, collective writes, checksums, close, fsync, rename.
#          dd: bs=16M conv=fsync (data + fsync, like the checkpoint).
#   read:  tpmpi --resume (nothing left to train): open, collective reads into the shards,
#          checksum verification. dd: bs=16M to /dev/null. The page cache is dropped before
#          every read when possible (root); otherwise the reads are marked "warm".
# A shared disk's speed drifts, so each repetition runs dd right next to the checkpoint runs
# and the ratio is taken per repetition; the table shows medians over REPS (default 3).
#
# Usage: benchmarks/bench_ckpt.sh [BUILD_DIR]     (default: build)
# Environment: BENCH_DIR (scratch folder on the disk to measure; default /var/tmp/...),
#              REPS, MPIRUN, TPMPI_CACHE (the prepared built-in corpus).
set -euo pipefail

build=${1:-build}
tpmpi=$(cd "$build" && pwd)/tpmpi
mpirun=${MPIRUN:-mpirun}
reps=${REPS:-3}
dir=${BENCH_DIR:-/var/tmp/tpmpi_bench_ckpt.$$}
mkdir -p "$dir"
csv=$dir/bench_ckpt.csv
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_pml=ob1
export OMPI_MCA_rmaps_base_oversubscribe=1
model="--mode=train --model=gpt2-124m --vocab-size=50257 --batch=1 --seq-len=64 --steps=1 --threads=1 --log-every=1"

[ -x "$tpmpi" ] || { echo "no tpmpi in $build (build first)" >&2; exit 1; }

cache=warm
drop_caches() {
    sync
    if echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then cache=cold; else cache=warm; fi
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f\n", b - a }'; }
mibs() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1048576 }'; }

echo "# bench_ckpt: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -sr), $(nproc) cores," \
    "$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1)"
echo "# tpmpi $(git -C "$(dirname "$0")/.." describe --always --dirty 2>/dev/null || echo unknown)," \
    "scratch $dir on $(df -P "$dir" | awk 'NR == 2 { print $1 }'), $reps repetitions (median)"
echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews timings)"

# one repetition: ckpt write N=1, N=2, dd write; ckpt read N=1, N=2, dd read (times in s)
for ((i = 0; i < reps; i++)); do
    for n in 1 2; do
        rm -rf "$dir/ck$n"
        "$mpirun" -np "$n" "$tpmpi" $model --ckpt-dir="$dir/ck$n" >"$dir/train$n.log" 2>&1
        sed -n 's/.*checkpoint .*: step 1, [0-9.]* MiB written in \([0-9.]*\) s.*/\1/p' \
            "$dir/train$n.log" >>"$dir/w$n"
    done
    bytes=$(stat -c %s "$dir/ck1/ckpt_00000001.h5")
    count=$(((bytes + 16777215) / 16777216))
    t0=$(now)
    dd if=/dev/zero of="$dir/dd.bin" bs=16M count="$count" conv=fsync status=none
    since "$t0" >>"$dir/ddw"
    for n in 1 2; do
        drop_caches
        "$mpirun" -np "$n" "$tpmpi" $model --ckpt-dir="$dir/ck$n" --resume >"$dir/read$n.log" 2>&1
        sed -n 's/.*checkpoint .*: step 1, [0-9.]* MiB read and verified in \([0-9.]*\) s.*/\1/p' \
            "$dir/read$n.log" >>"$dir/r$n"
    done
    drop_caches
    t0=$(now)
    dd if="$dir/dd.bin" of=/dev/null bs=16M status=none
    since "$t0" >>"$dir/ddr"
    rm -f "$dir/dd.bin"
    # per-repetition ratios (bytes differ slightly: dd writes whole 16 MiB blocks)
    ddbytes=$((count * 16777216))
    for n in 1 2; do
        awk -v b="$bytes" -v d="$ddbytes" -v c="$(tail -n 1 "$dir/w$n")" -v t="$(tail -n 1 "$dir/ddw")" \
            'BEGIN { print (b / c) / (d / t) }' >>"$dir/qw$n"
        awk -v b="$bytes" -v d="$ddbytes" -v c="$(tail -n 1 "$dir/r$n")" -v t="$(tail -n 1 "$dir/ddr")" \
            'BEGIN { print (b / c) / (d / t) }' >>"$dir/qr$n"
    done
done
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "op,ranks,bytes,seconds,MiB_per_s,vs_dd,cache" >"$csv"
for n in 1 2; do
    s=$(median <"$dir/w$n")
    echo "write,$n,$bytes,$s,$(mibs "$bytes" "$s"),$(median <"$dir/qw$n"),-" >>"$csv"
done
s=$(median <"$dir/ddw")
echo "dd_write,1,$ddbytes,$s,$(mibs "$ddbytes" "$s"),1,-" >>"$csv"
for n in 1 2; do
    s=$(median <"$dir/r$n")
    echo "read,$n,$bytes,$s,$(mibs "$bytes" "$s"),$(median <"$dir/qr$n"),$cache" >>"$csv"
done
s=$(median <"$dir/ddr")
echo "dd_read,1,$ddbytes,$s,$(mibs "$ddbytes" "$s"),1,$cache" >>"$csv"

echo
column -s, -t <"$csv"
echo "(vs_dd: median over repetitions of checkpoint MiB/s / dd MiB/s measured next to it)"
echo "per repetition: write N=1 $(tr '\n' ' ' <"$dir/w1")s, N=2 $(tr '\n' ' ' <"$dir/w2")s," \
    "dd $(tr '\n' ' ' <"$dir/ddw")s; read N=1 $(tr '\n' ' ' <"$dir/r1")s," \
    "N=2 $(tr '\n' ' ' <"$dir/r2")s, dd $(tr '\n' ' ' <"$dir/ddr")s"
echo "results: $csv"
