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
    bws = [float(x) for x in sys.argv[2:]] or [0.1, 0.5, 1, 2, 5, 10, 25, 100]
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
    compute = meas["none"][3]
    print()
    print("Projected step time (ms) per rank on a network of W Gbit/s; compute = %.1f ms (the "
          "`none` run's compute), codec as measured. overlap: max(compute, comm) + codec "
          "(the engine hides all communication: optimistic); serial: compute + comm + codec "
          "(nothing hidden: pessimistic)." % compute)
    print()
    names = [v for v in meas if v != "none"]
    print("| W (Gbit/s) | comm none ms | " +
          " | ".join("comm %s ms" % v for v in names[:1]) +
          " | none overlap / serial | " +
          " | ".join("%s overlap / serial" % v for v in names) + " |")
    print("|---|---|---|---|" + "---|" * len(names))
    for bw in bws:
        W = bw * 1e9 / 8.0
        cn = (meas["none"][4] + meas["none"][5]) / W * 1e3
        cells = []
        for v in names:
            _, _, codec, _, grad, ag = meas[v]
            c = (grad + ag) / W * 1e3
            to, ts = max(compute, c) + codec, compute + c + codec
            no, ns = max(compute, cn), compute + cn
            cells.append("%.0f / %.0f (%.2fx / %.2fx)" % (to, ts, no / to, ns / ts))
        c1 = (meas[names[0]][4] + meas[names[0]][5]) / W * 1e3
        print("| %g | %.0f | %.0f | %.0f / %.0f | " % (bw, cn, c1, max(compute, cn),
                                                        compute + cn) + " | ".join(cells) + " |")
    print()
    for v in names:
        _, _, codec, _, grad, ag = meas[v]
        saved = meas["none"][4] - grad
        print("- %s: %.2f MB less gradient traffic per step and rank (%.1fx less); its %.1f ms "
              "of codec pay off below %.2f Gbit/s when communication is exposed (serial: "
              "saved bytes / codec time), and in the overlapped model only once the fp32 "
              "step's communication exceeds compute + codec, below %.2f Gbit/s" % (
                  v, saved / 1e6, meas["none"][4] / grad, codec,
                  saved * 8 / (codec * 1e-3) / 1e9 if codec > 0 else float("inf"),
                  (meas["none"][4] + meas["none"][5]) * 8 / ((compute + codec) * 1e-3) / 1e9))


if __name__ == "__main__":
    main()
