#!/bin/sh
# SPDX-License-Identifier: MIT
# Live weight push between a training group and a serving group (issue 13, evidence 1):
# tests/mpi/test_push at training N = 1, 2 and serving M = 1, 2, 3 (3 does not divide the 4
# heads): after each of two pushes the serving group's logits equal the training forward on
# the same weights within 1e-5 (normalised), once with a bf16 push (within 2e-2), and once
# unpacking 4 KiB per poll (a push spread over many engine iterations).
set -eu
: "${MPIRUN:?}" "${TOP_BUILDDIR:?}"
dir=$TOP_BUILDDIR/tests/trainserve_push.d
rm -rf "$dir" && mkdir -p "$dir"
pass=0
fail=0

run() { # run NT M [options]
    _nt=$1 _m=$2
    shift 2
    _log="$dir/push-$_nt-$_m$(echo "$*" | tr -c 'a-z0-9\n' '-').log"
    if timeout 300 $MPIRUN -np $((_nt + _m)) "$TOP_BUILDDIR/tests/mpi/test_push" --serve="$_m" \
        --threads=1 "$@" >"$_log" 2>&1; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
        echo "FAIL: push from $_nt training to $_m serving rank(s) $*"
        cat "$_log"
    fi
    grep -E "^round|passed" "$_log" | sed "s/^/  /"
}

for nt in 1 2; do
    for m in 1 2 3; do
        run "$nt" "$m"
    done
done
run 2 3 --push-dtype=bf16
run 2 3 --unpack-budget=4096
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
