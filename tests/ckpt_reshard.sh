#!/bin/sh
# SPDX-License-Identifier: MIT
# Reshard: a checkpoint written at N=4 (oversubscribed) resumes at N=1, 2 and 3 with the
# same global batch (grad-accum = 12/N): steps 21-40 match the N=4 continuation within 1e-5
# relative (fp32 reduction order is the only difference). The AdamW moments must come
# along: a negative control resumes from a copy whose moments were zeroed, and its curve
# must leave the tolerance.
set -u
: "${TPMPI:?}" "${MPIRUN:?}" "${TOP_BUILDDIR:?}"
. "$(dirname "$0")/train_lib.sh"
dir=$TOP_BUILDDIR/tests/ckpt_reshard.d
prog=$TOP_BUILDDIR/tests/mpi/test_ckpt
rm -rf "$dir" && mkdir -p "$dir"
common="--mode=train --model=tiny --steps=40 --batch=2 --seed=7 --lr=1e-3 --warmup=5 --threads=1 --log-every=100"

# maxrel REF GOT: max relative difference over matching lines (20 expected)
maxrel() {
    paste "$1" "$2" | awk '{ if ($1 != $3) { bad = 1 } d = $2 - $4; if (d < 0) d = -d;
        r = d / ($2 < 0 ? -$2 : $2); if (r > m) m = r; c++ }
        END { if (c != 20 || bad) print "nan"; else printf "%.3g\n", m + 0 }'
}
within() { awk -v m="$1" -v t="$2" 'BEGIN { print (m != "nan" && m + 0 <= t) ? 1 : 0 }'; }

run_tpmpi n4 4 --grad-accum=3 --ckpt-dir="$dir/n4" --ckpt-every=20
losses "$dir/n4.jsonl" | sed -n '21,40p' >"$dir/ref"
for n in 1 2 3; do
    mkdir -p "$dir/n$n" && cp "$dir/n4/ckpt_00000020.h5" "$dir/n$n/"
    run_tpmpi "n$n" "$n" --grad-accum=$((12 / n)) --ckpt-dir="$dir/n$n" --resume
    losses "$dir/n$n.jsonl" >"$dir/got$n"
    m=$(maxrel "$dir/ref" "$dir/got$n")
    check "$(within "$m" 1e-5)" "written at N=4, resumed at N=$n: steps 21-40 within 1e-5 (max relative $m)"
done
check "$(grep -q 'written on 4 rank(s), now 3' "$dir/n3.log" && echo 1 || echo 0)" \
    "the resume reports the rank counts"

# negative control: the same resume with the moments zeroed must not match
if timeout 120 $MPIRUN -np 2 "$prog" reset-optim "$dir/n4/ckpt_00000020.h5" \
    "$dir/reset.h5" >"$dir/reset.log" 2>&1; then
    mkdir -p "$dir/r2" && cp "$dir/reset.h5" "$dir/r2/ckpt_00000020.h5"
    run_tpmpi r2 2 --grad-accum=6 --ckpt-dir="$dir/r2" --resume
    losses "$dir/r2.jsonl" >"$dir/gotr"
    m=$(maxrel "$dir/ref" "$dir/gotr")
    check "$(awk -v m="$m" 'BEGIN { print (m != "nan" && m + 0 > 1e-4) ? 1 : 0 }')" \
        "control: zeroed AdamW moments leave the tolerance (max relative $m)"
else
    cat "$dir/reset.log"
    check 0 "control: could not make the zeroed-moments copy"
fi

finish
