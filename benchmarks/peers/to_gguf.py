#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Convert a tpmpi checkpoint (docs/CHECKPOINT.md) to GGUF for llama.cpp.

Writes llama.cpp's `gpt2` architecture in F32, F16 and/or Q8_0 with the `gguf`
package (pinned in llamacpp-setup.sh; run this with the venv's python that the
setup script prints as PEERS_PYTHON):

    PY=build/peers/venv/bin/python
    $PY benchmarks/peers/to_gguf.py runs/a --out-dir=build/peers/gguf --name=small
      -> small-f32.gguf small-f16.gguf small-q8_0.gguf

Layout mapping (tpmpi storage layout -> llama.cpp; numpy shapes are (out, in),
ggml's ne is the reverse):

    /model/wte (Vp, C)        token_embd.weight (V, C): padding rows dropped;
                              tied output head (no output.weight is written)
    /model/wpe (maxT, C)      position_embd.weight
    h.l.ln1w / ln1b           blk.l.attn_norm.weight / .bias
    h.l.qkvw (3C, C)          blk.l.attn_qkv.weight: tpmpi groups rows by head,
                              [h][q|k|v][hs]; llama.cpp splits the fused output
                              as [q of all heads | k | v], so rows are regrouped
                              to [q|k|v][h][hs] (same for qkvb)
    h.l.attprojw (C, C)       blk.l.attn_output.weight: stored [in, out], transposed
    h.l.ln2w / ln2b           blk.l.ffn_norm.weight / .bias
    h.l.fcw (4C, C)           blk.l.ffn_up.weight, as is
    h.l.fcprojw (4C, C)       blk.l.ffn_down.weight (C, 4C): stored [in, out], transposed
    lnfw / lnfb               output_norm.weight / .bias

Types: F32 writes everything in F32. F16 and Q8_0 convert the matmul weights
(attn_qkv, attn_output, ffn_up, ffn_down and token_embd, which is also the
head), as tpmpi's --serve-dtype does; position_embd, norms and biases stay F32.
Q8_0 is computed by gguf.quants (blocks of 32 values with one fp16 scale).

Tokenizer: tpmpi's byte-level BPE (docs/DATA.md) is written as
tokenizer.ggml.model=gpt2: token strings rebuilt from the merges and spelled
with GPT-2's byte-to-unicode map, the merges in rank order, eot (id V-1) as a
control token used for BOS and EOS, no BOS added. llama.cpp pre-tokenizes with
GPT-2's regex ("gpt-2"); tpmpi's rule (version 1) cuts ASCII text the same way
but differs on English contractions ("'s" is its own chunk in GPT-2) and on
non-ASCII text (tpmpi counts every byte >= 0x80 as a letter). Compare prompts
as token ids (check_gguf.sh does).

Exit status: 0 on success, 2 for bad input (not a tpmpi checkpoint, unknown
type, no tokenizer), 1 otherwise.
"""

import argparse
import json
import os
import struct
import sys

try:
    import gguf
    import h5py
    import numpy as np
except ImportError as exc:  # pragma: no cover - environment problem
    sys.stderr.write(f"to_gguf: {exc}; run benchmarks/peers/llamacpp-setup.sh and use the "
                     "python it prints (PEERS_PYTHON)\n")
    sys.exit(2)

TYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
TOKENIZER_MAGIC = 0x424D5054
LN_EPS = 1e-5  # docs/MODEL.md


class InputError(Exception):
    """bad input: exit 2"""


def resolve(path):
    """A checkpoint file, or a --ckpt-dir (its `latest`)."""
    if os.path.isdir(path):
        latest = os.path.join(path, "latest")
        try:
            with open(latest, encoding="ascii") as f:
                name = f.read().strip()
        except OSError as exc:
            raise InputError(f"{path} is a directory without a readable 'latest' ({exc.strerror})")
        path = os.path.join(path, name)
    if not os.path.isfile(path):
        raise InputError(f"no checkpoint file {path}")
    return path


def byte_to_unicode():
    """GPT-2's reversible byte -> printable code point map (the spelling that
    llama.cpp's BPE vocabulary uses): printable Latin-1 bytes map to
    themselves, the other 68 to U+0100 upwards in byte order."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


def read_tokenizer(blob):
    """tokenizer.bin of docs/DATA.md -> (V, list of merges (left, right))."""
    if len(blob) < 32:
        raise InputError(f"the checkpoint's tokenizer is {len(blob)} bytes, shorter than its header")
    magic, version, V, eot, M, pre = struct.unpack_from("<6I", blob, 0)
    if magic != TOKENIZER_MAGIC or version != 1:
        raise InputError(f"the checkpoint's tokenizer has magic {magic:#x} version {version}, "
                         "expected TPMB version 1")
    if pre != 1:
        raise InputError(f"the checkpoint's tokenizer uses pre-tokenizer {pre}, this converter knows 1")
    if V != 256 + M + 1 or eot != V - 1 or len(blob) != 32 + 8 * M:
        raise InputError(f"the checkpoint's tokenizer is inconsistent (V={V}, eot={eot}, merges={M}, "
                         f"{len(blob)} bytes)")
    pairs = np.frombuffer(blob, dtype="<i4", count=2 * M, offset=32).reshape(M, 2)
    return V, [(int(a), int(b)) for a, b in pairs]


def gguf_vocab(V, merges):
    """Token strings, types and merge strings in llama.cpp's gpt2 spelling."""
    b2u = byte_to_unicode()
    raw = [bytes([b]) for b in range(256)]
    for i, (a, b) in enumerate(merges):
        if not (0 <= a < 256 + i and 0 <= b < 256 + i):
            raise InputError(f"merge {i} uses an undefined id ({a}, {b})")
        raw.append(raw[a] + raw[b])
    spell = ["".join(b2u[c] for c in t) for t in raw]
    merge_strs = [f"{spell[a]} {spell[b]}" for a, b in merges]
    tokens = spell + ["<|endoftext|>"]
    types = [gguf.TokenType.NORMAL] * (V - 1) + [gguf.TokenType.CONTROL]
    dups = len(tokens) - len(set(tokens))
    return tokens, types, merge_strs, dups


def load(path):
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"cannot open {path} as an HDF5 checkpoint: {exc}")
    if f.attrs.get("format") != b"tpmpi-checkpoint":
        raise InputError(f"{path} is not a tpmpi checkpoint (format attribute {f.attrs.get('format')!r})")
    if int(f.attrs["format_version"]) != 1:
        raise InputError(f"{path} has checkpoint format version {int(f.attrs['format_version'])}, "
                         "this converter reads version 1")
    arch = f.attrs.get("arch", b"gpt2")
    try:
        arch = (json.loads(f.attrs["config_json"]).get("arch") or arch) if "config_json" in f.attrs else arch
    except ValueError:
        pass
    arch = arch.decode() if isinstance(arch, bytes) else str(arch)
    if arch not in ("gpt2", ""):
        raise InputError(f"{path} is a '{arch}' checkpoint; this converter writes GPT-2 only")
    if "tokenizer" not in f:
        raise InputError(f"{path} has no tokenizer (trained on llm.c shards?): llama.cpp needs one")
    return f


def tensors(f, L, NH, C, V):
    """Yield (gguf name, float32 array (out, in) or vector, is_matmul_weight)."""
    hs = C // NH
    m = f["model"]
    wte = m["wte"][:V]
    yield "token_embd.weight", wte, True
    yield "position_embd.weight", m["wpe"][()], False
    for l in range(L):
        p = f"h.{l}."
        b = f"blk.{l}."
        qkvw = m[p + "qkvw"][()].reshape(NH, 3, hs, C).transpose(1, 0, 2, 3).reshape(3 * C, C)
        qkvb = m[p + "qkvb"][()].reshape(NH, 3, hs).transpose(1, 0, 2).reshape(3 * C)
        yield b + "attn_norm.weight", m[p + "ln1w"][()], False
        yield b + "attn_norm.bias", m[p + "ln1b"][()], False
        yield b + "attn_qkv.weight", qkvw, True
        yield b + "attn_qkv.bias", qkvb, False
        yield b + "attn_output.weight", m[p + "attprojw"][()].T, True
        yield b + "attn_output.bias", m[p + "attprojb"][()], False
        yield b + "ffn_norm.weight", m[p + "ln2w"][()], False
        yield b + "ffn_norm.bias", m[p + "ln2b"][()], False
        yield b + "ffn_up.weight", m[p + "fcw"][()], True
        yield b + "ffn_up.bias", m[p + "fcb"][()], False
        yield b + "ffn_down.weight", m[p + "fcprojw"][()].T, True
        yield b + "ffn_down.bias", m[p + "fcprojb"][()], False
    yield "output_norm.weight", m["lnfw"][()], False
    yield "output_norm.bias", m["lnfb"][()], False


def write(f, out, kind, name, L, NH, C, V, n_ctx, vocab):
    qtype, ftype = TYPES[kind]
    tokens, types, merge_strs, _ = vocab
    w = gguf.GGUFWriter(out + ".tmp", "gpt2")
    w.add_name(name)
    w.add_context_length(n_ctx)
    w.add_embedding_length(C)
    w.add_feed_forward_length(4 * C)
    w.add_block_count(L)
    w.add_head_count(NH)
    w.add_layer_norm_eps(LN_EPS)
    w.add_file_type(int(ftype))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merge_strs)
    w.add_bos_token_id(V - 1)
    w.add_eos_token_id(V - 1)
    w.add_add_bos_token(False)
    for tname, arr, is_mm in tensors(f, L, NH, C, V):
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        t = qtype if is_mm else gguf.GGMLQuantizationType.F32
        if t == gguf.GGMLQuantizationType.F32:
            w.add_tensor(tname, arr)
        elif t == gguf.GGMLQuantizationType.F16:
            w.add_tensor(tname, arr.astype(np.float16))
        else:
            if arr.shape[-1] % 32:
                raise InputError(f"{tname}: row length {arr.shape[-1]} is not a multiple of 32 (Q8_0)")
            w.add_tensor(tname, gguf.quants.quantize(arr, t), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(out + ".tmp", out)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt", help="checkpoint file or --ckpt-dir directory (its 'latest')")
    ap.add_argument("--out-dir", default=".", help="where to write NAME-TYPE.gguf (default .)")
    ap.add_argument("--name", default=None, help="file name prefix (default: the checkpoint's stem)")
    ap.add_argument("--types", default="f32,f16,q8_0", help="comma list of f32,f16,q8_0 (default all)")
    ap.add_argument("--print-vocab-size", action="store_true",
                    help="print the checkpoint's vocabulary size V and write nothing")
    a = ap.parse_args(argv)

    kinds = [k.strip().lower() for k in a.types.split(",") if k.strip()]
    for k in kinds:
        if k not in TYPES:
            raise InputError(f"unknown type '{k}' in --types (known: {', '.join(TYPES)})")
    if not kinds:
        raise InputError("--types is empty")
    path = resolve(a.ckpt)
    f = load(path)
    if a.print_vocab_size:
        print(int(f.attrs["vocab_size"]))
        return 0
    L, NH, C = (int(f.attrs[k]) for k in ("n_layer", "n_head", "n_embd"))
    V, n_ctx = int(f.attrs["vocab_size"]), int(f.attrs["n_ctx"])
    tV, merges = read_tokenizer(f["tokenizer"][()].tobytes())
    if tV != V:
        raise InputError(f"{path}: the tokenizer has V = {tV} but the model vocab_size = {V}; "
                         "llama.cpp needs one token string per embedding row")
    if C % NH:
        raise InputError(f"{path}: n_embd {C} is not a multiple of n_head {NH}")
    vocab = gguf_vocab(V, merges)
    if vocab[3]:
        sys.stderr.write(f"to_gguf: note: {vocab[3]} token strings occur twice (two merge paths to "
                         "the same bytes); llama.cpp maps such a string to its last id\n")
    name = a.name or os.path.splitext(os.path.basename(path))[0]
    os.makedirs(a.out_dir, exist_ok=True)
    info = {"ckpt": path, "step": int(f.attrs["step"]), "n_layer": L, "n_head": NH, "n_embd": C,
            "vocab_size": V, "n_ctx": n_ctx, "files": {}}
    for k in kinds:
        out = os.path.join(a.out_dir, f"{name}-{k}.gguf")
        write(f, out, k, name, L, NH, C, V, n_ctx, vocab)
        info["files"][k] = out
        sys.stderr.write(f"to_gguf: wrote {out} ({os.path.getsize(out) / 2**20:.1f} MiB)\n")
    f.close()
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except InputError as exc:
        sys.stderr.write(f"to_gguf: error: {exc}\n")
        sys.exit(2)
    except (OSError, KeyError) as exc:
        sys.stderr.write(f"to_gguf: error: {exc}\n")
        sys.exit(1)
