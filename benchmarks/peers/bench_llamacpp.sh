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
#   -d N            context depth of the decode test (llama-bench -d; default
#                   P, like tpmpi's decode after a P-token prompt; the prefill
#                   test always starts from an empty context)
#   -r N            repetitions (default 5)
#   --types LIST    GGUF types (default f32,f16,q8_0)
#   --out DIR       output folder (default benchmarks/peers.d/llamacpp-<UTC time>)
#   --with-tpmpi    also time tpmpi --mode=serve (1 rank, each thread count) on
#                   the same checkpoints with the same P, N and R
#                   (bench_tpmpi_serve.py), into OUT/tpmpi.tsv, and write
#                   OUT/ratios.tsv: tpmpi / llama.cpp for fp32-F32, bf16-F16,
#                   int8-Q8_0
#   --tpmpi-dtypes LIST  serving dtypes for --with-tpmpi (default fp32; bf16 and
#                   int8 are passed as --serve-dtype=..., fp32 passes nothing)
#   --tpmpi-ranks LIST   rank counts for --with-tpmpi (default 1): for each
#                   core count T of -t, tpmpi runs R ranks x T/R threads for
#                   every R dividing T, right after llama.cpp at T threads
# Environment: TPMPI, MPIRUN, PEERS_CACHE as for check_gguf.sh.
# A benchmark, not part of scripts/test.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${PEERS_CACHE:-$root/build/peers}
TPMPI=${TPMPI:-$root/build/tpmpi}
MPIRUN=${MPIRUN:-mpirun}
ckpts=() p=128 n=64 threads=1,2 depth='' reps=5 types=f32,f16,q8_0 out='' with_tpmpi=0 dtypes=fp32 ranks=1

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
        --with-tpmpi) with_tpmpi=1; shift ;;
        --tpmpi-dtypes) need_arg $# "$1"; dtypes=$2; shift 2 ;;
        --tpmpi-dtypes=*) dtypes=${1#--tpmpi-dtypes=}; shift ;;
        --tpmpi-ranks) need_arg $# "$1"; ranks=$2; shift 2 ;;
        --tpmpi-ranks=*) ranks=${1#--tpmpi-ranks=}; shift ;;
        -h|--help) sed -n '3,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) usage "unknown argument '$1' (try --help)" ;;
    esac
done
for v in p n reps; do
    case ${!v} in ''|*[!0-9]*|0) usage "-$v must be a positive integer, got '${!v}'" ;; esac
done
depth=${depth:-$p}
case $depth in ''|*[!0-9]*) usage "-d must be a non-negative integer, got '$depth'" ;; esac
case $threads in ''|*[!0-9,]*|,*|*,|*,,*) usage "-t must be a comma list of thread counts, got '$threads'" ;; esac
case ,$threads, in *,0,*) usage "-t: a thread count must be positive" ;; esac
case $ranks in ''|*[!0-9,]*|,*|*,|*,,*) usage "--tpmpi-ranks must be a comma list of rank counts, got '$ranks'" ;; esac
case ,$ranks, in *,0,*) usage "--tpmpi-ranks: a rank count must be positive" ;; esac
for t in ${types//,/ }; do
    case $t in f32|f16|q8_0) ;; *) usage "--types: unknown type '$t' (f32, f16, q8_0)" ;; esac
done
for d in ${dtypes//,/ }; do
    case $d in fp32|bf16|int8) ;; *) usage "--tpmpi-dtypes: unknown dtype '$d' (fp32, bf16, int8)" ;; esac
done
[ "$with_tpmpi" = 0 ] || [ -x "$TPMPI" ] || usage "--with-tpmpi: no tpmpi binary at $TPMPI"
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
printf 'model\tfile\ttype\tthreads\tn_prompt\tn_gen\tdecode_depth\tprompt_tok_s\tprompt_sd\tdecode_tok_s\tdecode_sd\n' >"$tsv"
{
    echo "llama.cpp: $BUILD_INFO"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "uptime: $(uptime)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
    echo "args: -p $p -n $n -t $threads -d $depth -r $reps"
} >"$out/env.txt"

ttsv=$out/tpmpi.tsv
[ "$with_tpmpi" = 0 ] || printf 'model\tdtype\tranks\tthreads\tn_prompt\tn_gen\tprompt_tok_s\tprompt_sd\tdecode_tok_s\tdecode_sd\tstopped_early\n' >"$ttsv"

# llama_one NAME TYPE T: llama-bench prefill (depth 0) and decode (depth -d) at T threads
llama_one() {
    local name=$1 t=$2 th=$3 g j
    g=$cache/gguf/$name-$t.gguf
    j=$out/llamacpp-$name-$t-t$th.json
    echo "bench_llamacpp: llama.cpp $name $t $th thread(s): -p $p -n 0 -d 0, -p 0 -n $n -d $depth, -r $reps" >&2
    for test in "-p $p -n 0 -d 0" "-p 0 -n $n -d $depth"; do
        # shellcheck disable=SC2086
        "$LLAMA_BIN/llama-bench" -m "$g" $test -t "$th" -r "$reps" -o json \
            2>>"$out/llamacpp-$name-$t.err" \
            || { tail -5 "$out/llamacpp-$name-$t.err" >&2; echo "bench_llamacpp: llama-bench failed on $g" >&2; exit 1; }
    done | python3 -c 'import json, sys
dec = json.JSONDecoder(); s = sys.stdin.read(); i = 0; rows = []
while True:
    while i < len(s) and s[i].isspace():
        i += 1
    if i >= len(s):
        break
    v, i = dec.raw_decode(s, i)
    rows += v
json.dump(rows, sys.stdout, indent=1)' >"$j"
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
}

spid='' failures=0
stop_server() {
    [ -n "$spid" ] || return 0
    kill -TERM "$spid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    spid=
}
trap stop_server EXIT

# tpmpi_one CKPT NAME V DTYPE RANKS THREADS: one server, bench_tpmpi_serve.py, stop
tpmpi_one() {
    local ck=$1 name=$2 V=$3 d=$4 np=$5 th=$6 port log ok r dopt=()
    [ "$d" = fp32 ] || dopt=("--serve-dtype=$d")
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    log=$out/tpmpi-$name-$d-r$np-t$th.log
    echo "bench_llamacpp: tpmpi serve $name $d $np rank(s) x $th thread(s)" >&2
    "$MPIRUN" --oversubscribe -np "$np" "$TPMPI" --mode=serve --ckpt="$ck" --threads="$th" --parallel=1 \
        --host=127.0.0.1 --port="$port" ${dopt[@]+"${dopt[@]}"} >"$log" 2>&1 &
    spid=$!
    ok=0
    for _ in $(seq 1200); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health" || true)" = 200 ] && { ok=1; break; }
        kill -0 "$spid" 2>/dev/null || break
        sleep 0.1
    done
    if [ "$ok" = 0 ]; then
        tail -3 "$log" >&2
        echo "bench_llamacpp: tpmpi serve did not start ($name $d), see $log" >&2
        failures=$((failures + 1))
        stop_server
        return 0
    fi
    if ! r=$(python3 "$here/bench_tpmpi_serve.py" --url="http://127.0.0.1:$port" -p "$p" -n "$n" \
            -r "$reps" --vocab="$V"); then
        echo "bench_llamacpp: tpmpi request failed ($name $d)" >&2
        failures=$((failures + 1))
        stop_server
        return 0
    fi
    stop_server
    python3 -c 'import json, sys
r = json.loads(sys.argv[1])
print("\t".join(sys.argv[2:] + [f"{r[k]:.1f}" for k in ("prompt_tok_s", "prompt_sd", "decode_tok_s", "decode_sd")]
                 + [str(r["stopped_early"])]))' "$r" "$name" "$d" "$np" "$th" "$p" "$n" >>"$ttsv"
}

# Interleaved, so that both sides see the same load: per checkpoint and per
# core count T, llama.cpp at T threads, then tpmpi at every R ranks x T/R threads.
for ck in "${ckpts[@]}"; do
    name=$(basename "${ck%/}" .h5)
    "$PEERS_PYTHON" "$here/to_gguf.py" "$ck" --out-dir="$cache/gguf" --name="$name" --types="$types" >/dev/null
    V=$("$PEERS_PYTHON" "$here/to_gguf.py" --print-vocab-size "$ck")
    for T in ${threads//,/ }; do
        for t in ${types//,/ }; do
            llama_one "$name" "$t" "$T"
        done
        [ "$with_tpmpi" = 1 ] || continue
        for np in ${ranks//,/ }; do
            [ $((T % np)) = 0 ] || continue
            for d in ${dtypes//,/ }; do
                tpmpi_one "$ck" "$name" "$V" "$d" "$np" $((T / np))
            done
        done
    done
done
echo "bench_llamacpp: wrote $tsv" >&2
column -t -s $'\t' "$tsv"
[ "$with_tpmpi" = 1 ] || exit 0
echo "bench_llamacpp: wrote $ttsv" >&2
column -t -s $'\t' "$ttsv"
python3 - "$tsv" "$ttsv" >"$out/ratios.tsv" <<'EOF'
import csv, sys
pair = {"fp32": "f32", "bf16": "f16", "int8": "q8_0"}
ll = {(r["model"], r["type"], r["threads"]): r for r in csv.DictReader(open(sys.argv[1]), delimiter="\t")}
print("model\ttpmpi\tllama.cpp\tranks\tthreads\tllama_threads\tprefill_ratio\tdecode_ratio")
for r in csv.DictReader(open(sys.argv[2]), delimiter="\t"):
    lt = str(int(r["ranks"]) * int(r["threads"]))
    l = ll.get((r["model"], pair[r["dtype"]], lt))
    if not l:
        continue
    pr = float(r["prompt_tok_s"]) / float(l["prompt_tok_s"])
    dr = float(r["decode_tok_s"]) / float(l["decode_tok_s"])
    print(f"{r['model']}\t{r['dtype']}\t{pair[r['dtype']]}\t{r['ranks']}\t{r['threads']}\t{lt}\t"
          f"{pr:.2f}\t{dr:.2f}")
EOF
echo "bench_llamacpp: wrote $out/ratios.tsv (tpmpi / llama.cpp)" >&2
column -t -s $'\t' "$out/ratios.tsv"
if [ "$failures" -gt 0 ]; then
    echo "bench_llamacpp: $failures tpmpi configuration(s) failed (see the logs in $out)" >&2
    exit 1
fi
