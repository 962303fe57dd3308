#!/bin/sh
# SPDX-License-Identifier: MIT
# Crash safety: kill -9 every rank (and mpirun) while a checkpoint is being written. The
# test hook TPMPI_CKPT_TEST_DELAY_MS sleeps after each dataset write to make the window
# wide. The previous checkpoint must stay the one "latest" names, load, and resume to the
# same losses as an uninterrupted run; the half-written temporary is never picked and is
# cleaned up by the next checkpoint.
set -u
: "${TPMPI:?}" "${MPIRUN:?}"
. "$(dirname "$0")/train_lib.sh"
dir=${TOP_BUILDDIR:-.}/tests/ckpt_crash.d
rm -rf "$dir" && mkdir -p "$dir"
common="--mode=train --model=tiny --steps=30 --batch=2 --grad-accum=2 --seed=3 --lr=1e-3 --min-lr=1e-3 --threads=1 --log-every=100"


# reference: the same 30 steps, uninterrupted
timeout 300 $MPIRUN -np 2 "$TPMPI" $common --metrics="$dir/ref.jsonl" >"$dir/ref.log" 2>&1 ||
    { cat "$dir/ref.log"; echo "FAIL: reference run"; exit 1; }

TPMPI_CKPT_TEST_DELAY_MS=40 $MPIRUN -np 2 "$TPMPI" $common --ckpt-dir="$dir/c" --ckpt-every=10 \
    --metrics="$dir/crash.jsonl" >"$dir/crash.log" 2>&1 &
pid=$!
# wait until step 10 is complete and step 20 is half written
i=0
while [ $i -lt 1200 ]; do
    if [ -f "$dir/c/ckpt_00000020.h5.tmp" ] && [ -f "$dir/c/latest" ]; then
        break
    fi
    sleep 0.1
    i=$((i + 1))
done
sleep 0.5
ranks=$(pgrep -P "$pid" || true)
# a node dies: no rank gets to clean up
[ -n "$ranks" ] && kill -9 $ranks 2>/dev/null
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
echo "killed mpirun $pid and ranks" $ranks "; directory: $(ls "$dir/c" | tr '\n' ' ')"
check "$([ -n "$ranks" ] && [ -f "$dir/c/ckpt_00000020.h5.tmp" ] && echo 1 || echo 0)" \
    "the ranks were killed while ckpt_00000020.h5.tmp was being written"
check "$([ "$(cat "$dir/c/latest" 2>/dev/null)" = ckpt_00000010.h5 ] && [ ! -e "$dir/c/ckpt_00000020.h5" ] && echo 1 || echo 0)" \
    "latest still names ckpt_00000010.h5; no ckpt_00000020.h5 appeared"

if timeout 300 $MPIRUN -np 2 "$TPMPI" $common --ckpt-dir="$dir/c" --resume \
    --metrics="$dir/resumed.jsonl" >"$dir/resumed.log" 2>&1; then
    check 1 "the resume after the crash succeeds"
else
    cat "$dir/resumed.log"
    check 0 "the resume after the crash succeeds"
fi
check "$(grep -q 'resuming from .*ckpt_00000010.h5: step 10' "$dir/resumed.log" && echo 1 || echo 0)" \
    "it resumed from step 10"
losses "$dir/ref.jsonl" | sed -n '11,30p' >"$dir/ref_tail"
losses "$dir/resumed.jsonl" >"$dir/got"
check "$([ "$(wc -l <"$dir/got")" -eq 20 ] && cmp -s "$dir/ref_tail" "$dir/got" && echo 1 || echo 0)" \
    "steps 11-30 identical to the uninterrupted run"
check "$([ ! -e "$dir/c/ckpt_00000020.h5.tmp" ] && [ "$(cat "$dir/c/latest")" = ckpt_00000030.h5 ] && echo 1 || echo 0)" \
    "the stale temporary was removed; latest names step 30"

finish
