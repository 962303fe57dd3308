/* SPDX-License-Identifier: MIT */
/* timer.h: monotonic wall clock. */
#ifndef TPM_BASE_TIMER_H
#define TPM_BASE_TIMER_H

/** Seconds from an arbitrary fixed point (CLOCK_MONOTONIC). */
double tpm_time_now(void);

#endif /* TPM_BASE_TIMER_H */
