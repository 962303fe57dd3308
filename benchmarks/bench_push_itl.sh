#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Inter-token latency of a --mode=trainserve server with and without weight pushes: `tiny`
# trains on 1 rank and serves on 1 (the built-in corpus, vocabulary 4096) while
# benchmarks/loadgen.py streams completions; once with --push-every=0 (the first push only,
# training still runs, so the CPU is shared the same way) and once with --push-every=2.
# Output: BUILD_DIR/bench_push_itl.d/results.csv (one line per case: ITL median, p90, p99,
# TPOT median, pushes swapped in during the run).
#
#   benchmarks/bench_push_itl.sh [BUILD_DIR]   (default: build)
# Env: TPM_BENCH_PROMPTS (96), TPM_BENCH_CONC (4).
set -euo pipefail
build=${1:-build}
src=$(cd "$(dirname "$0")/.." && pwd)
out=$build/bench_push_itl.d
prompts=${TPM_BENCH_PROMPTS:-96}
conc=${TPM_BENCH_CONC:-4}
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
pushes() { curl -s "$1/metrics" | sed -n 's/^tpmpi:weight_pushes_total \([0-9]*\)$/\1/p'; }
{
    echo "# $(date -u +%FT%TZ) $(git -C "$src" describe --always --dirty 2>/dev/null || echo unknown) load: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "push_every,pushes_during_run,itl_median_ms,itl_p90_ms,itl_p99_ms,tpot_median_ms,requests"
} >"$out/results.csv"
for every in 0 2; do
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    url=http://127.0.0.1:$port
    mpirun -np 2 "$build/tpmpi" --mode=trainserve --serve-ranks=1 --model=tiny --steps=10000000 \
        --batch=4 --threads=1 --push-every="$every" --host=127.0.0.1 --port="$port" \
        --parallel=4 >"$out/server-$every.log" 2>&1 &
    job=$!
    for _ in $(seq 600); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/health")" = 200 ] && break
        sleep 0.1
    done
    p0=$(pushes "$url")
    python3 "$src/benchmarks/loadgen.py" --url "$url" --num-prompts "$prompts" \
        --max-concurrency "$conc" --input-len 16 --output-len 48 --vocab 4096 \
        --json "$out/load-$every.json" >"$out/load-$every.txt"
    p1=$(pushes "$url")
    kill -TERM "$job"
    wait "$job" || true
    python3 - "$out/load-$every.json" "$every" $((p1 - p0)) >>"$out/results.csv" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
i, t = r["itl"], r["tpot"]
print("%s,%s,%.3f,%.3f,%.3f,%.3f,%d" % (sys.argv[2], sys.argv[3], i["median_ms"], i["p90_ms"],
      i["p99_ms"], t["median_ms"], r.get("completed", 0)))
PY
done
cat "$out/results.csv"
