#!/bin/sh
# SPDX-License-Identifier: MIT
# Start-up affinity check (src/main.c): a rank whose CPU affinity mask holds fewer CPUs than
# the threads it will run gets one warning from rank 0 naming the fix (`--bind-to none`), in
# every mode; a mask that is large enough gets none. The masks are set with taskset inside
# the launcher, so the test does not depend on mpirun's binding policy.
set -u
: "${TPMPI:?}" "${MPIRUN:?}" "${TOP_BUILDDIR:?}"
. "$(dirname "$0")/train_lib.sh"
dir=$TOP_BUILDDIR/tests/affinity.d
rm -rf "$dir" && mkdir -p "$dir"
train="--mode=train --model=tiny --steps=1 --batch=1 --seq-len=16 --log-every=100"
printf 'one document\n%%\nanother document here\n' >"$dir/in.txt"
prepare="--mode=prepare --vocab-size=300 --out=$dir/prep --input=$dir/in.txt"
warn='threads on an affinity mask of'
# the CPUs this test may use (a CI runner's cpuset need not start at 0): the first one alone,
# and the first two
allowed=$(taskset -cp $$ | sed 's/.*: *//')
cpus=$(echo "$allowed" | tr ',' '\n' | while IFS=- read -r lo hi; do
    seq "$lo" "${hi:-$lo}"
done)
one=$(echo "$cpus" | sed -n 1p)
two=$(echo "$cpus" | sed -n 2p)

# go NAME NP CPUS ARGS...: tpmpi on NP ranks, each under taskset -c CPUS; output in NAME.log
go() {
    _n=$1 _np=$2 _cpus=$3
    shift 3
    # shellcheck disable=SC2086 # option lists
    if ! timeout 120 $MPIRUN -np "$_np" taskset -c "$_cpus" "$TPMPI" "$@" >"$dir/$_n.log" 2>&1
    then
        cat "$dir/$_n.log"
        check 0 "$_n: tpmpi failed"
    fi
}
nwarn() { grep -c -- "$warn" "$dir/$1.log"; }

# shellcheck disable=SC2086
go train1 1 "$one" $train --threads=2
check "$([ "$(nwarn train1)" -eq 1 ] &&
    grep -q 'rank 0 runs 2 threads on an affinity mask of 1 CPU(s) (1 of 1 rank(s) affected).*mpirun --bind-to none' \
        "$dir/train1.log" && echo 1 || echo 0)" "train, 2 threads on 1 CPU: one warning with the fix"
# shellcheck disable=SC2086
go prep1 1 "$one" $prepare --threads=2
check "$([ "$(nwarn prep1)" -eq 1 ] && echo 1 || echo 0)" "prepare, 2 threads on 1 CPU: one warning"
# shellcheck disable=SC2086
go train2 2 "$one" $train --threads=2
check "$([ "$(nwarn train2)" -eq 1 ] && grep -q '(2 of 2 rank(s) affected)' "$dir/train2.log" &&
    echo 1 || echo 0)" "2 ranks affected: rank 0 warns once for both"
# OpenMP's own count (OMP_NUM_THREADS) counts as well as --threads
# shellcheck disable=SC2086
OMP_NUM_THREADS=3 go omp 1 "$one" $train
check "$([ "$(nwarn omp)" -eq 1 ] && grep -q 'runs 3 threads' "$dir/omp.log" && echo 1 || echo 0)" \
    "OMP_NUM_THREADS=3 on 1 CPU: warned"
# shellcheck disable=SC2086
go fits1 1 "$one" $train --threads=1
check "$([ "$(nwarn fits1)" -eq 0 ] && echo 1 || echo 0)" "1 thread on 1 CPU: no warning"
if [ -n "$two" ]; then
    # shellcheck disable=SC2086
    go fits2 1 "$one,$two" $train --threads=2
    check "$([ "$(nwarn fits2)" -eq 0 ] && echo 1 || echo 0)" "2 threads on 2 CPUs: no warning"
else
    echo "not run: 2 threads on 2 CPUs (this test may use one CPU only: $allowed)"
fi
finish
