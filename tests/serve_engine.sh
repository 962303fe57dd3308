#!/bin/sh
# SPDX-License-Identifier: MIT
# Serving engine, tensor-parallel, without HTTP. A `tiny` model is trained for 30 steps on
# 2 ranks with a checkpoint; then at M = 1, 2, 3, 4 ranks (3 does not divide the 4 heads:
# the uneven head split; 4 is oversubscribed on small machines):
#  - tests/mpi/test_serve_tp: serving logits = training logits within 1e-5 (whole prompt,
#    chunked prefill + decode, slot reuse), from the checkpoint and from initial weights;
#  - tests/mpi/test_serve_engine: the engine loop with queued jobs (callbacks, finish
#    reasons, stop strings, cancel); its greedy and seeded outputs must be byte-identical
#    at every M;
#  - test_serve_tp --dtype=bf16|int8 and --kv-bf16 at M = 1, 2, 3: the serving formats
#    and the bf16 KV cache.
set -eu
: "${TPMPI:?}" "${MPIRUN:?}" "${TOP_BUILDDIR:?}"
dir=$TOP_BUILDDIR/tests/serve_engine.d
rm -rf "$dir" && mkdir -p "$dir"
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $1"; }

if ! timeout 300 $MPIRUN -np 2 "$TPMPI" --mode=train --model=tiny --steps=30 --batch=4 \
    --lr=3e-3 --warmup=5 --threads=1 --seed=3 --log-every=30 --ckpt-dir="$dir/ck" \
    --out="$dir/run" >"$dir/train.log" 2>&1; then
    cat "$dir/train.log"
    echo "0 passed, 1 failed"
    exit 1
fi
ok

for m in 1 2 3 4; do
    for src in "--ckpt=$dir/ck" ""; do
        log="$dir/tp$m${src:+-ckpt}.log"
        if timeout 300 $MPIRUN -np "$m" "$TOP_BUILDDIR/tests/mpi/test_serve_tp" $src \
            --threads=1 >"$log" 2>&1; then
            ok
        else
            bad "test_serve_tp M=$m ${src:-initial weights}"
        fi
        grep -E "max normalised|passed" "$log" | sed "s/^/  /"
    done
    log="$dir/engine$m.log"
    if timeout 300 $MPIRUN -np "$m" "$TOP_BUILDDIR/tests/mpi/test_serve_engine" \
        --ckpt="$dir/ck" --out="$dir/out$m" --threads=1 >"$log" 2>&1; then
        ok
    else
        bad "test_serve_engine M=$m"
        cat "$log"
    fi
    grep -E "^M=|passed" "$log" | sed "s/^/  /"
done

# serving weight formats: bf16 and int8 slices of the checkpoint against the fp32 training
# forward, at M = 1, 2, 3 (the tolerance is the format's error: test_serve_tp.c)
for dt in bf16 int8 kv; do
    for m in 1 2 3; do
        log="$dir/tp$m-$dt.log"
        # kv: fp32 weights with the KV cache in bf16
        if [ "$dt" = kv ]; then set -- --kv-bf16; else set -- --dtype="$dt"; fi
        if timeout 300 $MPIRUN -np "$m" "$TOP_BUILDDIR/tests/mpi/test_serve_tp" --ckpt="$dir/ck" \
            "$@" --threads=1 >"$log" 2>&1; then
            ok
        else
            bad "test_serve_tp M=$m $*"
        fi
        grep -E "max normalised|passed" "$log" | sed "s/^/  /"
    done
done

for m in 2 3 4; do
    if cmp -s "$dir/out1" "$dir/out$m"; then
        ok
    else
        bad "completions at M=$m differ from M=1"
        diff "$dir/out1" "$dir/out$m" || true
    fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
