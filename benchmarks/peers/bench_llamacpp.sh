#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# llama.cpp's prefill and decode speed (llama-bench) on the GGUF F32, F16 and
# Q8_0 conversions of tpmpi checkpoints, for the side-by-side comparison of
# issue 15. Writes OUT/llamacpp.tsv (one row per file and thread count) and
# OUT/llamacpp-NAME-TYPE.json (llama-bench's own JSON).
#
# Usage: benchmarks/peers/bench_llamacpp.sh [options]
#   --ckpt PATH     checkpoint file or --ckpt-dir to benchmark; repeatable.
#                   Default: two checkpoints made here (reused when present):
#                   small (L4 C256 NH4, V=4096; check_gguf.sh's) and
#                   gpt2-124m (L12 C768 NH12, V=50257, 1 training step)
#   -p N            prompt tokens (prefill test; default 128)
#   -n N            generated tokens (decode test; default 64)
#   -t LIST         thread counts, comma separated (default 1,2)
#   -d N            context depth before the tests (llama-bench -d; default 0)
#   -r N            repetitions (default 5)
#   --types LIST    GGUF types (default f32,f16,q8_0)
#   --out DIR       output folder (default benchmarks/peers.d/llamacpp-<UTC time>)
# Environment: TPMPI, MPIRUN, PEERS_CACHE as for check_gguf.sh.
# A benchmark, not part of scripts/test.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${PEERS_CACHE:-$root/build/peers}
TPMPI=${TPMPI:-$root/build/tpmpi}
MPIRUN=${MPIRUN:-mpirun}
ckpts=() p=128 n=64 threads=1,2 depth=0 reps=5 types=f32,f16,q8_0 out=

usage() { echo "bench_llamacpp: $*" >&2; exit 2; }
need_arg() { [ "$1" -ge 2 ] || usage "$2 needs a value"; }
while [ $# -gt 0 ]; do
    case $1 in
        --ckpt) need_arg $# "$1"; ckpts+=("$2"); shift 2 ;;
        --ckpt=*) ckpts+=("${1#--ckpt=}"); shift ;;
        -p) need_arg $# "$1"; p=$2; shift 2 ;;
        -n) need_arg $# "$1"; n=$2; shift 2 ;;
        -t) need_arg $# "$1"; threads=$2; shift 2 ;;
        -d) need_arg $# "$1"; depth=$2; shift 2 ;;
        -r) need_arg $# "$1"; reps=$2; shift 2 ;;
        --types) need_arg $# "$1"; types=$2; shift 2 ;;
        --types=*) types=${1#--types=}; shift ;;
        --out) need_arg $# "$1"; out=$2; shift 2 ;;
        --out=*) out=${1#--out=}; shift ;;
        -h|--help) sed -n '3,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) usage "unknown argument '$1' (try --help)" ;;
    esac
done
for v in p n reps; do
    case ${!v} in ''|*[!0-9]*|0) usage "-$v must be a positive integer, got '${!v}'" ;; esac
done
case $depth in ''|*[!0-9]*) usage "-d must be a non-negative integer, got '$depth'" ;; esac
case $threads in ''|*[!0-9,]*|,*|*,|*,,*) usage "-t must be a comma list of thread counts, got '$threads'" ;; esac
case ,$threads, in *,0,*) usage "-t: a thread count must be positive" ;; esac
for t in ${types//,/ }; do
    case $t in f32|f16|q8_0) ;; *) usage "--types: unknown type '$t' (f32, f16, q8_0)" ;; esac
done
out=${out:-$root/benchmarks/peers.d/llamacpp-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"

export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1}
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
export TPMPI_CACHE=${TPMPI_CACHE:-$cache/tpmpi-cache}
eval "$("$here/llamacpp-setup.sh" --cache "$cache" | grep -E '^(LLAMA_BIN|PEERS_PYTHON|BUILD_INFO)=')"

work=$cache/work
mkdir -p "$work"
if [ ${#ckpts[@]} -eq 0 ]; then
    [ -x "$TPMPI" ] || usage "no tpmpi binary at $TPMPI (build it, set TPMPI, or pass --ckpt)"
    # small: check_gguf.sh's checkpoint (it trains it when missing)
    small=$work/small-s1500
    if [ ! -f "$small/latest" ]; then
        "$here/check_gguf.sh" --steps=1500 >"$out/check_gguf.log" 2>&1 \
            || { tail -5 "$out/check_gguf.log" >&2; echo "bench_llamacpp: check_gguf.sh failed" >&2; exit 1; }
    fi
    # gpt2-124m with GPT-2's vocabulary size: tpmpi's BPE trained to V=50257
    # on the fortunes corpus as one document; one short step (the speed does
    # not depend on the values)
    big=$work/gpt2-124m-v50257
    if [ ! -f "$big/latest" ]; then
        data=$work/onedoc-v50257
        if [ ! -f "$data/tokenizer.bin" ]; then
            [ -f "$work/onedoc.txt" ] || usage "no $work/onedoc.txt: run check_gguf.sh once first"
            "$MPIRUN" -np 1 "$TPMPI" --mode=prepare --input="$work/onedoc.txt" --vocab-size=50257 \
                --out="$data" >"$data.log" 2>&1 || { cat "$data.log" >&2; exit 1; }
        fi
        "$MPIRUN" -np 1 "$TPMPI" --mode=train --model=gpt2-124m --data="$data" --steps=1 \
            --batch=1 --seq-len=64 --threads=2 --ckpt-dir="$big" >"$work/train-gpt2-124m.log" 2>&1 \
            || { tail -5 "$work/train-gpt2-124m.log" >&2; echo "bench_llamacpp: training gpt2-124m failed" >&2; exit 1; }
    fi
    ckpts=("$small" "$big")
fi

tsv=$out/llamacpp.tsv
printf 'model\tfile\ttype\tthreads\tn_prompt\tn_gen\tdepth\tprompt_tok_s\tprompt_sd\tdecode_tok_s\tdecode_sd\n' >"$tsv"
{
    echo "llama.cpp: $BUILD_INFO"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "uptime: $(uptime)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
    echo "args: -p $p -n $n -t $threads -d $depth -r $reps"
} >"$out/env.txt"

for ck in "${ckpts[@]}"; do
    name=$(basename "${ck%/}" .h5)
    "$PEERS_PYTHON" "$here/to_gguf.py" "$ck" --out-dir="$cache/gguf" --name="$name" --types="$types" >/dev/null
    for t in ${types//,/ }; do
        g=$cache/gguf/$name-$t.gguf
        j=$out/llamacpp-$name-$t.json
        echo "bench_llamacpp: $name $t: llama-bench -p $p -n $n -t $threads -d $depth -r $reps" >&2
        "$LLAMA_BIN/llama-bench" -m "$g" -p "$p" -n "$n" -t "$threads" -d "$depth" -r "$reps" \
            -o json >"$j" 2>"$out/llamacpp-$name-$t.err" \
            || { tail -5 "$out/llamacpp-$name-$t.err" >&2; echo "bench_llamacpp: llama-bench failed on $g" >&2; exit 1; }
        python3 - "$j" "$name" "$g" "$t" "$p" "$n" "$depth" >>"$tsv" <<'EOF'
import json, os, sys
path, name, gguf, typ, p, n, depth = sys.argv[1:]
rows = {}
for r in json.load(open(path)):
    d = rows.setdefault(r["n_threads"], {})
    if r["n_prompt"] > 0 and r["n_gen"] == 0:
        d["pp"] = (r["avg_ts"], r["stddev_ts"])
    elif r["n_gen"] > 0 and r["n_prompt"] == 0:
        d["tg"] = (r["avg_ts"], r["stddev_ts"])
for th in sorted(rows):
    pp = rows[th].get("pp", (float("nan"), float("nan")))
    tg = rows[th].get("tg", (float("nan"), float("nan")))
    print(f"{name}\t{os.path.basename(gguf)}\t{typ}\t{th}\t{p}\t{n}\t{depth}\t"
          f"{pp[0]:.1f}\t{pp[1]:.1f}\t{tg[0]:.1f}\t{tg[1]:.1f}")
EOF
    done
done
echo "bench_llamacpp: wrote $tsv" >&2
column -t -s $'\t' "$tsv"
