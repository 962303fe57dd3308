#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""loadgen.py: load generator for an OpenAI-compatible /v1/completions server (tpmpi serve).

Python standard library only. Requests arrive as a Poisson process (--request-rate, or a
gamma process with --burstiness != 1, as in vLLM's benchmark_serving), at most
--max-concurrency are in flight, and each response is streamed (server-sent events) so
that every chunk is timed on arrival. Metrics follow vLLM's definitions:

  TTFT  time from sending the request to the first chunk that carries text
  ITL   every gap between two consecutive text chunks, pooled over all requests
  TPOT  per request (E2EL - TTFT) / (output_tokens - 1), for output_tokens > 1
  E2EL  time from sending the request to the last byte of the answer
  throughput: completed requests / duration, output tokens / duration and
              (input + output) tokens / duration, duration = first send to last answer
  goodput: requests / duration that met every --goodput SLO (ttft:MS tpot:MS e2el:MS)

Token counts come from the server's usage (stream_options.include_usage); without it the
text chunks are counted. With --check-metrics the server's /metrics generation counter is
read before and after the run and compared with the tokens counted here.

Example:
  benchmarks/loadgen.py --url http://127.0.0.1:8080 --num-prompts 64 --max-concurrency 8 \\
      --input-len 32 --output-len 64 --json result.json
"""
import argparse
import datetime
import http.client
import json
import math
import random
import sys
import threading
import time
import urllib.parse


def percentile(xs, p):
    """Linear interpolation between closest ranks (numpy's default)."""
    if not xs:
        return 0.0
    s = sorted(xs)
    k = (len(s) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(xs, pcts):
    """mean/median/std/percentiles of a list of seconds, reported in ms."""
    if not xs:
        out = {"mean_ms": 0.0, "median_ms": 0.0, "std_ms": 0.0}
        out.update({"p%g_ms" % p: 0.0 for p in pcts})
        return out
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
    out = {"mean_ms": mean * 1e3, "median_ms": percentile(xs, 50) * 1e3, "std_ms": std * 1e3}
    out.update({"p%g_ms" % p: percentile(xs, p) * 1e3 for p in pcts})
    return out


class Target:
    def __init__(self, url, api_key, timeout):
        u = urllib.parse.urlparse(url)
        if u.scheme != "http" or not u.hostname:
            raise SystemExit("loadgen: --url must be http://HOST:PORT (got %r)" % url)
        self.host, self.port = u.hostname, u.port or 80
        self.base = u.path.rstrip("/")
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = "Bearer " + api_key

    def conn(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def get(self, path):
        c = self.conn()
        try:
            c.request("GET", self.base + path, headers=self.headers)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()


def run_one(target, body, stream, out):
    """Send one completion; fill out with timings (seconds, perf_counter) and counts."""
    c = target.conn()
    out.update(ok=False, ttft=None, itl=[], e2el=None, output_tokens=0, prompt_tokens=0,
               chunks=0, error=None)
    t0 = time.perf_counter()
    out["t_send"] = t0
    try:
        c.request("POST", target.base + "/v1/completions", body=body, headers=target.headers)
        r = c.getresponse()
        if r.status != 200:
            out["error"] = "HTTP %d: %s" % (r.status, r.read()[:200].decode("utf-8", "replace"))
            return
        if not stream:
            j = json.loads(r.read())
            t = time.perf_counter()
            out.update(ttft=t - t0, e2el=t - t0, ok=True)
            out["output_tokens"] = j["usage"]["completion_tokens"]
            out["prompt_tokens"] = j["usage"]["prompt_tokens"]
            return
        last = None
        usage = None
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators and ": keep-alive" comments
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            j = json.loads(payload)
            if "error" in j:
                out["error"] = "stream error: %s" % j["error"].get("message")
                return
            now = time.perf_counter()
            text = "".join(ch.get("text") or "" for ch in j.get("choices") or [])
            if text:
                out["chunks"] += 1
                if last is None:
                    out["ttft"] = now - t0
                else:
                    out["itl"].append(now - last)
                last = now
            if j.get("usage"):
                usage = j["usage"]
        t = time.perf_counter()
        out["e2el"] = t - t0
        if usage:
            out["output_tokens"] = usage["completion_tokens"]
            out["prompt_tokens"] = usage["prompt_tokens"]
        else:
            out["output_tokens"] = out["chunks"]
        if out["ttft"] is None:
            out["ttft"] = out["e2el"]
        out["ok"] = True
    except Exception as e:  # a benchmark reports failures instead of stopping
        out["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        out["t_end"] = time.perf_counter()
        c.close()


def scrape_generated(target):
    try:
        status, text = target.get("/metrics")
        if status != 200:
            return None
        for line in text.decode().splitlines():
            if line.startswith("tpmpi:generation_tokens_total "):
                return int(float(line.split()[1]))
    except OSError:
        return None
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True, help="server base URL, http://HOST:PORT")
    ap.add_argument("--api-key", default="", help="Bearer key")
    ap.add_argument("--model", default="", help="model id (default: the first of /v1/models)")
    ap.add_argument("--num-prompts", type=int, default=100)
    ap.add_argument("--request-rate", type=float, default=float("inf"),
                    help="requests/s of the arrival process (inf: all at once)")
    ap.add_argument("--burstiness", type=float, default=1.0,
                    help="gamma shape of the gaps: 1 = Poisson, < 1 burstier")
    ap.add_argument("--max-concurrency", type=int, default=0, help="0 = unlimited")
    ap.add_argument("--input-len", type=int, default=32,
                    help="prompt length in tokens (random byte-token ids)")
    ap.add_argument("--output-len", type=int, default=64, help="max_tokens of every request")
    ap.add_argument("--prompt", default=None, help="a fixed text prompt instead of random ids")
    ap.add_argument("--vocab", type=int, default=256,
                    help="random prompt ids are drawn from [0, VOCAB) (256: byte tokens)")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--no-stream", action="store_true", help="non-streaming requests")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    ap.add_argument("--percentiles", default="50,90,99")
    ap.add_argument("--goodput", nargs="*", default=[],
                    help="SLOs as ttft:MS tpot:MS e2el:MS")
    ap.add_argument("--check-metrics", action="store_true",
                    help="compare /metrics generation tokens with the tokens counted here")
    ap.add_argument("--json", default="", help="write the report here")
    ap.add_argument("--label", default="", help="free text stored in the report")
    args = ap.parse_args()

    pcts = [float(p) for p in args.percentiles.split(",") if p]
    slos = {}
    for g in args.goodput:
        k, _, v = g.partition(":")
        if k not in ("ttft", "tpot", "e2el") or not v:
            raise SystemExit("loadgen: --goodput takes ttft:MS tpot:MS e2el:MS")
        slos[k] = float(v) / 1e3
    target = Target(args.url, args.api_key, args.timeout)
    rng = random.Random(args.seed)

    model = args.model
    if not model:
        status, text = target.get("/v1/models")
        if status != 200:
            raise SystemExit("loadgen: GET /v1/models answered %d: %s" % (status, text[:200]))
        model = json.loads(text)["data"][0]["id"]

    bodies = []
    for _ in range(args.num_prompts):
        prompt = args.prompt if args.prompt is not None else \
            [rng.randrange(args.vocab) for _ in range(args.input_len)]
        req = {"model": model, "prompt": prompt, "max_tokens": args.output_len,
               "temperature": args.temperature, "seed": rng.randrange(1 << 31)}
        if not args.no_stream:
            req["stream"] = True
            req["stream_options"] = {"include_usage": True}
        bodies.append(json.dumps(req))
    # arrival times: gamma gaps with mean 1/rate (shape 1 = exponential = Poisson)
    arrivals, t = [], 0.0
    for _ in range(args.num_prompts):
        arrivals.append(t)
        if math.isfinite(args.request_rate) and args.request_rate > 0:
            t += rng.gammavariate(args.burstiness, 1.0 / (args.request_rate * args.burstiness))

    gen_before = scrape_generated(target) if args.check_metrics else None
    results = [dict() for _ in bodies]
    sem = threading.Semaphore(args.max_concurrency) if args.max_concurrency > 0 else None
    in_flight = [0, 0]  # current, peak
    lock = threading.Lock()

    def worker(i):
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        try:
            run_one(target, bodies[i], not args.no_stream, results[i])
        finally:
            with lock:
                in_flight[0] -= 1
            if sem:
                sem.release()

    threads = []
    start = time.perf_counter()
    for i, at in enumerate(arrivals):
        delay = start + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if sem:
            sem.acquire()
        th = threading.Thread(target=worker, args=(i,), daemon=True)
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    end = max((r.get("t_end", start) for r in results), default=start)
    duration = max(end - start, 1e-9)
    gen_after = scrape_generated(target) if args.check_metrics else None

    ok = [r for r in results if r.get("ok")]
    failed = [r for r in results if not r.get("ok")]
    n_in = sum(r["prompt_tokens"] for r in ok)
    n_out = sum(r["output_tokens"] for r in ok)
    ttfts = [r["ttft"] for r in ok]
    e2els = [r["e2el"] for r in ok]
    itls = [x for r in ok for x in r["itl"]]
    tpots = [(r["e2el"] - r["ttft"]) / (r["output_tokens"] - 1) for r in ok
             if r["output_tokens"] > 1]
    good = 0
    for r in ok:
        tpot = (r["e2el"] - r["ttft"]) / (r["output_tokens"] - 1) if r["output_tokens"] > 1 else 0
        if all((k != "ttft" or r["ttft"] <= v) and (k != "tpot" or tpot <= v) and
               (k != "e2el" or r["e2el"] <= v) for k, v in slos.items()):
            good += 1

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "label": args.label,
        "url": args.url,
        "model": model,
        "config": {k: (v if not (isinstance(v, float) and math.isinf(v)) else "inf")
                   for k, v in vars(args).items() if k not in ("api_key", "json")},
        "completed": len(ok),
        "failed": len(failed),
        "errors": sorted({r["error"] for r in failed if r.get("error")})[:10],
        "duration_s": duration,
        "peak_concurrency": in_flight[1],
        "total_input_tokens": n_in,
        "total_output_tokens": n_out,
        "request_throughput": len(ok) / duration,
        "output_throughput": n_out / duration,
        "total_token_throughput": (n_in + n_out) / duration,
        "ttft": summary(ttfts, pcts),
        "tpot": summary(tpots, pcts),
        "itl": summary(itls, pcts),
        "e2el": summary(e2els, pcts),
    }
    if slos:
        report["goodput"] = {"slo_ms": {k: v * 1e3 for k, v in slos.items()},
                             "good_requests": good, "request_goodput": good / duration}
    if args.check_metrics:
        delta = None if gen_before is None or gen_after is None else gen_after - gen_before
        report["server_generation_tokens_delta"] = delta
        report["server_count_matches"] = delta == n_out

    w = sys.stdout.write
    w("============ Serving Benchmark Result ============\n")
    w("%-40s %10d\n" % ("Successful requests:", len(ok)))
    w("%-40s %10d\n" % ("Failed requests:", len(failed)))
    w("%-40s %10s\n" % ("Max concurrency (peak):", "%s (%d)" % (
        args.max_concurrency or "inf", in_flight[1])))
    w("%-40s %10.2f\n" % ("Benchmark duration (s):", duration))
    w("%-40s %10d\n" % ("Total input tokens:", n_in))
    w("%-40s %10d\n" % ("Total generated tokens:", n_out))
    w("%-40s %10.2f\n" % ("Request throughput (req/s):", report["request_throughput"]))
    w("%-40s %10.2f\n" % ("Output token throughput (tok/s):", report["output_throughput"]))
    w("%-40s %10.2f\n" % ("Total token throughput (tok/s):", report["total_token_throughput"]))
    if slos:
        w("%-40s %10.2f\n" % ("Request goodput (req/s):", report["goodput"]["request_goodput"]))
    for name, key in (("Time to First Token", "ttft"), ("Time per Output Token", "tpot"),
                      ("Inter-token Latency", "itl"), ("End-to-end Latency", "e2el")):
        s = report[key]
        w("%s\n" % ("-" * 14 + name + "-" * max(0, 36 - len(name))))
        w("%-40s %10.2f\n" % ("Mean %s (ms):" % key.upper(), s["mean_ms"]))
        w("%-40s %10.2f\n" % ("Median %s (ms):" % key.upper(), s["median_ms"]))
        for p in pcts:
            w("%-40s %10.2f\n" % ("P%g %s (ms):" % (p, key.upper()), s["p%g_ms" % p]))
    if args.check_metrics:
        w("%-40s %10s\n" % ("Server generation tokens (delta):",
                           report["server_generation_tokens_delta"]))
    if failed:
        w("errors: %s\n" % "; ".join(report["errors"]))
    w("==================================================\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
