#!/bin/sh
# SPDX-License-Identifier: MIT
# --precision=bf16 (bf16 working weights, fp32 master weights, gradients and moments):
#  a) the same global batch on N=1, 2, 3 ranks gives the same losses (within 1e-5 relative:
#     the bf16 rounding is per element, so only the fp32 reduction order differs);
#  b) the losses differ from --precision=fp32 (the bf16 path is really taken) but stay
#     within 1e-2 relative over 40 steps;
#  c) at N=2 the all-gathers move exactly half the bytes of fp32, the reduce-scatters the same;
#  d) an exact resume: 20 + 20 steps equal 40 straight, bit for bit (the working copy is
#     rebuilt from the loaded master weights);
#  e) --precision is validated (unknown value: exit 2, names the option).
set -u
: "${TPMPI:?}" "${MPIRUN:?}"
. "$(dirname "$0")/train_lib.sh"
dir=${TOP_BUILDDIR:-.}/tests/precision_bf16.d
rm -rf "$dir" && mkdir -p "$dir"
common="--mode=train --model=tiny --steps=40 --batch=2 --seed=7 --lr=1e-3 --min-lr=1e-3 --threads=1 --log-every=100"

# maxrel A B LIMIT: 1 if every step's relative loss difference is <= LIMIT (and 40 steps)
maxrel() {
    losses "$1" >"$dir/x"
    losses "$2" >"$dir/y"
    paste "$dir/x" "$dir/y" | awk -v lim="$3" -v lab="$4" '
        { d = $2 - $4; if (d < 0) d = -d; r = d / ($2 < 0 ? -$2 : $2); if (r > m) m = r; c++ }
        END { printf "%s: %d steps, max relative difference %.3g\n", lab, c, m > "/dev/stderr";
              print (c == 40 && m <= lim) ? 1 : 0 }'
}

run_tpmpi b1 1 --precision=bf16 --grad-accum=6
run_tpmpi b2 2 --precision=bf16 --grad-accum=3
run_tpmpi b3 3 --precision=bf16 --grad-accum=2
run_tpmpi f2 2 --precision=fp32 --grad-accum=3
check "$(maxrel "$dir/b1.jsonl" "$dir/b2.jsonl" 1e-5 'bf16 N=1 vs N=2')" "a) bf16: N=2 matches N=1"
check "$(maxrel "$dir/b1.jsonl" "$dir/b3.jsonl" 1e-5 'bf16 N=1 vs N=3')" "a) bf16: N=3 matches N=1"
check "$(maxrel "$dir/f2.jsonl" "$dir/b2.jsonl" 1e-2 'fp32 vs bf16')" "b) bf16 within 1e-2 of fp32"
check "$(losses "$dir/f2.jsonl" | cmp -s - "$dir/y" && echo 0 || echo 1)" \
    "b) bf16 losses are not the fp32 ones"
ag_f=$(summary_field "$dir/f2.jsonl" allgather_bytes)
ag_b=$(summary_field "$dir/b2.jsonl" allgather_bytes)
rs_f=$(summary_field "$dir/f2.jsonl" reduce_scatter_bytes)
rs_b=$(summary_field "$dir/b2.jsonl" reduce_scatter_bytes)
echo "all-gather bytes: fp32 $ag_f, bf16 $ag_b; reduce-scatter: fp32 $rs_f, bf16 $rs_b"
check "$([ -n "$ag_b" ] && [ "$ag_f" -gt 0 ] && [ $((ag_b * 2)) -eq "$ag_f" ] && echo 1 || echo 0)" \
    "c) bf16 all-gathers move half the bytes"
check "$([ -n "$rs_b" ] && [ "$rs_b" -eq "$rs_f" ] && echo 1 || echo 0)" \
    "c) gradient reduce-scatters unchanged (fp32)"
check "$(grep -q '"precision":"bf16"' "$dir/b2.jsonl" && grep -q 'bf16 working weights' "$dir/b2.log" && echo 1 || echo 0)" \
    "c) the summary and the memory report name bf16"

run_tpmpi r_first 2 --precision=bf16 --grad-accum=3 --steps=20 --ckpt-dir="$dir/ck"
run_tpmpi r_second 2 --precision=bf16 --grad-accum=3 --ckpt-dir="$dir/ck" --resume
losses "$dir/b2.jsonl" | sed -n '21,40p' >"$dir/ref"
losses "$dir/r_second.jsonl" >"$dir/got"
check "$([ "$(wc -l <"$dir/got")" -eq 20 ] && cmp -s "$dir/ref" "$dir/got" && echo 1 || echo 0)" \
    "d) bf16 resume: steps 21-40 identical to 40 straight"

$MPIRUN -np 1 "$TPMPI" $common --precision=fp16 >"$dir/bad.log" 2>&1
rc=$?
check "$([ "$rc" -eq 2 ] && grep -q 'precision' "$dir/bad.log" && echo 1 || echo 0)" \
    "e) --precision=fp16 is refused with exit 2 (got $rc)"
finish
