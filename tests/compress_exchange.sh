#!/bin/sh
# SPDX-License-Identifier: MIT
#
# compress_exchange.sh: the gradient exchange's multi-rank test (tests/mpi/test_exchange, a
# plain main()) at N = 2 and N = 3: compression off equals the plain reduce-scatter bit for
# bit; compression on, the owner's sum equals the sum of the dequantized contributions bit for
# bit, for every codec variant; byte counters and the 15x traffic reduction.
set -eu
: "${MPIRUN:?set MPIRUN (run through make check)}"
: "${TOP_BUILDDIR:?set TOP_BUILDDIR (run through make check)}"

prog="$TOP_BUILDDIR/tests/mpi/test_exchange"
for np in 2 3; do
    echo "== $MPIRUN -np $np $prog"
    "$MPIRUN" -np "$np" "$prog"
done
