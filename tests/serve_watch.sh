#!/bin/sh
# SPDX-License-Identifier: MIT
# Hot reload (issue 13, evidence 3): `tpmpi --mode=serve --ckpt=DIR --watch` on 2 ranks picks
# up a newer checkpoint that training writes into DIR while it serves (weights_step and
# system_fingerprint follow), and refuses a corrupted one named by DIR/latest (POST
# /admin/reload) and one of another model shape, each with a logged error while it keeps
# serving the old weights; --watch with a checkpoint file is refused with 2.
set -u
: "${TPMPI:?}" "${MPIRUN:?}" "${TOP_SRCDIR:?}" "${TOP_BUILDDIR:?}"
dir=$TOP_BUILDDIR/tests/serve_watch.d
rm -rf "$dir" && mkdir -p "$dir"
SERVE_TARGET=real # serve_stop_clean judges mpirun runs from their log
. "$TOP_SRCDIR/tests/serve_lib.sh"
KEY=sesame
train() { # train STEPS [options]
    _s=$1
    shift
    timeout 300 $MPIRUN -np 1 "$TPMPI" --mode=train --model=tiny --steps="$_s" --batch=4 \
        --threads=1 --ckpt-dir="$dir/ck" --ckpt-every=10 "$@" >>"$dir/train.log" 2>&1
}
step() {
    curl -s -H "Authorization: Bearer $KEY" "$SERVE_URL/v1/models" |
        sed -n 's/.*"weights_step":\([0-9-]*\).*/\1/p'
}
wait_step() { # wait_step STEP SECONDS
    _n=$(($2 * 10))
    while [ "$_n" -gt 0 ]; do
        [ "$(step)" = "$1" ] && return 0
        sleep 0.1
        _n=$((_n - 1))
    done
    return 1
}

train 10 || { cat "$dir/train.log"; echo "0 passed, 1 failed"; exit 1; }
SERVE_CKPT=$dir/ck
TPM_SERVE_NP=2
serve_start "$dir/serve.log" --watch --api-key="$KEY"
if ! serve_wait_ready 120; then
    cat "$dir/serve.log"
    echo "0 passed, 1 failed"
    serve_stop 10
    exit 1
fi
check "$([ "$(step)" = 10 ] && echo 1 || echo 0)" "weights_step is not 10 at start ($(step))"

# a newer complete checkpoint appears
train 20 --resume || { cat "$dir/train.log"; check 0 "resumed training failed"; }
check "$(wait_step 20 30 && echo 1 || echo 0)" "the step-20 checkpoint was not swapped in ($(step))"
code=$(post /v1/completions '{"prompt": "A fortune:", "max_tokens": 8}')
check "$([ "$code" = 200 ] && grep -q '"system_fingerprint":"tpmpi-step-20"' "$dir/body" &&
    echo 1 || echo 0)" "a completion after the reload: $code $(cat "$dir/body")"

# a corrupted one: a copy of the step-20 file with damaged tensor bytes, named by latest
cp "$dir/ck/ckpt_00000020.h5" "$dir/ck/ckpt_00000030.h5"
python3 - "$dir/ck/ckpt_00000030.h5" <<'PY'
import os, sys
p = sys.argv[1]
n = os.path.getsize(p)
with open(p, "r+b") as f:
    for off in range(n // 20, n - n // 20, 1024):
        f.seek(off)
        b = f.read(8)
        f.seek(off)
        f.write(bytes(x ^ 0x5A for x in b))
PY
echo ckpt_00000030.h5 >"$dir/ck/latest.tmp" && mv "$dir/ck/latest.tmp" "$dir/ck/latest"
code=$(post /admin/reload '{}')
check "$([ "$code" = 202 ] && echo 1 || echo 0)" "POST /admin/reload: $code, not 202"
n=0
while [ "$n" -lt 100 ] && ! grep -q 'refusing checkpoint .*ckpt_00000030.h5' "$dir/serve.log"; do
    sleep 0.1
    n=$((n + 1))
done
check "$(grep -q 'refusing checkpoint .*ckpt_00000030.h5' "$dir/serve.log" && echo 1 || echo 0)" \
    "the corrupted checkpoint was not refused with a message"
check "$([ "$(step)" = 20 ] && echo 1 || echo 0)" "weights_step moved to $(step) on a corrupted checkpoint"
code=$(post /v1/completions '{"prompt": "A fortune:", "max_tokens": 8}')
check "$([ "$code" = 200 ] && echo 1 || echo 0)" "no completion after the refusal: $code"

# an incompatible one: another model shape (n_embd 32)
timeout 300 $MPIRUN -np 1 "$TPMPI" --mode=train --model=tiny --n-embd=32 --steps=1 --batch=2 \
    --threads=1 --ckpt-dir="$dir/other" >>"$dir/train.log" 2>&1 ||
    { cat "$dir/train.log"; check 0 "training the other model failed"; }
cp "$dir/other/ckpt_00000001.h5" "$dir/ck/ckpt_00000040.h5"
echo ckpt_00000040.h5 >"$dir/ck/latest.tmp" && mv "$dir/ck/latest.tmp" "$dir/ck/latest"
post /admin/reload '{}' >/dev/null
n=0
while [ "$n" -lt 100 ] && ! grep -q 'refusing checkpoint .*ckpt_00000040.h5' "$dir/serve.log"; do
    sleep 0.1
    n=$((n + 1))
done
check "$(grep -q 'refusing checkpoint .*ckpt_00000040.h5' "$dir/serve.log" && echo 1 || echo 0)" \
    "the checkpoint of another model was not refused with a message"
code=$(post /v1/completions '{"prompt": "A fortune:", "max_tokens": 8}')
check "$([ "$code" = 200 ] && [ "$(step)" = 20 ] && echo 1 || echo 0)" \
    "not serving step 20 after refusing another model: $code, step $(step)"
serve_stop_clean 60
check "$([ $? = 0 ] && echo 1 || echo 0)" "the server did not stop cleanly"
grep -E 'watch:|refusing' "$dir/serve.log" | sed 's/^/  /'

# --watch needs a directory
timeout 60 $MPIRUN -np 1 "$TPMPI" --mode=serve --ckpt="$dir/ck/ckpt_00000020.h5" --watch \
    --port="$(serve_free_port)" >"$dir/file.log" 2>&1
rc=$?
check "$([ "$rc" = 2 ] && grep -q 'needs --ckpt=DIR' "$dir/file.log" && echo 1 || echo 0)" \
    "--watch with a file: exit $rc"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
