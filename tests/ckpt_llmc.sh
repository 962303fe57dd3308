#!/bin/sh
# SPDX-License-Identifier: MIT
# llm.c interop (--mode=export --format=llmc, --init-from=llmc:FILE):
#  - export a tiny trained model; the header fields and the file size are llm.c's;
#  - import it back: training from the llm.c file and from the checkpoint gives identical
#    losses and identical weights, and exporting both again gives byte-identical files;
#  - an independent reference: the PyTorch fixture model is saved as a checkpoint, exported,
#    re-imported bit for bit, and (with numpy) a forward pass written in llm.c's
#    conventions on the exported file reproduces the fixture's PyTorch logits;
#  - bf16, truncated and mismatched llm.c files are refused with a message.
set -u
: "${TPMPI:?}" "${MPIRUN:?}" "${TOP_BUILDDIR:?}" "${TPM_FIXTURE_DIR:?}"
. "$(dirname "$0")/train_lib.sh"
dir=$TOP_BUILDDIR/tests/ckpt_llmc.d
prog=$TOP_BUILDDIR/tests/mpi/test_ckpt
ref=${TOP_SRCDIR:-$(dirname "$0")/..}/tests/ckpt_llmc_ref.py
fix=$TPM_FIXTURE_DIR/gpt_tiny.bin
rm -rf "$dir" && mkdir -p "$dir"
common="--mode=train --model=tiny --batch=2 --seed=9 --threads=1 --log-every=100"

run() { # NAME NP ARGS...
    name=$1 np=$2
    shift 2
    if timeout 300 $MPIRUN -np "$np" "$TPMPI" "$@" >"$dir/$name.log" 2>&1; then
        return 0
    fi
    sed 's/^/    /' "$dir/$name.log" | tail -20
    return 1
}
ok() { "$@" >"$dir/ok.log" 2>&1 && echo 1 || echo 0; }

run train 2 $common --steps=5 --ckpt-dir="$dir/c0" --metrics="$dir/train.jsonl"
check "$(ok run export 2 --mode=export --ckpt="$dir/c0" --out="$dir/m.bin")" "export on 2 ranks"
hdr=$(od -An -t d4 -N32 -v "$dir/m.bin" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//')
check "$([ "$hdr" = "20240326 3 64 4096 2 4 64 4096" ] && echo 1 || echo 0)" \
    "header: magic 20240326, version 3, maxT 64, V 4096, L 2, NH 4, C 64, Vp 4096 (got $hdr)"
size=$(wc -c <"$dir/m.bin")
# 1024 header bytes + 4 x 366336 parameters (the tiny model with V = 4096)
check "$([ "$size" -eq 1466368 ] && echo 1 || echo 0)" "file size 1024 + 4 x 366336 (got $size)"
check "$([ -z "$(od -An -t d4 -j32 -N992 -v "$dir/m.bin" | tr -d ' 0\n')" ] && echo 1 || echo 0)" \
    "header entries 8..255 are zero"

# round trip: the same training from the llm.c file and from the checkpoint
run from_llmc 2 $common --steps=3 --init-from=llmc:"$dir/m.bin" --ckpt-dir="$dir/c1" \
    --metrics="$dir/a.jsonl"
run from_h5 2 $common --steps=3 --init-from="$dir/c0" --ckpt-dir="$dir/c2" --metrics="$dir/b.jsonl"
losses "$dir/a.jsonl" >"$dir/la"
losses "$dir/b.jsonl" >"$dir/lb"
check "$([ "$(wc -l <"$dir/la")" -eq 3 ] && cmp -s "$dir/la" "$dir/lb" && echo 1 || echo 0)" \
    "training from llmc:m.bin and from the checkpoint: identical losses (first $(head -n 1 "$dir/la"))"
check "$(ok h5diff -q "$dir/c1/ckpt_00000003.h5" "$dir/c2/ckpt_00000003.h5" /model /model)" \
    "... and identical weights after 3 steps"
run export1 1 --mode=export --ckpt="$dir/c1" --out="$dir/m1.bin"
run export3 3 --mode=export --ckpt="$dir/c2/ckpt_00000003.h5" --out="$dir/m2.bin"
check "$(ok cmp -s "$dir/m1.bin" "$dir/m2.bin")" "their exports (on 1 and 3 ranks) are byte-identical"

# independent reference: the PyTorch fixture
check "$(ok timeout 120 $MPIRUN -np 3 "$prog" fixture "$fix" "$dir/fix.h5")" \
    "fixture parameters saved as a checkpoint (3 ranks)"
run export_fix 2 --mode=export --ckpt="$dir/fix.h5" --out="$dir/fix.bin"
check "$(ok timeout 120 $MPIRUN -np 2 "$prog" import "$fix" "$dir/fix.bin")" \
    "the exported fixture imports back bit for bit (2 ranks)"
if /usr/bin/python3 -c "import numpy" 2>/dev/null; then
    check "$(ok /usr/bin/python3 "$ref" "$dir/fix.bin" "$fix")" \
        "llm.c-convention numpy forward on the export reproduces the PyTorch logits"
    cat "$dir/ok.log"
else
    echo "skipped: no numpy for /usr/bin/python3 (the llm.c-convention reference forward)"
fi

# refusals
bad() { # NAME PATTERN: --init-from=llmc:DIR/NAME must fail with exit 2 and the message
    timeout 120 $MPIRUN -np 2 "$TPMPI" $common --steps=1 --init-from=llmc:"$dir/$1" \
        >"$dir/bad.log" 2>&1
    rc=$?
    check "$([ "$rc" -eq 2 ] && grep -q -- "$2" "$dir/bad.log" && echo 1 || echo 0)" \
        "$1 refused: $(grep -m 1 -o -- "$2.*" "$dir/bad.log" | head -c 100) (rc $rc)"
}
{ head -c 4 "$dir/m.bin"; printf '\005\000\000\000'; tail -c +9 "$dir/m.bin"; } >"$dir/bf16.bin"
bad bf16.bin "version 5 (bf16)"
head -c 1000000 "$dir/m.bin" >"$dir/short.bin"
bad short.bin "truncated"
bad nothere.bin "cannot open llm.c model file"
timeout 120 $MPIRUN -np 2 "$TPMPI" $common --steps=1 --n-embd=128 --init-from=llmc:"$dir/m.bin" \
    >"$dir/bad.log" 2>&1
rc=$?
check "$([ "$rc" -eq 2 ] && grep -q "has n_embd = 64, but this run has n_embd = 128" "$dir/bad.log" && echo 1 || echo 0)" \
    "a different --n-embd is refused, naming the field (rc $rc)"

finish
