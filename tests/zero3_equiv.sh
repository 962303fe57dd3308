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

# run N ACCUM TAG [extra options]
run() {
    n=$1 a=$2 tag=$3
    shift 3
    if ! timeout 600 $MPIRUN -np "$n" "$TPMPI" $common --grad-accum="$a" \
        --metrics="$dir/m$tag.jsonl" "$@" >"$dir/log$tag" 2>&1; then
        cat "$dir/log$tag"
        echo "FAIL: tpmpi at N=$n failed"
        exit 1
    fi
}
run 1 12 1
run 2 6 2
run 3 4 3
run 4 3 4

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

# compare REF OTHER STEPS LABEL
compare() {
    losses "$1" >"$dir/a"
    losses "$2" >"$dir/b"
    if paste "$dir/a" "$dir/b" | awk -v lab="$4" -v want="$3" '
        { d = $1 - $2; if (d < 0) d = -d; r = d / ($1 < 0 ? -$1 : $1); if (r > m) m = r; c++ }
        END { printf "%s: %d steps, max relative loss difference %.3g\n", lab, c, m;
              exit !(c == want && m <= 1e-5) }'; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
    fi
}
common="--mode=train --model=tiny --steps=10 --batch=1 --seed=3 --lr=1e-3 --threads=1 --log-every=10"
run 1 8 r8
run 8 1 n8
compare "$dir/mr8.jsonl" "$dir/mn8.jsonl" 10 "N=8 (more ranks than heads)"
common="--mode=train --model=tiny --steps=3 --batch=1 --seed=3 --lr=1e-3 --threads=1 --log-every=10"
run 1 32 r32
run 32 1 n32 --debug-collectives
compare "$dir/mr32.jsonl" "$dir/mn32.jsonl" 3 "N=32 with --debug-collectives"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
