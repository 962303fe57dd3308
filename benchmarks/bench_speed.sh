#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench_speed.sh: the issue-9 measurement of CPU training speed. One rank with 2 threads trains
# GPT-2 124M (B=4, T=64, 256 and 1024; B=8 T=256) and the small model (L4 C256 NH4, vocabulary 8192,
# B=4 T=64); the PyTorch peer (benchmarks/pytorch/train_gpt2.py) trains the same model, batch
# and threads; the sgemm ceiling is measured before and after. Every point is repeated and the
# implementations alternate inside each repetition, because the machine may be shared: the
# table gives medians, and the load average is logged. It prints a Markdown table and writes
# it, with every log, to OUTDIR (default build/speed):
#
#   benchmarks/bench_speed.sh [OUTDIR]
#   TPMPI_BASE=/path/to/old/tpmpi benchmarks/bench_speed.sh    # before/after, interleaved
#
# Environment: TPMPI (default build/tpmpi), TPMPI_BASE (optional second binary, timed
# interleaved with TPMPI), SPEED_REPS (repetitions, default 3), SPEED_POINTS (default
# "124m-64 small-64 124m-256 124m-1024"; also 124m-8x256), SPEED_THREADS (default 2), SPEED_PROFILE (1: one
# extra TPMPI_PROFILE=1 run per point and binary for the per-op breakdown; default 1),
# SPEED_PEER_STEPS (at most this many PyTorch steps per run; default 30),
# TPM_BENCH_PYTHON (pythons with torch, space-separated, each one a peer; default
# build/bench-venv/bin/python, else /usr/bin/python3; "none" skips the peer), TPMPI_CACHE
# (built-in corpus; default build/cache), MPIRUN (default mpirun). Other variables pass
# through: on a shared machine OMP_WAIT_POLICY=passive keeps a 2-thread rank from losing
# whole time slices to a spinning partner (benchmarks/RESULTS.md, issue 9); it is recorded.
#
# tokens/s is the median over the timed steps (step 1 left out) of each run, then the median
# over the repetitions; "best step" is the fastest single step of all repetitions (the least
# disturbed by other work on a shared machine). FLOPs per token = 6 N + 6 L C T (llm.c's
# count; N from the metrics). MFU = model FLOP/s over the ceiling: the best median sgemm
# GFLOP/s of benchmarks/bench_sgemm (or of bench_kernels' matmul rows when bench_sgemm is not
# built), the larger of the runs before and after. The llm.c figures are the
# ones measured on this machine (../shared/research/llmc.md: 73 tok/s at 124M 4x64, 1,833 at
# the small model, 47 at 124M 8x256, about 25 tok/s and 20 GB at T=1024).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/build/speed}
tpmpi=${TPMPI:-$top/build/tpmpi}
base=${TPMPI_BASE:-}
reps=${SPEED_REPS:-3}
points=${SPEED_POINTS:-124m-64 small-64 124m-256 124m-1024}
threads=${SPEED_THREADS:-2}
profile=${SPEED_PROFILE:-1}
mpirun=${MPIRUN:-mpirun}
export TPMPI_CACHE=${TPMPI_CACHE:-$(dirname "$tpmpi")/cache}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_pml=${OMPI_MCA_pml:-ob1}
py=/usr/bin/python3

# point -> model, vocabulary, sequence length, steps, llm.c tokens/s on this machine, batch
point_args() {
    case "$1" in
    124m-64) echo "gpt2-124m 50257 64 20 73 4" ;;
    small-64) echo "small 8192 64 100 1833 4" ;;
    124m-256) echo "gpt2-124m 50257 256 6 47 4" ;;
    124m-8x256) echo "gpt2-124m 50257 256 4 47 8" ;;
    124m-1024) echo "gpt2-124m 50257 1024 3 25 4" ;;
    *) echo "bench_speed: unknown point $1" >&2 && exit 2 ;;
    esac
}

torch_python() {
    if [ -n "${TPM_BENCH_PYTHON:-}" ]; then
        [ "$TPM_BENCH_PYTHON" != none ] && echo "$TPM_BENCH_PYTHON"
        return 0
    fi
    for p in "$(dirname "$tpmpi")/bench-venv/bin/python" /usr/bin/python3; do
        if [ -x "$p" ] && "$p" -c 'import torch' 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
}

# The environment's OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE select the slow Haswell kernels here
# (PLATFORM.md §8): unset them, and pin both thread counts, for every program timed.
run_env=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS="$threads"
    OPENBLAS_NUM_THREADS="$threads")

mkdir -p "$out/raw"
log() { echo "[bench_speed] $*" >&2; }

ceiling() { # $1: tag
    local f=$out/raw/sgemm-$1.txt bin
    bin=$(dirname "$tpmpi")/benchmarks/bench_sgemm
    if [ -x "$bin" ]; then
        "${run_env[@]}" "$bin" -t "$threads" -b 512 -e 2048 -f 2 -n 20 >"$f" 2>&1
        awk '!/^#/ && NF >= 7 && $5 > best { best = $5 } END { printf "%.1f\n", best }' "$f"
    else
        bin=$(dirname "$tpmpi")/benchmarks/bench_kernels
        "${run_env[@]}" "$bin" -t "$threads" >"$f" 2>&1
        awk '/^matmul_/ && $(NF-2) > best { best = $(NF-2) } END { printf "%.1f\n", best }' "$f"
    fi
}

tpmpi_run() { # $1 binary $2 tag $3 point $4 rep [$5 profile]
    local bin=$1 tag=$2 pt=$3 rep=$4 prof=${5:-0} dir
    read -r model vocab T steps _ B <<<"$(point_args "$pt")"
    dir=$out/raw/$pt-$tag-r$rep
    [ "$prof" = 1 ] && dir=$out/raw/$pt-$tag-profile
    rm -rf "$dir" && mkdir -p "$dir"
    [ "$prof" = 1 ] && [ "$steps" -gt 10 ] && steps=10
    cmd=("${run_env[@]}" TPMPI_PROFILE="$prof" "$mpirun" --bind-to none -np 1 "$bin"
        --mode=train --model="$model" --vocab-size="$vocab" --batch="$B" --seq-len="$T"
        --steps="$steps" --threads="$threads" --eval-batches=1 --log-every=1000000
        --out="$dir" --metrics="$dir/metrics.jsonl")
    echo "${cmd[*]}" >"$dir/command"
    echo "load $(cut -d' ' -f1-3 /proc/loadavg)" >"$dir/load"
    if ! "${cmd[@]}" >"$dir/log" 2>&1; then
        log "tpmpi $pt ($tag) failed, see $dir/log"
        return 1
    fi
    echo "load $(cut -d' ' -f1-3 /proc/loadavg)" >>"$dir/load"
}

torch_run() { # $1 python $2 peer index $3 point $4 rep
    local pyt=$1 idx=$2 pt=$3 rep=$4 dir cfgdir vp warm
    read -r model vocab T steps _ <<<"$(point_args "$pt")"
    dir=$out/raw/$pt-pytorch$idx-r$rep
    cfgdir=$out/raw/$pt-tpmpi-r$rep
    rm -rf "$dir" && mkdir -p "$dir"
    vp=$(((vocab + 127) / 128 * 128))
    warm=2
    [ "$steps" -gt "${SPEED_PEER_STEPS:-30}" ] && steps=${SPEED_PEER_STEPS:-30}
    [ "$steps" -le 3 ] && warm=1
    cmd=("${run_env[@]}" /usr/bin/time -o "$dir/time" -f "%M" "$pyt"
        "$top/benchmarks/pytorch/train_gpt2.py" --config "$cfgdir/config.json" --vocab-padded "$vp"
        --threads "$threads" --steps "$steps" --warmup-steps "$warm" --out "$dir/result.json")
    echo "${cmd[*]}" >"$dir/command"
    echo "load $(cut -d' ' -f1-3 /proc/loadavg)" >"$dir/load"
    if ! "${cmd[@]}" >"$dir/log" 2>&1; then
        log "pytorch $pt failed, see $dir/log"
        return 0
    fi
    echo "load $(cut -d' ' -f1-3 /proc/loadavg)" >>"$dir/load"
}

read -r -a torch_pys <<<"$(torch_python || true)"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm), $(nproc) cores,$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
    echo "memory: $(free -g | awk '/^Mem:/ {print $2}') GiB"
    echo "commit: $(git -C "$top" describe --always --dirty 2>/dev/null || echo unknown)"
    echo "tpmpi: $tpmpi${base:+  base: $base}"
    for p in "${torch_pys[@]}"; do
        echo "pytorch: $p $("$p" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
    done
    echo "threads: $threads, reps: $reps, points: $points, OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-}"
    echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out/machine.txt" >&2

log "sgemm ceiling (before)"
ceil1=$(ceiling before)
for rep in $(seq "$reps"); do
    for pt in $points; do
        log "rep $rep/$reps: $pt"
        tpmpi_run "$tpmpi" tpmpi "$pt" "$rep"
        if [ -n "$base" ]; then
            tpmpi_run "$base" base "$pt" "$rep"
        fi
        for i in "${!torch_pys[@]}"; do
            torch_run "${torch_pys[$i]}" "$i" "$pt" "$rep"
        done
    done
done
if [ "$profile" = 1 ]; then
    for pt in $points; do
        log "profile: $pt"
        tpmpi_run "$tpmpi" tpmpi "$pt" 0 1
        if [ -n "$base" ]; then
            tpmpi_run "$base" base "$pt" 0 1
        fi
    done
fi
log "sgemm ceiling (after)"
ceil2=$(ceiling after)
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/machine.txt" >&2
echo "sgemm ceiling GFLOP/s (best median): before $ceil1, after $ceil2" |
    tee -a "$out/machine.txt" >&2

CEIL1=$ceil1 CEIL2=$ceil2 POINTS=$points REPS=$reps OUT=$out HAVE_BASE=${base:+1} \
    "$py" - <<'EOF' | tee "$out/speed.md"
import glob, json, os, statistics

out, reps = os.environ["OUT"], int(os.environ["REPS"])
ceil = max(float(os.environ["CEIL1"]), float(os.environ["CEIL2"]))
llmc = {"124m-64": (73, "4x64"), "small-64": (1833, "4x64"), "124m-256": (47, "8x256"),
        "124m-8x256": (47, "8x256"), "124m-1024": (25, "4x1024, ~20 GB")}
tags = ["tpmpi"] + (["base"] if os.environ.get("HAVE_BASE") else [])


def tpmpi_point(pt, tag):
    meds, rss, flops, best = [], [], None, 0.0
    for r in range(1, reps + 1):
        path = f"{out}/raw/{pt}-{tag}-r{r}/metrics.jsonl"
        if not os.path.exists(path):
            continue
        lines = [json.loads(l) for l in open(path)]
        steps = [x["tokens_per_s"] for x in lines if x["type"] == "step"][1:]
        summ = [x for x in lines if x["type"] == "summary"]
        cfg = json.load(open(f"{out}/raw/{pt}-{tag}-r{r}/config.json"))
        if steps:
            meds.append(statistics.median(steps))
            best = max(best, max(steps))
        if summ:
            rss.append(summ[0]["peak_rss_bytes"])
            L, C, T = cfg["n_layer"], cfg["n_embd"], cfg["seq_len"]
            flops = 6 * summ[0]["params"] + 6 * L * C * T
    return meds, rss, flops, best


def torch_point(pt, idx):
    tps, rss, ver = [], [], ""
    for r in range(1, reps + 1):
        d = f"{out}/raw/{pt}-pytorch{idx}-r{r}"
        if os.path.exists(f"{d}/result.json"):
            res = json.load(open(f"{d}/result.json"))
            tps.append(res["tokens_per_s"])
            ver = f'{res["torch"]} ({res["blas"]})'
            try:
                rss.append(int(open(f"{d}/time").read().split()[-1]) * 1024)
            except (OSError, ValueError, IndexError):
                pass
    return tps, rss, ver


print(f"sgemm ceiling: {ceil:.0f} GFLOP/s (best median of the before/after runs)\n")
print("| point | impl | tokens/s median (range) | reps | MFU | best step | vs llm.c | vs PyTorch "
      "| peak RSS GiB |")
print("|---|---|---|---|---|---|---|---|---|")
peers = sorted({int(p.split("-pytorch")[1].split("-")[0])
                for p in glob.glob(f"{out}/raw/*-pytorch*-r*")})
for pt in os.environ["POINTS"].split():
    torch = [torch_point(pt, i) for i in peers]
    # the ratio is against the fastest PyTorch peer
    t_meds = [statistics.median(t[0]) for t in torch if t[0]]
    t_med = max(t_meds) if t_meds else None
    for tag in tags:
        meds, rss, flops, best = tpmpi_point(pt, tag)
        if not meds:
            continue
        m = statistics.median(meds)
        mfu = m * flops / (ceil * 1e9) if flops else float("nan")
        ref, ref_shape = llmc[pt]
        vs_t = f"{m / t_med:.2f}x" if t_med else "-"
        print(f"| {pt} | {tag} | {m:.0f} ({min(meds):.0f}-{max(meds):.0f}) | {len(meds)} | "
              f"{100 * mfu:.0f}% | {best:.0f} | {m / ref:.1f}x ({ref} at {ref_shape}) | {vs_t} | "
              f"{max(rss) / 2**30:.2f} |")
    for t_tps, t_rss, ver in torch:
        if t_tps:
            m = statistics.median(t_tps)
            print(f"| {pt} | pytorch {ver} | {m:.0f} ({min(t_tps):.0f}-{max(t_tps):.0f}) | "
                  f"{len(t_tps)} | | | {m / llmc[pt][0]:.1f}x | | "
                  f"{max(t_rss) / 2**30 if t_rss else float('nan'):.2f} |")

for path in sorted(glob.glob(f"{out}/raw/*-profile/log")):
    lines = [l.split("]", 1)[-1].rstrip() for l in open(path)]
    start = [i for i, l in enumerate(lines) if "profile (TPMPI_PROFILE)" in l]
    rows = lines[start[0]:] if start else []
    if rows:
        print(f"\n{os.path.basename(os.path.dirname(path))}:\n")
        print("```")
        print("\n".join(r for r in rows))
        print("```")
EOF
