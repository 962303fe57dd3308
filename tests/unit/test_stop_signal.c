/* SPDX-License-Identifier: MIT */
/*
 * test_stop_signal.c: the stop-signal flag (src/base/stop_signal.c): a routed signal is
 * recorded with its number and sets the caller's flag, other signals are left alone, and
 * restore puts the old dispositions back.
 */
#include "base/stop_signal.h"

#include <criterion/criterion.h>
#include <signal.h>

TestSuite(stop_signal, .timeout = 10);

static const int sigs[] = {SIGUSR1, SIGUSR2};

Test(stop_signal, a_routed_signal_is_recorded_and_sets_the_flag)
{
    tpm_stop_signals_t saved;
    volatile int       flag = 0;

    tpm_stop_signals_install(sigs, 2, &flag, &saved);
    cr_assert_eq(saved.n, 2);
    cr_assert_eq(tpm_stop_signal(), 0);
    raise(SIGUSR2);
    cr_assert_eq(tpm_stop_signal(), SIGUSR2);
    cr_assert_eq(flag, 1);
    raise(SIGUSR1);
    cr_assert_eq(tpm_stop_signal(), SIGUSR1);
    tpm_stop_signals_restore(&saved);
    cr_assert_eq(tpm_stop_signal(), SIGUSR1, "the flag outlives restore");
}

Test(stop_signal, install_clears_the_flag_and_restore_puts_the_old_handler_back)
{
    tpm_stop_signals_t saved;
    struct sigaction   sa;

    signal(SIGUSR1, SIG_IGN);
    tpm_stop_signals_install(sigs, 1, NULL, &saved);
    cr_assert_eq(tpm_stop_signal(), 0);
    cr_assert_eq(sigaction(SIGUSR1, NULL, &sa), 0);
    cr_assert_neq(sa.sa_handler, SIG_IGN);
    raise(SIGUSR1); /* no flag pointer: only the number */
    cr_assert_eq(tpm_stop_signal(), SIGUSR1);
    tpm_stop_signals_restore(&saved);
    cr_assert_eq(sigaction(SIGUSR1, NULL, &sa), 0);
    cr_assert_eq(sa.sa_handler, SIG_IGN);
    cr_assert_eq(sigaction(SIGUSR2, NULL, &sa), 0);
    cr_assert_eq(sa.sa_handler, SIG_DFL, "a signal not in the list is not touched");
    signal(SIGUSR1, SIG_DFL);
}
