#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""report.py: turn the raw output of benchmarks/run (OUT/raw) into OUT/results.json, CSV files,
PNG plots and OUT/summary.md (markdown for benchmarks/RESULTS.md). Standard library, plus
matplotlib for the plots (Debian: python3-matplotlib, installed by scripts/install-deps).

  /usr/bin/python3 benchmarks/report.py OUT

Definitions (also printed in summary.md):
  tokens/s   tokens per step over the median step time of the timed steps (the first 10%
             of the steps, at least one, are warm-up and left out); the median resists other
             work on a shared machine; tokens_per_s_mean (over the summed times) is kept too
  MFU        model FLOP/s over the measured sgemm ceiling of the whole machine: the fastest
             single call of bench_sgemm over its sizes at T threads, times cores / T, the
             larger over T = 1, 2 (a ceiling is what the hardware reaches; medians, and the
             2-thread figure, sink under other load); FLOPs per token 6 P + 6 L C T, as
             llm.c counts them
  comm share rank 0's time blocked in collectives over its step time (timed steps); the
             summary's comm.wait_frac (all steps, the slowest rank) is listed beside it
Exit status 1 when a check fails: memory per rank more than 5% off 16 P / N or not halving when
N doubles, a wrong sgemm result, a failed part.
"""
import csv
import glob
import json
import os
import re
import sys


def load_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def warmup_steps(n):
    return max(1, (n + 9) // 10)


def parse_sgemm(path):
    rows, blas = [], ""
    for line in open(path):
        if line.startswith("# blas:"):
            blas = line.split(":", 1)[1].strip()
        elif line.strip() and not line.startswith("#"):
            m, n, k, t_us, gf, best, wrong = line.split()
            rows.append({"m": int(m), "n": int(n), "k": int(k), "time_us": float(t_us),
                         "gflops": float(gf), "best_gflops": float(best), "wrong": int(wrong)})
    return rows, blas


def train_point(d):
    """One bench_train.sh folder: config.json, metrics.jsonl, log."""
    name = os.path.basename(d)
    m = re.match(r"(.+)-n(\d+)t(\d+)$", name)
    cfg = read_json(os.path.join(d, "config.json"), {})
    recs = load_jsonl(os.path.join(d, "metrics.jsonl"))
    steps = [r for r in recs if r.get("type") == "step"]
    summ = next(r for r in recs if r.get("type") == "summary")
    log = open(os.path.join(d, "log")).read()
    vp = int(re.search(r"\(padded (\d+)\)", log).group(1))
    world = summ["world_size"]
    timed = steps[warmup_steps(len(steps)):] or steps
    tok_step = world * cfg["batch"] * cfg.get("grad_accum", 1) * cfg["seq_len"]
    step_s = sum(r["step_ms"] for r in timed) / 1e3
    wait_s = sum(r.get("comm_wait_ms", 0.0) for r in timed) / 1e3
    med_ms = sorted(r["step_ms"] for r in timed)[len(timed) // 2]
    P, L, C, T = summ["params"], cfg["n_layer"], cfg["n_embd"], cfg["seq_len"]
    return {
        "name": name, "model": m.group(1), "world_size": world, "threads": int(m.group(3)),
        "batch": cfg["batch"], "seq_len": T, "n_layer": L, "n_embd": C, "n_head": cfg["n_head"],
        "vocab_padded": vp, "params": P, "steps": len(steps), "steps_timed": len(timed),
        "tokens_per_s": tok_step / (med_ms / 1e3) if med_ms > 0 else 0.0,
        "tokens_per_s_mean": tok_step * len(timed) / step_s if step_s > 0 else 0.0,
        "step_ms_median": med_ms,
        "flops_per_token": 6 * P + 6 * L * C * T,
        "comm_share": wait_s / step_s if step_s > 0 else 0.0,
        "comm_wait_frac_summary": summ["comm"]["wait_frac"],
        "allgather_bytes": summ["comm"]["allgather_bytes"],
        "reduce_scatter_bytes": summ["comm"]["reduce_scatter_bytes"],
        "model_state_bytes": summ["mem"]["model_state_bytes"],
        "gather_bytes": summ["mem"]["gather_bytes"], "act_bytes": summ["mem"]["act_bytes"],
        "peak_rss_bytes": summ["peak_rss_bytes"], "final_loss": summ["final_loss"],
        "command": open(os.path.join(d, "command")).read().strip(),
    }


def write_csv(path, rows, cols):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def csv_table(path, max_rows=30):
    """A CSV file (lines starting with # left out) as Markdown table lines, or [] if long."""
    rows = [r for r in csv.reader(line for line in open(path) if not line.startswith("#"))
            if r]
    if len(rows) < 2 or len(rows) > max_rows + 1:
        return []
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return lines + [""]


def fmt_bytes(b):
    return f"{b / 2**20:.1f} MiB"


def main():
    out = sys.argv[1]
    raw = os.path.join(out, "raw")
    env = read_json(os.path.join(raw, "env.json"), {})
    env["loadavg_end"] = read_json(os.path.join(raw, "loadavg_end.json"), "")
    checks, failures = [], []

    def check(ok, what):
        checks.append({"ok": bool(ok), "check": what})
        if not ok:
            failures.append(what)

    # ---- sgemm ceiling
    sgemm, ceiling = {}, {}
    for t in (1, 2):
        p = os.path.join(raw, f"sgemm-t{t}.txt")
        if os.path.exists(p):
            rows, blas = parse_sgemm(p)
            sgemm[t] = rows
            env["blas"] = blas
            ceiling[t] = max(r["best_gflops"] for r in rows)
            check(all(r["wrong"] == 0 for r in rows), f"sgemm results correct at {t} thread(s)")
    # The whole machine: the best per-thread figure times the cores. Under other load the
    # 2-thread figure can fall below the 1-thread one; a ceiling must not.
    cores = env.get("cores") or max(ceiling or [1])
    peak = max((g * cores / t for t, g in ceiling.items()), default=0.0) * 1e9

    # ---- training points (throughput, scaling) and memory points
    train = [train_point(d) for d in sorted(glob.glob(os.path.join(raw, "train", "*")))]
    mem = [train_point(d) for d in sorted(glob.glob(os.path.join(raw, "mem", "*")))]
    for p in train:
        p["mfu"] = p["tokens_per_s"] * p["flops_per_token"] / peak if peak else 0.0
    order = {"tiny": 0, "small": 1, "gpt2-124m": 2, "gpt2-350m": 3}
    models = sorted({p["model"] for p in train}, key=lambda m: order.get(m, 9))
    train.sort(key=lambda p: (order.get(p["model"], 9), p["world_size"]))

    def point(model, n, pts=train):
        return next((p for p in pts if p["model"] == model and p["world_size"] == n), None)

    memory = []
    for model in sorted({p["model"] for p in train + mem}, key=lambda m: order.get(m, 9)):
        pts = {n: point(model, n, train + mem) for n in (1, 2, 4)}
        if not all(pts.values()):
            continue
        for n, p in pts.items():
            expect = 16 * p["params"] / n
            dev = p["model_state_bytes"] / expect - 1
            memory.append({"model": model, "world_size": n, "params": p["params"],
                           "model_state_bytes": p["model_state_bytes"], "expected_16P_over_N":
                           expect, "deviation": dev, "gather_bytes": p["gather_bytes"],
                           "act_bytes": p["act_bytes"], "peak_rss_bytes": p["peak_rss_bytes"]})
            check(abs(dev) <= 0.05, f"{model} N={n}: model state {fmt_bytes(p['model_state_bytes'])}"
                  f" within 5% of 16P/N = {fmt_bytes(expect)} ({dev:+.2%})")
        for n in (1, 2):
            r = pts[n]["model_state_bytes"] / pts[2 * n]["model_state_bytes"]
            check(abs(r / 2 - 1) <= 0.05, f"{model}: model state halves from N={n} to N={2 * n}"
                  f" (ratio {r:.3f})")

    # ---- peers
    peers = []
    for model in models:
        for impl, n, fname in (("pytorch", 1, "torch"), ("pytorch-fsdp", 2, "fsdp")):
            rec = read_json(os.path.join(raw, "peers", f"{fname}-{model}.json"))
            ours = point(model, n)
            if rec is None or ours is None:
                continue
            row = {"model": model, "peer": impl, "world_size": n, "tpmpi_tokens_per_s":
                   ours["tokens_per_s"], "peer_tokens_per_s": rec.get("tokens_per_s"),
                   "ratio_tpmpi_over_peer": None, "torch": rec.get("torch"),
                   "python": rec.get("python"), "peer_blas": rec.get("blas"),
                   "params_match": rec.get("params") == ours["params"],
                   "error": rec.get("error")}
            if rec.get("tokens_per_s"):
                row["ratio_tpmpi_over_peer"] = ours["tokens_per_s"] / rec["tokens_per_s"]
                row["peer_mfu"] = (rec["tokens_per_s"] * ours["flops_per_token"] / peak
                                   if peak else 0.0)
                check(row["params_match"], f"{impl} {model}: same parameter count as tpmpi "
                      f"({rec.get('params')} vs {ours['params']})")
            peers.append(row)
    peers_skipped = read_json(os.path.join(raw, "peers-skipped.json"))

    # ---- extras written by other scripts
    extras = {}
    for status_file in sorted(glob.glob(os.path.join(raw, "*", "status"))):
        d = os.path.dirname(status_file)
        st = read_json(status_file, {})
        files = {}
        for f in sorted(glob.glob(os.path.join(d, "**", "*.json"), recursive=True)):
            if os.path.getsize(f) < 200000:
                files[os.path.relpath(f, d)] = read_json(f)
        st["files"] = files
        st["csv"] = [os.path.relpath(f, d) for f in
                     sorted(glob.glob(os.path.join(d, "**", "*.csv"), recursive=True))]
        st["log_tail"] = open(os.path.join(d, "log")).read().splitlines()[-15:]
        extras[os.path.basename(d)] = st
        check(st.get("exit_status") == 0, f"{st.get('script')} exited 0")

    results = {"env": env, "sgemm_ceiling_gflops": ceiling, "machine_ceiling_gflops": peak / 1e9,
               "sgemm": sgemm, "train": train,
               "memory_points": mem, "memory": memory, "peers": peers,
               "peers_skipped": peers_skipped, "extras": extras, "checks": checks}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_csv(os.path.join(out, "train.csv"), train,
              ["model", "world_size", "threads", "batch", "seq_len", "params", "steps_timed",
               "tokens_per_s", "tokens_per_s_mean", "step_ms_median", "mfu", "comm_share", "comm_wait_frac_summary",
               "allgather_bytes", "reduce_scatter_bytes", "model_state_bytes", "peak_rss_bytes"])
    write_csv(os.path.join(out, "memory.csv"), memory,
              ["model", "world_size", "params", "model_state_bytes", "expected_16P_over_N",
               "deviation", "gather_bytes", "act_bytes", "peak_rss_bytes"])
    write_csv(os.path.join(out, "peers.csv"), peers,
              ["model", "peer", "world_size", "tpmpi_tokens_per_s", "peer_tokens_per_s",
               "ratio_tpmpi_over_peer", "peer_mfu", "torch", "python", "peer_blas",
               "params_match"])
    write_csv(os.path.join(out, "sgemm.csv"),
              [dict(r, threads=t) for t, rows in sgemm.items() for r in rows],
              ["threads", "m", "n", "k", "time_us", "gflops", "best_gflops", "wrong"])

    plots = make_plots(out, train, memory, peers, models)
    write_summary(out, env, ceiling, peak, train, memory, peers, peers_skipped, extras, checks,
                  plots)
    print(open(os.path.join(out, "summary.md")).read())
    if failures:
        print("report: FAILED checks:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def make_plots(out, train, memory, peers, models):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("report: matplotlib missing (apt-get install python3-matplotlib): no plots",
              file=sys.stderr)
        return []
    made = []

    def bars(ax, series, ylabel, log=False):
        width = 0.8 / max(1, len(series))
        for i, (label, vals) in enumerate(series):
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(models))]
            ys = [v if v is not None else 0 for v in vals]
            ax.bar(xs, ys, width, label=label)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)

    def tps(model, n):
        p = next((p for p in train if p["model"] == model and p["world_size"] == n), None)
        return p["tokens_per_s"] if p else None

    def peer(model, impl):
        r = next((r for r in peers if r["model"] == model and r["peer"] == impl), None)
        return r["peer_tokens_per_s"] if r else None

    fig, ax = plt.subplots(figsize=(7, 4))
    series = [("tpmpi N=1 (2 threads)", [tps(m, 1) for m in models]),
              ("tpmpi N=2 (1 thread each)", [tps(m, 2) for m in models])]
    if any(peer(m, "pytorch") for m in models):
        series.append(("PyTorch 1 proc (2 threads)", [peer(m, "pytorch") for m in models]))
    if any(peer(m, "pytorch-fsdp") for m in models):
        series.append(("PyTorch FSDP 2 procs", [peer(m, "pytorch-fsdp") for m in models]))
    bars(ax, series, "training tokens/s (B=4, T=64)", log=True)
    ax.set_title("Training throughput, 2 cores")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "throughput.png"), dpi=110)
    made.append("throughput.png")
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for n, label in ((1, "N=1"), (2, "N=2")):
        pts = [next((p for p in train if p["model"] == m and p["world_size"] == n), None)
               for m in models]
        a1.plot(models, [100 * p["mfu"] if p else 0 for p in pts], "o-", label=label)
        a2.plot(models, [100 * p["comm_share"] if p else 0 for p in pts], "o-", label=label)
    a1.set_ylabel("MFU (% of sgemm ceiling)")
    a2.set_ylabel("time blocked in collectives (%)")
    for a in (a1, a2):
        a.legend(fontsize=8)
        a.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "mfu_comm.png"), dpi=110)
    made.append("mfu_comm.png")
    plt.close(fig)

    if memory:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for model in sorted({r["model"] for r in memory}):
            rows = [r for r in memory if r["model"] == model]
            ns = [r["world_size"] for r in rows]
            ax.plot(ns, [r["model_state_bytes"] / 2**20 for r in rows], "o-",
                    label=f"{model} measured")
            ax.plot(ns, [r["expected_16P_over_N"] / 2**20 for r in rows], "k--", lw=0.8,
                    label=f"{model} 16P/N")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xticks([1, 2, 4])
        ax.set_xticklabels(["1", "2", "4"])
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("ranks N")
        ax.set_ylabel("model state per rank (MiB)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "memory.png"), dpi=110)
        made.append("memory.png")
        plt.close(fig)
    return made


def write_summary(out, env, ceiling, peak, train, memory, peers, peers_skipped, extras, checks,
                  plots):
    L = []
    L.append(f"Machine `{env.get('machine')}` ({env.get('cpu')}, {env.get('cores')} cores, "
             f"{env.get('mem_gib')} GiB), {env.get('os')}; commit `{env.get('commit')}`; "
             f"{env.get('date')}; {'smoke run' if env.get('smoke') else 'full run'}.")
    L.append(f"Load average before / after: {env.get('loadavg_start')} / "
             f"{env.get('loadavg_end')} (the machine is shared with other test runs).")
    L.append(f"BLAS: {env.get('blas', '?')}; {env.get('mpirun', '')}.")
    L.append("")
    if ceiling:
        L.append("sgemm ceiling (bench_sgemm, fastest call over sizes, GFLOP/s): " + ", ".join(
            f"{t} thread(s) {g:.0f}" for t, g in sorted(ceiling.items()))
            + f"; machine ceiling for MFU {peak / 1e9:.0f} (best per-thread figure x "
            f"{env.get('cores')} cores).")
        L.append("")
    L.append("| model | params | N x threads | tokens/s | step ms (median) | MFU | comm share "
             "(wait_frac) | model state / rank | peak RSS / rank |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for p in train:
        L.append(f"| {p['model']} | {p['params'] / 1e6:.2f} M | {p['world_size']} x "
                 f"{p['threads']} | {p['tokens_per_s']:.0f} | {p['step_ms_median']:.1f} | "
                 f"{100 * p['mfu']:.1f}% | {100 * p['comm_share']:.1f}% "
                 f"({100 * p['comm_wait_frac_summary']:.1f}%) | "
                 f"{fmt_bytes(p['model_state_bytes'])} | {fmt_bytes(p['peak_rss_bytes'])} |")
    L.append("")
    if memory:
        L.append("| model | N | model state / rank | 16 P / N | deviation | gather buffers | "
                 "activations |")
        L.append("|---|---|---|---|---|---|---|")
        for r in memory:
            L.append(f"| {r['model']} | {r['world_size']} | {fmt_bytes(r['model_state_bytes'])}"
                     f" | {fmt_bytes(r['expected_16P_over_N'])} | {100 * r['deviation']:+.2f}% |"
                     f" {fmt_bytes(r['gather_bytes'])} | {fmt_bytes(r['act_bytes'])} |")
        L.append("")
    if peers:
        L.append("| model | peer | ranks | tpmpi tokens/s | peer tokens/s | tpmpi / peer | "
                 "peer MFU | peer runtime |")
        L.append("|---|---|---|---|---|---|---|---|")
        for r in peers:
            ratio = r["ratio_tpmpi_over_peer"]
            pt = r["peer_tokens_per_s"]
            runtime = (f"torch {r['torch']} ({r['peer_blas']}), {r['python']}" if pt else
                       f"failed: {r['error']}")
            mfu = f"{100 * r['peer_mfu']:.1f}%" if r.get("peer_mfu") else "-"
            L.append(f"| {r['model']} | {r['peer']} | {r['world_size']} | "
                     f"{r['tpmpi_tokens_per_s']:.0f} | {f'{pt:.0f}' if pt else '-'} | "
                     f"{f'{ratio:.2f}' if ratio else '-'} | {mfu} | {runtime} |")
        L.append("")
    elif peers_skipped:
        L.append(f"PyTorch peers: skipped ({peers_skipped.get('skipped')}).")
        L.append("")
    for name, st in extras.items():
        d = os.path.join(out, "raw", name)
        L.append(f"**{name}** (`{st.get('script')}`, exit status {st.get('exit_status')}; "
                 f"raw/{name}/: " + (", ".join(list(st["files"]) + st["csv"]) or "log only")
                 + ")")
        L.append("")
        shown = False
        if os.path.exists(os.path.join(d, "summary.md")):
            L.append(open(os.path.join(d, "summary.md")).read().strip())
            shown = True
        else:
            for c in st["csv"]:
                table = csv_table(os.path.join(d, c))
                if table:
                    L.extend(table)
                    shown = True
        if not shown or st.get("exit_status") != 0:
            L.append("```")
            L.extend(st["log_tail"])
            L.append("```")
        L.append("")
    failed = [c["check"] for c in checks if not c["ok"]]
    L.append(f"Checks: {len(checks) - len(failed)} passed, {len(failed)} failed"
             + ("".join(f"\n- FAILED: {c}" for c in failed)))
    if plots:
        L.append("")
        L.append("Plots: " + ", ".join(plots) + ".")
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(L) + "\n")


if __name__ == "__main__":
    sys.exit(main())
