#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""plot.py: loss curves of the compression study (run_study.sh output) as a PNG.

Left: training loss (exponential moving average, alpha 0.05, of the per-step loss), mean
over seeds. Right: validation loss at every evaluation, mean over seeds with a band of
+- one sd, and a zoom on the last third of training in an inset.

Usage: plot.py OUT_DIR PNG   (Debian: apt-get install python3-matplotlib)
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from summarize import ORDER, runs  # noqa: E402

LABELS = {
    "none": "none (fp32 reduce-scatter)",
    "ef-fp32": "2-bit, fp32 residual",
    "ef-bf16": "2-bit, bf16 residual",
    "stochastic": "2-bit stochastic, no residual",
    "ef-fp32-warmup": "2-bit, fp32 residual, 10% warm-up",
}


def ema(xs, alpha=0.05):
    out, m = [], None
    for x in xs:
        m = x if m is None else (1 - alpha) * m + alpha * x
        out.append(m)
    return out


def mean(rows):
    return [sum(c) / len(c) for c in zip(*rows)]


def main():
    out, png = sys.argv[1], sys.argv[2]
    by = runs(out)
    names = [v for v in ORDER if v in by]  # the five main variants (ablations: table only)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    inset = ax2.inset_axes([0.42, 0.42, 0.55, 0.5])
    for v in names:
        seeds = sorted(by[v])
        n = min(len(by[v][s][0]) for s in seeds)
        tr = mean([ema([r["loss"] for r in by[v][s][0][:n]]) for s in seeds])
        ax1.plot(range(1, n + 1), tr, label=LABELS.get(v, v), lw=1.2)
        steps = [e["step"] for e in by[v][seeds[0]][1]]
        vals = [[e["val_loss"] for e in by[v][s][1]] for s in seeds]
        k = min(len(x) for x in vals)
        steps, vals = steps[:k], [x[:k] for x in vals]
        mv = mean(vals)
        sd = [(sum((x - m) ** 2 for x in col) / max(len(col) - 1, 1)) ** 0.5
              for col, m in zip(zip(*vals), mv)]
        line, = ax2.plot(steps, mv, marker=".", label=LABELS.get(v, v), lw=1.2)
        ax2.fill_between(steps, [m - s for m, s in zip(mv, sd)], [m + s for m, s in zip(mv, sd)],
                         color=line.get_color(), alpha=0.15)
        tail = [i for i, st in enumerate(steps) if st >= steps[-1] * 2 / 3]
        inset.plot([steps[i] for i in tail], [mv[i] for i in tail], marker=".",
                   color=line.get_color(), lw=1.2)
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (EMA 0.05), mean of seeds")
    ax1.set_ylim(top=7.0)
    ax1.grid(alpha=0.3)
    ax2.set_xlabel("step")
    ax2.set_ylabel("validation loss, mean ± sd of seeds")
    ax2.set_ylim(top=7.0)
    ax2.grid(alpha=0.3)
    inset.grid(alpha=0.3)
    inset.set_title("last third", fontsize=8)
    inset.tick_params(labelsize=7)
    ax1.legend(fontsize=8)
    nseeds = max(len(by[v]) for v in names)
    fig.suptitle("tpmpi `small` (4.3M params), built-in corpus, N = 2 ranks, %d seeds: "
                 "2-bit gradient compression" % nseeds)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
