/* SPDX-License-Identifier: MIT */
/*
 * stop_signal.c: record a stop signal in a flag (stop_signal.h). The handler does two
 * stores and nothing else, so it is async-signal-safe; SA_RESTART keeps slow system calls
 * of other threads from failing with EINTR because of it.
 */
#include "base/stop_signal.h"

#include <string.h>

static volatile sig_atomic_t stop_sig;
static volatile int *volatile stop_also;

static void stop_handler(int sig)
{
    volatile int *also = stop_also;

    stop_sig = sig;
    if (also != NULL) {
        *also = 1;
    }
}

void tpm_stop_signals_install(const int *sigs, int n, volatile int *also_p,
                              tpm_stop_signals_t *saved)
{
    struct sigaction sa;

    memset(saved, 0, sizeof(*saved));
    stop_sig  = 0;
    stop_also = also_p;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = stop_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (int i = 0; i < n && i < TPM_STOP_MAX_SIGNALS; i++) {
        saved->sig[saved->n] = sigs[i];
        if (sigaction(sigs[i], &sa, &saved->old[saved->n]) == 0) {
            saved->n++;
        }
    }
}

void tpm_stop_signals_restore(const tpm_stop_signals_t *saved)
{
    for (int i = 0; i < saved->n; i++) {
        sigaction(saved->sig[i], &saved->old[i], NULL);
    }
    stop_also = NULL;
}

int tpm_stop_signal(void)
{
    return (int)stop_sig;
}
