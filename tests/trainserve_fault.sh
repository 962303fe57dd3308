#!/bin/sh
# SPDX-License-Identifier: MIT
# Failures of --mode=trainserve stop the whole job with a message, never a hang (issue 13,
# evidence 5): (1) a training rank and (2) a serving rank is killed (SIGKILL) while the job
# trains and serves: mpirun must end the job, non-zero, within the timeout; (3) the serving
# group cannot start (its port is taken): the job stops with the serving group's message;
# (4) the trainer cannot start (no such data folder): every rank exits 2 with the message;
# (5) --serve-ranks out of range is refused with 2.
set -u
: "${TPMPI:?}" "${MPIRUN:?}" "${TOP_BUILDDIR:?}"
dir=$TOP_BUILDDIR/tests/trainserve_fault.d
rm -rf "$dir" && mkdir -p "$dir"
pass=0
fail=0
check() { # check OK LABEL LOG
    if [ "$1" = 1 ]; then
        pass=$((pass + 1))
        echo "ok: $2"
    else
        fail=$((fail + 1))
        echo "FAIL: $2"
        [ -n "${3:-}" ] && cat "$3"
    fi
}
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
args="--mode=trainserve --serve-ranks=1 --model=tiny --steps=100000 --batch=4 --threads=1"
args="$args --push-every=5 --host=127.0.0.1"

# kill_case NAME POSITION: the rank started through the wrapper (first: training rank 0,
# last: the serving rank) records its pid; kill it once the server answers
kill_case() {
    _name=$1 _where=$2 _port=$(free_port)
    _wrap="echo \$\$ >$dir/$_name.pid; exec $TPMPI $args --port=$_port"
    if [ "$_where" = first ]; then
        # shellcheck disable=SC2086
        timeout 120 $MPIRUN -np 1 sh -c "$_wrap" : -np 2 "$TPMPI" $args --port="$_port" \
            >"$dir/$_name.log" 2>&1 &
    else
        # shellcheck disable=SC2086
        timeout 120 $MPIRUN -np 2 "$TPMPI" $args --port="$_port" : -np 1 sh -c "$_wrap" \
            >"$dir/$_name.log" 2>&1 &
    fi
    _job=$!
    _n=0
    _ready=0
    while [ "$_n" -lt 600 ]; do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$_port/health")" = 200 ]; then
            _ready=1
            break
        fi
        kill -0 "$_job" 2>/dev/null || break
        sleep 0.1
        _n=$((_n + 1))
    done
    check "$_ready" "$_name: the job trains and serves before the kill" "$dir/$_name.log"
    sleep 1 # a few pushes
    kill -KILL "$(cat "$dir/$_name.pid")" 2>/dev/null
    wait "$_job"
    _rc=$?
    echo "  $_name: exit status $_rc"
    check "$([ "$_rc" -ne 0 ] && [ "$_rc" -ne 124 ] &&
        grep -Eq 'exited on signal 9|Killed' "$dir/$_name.log" && echo 1 || echo 0)" \
        "$_name: the job stops with a message when a rank dies" "$dir/$_name.log"
}

kill_case kill-trainer first
kill_case kill-server last

# (3) the serving group's port is taken
port=$(free_port)
python3 -c "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', $port)); s.listen(); time.sleep(100)" &
holder=$!
sleep 0.5
# shellcheck disable=SC2086
timeout 120 $MPIRUN -np 3 "$TPMPI" $args --port="$port" >"$dir/port.log" 2>&1
rc=$?
kill "$holder" 2>/dev/null
echo "  port taken: exit status $rc"
check "$([ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] &&
    grep -q 'the serving group could not start (HTTP front-end)' "$dir/port.log" && echo 1 || echo 0)" \
    "a serving group that cannot start stops the job" "$dir/port.log"

# (4) the trainer cannot start
# shellcheck disable=SC2086
timeout 120 $MPIRUN -np 3 "$TPMPI" $args --data="$dir/no-such-data" --port="$(free_port)" \
    >"$dir/data.log" 2>&1
rc=$?
echo "  no data: exit status $rc"
check "$([ "$rc" -eq 2 ] && grep -q 'no-such-data' "$dir/data.log" && echo 1 || echo 0)" \
    "a trainer that cannot start stops both groups with status 2" "$dir/data.log"

# (5) --serve-ranks out of range
# shellcheck disable=SC2086
timeout 60 $MPIRUN -np 2 "$TPMPI" $args --serve-ranks=2 >"$dir/ranks.log" 2>&1
rc=$?
check "$([ "$rc" -eq 2 ] && grep -q 'needs 1 <= --serve-ranks < ranks' "$dir/ranks.log" && echo 1 || echo 0)" \
    "--serve-ranks=2 on 2 ranks is refused with 2" "$dir/ranks.log"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
