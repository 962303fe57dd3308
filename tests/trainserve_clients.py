#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Streaming clients against a --mode=trainserve server while it receives pushes.

    trainserve_clients.py URL CLIENTS FINAL_STEP TIMEOUT_S

CLIENTS threads each send streaming completions one after the other until the server's
weights_step (GET /v1/models) reaches FINAL_STEP, or TIMEOUT_S pass. For every request: HTTP
200, a data: [DONE] end, a finish_reason, and a system_fingerprint "tpmpi-step-N" on every
chunk; the steps a client sees, in order over all its requests and chunks, must never go
down. Prints one line per client and a JSON summary on the last line; exit 1 on a failure.
Standard library only."""
import http.client
import json
import sys
import threading
import time
import urllib.parse


def models_step(host, port):
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("GET", "/v1/models")
    r = c.getresponse()
    body = json.loads(r.read())
    c.close()
    return body["data"][0].get("weights_step", -1)


def client(idx, host, port, stop, out):
    steps, failures, requests, chunks = [], [], 0, 0
    k = 0
    while not stop.is_set():
        k += 1
        body = json.dumps({"prompt": "A fortune %d %d:" % (idx, k), "max_tokens": 24,
                           "temperature": 0.8, "seed": idx * 1000 + k, "stream": True})
        try:
            c = http.client.HTTPConnection(host, port, timeout=60)
            c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            r = c.getresponse()
            requests += 1
            if r.status != 200:
                failures.append("status %d: %s" % (r.status, r.read()[:200]))
                c.close()
                continue
            done, finished = False, False
            for raw in r:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                ev = json.loads(data)
                if "error" in ev:
                    failures.append("error event: %s" % data[:200])
                    break
                fp = ev.get("system_fingerprint", "")
                if not fp.startswith("tpmpi-step-"):
                    failures.append("chunk without a weights fingerprint: %s" % data[:200])
                    break
                steps.append(int(fp[len("tpmpi-step-"):]))
                chunks += 1
                for ch in ev.get("choices", []):
                    if ch.get("finish_reason") is not None:
                        finished = True
            c.close()
            if not done or not finished:
                failures.append("stream ended without [DONE] or finish_reason")
        except Exception as e:  # a refused or broken connection is a failed request
            failures.append("exception: %r" % (e,))
    mono = all(a <= b for a, b in zip(steps, steps[1:]))
    out[idx] = {"requests": requests, "chunks": chunks, "failures": failures,
                "monotonic": mono, "distinct": len(set(steps)),
                "first": steps[0] if steps else None, "last": steps[-1] if steps else None}


def main():
    url, n, final, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    u = urllib.parse.urlparse(url)
    stop, out, threads = threading.Event(), {}, []
    for i in range(n):
        t = threading.Thread(target=client, args=(i, u.hostname, u.port, stop, out))
        t.start()
        threads.append(t)
    t0, step = time.time(), -1
    while time.time() - t0 < timeout:
        try:
            step = models_step(u.hostname, u.port)
        except Exception:
            pass
        if step >= final:
            break
        time.sleep(0.2)
    time.sleep(0.5)  # a few requests on the final weights too
    stop.set()
    for t in threads:
        t.join()
    bad = 0
    for i in range(n):
        o = out.get(i, {"failures": ["no result"], "monotonic": False})
        print("client %d: %s" % (i, json.dumps(o)))
        bad += len(o["failures"]) + (0 if o["monotonic"] else 1)
    seen = set()
    for o in out.values():
        seen.update([o.get("first"), o.get("last")])
    summary = {"clients": n, "requests": sum(o.get("requests", 0) for o in out.values()),
               "failed": sum(len(o.get("failures", [])) for o in out.values()),
               "non_monotonic": sum(0 if o.get("monotonic") else 1 for o in out.values()),
               "max_distinct_per_client": max(o.get("distinct", 0) for o in out.values()),
               "final_step": step}
    print(json.dumps(summary))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
