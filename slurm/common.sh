# shellcheck shell=bash
# SPDX-License-Identifier: MIT
#
# common.sh: helpers shared by train.slurm and serve.slurm (sourced, not run). They find the
# tpmpi binary, pick the launcher (srun --mpi=pmix, or mpirun inside the allocation), log what
# runs, and run the ranks in the background so that the batch shell can forward signals to
# them (bash runs a trap only between commands, never while a foreground command runs).
#
# Knobs (environment):
#   TPMPI_BIN        tpmpi binary (default: build/tpmpi of the tree the job script is in)
#   TPMPI_LAUNCHER   srun (default: srun --mpi=pmix) | mpirun (Open MPI's mpirun, which reads
#                    the Slurm allocation itself; for sites whose Slurm has no PMIx plugin)
#   TPMPI_SRUN_ARGS, TPMPI_MPIRUN_ARGS   extra launcher arguments (split on blanks)
#   TPMPI_THREADS    threads per rank (default: the job's --cpus-per-task)
# Every other TPMPI_<NAME> variable is an option of tpmpi itself (tpmpi --help) and reaches
# the ranks through the environment: sbatch exports the submitting shell's environment.

# tpm_slurm_setup ROOT: resolve the binary, launcher and threads; print the job header.
tpm_slurm_setup() {
    local root=$1
    TPMPI_BIN=${TPMPI_BIN:-$root/build/tpmpi}
    if [ ! -x "$TPMPI_BIN" ]; then
        # No make here: building inside a batch job races with other jobs on a shared tree.
        echo "tpmpi: $TPMPI_BIN is not an executable; build it first (cd build && make) or set TPMPI_BIN" >&2
        return 2
    fi
    TPMPI_LAUNCHER=${TPMPI_LAUNCHER:-srun}
    case "$TPMPI_LAUNCHER" in
    srun | mpirun) ;;
    *)
        echo "tpmpi: TPMPI_LAUNCHER must be srun or mpirun (got '$TPMPI_LAUNCHER')" >&2
        return 2
        ;;
    esac
    # One OpenMP/BLAS thread per core the job gave each rank.
    export TPMPI_THREADS=${TPMPI_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
    export OMP_NUM_THREADS=$TPMPI_THREADS
    echo "==== tpmpi job ${SLURM_JOB_ID:-none} (${SLURM_JOB_NAME:-}) restart ${SLURM_RESTART_COUNT:-0}" \
        "on ${SLURM_JOB_NODELIST:-$(hostname)} at $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "==== tree $root ($(git -C "$root" describe --always --dirty 2>/dev/null || echo 'no git'))," \
        "binary $TPMPI_BIN, launcher $TPMPI_LAUNCHER, ranks ${SLURM_NTASKS:-?}, threads $TPMPI_THREADS"
    echo "==== options from the environment:"
    env | grep '^TPMPI_' | grep -v '^TPMPI_API_KEY=' | sort | sed 's/^/     /'
}

# tpm_slurm_cmd ARGS...: fill the array `launch` with the launcher command for tpmpi ARGS.
tpm_slurm_cmd() {
    local extra
    if [ "$TPMPI_LAUNCHER" = srun ]; then
        read -r -a extra <<<"${TPMPI_SRUN_ARGS:-}"
        # srun 22.05+ no longer inherits --cpus-per-task from the job: pass it, or every rank
        # would be bound to one core whatever TPMPI_THREADS says.
        launch=(srun --mpi=pmix --kill-on-bad-exit=1 --cpu-bind=cores
            --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" "${extra[@]}" "$TPMPI_BIN" "$@")
    else
        read -r -a extra <<<"${TPMPI_MPIRUN_ARGS:-}"
        if [ "$(id -u)" -eq 0 ]; then
            # Open MPI refuses root unless both are set; srun needs neither.
            export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
        fi
        # Slurm sends TERM to mpirun as well as to the ranks (preemption, scancel, time limit);
        # mpirun then kills the ranks, with KILL after odls_base_sigkill_timeout (1 s by
        # default). Give them time to write their checkpoint, within Slurm's KillWait (30 s).
        export OMPI_MCA_odls_base_sigkill_timeout=${OMPI_MCA_odls_base_sigkill_timeout:-20}
        # mpirun takes the rank count and hosts from the allocation. It binds each rank to one
        # core by default, which would starve a rank running several threads.
        local bind=(--bind-to core)
        if [ "${TPMPI_THREADS}" -gt 1 ]; then
            bind=(--bind-to none)
        fi
        launch=(mpirun -np "${SLURM_NTASKS:-1}" "${bind[@]}" "${extra[@]}" "$TPMPI_BIN" "$@")
    fi
}

# tpm_ckpt_latest_step DIR: print the step of DIR's newest complete checkpoint, or nothing when
# there is none yet. Like tpmpi --resume: the file named by DIR/latest (one line,
# ckpt_<step>.h5), else the highest-numbered ckpt_<step>.h5 (a *.tmp file is incomplete).
tpm_ckpt_latest_step() {
    local name=
    if [ -f "$1/latest" ]; then
        name=$(head -n 1 "$1/latest")
    else
        name=$(cd "$1" 2>/dev/null && ls -1 ckpt_*.h5 2>/dev/null | sort | tail -n 1) || true
    fi
    case "$name" in
    ckpt_*.h5)
        name=${name#ckpt_}
        echo "$((10#${name%.h5}))"
        ;;
    esac
}

# tpm_slurm_forward SIG: trap handler; remember the signal and pass it on to the launcher,
# which passes it on to every rank. TERM and INT go on as $tpm_slurm_stop_signal (USR1 unless
# the job script says otherwise): srun answers TERM by killing its tasks ("forcing job
# termination") and mpirun does the same, at once on a second TERM (Slurm sends one itself to
# every process of the job), so neither must get TERM from us while the ranks checkpoint;
# USR1 they both pass on as it is, and tpmpi treats USR1 and TERM alike when training.
tpm_slurm_forward() {
    local sig=$1
    tpm_slurm_signal=$1
    if [ "$sig" != USR1 ]; then
        sig=${tpm_slurm_stop_signal:-USR1}
    fi
    echo "==== batch shell got SIG$1 at $(date -u +%H:%M:%S); sending SIG$sig to the launcher"
    if [ -n "${tpm_slurm_pid:-}" ]; then
        kill -s "$sig" "$tpm_slurm_pid" 2>/dev/null || true
    fi
}

# tpm_slurm_run ARGS...: run tpmpi ARGS under the launcher in the background, forwarding USR1,
# TERM and INT, and wait until it exits. Sets tpm_slurm_rc (its exit status) and
# tpm_slurm_signal (the last signal forwarded, or empty).
tpm_slurm_run() {
    local launch
    tpm_slurm_cmd "$@"
    tpm_slurm_signal=
    tpm_slurm_pid=
    trap 'tpm_slurm_forward USR1' USR1
    trap 'tpm_slurm_forward TERM' TERM
    trap 'tpm_slurm_forward INT' INT
    echo "==== ${launch[*]}"
    "${launch[@]}" &
    tpm_slurm_pid=$!
    # `wait` returns early (status > 128) when a trapped signal arrives: keep waiting until the
    # launcher itself is gone. A zombie still answers kill -0, so its status is not lost.
    while :; do
        tpm_slurm_rc=0
        wait "$tpm_slurm_pid" || tpm_slurm_rc=$?
        if ! kill -0 "$tpm_slurm_pid" 2>/dev/null; then
            break
        fi
        if tpm_slurm_mpirun_aborting; then
            # mpirun on TERM (Slurm sends it to every process of the job) kills its ranks,
            # after odls_base_sigkill_timeout (set above), then lingers: once the ranks have
            # checkpointed and exited, a second TERM makes it stop at once.
            tpm_slurm_wait_ranks
            kill -s TERM "$tpm_slurm_pid" 2>/dev/null || true
        fi
    done
    tpm_slurm_pid=
    trap - USR1 TERM INT
    echo "==== launcher exited with status $tpm_slurm_rc at $(date -u +%H:%M:%S)"
    if tpm_slurm_mpirun_aborting; then
        # ... or it exits first and leaves its local ranks writing their checkpoint, and Slurm
        # kills whatever is left of the job once this shell exits.
        tpm_slurm_wait_ranks
    fi
}

tpm_slurm_mpirun_aborting() {
    [ "$TPMPI_LAUNCHER" = mpirun ] && { [ "$tpm_slurm_signal" = TERM ] || [ "$tpm_slurm_signal" = INT ]; }
}

# tpm_slurm_wait_ranks: wait (up to 25 s, within Slurm's KillWait of 30 s) until no live tpmpi
# process is left in this job's session on this node (slurmstepd makes the batch shell a
# session leader, and mpirun's children stay in its session). Zombies have exited already.
tpm_slurm_wait_ranks() {
    local sid name end=$((SECONDS + 25))
    sid=$(ps -o sid= -p $$ | tr -d ' ')
    name=$(basename "$TPMPI_BIN")
    name=${name:0:15} # the kernel's process name is at most 15 characters
    while [ -n "$sid" ] &&
        ps -s "$sid" -o stat=,comm= | awk -v n="$name" '$2 == n && $1 !~ /^Z/ { f = 1 } END { exit !f }'; do
        if [ "$SECONDS" -ge "$end" ]; then
            echo "==== ranks still running 25 s after the stop signal" >&2
            return
        fi
        sleep 0.2
    done
}
