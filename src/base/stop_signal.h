/* SPDX-License-Identifier: MIT */
/*
 * stop_signal.h: the signals that ask a run to stop cleanly, for every mode. The handler
 * only records the signal (async-signal-safe); the ranks then agree on stopping through
 * their next collective, never in the handler.
 *
 * Which signals reach the ranks, and when, depends on the launcher (docs/SERVING.md,
 * Shutdown): srun and Slurm deliver TERM to every task at once; Open MPI's mpirun forwards
 * USR1 and USR2 at once but answers TERM and INT by killing the job (SIGCONT, then SIGTERM
 * after odls_base_sigkill_timeout, then SIGKILL after as long again, and exit status 1
 * whatever the ranks do). So a mode that must be stoppable through mpirun with exit 0
 * also listens to USR1 (or USR2).
 */
#ifndef TPM_BASE_STOP_SIGNAL_H
#define TPM_BASE_STOP_SIGNAL_H

#include <signal.h>

#define TPM_STOP_MAX_SIGNALS 8

/** The previous dispositions, to put back with tpm_stop_signals_restore(). */
typedef struct tpm_stop_signals {
    int              n;
    int              sig[TPM_STOP_MAX_SIGNALS];
    struct sigaction old[TPM_STOP_MAX_SIGNALS];
} tpm_stop_signals_t;

/**
 * Route the @p n signals of @p sigs (at most TPM_STOP_MAX_SIGNALS; extra ones are ignored)
 * to the stop flag, which is cleared first. When @p also_p is not NULL the handler also
 * stores 1 there (a plain int store, as the serve engine's stats->stop expects). One set
 * at a time per process; @p saved receives what to restore.
 */
void tpm_stop_signals_install(const int *sigs, int n, volatile int *also_p,
                              tpm_stop_signals_t *saved);

/** Put back the dispositions saved by tpm_stop_signals_install(); the flag stays. */
void tpm_stop_signals_restore(const tpm_stop_signals_t *saved);

/** The last stop signal received since install (its number), or 0. */
int tpm_stop_signal(void);

#endif /* TPM_BASE_STOP_SIGNAL_H */
