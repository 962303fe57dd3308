#!/bin/sh
# SPDX-License-Identifier: MIT
#
# compress_resume.sh: the residual policy of docs/COMPRESSION.md §5 (reset on load). Train
# `tiny` at N = 2 for 10 steps with a checkpoint at step 5, resume a copy from step 5 and
# compare steps 6-10 with the uninterrupted run:
#  - stochastic variant (no residual, draws keyed by step): identical losses;
#  - error feedback (fp32 residual, not in the checkpoint): step 6 identical (its gradient
#    is computed before the first update that misses the residual), later steps close
#    (within 1e-3 relative) but not identical.
set -eu
: "${TPMPI:?}" "${MPIRUN:?}"
. "$(dirname "$0")/train_lib.sh"
quiet_ok=1 # the labels below name the failure
dir=${TOP_BUILDDIR:-.}/tests/compress_resume.d
rm -rf "$dir" && mkdir -p "$dir"
common="--mode=train --model=tiny --steps=10 --batch=2 --seed=5 --threads=1 --log-every=10 --grad-compression=2bit"
run() { # log options...
    log=$1
    shift
    if ! $MPIRUN -np 2 "$TPMPI" $common "$@" >"$log" 2>&1; then
        cat "$log"
        echo "FAIL: tpmpi $*"
        exit 1
    fi
}
losses() { sed -n 's/.*"type":"step","step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/p' "$1" | sed -n '6,10p'; }

for r in none fp32; do
    run "$dir/full_$r.log" --compression-residual=$r --ckpt-dir="$dir/ck_$r" --ckpt-every=5 \
        --metrics="$dir/full_$r.jsonl"
    mkdir -p "$dir/re_$r"
    cp "$dir/ck_$r/ckpt_00000005.h5" "$dir/re_$r/"
    run "$dir/re_$r.log" --compression-residual=$r --ckpt-dir="$dir/re_$r" --resume \
        --metrics="$dir/re_$r.jsonl"
    losses "$dir/full_$r.jsonl" >"$dir/a_$r"
    sed -n 's/.*"type":"step","step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/p' "$dir/re_$r.jsonl" |
        awk '$1 >= 6' >"$dir/b_$r"
    echo "== $r: step, uninterrupted loss, resumed loss"
    paste "$dir/a_$r" "$dir/b_$r"
done
check "$([ -s "$dir/a_none" ] && cmp -s "$dir/a_none" "$dir/b_none" && echo 1 || echo 0)" \
    "stochastic variant: resumed losses should equal the uninterrupted run's"
check "$(paste "$dir/a_fp32" "$dir/b_fp32" | awk '
    NR == 1 { first = ($2 == $4) }
    { d = $2 - $4; if (d < 0) d = -d; r = d / $2; if (r > m) m = r; if (d > 0) diff = 1; c++ }
    END { print (c == 5 && first && diff && m <= 1e-3) }')" \
    "fp32 residual: step 6 should match, later steps differ by at most 1e-3 relative"
finish
