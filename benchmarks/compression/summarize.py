#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""summarize.py: table of the compression study (run_study.sh output).

For each variant: final validation loss mean +- sd over the seeds (sample sd, n-1), the gap
to `none` (mean of the per-seed gaps, since seed s of every variant sees the same data and
the same initial weights), the gradient bytes sent per step, the residual size, wall time
and codec time. Prints Markdown; with --csv FILE also writes the per-run numbers and with
--curves FILE the mean validation curve of each variant.

Usage: summarize.py OUT_DIR [--csv FILE] [--curves FILE]
"""
import argparse
import glob
import json
import math
import os
import re
import statistics

ORDER = ["none", "ef-fp32", "ef-bf16", "stochastic", "ef-fp32-warmup"]
LABEL_ORDER = ORDER + ["ef-fp32-warmup-freezev"]


def load(path):
    steps, evals, summary = [], [], None
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec["type"] == "step":
                steps.append(rec)
            elif rec["type"] == "eval":
                evals.append(rec)
            elif rec["type"] == "summary":
                summary = rec
    return steps, evals, summary


def runs(out):
    by = {}
    for path in sorted(glob.glob(os.path.join(out, "*_s*.jsonl"))):
        m = re.match(r"(.+)_s(\d+)\.jsonl$", os.path.basename(path))
        steps, evals, summary = load(path)
        if summary is None:
            continue
        by.setdefault(m.group(1), {})[int(m.group(2))] = (steps, evals, summary)
    return by


def mean_sd(xs):
    if len(xs) < 2:
        return (xs[0] if xs else float("nan")), float("nan")
    return statistics.mean(xs), statistics.stdev(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--csv")
    ap.add_argument("--curves")
    a = ap.parse_args()
    by = runs(a.out)
    names = [v for v in LABEL_ORDER if v in by] + sorted(v for v in by if v not in LABEL_ORDER)
    base = by.get("none", {})
    print("| variant | seeds | final val loss (mean ± sd) | gap to none (mean ± sd) | "
          "relative gap | grad bytes / step / rank | residual bytes / rank | "
          "wall s (mean) | codec s (mean) |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for v in names:
        seeds = sorted(by[v])
        vals = [by[v][s][2]["final_val_loss"] for s in seeds]
        m, sd = mean_sd(vals)
        gaps = [by[v][s][2]["final_val_loss"] - base[s][2]["final_val_loss"]
                for s in seeds if s in base]
        gm, gsd = mean_sd(gaps) if gaps else (float("nan"), float("nan"))
        bm = statistics.mean(base[s][2]["final_val_loss"] for s in seeds if s in base) \
            if gaps else float("nan")
        summ = [by[v][s][2] for s in seeds]
        per_step = statistics.mean(x["grad_bytes_sent"] / x["steps"] for x in summ)
        print("| %s | %d | %.4f ± %s | %+.4f ± %s | %+.2f%% | %.0f | %d | %.0f | %.1f |" % (
            v, len(seeds), m, "n/a" if math.isnan(sd) else "%.4f" % sd, gm,
            "n/a" if math.isnan(gsd) else "%.4f" % gsd,
            100.0 * gm / bm if gaps else float("nan"), per_step, summ[0]["residual_bytes"],
            statistics.mean(x["wall_s"] for x in summ),
            statistics.mean(x.get("codec_s", 0.0) for x in summ)))
        for s in seeds:
            rows.append((v, s, by[v][s][2]))
    if a.csv:
        with open(a.csv, "w") as f:
            f.write("variant,seed,final_val_loss,final_loss,steps,grad_bytes_sent,"
                    "residual_bytes,wall_s,codec_s\n")
            for v, s, x in rows:
                f.write("%s,%d,%.6f,%.6f,%d,%d,%d,%.3f,%.3f\n" % (
                    v, s, x["final_val_loss"], x["final_loss"], x["steps"],
                    x["grad_bytes_sent"], x["residual_bytes"], x["wall_s"], x.get("codec_s", 0)))
    if a.curves:
        with open(a.curves, "w") as f:
            f.write("variant,step,val_loss_mean,val_loss_sd,seeds\n")
            for v in names:
                steps = sorted({e["step"] for s in by[v] for e in by[v][s][1]})
                for st in steps:
                    xs = [e["val_loss"] for s in by[v] for e in by[v][s][1] if e["step"] == st]
                    mm, ss = mean_sd(xs)
                    f.write("%s,%d,%.6f,%.6f,%d\n" % (v, st, mm, 0.0 if math.isnan(ss) else ss,
                                                     len(xs)))


if __name__ == "__main__":
    main()
