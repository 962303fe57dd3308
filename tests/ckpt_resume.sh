#!/bin/sh
# SPDX-License-Identifier: MIT
# Exact resume on the same rank count (N=2): after a resume the losses, the weights and the
# AdamW moments are those of the uninterrupted run, bit for bit.
#  a) 40 steps straight (checkpoint every 20) vs. a resume from its step-20 checkpoint
#     (cosine schedule: both runs know the total of 40 steps)
#  b) 20 steps, then --resume --steps=40 vs. 40 steps straight (constant learning rate, so
#     the schedule does not depend on --steps); keep-K and "latest" along the way
set -u
: "${TPMPI:?}" "${MPIRUN:?}"
. "$(dirname "$0")/train_lib.sh"
dir=${TOP_BUILDDIR:-.}/tests/ckpt_resume.d
rm -rf "$dir" && mkdir -p "$dir"
common="--mode=train --model=tiny --batch=2 --grad-accum=2 --seed=7 --threads=1 --log-every=100"

# same FILE1 FILE2 LINES: identical, non-empty, LINES lines
same() { [ "$(wc -l <"$1")" -eq "$3" ] && cmp -s "$1" "$2" && echo 1 || echo 0; }
# h5same A B: /model and /optim identical (h5diff exit 0)
h5same() { h5diff -q "$1" "$2" /model /model && h5diff -q "$1" "$2" /optim /optim && echo 1 || echo 0; }

# a) cosine schedule, resume from the step-20 checkpoint of the same run
run_tpmpi a_straight 2 --steps=40 --lr=1e-3 --warmup=5 --ckpt-dir="$dir/a" --ckpt-every=20
mkdir -p "$dir/a2" && cp "$dir/a/ckpt_00000020.h5" "$dir/a2/"
run_tpmpi a_resumed 2 --steps=40 --lr=1e-3 --warmup=5 --ckpt-dir="$dir/a2" --resume
losses "$dir/a_straight.jsonl" | sed -n '21,40p' >"$dir/a_ref"
losses "$dir/a_resumed.jsonl" >"$dir/a_got"
check "$(same "$dir/a_ref" "$dir/a_got" 20)" "a) steps 21-40 after a resume: identical losses"
check "$(grep -q 'resuming from .*ckpt_00000020.h5: step 20' "$dir/a_resumed.log" && echo 1 || echo 0)" \
    "a) the resume is announced with its step"
check "$(h5same "$dir/a/ckpt_00000040.h5" "$dir/a2/ckpt_00000040.h5")" \
    "a) step-40 weights and AdamW moments identical"

# b) constant learning rate: 20 steps, then continue to 40
run_tpmpi b_straight 2 --steps=40 --lr=1e-3 --min-lr=1e-3 --ckpt-dir="$dir/b40"
run_tpmpi b_first 2 --steps=20 --lr=1e-3 --min-lr=1e-3 --ckpt-dir="$dir/b" --ckpt-every=5 --keep=2
check "$(ls "$dir/b" | tr '\n' ' ' | grep -qx 'ckpt_00000015.h5 ckpt_00000020.h5 latest ' && echo 1 || echo 0)" \
    "b) --keep=2 leaves the newest two checkpoints and 'latest'"
check "$([ "$(cat "$dir/b/latest")" = ckpt_00000020.h5 ] && echo 1 || echo 0)" "b) latest names step 20"
run_tpmpi b_second 2 --steps=40 --lr=1e-3 --min-lr=1e-3 --ckpt-dir="$dir/b" --resume --keep=2
losses "$dir/b_straight.jsonl" | sed -n '21,40p' >"$dir/b_ref"
losses "$dir/b_second.jsonl" >"$dir/b_got"
check "$(same "$dir/b_ref" "$dir/b_got" 20)" "b) 20 + 20 steps: identical losses to 40 straight"
check "$(h5same "$dir/b40/ckpt_00000040.h5" "$dir/b/ckpt_00000040.h5")" \
    "b) final weights and AdamW moments identical (end-of-training checkpoint)"
tok=$(h5dump -a /tokens_seen "$dir/b/ckpt_00000040.h5" | sed -n 's/.*(0): \([0-9]*\).*/\1/p')
check "$([ "$tok" = 20480 ] && echo 1 || echo 0)" \
    "b) tokens_seen counts both runs (40 steps x 2 ranks x 2 x 2 x 64 = 20480, got $tok)"

finish
