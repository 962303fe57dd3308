#!/bin/sh
# SPDX-License-Identifier: MIT
# A failure on one rank only stops every rank with a clear message and a
# non-zero exit, never a hang: (1) rank 1 cannot allocate its shards (its
# address space is capped with prlimit, an MPMD launch: gpt2-350m at N = 2
# needs about 2.8 GB of model state per rank, the cap is 1.5 GB; gpt2-124m's
# 0.9 GB came too close to the cap once initialisation stopped staging whole
# tensors), (2) two ranks given different options refuse to start.
set -u
: "${TPMPI:?}" "${MPIRUN:?}"
if ldd "$TPMPI" | grep -q libasan; then
    echo "skip: address-space limits do not work under AddressSanitizer"
    exit 77
fi
dir=${TOP_BUILDDIR:-.}/tests/fault_rank.d
rm -rf "$dir" && mkdir -p "$dir"
pass=0
fail=0
args="--mode=train --model=gpt2-350m --seq-len=64 --batch=1 --steps=1 --threads=1"

# 1.0 GB: the shards, gather buffers and activations of rank 1 need about 0.9 GB on top of
# the program and its libraries (it fails between 0.8 and 1.4 GB here; 1.5 GB was enough
# once the initialisation stopped staging a whole host copy of the shard)
timeout 180 $MPIRUN -np 1 "$TPMPI" $args : -np 1 prlimit --as=1500000000 "$TPMPI" $args \
    >"$dir/alloc" 2>&1
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && grep -q "r1\] error: allocation of" "$dir/alloc" &&
    grep -q "r0\] error: stopping: another rank failed" "$dir/alloc"; then
    pass=$((pass + 1))
else
    fail=$((fail + 1))
    echo "FAIL: allocation failure on rank 1 (rc $rc):"
    cat "$dir/alloc"
fi

timeout 60 $MPIRUN -np 1 "$TPMPI" --mode=train --steps=5 : -np 1 "$TPMPI" --mode=train --steps=6 \
    >"$dir/cfg" 2>&1
rc=$?
if [ "$rc" -eq 2 ] && grep -q "ranks disagree on the configuration" "$dir/cfg"; then
    pass=$((pass + 1))
else
    fail=$((fail + 1))
    echo "FAIL: configuration disagreement (rc $rc):"
    cat "$dir/cfg"
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
