#!/bin/sh
# SPDX-License-Identifier: MIT
# Data order 2 (docs/DATA.md section 4): every window is keyed by (step, index in the global
# batch), so any split N x A x B of a global batch of 6 sequences reads the same samples.
#  a) N=1 B=6, N=2 B=3, N=3 B=2 and N=2 B=1 A=3: the same training losses and the same
#     validation loss within 1e-5 relative
#  b) a checkpoint written on N=4 B=2 (global batch 8) resumed on N=2 B=4 continues the
#     losses of the straight N=4 run within 1e-5 relative
#  c) checkpoints record data_order = 2; one without the attribute (written before it
#     existed) resumes in order 1 and says so, its checkpoints keep order 1; an unknown order
#     is refused with exit status 2
set -u
: "${TPMPI:?}" "${MPIRUN:?}" "${TOP_BUILDDIR:?}"
. "$(dirname "$0")/train_lib.sh"
dir=$TOP_BUILDDIR/tests/data_order.d
prog=$TOP_BUILDDIR/tests/mpi/test_ckpt
rm -rf "$dir" && mkdir -p "$dir"
common="--mode=train --model=tiny --steps=16 --seed=5 --lr=1e-3 --warmup=4 --threads=1
        --log-every=100 --eval-every=8 --eval-batches=2"

# close REF OTHER WANT_LINES: the second column of two loss lists agrees within 1e-5 relative
close() {
    paste "$1" "$2" | awk -v want="$3" '
        { if ($1 != $3) bad = 1; d = $2 - $4; if (d < 0) d = -d; r = d / ($2 < 0 ? -$2 : $2);
          if (r > m) m = r; c++ }
        END { printf "  %d values, max relative difference %.3g\n", c, m;
              exit !(c == want && !bad && m <= 1e-5) }' >&2 && echo 1 || echo 0
}
vals() { sed -n 's/.*"type":"eval","step":\([0-9]*\),"val_loss":\([^}]*\)}.*/\1 \2/p' "$1"; }

# a) one global batch of 6, four splits
run_tpmpi a1 1 --batch=6
run_tpmpi a2 2 --batch=3
run_tpmpi a3 3 --batch=2
run_tpmpi a4 2 --batch=1 --grad-accum=3
losses "$dir/a1.jsonl" >"$dir/a1.loss"
vals "$dir/a1.jsonl" >"$dir/a1.val"
check "$([ "$(wc -l <"$dir/a1.val")" -eq 2 ] && echo 1 || echo 0)" "a) two validation records"
for t in "a2 N=2 B=3" "a3 N=3 B=2" "a4 N=2 B=1 A=3"; do
    n=${t%% *} lab=${t#* }
    losses "$dir/$n.jsonl" >"$dir/$n.loss"
    vals "$dir/$n.jsonl" >"$dir/$n.val"
    check "$(close "$dir/a1.loss" "$dir/$n.loss" 16)" "a) $lab: the 16 losses of N=1 B=6"
    check "$(close "$dir/a1.val" "$dir/$n.val" 2)" "a) $lab: the validation losses of N=1 B=6"
done
# the test has teeth: another seed gives other data (other losses)
run_tpmpi a5 2 --batch=3 --seed=6
losses "$dir/a5.jsonl" >"$dir/a5.loss"
check "$([ "$(close "$dir/a1.loss" "$dir/a5.loss" 16 2>/dev/null)" = 0 ] && echo 1 || echo 0)" \
    "a) another seed does not give the same losses"

# b) checkpoint on N=4 B=2 at step 8, resumed on N=2 B=4
run_tpmpi b_straight 4 --batch=2 --ckpt-dir="$dir/b4" --ckpt-every=8
mkdir -p "$dir/b2" && cp "$dir/b4/ckpt_00000008.h5" "$dir/b2/"
run_tpmpi b_resumed 2 --batch=4 --ckpt-dir="$dir/b2" --resume
losses "$dir/b_straight.jsonl" | sed -n '9,16p' >"$dir/b.ref"
losses "$dir/b_resumed.jsonl" >"$dir/b.got"
check "$(close "$dir/b.ref" "$dir/b.got" 8)" "b) N=4 B=2 resumed on N=2 B=4: steps 9-16 continue"
check "$(grep -q 'split 4 ranks x 1 x 2, now 2 x 1 x 4; the samples of every step are the same' \
    "$dir/b_resumed.log" && echo 1 || echo 0)" "b) the resume names the new split"

# c) the data_order attribute
order() { h5dump -a /data_order "$1" | sed -n 's/.*(0): \([0-9]*\).*/\1/p'; }
check "$([ "$(order "$dir/b4/ckpt_00000008.h5")" = 2 ] && echo 1 || echo 0)" \
    "c) new checkpoints say data_order 2"
mkdir -p "$dir/c1" "$dir/c3"
timeout 60 $MPIRUN -np 1 "$prog" set-data-order "$dir/b4/ckpt_00000008.h5" \
    "$dir/c1/ckpt_00000008.h5" 0 >"$dir/c1.prog" 2>&1
timeout 60 $MPIRUN -np 1 "$prog" set-data-order "$dir/b4/ckpt_00000008.h5" \
    "$dir/c3/ckpt_00000008.h5" 3 >"$dir/c3.prog" 2>&1
check "$(grep -q '^1 passed, 0 failed' "$dir/c1.prog" && grep -q '^1 passed, 0 failed' \
    "$dir/c3.prog" && echo 1 || echo 0)" "c) copies without data_order and with data_order 3"
run_tpmpi c_old 4 --batch=2 --ckpt-dir="$dir/c1" --resume --ckpt-every=4
check "$(grep -q 'uses data order 1 (windows keyed by micro-batch' "$dir/c_old.log" && echo 1 ||
    echo 0)" "c) an old checkpoint resumes in order 1 and says so"
check "$([ "$(order "$dir/c1/ckpt_00000016.h5")" = 1 ] && echo 1 || echo 0)" \
    "c) its checkpoints keep data_order 1"
losses "$dir/c_old.jsonl" >"$dir/c_old.loss"
check "$([ "$(close "$dir/b.ref" "$dir/c_old.loss" 8 2>/dev/null)" = 0 ] && echo 1 || echo 0)" \
    "c) order 1 reads other data than order 2"
# order 1 continues as order 1: resume the step-12 checkpoint of that run again
mkdir -p "$dir/c1b" && cp "$dir/c1/ckpt_00000012.h5" "$dir/c1b/"
run_tpmpi c_old2 4 --batch=2 --ckpt-dir="$dir/c1b" --resume
losses "$dir/c_old.jsonl" | sed -n '5,8p' >"$dir/c_old.ref"
losses "$dir/c_old2.jsonl" >"$dir/c_old2.loss"
check "$(close "$dir/c_old.ref" "$dir/c_old2.loss" 4)" "c) an order-1 run resumed again continues"
timeout 120 $MPIRUN -np 2 "$TPMPI" $common --batch=4 --ckpt-dir="$dir/c3" --resume \
    >"$dir/c3.log" 2>&1
rc=$?
check "$([ "$rc" -eq 2 ] && grep -q 'data_order 3; this tpmpi knows data orders 1 to 2 (written by a newer' \
    "$dir/c3.log" && echo 1 || echo 0)" "c) data_order 3 is refused with exit status 2 (rc $rc)"
finish
