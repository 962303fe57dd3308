#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""project.py: step-time table of bench_step.sh and a projection to slower networks.

Measured (per variant, median over the steps after the first 10 of every round): step time,
time blocked in collectives, codec time per step (encode + decode, from the summary's codec_s
spread over the steps), gradient and all-gather bytes per step and rank (comm counters).

Projection. On this machine the two ranks talk through shared memory, so communication costs
almost nothing. On a network of bandwidth W (bytes/s per rank, each direction) the same step
would need at least the transfer times bytes/W; with the engine's overlap the step takes

    T(W) = max(compute, comm(W)) + codec,   comm(W) = (gather_bytes + grad_bytes) / W

with compute = measured step - wait - codec (the part that does not depend on the network;
fully overlapped communication is the optimistic bound, so the break-even point is too), and
codec = 0 without compression. Compression pays where T_2bit(W) < T_none(W). Latency is
ignored (both variants issue the same number of collectives per step).

Usage: project.py OUT_DIR [bandwidth_Gbit_s ...]
"""
import glob
import json
import os
import re
import statistics
import sys

ORDER = ["none", "ef-fp32", "ef-bf16", "stochastic"]


def load(path):
    steps, summary = [], None
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec["type"] == "step":
                steps.append(rec)
            elif rec["type"] == "summary":
                summary = rec
    return steps, summary


def main():
    out = sys.argv[1]
    bws = [float(x) for x in sys.argv[2:]] or [1, 10, 25, 100, 400]
    by = {}
    for path in sorted(glob.glob(os.path.join(out, "*_r*.jsonl"))):
        v = re.match(r"(.+)_r\d+\.jsonl$", os.path.basename(path)).group(1)
        steps, summary = load(path)
        if summary is None:
            continue
        by.setdefault(v, []).append((steps, summary))
    meas = {}
    print("| variant | runs | step ms (median) | comm wait ms | codec ms | compute ms | "
          "grad bytes / step | all-gather bytes / step |")
    print("|---|---|---|---|---|---|---|---|")
    for v in [x for x in ORDER if x in by]:
        st = [s for steps, _ in by[v] for s in steps[10:]]
        step_ms = statistics.median(s["step_ms"] for s in st)
        wait_ms = statistics.median(s["comm_wait_ms"] for s in st)
        codec = statistics.mean(x["codec_s"] / x["steps"] for _, x in by[v]) * 1e3
        grad = statistics.median(s["grad_bytes"] for s in st)
        ag = statistics.mean(x["comm"]["allgather_bytes"] / x["steps"] for _, x in by[v])
        compute = step_ms - wait_ms - codec
        meas[v] = (step_ms, wait_ms, codec, compute, grad, ag)
        print("| %s | %d | %.1f | %.1f | %.1f | %.1f | %.0f | %.0f |" % (
            v, len(by[v]), step_ms, wait_ms, codec, compute, grad, ag))
    if "none" not in meas:
        return
    print()
    print("Projected step time (ms) at W Gbit/s per rank; compute = the `none` run's "
          "(same work), codec as measured:")
    print()
    print("| W (Gbit/s) | " + " | ".join(v for v in meas) + " | best 2-bit speedup |")
    print("|---|" + "---|" * (len(meas) + 1))
    compute = meas["none"][3]
    for bw in bws:
        W = bw * 1e9 / 8.0
        row, best = [], 0.0
        for v, (_, _, codec, _, grad, ag) in meas.items():
            t = max(compute, (grad + ag) / W * 1e3) + (codec if v != "none" else 0.0)
            row.append(t)
        t0 = row[0]
        best = max(t0 / t for v, t in zip(meas, row) if v != "none") if len(row) > 1 else 1.0
        print("| %g | " % bw + " | ".join("%.1f" % t for t in row) + " | %.2fx |" % best)
    # break-even: the saved transfer time equals the codec time (when comm dominates)
    print()
    for v, (_, _, codec, _, grad, ag) in meas.items():
        if v == "none":
            continue
        saved = meas["none"][4] - grad
        print("%s: saves %.2f MB of gradient traffic per step; pays for its %.1f ms codec "
              "below %.2f Gbit/s when the network is the bottleneck" % (
                  v, saved / 1e6, codec, saved * 8 / (codec * 1e-3) / 1e9 if codec > 0 else 0))


if __name__ == "__main__":
    main()
