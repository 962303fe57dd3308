#!/bin/sh
# SPDX-License-Identifier: MIT
# Checkpoints that must be refused: flipped bytes inside a dataset, a damaged header, a
# truncated file, a file that is not HDF5, a newer format version, a model or seed that does
# not match the command line, a directory with no checkpoint. Each gets a message naming the
# problem on every rank and exit status 2; nothing hangs (every run is under timeout).
set -u
: "${TPMPI:?}" "${MPIRUN:?}" "${TOP_BUILDDIR:?}"
dir=$TOP_BUILDDIR/tests/ckpt_errors.d
prog=$TOP_BUILDDIR/tests/mpi/test_ckpt
rm -rf "$dir" && mkdir -p "$dir"
common="--mode=train --model=tiny --steps=12 --batch=2 --seed=11 --threads=1 --log-every=100"
pass=0
fail=0

# expect NP WANT_RC PATTERN ARGS...: run tpmpi; exit status and message (on every rank)
expect() {
    np=$1 want=$2 pat=$3
    shift 3
    timeout 120 $MPIRUN -np "$np" "$TPMPI" "$@" >"$dir/out" 2>&1
    rc=$?
    nmsg=$(grep -c -- "$pat" "$dir/out")
    if [ "$rc" -eq "$want" ] && [ "$nmsg" -ge 1 ]; then
        pass=$((pass + 1))
        echo "ok (rc $rc): $(grep -m 1 -- "$pat" "$dir/out")"
    else
        fail=$((fail + 1))
        echo "FAIL: tpmpi $* (np $np): rc $rc (want $want), want message '$pat'; got:"
        sed 's/^/    /' "$dir/out" | grep -v '^    \[tpmpi r0\]   ' | head -20
    fi
}
# corrupt NAME: a copy of the good checkpoint in DIR/NAME/
corrupt() {
    mkdir -p "$dir/$1" && cp "$dir/good/ckpt_00000012.h5" "$dir/$1/"
    echo "$dir/$1/ckpt_00000012.h5"
}
# data_offset FILE DATASET: file offset of a contiguous dataset's data
data_offset() { h5dump -p -H -d "$2" "$1" | sed -n 's/^ *OFFSET \([0-9]*\).*/\1/p'; }
flip() { printf '\125\252\125\252' | dd of="$1" bs=1 seek="$2" conv=notrunc 2>/dev/null; }

timeout 300 $MPIRUN -np 2 "$TPMPI" $common --ckpt-dir="$dir/good" >"$dir/good.log" 2>&1 ||
    { cat "$dir/good.log"; echo "FAIL: could not write the checkpoint"; exit 1; }

f=$(corrupt flip_model)
off=$(data_offset "$f" /model/h.1.fcw)
flip "$f" $((off + 1000))
expect 3 2 "dataset /model/h.1.fcw fails its checksum" $common --ckpt-dir="$dir/flip_model" --resume

f=$(corrupt flip_optim)
off=$(data_offset "$f" /optim/v/wte)
flip "$f" $((off + 4))
expect 2 2 "dataset /optim/v/wte fails its checksum" $common --ckpt-dir="$dir/flip_optim" --resume
# weights only: the optimizer state is not read, so this file still initialises a model
expect 2 0 "fresh optimizer" $common --init-from="$dir/flip_optim/ckpt_00000012.h5" --steps=1

f=$(corrupt flip_header)
flip "$f" 600
expect 2 2 "damaged" $common --ckpt-dir="$dir/flip_header" --resume

f=$(corrupt truncated)
truncate -s 1000000 "$f"
expect 2 2 "truncated" $common --ckpt-dir="$dir/truncated" --resume
expect 1 2 "truncated" --mode=export --ckpt="$dir/truncated" --out="$dir/x.bin"

mkdir -p "$dir/text" && echo "not a checkpoint" >"$dir/text/ckpt_00000001.h5"
expect 2 2 "not HDF5" $common --ckpt-dir="$dir/text" --resume

mkdir -p "$dir/v99"
timeout 120 $MPIRUN -np 1 "$prog" set-version "$dir/good/ckpt_00000012.h5" \
    "$dir/v99/ckpt_00000012.h5" 99 >/dev/null 2>&1
expect 2 2 "format version 99, this tpmpi reads version 1" $common --ckpt-dir="$dir/v99" --resume

expect 2 2 "n_embd = 64, but this run has n_embd = 128 (--n-embd)" $common --n-embd=128 \
    --ckpt-dir="$dir/good" --resume
expect 3 2 "n_layer = 2, but this run has n_layer = 3 (--n-layer)" $common --n-layer=3 \
    --ckpt-dir="$dir/good" --resume
expect 2 2 "n_ctx = 64, but this run has n_ctx = 128" $common --n-ctx=128 \
    --ckpt-dir="$dir/good" --resume
expect 2 2 "seed = 11, but this run has seed = 12 (--seed)" $common --seed=12 \
    --ckpt-dir="$dir/good" --resume
expect 2 2 "n_embd = 64, but this run has n_embd = 32" $common --n-embd=32 \
    --init-from="$dir/good"

mkdir -p "$dir/empty"
expect 2 2 "no checkpoint in .*empty" $common --ckpt-dir="$dir/empty" --resume
expect 2 2 "no checkpoint in .*never" $common --ckpt-dir="$dir/never" --resume
expect 1 2 "resume needs --ckpt-dir" $common --resume
expect 1 2 "exclude each other" $common --resume --ckpt-dir="$dir/good" --init-from="$dir/good"
expect 2 2 "nope.h5: No such file" $common --init-from="$dir/nope.h5"
expect 1 2 "needs --ckpt" --mode=export --out="$dir/x.bin"

# issue 19: negative step counts, a --ckpt-dir that is a file, a fresh run in a used directory
if /usr/bin/python3 -c 'import h5py, numpy' 2>/dev/null; then
    mkdir -p "$dir/negstep" && cp "$dir/good/ckpt_00000012.h5" "$dir/negstep/"
    /usr/bin/python3 -c 'import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r+") as f: f.attrs.modify("step", np.int64(-3))' \
        "$dir/negstep/ckpt_00000012.h5"
    expect 2 2 "step -3, tokens_seen .*: negative counts" $common --ckpt-dir="$dir/negstep" --resume
else
    echo "SKIP (not counted): negative step, h5py is not available"
fi
echo "a file" >"$dir/afile"
expect 2 2 "ckpt-dir=.*afile is not a directory" $common --ckpt-dir="$dir/afile"
expect 2 2 "already holds the checkpoints of a run (newest .*ckpt_00000012.h5)" $common \
    --ckpt-dir="$dir/good"
check_latest=$(cat "$dir/good/latest")
if [ "$check_latest" = ckpt_00000012.h5 ]; then
    pass=$((pass + 1))
    echo "ok: the refused fresh run left latest alone"
else
    fail=$((fail + 1))
    echo "FAIL: latest is now '$check_latest'"
fi

# --overwrite: the fresh run deletes the old run's checkpoints first and writes its own
cp -r "$dir/good" "$dir/over"
touch "$dir/over/notes.txt"
expect 2 0 "overwrite: deleted .* file(s) of the previous run" $common --ckpt-dir="$dir/over" \
    --overwrite --steps=3
if [ "$(cat "$dir/over/latest")" = ckpt_00000003.h5 ] && [ ! -e "$dir/over/ckpt_00000012.h5" ] &&
    [ -e "$dir/over/notes.txt" ]; then
    pass=$((pass + 1))
    echo "ok: --overwrite replaced the old run's checkpoints and left other files alone"
else
    fail=$((fail + 1))
    echo "FAIL: --overwrite left: $(ls "$dir/over" | tr '\n' ' ')"
fi

# settings that are legal but almost certainly a mistake: a warning, and the run goes on
expect 1 0 "warning: --min-lr=0.01 is above --lr=0.001" $common --steps=2 --lr=1e-3 --min-lr=1e-2
expect 1 0 "warning: --warmup=50 is longer than --steps=2" $common --steps=2 --warmup=50

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
