#!/bin/sh
# SPDX-License-Identifier: MIT
# Train `tiny` on the built-in corpus under mpirun -np 1 for 300 steps: the
# training loss must fall by a clear margin and a validation loss be reported.
set -eu
: "${TPMPI:?}" "${MPIRUN:?}"
. "$(dirname "$0")/train_lib.sh"
quiet_ok=1 # the labels below name the failure
dir=${TOP_BUILDDIR:-.}/tests/train_tiny.d
rm -rf "$dir" && mkdir -p "$dir"
if ! $MPIRUN -np 1 "$TPMPI" --mode=train --model=tiny --steps=300 --batch=8 --lr=3e-3 \
    --warmup=20 --eval-every=100 --out="$dir/runs/nested/run" >"$dir/log" 2>&1; then
    cat "$dir/log"
    echo "0 passed, 1 failed"
    exit 1
fi
cat "$dir/log"
m="$dir/runs/nested/run/metrics.jsonl" # --out creates missing parents
first=$(sed -n 's/.*"type":"step","step":1,"loss":\([^,]*\),.*/\1/p' "$m")
last=$(sed -n 's/.*"type":"summary".*"final_loss":\([^,]*\),.*/\1/p' "$m")
val=$(sed -n 's/.*"type":"summary".*"final_val_loss":\([^,]*\),.*/\1/p' "$m")
evals=$(grep -c '"type":"eval"' "$m" || true)
echo "first loss $first, final loss $last, final val loss $val, $evals evaluations"
check "$(awk -v a="$first" -v b="$last" 'BEGIN { print (b < a - 1.5) }')" "loss did not fall by 1.5 nats"
check "$(awk -v v="$val" 'BEGIN { print (v > 0 && v < 20) }')" "no sane validation loss"
check "$([ "$evals" -eq 3 ] && echo 1 || echo 0)" "expected 3 evaluations"
check "$(grep -q 'built-in corpus' "$dir/log" && echo 1 || echo 0)" "built-in corpus not announced"
check "$([ -s "$dir/runs/nested/run/config.json" ] && echo 1 || echo 0)" "config.json not written"
finish
