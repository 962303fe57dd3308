/* SPDX-License-Identifier: MIT */
/*
 * status.c: status names, fatal errors and assertions. The abort hook lets the
 * MPI layer turn a fatal error into MPI_Abort so that no rank is left hanging.
 */
#include "base/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static tpm_abort_func_t abort_hook;

const char *tpm_status_str(tpm_status_t status)
{
    switch (status) {
    case TPM_OK: return "ok";
    case TPM_ERR_INVALID_ARG: return "invalid argument";
    case TPM_ERR_NO_MEMORY: return "out of memory";
    case TPM_ERR_IO: return "i/o error";
    case TPM_ERR_FORMAT: return "bad format";
    case TPM_ERR_UNSUPPORTED: return "unsupported";
    case TPM_ERR_OVERFLOW: return "size overflow";
    case TPM_ERR_MPI: return "mpi error";
    case TPM_ERR_HDF5: return "hdf5 error";
    case TPM_ERR_CUDA: return "cuda error";
    case TPM_ERR_NOT_FOUND: return "not found";
    case TPM_ERR_INTERNAL: return "internal error";
    case TPM_ERR_REMOTE: return "failure on another rank";
    }
    return "unknown status";
}

void tpm_set_abort_hook(tpm_abort_func_t fn)
{
    abort_hook = fn;
}

static void __attribute__((noreturn)) do_abort(void)
{
    fflush(stdout);
    fflush(stderr);
    if (abort_hook != NULL) {
        abort_hook(1);
    }
    abort();
}

void tpm_fatal(tpm_status_t status, const char *fmt, ...)
{
    char    msg[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    tpm_log_error("fatal: %s (%s)", msg, tpm_status_str(status));
    do_abort();
}

void tpm_assert_fail(const char *cond, const char *file, int line)
{
    tpm_log_error("assertion failed: %s at %s:%d", cond, file, line);
    do_abort();
}
