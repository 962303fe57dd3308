#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""model.py: the scaling model of tpmpi's ZeRO-3 training (docs/SCALING.md).

Step time of one rank = compute (from measured per-op times, TPMPI_PROFILE=1) + the part of
the communication the engine cannot hide, with an alpha-beta cost for every collective
tpmpi issues (src/zero3/zero3.c):

  per micro-batch, N > 1:
    forward   all-gather of the embedding group (blocking, exposed), then one all-gather per
              block, block l+1 prefetched while block l computes
    backward  all-gather of blocks L-2..0 (prefetched, block L-1 is still held) and the
              reduce-scatter of each block's gradients, started when its backward ends and
              finished during the next block's backward: both share the link with that
              backward's compute
              then the embedding gradients' reduce-scatter (blocking, exposed)
  per step:   three scalar all-reduces (loss, gradient norm, stop flag)

  t_coll(S) = (N-1) alpha + (N-1)/N S / beta       ring all-gather / reduce-scatter and
                                                    pairwise all-to-all over S full bytes
  exposed(block) = max(0, t_comm(block) - t_compute(block))

With 2-bit compression the reduce-scatters become one all-to-all of the 2-bit payload (16x
fewer bytes, plus one bf16 scale per 256 values) plus the codec's time (encode on the
sender, decode + sum on the owner), which is not hidden.

Usage:
  model.py calibrate DIR     prediction vs measurement of the runs in DIR (calibrate.sh)
  model.py project [DIR]     projection to 32..1024 ranks (uses DIR's fits when given)
"""
import glob
import json
import math
import os
import re
import statistics
import sys

# ---- model shapes (parameters counted as tpmpi lays them out) ------------------------------


def shape(name):
    if name == "gpt2-124m":
        return dict(name=name, kind="gpt2", L=12, C=768, NH=12, NKV=12, V=50257, H=3072, maxT=1024)
    if name == "small":
        return dict(name=name, kind="gpt2", L=4, C=256, NH=4, NKV=4, V=8192, H=1024, maxT=1024)
    if name == "llama-1b":
        # Llama 3.2 1B shape: tied embedding, SwiGLU hidden 8192, RMSNorm, RoPE (no wpe)
        return dict(name=name, kind="llama", L=16, C=2048, NH=32, NKV=8, V=128256, H=8192,
                    maxT=0)
    if name == "llama-8b":
        # Llama 3.1 8B, for the comparison with torchtitan's published FSDP figures
        return dict(name=name, kind="llama", L=32, C=4096, NH=32, NKV=8, V=128256, H=14336,
                    maxT=0)
    raise SystemExit(f"model.py: unknown model {name}")


def counts(s):
    """(params per block, params of the embedding group, total, matmul params per block)"""
    C, H, L = s["C"], s["H"], s["L"]
    Vp = (s["V"] + 127) // 128 * 128
    if s["kind"] == "gpt2":
        mm = 3 * C * C + C * C + 2 * C * H
        blk = mm + 3 * C + C + H + C + 4 * C  # biases and two layernorms
        emb = Vp * C + s["maxT"] * C + 2 * C
    else:
        kv = C * s["NKV"] // s["NH"]
        mm = C * C + 2 * C * kv + C * C + 3 * C * H
        blk = mm + 2 * C  # two RMSNorm weights
        emb = Vp * C + C
    return blk, emb, L * blk + emb, mm


def flops_per_token(s, T):
    """llm.c's count, as bench_speed.sh: 6 N + 6 L C T"""
    return 6 * counts(s)[2] + 6 * s["L"] * s["C"] * T


def activation_bytes(s, B, T):
    """what tpmpi keeps for the backward pass (benchmarks/RESULTS.md, issue 9: 15 C floats per
    token and layer, residual stream, logits); for LLaMA the SwiGLU block's equivalent"""
    C, H, L = s["C"], s["H"], s["L"]
    Vp = (s["V"] + 127) // 128 * 128
    if s["kind"] == "gpt2":
        per_layer = 15 * C
    else:
        kv = C * s["NKV"] // s["NH"]
        per_layer = 5 * C + 2 * kv + 3 * H
    return 4 * B * T * (L * (per_layer + 2 * C) + Vp)


# ---- interconnects ---------------------------------------------------------------------------

# name: (alpha seconds, beta bytes/s per rank and direction, note)
NETS = {
    "100 GbE": (10e-6, 0.8 * 100e9 / 8, "RoCE or TCP, 80% of line rate"),
    "200 Gb/s IB": (3e-6, 0.9 * 200e9 / 8, "HDR, one port per rank, 90% of line rate"),
    "NVLink": (5e-6, 0.8 * 450e9, "H100 NVLink 4 (450 GB/s per direction), as if every rank "
               "were in one NVLink domain: an upper bound beyond 8 (or 72 on NVL72)"),
}


def t_coll(n, nbytes, alpha, beta):
    if n <= 1:
        return 0.0
    return (n - 1) * alpha + (n - 1) / n * nbytes / beta


# ---- the per-step cost ---------------------------------------------------------------------


def step_time(s, n, comp, net, A=1, pbytes=4, twobit=False, codec_rate=None):
    """comp: dict with per micro-batch 'fwd_block', 'bwd_block', 'fwd_other', 'bwd_other' and
    per step 'opt' (seconds, one rank); net: (alpha, beta). Returns (step, exposed comm)."""
    # one (alpha, beta) for every collective, or per kind: {"ag": .., "rs": .., "a2a": ..}
    ag, rs, a2a = (net["ag"], net["rs"], net["a2a"]) if isinstance(net, dict) else (net,) * 3
    alpha = ag[0]
    L = s["L"]
    blk, emb, total, _ = counts(s)
    if n <= 1:
        c = A * (L * (comp["fwd_block"] + comp["bwd_block"]) + comp["fwd_other"] +
                 comp["bwd_other"]) + comp["opt"]
        return c, 0.0
    g_blk = t_coll(n, blk * pbytes, *ag)
    g_emb = t_coll(n, emb * pbytes, *ag)
    if twobit:
        payload = lambda p: p / 4 + 2 * math.ceil(p / 256)  # 2 bits a value + bf16 scales
        rs_blk = t_coll(n, payload(blk), *a2a)
        rs_emb = t_coll(n, payload(emb), *a2a)
        codec = (blk * L + emb) / codec_rate  # encode + decode of one rank's full gradient
    else:
        rs_blk = t_coll(n, blk * 4, *rs)
        rs_emb = t_coll(n, emb * 4, *rs)
        codec = 0.0
    exp = g_emb + g_blk  # embedding gather, first block's gather (nothing to hide behind)
    exp += (L - 1) * max(0.0, g_blk - comp["fwd_block"])
    # backward: block l computes while block l-1 is gathered and block l+1's gradients move
    exp += (L - 1) * max(0.0, g_blk + rs_blk - comp["bwd_block"])
    exp += max(0.0, rs_blk - comp["bwd_block"])  # the last block's reduce-scatter
    exp += rs_emb
    per_micro = (L * (comp["fwd_block"] + comp["bwd_block"]) + comp["fwd_other"] +
                 comp["bwd_other"] + exp + codec)
    scalars = 3 * 2 * math.ceil(math.log2(n)) * alpha
    return A * per_micro + comp["opt"] / n * 1.0 + scalars, A * exp


# ---- measured compute --------------------------------------------------------------------

BLOCK_OPS = {"layernorm", "qkv matmul", "attention", "attproj matmul", "residual add",
             "fc matmul", "gelu", "fcproj matmul", "memzero"}


def parse_profile(path, L):
    """the TPMPI_PROFILE table of a tpmpi log -> per micro-batch block/other seconds, opt"""
    rows = []
    for line in open(path):
        m = re.match(r".*\]\s+(forward|backward|optimizer)\s+(.+?)\s+(\d+)\s+([\d.]+)\s+[\d.]+%",
                     line)
        if m:
            rows.append((m.group(1), m.group(2).strip(), int(m.group(3)), float(m.group(4))))
    if not rows:
        raise SystemExit(f"model.py: no TPMPI_PROFILE table in {path}")
    comp = dict(fwd_block=0.0, bwd_block=0.0, fwd_other=0.0, bwd_other=0.0, opt=0.0)
    for ph, op, calls, ms in rows:
        sec = ms / 1e3
        if op.startswith("zero3"):
            continue  # communication: the model's part
        if ph == "optimizer":
            comp["opt"] += sec
            continue
        key = "fwd" if ph == "forward" else "bwd"
        if op in BLOCK_OPS:
            share = 2 * L / (2 * L + 1) if op == "layernorm" else 1.0  # ln_f is not a block's
            comp[key + "_block"] += sec * share / L
            comp[key + "_other"] += sec * (1 - share)
        else:
            comp[key + "_other"] += sec
    return comp


def scale_compute(comp, s_from, T_from, B_from, s_to, T_to, B_to, rate=1.0, opt_bw=None):
    """per-op times of one shape -> another at the same achieved FLOP/s (divided by rate):
    a block by its matmul and attention FLOPs, the rest (embedding, head, cross-entropy) by
    Vp C, both times the tokens; the optimizer by P, or, with opt_bw (bytes/s), as a
    memory-bound pass over 28 bytes per parameter (fp32 weight, gradient, m, v)"""
    tok = (B_to * T_to) / (B_from * T_from)

    def blk_flops(s, T):
        return 6 * counts(s)[3] + 6 * s["C"] * T

    def head(s):
        return (s["V"] + 127) // 128 * 128 * s["C"]

    bf = blk_flops(s_to, T_to) / blk_flops(s_from, T_from) * tok / rate
    hf = head(s_to) / head(s_from) * tok / rate
    out = dict(fwd_block=comp["fwd_block"] * bf, bwd_block=comp["bwd_block"] * bf,
               fwd_other=comp["fwd_other"] * hf, bwd_other=comp["bwd_other"] * hf)
    if opt_bw:
        out["opt"] = 28 * counts(s_to)[2] / opt_bw
    else:
        out["opt"] = comp["opt"] * counts(s_to)[2] / counts(s_from)[2]
    return out


# ---- calibration --------------------------------------------------------------------------


def fit_alpha_beta(path, kind):
    """least squares t = (N-1) a + (N-1)/N S / b over the bench_comm lines of one kind"""
    xs, ys = [], []
    for line in open(path):
        p = line.split()
        if len(p) >= 5 and p[0] == kind:
            n, S, t = int(p[1]), float(p[2]), float(p[3]) * 1e-6
            xs.append(((n - 1), (n - 1) / n * S))
            ys.append(t)
    if len(xs) < 2:
        return None
    # normal equations for two unknowns (a, 1/b), both constrained >= 0
    s11 = sum(x[0] * x[0] for x in xs)
    s12 = sum(x[0] * x[1] for x in xs)
    s22 = sum(x[1] * x[1] for x in xs)
    r1 = sum(x[0] * y for x, y in zip(xs, ys))
    r2 = sum(x[1] * y for x, y in zip(xs, ys))
    det = s11 * s22 - s12 * s12
    a = (r1 * s22 - r2 * s12) / det
    ib = (s11 * r2 - s12 * r1) / det
    if a < 0:
        a, ib = 0.0, r2 / s22
    return a, 1.0 / ib


def metrics(path):
    steps, summ = [], None
    for line in open(path):
        r = json.loads(line)
        if r["type"] == "step":
            steps.append(r)
        elif r["type"] == "summary":
            summ = r
    return steps, summ


def zero3_ms(path):
    """the profile's own zero3 rows (gathers, reduce-scatters: wait + pack/unpack), ms per
    micro-batch"""
    tot = 0.0
    for line in open(path):
        m = re.match(r".*\]\s+(forward|backward)\s+(zero3 .+?)\s+(\d+)\s+([\d.]+)\s+", line)
        if m:
            tot += float(m.group(4))
    return tot


def calibrate(d):
    """per N: compute = the profiled run's own per-op times (which carry this machine's
    sharing of its cores), communication = the alpha-beta model; against the run's step"""
    info = json.load(open(os.path.join(d, "calib.json")))
    s = shape(info["model"])
    B, T, cores = info["batch"], info["seq_len"], info["cores"]
    fits = {}
    for kind in ("allgather_fp32", "reduce_scatter_fp32", "alltoall"):
        f = fit_alpha_beta(os.path.join(d, "comm.txt"), kind)
        if f:
            fits[kind] = f
    print(f"Calibration: model {s['name']}, B={B} T={T}, 1 thread per rank, {cores} cores.\n")
    print("| collective (shared memory here) | alpha (us) | beta (GB/s) |")
    print("|---|---|---|")
    for k, (a, b) in fits.items():
        print(f"| {k} | {a * 1e6:.1f} | {b / 1e9:.2f} |")
    print()
    net = {"ag": fits["allgather_fp32"], "rs": fits["reduce_scatter_fp32"],
           "a2a": fits["alltoall"]}
    print("Each collective is costed with its own fit.\n")
    print("| N | compute ms (profile) | zero3 comm ms (profile) | predicted exposed comm ms | "
          "predicted step ms | measured step ms (median) | measured comm wait ms | error |")
    print("|---|---|---|---|---|---|---|---|")
    runs = [(n, "", False) for n in info["ranks"]]
    runs += [(n, "-2bit", True) for n in info["ranks"] if n > 1 and
             os.path.exists(os.path.join(d, f"n{n}-2bit.jsonl"))]
    for n, suffix, twobit in runs:
        steps, summ = metrics(os.path.join(d, f"n{n}{suffix}.jsonl"))
        st = steps[2:]
        meas = statistics.median(x["step_ms"] for x in st)
        wait = statistics.median(x["comm_wait_ms"] for x in st)
        log = os.path.join(d, f"n{n}{suffix}.log")
        comp = parse_profile(log, s["L"])
        comp["opt"] *= n  # the profile's optimizer ran on 1/N of the state; step_time divides
        c, _ = step_time(s, 1, comp, (0, 1))
        c -= comp["opt"] - comp["opt"] / n
        rate = None
        if twobit:
            # the codec as measured by the run (summary codec_s over its steps)
            rate = counts(s)[2] / (summ["codec_s"] / summ["steps"])
        pred, exp = step_time(s, n, comp, net, twobit=twobit, codec_rate=rate)
        lab = f"{n}" + (f" 2-bit (codec {rate / 1e9:.2f} G values/s)" if twobit else "")
        print(f"| {lab} | {c * 1e3:.1f} | {zero3_ms(log):.1f} | "
              f"{exp * 1e3:.1f} | {pred * 1e3:.1f} | {meas:.1f} | {wait:.1f} | "
              f"{100 * (pred * 1e3 - meas) / meas:+.0f}% |")
    return fits


# ---- projection ---------------------------------------------------------------------------


def breakeven(s, n, comp, pb, codec_rate, alpha=3e-6):
    """the per-rank bandwidth (bytes/s) below which 2-bit gives the shorter step"""
    lo, hi = 1e6, 1e13
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        t0 = step_time(s, n, comp, (alpha, mid), pbytes=pb)[0]
        t2 = step_time(s, n, comp, (alpha, mid), pbytes=pb, twobit=True, codec_rate=codec_rate)[0]
        if t2 < t0:
            lo = mid
        else:
            hi = mid
    return lo


def project(cpu_profile=None, codec_cpu=None):
    ranks = [1, 32, 64, 128, 256, 512, 1024]
    print("Projection: weak scaling (the per-rank micro-batch is fixed), one micro-batch per "
          "step (A=1). Efficiency = the step on an infinitely fast network (same N) / the "
          "predicted step; cells: fp32 reduce-scatter / 2-bit all-to-all.\n")
    scen = []
    if cpu_profile:
        s124 = shape("gpt2-124m")
        comp = parse_profile(cpu_profile, s124["L"])
        scen.append(("CPU rank (this VM's 2 cores, measured per-op times)", "gpt2-124m", 4, 64,
                     comp, s124, 4, 64, 1.0, codec_cpu or 0.6e9, 4))
        scen.append(("CPU rank (this VM's 2 cores, scaled by FLOPs)", "llama-1b", 1, 256,
                     comp, s124, 4, 64, 1.0, codec_cpu or 0.6e9, 4))
    # a GPU rank: compute scaled from the CPU profile to an assumed achieved throughput
    gpu_rate = 400e12
    if cpu_profile:
        cpu_gflops = flops_per_token(s124, 64) * 256 / sum(
            [s124["L"] * (comp["fwd_block"] + comp["bwd_block"]), comp["fwd_other"],
             comp["bwd_other"]])
        rate = gpu_rate / cpu_gflops
        for m in ("gpt2-124m", "llama-1b"):
            scen.append((f"GPU rank (assumed {gpu_rate / 1e12:.0f} TFLOP/s achieved, bf16 "
                         "all-gathers)", m, 8, 1024, comp, s124, 4, 64, rate, 300e9, 2))
    for title, mname, B, T, comp_src, s_src, B_src, T_src, rate, codec_rate, pb in scen:
        s = shape(mname)
        comp = scale_compute(comp_src, s_src, T_src, B_src, s, T, B, rate,
                             opt_bw=2.4e12 if rate > 1 else None)
        c1, _ = step_time(s, 1, comp, (0, 1))

        def ideal(n):  # the same step on an infinitely fast network, no codec
            return step_time(s, n, comp, (0.0, 1e30))[0]

        print(f"### {mname}, {title}, B={B} T={T} per rank\n")
        print(f"Compute-only step: {c1 * 1e3:.1f} ms at N=1 ({ideal(1024) * 1e3:.1f} ms at "
              f"N=1024, the optimizer on 1/N of the state); gradients "
              f"{4 * counts(s)[2] / 1e6:.0f} MB fp32; parameter all-gathers in {pb}-byte words; "
              f"codec {codec_rate / 1e9:.1f} G values/s. 2-bit pays at N=256 below "
              f"{breakeven(s, 256, comp, pb, codec_rate) * 8 / 1e9:.1f} Gb/s per rank "
              f"(alpha 3 us).\n")
        hdr = "| N | " + " | ".join(f"{k} fp32 / 2-bit" for k in NETS) + " |"
        print(hdr)
        print("|---|" + "---|" * len(NETS))
        for n in ranks[1:]:
            cells = []
            for k, (a, b, _) in NETS.items():
                t0, _ = step_time(s, n, comp, (a, b), pbytes=pb)
                t2, _ = step_time(s, n, comp, (a, b), pbytes=pb, twobit=True,
                                  codec_rate=codec_rate)
                cells.append(f"{100 * ideal(n) / t0:.0f}% / {100 * ideal(n) / t2:.0f}%")
            print(f"| {n} | " + " | ".join(cells) + " |")
        print()
    if cpu_profile:
        # torchtitan (docs/performance.md): Llama 3.1 8B, FSDP, local batch 2 x 8192 tokens,
        # 8 H100 (one NVLink node) 5,762 TPS/GPU, 128 H100 (400 Gb/s RDMA per GPU) 5,605
        s8 = shape("llama-8b")
        comp = scale_compute(parse_profile(cpu_profile, 12), shape("gpt2-124m"), 64, 4, s8,
                             8192, 2, rate, opt_bw=2.4e12)
        nv = NETS["NVLink"][:2]
        rdma = (3e-6, 0.9 * 400e9 / 8)
        t8 = step_time(s8, 8, comp, nv, pbytes=2)[0]
        t128 = step_time(s8, 128, comp, rdma, pbytes=2)[0]
        print("### The torchtitan comparison: Llama 3.1 8B, B=2 T=8192 per rank\n")
        print("| N | network | this model: step s (efficiency vs infinite network) | "
              "torchtitan FSDP measured TPS/GPU |")
        print("|---|---|---|---|")
        for n, lab, t, tt in ((8, "NVLink (one node)", t8, "5,762"),
                              (128, "400 Gb/s RDMA per GPU", t128, "5,605 (97.3% of N=8)")):
            idl = step_time(s8, n, comp, (0.0, 1e30))[0]
            print(f"| {n} | {lab} | {t:.2f} ({100 * idl / t:.0f}%) | {tt} |")
        print(f"\nModel: N=128 / N=8 step time ratio {t8 / t128:.3f}; torchtitan "
              f"{5605 / 5762:.3f}.\n")
    print("### Memory per rank (bytes, fp32 master weights, gradients and AdamW moments)\n")
    print("| model | P | N=32 | N=256 | N=1024 | + gather buffers | + 2-bit residual (fp32) | "
          "activations (B, T) |")
    print("|---|---|---|---|---|---|---|---|")
    for mname, B, T in (("gpt2-124m", 4, 64), ("gpt2-124m", 8, 1024), ("llama-1b", 8, 1024)):
        s = shape(mname)
        blk, emb, P, _ = counts(s)
        gb = 4 * (3 * emb + 4 * blk)
        row = [f"{16 * P / n / 2**20:.0f} MiB" for n in (32, 256, 1024)]
        print(f"| {mname} | {P / 1e6:.1f} M | " + " | ".join(row) +
              f" | {gb / 2**20:.0f} MiB | {4 * P / 2**20:.0f} MiB | "
              f"{activation_bytes(s, B, T) / 2**30:.2f} GiB ({B}, {T}) |")


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "calibrate":
        calibrate(sys.argv[2])
    elif len(sys.argv) >= 2 and sys.argv[1] == "project":
        prof = sys.argv[2] if len(sys.argv) > 2 else None
        codec = float(sys.argv[3]) if len(sys.argv) > 3 else None
        project(prof, codec)
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
