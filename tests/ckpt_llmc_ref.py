#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Independent check of an llm.c model file written by tpmpi --mode=export.

Reads the llm.c file with llm.c's own conventions (nn.Linear weights (out, in),
c_attn rows q of all heads then k then v, c_proj not transposed), runs the GPT-2
forward pass in float64 with numpy on the fixture's tokens, and compares the
logits with the PyTorch reference stored in tests/fixtures/gpt_tiny.bin. Nothing
here uses tpmpi's layout, so a wrong regrouping or transpose in the exporter
shows up as a logits mismatch.

    ckpt_llmc_ref.py MODEL.bin tests/fixtures/gpt_tiny.bin
Prints the max abs logits difference; exit 0 when below 1e-4.
"""

import sys

import numpy as np


def main():
    model, fixture = sys.argv[1], sys.argv[2]
    raw = open(model, "rb").read()
    h = np.frombuffer(raw[:1024], dtype="<i4")
    assert h[0] == 20240326 and h[1] == 3, "not an fp32 llm.c model file"
    maxT, V, L, NH, C, Vp = (int(v) for v in h[2:8])
    p = np.frombuffer(raw[1024:], dtype="<f4").astype(np.float64)
    shapes = [("wte", (Vp, C)), ("wpe", (maxT, C)), ("ln1w", (L, C)), ("ln1b", (L, C)),
              ("qkvw", (L, 3 * C, C)), ("qkvb", (L, 3 * C)), ("attprojw", (L, C, C)),
              ("attprojb", (L, C)), ("ln2w", (L, C)), ("ln2b", (L, C)),
              ("fcw", (L, 4 * C, C)), ("fcb", (L, 4 * C)), ("fcprojw", (L, C, 4 * C)),
              ("fcprojb", (L, C)), ("lnfw", (C,)), ("lnfb", (C,))]
    w, off = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        w[name] = p[off:off + n].reshape(shape)
        off += n
    assert off == p.size, "file size does not match the header"

    fx = open(fixture, "rb").read()
    fh = np.frombuffer(fx[:64], dtype="<i4")
    B, T = int(fh[8]), int(fh[9])
    assert (int(fh[2]), int(fh[3]), int(fh[4]), int(fh[5]), int(fh[6])) == (L, C, NH, V, Vp)
    x = np.frombuffer(fx[96:96 + 4 * B * T], dtype="<i4").reshape(B, T)
    ref = np.frombuffer(fx[288:288 + 4 * B * T * Vp], dtype="<f4").reshape(B, T, Vp)

    def ln(v, g, b):
        mu = v.mean(-1, keepdims=True)
        var = ((v - mu) ** 2).mean(-1, keepdims=True)
        return (v - mu) / np.sqrt(var + 1e-5) * g + b

    def gelu(v):
        return 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))

    hs = C // NH
    a = w["wte"][x] + w["wpe"][:T]
    mask = np.tril(np.ones((T, T), dtype=bool))
    for l in range(L):
        t = ln(a, w["ln1w"][l], w["ln1b"][l])
        qkv = t @ w["qkvw"][l].T + w["qkvb"][l]
        q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, T, NH, hs).transpose(0, 2, 1, 3)
                   for i in range(3))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hs)
        s = np.where(mask, s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        y = (s @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        a = a + y @ w["attprojw"][l].T + w["attprojb"][l]
        t = ln(a, w["ln2w"][l], w["ln2b"][l])
        a = a + gelu(t @ w["fcw"][l].T + w["fcb"][l]) @ w["fcprojw"][l].T + w["fcprojb"][l]
    logits = ln(a, w["lnfw"], w["lnfb"]) @ w["wte"].T
    err = float(np.abs(logits - ref).max())
    pad = float(np.abs(w["wte"][V:]).max()) if Vp > V else 0.0
    print("llm.c-convention forward vs PyTorch fixture: max abs logits difference %.3g; "
          "padded wte rows max %.3g" % (err, pad))
    return 0 if err < 1e-4 and pad == 0.0 else 1


if __name__ == "__main__":
    sys.exit(main())
