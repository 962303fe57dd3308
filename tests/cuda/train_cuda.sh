#!/bin/sh
# SPDX-License-Identifier: MIT
# Train `tiny` for 20 steps on the CPU and on the GPU from the same seed and data: every
# step's loss must agree to 1e-3 relative (fp32 matmuls here, TPMPI_CUDA_MATMUL=fp32, so
# only summation orders differ). The data is prepared from the source tree's own text, so
# the test needs nothing outside the tree. Exit 77 (SKIP) without a CUDA device.
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
for dev in cpu cuda; do
    if ! TPMPI_CUDA_MATMUL=fp32 $MPIRUN -np 1 "$TPMPI" --mode=train --model=tiny --steps=20 \
        --batch=4 --lr=1e-3 --seed=7 --data="$dir/data" --device="$dev" \
        --metrics="$dir/$dev.jsonl" >"$dir/$dev.log" 2>&1; then
        cat "$dir/$dev.log"
        echo "FAIL: training on $dev"
        exit 1
    fi
done
cat "$dir/cuda.log"
sed -n 's/.*"type":"step","step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/p' "$dir/cpu.jsonl" \
    >"$dir/cpu.loss"
sed -n 's/.*"type":"step","step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/p' "$dir/cuda.jsonl" \
    >"$dir/cuda.loss"
paste "$dir/cpu.loss" "$dir/cuda.loss" | awk '
    { d = $2 - $4; if (d < 0) d = -d; r = d / $2; if (r > worst) worst = r; n++
      printf "step %s cpu %s cuda %s rel %.2e\n", $1, $2, $4, r }
    END { printf "%d steps, worst relative difference %.2e (limit 1e-3)\n", n, worst
          exit !(n == 20 && worst <= 1e-3) }'
