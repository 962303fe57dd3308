#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Check that to_gguf.py converts a tpmpi checkpoint correctly: llama.cpp's
# greedy continuation of fixed prompts on the F32 GGUF must match tpmpi's
# (--mode=serve, temperature 0) for at least 32 tokens; the F16 and Q8_0
# agreement is reported. Prints `N passed, N failed` last.
#
# Usage: benchmarks/peers/check_gguf.sh [--ckpt PATH] [--steps N] [--n N] [--need N] [--serve-arg A]
#   --ckpt PATH  checkpoint file or --ckpt-dir to check (default: train
#                --model=small for --steps steps into $PEERS_CACHE/work/small-sN,
#                reused when it is already there)
#   --steps N    training steps for the default checkpoint (default 1500)
#   --n N        tokens generated per prompt (default 48)
#   --need N     F32 tokens that must agree (default 32)
#   --serve-arg A  one more option for tpmpi --mode=serve (repeatable), e.g.
#                --serve-arg=--serve-dtype=int8 to set int8 against Q8_0
# Environment: TPMPI (default build/tpmpi), MPIRUN (default mpirun),
#   PEERS_CACHE (default build/peers), the cache of llamacpp-setup.sh.
# Optional benchmark tooling, not part of scripts/test.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${PEERS_CACHE:-$root/build/peers}
TPMPI=${TPMPI:-$root/build/tpmpi}
MPIRUN=${MPIRUN:-mpirun}
ckpt='' steps=1500 n=48 need=32 serve_args=()

usage() { echo "check_gguf: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
        --ckpt) [ $# -ge 2 ] || usage "--ckpt needs a path"; ckpt=$2; shift 2 ;;
        --ckpt=*) ckpt=${1#--ckpt=}; shift ;;
        --steps) [ $# -ge 2 ] || usage "--steps needs a number"; steps=$2; shift 2 ;;
        --steps=*) steps=${1#--steps=}; shift ;;
        --n) [ $# -ge 2 ] || usage "--n needs a number"; n=$2; shift 2 ;;
        --n=*) n=${1#--n=}; shift ;;
        --need) [ $# -ge 2 ] || usage "--need needs a number"; need=$2; shift 2 ;;
        --need=*) need=${1#--need=}; shift ;;
        --serve-arg) [ $# -ge 2 ] || usage "--serve-arg needs a value"; serve_args+=("$2"); shift 2 ;;
        --serve-arg=*) serve_args+=("${1#--serve-arg=}"); shift ;;
        -h|--help) sed -n '3,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) usage "unknown argument '$1' (try --help)" ;;
    esac
done
for v in steps n need; do
    case ${!v} in ''|*[!0-9]*|0) usage "--$v must be a positive integer, got '${!v}'" ;; esac
done
[ "$need" -le "$n" ] || usage "--need ($need) must not exceed --n ($n)"
[ -x "$TPMPI" ] || usage "no tpmpi binary at $TPMPI (build it, or set TPMPI)"

export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1}
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
export TPMPI_CACHE=${TPMPI_CACHE:-$cache/tpmpi-cache}

eval "$("$here/llamacpp-setup.sh" --cache "$cache" | grep -E '^(LLAMA_BIN|PEERS_PYTHON)=')"

work=$cache/work
mkdir -p "$work"
# The default checkpoint is trained on the fortunes corpus as ONE document (the
# '%' separator lines dropped): the built-in corpus is 15,000 short documents,
# and a model trained on it greedily ends most continuations with end-of-text
# after a few tokens, too short to compare 32 tokens.
onedoc_data() { # onedoc_data DIR [prepare options...]: prepare it once
    _d=$1; shift
    [ -f "$_d/tokenizer.bin" ] && return 0
    [ -d /usr/share/games/fortunes ] || usage "no /usr/share/games/fortunes (apt-get install fortunes), or pass --ckpt"
    for _f in /usr/share/games/fortunes/*; do
        case $_f in *.dat|*.u8) continue ;; esac
        [ -f "$_f" ] && [ ! -L "$_f" ] && grep -v '^%$' "$_f"
    done >"$work/onedoc.txt"
    "$MPIRUN" -np 1 "$TPMPI" --mode=prepare --input="$work/onedoc.txt" --out="$_d" "$@" \
        >"$_d.log" 2>&1 || { cat "$_d.log" >&2; echo "check_gguf: prepare failed" >&2; exit 1; }
}
if [ -z "$ckpt" ]; then
    ckpt=$work/small-s$steps
    if [ ! -f "$ckpt/latest" ]; then
        onedoc_data "$work/onedoc-v4096" --vocab-size=4096
        echo "check_gguf: training --model=small for $steps steps into $ckpt" >&2
        "$MPIRUN" -np 1 "$TPMPI" --mode=train --model=small --steps="$steps" --threads=1 \
            --data="$work/onedoc-v4096" --ckpt-dir="$ckpt" >"$work/train-small-s$steps.log" 2>&1 \
            || { tail -5 "$work/train-small-s$steps.log" >&2; echo "check_gguf: training failed" >&2; exit 1; }
    fi
fi
name=$(basename "$ckpt" .h5)
gdir=$cache/gguf
"$PEERS_PYTHON" "$here/to_gguf.py" "$ckpt" --out-dir="$gdir" --name="$name" >/dev/null

# Q8_0 from the gguf package against llama.cpp's own quantizer on the F32 file:
# the same tensor types and the same bytes
"$LLAMA_BIN/llama-quantize" "$gdir/$name-f32.gguf" "$gdir/$name-q8_0-llama.gguf" Q8_0 \
    >"$work/quantize-$name.log" 2>&1 || { tail -5 "$work/quantize-$name.log" >&2; exit 1; }
q8_pass=0 q8_fail=0
if "$PEERS_PYTHON" - "$gdir/$name-q8_0.gguf" "$gdir/$name-q8_0-llama.gguf" <<'EOF'
import sys
import gguf
import numpy as np
ours, theirs = (gguf.GGUFReader(p) for p in sys.argv[1:3])
tb = {t.name: t for t in theirs.tensors}
bad = [t.name for t in ours.tensors if t.name not in tb or t.tensor_type != tb[t.name].tensor_type
       or not np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(tb[t.name].data).view(np.uint8))]
bad += [n for n in tb if n not in {t.name for t in ours.tensors}]
print(f"      q8_0 vs llama-quantize: {len(ours.tensors) - len(bad)}/{len(ours.tensors)} tensors "
      f"with the same type and bytes{'; differ: ' + ', '.join(bad[:5]) if bad else ''}")
sys.exit(1 if bad else 0)
EOF
then
    q8_pass=1
    echo "ok:   q8_0 tensors identical to llama-quantize's"
else
    q8_fail=1
    echo "FAIL: q8_0 tensors identical to llama-quantize's"
fi

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
log=$work/serve-$name.log
"$MPIRUN" -np 1 "$TPMPI" --mode=serve --ckpt="$ckpt" --threads=1 --host=127.0.0.1 \
    --port="$port" --parallel=1 ${serve_args[@]+"${serve_args[@]}"} >"$log" 2>&1 &
spid=$!
stop_server() {
    if kill -0 "$spid" 2>/dev/null; then
        kill -TERM "$spid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$spid" 2>/dev/null || true
    fi
    wait "$spid" 2>/dev/null || true
}
trap stop_server EXIT
for _ in $(seq 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/health" || true)" = 200 ] && break
    kill -0 "$spid" 2>/dev/null || { tail -5 "$log" >&2; echo "check_gguf: tpmpi serve died"; echo "0 passed, 1 failed"; exit 1; }
    sleep 0.1
done

echo "check_gguf: checkpoint $ckpt; GGUF files in $gdir; tpmpi at $url"
python3 "$here/compare_greedy.py" --passed="$q8_pass" --failed="$q8_fail" --url="$url" \
    --llama-bin="$LLAMA_BIN" --n="$n" --need="$need" \
    --gguf "f32=$gdir/$name-f32.gguf" --gguf "f16=$gdir/$name-f16.gguf" \
    --gguf "q8_0=$gdir/$name-q8_0.gguf"
