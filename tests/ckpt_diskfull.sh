#!/bin/sh
# SPDX-License-Identifier: MIT
# Checkpoints under write errors and full disks (issue 19), at N = 1, 2, 3, 4:
#  - a real full disk: a tmpfs of 8 MiB where the first checkpoint fits and the next ones do
#    not. The free-space probe refuses them with a message on every rank, training goes on,
#    and the run ends with exit 1 because its final checkpoint could not be written;
#  - --metrics on a full disk is an error;
#  - write errors below MPI-IO and HDF5: the LD_PRELOAD shim tests/shim/failwrite.so fails
#    pwrite/pwritev/write to *.h5.tmp after K bytes per rank (ENOSPC and EIO), on a run that
#    resumes from a good checkpoint.
# For every run: no hang (timeout), no crash (exit status 1, never a signal), the good
# checkpoint is still there, still named by "latest" and verifies (scripts/ckpt_inspect.py
# --verify, an independent reader), and every file under a complete name verifies.
# Needs root for the tmpfs (else that part is SKIPPED: exit 77 when nothing could run).
set -u
: "${TPMPI:?}" "${MPIRUN:?}" "${TOP_BUILDDIR:?}" "${TOP_SRCDIR:?}"
. "$(dirname "$0")/train_lib.sh"
dir=$TOP_BUILDDIR/tests/ckpt_diskfull.d
shim=$TOP_BUILDDIR/tests/shim/failwrite.so
inspect=$TOP_SRCDIR/scripts/ckpt_inspect.py
common="--mode=train --model=tiny --batch=2 --seed=7 --threads=1 --log-every=100000"
rm -rf "$dir" && mkdir -p "$dir"
ran=0

if ! /usr/bin/python3 -c 'import h5py, numpy' 2>/dev/null; then
    echo "SKIP: h5py is needed to verify the files independently"
    exit 77
fi
[ -f "$shim" ] || { echo "FAIL: $shim was not built"; exit 1; }

# verify_dir DIR LABEL: every complete checkpoint verifies; latest names a complete one
verify_dir() {
    bad=0 n=0
    for f in "$1"/ckpt_*.h5; do
        [ -e "$f" ] || continue
        n=$((n + 1))
        /usr/bin/python3 "$inspect" --verify "$f" >/dev/null 2>&1 || { bad=1; echo "    unreadable: $f"; }
    done
    latest=$(cat "$1/latest" 2>/dev/null)
    check "$([ "$bad" -eq 0 ] && [ "$n" -ge 1 ] && [ -f "$1/$latest" ] && echo 1 || echo 0)" \
        "$2: $n complete file(s), all verify, latest ($latest) exists"
}

# the exit status of a failed run: 1, not a signal (>128) nor a timeout (124)
rc_ok() { [ "$1" -eq 1 ]; }

# ---- part 1: a real full disk (tmpfs) ------------------------------------------------------
mnt=$dir/tmpfs
mkdir -p "$mnt"
if mount -t tmpfs -o size=8M tmpfs "$mnt" 2>/dev/null; then
    trap 'umount "$mnt" 2>/dev/null' EXIT INT TERM
    for np in 1 2 3 4; do
        rm -rf "${mnt:?}"/*
        timeout 120 $MPIRUN --oversubscribe -np $np "$TPMPI" $common --steps=6 --ckpt-every=2 \
            --keep=3 --ckpt-dir="$mnt/c" --metrics="$dir/full$np.jsonl" >"$dir/full$np.log" 2>&1
        rc=$?
        nmsg=$(grep -c "was not written" "$dir/full$np.log")
        check "$(rc_ok $rc && echo 1 || echo 0)" "tmpfs N=$np: exit status 1 (got $rc)"
        check "$(grep -q 'no room for checkpoint' "$dir/full$np.log" && [ "$nmsg" -ge "$np" ] && echo 1 || echo 0)" \
            "tmpfs N=$np: 'no room' named, 'not written' on every rank ($nmsg lines)"
        check "$(grep -q 'training goes on' "$dir/full$np.log" && [ "$(grep -c '"type":"step"' "$dir/full$np.jsonl")" -eq 6 ] && echo 1 || echo 0)" \
            "tmpfs N=$np: training went on to step 6 after the failed checkpoint of step 4"
        check "$([ "$(cat "$mnt/c/latest" 2>/dev/null)" = ckpt_00000002.h5 ] && echo 1 || echo 0)" \
            "tmpfs N=$np: latest still names the checkpoint of step 2"
        verify_dir "$mnt/c" "tmpfs N=$np"
        ls "$mnt/c" | grep -q '\.tmp$' && check 0 "tmpfs N=$np: no temporary left behind" ||
            check 1 "tmpfs N=$np: no temporary left behind"
        ran=1
    done
    # --metrics on a full disk: an error (exit 1), not an empty file and exit 0
    rm -rf "${mnt:?}"/*
    dd if=/dev/zero of="$mnt/fill" bs=64k 2>/dev/null
    timeout 120 $MPIRUN -np 2 "$TPMPI" $common --steps=3 --metrics="$mnt/m.jsonl" \
        >"$dir/metrics_full.log" 2>&1
    rc=$?
    check "$([ "$rc" -eq 1 ] && grep -q 'writing metrics file .* failed: No space left' "$dir/metrics_full.log" && echo 1 || echo 0)" \
        "--metrics on a full disk: the failure is named, exit status 1 (got $rc)"
    umount "$mnt"
    trap - EXIT INT TERM
else
    echo "SKIP (part 1): cannot mount a tmpfs here (not root?)"
fi

# ---- part 2: injected write errors (LD_PRELOAD shim) ---------------------------------------
timeout 120 $MPIRUN -np 2 "$TPMPI" $common --steps=2 --ckpt-dir="$dir/good" >"$dir/good.log" 2>&1 ||
    { cat "$dir/good.log"; echo "FAIL: could not write the good checkpoint"; exit 1; }
asan=$(ldd "$TPMPI" 2>/dev/null | awk '/libasan/ {print $3}')
preload="${asan:+$asan }$shim"
for np in 1 2 3 4; do
    for k in 0 100000 1000000; do
        for e in ENOSPC EIO; do
            name=shim_${np}_${k}_$e
            rm -rf "$dir/$name" && cp -r "$dir/good" "$dir/$name"
            timeout 120 $MPIRUN --oversubscribe -np $np -x LD_PRELOAD="$preload" \
                -x TPM_FAILWRITE_AFTER=$k -x TPM_FAILWRITE_ERRNO=$e \
                "$TPMPI" $common --steps=4 --ckpt-every=2 --resume --ckpt-dir="$dir/$name" \
                >"$dir/$name.log" 2>&1
            rc=$?
            quiet_ok=1
            check "$(rc_ok $rc && echo 1 || echo 0)" "$name: exit status 1 (got $rc)"
            check "$(grep -q -e 'I/O error inside HDF5' -e 'a write was lost' -e 'failed on some ranks only' "$dir/$name.log" && echo 1 || echo 0)" \
                "$name: the failure is named"
            check "$([ "$(cat "$dir/$name/latest")" = ckpt_00000002.h5 ] && echo 1 || echo 0)" \
                "$name: latest still names the good checkpoint"
            verify_dir "$dir/$name" "$name"
            quiet_ok=0
        done
    done
    echo "shim N=$np: $pass passed, $fail failed so far"
    ran=1
done

[ "$ran" -eq 1 ] || exit 77
finish
