#!/bin/sh
# SPDX-License-Identifier: MIT
#
# compress_traffic.sh: gradient traffic as the metrics summary reports it. Train `tiny` for
# 6 steps at N = 2 with --grad-compression=none and =2bit (each residual variant, and with a
# 2-step warm-up) and compare grad_bytes_sent (this rank's fp32 reduce-scatter + compressed
# all-to-all bytes, from the comm layer's counters): 2-bit must send at least 15x fewer
# bytes, scales and padding included. Also: the per-step grad_bytes add up to the total,
# the warm-up steps send exactly the fp32 volume, residual_bytes is fp32 = 2 x bf16 and 0
# for the stochastic variant, at N = 1 compression is accepted and sends nothing, and
# --compression-freeze-v trains after a warm-up and is refused (exit 2) without one.
set -eu
: "${TPMPI:?}" "${MPIRUN:?}"
. "$(dirname "$0")/train_lib.sh"
quiet_ok=1 # the labels below name the failure
dir=${TOP_BUILDDIR:-.}/tests/compress_traffic.d
rm -rf "$dir" && mkdir -p "$dir"
common="--mode=train --model=tiny --steps=6 --batch=2 --seed=3 --threads=1 --log-every=6"

run() { # name np options...
    name=$1 np=$2
    shift 2
    if ! $MPIRUN -np "$np" "$TPMPI" $common --metrics="$dir/$name.jsonl" "$@" \
        >"$dir/$name.log" 2>&1; then
        cat "$dir/$name.log"
        echo "FAIL: tpmpi $name failed"
        exit 1
    fi
}
field() { sed -n "s/.*\"type\":\"summary\".*\"$2\":\([0-9.eE+-]*\).*/\1/p" "$dir/$1.jsonl"; }
steps() { sed -n 's/.*"type":"step".*"grad_bytes":\([0-9]*\).*/\1/p' "$dir/$1.jsonl"; }

run none 2 --grad-compression=none
run fp32 2 --grad-compression=2bit --compression-residual=fp32
run bf16 2 --grad-compression=2bit --compression-residual=bf16
run stoch 2 --grad-compression=2bit --compression-residual=none
run warm 2 --grad-compression=2bit --compression-warmup=2
run one 1 --grad-compression=2bit
run freeze 2 --grad-compression=2bit --compression-warmup=2 --compression-freeze-v

g0=$(field none grad_bytes_sent)
for v in fp32 bf16 stoch; do
    g=$(field $v grad_bytes_sent)
    c=$(field $v grad_bytes_compressed)
    echo "$v: grad_bytes_sent $g (none: $g0), residual_bytes $(field $v residual_bytes)," \
        "final loss $(field $v final_loss) (none: $(field none final_loss))"
    awk -v a="$g0" -v b="$g" -v v="$v" 'BEGIN { printf "%s: %.2fx fewer gradient bytes\n", v, a / b }'
    check "$(awk -v a="$g0" -v b="$g" 'BEGIN { print (b > 0 && a / b >= 15) }')" \
        "$v: gradient bytes did not drop 15x ($g0 -> $g)"
    check "$([ "$g" = "$c" ] && echo 1 || echo 0)" "$v: all gradient bytes should be compressed"
    check "$(steps $v | awk -v t="$g" '{ s += $1 } END { print (s == t) }')" \
        "$v: per-step grad_bytes do not add up to grad_bytes_sent"
done
check "$(steps none | awk -v t="$g0" '{ s += $1 } END { print (s == t && t > 0) }')" \
    "none: per-step grad_bytes do not add up to grad_bytes_sent"
check "$([ "$(field none residual_bytes)" -eq 0 ] && echo 1 || echo 0)" "none: residual_bytes != 0"
check "$([ "$(field stoch residual_bytes)" -eq 0 ] && echo 1 || echo 0)" "stochastic: residual_bytes != 0"
check "$([ "$(field fp32 residual_bytes)" -gt 0 ] &&
    [ "$(field fp32 residual_bytes)" -eq $((2 * $(field bf16 residual_bytes))) ] && echo 1 || echo 0)" \
    "residual_bytes: fp32 should be twice bf16 and nonzero"
# warm-up: steps 1-2 send what the fp32 run sends, steps 3-6 what the 2-bit run sends
check "$([ "$(steps warm | sed -n 1,2p)" = "$(steps none | sed -n 1,2p)" ] && echo 1 || echo 0)" \
    "warm-up steps should send the fp32 volume"
check "$([ "$(steps warm | sed -n 3,6p)" = "$(steps fp32 | sed -n 3,6p)" ] && echo 1 || echo 0)" \
    "after the warm-up, steps should send the 2-bit volume"
check "$([ "$(field one grad_bytes_sent)" -eq 0 ] && grep -q 'no effect on 1 rank' "$dir/one.log" &&
    echo 1 || echo 0)" "N=1: compression should be a logged no-op"
# a frozen second moment needs a warm-up to take it from: refused as bad input (exit 2)
rc=0
$MPIRUN -np 2 "$TPMPI" $common --grad-compression=2bit --compression-freeze-v \
    >"$dir/nofreeze.log" 2>&1 || rc=$?
check "$([ "$rc" -eq 2 ] && grep -q 'needs --compression-warmup' "$dir/nofreeze.log" && echo 1 || echo 0)" \
    "--compression-freeze-v without a warm-up should be refused with exit 2 (got $rc)"
for v in fp32 bf16 stoch warm freeze; do
    check "$(awk -v l="$(field $v final_loss)" 'BEGIN { print (l > 0 && l < 20) }')" \
        "$v: no sane final loss"
done
finish
