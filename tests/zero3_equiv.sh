#!/bin/sh
# SPDX-License-Identifier: MIT
# ZeRO-3 equivalence: the same global batch (12 micro-batches per step) split as
# N=1 x 12, N=2 x 6, N=3 x 4 and N=4 x 3 (ranks x grad-accum) must give the
# same loss curve for 50 steps within 1e-5 relative (fp32 reduction order is
# the only difference). N=3 does not divide the 4 heads: padded row blocks.
set -eu
: "${TPMPI:?}" "${MPIRUN:?}"
dir=${TOP_BUILDDIR:-.}/tests/zero3_equiv.d
rm -rf "$dir" && mkdir -p "$dir"
common="--mode=train --model=tiny --steps=50 --batch=2 --seed=7 --lr=1e-3 --warmup=5 --threads=1 --log-every=50"

run() {
    if ! $MPIRUN -np "$1" "$TPMPI" $common --grad-accum="$2" --metrics="$dir/m$1.jsonl" \
        >"$dir/log$1" 2>&1; then
        cat "$dir/log$1"
        echo "FAIL: tpmpi at N=$1 failed"
        exit 1
    fi
}
run 1 12
run 2 6
run 3 4
run 4 3

losses() { sed -n 's/.*"type":"step".*"loss":\([^,]*\),.*/\1/p' "$1"; }
losses "$dir/m1.jsonl" >"$dir/ref"
[ "$(wc -l <"$dir/ref")" -eq 50 ] || { echo "FAIL: expected 50 step records"; exit 1; }
pass=0
fail=0
for n in 2 3 4; do
    losses "$dir/m$n.jsonl" >"$dir/l$n"
    if paste "$dir/ref" "$dir/l$n" | awk -v n="$n" '
        { d = $1 - $2; if (d < 0) d = -d; r = d / ($1 < 0 ? -$1 : $1); if (r > m) m = r; c++ }
        END { printf "N=%d: %d steps, max relative loss difference %.3g\n", n, c, m;
              exit !(c == 50 && m <= 1e-5) }'; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
    fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
