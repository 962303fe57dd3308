# SPDX-License-Identifier: MIT
# serve_lib.sh: helpers shared by the HTTP serving tests (sourced, POSIX sh). A test sets
# $dir (its scratch directory) and SERVE_TARGET: "fake" runs tests/serve/fake_server (the
# HTTP front-end over a fake engine with known answers), "real" runs
# `$MPIRUN -np $TPM_SERVE_NP tpmpi --mode=serve --ckpt=$SERVE_CKPT`.
# Every server is started on a free loopback port and stopped with SIGTERM.

: "${TOP_BUILDDIR:=.}"
: "${SERVE_TARGET:=fake}"
: "${TPM_SERVE_NP:=2}"
FAKE_SERVER=${FAKE_SERVER:-$TOP_BUILDDIR/tests/serve/fake_server}
SERVE_PID=
pass=0
fail=0

check() { # check COND_RESULT(0|1) MESSAGE
    if [ "$1" = 1 ]; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
        echo "FAIL: $2"
    fi
}

serve_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# serve_start LOG [tpmpi options...]: start a server in the background (sets SERVE_PID, SERVE_URL)
serve_start() {
    _sl_log=$1
    SERVE_LOG=$1
    shift
    SERVE_PORT=$(serve_free_port)
    SERVE_URL=http://127.0.0.1:$SERVE_PORT
    if [ "$SERVE_TARGET" = real ]; then
        $MPIRUN -np "$TPM_SERVE_NP" "$TPMPI" --mode=serve --ckpt="$SERVE_CKPT" --threads=1 \
            --host=127.0.0.1 --port="$SERVE_PORT" "$@" >"$_sl_log" 2>&1 &
    else
        "$FAKE_SERVER" --host=127.0.0.1 --port="$SERVE_PORT" "$@" >"$_sl_log" 2>&1 &
    fi
    SERVE_PID=$!
}

# serve_wait_ready [SECONDS]: poll /health until 200; 1 if the server died or timed out
serve_wait_ready() {
    _sl_n=$((${1:-60} * 10))
    while [ "$_sl_n" -gt 0 ]; do
        _sl_code=$(curl -s -o /dev/null -w '%{http_code}' "$SERVE_URL/health" 2>/dev/null || true)
        [ "$_sl_code" = 200 ] && return 0
        kill -0 "$SERVE_PID" 2>/dev/null || return 1
        sleep 0.1
        _sl_n=$((_sl_n - 1))
    done
    return 1
}

# serve_wait_listening [SECONDS]: poll /health until any HTTP answer
serve_wait_listening() {
    _sl_n=$((${1:-60} * 10))
    while [ "$_sl_n" -gt 0 ]; do
        _sl_code=$(curl -s -o /dev/null -w '%{http_code}' "$SERVE_URL/health" 2>/dev/null || true)
        [ "$_sl_code" != 000 ] && [ -n "$_sl_code" ] && return 0
        kill -0 "$SERVE_PID" 2>/dev/null || return 1
        sleep 0.05
        _sl_n=$((_sl_n - 1))
    done
    return 1
}

# serve_stop [SECONDS]: SIGTERM, wait; prints nothing; returns the exit status (124: hung)
serve_stop() {
    [ -n "$SERVE_PID" ] || return 0
    kill -TERM "$SERVE_PID" 2>/dev/null || true
    _sl_n=$((${1:-30} * 10))
    while kill -0 "$SERVE_PID" 2>/dev/null; do
        if [ "$_sl_n" -le 0 ]; then
            kill -KILL "$SERVE_PID" 2>/dev/null || true
            wait "$SERVE_PID" 2>/dev/null
            SERVE_PID=
            return 124
        fi
        sleep 0.1
        _sl_n=$((_sl_n - 1))
    done
    wait "$SERVE_PID"
    _sl_rc=$?
    SERVE_PID=
    return $_sl_rc
}

# serve_stop_clean [SECONDS]: serve_stop, and 0 when the server stopped cleanly. mpirun exits 1
# whenever it is signalled, whatever its ranks did, so for the real server a clean stop is
# judged from the log: the front-end stopped, and no rank aborted or died on a signal.
serve_stop_clean() {
    serve_stop "${1:-30}"
    _sl_rc=$?
    if [ "$SERVE_TARGET" != real ]; then
        return $_sl_rc
    fi
    [ $_sl_rc = 0 ] || [ $_sl_rc = 1 ] || return $_sl_rc
    grep -q 'http: stopped' "$SERVE_LOG" || return 1
    if grep -Eq 'MPI_ABORT|exited on signal|Segmentation|Aborted' "$SERVE_LOG"; then
        return 1
    fi
    return 0
}

# req METHOD PATH BODY_FILE [curl args...]: answer body to $dir/body, prints the HTTP status
# (BODY_FILE "" sends no body)
req() {
    _sl_m=$1 _sl_p=$2 _sl_b=$3
    shift 3
    if [ -n "$_sl_b" ]; then
        curl -s -o "$dir/body" -w '%{http_code}' -X "$_sl_m" --data-binary "@$_sl_b" "$@" "$SERVE_URL$_sl_p" ||
            true
    else
        curl -s -o "$dir/body" -w '%{http_code}' -X "$_sl_m" "$@" "$SERVE_URL$_sl_p" || true
    fi
}

# post PATH JSON [curl args...]: POST a JSON text with the API key (if $KEY is set)
post() {
    _sl_p=$1
    printf '%s' "$2" >"$dir/in"
    shift 2
    if [ -n "${KEY:-}" ]; then
        req POST "$_sl_p" "$dir/in" -H "Authorization: Bearer $KEY" "$@"
    else
        req POST "$_sl_p" "$dir/in" "$@"
    fi
}

# get PATH [curl args...]: GET with the API key (if $KEY is set)
get() {
    _sl_p=$1
    shift
    if [ -n "${KEY:-}" ]; then
        req GET "$_sl_p" "" -H "Authorization: Bearer $KEY" "$@"
    else
        req GET "$_sl_p" "" "$@"
    fi
}

# jcheck FILE PYTHON_EXPR: 1 if the expression over d (the parsed JSON) is true, else 0
jcheck() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    ok = bool(eval(sys.argv[2]))
except Exception as e:
    sys.stderr.write("jcheck: %s\n" % e)
    ok = False
print(1 if ok else 0)
EOF
}

# is_openai_error FILE: the body is OpenAI's error shape {"error":{message,type,param,code}}
is_openai_error() {
    jcheck "$1" 'set(d) == {"error"} and set(d["error"]) == {"message", "type", "param", "code"} and isinstance(d["error"]["message"], str) and len(d["error"]["message"]) > 0'
}

# sse_summary FILE: parse an SSE body; prints JSON {events, done, text, finish, usage, error, bad}
sse_summary() {
    python3 - "$1" <<'EOF'
import json, sys
out = {"events": 0, "done": False, "text": "", "finish": None, "usage": None, "error": None,
       "bad": 0, "after_done": 0, "timings": False}
data = open(sys.argv[1], encoding="utf-8", errors="replace").read()
for block in data.split("\n\n"):
    for line in block.split("\n"):
        if not line or line.startswith(":"):
            continue
        if not line.startswith("data: "):
            out["bad"] += 1
            continue
        payload = line[6:]
        if out["done"]:
            out["after_done"] += 1
        if payload == "[DONE]":
            out["done"] = True
            continue
        out["events"] += 1
        try:
            j = json.loads(payload)
        except ValueError:
            out["bad"] += 1
            continue
        if "error" in j:
            out["error"] = j["error"]
            continue
        if j.get("object") != "text_completion":
            out["bad"] += 1
        for c in j.get("choices", []):
            out["text"] += c.get("text", "")
            if c.get("finish_reason"):
                out["finish"] = c["finish_reason"]
        if "timings" in j:
            out["timings"] = True
        if j.get("usage"):
            out["usage"] = j["usage"]
print(json.dumps(out))
EOF
}

# metric NAME_WITH_LABELS: the value of one sample from $dir/body (a /metrics answer)
metric() {
    awk -v k="$1" '$1 == k { print $2; found = 1 } END { if (!found) print "missing" }' "$dir/body"
}

# raw BYTES [WAIT_S [BODY_FILE]]: send BYTES (Python escapes: \x00, \r\n) on a new
# connection, read until the server closes it (at most WAIT_S, default 5, seconds); the
# answer's body goes to BODY_FILE (default $dir/body); prints "STATUS CLOSED" (STATUS 000: no
# answer; CLOSED 1: the server closed)
raw() {
    python3 - "$SERVE_PORT" "$1" "${2:-5}" "${3:-$dir/body}" <<'PYEOF'
import socket, sys, time
port, data, wait, out = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
data = data.encode().decode("unicode_escape").encode("latin1")
s = socket.create_connection(("127.0.0.1", port))
if data:
    s.sendall(data)
s.settimeout(0.2)
got, closed, t_end = b"", 0, time.time() + wait
while time.time() < t_end:
    try:
        b = s.recv(65536)
    except socket.timeout:
        continue
    except ConnectionResetError:
        break
    if not b:
        closed = 1
        break
    got += b
head, _, body = got.partition(b"\r\n\r\n")
open(out, "wb").write(body)
status = head.split(b" ")[1].decode() if head.startswith(b"HTTP/1.") else "000"
print(status, closed)
PYEOF
}
