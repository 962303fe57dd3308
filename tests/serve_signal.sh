#!/bin/sh
# SPDX-License-Identifier: MIT
# serve_signal.sh: the supported ways to stop `mpirun -np 2 tpmpi --mode=serve` (docs/
# SERVING.md, Shutdown), each with a stream open: USR1 to mpirun (forwarded to every rank
# at once) exits 0; USR1 to mpirun and the ranks together (a service manager signalling
# the whole group) exits 0; TERM to the ranks themselves (what srun and Slurm do) exits 0;
# TERM to mpirun exits 1, as Open MPI 4.1's mpirun forces, but with
# odls_base_sigkill_timeout=10 the open streams still end with their last event and [DONE],
# and nothing hangs. The stop times are printed
# (the machine may be loaded: they are not checked).
set -u
: "${TPMPI:?}" "${MPIRUN:?}"
: "${TOP_BUILDDIR:=.}"
: "${TOP_SRCDIR:=$(dirname "$0")/..}"
dir=$TOP_BUILDDIR/tests/serve_signal.d
rm -rf "$dir" && mkdir -p "$dir"
SERVE_TARGET=real
. "$TOP_SRCDIR/tests/serve_lib.sh"
if ! command -v curl >/dev/null 2>&1; then
    echo "SKIP: curl not found"
    exit 77
fi
trap 'serve_stop 5 >/dev/null 2>&1' EXIT

if ! timeout 300 $MPIRUN -np 1 "$TPMPI" --mode=train --model=tiny --steps=5 --threads=1 \
    --ckpt-dir="$dir/ckpt" --out="$dir/run" >"$dir/train.log" 2>&1; then
    cat "$dir/train.log"
    echo "0 passed, 1 failed (training the checkpoint)"
    exit 1
fi
SERVE_CKPT=$dir/ckpt
now() { python3 -c 'import time; print("%.3f" % time.time())'; }

# one_case NAME HOW WANT_RC: start a server, open a stream, stop it by HOW, check the exit
# status, the stream's end and the log
one_case() {
    name=$1 how=$2 want=$3
    serve_start "$dir/$name.log" --ctx-size=64 --max-tokens=1000 --parallel=1
    if ! serve_wait_ready 120; then
        cat "$dir/$name.log"
        check 0 "$name: server did not become ready"
        serve_stop 10
        return
    fi
    # 12 streams on one slot: the later ones are still queued at the signal
    printf '{"prompt":"x","max_tokens":64,"temperature":0,"stream":true}' >"$dir/in"
    cpids=
    for i in 1 2 3 4 5 6 7 8 9 10 11 12; do
        curl -s -N --data-binary "@$dir/in" "$SERVE_URL/v1/completions" \
            >"$dir/$name.$i.sse" 2>/dev/null &
        cpids="$cpids $!"
    done
    # signal once several wait in the queue (an event, not a delay: the model is fast)
    n=0
    while [ $n -lt 100 ]; do
        req GET /metrics "" >/dev/null
        w=$(metric tpmpi:num_requests_waiting)
        [ "$w" != missing ] && [ "$w" -ge 4 ] && break
        sleep 0.02
        n=$((n + 1))
    done
    ranks=$(ps -o pid= --ppid "$SERVE_PID" 2>/dev/null | tr '\n' ' ')
    t0=$(now)
    case $how in
    usr1-mpirun) kill -USR1 "$SERVE_PID" ;;
    usr1-all) kill -USR1 "$SERVE_PID" $ranks ;;
    term-ranks) kill -TERM $ranks ;;
    term-mpirun) kill -TERM "$SERVE_PID" ;;
    esac
    # wait for the launcher to exit by itself; KILL after 60 s (then rc 124)
    n=600
    while kill -0 "$SERVE_PID" 2>/dev/null && [ $n -gt 0 ]; do
        sleep 0.1
        n=$((n - 1))
    done
    if [ $n = 0 ]; then
        kill -KILL "$SERVE_PID" $ranks 2>/dev/null
        wait "$SERVE_PID" 2>/dev/null
        rc=124
    else
        wait "$SERVE_PID"
        rc=$?
    fi
    SERVE_PID=
    t1=$(now)
    for p in $cpids; do
        wait "$p"
    done
    echo "$name: exit status $rc, stopped in $(python3 -c "print('%.2f' % ($t1 - $t0))") s"
    check "$([ "$rc" = "$want" ] && echo 1 || echo 0)" "$name: exit status $rc (want $want)"
    n_cut=0
    for i in 1 2 3 4 5 6 7 8 9 10 11 12; do
        sse_summary "$dir/$name.$i.sse" >"$dir/$name.$i.json"
        check "$(jcheck "$dir/$name.$i.json" 'd["done"] and d["bad"] == 0 and (d["finish"] is not None or (d["error"] is not None and d["error"]["code"] == "shutting_down"))')" \
            "$name: stream $i ends with its last event and [DONE]: $(cat "$dir/$name.$i.json")"
        if [ "$(jcheck "$dir/$name.$i.json" 'd["error"] is not None')" = 1 ]; then
            n_cut=$((n_cut + 1))
        fi
    done
    echo "$name: $n_cut of 12 streams were open at the stop (ended by shutting_down)"
    check "$(grep -q 'http: stopped' "$dir/$name.log" && echo 1 || echo 0)" "$name: front-end stopped"
    if grep -Eq 'MPI_ABORT|Segmentation|Aborted|exited on signal 11' "$dir/$name.log"; then
        check 0 "$name: a rank crashed or aborted"
    fi
}

one_case usr1-mpirun usr1-mpirun 0
check "$(grep -q 'stopping on signal 10' "$dir/usr1-mpirun.log" && echo 1 || echo 0)" \
    "usr1-mpirun: the ranks got USR1"
one_case usr1-all usr1-all 0
one_case term-ranks term-ranks 0
# mpirun gives its ranks odls_base_sigkill_timeout between TERM and KILL (1 s by default):
# 10 s here, so that a slow (sanitizer) build ends its answers too; exit 1 all the same
OMPI_MCA_odls_base_sigkill_timeout=10 one_case term-mpirun term-mpirun 1

if [ "$fail" -ne 0 ]; then
    for f in "$dir"/*.log; do
        echo "---- $f"
        tail -15 "$f"
    done
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
