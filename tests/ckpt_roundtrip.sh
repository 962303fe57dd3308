#!/bin/sh
# SPDX-License-Identifier: MIT
# Checkpoint files written on N ranks and read on M (tests/mpi/test_ckpt, a plain main()):
# parameters and both AdamW moments come back exactly, padding rows zero, metadata and
# tokenizer intact, serving reads (tpm_ckpt_read_rows) on other splits verified; a newer
# format version is refused. Then the file is read by the standard tools: h5ls, h5dump and
# (when /usr/bin/python3 has h5py) scripts/ckpt_inspect.py, whose checksums are an
# independent implementation of the documented row hash.
set -u
: "${MPIRUN:?}" "${TOP_BUILDDIR:?}"
. "$(dirname "$0")/train_lib.sh"
dir=$TOP_BUILDDIR/tests/ckpt_roundtrip.d
prog=$TOP_BUILDDIR/tests/mpi/test_ckpt
inspect=${TOP_SRCDIR:-$(dirname "$0")/..}/scripts/ckpt_inspect.py
rm -rf "$dir" && mkdir -p "$dir"

# prog NP MODE ARGS...: run test_ckpt; it prints "N passed, N failed"
prog() {
    np=$1
    shift
    timeout 120 $MPIRUN -np "$np" "$prog" "$@" >"$dir/out" 2>&1
    rc=$?
    check "$([ "$rc" -eq 0 ] && echo 1 || echo 0)" \
        "np $np $1: $(grep 'passed, .* failed' "$dir/out" || echo "rc $rc")"
    [ "$rc" -eq 0 ] || sed 's/^/    /' "$dir/out" | grep -v "^    \[tpmpi" | head -20
}

for w in 4 1 3; do
    prog "$w" write "$dir/w$w.h5"
done
for m in 1 2 3; do
    prog "$m" read "$dir/w4.h5" 4
done
prog 4 read "$dir/w1.h5" 1
prog 2 read "$dir/w3.h5" 3
# through the host staging buffer (the device-memory path), both ways
prog 2 write "$dir/w2s.h5" staged
prog 3 read "$dir/w2s.h5" 2 staged
prog 1 read "$dir/w4.h5" 4 staged
prog 3 version "$dir/w4.h5"
# the data written on 4 and on 1 ranks is the same (world_size differs, so not the bytes)
check "$(h5diff -q "$dir/w4.h5" "$dir/w1.h5" /model /model && h5diff -q "$dir/w4.h5" "$dir/w1.h5" /optim /optim && echo 1 || echo 0)" \
    "h5diff: /model and /optim written on 4 and on 1 ranks are identical"

# standard tools
h5ls -r "$dir/w4.h5" >"$dir/h5ls.txt" 2>&1
check "$(grep -q '^/model/wte *Dataset {128, 32}' "$dir/h5ls.txt" &&
    grep -q '^/optim/v/h.1.qkvw *Dataset {96, 32}' "$dir/h5ls.txt" &&
    grep -q '^/model/h.0.ln1w *Dataset {32}' "$dir/h5ls.txt" && echo 1 || echo 0)" \
    "h5ls lists /model/wte {128, 32}, /optim/v/h.1.qkvw {96, 32}, /model/h.0.ln1w {32}"
check "$(h5dump -a /format -a /step "$dir/w4.h5" 2>&1 | grep -q '"tpmpi-checkpoint"' &&
    h5dump -a /step "$dir/w4.h5" | grep -q '(0): 123' && echo 1 || echo 0)" \
    "h5dump reads the format and step attributes"
check "$(h5dump -d /model/h.0.qkvw -s 5,3 -c 1,1 "$dir/w4.h5" | grep -q '(5,3): 95.3594' && echo 1 || echo 0)" \
    "h5dump reads a value: /model/h.0.qkvw[5,3] = (2*3000 + 5*20 + 3)/64 = 95.359375"
if /usr/bin/python3 -c "import h5py, numpy" 2>/dev/null; then
    /usr/bin/python3 "$inspect" --verify "$dir/w4.h5" >"$dir/inspect.txt" 2>&1
    rc=$?
    check "$([ "$rc" -eq 0 ] && grep -q 'checksums: all 85 match' "$dir/inspect.txt" &&
        grep -q '^model/wte  *(128, 32)' "$dir/inspect.txt" && echo 1 || echo 0)" \
        "ckpt_inspect.py --verify: 85 datasets listed, every checksum recomputed in numpy matches"
    [ "$rc" -eq 0 ] || cat "$dir/inspect.txt"
    /usr/bin/python3 "$inspect" --json "$dir/w4.h5" >"$dir/json.txt" 2>&1
    check "$(grep -q '"test": true' "$dir/json.txt" && echo 1 || echo 0)" "ckpt_inspect.py --json prints the config"
else
    echo "skipped: /usr/bin/python3 has no h5py (apt-get install python3-h5py)"
fi

finish
