#!/bin/sh
# SPDX-License-Identifier: MIT
#
# mpi_comm.sh: run the comm layer's multi-rank test (tests/mpi/test_comm, a plain main()) on
# 2 ranks and on 3 ranks (an odd count catches uneven-split bugs). Run by `make check` with
# MPIRUN and TOP_BUILDDIR exported by AM_TESTS_ENVIRONMENT; exit status decides PASS/FAIL.
set -eu
: "${MPIRUN:?set MPIRUN (run through make check)}"
: "${TOP_BUILDDIR:?set TOP_BUILDDIR (run through make check)}"

prog="$TOP_BUILDDIR/tests/mpi/test_comm"
for np in 2 3; do
    echo "== $MPIRUN -np $np $prog"
    "$MPIRUN" -np "$np" "$prog"
done

# --debug-collectives: a deliberate divergence (one rank calls barrier, the others
# all-reduce) must be reported with both call sites and stop the job, not hang
echo "== $MPIRUN -np 3 $prog --mismatch (expects a reported mismatch)"
out=$(timeout 60 "$MPIRUN" -np 3 "$prog" --mismatch 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || ! printf '%s\n' "$out" | grep -q "collective mismatch"; then
    printf '%s\n' "$out"
    echo "FAIL: mismatch not reported (rc $rc)"
    exit 1
fi
printf '%s\n' "$out" | grep "collective mismatch" | head -2
echo "mismatch detected as expected"
