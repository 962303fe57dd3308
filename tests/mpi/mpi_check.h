/* SPDX-License-Identifier: MIT */
/*
 * mpi_check.h: verdicts for the multi-rank test programs in tests/mpi, which run under
 * mpirun and print "N passed, N failed" on rank 0 (the project's convention for tests that
 * are not Criterion suites). Header-only: each program is one translation unit.
 *
 *   mc_check_all(ok, what)   collective: passes only if ok holds on every rank
 *   mc_check(ok, fmt, ...)   this rank's own verdict (checks made on rank 0 only)
 *   mc_report(prefix)        rank 0's counts to every rank, the summary line on rank 0;
 *                            returns the exit status (0: no failure) - collective
 */
#ifndef TPM_TESTS_MPI_CHECK_H
#define TPM_TESTS_MPI_CHECK_H

#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>

static int mc_pass, mc_fail;

/* tpm_set_abort_hook() target: a fatal error in the library stops every rank */
static inline void mc_abort_hook(int code)
{
    MPI_Abort(MPI_COMM_WORLD, code);
}

static inline int mc_rank(void)
{
    int r = 0;

    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

static inline void mc_check_all(int ok, const char *what)
{
    int all = 0;

    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    if (all) {
        mc_pass++;
        return;
    }
    mc_fail++;
    if (mc_rank() == 0) {
        fprintf(stderr, "FAIL: %s\n", what);
    }
}

static inline void mc_check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static inline void mc_check(int ok, const char *fmt, ...)
{
    va_list ap;

    if (ok) {
        mc_pass++;
        return;
    }
    mc_fail++;
    fprintf(stderr, "FAIL: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
}

static inline int mc_report(const char *prefix)
{
    int res[2] = {mc_pass, mc_fail};

    MPI_Bcast(res, 2, MPI_INT, 0, MPI_COMM_WORLD);
    if (mc_rank() == 0) {
        printf("%s%d passed, %d failed\n", prefix, res[0], res[1]);
        fflush(stdout);
    }
    return res[1] == 0 ? 0 : 1;
}

#endif /* TPM_TESTS_MPI_CHECK_H */
