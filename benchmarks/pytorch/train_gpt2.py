#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""train_gpt2.py: PyTorch peer of one tpmpi rank: the same GPT-2 configuration and batch,
trained with AdamW in one process on the same cores, timed per step (tokens/s).

  python train_gpt2.py --config RUN/config.json --vocab-padded 4096 --threads 2 --out r.json

The configuration (layers, heads, width, n_ctx, batch, sequence length, AdamW settings) comes
from the config.json tpmpi wrote for the benchmark point it is compared with. Tokens are
random: speed does not depend on them.
"""
import json

import torch

from gpt2 import build, parse_args, record, timed_steps


def main():
    args = parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(args.threads)
    cfg = json.load(open(args.config))
    model, opt_kw = build(args, cfg)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), **opt_kw)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = model(x, y)
        loss.backward()
        if cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        return loss.item()

    times = timed_steps(args, cfg, step, args.vocab_padded)
    record(args, cfg, "pytorch", 1, params, times,
           {"intra_op_threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
