#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""List the tensors of a tpmpi checkpoint and print its configuration.

A small reader example for the format of docs/CHECKPOINT.md, with h5py and
numpy only (Debian: apt-get install python3-h5py; use /usr/bin/python3).

    /usr/bin/python3 scripts/ckpt_inspect.py runs/ckpt/ckpt_00000100.h5
    /usr/bin/python3 scripts/ckpt_inspect.py --verify runs/ckpt        # DIR: its 'latest'
    /usr/bin/python3 scripts/ckpt_inspect.py --json runs/ckpt          # config JSON only

--verify recomputes every dataset's checksum (the row hash of
docs/CHECKPOINT.md, written again here from the description, independent of
the C code) and exits 1 on a mismatch.
"""

import argparse
import json
import os
import sys

import h5py
import numpy as np

FORMAT = "tpmpi-checkpoint"
VERSION = 1

M64 = (1 << 64) - 1
K1 = np.uint64(0x9E3779B97F4A7C15)
K2 = np.uint64(0xC2B2AE3D27D4EB4F)
K3 = np.uint64(0x165667B19E3779F9)


def _rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _fmix(h):
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


def row_hashes(words, nbytes):
    """Hashes of R rows: words is (R, W) uint32 (a row's little-endian 32-bit
    words, a partial last word zero-padded), nbytes the bytes of one row."""
    rows = words.shape[0]
    idx = np.arange(rows, dtype=np.uint64)
    lanes = [(idx + np.uint64(1)) * K1 + np.uint64(j) * K3 for j in range(4)]
    w64 = words.astype(np.uint64)
    for i in range(words.shape[1]):
        j = i & 3
        lanes[j] = _rotl(lanes[j] ^ (w64[:, i] * K2), 31) * K1
    h = (_rotl(lanes[0], 1) + _rotl(lanes[1], 7) + _rotl(lanes[2], 12) +
         _rotl(lanes[3], 18) + np.uint64(nbytes))
    return _fmix(h)


def dataset_checksum(ds):
    """Sum (mod 2^64) of the row hashes; a vector has one value per row, the
    uint8 tokenizer is a single row."""
    data = ds[()]
    if data.dtype == np.uint8:
        raw = data.tobytes()
        pad = raw + b"\0" * (-len(raw) % 4)
        words = np.frombuffer(pad, dtype="<u4").reshape(1, -1)
        hashes = row_hashes(words, len(raw))
    else:
        arr = np.ascontiguousarray(data, dtype="<f4")
        arr = arr.reshape(arr.shape[0], -1)
        hashes = row_hashes(arr.view("<u4"), arr.shape[1] * 4)
    return int(hashes.sum(dtype=np.uint64)) & M64


def resolve(path):
    if os.path.isdir(path):
        latest = os.path.join(path, "latest")
        if os.path.exists(latest):
            with open(latest) as f:
                return os.path.join(path, f.readline().strip())
        found = sorted(n for n in os.listdir(path)
                       if n.startswith("ckpt_") and n.endswith(".h5"))
        if not found:
            sys.exit("no checkpoint in %s" % path)
        return os.path.join(path, found[-1])
    return path


def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path", help="checkpoint file, or a checkpoint directory")
    ap.add_argument("--verify", action="store_true", help="recompute every checksum")
    ap.add_argument("--json", action="store_true", help="print the config JSON only")
    args = ap.parse_args()
    path = resolve(args.path)

    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        if text(attrs.get("format", b"")) != FORMAT:
            sys.exit("%s: not a tpmpi checkpoint" % path)
        config = json.loads(text(attrs["config_json"]))
        if args.json:
            print(json.dumps(config, indent=2, sort_keys=True))
            return 0
        version = int(attrs["format_version"])
        print("%s: %s version %d%s, %s" % (path, FORMAT, version,
              "" if version == VERSION else " (this script knows %d)" % VERSION,
              text(attrs.get("created_by", "?"))))
        print("model: n_layer %d n_head %d n_embd %d vocab %d (padded %d) n_ctx %d" % tuple(
            int(attrs[k]) for k in ("n_layer", "n_head", "n_embd", "vocab_size",
                                    "padded_vocab_size", "n_ctx")))
        print("state: step %d, tokens seen %d, seed %d, lr %.6g; written on %d rank(s) "
              "(batch %d x grad-accum %d, seq %d)" % (
                  int(attrs["step"]), int(attrs["tokens_seen"]), int(attrs["seed"]),
                  float(attrs["lr"]), int(attrs["world_size"]), int(attrs["batch"]),
                  int(attrs["grad_accum"]), int(attrs["seq_len"])))
        if "tokenizer" in f:
            print("tokenizer: %d bytes inside the file" % f["tokenizer"].shape[0])

        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        bad = 0
        total = 0
        print("\n%-24s %-14s %-8s %-18s%s" % ("dataset", "shape", "dtype", "checksum",
                                              "  verified" if args.verify else ""))
        for n in names:
            ds = f[n]
            total += ds.size * ds.dtype.itemsize
            want = int(ds.attrs["checksum"])
            line = "%-24s %-14s %-8s %016x" % (n, "(" + ", ".join(map(str, ds.shape)) + ")",
                                              ds.dtype, want)
            if args.verify:
                ok = dataset_checksum(ds) == want
                bad += not ok
                line += "  ok" if ok else "  MISMATCH"
            print(line)
        print("\n%d datasets, %.1f MiB of data" % (len(names), total / 1048576.0))
        print("\nconfig: " + json.dumps(config, sort_keys=True))
        if args.verify:
            print("checksums: %s" % ("all %d match" % len(names) if bad == 0
                                     else "%d MISMATCH" % bad))
            return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
