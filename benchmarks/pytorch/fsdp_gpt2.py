#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""fsdp_gpt2.py: PyTorch FSDP peer of tpmpi's ZeRO-3: the same GPT-2 configuration, full
sharding (parameters, gradients and optimizer state), one FSDP unit per transformer block as
tpmpi gathers one block at a time, gloo over loopback, one process per core (pinned), each
with the per-rank batch of the tpmpi run. Timed per step, between barriers (tokens/s over all
processes).

  python fsdp_gpt2.py --config RUN/config.json --vocab-padded 4096 --nprocs 2 --out r.json
"""
import json
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gpt2 import Block, build, parse_args, record, timed_steps


def worker(rank, args, cfg, port, nprocs):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    if hasattr(os, "sched_setaffinity") and nprocs <= os.cpu_count():
        os.sched_setaffinity(0, {rank})  # as mpirun --bind-to core does for tpmpi
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=nprocs)
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    model, opt_kw = build(args, cfg)  # same seed on every rank: the same initial model
    params = sum(p.numel() for p in model.parameters())
    model = FSDP(model, sharding_strategy=ShardingStrategy.FULL_SHARD,
                 auto_wrap_policy=ModuleWrapPolicy({Block}), device_id=torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), **opt_kw)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = model(x, y)
        loss.backward()
        if cfg["grad_clip"] > 0:
            model.clip_grad_norm_(cfg["grad_clip"])
        opt.step()
        lt = loss.detach().clone()
        dist.all_reduce(lt)
        return lt.item() / nprocs

    times = timed_steps(args, cfg, step, args.vocab_padded, rank, dist.barrier)
    if rank == 0:
        record(args, cfg, "pytorch-fsdp", nprocs, params, times,
               {"sharding": "FULL_SHARD", "backend": "gloo", "wrap": "per block"})
    dist.barrier()  # nobody tears gloo down while a peer still uses it
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    args = parse_args(__doc__.splitlines()[0], processes=True)
    cfg = json.load(open(args.config))
    mp.spawn(worker, args=(args, cfg, free_port(), args.nprocs), nprocs=args.nprocs, join=True)


if __name__ == "__main__":
    sys.exit(main())
