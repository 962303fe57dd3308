#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# slurm_test.sh: slurm/train.slurm on a throw-away one-node Slurm cluster on localhost
# (PLATFORM.md §6): munged, slurmctld and slurmd run from a temporary folder on free ports and
# are stopped by PID on exit. scripts/test runs it after make check; alone:
#
#   TPMPI=build/tpmpi tests/slurm_test.sh
#
# Cases (tiny model, one thread per rank, built-in corpus):
#   1. train.slurm with srun --mpi=pmix, 2 ranks: completes, checkpoints at steps 10 and 20.
#   2. the same run directory resubmitted with more steps and TPMPI_LAUNCHER=mpirun: the script
#      passes --resume by itself and training continues from step 20.
#   3. USR1 to the batch shell mid-run (as --signal=B:USR1@... does before the time limit):
#      the ranks checkpoint and exit 0, the script requeues the job, the requeued job resumes
#      from that checkpoint and finishes; the step count continues.
#   4. scontrol requeue of a running job (what preemption does): TERM, checkpoint, resume.
#   5. the same TERM under TPMPI_LAUNCHER=mpirun: the checkpoint is still written.
#   6. serve.slurm on that checkpoint, 2 ranks: /health, one completion over HTTP, scancel.
# TPM_SLURM_TEST_KEEP=1 keeps the temporary folder (job logs, run folders) after a pass.
# Needs root to install slurm-wlm and munge when they are missing (scripts/install-deps
# installs them); exits 77 (skipped) when it cannot. Every wait has a time-out; on failure the
# Slurm daemon logs and job logs are printed.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
TPMPI_BIN=${TPMPI:-$top/build/tpmpi}
# absolute: the job runs from the submit folder, which need not be this one
TPMPI_BIN=$(cd "$(dirname "$TPMPI_BIN")" && pwd)/$(basename "$TPMPI_BIN")
export TPMPI_BIN
export TPMPI_CACHE=${TPMPI_CACHE:-$(dirname "$TPMPI_BIN")/tests/cache}
if [ ! -x "$TPMPI_BIN" ]; then
    echo "slurm_test: $TPMPI_BIN not built" >&2
    exit 1
fi
t0=$SECONDS
say() { echo "---- [$((SECONDS - t0))s] $*"; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "slurm_test: SKIP: slurm-wlm/munge not installed and not root to install them"
        exit 77
    fi
    say "installing slurm-wlm and munge"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge ||
        { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
            --no-install-recommends slurm-wlm munge; }
fi
if [ "$(id -u)" -ne 0 ]; then
    # munged runs as the munge user (setpriv execs it, so its PID is ours) and slurmd as root.
    echo "slurm_test: SKIP: needs root to run the Slurm daemons"
    exit 77
fi

# Under /tmp, not the build tree: munged's socket folder and every folder above it must be
# reachable by the munge user, and socket paths are limited to ~100 bytes.
work=$(mktemp -d /tmp/tpmpi-slurm.XXXXXX)
chmod 755 "$work"
mkdir -p "$work"/{state,spool,log,munge,jobs,tmp}
chown munge:munge "$work/munge"
chmod 755 "$work/munge" # 700 fails: "Socket is inaccessible: execute permissions for all required"
pids=()
failed=1

dump_logs() {
    local f
    for f in "$work"/log/* "$work"/*.out "$work"/jobs/*.out; do
        [ -f "$f" ] || continue
        echo "================ $f"
        tail -n 80 "$f"
    done
}
cleanup() {
    local pid i
    if [ "$failed" = 1 ]; then
        echo "slurm_test: FAILED; logs follow"
        dump_logs
    fi
    if [ -n "${SLURM_CONF:-}" ] && [ -f "$SLURM_CONF" ]; then
        squeue -h -o %i 2>/dev/null | xargs -r scancel --quiet 2>/dev/null || true
        for i in $(seq 20); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    # slurmd first, then slurmctld, then munged, each by the PID we started.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid=${pids[$i]}
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$failed" = 0 ] && [ "${TPM_SLURM_TEST_KEEP:-0}" != 1 ]; then
        rm -rf "$work"
    else
        echo "slurm_test: files kept in $work"
    fi
}
trap cleanup EXIT

# wait_for SECONDS WHAT COMMAND...: poll COMMAND every 0.5 s until it succeeds.
wait_for() {
    local limit=$1 what=$2 end=$((SECONDS + $1))
    shift 2
    until "$@"; do
        if [ "$SECONDS" -ge "$end" ]; then
            echo "slurm_test: timed out after ${limit}s waiting for $what" >&2
            return 1
        fi
        sleep 0.5
    done
}

free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---- the cluster -------------------------------------------------------------------------------
ctld_port=$(free_port)
d_port=$(free_port)
while [ "$d_port" = "$ctld_port" ]; do d_port=$(free_port); done
# cred_expire (default 120 s) is also how long a requeued job waits before it may start again:
# 10 s keeps the requeue cases short. srun --mpi=pmix makes a folder named after the job and step under TmpFS: a private TmpFS and
# job ids that differ from run to run keep two test clusters (or a killed one's leftovers)
# from colliding.
first_job=$((RANDOM * 30 + 1000))
export SLURM_CONF=$work/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=tpmtest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$work/munge/munge.socket.2,cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=30
StateSaveLocation=$work/state
TmpFS=$work/tmp
FirstJobId=$first_job
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmctldDebug=info
SlurmdDebug=info
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
say "starting munged, slurmctld (port $ctld_port) and slurmd (port $d_port) in $work"
setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F --socket="$work/munge/munge.socket.2" \
    --pid-file="$work/munge/munged.pid" --log-file="$work/log/munged.log" \
    --seed-file="$work/munge/munged.seed" >"$work/munged.out" 2>&1 &
pids+=($!)
wait_for 10 "munged" test -S "$work/munge/munge.socket.2"
slurmctld -D -i -f "$SLURM_CONF" >"$work/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -N localhost -f "$SLURM_CONF" >"$work/slurmd.out" 2>&1 &
pids+=($!)
node_idle() { sinfo -h -o %T 2>/dev/null | grep -qx idle; }
wait_for 30 "the node to be idle" node_idle

pass=0
fail=0
check() {
    if [ "$1" = 1 ]; then
        pass=$((pass + 1))
        echo "ok: $2"
    else
        fail=$((fail + 1))
        echo "FAIL: $2"
    fi
}
ok() { if "$@"; then echo 1; else echo 0; fi; }

# Poll squeue (sbatch --wait polls every 10 s).
job_gone() { [ -z "$(squeue -h -j "$1" -o %i 2>/dev/null)" ]; }
job_state() { scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
job_pending() { [ "$(job_state "$1")" = PENDING ]; }
latest_step() { (. "$top/slurm/common.sh" && tpm_ckpt_latest_step "$1"); }
has_ckpt() { [ -n "$(latest_step "$1")" ]; }
# step_of_metrics FILE: the last step record's step
last_metrics_step() { sed -n 's/.*"type":"step","step":\([0-9]*\),.*/\1/p' "$1" 2>/dev/null | tail -n 1; }
# running_past JOB FILE STEP: the job's metrics reached STEP, or the job is gone (then the
# checks that follow fail, without waiting for the time-out)
running_past() { job_gone "$1" || [ "$(last_metrics_step "$2")" -ge "$3" ] 2>/dev/null; }
# continues FILE K END: the step records from K+1 on are K+1, K+2, ..., END with no restart
continues() {
    sed -n 's/.*"type":"step","step":\([0-9]*\),.*/\1/p' "$1" |
        awk -v k="$2" -v end="$3" '$1 == k + 1 { on = 1; want = k + 1 }
            on { if ($1 != want) bad = 1; want++ }
            END { exit !(on && !bad && want == end + 1) }'
}
submit() { # submit NAME [sbatch args...]: prints the job id
    local name=$1
    shift
    sbatch --parsable --output="$work/jobs/$name-%j.out" "$@" "$top/slurm/train.slurm"
}
common_env() {
    export TPMPI_MODEL=tiny TPMPI_THREADS=1 TPMPI_LOG_EVERY=50 TPMPI_EVAL_BATCHES=1
    unset TPMPI_LAUNCHER TPMPI_RESUME TPMPI_CKPT_EVERY TPMPI_CKPT_DIR TPMPI_STEPS 2>/dev/null || true
}

# ---- 1: a complete run with srun --mpi=pmix --------------------------------------------------
say "case 1: train.slurm, srun --mpi=pmix, 2 ranks, 20 steps, checkpoint every 10"
common_env
run1=$work/run1
j=$(TPMPI_OUT=$run1 TPMPI_STEPS=20 TPMPI_CKPT_EVERY=10 submit c1 --ntasks=2)
wait_for 120 "job $j" job_gone "$j"
log=$(ls "$work"/jobs/c1-"$j".out)
check "$(ok test "$(job_state "$j")" = COMPLETED)" "case 1: job $j COMPLETED ($(job_state "$j"))"
check "$(ok grep -q 'srun --mpi=pmix' "$log")" "case 1: launched with srun --mpi=pmix"
check "$(ok grep -q 'done: 20 steps' "$log")" "case 1: 20 steps trained"
check "$(ok test "$(latest_step "$run1/ckpt")" = 20)" "case 1: latest checkpoint is step 20"
check "$(ok test -f "$run1/ckpt/ckpt_00000010.h5")" "case 1: step-10 checkpoint kept"
check "$(ok sh -c "h5ls -r '$run1/ckpt/ckpt_00000020.h5' | grep -q '/model/wte'")" \
    "case 1: checkpoint holds /model/wte (h5ls)"
check "$(ok grep -q 'resume_from=none' "$run1/slurm-jobs.txt")" "case 1: fresh start recorded"

# ---- 2: resubmission resumes, with the mpirun launcher --------------------------------------
say "case 2: resubmit the same run to 30 steps with TPMPI_LAUNCHER=mpirun"
common_env
j=$(TPMPI_OUT=$run1 TPMPI_STEPS=30 TPMPI_LAUNCHER=mpirun submit c2 --ntasks=2)
wait_for 120 "job $j" job_gone "$j"
log=$(ls "$work"/jobs/c2-"$j".out)
check "$(ok test "$(job_state "$j")" = COMPLETED)" "case 2: job $j COMPLETED ($(job_state "$j"))"
check "$(ok grep -q '^==== mpirun -np 2' "$log")" "case 2: launched with mpirun -np 2"
check "$(ok grep -q 'resuming from .*step 20' "$log")" "case 2: resumed from step 20"
check "$(ok test "$(latest_step "$run1/ckpt")" = 30)" "case 2: latest checkpoint is step 30"
check "$(ok continues "$run1/metrics.jsonl" 20 30)" "case 2: steps 21..30 follow step 20"

# ---- 3: USR1 -> checkpoint -> self-requeue -> resume ---------------------------------------
say "case 3: USR1 to the batch shell mid-run, then the requeued job resumes"
common_env
run3=$work/run3
steps3=300
j=$(TPMPI_OUT=$run3 TPMPI_STEPS=$steps3 submit c3 --ntasks=2)
wait_for 60 "job $j to pass step 30" running_past "$j" "$run3/metrics.jsonl" 30
scancel --signal=USR1 --batch "$j"
# The script requeues the job once the ranks have checkpointed; the requeued job starts again
# after cred_expire.
wait_for 60 "job $j to be requeued" job_pending "$j"
k=$(latest_step "$run3/ckpt")
log=$(ls "$work"/jobs/c3-"$j".out)
check "$(ok grep -q 'received: stopping after step' "$log")" "case 3: ranks stopped on USR1"
check "$(ok test -n "$k")" "case 3: checkpoint written on USR1 (step ${k:-none})"
check "$(ok test "${k:-0}" -ge 30 -a "${k:-0}" -lt "$steps3")" "case 3: 30 <= step $k < $steps3"
check "$(ok grep -q "requeueing job $j" "$log")" "case 3: the script requeued the job"
wait_for 150 "requeued job $j" job_gone "$j"
check "$(ok test "$(job_state "$j")" = COMPLETED)" "case 3: job $j COMPLETED ($(job_state "$j"))"
check "$(ok grep -q "restart 1" "$log")" "case 3: second start is restart 1"
check "$(ok grep -q "resuming from .*step ${k:-x}," "$log")" "case 3: resumed from step $k"
check "$(ok test "$(latest_step "$run3/ckpt")" = "$steps3")" "case 3: finished at step $steps3"
check "$(ok continues "$run3/metrics.jsonl" "${k:-0}" "$steps3")" \
    "case 3: steps $((${k:-0} + 1))..$steps3 follow step $k"

# ---- 4: scontrol requeue of a running job (preemption): TERM -> checkpoint -> resume ---------
say "case 4: scontrol requeue mid-run (TERM), then the job resumes"
common_env
run4=$work/run4
j=$(TPMPI_OUT=$run4 TPMPI_STEPS=$steps3 submit c4 --ntasks=2)
wait_for 60 "job $j to pass step 30" running_past "$j" "$run4/metrics.jsonl" 30
scontrol requeue "$j"
wait_for 60 "job $j to be requeued" job_pending "$j"
# The ranks write their checkpoint while Slurm waits up to KillWait before SIGKILL.
wait_for 40 "the TERM checkpoint" has_ckpt "$run4/ckpt"
k=$(latest_step "$run4/ckpt")
log=$(ls "$work"/jobs/c4-"$j".out)
check "$(ok test "${k:-0}" -ge 30 -a "${k:-0}" -lt "$steps3")" "case 4: TERM checkpoint at step ${k:-none}"
wait_for 150 "requeued job $j" job_gone "$j"
check "$(ok test "$(job_state "$j")" = COMPLETED)" "case 4: job $j COMPLETED ($(job_state "$j"))"
check "$(ok grep -q "resuming from .*step ${k:-x}," "$log")" "case 4: resumed from step $k"
check "$(ok continues "$run4/metrics.jsonl" "${k:-0}" "$steps3")" \
    "case 4: steps $((${k:-0} + 1))..$steps3 follow step $k"

# ---- 5: the same TERM with TPMPI_LAUNCHER=mpirun: mpirun kills its ranks on TERM, and
# common.sh gives them time to write the checkpoint first (odls_base_sigkill_timeout).
say "case 5: scontrol requeue mid-run under mpirun: the TERM checkpoint is still written"
common_env
run5=$work/run5
j=$(TPMPI_OUT=$run5 TPMPI_STEPS=$steps3 TPMPI_LAUNCHER=mpirun submit c5 --ntasks=2)
wait_for 60 "job $j to pass step 30" running_past "$j" "$run5/metrics.jsonl" 30
scontrol requeue "$j"
wait_for 40 "the TERM checkpoint" has_ckpt "$run5/ckpt"
k=$(latest_step "$run5/ckpt")
check "$(ok test "${k:-0}" -ge 30 -a "${k:-0}" -lt "$steps3")" "case 5: TERM checkpoint at step ${k:-none}"
scancel "$j" # its resume under mpirun was case 2

# ---- 6: serve.slurm on the checkpoint of cases 1-2: HTTP on rank 0, scancel stops it -------
say "case 6: serve.slurm, 2 ranks, a completion over HTTP, then scancel"
common_env
port=$(free_port)
j=$(TPMPI_CKPT=$run1/ckpt TPMPI_PORT=$port sbatch --parsable --ntasks=2 \
    --output="$work/jobs/c6-%j.out" "$top/slurm/serve.slurm")
healthy() { job_gone "$1" || curl -sf -m 2 "http://127.0.0.1:$2/health" >/dev/null; }
wait_for 60 "the server of job $j" healthy "$j" "$port"
reply=$(curl -s -m 20 "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
    -d '{"prompt": "The", "max_tokens": 4, "temperature": 0}' || true)
log=$(ls "$work"/jobs/c6-"$j".out)
check "$(ok grep -q '^==== serving .*run1/ckpt at http://127.0.0.1:'"$port" "$log")" \
    "case 6: the log says where it serves"
check "$(ok grep -q '"completion_tokens":4' <<<"$reply")" "case 6: completion of 4 tokens ($reply)"
scancel "$j"
wait_for 60 "job $j to end" job_gone "$j"
check "$(ok grep -q 'batch shell got SIGTERM' "$log")" "case 6: scancel's TERM reached the batch shell"
check "$(ok sh -c "! curl -sf -m 2 http://127.0.0.1:$port/health")" "case 6: the server is gone"

say "done"
if [ "$fail" -eq 0 ]; then
    failed=0
fi
echo "slurm_test: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
