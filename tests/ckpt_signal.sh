#!/bin/sh
# SPDX-License-Identifier: MIT
# Stop signals: SIGUSR1 (what Slurm sends with --signal before the time limit) delivered to
# ONE rank only, SIGTERM and SIGINT delivered to every rank, and SIGUSR1 sent to mpirun
# itself (the supported way with a plain mpirun, docs/CHECKPOINT.md), make all ranks finish the current
# step, write a checkpoint and exit 0. The checkpoint then resumes to the same losses as an
# uninterrupted run (constant learning rate, so --steps does not change the schedule).
set -u
: "${TPMPI:?}" "${MPIRUN:?}"
. "$(dirname "$0")/train_lib.sh"
dir=${TOP_BUILDDIR:-.}/tests/ckpt_signal.d
rm -rf "$dir" && mkdir -p "$dir"
common="--mode=train --model=tiny --batch=2 --grad-accum=2 --seed=5 --lr=1e-3 --min-lr=1e-3 --threads=1 --log-every=100000"

nsteps() { if [ -f "$1" ]; then grep -c '"type":"step"' "$1"; else echo 0; fi; }

# stop NAME SIGNAL WHO: start a long run, signal rank 1 only (WHO=one) or every rank (all)
stop() {
    name=$1 sig=$2 who=$3
    $MPIRUN -np 2 "$TPMPI" $common --steps=100000 --ckpt-dir="$dir/$name" \
        --metrics="$dir/$name.jsonl" >"$dir/$name.log" 2>&1 &
    pid=$!
    i=0
    while [ $i -lt 600 ] && [ "$(nsteps "$dir/$name.jsonl")" -lt 3 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    ranks=$(pgrep -P "$pid")
    if [ "$who" = one ]; then
        # rank 1 only: rank 0 must learn of it through the per-step agreement
        for p in $ranks; do
            if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1'; then
                ranks=$p
                break
            fi
        done
    fi
    if [ "$who" = mpirun ]; then
        # plain mpirun forwards SIGUSR1 to every rank without killing them
        ranks=$pid
    fi
    echo "$name: sending SIG$sig to" $ranks
    kill -s "$sig" $ranks
    # the job must end by itself; a hang is caught by this watchdog
    (sleep 120 && kill -9 "$pid" 2>/dev/null) &
    dog=$!
    wait "$pid"
    rc=$?
    kill "$dog" 2>/dev/null
    step=$(sed -n 's/^ckpt_0*\([0-9][0-9]*\)\.h5$/\1/p' "$dir/$name/latest" 2>/dev/null)
    check "$([ "$rc" -eq 0 ] && echo 1 || echo 0)" "$name: SIG$sig to $who rank(s): every rank stops, exit status 0 (got $rc)"
    check "$([ -n "$step" ] && [ "$step" -ge 3 ] && [ "$step" -lt 100000 ] && \
        [ "$(nsteps "$dir/$name.jsonl")" -eq "$step" ] && echo 1 || echo 0)" \
        "$name: a checkpoint at the last finished step ($step)"
    check "$(grep -q 'received: stopping after step' "$dir/$name.log" && echo 1 || echo 0)" \
        "$name: the stop is announced"
    # the built-in corpus has a validation split: the summary must not say otherwise
    check "$(grep -q 'done: .*steps' "$dir/$name.log" && ! grep -q 'no validation split' "$dir/$name.log" && echo 1 || echo 0)" \
        "$name: the summary is printed and does not claim there is no validation split"
}

# resume_matches NAME: continue 5 steps past the checkpoint; compare with a straight run
resume_matches() {
    name=$1
    step=$(sed -n 's/^ckpt_0*\([0-9][0-9]*\)\.h5$/\1/p' "$dir/$name/latest")
    [ -n "$step" ] || { check 0 "$name: no checkpoint to resume"; return; }
    end=$((step + 5))
    timeout 300 $MPIRUN -np 2 "$TPMPI" $common --steps=$end --ckpt-dir="$dir/$name" --resume \
        --metrics="$dir/${name}_r.jsonl" >"$dir/${name}_r.log" 2>&1
    timeout 300 $MPIRUN -np 2 "$TPMPI" $common --steps=$end \
        --metrics="$dir/${name}_ref.jsonl" >"$dir/${name}_ref.log" 2>&1
    losses "$dir/${name}_ref.jsonl" | tail -n 5 >"$dir/${name}_ref"
    losses "$dir/${name}_r.jsonl" >"$dir/${name}_got"
    check "$([ "$(wc -l <"$dir/${name}_got")" -eq 5 ] && cmp -s "$dir/${name}_ref" "$dir/${name}_got" && echo 1 || echo 0)" \
        "$name: resuming at step $step gives the uninterrupted run's losses"
}

stop usr1 USR1 one
resume_matches usr1
stop term TERM all
stop int INT all
stop mpirun_usr1 USR1 mpirun

finish
