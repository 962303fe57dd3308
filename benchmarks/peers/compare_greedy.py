#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Compare llama.cpp's greedy continuations with a running tpmpi server's.

Used by check_gguf.sh (which starts the server and makes the GGUF files):

    compare_greedy.py --url=http://127.0.0.1:PORT --llama-bin=DIR --n=48 --need=32 \
        --gguf f32=A.gguf --gguf f16=B.gguf --gguf q8_0=C.gguf

For every prompt:
  * its token ids from tpmpi (POST /tokenize) and from llama.cpp
    (llama-tokenize --ids, no BOS) must be equal (a check);
  * tpmpi generates N tokens at temperature 0 from those ids
    (/v1/completions); llama-simple (greedy) does the same on each GGUF file.
  * F32: the two continuations must be the same text and the same number of
    tokens (tpmpi's usage.completion_tokens, llama-simple's "decoded N
    tokens"), N of them, or as many as tpmpi made before end-of-text, and at
    least --need (a check). Same text from the same number of greedy tokens
    is the same tokens, short of two different token sequences spelling the
    same bytes, which greedy decoding of one model does not produce in practice.
  * F16, Q8_0: must load and generate (a check each); their agreement is
    reported as the tokens of tpmpi's continuation that llama.cpp's text
    reproduces from the start, byte for byte: all of them when the two are
    identical, else counted on tpmpi's /tokenize pieces of its continuation
    (a re-tokenization, so an estimate: it can join generated tokens, e.g. a
    run of newlines); a figure, not a check.

Prints one line per check and per agreement figure, a JSON summary line
(`summary: {...}`), and last `N passed, N failed`. Exit 0 when nothing failed.
"""

import argparse
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

PROMPTS = [
    "The meaning of life is",
    "You will be",
    "A man who",
    "There is no",
    "The best way to",
    "In the beginning",
]


def post(url, path, body, timeout=300):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def tpmpi_tokenize(url, text, pieces=False):
    return post(url, "/tokenize", {"content": text, "with_pieces": pieces})["tokens"]


def tpmpi_greedy(url, prompt_ids, n):
    """(text, finish_reason, completion_tokens)."""
    ans = post(url, "/v1/completions", {"prompt": prompt_ids, "max_tokens": n, "temperature": 0})
    ch = ans["choices"][0]
    return ch["text"], ch["finish_reason"], ans["usage"]["completion_tokens"]


def tpmpi_pieces(url, prompt, prompt_ids, text):
    """The continuation's token texts: tpmpi's own tokenization of prompt+text,
    after the prompt's tokens (the text alone when the prompt's do not lead)."""
    toks = tpmpi_tokenize(url, prompt + text, pieces=True)
    if [t["id"] for t in toks[:len(prompt_ids)]] == list(prompt_ids):
        return [t["piece"] for t in toks[len(prompt_ids):]]
    return [t["piece"] for t in tpmpi_tokenize(url, text, pieces=True)]


def llama_tokenize(bindir, gguf, text):
    out = subprocess.run([f"{bindir}/llama-tokenize", "-m", gguf, "-p", text, "--ids",
                          "--no-bos", "--log-disable"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    line = [l for l in out.splitlines() if l.startswith("[")][-1]
    return json.loads(line)


def llama_greedy(bindir, gguf, prompt, n):
    """(continuation text, tokens decoded) of llama-simple."""
    p = subprocess.run([f"{bindir}/llama-simple", "-m", gguf, "-n", str(n), prompt],
                       capture_output=True, timeout=300)
    err = p.stderr.decode("utf-8", "replace")
    if p.returncode != 0:
        raise RuntimeError(f"llama-simple failed on {gguf}: {err[-400:]}")
    m = re.search(r"decoded (\d+) tokens", err)
    if not m:
        raise RuntimeError(f"llama-simple printed no 'decoded N tokens' line for {gguf}")
    out = p.stdout.decode("utf-8", "replace")
    if out.endswith("\n"):
        out = out[:-1]
    if not out.startswith(prompt):
        raise RuntimeError(f"llama-simple did not echo the prompt: {out[:80]!r}")
    return out[len(prompt):], int(m.group(1))


def agreement(pieces, text):
    """How many of tpmpi's token texts, from the first, llama's text reproduces."""
    pos = 0
    for i, piece in enumerate(pieces):
        if text[pos:pos + len(piece)] != piece:
            return i
        pos += len(piece)
    return len(pieces)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--need", type=int, default=32)
    ap.add_argument("--gguf", action="append", required=True, help="TYPE=FILE (f32 first)")
    ap.add_argument("--passed", type=int, default=0, help="checks the caller passed already")
    ap.add_argument("--failed", type=int, default=0, help="checks the caller failed already")
    a = ap.parse_args()
    files = [g.split("=", 1) for g in a.gguf]
    if files[0][0] != "f32":
        sys.exit("compare_greedy: the first --gguf must be f32=FILE")

    passed, failed = a.passed, a.failed
    summary = {"n": a.n, "need": a.need, "prompts": len(PROMPTS), "types": {}}
    agree = {t: [] for t, _ in files}
    same = {t: 0 for t, _ in files}

    def check(ok, msg):
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
        print(("ok:   " if ok else "FAIL: ") + msg, flush=True)

    for prompt in PROMPTS:
        ids_t = tpmpi_tokenize(a.url, prompt)
        ids_l = llama_tokenize(a.llama_bin, files[0][1], prompt)
        check(ids_t == ids_l, f"prompt {prompt!r}: token ids tpmpi {ids_t} llama.cpp {ids_l}")
        text_t, finish, n_t = tpmpi_greedy(a.url, ids_t, a.n)
        # tokens with text: the end-of-text token counts in usage, and llama-simple
        # stops before it without counting it
        n_text = n_t - 1 if finish == "stop" else n_t
        pieces = tpmpi_pieces(a.url, prompt, ids_t, text_t)
        for t, path in files:
            try:
                text_l, n_l = llama_greedy(a.llama_bin, path, prompt, a.n)
                ok_run = True
            except (RuntimeError, subprocess.SubprocessError) as exc:
                text_l, n_l, ok_run = "", 0, False
                print(f"      {exc}")
            full = ok_run and text_l == text_t and n_l == n_text
            # identical: all tokens agree; else the estimate from tpmpi's pieces
            k = n_text if full else agreement(pieces, text_l)
            agree[t].append(k)
            same[t] += full
            print(f"      {t:5s} {prompt!r}: {k}/{n_text} tokens agree"
                  f"{'; identical continuation' if full else ''} (tpmpi {n_t} tokens, {finish};"
                  f" llama.cpp {n_l})", flush=True)
            if t == "f32":
                check(full and n_text >= min(a.need, a.n),
                      f"f32 {prompt!r}: same greedy continuation, {n_text} tokens (need {a.need})")
                if not full:
                    print(f"      tpmpi:     {text_t!r}\n      llama.cpp: {text_l!r}")
            else:
                check(ok_run and n_l > 0, f"{t} {prompt!r}: llama.cpp loads and generates")
    for t, _ in files:
        ks = agree[t]
        summary["types"][t] = {"agree_tokens": ks, "mean": round(sum(ks) / len(ks), 1),
                               "identical": same[t]}
        print(f"agreement {t}: {ks} tokens (mean {sum(ks) / len(ks):.1f} of {a.n}), "
              f"identical continuations {same[t]}/{len(ks)}")
    print("summary: " + json.dumps(summary))
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (urllib.error.URLError, OSError) as exc:
        print(f"compare_greedy: error: {exc}")
        print("0 passed, 1 failed")
        sys.exit(1)
