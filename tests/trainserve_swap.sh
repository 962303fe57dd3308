#!/bin/sh
# SPDX-License-Identifier: MIT
# The engine's weight swap and --swap-policy (tests/mpi/test_swap_policy) at M = 1, 2, 3
# serving ranks: every rank swaps at the same iteration; with recompute the continuation is
# exactly the new weights' greedy continuation, with keep it is not. The tokenizer is the
# built-in corpus's (prepared by a 1-step training run when the cache does not hold it yet).
set -eu
: "${TPMPI:?}" "${MPIRUN:?}" "${TOP_BUILDDIR:?}"
dir=$TOP_BUILDDIR/tests/trainserve_swap.d
rm -rf "$dir" && mkdir -p "$dir"
cache=${TPMPI_CACHE:-$HOME/.cache/tpmpi}
tok=$cache/fortunes-v4096/tokenizer.bin
pass=0
fail=0
if [ ! -f "$tok" ]; then
    $MPIRUN -np 1 "$TPMPI" --mode=train --steps=1 --threads=1 >"$dir/prepare.log" 2>&1 ||
        { cat "$dir/prepare.log"; echo "0 passed, 1 failed"; exit 1; }
fi
for m in 1 2 3; do
    if timeout 300 $MPIRUN -np "$m" "$TOP_BUILDDIR/tests/mpi/test_swap_policy" --tokenizer="$tok" \
        --threads=1 >"$dir/m$m.log" 2>&1; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
        echo "FAIL: test_swap_policy at M=$m"
        cat "$dir/m$m.log"
    fi
    grep -E "^swap|passed" "$dir/m$m.log" | sed "s/^/  M=$m: /"
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
