#!/bin/sh
# SPDX-License-Identifier: MIT
# Many pushes while streaming clients run (issue 13, evidence 2): `tiny` trains on 1 rank
# and serves on 2 (--mode=trainserve, a push every 5 of 150 steps: 31 pushes with the first),
# and 8 streaming clients (tests/trainserve_clients.py) send completions until the final
# weights are served: 0 failed requests, every chunk carries its weights step and each
# client's steps never go down; /metrics counts at least 20 pushes; SIGTERM stops the job
# cleanly. Then the same with --swap-policy=recompute on 1 serving rank. POST /admin/push:
# refused (403) without --api-key; with one, 401 for a wrong key, and 202 makes a trainer
# that never pushes on its own (--push-every=0) push at its next step.
set -u
: "${TPMPI:?}" "${MPIRUN:?}" "${TOP_SRCDIR:?}" "${TOP_BUILDDIR:?}"
dir=$TOP_BUILDDIR/tests/trainserve_stream.d
rm -rf "$dir" && mkdir -p "$dir"
SERVE_TARGET=real # serve_stop_clean judges mpirun runs from their log
. "$TOP_SRCDIR/tests/serve_lib.sh"

run_case() { # run_case NAME NP M POLICY STEPS EVERY
    _name=$1 _np=$2 _m=$3 _pol=$4 _steps=$5 _every=$6
    SERVE_LOG="$dir/$_name.log"
    SERVE_PORT=$(serve_free_port)
    SERVE_URL=http://127.0.0.1:$SERVE_PORT
    $MPIRUN -np "$_np" "$TPMPI" --mode=trainserve --serve-ranks="$_m" --model=tiny \
        --steps="$_steps" --batch=4 --lr=1e-3 --threads=1 --push-every="$_every" \
        --swap-policy="$_pol" --host=127.0.0.1 --port="$SERVE_PORT" --parallel=4 \
        --out="$dir/$_name.run" >"$SERVE_LOG" 2>&1 &
    SERVE_PID=$!
    if ! serve_wait_ready 120; then
        check 0 "$_name: the server did not become ready"
        cat "$SERVE_LOG"
        serve_stop 10
        return
    fi
    if timeout 300 python3 "$TOP_SRCDIR/tests/trainserve_clients.py" "$SERVE_URL" 8 "$_steps" 240 \
        >"$dir/$_name.clients" 2>&1; then
        check 1 "$_name: clients"
    else
        check 0 "$_name: a client saw a failed request or a weights step going down"
        cat "$dir/$_name.clients"
    fi
    tail -1 "$dir/$_name.clients" | sed "s/^/  $_name: /"
    _pushes=$(curl -s "$SERVE_URL/metrics" | sed -n 's/^tpmpi:weight_pushes_total \([0-9]*\)$/\1/p')
    echo "  $_name: tpmpi:weight_pushes_total ${_pushes:-none}"
    check "$([ "${_pushes:-0}" -ge 20 ] && echo 1 || echo 0)" "$_name: fewer than 20 pushes swapped in"
    _code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$SERVE_URL/admin/push")
    check "$([ "$_code" = 403 ] && echo 1 || echo 0)" "$_name: POST /admin/push without --api-key: $_code, not 403"
    _dist=$(tail -1 "$dir/$_name.clients" | sed -n 's/.*"max_distinct_per_client": \([0-9]*\).*/\1/p')
    check "$([ "${_dist:-0}" -ge 3 ] && echo 1 || echo 0)" \
        "$_name: no client saw the weights change under it (distinct steps ${_dist:-none})"
    serve_stop_clean 60
    _rc=$?
    check "$([ $_rc = 0 ] && echo 1 || echo 0)" "$_name: the job did not stop cleanly on SIGTERM (rc $_rc)"
    if grep -Eq 'MPI_ABORT|exited on signal' "$SERVE_LOG"; then
        cat "$SERVE_LOG"
    fi
}

models_step() {
    curl -s -H 'Authorization: Bearer sesame' "$SERVE_URL/v1/models" | sed -n 's/.*"weights_step":\([0-9-]*\).*/\1/p'
}

admin_case() {
    SERVE_LOG="$dir/admin.log"
    SERVE_PORT=$(serve_free_port)
    SERVE_URL=http://127.0.0.1:$SERVE_PORT
    $MPIRUN -np 2 "$TPMPI" --mode=trainserve --serve-ranks=1 --model=tiny --steps=1000000 \
        --batch=4 --threads=1 --push-every=0 --api-key=sesame --host=127.0.0.1 \
        --port="$SERVE_PORT" >"$SERVE_LOG" 2>&1 &
    SERVE_PID=$!
    if ! serve_wait_ready 120; then
        check 0 "admin: the server did not become ready"
        cat "$SERVE_LOG"
        serve_stop 10
        return
    fi
    sleep 1
    _s0=$(models_step)
    check "$([ "$_s0" = 0 ] && echo 1 || echo 0)" "admin: weights_step ${_s0:-none} before any request, not 0"
    _code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Authorization: Bearer wrong' \
        "$SERVE_URL/admin/push")
    check "$([ "$_code" = 401 ] && echo 1 || echo 0)" "admin: a wrong key got $_code, not 401"
    _code=$(curl -s -o "$dir/admin.body" -w '%{http_code}' -X POST \
        -H 'Authorization: Bearer sesame' "$SERVE_URL/admin/push")
    check "$([ "$_code" = 202 ] && echo 1 || echo 0)" "admin: POST /admin/push got $_code, not 202"
    _n=0
    _s1=$_s0
    while [ "$_n" -lt 300 ] && [ "${_s1:-0}" -le 0 ]; do
        sleep 0.1
        _s1=$(models_step)
        _n=$((_n + 1))
    done
    echo "  admin: weights_step $_s0 -> $_s1 after POST /admin/push"
    check "$([ "${_s1:-0}" -gt 0 ] && echo 1 || echo 0)" "admin: no push followed POST /admin/push"
    sleep 1
    _s2=$(models_step)
    check "$([ "$_s2" = "$_s1" ] && echo 1 || echo 0)" \
        "admin: weights_step moved on ($_s1 -> $_s2) without a request"
    serve_stop_clean 60
    _rc=$?
    check "$([ $_rc = 0 ] && echo 1 || echo 0)" "admin: the job did not stop cleanly on SIGTERM (rc $_rc)"
}

run_case keep 3 2 keep 150 5
run_case recompute 2 1 recompute 100 4
admin_case
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
