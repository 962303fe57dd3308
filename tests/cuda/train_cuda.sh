#!/bin/sh
# SPDX-License-Identifier: MIT
# Train `tiny` for 20 steps on the CPU and on the GPU from the same seed and data: every
# step's loss must agree to 1e-3 relative (fp32 matmuls here, --cuda-matmul=fp32, so only
# summation orders differ), with fp32 and with bf16 working weights (--precision=bf16 on
# both sides). The data is prepared from the source tree's own text, so the test needs
# nothing outside the tree. Exit 77 (SKIP) without a CUDA device.
set -u
: "${TPMPI:?}" "${MPIRUN:?}" "${TOP_BUILDDIR:?}" "${TOP_SRCDIR:?}"
"$TOP_BUILDDIR/tests/cuda/test_backend_cuda" --probe || exit $?
dir=$TOP_BUILDDIR/tests/train_cuda.d
rm -rf "$dir" && mkdir -p "$dir"
# 8 documents cut from the tree's text (prepare takes at most 64 input files)
mkdir -p "$dir/text"
cat "$TOP_SRCDIR"/docs/*.md "$TOP_SRCDIR"/src/*/*.c >"$dir/corpus.txt"
split -n l/8 "$dir/corpus.txt" "$dir/text/part"
inputs=
for f in "$dir"/text/part*; do inputs="$inputs --input=$f"; done
# shellcheck disable=SC2086
if ! $MPIRUN -np 1 "$TPMPI" --mode=prepare $inputs --out="$dir/data" --vocab-size=512 \
    >"$dir/prepare.log" 2>&1; then
    cat "$dir/prepare.log"
    exit 1
fi
fails=0
for prec in fp32 bf16; do
    for dev in cpu cuda; do
        if ! $MPIRUN -np 1 "$TPMPI" --mode=train --model=tiny --steps=20 --batch=4 --lr=1e-3 \
            --seed=7 --data="$dir/data" --device="$dev" --cuda-matmul=fp32 --precision="$prec" \
            --metrics="$dir/$dev-$prec.jsonl" >"$dir/$dev-$prec.log" 2>&1; then
            cat "$dir/$dev-$prec.log"
            echo "FAIL: training on $dev with --precision=$prec"
            exit 1
        fi
        sed -n 's/.*"type":"step","step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/p' \
            "$dir/$dev-$prec.jsonl" >"$dir/$dev-$prec.loss"
    done
    cat "$dir/cuda-$prec.log"
    paste "$dir/cpu-$prec.loss" "$dir/cuda-$prec.loss" | awk -v prec="$prec" '
        { d = $2 - $4; if (d < 0) d = -d; r = d / $2; if (r > worst) worst = r; n++
          printf "%s step %s cpu %s cuda %s rel %.2e\n", prec, $1, $2, $4, r }
        END { printf "%s: %d steps, worst relative difference %.2e (limit 1e-3)\n", prec, n,
                     worst
              exit !(n == 20 && worst <= 1e-3) }' || fails=$((fails + 1))
done
[ "$fails" -eq 0 ]
