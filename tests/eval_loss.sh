#!/bin/sh
# SPDX-License-Identifier: MIT
# --mode=eval: a tiny training run (N=2, grad-accum 2, 2 validation batches) reports its
# final val_loss; --mode=eval of its checkpoint on M=1, 2 and 3 ranks (tensor-parallel
# forward, not the training code) must give the same loss within 1e-5 relative, on the
# same windows. Also: --out, --eval-tokens, bf16/int8 weights close to fp32, and the
# input errors (exit 2).
set -u
: "${TPMPI:?}" "${MPIRUN:?}" "${TOP_BUILDDIR:?}"
. "$(dirname "$0")/train_lib.sh"
dir=$TOP_BUILDDIR/tests/eval_loss.d
rm -rf "$dir" && mkdir -p "$dir"
common="--model=tiny --threads=1 --log-level=warn"

run_tpmpi train 2 --mode=train --steps=30 --batch=2 --grad-accum=2 --lr=3e-3 --seed=11 \
    --eval-batches=2 --ckpt-dir="$dir/ck"
val=$(sed -n 's/.*"type":"eval","step":30,"val_loss":\([^}]*\)}.*/\1/p' "$dir/train.jsonl")
echo "training's final val_loss: $val"
check "$([ -n "$val" ] && echo 1 || echo 0)" "the training run reported a val_loss"

# field FILE NAME: a number of the JSON object eval printed
field() { sed -n "s/.*\"$2\":\([0-9.e+-]*\).*/\1/p" "$1"; }
rel() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; if (b == 0 || a == "") print 1; else printf "%.3g\n", d / b }'; }
within() { awk -v m="$1" -v t="$2" 'BEGIN { print (m + 0 <= t) ? 1 : 0 }'; }

for m in 1 2 3; do
    run_tpmpi "eval$m" "$m" --mode=eval --ckpt="$dir/ck" --eval-batches=2 --out="$dir/eval$m.json"
    got=$(field "$dir/eval$m.json" loss)
    r=$(rel "$got" "$val")
    echo "M=$m: eval loss $got, relative difference $r"
    check "$(within "$r" 1e-5)" "eval at M=$m equals the training val_loss within 1e-5 ($r)"
    check "$([ "$(field "$dir/eval$m.json" tokens)" = 1024 ] && echo 1 || echo 0)" \
        "M=$m: 2 batches x 8 windows x 64 tokens = 1024 tokens stated"
    check "$(cmp -s "$dir/eval$m.json" "$dir/eval$m.log" && echo 1 || echo 0)" \
        "M=$m: --out holds what was printed"
done
ppl=$(field "$dir/eval1.json" perplexity)
check "$(awk -v p="$ppl" -v l="$(field "$dir/eval1.json" loss)" \
    'BEGIN { d = log(p) - l; print (d < 1e-6 && d > -1e-6) }')" "perplexity = exp(loss)"

# --eval-tokens: ceil(100 / 64) = 2 windows, the first two of the training's
run_tpmpi tok 1 --mode=eval --ckpt="$dir/ck" --eval-tokens=100
check "$([ "$(field "$dir/tok.log" tokens)" = 128 ] && echo 1 || echo 0)" \
    "--eval-tokens=100 measures 2 windows (128 tokens)"

# the serving formats: close to fp32 (a tiny model at step 30; benchmarks/RESULTS.md has
# the figures for a trained one)
for dt in bf16 int8; do
    run_tpmpi "$dt" 2 --mode=eval --ckpt="$dir/ck" --eval-batches=2 --serve-dtype=$dt
    r=$(rel "$(field "$dir/$dt.log" perplexity)" "$ppl")
    echo "$dt: perplexity $(field "$dir/$dt.log" perplexity), ratio to fp32 differs by $r"
    check "$(within "$r" 0.02)" "--serve-dtype=$dt perplexity within 2% of fp32 ($r)"
    check "$(awk -v r="$r" 'BEGIN { print (r > 0) }')" "--serve-dtype=$dt is not fp32"
done

# errors: named, exit 2, nothing printed on stdout
expect_error() {
    _name=$1 _pat=$2
    shift 2
    timeout 120 $MPIRUN -np 2 "$TPMPI" $common --mode=eval "$@" >"$dir/$_name.out" \
        2>"$dir/$_name.err"
    _rc=$?
    check "$([ $_rc -eq 2 ] && grep -q "$_pat" "$dir/$_name.err" && [ ! -s "$dir/$_name.out" ] &&
        echo 1 || echo 0)" "$_name: exit 2 (got $_rc) naming the problem"
    [ $_rc -eq 2 ] || cat "$dir/$_name.err"
}
expect_error no_ckpt "needs --ckpt"
expect_error bad_ckpt "nothere" --ckpt="$dir/nothere.h5"
mkdir -p "$dir/empty"
expect_error no_split "no val split" --ckpt="$dir/ck" --data="$dir/empty"
finish
