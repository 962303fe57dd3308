#!/bin/sh
# SPDX-License-Identifier: MIT
# A CUDA build on a machine without a usable GPU: --device=cuda stops every rank with
# "no CUDA device: <CUDA error>" and exit status 1, without hanging. Exit 77 (SKIP) when a
# device is present (train_cuda.sh covers that case).
set -u
: "${TPMPI:?}" "${MPIRUN:?}" "${TOP_BUILDDIR:?}"
"$TOP_BUILDDIR/tests/cuda/test_backend_cuda" --probe >/dev/null
rc=$?
if [ "$rc" -eq 0 ]; then
    echo "a CUDA device is present: the no-device path cannot be checked here"
    exit 77
elif [ "$rc" -ne 77 ]; then
    echo "FAIL: the device probe exited with $rc"
    exit 1
fi
dir=$TOP_BUILDDIR/tests/nodevice.d
rm -rf "$dir" && mkdir -p "$dir"
pass=0
fail=0
for np in 1 2; do
    # shellcheck disable=SC2086 # MPIRUN may carry options
    timeout 120 $MPIRUN -np "$np" "$TPMPI" --mode=train --model=tiny --steps=1 --device=cuda \
        >"$dir/out" 2>&1
    rc=$?
    if [ "$rc" -eq 1 ] && grep -q "error: no CUDA device: ." "$dir/out"; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
        echo "FAIL: --device=cuda at np $np: rc $rc (want 1 and 'no CUDA device: ...'); got:"
        sed 's/^/    /' "$dir/out" | head -20
    fi
done
cat "$dir/out"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
