#!/bin/sh
# SPDX-License-Identifier: MIT
# Bad input gets a clear message naming the problem and a non-zero exit, on
# every rank count, without hanging: options, model shapes, data files.
set -u
: "${TPMPI:?}" "${MPIRUN:?}"
dir=${TOP_BUILDDIR:-.}/tests/cli_errors.d
rm -rf "$dir" && mkdir -p "$dir"
pass=0
fail=0

# expect NP WANT_RC PATTERN ARGS...: run tpmpi, check exit code and a message
expect() {
    np=$1 want=$2 pat=$3
    shift 3
    timeout 120 $MPIRUN -np "$np" "$TPMPI" "$@" >"$dir/out" 2>&1
    rc=$?
    if [ "$rc" -eq "$want" ] && grep -qi -- "$pat" "$dir/out"; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
        echo "FAIL: tpmpi $* (np $np): rc $rc (want $want), want message '$pat'; got:"
        sed 's/^/    /' "$dir/out" | head -20
    fi
}

expect 1 0 "usage" --help
expect 1 0 "tpmpi" --version
expect 2 2 "unknown option" --mode=train --frobnicate
expect 2 2 "steps" --mode=train --steps=abc
expect 1 2 "steps" --mode=train --steps=0
expect 1 2 "lr" --mode=train --lr=-1
expect 1 2 "mode" --mode=dance
expect 2 2 "does not divide" --mode=train --model=tiny --n-head=5
expect 2 2 "needs --ckpt" --mode=eval
expect 2 2 "needs --ckpt" --mode=serve
# errors are errors: --log-level=error must not silence the only message before exit 2
expect 2 2 "needs --ckpt" --mode=serve --log-level=error
expect 1 2 "needs --ckpt" --mode=export --log-level=error
expect 1 2 "needs --ckpt" --mode=eval --log-level=error
expect 2 2 "split" --mode=eval --split=test
expect 2 2 "no such file" --mode=serve --ckpt="$dir/none.h5"
expect 1 2 "exceeds the position table" --mode=train --model=tiny --seq-len=128
expect 2 2 "precision" --mode=train --precision=fp8
expect 2 2 "arch" --mode=train --arch=bert
expect 2 2 "no LLaMA kernels" --mode=train --arch=llama --device=cuda
expect 2 2 "is a gpt2 preset, but --arch=llama" --mode=train --arch=llama
: >"$dir/a_file"
expect 2 1 "cannot create directory" --mode=train --steps=1 --out="$dir/a_file/run"
expect 2 2 "cuda-matmul" --mode=train --cuda-matmul=int8
export TPMPI_PRECISION=half
expect 1 2 "TPMPI_PRECISION" --mode=train
unset TPMPI_PRECISION

# data problems
mkdir -p "$dir/empty" "$dir/bad" "$dir/trunc"
expect 2 2 "train" --mode=train --data="$dir/empty" --vocab-size=256
printf 'not a shard file at all, definitely not' >"$dir/bad/x_train_000.bin"
expect 2 2 "x_train_000.bin" --mode=train --data="$dir/bad" --vocab-size=256
# a valid header (magic 20240520, version 1, 1000 tokens) but only 10 tokens of data
printf '\210\330\064\001\001\000\000\000\350\003\000\000' >"$dir/trunc/t_train_000.bin"
head -c 1012 /dev/zero >>"$dir/trunc/t_train_000.bin"
head -c 20 /dev/zero >>"$dir/trunc/t_train_000.bin"
expect 2 2 "t_train_000.bin.*truncated" --mode=train --data="$dir/trunc" --vocab-size=256
# a valid shard but no tokenizer.bin: the vocabulary size must be given
mkdir -p "$dir/novocab"
head -c 1024 "$dir/trunc/t_train_000.bin" >"$dir/novocab/n_train_000.bin"
head -c 2000 /dev/zero >>"$dir/novocab/n_train_000.bin"
expect 1 2 "vocab-size" --mode=train --data="$dir/novocab"
expect 1 2 "nonexistent" --mode=prepare --input="$dir/nonexistent.txt" --out="$dir/p"
: >"$dir/empty.txt"
expect 1 2 "no text" --mode=prepare --input="$dir/empty.txt" --out="$dir/p2"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
