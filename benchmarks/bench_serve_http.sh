#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench_serve_http.sh: aggregate throughput of `tpmpi --mode=serve` through its HTTP API at
# client concurrency 1, 2, 4, 8 (benchmarks/loadgen.py: streamed requests, vLLM's TTFT /
# TPOT / ITL / E2EL definitions). Continuous batching should make output tok/s rise with the
# concurrency up to the slot count (--parallel). A checkpoint of the model preset is trained
# for a few steps first (its quality does not matter for speed). Output:
# BUILD_DIR/benchmarks/bench_serve_http.d/c<C>-r<round>.json, server.log and results.md.
#
#   benchmarks/bench_serve_http.sh [BUILD_DIR]          (default: build)
# Env: TPM_BENCH_MODEL (small), TPM_BENCH_NP (2 ranks), TPM_BENCH_THREADS (cores / ranks),
#      TPM_BENCH_PARALLEL (8 slots), TPM_BENCH_INPUT (32), TPM_BENCH_OUTPUT (64),
#      TPM_BENCH_PROMPTS (8 per unit of concurrency), TPM_BENCH_LEVELS ("1 2 4 8"),
#      TPM_BENCH_REPS (3 rounds; the table shows each level's median and best round),
#      TPM_BENCH_OUT (output folder).
set -euo pipefail
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
model=${TPM_BENCH_MODEL:-small}
np=${TPM_BENCH_NP:-2}
cores=$(nproc)
threads=${TPM_BENCH_THREADS:-$((cores / np > 0 ? cores / np : 1))}
parallel=${TPM_BENCH_PARALLEL:-8}
input=${TPM_BENCH_INPUT:-32}
output=${TPM_BENCH_OUTPUT:-64}
per=${TPM_BENCH_PROMPTS:-8}
levels=${TPM_BENCH_LEVELS:-1 2 4 8}
reps=${TPM_BENCH_REPS:-3}
# outputs (a checkpoint of ~50 MB, logs, JSON) go under the build directory, not the source
# tree, which `make dist` copies
out=${TPM_BENCH_OUT:-$build/benchmarks/bench_serve_http.d}
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
# Ranks that wait in a collective yield the core instead of spinning. On a machine shared
# with other jobs, spinning ranks of a lockstep TP step starve each other: measured here
# (2 cores, load ~10) about 3x less throughput at 2 ranks. On a dedicated node set it to 0.
export OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}

ck=$out/ck-$model
if [ ! -e "$ck/latest" ]; then
    "$build/tpmpi" --mode=train --model="$model" --steps=20 --threads="$cores" \
        --ckpt-dir="$ck" --out="$out/run-$model" >"$out/train-$model.log" 2>&1
fi

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
mpirun -np "$np" --bind-to none "$build/tpmpi" --mode=serve --ckpt="$ck" --threads="$threads" \
    --parallel="$parallel" --host=127.0.0.1 --port="$port" --max-queue=256 >"$out/server.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/health" || true)" = 200 ] && break
    kill -0 $server 2>/dev/null || { cat "$out/server.log"; exit 1; }
    sleep 0.1
done

{
    echo "# $(date -u +%FT%TZ) $(git -C "$top" describe --always --dirty 2>/dev/null || echo unknown)"
    echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//') x $cores cores" \
        "(load average at start: $(cut -d' ' -f1-3 /proc/loadavg));" \
        "model $model, $np ranks x $threads threads, --parallel=$parallel," \
        "prompt $input tokens, max_tokens $output, greedy, streamed," \
        "mpi_yield_when_idle=$OMPI_MCA_mpi_yield_when_idle;" \
        "median of $reps rounds (levels interleaved)"
    echo
    echo "| concurrency | requests | output tok/s (median round) | best round | output tok per server CPU-s | total tok/s | req/s | median TTFT ms | median TPOT ms | median ITL ms | p99 E2EL ms | output tok/s of each round |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
} >"$out/results.md"
# CPU seconds used so far by the server's processes (mpirun's children: the ranks); on a
# shared machine output tokens per CPU-second show the batching gain even when other
# processes take wall time away
tck=$(getconf CLK_TCK)
server_cpu() {
    local p t=0
    for p in $(ps --ppid "$server" -o pid= 2>/dev/null) $server; do
        [ -r "/proc/$p/stat" ] || continue
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$t"
}
# one warm-up request, not timed
python3 "$top/benchmarks/loadgen.py" --url "$url" --num-prompts 2 --max-concurrency 1 \
    --input-len "$input" --output-len 8 >/dev/null
# rounds interleave the levels, so that a burst of load elsewhere on the machine does not
# land on one level only; the table shows each level's median round (its latencies too) and
# its best round, the least disturbed one on a shared machine
for r in $(seq "$reps"); do
    for c in $levels; do
        n=$((per * c))
        cpu0=$(server_cpu)
        python3 "$top/benchmarks/loadgen.py" --url "$url" --num-prompts "$n" \
            --max-concurrency "$c" --input-len "$input" --output-len "$output" --seed "$r$c" \
            --check-metrics --label "$model np=$np threads=$threads parallel=$parallel c=$c" \
            --json "$out/c$c-r$r.json" >"$out/c$c-r$r.txt"
        echo "$(( $(server_cpu) - cpu0 )) $tck" >"$out/c$c-r$r.cpu"
    done
done
for c in $levels; do
    python3 - "$out" "$c" "$reps" >>"$out/results.md" <<'EOF2'
import json, sys
out, c, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs = [json.load(open("%s/c%s-r%d.json" % (out, c, r))) for r in range(1, reps + 1)]
cpu = []
for r, run in zip(range(1, reps + 1), runs):
    ticks, hz = open("%s/c%s-r%d.cpu" % (out, c, r)).read().split()
    cpu.append(run["total_output_tokens"] / max(int(ticks) / float(hz), 1e-9))
cpu.sort()
runs.sort(key=lambda r: r["output_throughput"])
m = runs[len(runs) // 2]
print("| %s | %d/%d | %.1f | %.1f | %.0f | %.1f | %.2f | %.1f | %.2f | %.2f | %.1f | %s |" % (
    c, m["completed"], m["completed"] + m["failed"], m["output_throughput"],
    runs[-1]["output_throughput"], cpu[len(cpu) // 2], m["total_token_throughput"], m["request_throughput"], m["ttft"]["median_ms"],
    m["tpot"]["median_ms"], m["itl"]["median_ms"], m["e2el"]["p99_ms"],
    " ".join("%.0f" % r["output_throughput"] for r in runs)))
EOF2
done
cat "$out/results.md"
