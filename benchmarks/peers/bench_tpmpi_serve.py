#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Prefill and decode tok/s of a running tpmpi server, measured the way
llama-bench measures llama.cpp, for bench_llamacpp.sh --with-tpmpi.

    bench_tpmpi_serve.py --url=URL -p 128 -n 64 -r 5

Each request sends a prompt of P token ids (fixed, spread over the
vocabulary) with max_tokens N+1 at temperature 0, one request at a time, and
reads the server's own timings (docs/SERVING.md): prefill = prompt_n /
prompt_ms (submit to first token: the P-token prefill and the first sample),
decode = predicted_per_second (the N tokens after the first, each one forward
pass at context P+1..P+N). One warm-up request is not counted. Prints one JSON
object: means and standard deviations over the R requests, and the number of
requests that stopped at end-of-text before N+1 tokens (their decode figure
covers fewer tokens).
"""

import argparse
import json
import statistics
import sys
import urllib.request


def post(url, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-r", type=int, default=5)
    ap.add_argument("--vocab", type=int, required=True, help="V: prompt ids are below V-1")
    a = ap.parse_args()
    ids = [(i * 7919 + 13) % (a.vocab - 1) for i in range(a.p)]
    body = {"prompt": ids, "max_tokens": a.n + 1, "temperature": 0}
    post(a.url, "/v1/completions", body)  # warm-up
    pp, tg, short = [], [], 0
    for _ in range(a.r):
        ans = post(a.url, "/v1/completions", body)
        t = ans["timings"]
        pp.append(t["prompt_n"] / (t["prompt_ms"] / 1000.0))
        tg.append(t["predicted_per_second"])
        short += ans["usage"]["completion_tokens"] < a.n + 1
    sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
    print(json.dumps({"prompt_tok_s": statistics.mean(pp), "prompt_sd": sd(pp),
                      "decode_tok_s": statistics.mean(tg), "decode_sd": sd(tg),
                      "requests": a.r, "stopped_early": short}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
