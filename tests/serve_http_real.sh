#!/bin/sh
# SPDX-License-Identifier: MIT
# serve_http_real.sh: the HTTP tests against the real server: a `tiny` model is trained for
# 20 steps with a checkpoint, then tests/serve_http.sh (curl: API shape, errors, metrics,
# SIGTERM with a stream open) and tests/openai_client.sh (the openai Python client; SKIP
# part when PyPI is unreachable) run against `$MPIRUN -np $TPM_SERVE_NP tpmpi --mode=serve`
# (2 ranks: tensor-parallel) instead of the fake engine.
set -u
: "${TPMPI:?}" "${MPIRUN:?}"
: "${TOP_BUILDDIR:=.}"
: "${TOP_SRCDIR:=$(dirname "$0")/..}"
dir=$TOP_BUILDDIR/tests/serve_real.d
rm -rf "$dir" && mkdir -p "$dir"

if ! timeout 300 $MPIRUN -np 1 "$TPMPI" --mode=train --model=tiny --steps=20 --threads=1 \
    --ckpt-dir="$dir/ckpt" --out="$dir/run" >"$dir/train.log" 2>&1; then
    cat "$dir/train.log"
    echo "0 passed, 1 failed (training the checkpoint)"
    exit 1
fi
export SERVE_TARGET=real SERVE_CKPT="$dir/ckpt"
rc=0
echo "==== serve_http.sh against tpmpi --mode=serve"
sh "$TOP_SRCDIR/tests/serve_http.sh" || rc=1
echo "==== openai_client.sh against tpmpi --mode=serve"
sh "$TOP_SRCDIR/tests/openai_client.sh"
orc=$?
if [ $orc = 77 ]; then
    echo "(openai client part skipped: PyPI not reachable)"
elif [ $orc != 0 ]; then
    rc=1
fi
exit $rc
