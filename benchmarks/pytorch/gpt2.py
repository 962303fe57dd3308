# SPDX-License-Identifier: MIT
"""gpt2.py: the GPT-2 model of docs/MODEL.md in PyTorch, for the benchmark peers.

Same shapes as tpmpi, so the parameter counts match exactly: token table of Vp (vocabulary
padded to 128) rows tied to the output head, n_ctx position rows, pre-LayerNorm blocks
(eps 1e-5) with fused QKV, tanh GELU, biases everywhere. fp32 throughout, as tpmpi on CPU.
Also the helpers both peers share: the command line, the timed step loop, the result record.
"""
import argparse
import json
import math
import os
import platform
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c, nh):
        super().__init__()
        self.nh = nh
        self.ln1 = nn.LayerNorm(c, eps=1e-5)
        self.qkv = nn.Linear(c, 3 * c)
        self.attproj = nn.Linear(c, c)
        self.ln2 = nn.LayerNorm(c, eps=1e-5)
        self.fc = nn.Linear(c, 4 * c)
        self.fcproj = nn.Linear(4 * c, c)

    def attention(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.nh, c // self.nh).transpose(1, 2) for z in (q, k, v))
        if hasattr(F, "scaled_dot_product_attention"):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # torch < 2.0 (Debian's 1.13)
            att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])
            mask = torch.ones(t, t, dtype=torch.bool).tril()
            y = att.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v
        return self.attproj(y.transpose(1, 2).reshape(b, t, c))

    def forward(self, x):
        x = x + self.attention(self.ln1(x))
        return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, vocab_padded, n_ctx):
        super().__init__()
        self.wte = nn.Embedding(vocab_padded, n_embd)
        self.wpe = nn.Embedding(n_ctx, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.lnf = nn.LayerNorm(n_embd, eps=1e-5)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t))
        for block in self.h:
            x = block(x)
        logits = F.linear(self.lnf(x), self.wte.weight)  # tied output head
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def parse_args(description, processes=False):
    ap = argparse.ArgumentParser(description=description)
    if processes:
        ap.add_argument("--nprocs", type=int, default=2, help="processes (ranks)")
    ap.add_argument("--config", required=True,
                    help="tpmpi's resolved config.json of the same benchmark point")
    ap.add_argument("--vocab-padded", type=int, required=True, help="Vp, from tpmpi's log")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup-steps", type=int, default=3, help="steps left out of the timing")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    ap.add_argument("--out", required=True, help="result JSON file")
    return ap.parse_args()


def build(args, cfg, seed=1337):
    torch.manual_seed(seed)
    model = GPT(cfg["n_layer"], cfg["n_head"], cfg["n_embd"], args.vocab_padded, cfg["n_ctx"])
    opt_kw = dict(lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"],
                  weight_decay=cfg["weight_decay"])
    return model, opt_kw


def timed_steps(args, cfg, step_fn, vocab, rank=0, barrier=None):
    """Run args.steps steps of random tokens; return the per-step seconds after warm-up."""
    g = torch.Generator().manual_seed(1000 + rank)
    b, t = cfg["batch"], cfg["seq_len"]
    times = []
    for s in range(args.steps):
        tok = torch.randint(0, vocab, (b, t + 1), generator=g)
        if barrier is not None:
            barrier()
        t0 = time.perf_counter()
        loss = step_fn(tok[:, :-1].contiguous(), tok[:, 1:].contiguous())
        if barrier is not None:
            barrier()
        dt = time.perf_counter() - t0
        if s >= args.warmup_steps:
            times.append(dt)
        if rank == 0 and (s == 0 or s == args.steps - 1):
            print(f"step {s + 1}/{args.steps} loss {loss:.4f} {dt * 1e3:.1f} ms", flush=True)
    return times


def blas_info():
    for item in torch.__config__.show().replace(",", " ").split():
        if item.startswith("BLAS_INFO="):
            return item.split("=", 1)[1]
    return "unknown"


def record(args, cfg, impl, world, params, times, extra=None):
    tokens_per_step = world * cfg["batch"] * cfg["seq_len"]
    times_sorted = sorted(times)
    rec = {
        "impl": impl,
        "model": cfg["model"],
        "world_size": world,
        "threads": args.threads,
        "batch": cfg["batch"],
        "seq_len": cfg["seq_len"],
        "params": params,
        "steps_timed": len(times),
        # the median step resists other work on a shared machine better than the mean
        "tokens_per_s": tokens_per_step / times_sorted[len(times) // 2],
        "tokens_per_s_mean": tokens_per_step * len(times) / sum(times),
        "step_ms_median": times_sorted[len(times) // 2] * 1e3,
        "torch": torch.__version__,
        "python": sys.executable + " " + platform.python_version(),
        "blas": blas_info(),
        "omp_threads_env": os.environ.get("OMP_NUM_THREADS"),
    }
    rec.update(extra or {})
    with open(args.out, "w") as f:
        json.dump(rec, f, indent=1)
    print(json.dumps(rec))
    return rec
