#!/usr/bin/env python3
"""Generate the LLaMA-family reference fixtures of tests/unit/test_llama_ref.c.

The reference is Hugging Face `transformers` itself: a LlamaForCausalLM and a
Qwen2ForCausalLM built from a config (random initialisation, offline; no
weights are downloaded), run in float64 with the eager attention.  The loss is
the mean cross-entropy of the logits against targets given here (not the
shifted labels of `transformers`), so that it is the loss tpmpi computes.
Parameters and gradients are written in tpmpi's storage layout (docs/MODEL.md
"LLaMA"): q, k, v rows of one tensor grouped by KV group, o_proj and down_proj
transposed to [in, out], embed_tokens and lm_head padded to Vp rows.

Run (offline; transformers and torch in a virtual environment, e.g.
`python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers`):
    /tmp/venv/bin/python scripts/gen_llama_fixtures.py --out tests/fixtures

File layout: tests/fixtures/README.md ("LLaMA fixtures").
"""

import argparse
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F
import transformers

MAGIC = 20261204
VERSION = 1
B, T = 2, 12
V = 100
VP = ((V + 127) // 128) * 128

CONFIGS = {
    # GQA (4 query heads, 2 KV heads), untied head, Llama-3 rope scaling that puts the
    # wavelengths of hs = 8 in all three bands (kept, blended, divided)
    "llama_tiny": dict(cls="LlamaForCausalLM", L=2, C=32, NH=4, NKV=2, F=48, tied=False,
                       bias=False, eps=1e-5, theta=10000.0,
                       scaling=dict(factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=16),
                       seed=20261204),
    # Qwen2-like: q/k/v biases, tied head, large theta, no scaling
    "qwen_tiny": dict(cls="Qwen2ForCausalLM", L=2, C=32, NH=4, NKV=2, F=40, tied=True,
                      bias=True, eps=1e-6, theta=1000000.0, scaling=None, seed=20261205),
}


def hf_model(c):
    common = dict(vocab_size=V, hidden_size=c["C"], intermediate_size=c["F"],
                  num_hidden_layers=c["L"], num_attention_heads=c["NH"],
                  num_key_value_heads=c["NKV"], max_position_embeddings=64,
                  rms_norm_eps=c["eps"], rope_theta=c["theta"],
                  tie_word_embeddings=c["tied"], hidden_act="silu",
                  attention_dropout=0.0)
    if c["cls"] == "LlamaForCausalLM":
        rs = None
        if c["scaling"] is not None:
            rs = dict(c["scaling"], rope_type="llama3", rope_theta=c["theta"])
        cfg = transformers.LlamaConfig(attention_bias=False, mlp_bias=False, rope_scaling=rs,
                                       **common)
        cfg._attn_implementation = "eager"
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(use_sliding_window=False, **common)
        cfg._attn_implementation = "eager"
        model = transformers.Qwen2ForCausalLM(cfg)
    return model


def reinit(model, seed):
    """Values well away from zero, so that every term of the math shows in the result."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * r)
            elif name.endswith(".bias"):
                p.copy_(0.05 * r)
            else:
                p.copy_(0.1 * r)


def kv_grouped(q, k, v, NH, NKV, hs):
    """tpmpi's qkv rows: per KV group g, the q rows of its NH/NKV heads, then k_g, then v_g."""
    rep = NH // NKV
    parts = []
    for g in range(NKV):
        parts.append(q[g * rep * hs:(g + 1) * rep * hs])
        parts.append(k[g * hs:(g + 1) * hs])
        parts.append(v[g * hs:(g + 1) * hs])
    return np.concatenate(parts, axis=0)


def pad_rows(a):
    out = np.zeros((VP,) + a.shape[1:], dtype=a.dtype)
    out[:a.shape[0]] = a
    return out


def to_tpmpi(model, c, grad):
    """The canonical flat vector: blocks 0..L-1 with the rows of the LLaMA table, then wte,
    lnfw and (untied) lm_head; the same layout for parameters and gradients."""
    hs = c["C"] // c["NH"]

    def t(p):
        x = p.grad if grad else p
        return x.detach().double().numpy()

    out = []
    base = model.model
    for l in range(c["L"]):
        ly = base.layers[l]
        at = ly.self_attn
        out.append(t(ly.input_layernorm.weight))
        out.append(kv_grouped(t(at.q_proj.weight), t(at.k_proj.weight), t(at.v_proj.weight),
                              c["NH"], c["NKV"], hs))
        out.append(t(at.o_proj.weight).T)
        out.append(t(ly.post_attention_layernorm.weight))
        out.append(t(ly.mlp.gate_proj.weight))
        out.append(t(ly.mlp.up_proj.weight))
        out.append(t(ly.mlp.down_proj.weight).T)
        if c["bias"]:
            out.append(kv_grouped(t(at.q_proj.bias), t(at.k_proj.bias), t(at.v_proj.bias),
                                  c["NH"], c["NKV"], hs))
    if c["tied"]:
        # the tied weight's gradient is the sum of the embedding and head terms: one tensor
        out.append(pad_rows(t(base.embed_tokens.weight)))
        out.append(t(base.norm.weight))
    else:
        out.append(pad_rows(t(base.embed_tokens.weight)))
        out.append(t(base.norm.weight))
        out.append(pad_rows(t(model.lm_head.weight)))
    return np.concatenate([np.ascontiguousarray(a).reshape(-1) for a in out])


def generate(name, c, outdir):
    torch.manual_seed(c["seed"])
    model = hf_model(c)
    reinit(model, c["seed"])
    if c["tied"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model = model.double()
    model.eval()  # no dropout (there is none at attention_dropout 0 anyway)
    g = torch.Generator().manual_seed(c["seed"] + 1)
    x = torch.randint(0, V, (B, T), generator=g)
    y = torch.randint(0, V, (B, T), generator=g)
    y[0, 0] = -1  # ignored position
    logits = model(input_ids=x).logits  # (B, T, V) float64
    loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1), ignore_index=-1)
    loss.backward()

    params = to_tpmpi(model, c, grad=False)
    grads = to_tpmpi(model, c, grad=True)
    lg = np.zeros((B, T, VP))
    lg[:, :, :V] = logits.detach().numpy()

    # float32 rerun from the stored float32 parameters: the tolerance a float32 code can reach
    m32 = hf_model(c)
    with torch.no_grad():
        for (n, p), (_, p64) in zip(m32.named_parameters(), model.named_parameters()):
            p.copy_(p64.float())
    lg32 = m32(input_ids=x).logits.detach().double().numpy()
    err32 = np.abs(lg32 - logits.detach().numpy()).max()

    P = params.size
    flags = (0 if c["tied"] else 1) | (2 if c["bias"] else 0) | (4 if c["scaling"] else 0)
    sc = c["scaling"] or dict(factor=0.0, low_freq_factor=0.0, high_freq_factor=0.0,
                              original_max_position_embeddings=0)
    hdr = [MAGIC, VERSION, c["L"], c["C"], c["NH"], c["NKV"], c["F"], V, VP, 64, B, T, P,
           flags, sc["original_max_position_embeddings"], 0]
    hyper = [c["eps"], c["theta"], sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"],
             0.0, 0.0, 0.0]
    path = os.path.join(outdir, name + ".bin")
    with open(path, "wb") as f:
        f.write(struct.pack("<16i", *hdr))
        f.write(struct.pack("<8d", *hyper))
        f.write(x.numpy().astype("<i4").tobytes())
        f.write(y.numpy().astype("<i4").tobytes())
        f.write(lg.astype("<f4").tobytes())
        f.write(struct.pack("<f", float(loss.detach())))
        f.write(params.astype("<f4").tobytes())
        f.write(grads.astype("<f4").tobytes())
    # the same float32 weights as a Hugging Face model directory (tests/unit/test_llama_ref.c
    # imports it): llama_tiny in fp32 in one file, qwen_tiny in bf16 in shards with an index
    hf_dir = os.path.join(outdir, "hf_" + name)
    if c["tied"]:
        m32.to(torch.bfloat16).save_pretrained(hf_dir, max_shard_size="20KB")
    else:
        m32.save_pretrained(hf_dir)
    for f in os.listdir(hf_dir):
        if f not in ("config.json",) and not f.startswith("model"):
            os.remove(os.path.join(hf_dir, f))  # generation_config.json: not needed
    size = os.path.getsize(path)
    want = 64 + 64 + 2 * B * T * 4 + B * T * VP * 4 + 4 + 2 * P * 4
    assert size == want, (size, want)
    print("%s: %s, P=%d, loss %.6f, fp32 logits max |diff| %.2e, %d bytes" %
          (path, c["cls"], P, float(loss), err32, size))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    a = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    print("torch %s, transformers %s, numpy %s, Python %s" %
          (torch.__version__, transformers.__version__, np.__version__, sys.version.split()[0]))
    for name, c in CONFIGS.items():
        generate(name, c, a.out)


if __name__ == "__main__":
    main()
