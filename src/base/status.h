/* SPDX-License-Identifier: MIT */
/*
 * status.h: tpmpi status codes, propagation macros and fatal/assert helpers.
 * Every function that can fail returns tpm_status_t (TPM_OK = 0, errors < 0).
 * Errors are logged where they are detected and propagated with TPM_CHECK.
 * tpm_fatal() calls an abort hook that main installs (MPI_Abort), so this layer
 * stays free of MPI and can be unit-tested alone.
 */
#ifndef TPM_BASE_STATUS_H
#define TPM_BASE_STATUS_H

#include "base/log.h"

typedef enum {
    TPM_OK              = 0,
    TPM_ERR_INVALID_ARG = -1,  /* bad option, bad argument, impossible configuration */
    TPM_ERR_NO_MEMORY   = -2,
    TPM_ERR_IO          = -3,  /* a system call on a file or socket failed */
    TPM_ERR_FORMAT      = -4,  /* file contents are malformed, truncated or corrupted */
    TPM_ERR_UNSUPPORTED = -5,
    TPM_ERR_OVERFLOW    = -6,  /* size arithmetic overflowed */
    TPM_ERR_MPI         = -7,
    TPM_ERR_HDF5        = -8,
    TPM_ERR_CUDA        = -9,
    TPM_ERR_NOT_FOUND   = -10,
    TPM_ERR_INTERNAL    = -11,
    TPM_ERR_REMOTE      = -12, /* another rank failed */
} tpm_status_t;

/** Human-readable name of a status code (static string, never NULL). */
const char *tpm_status_str(tpm_status_t status);

/** Propagate a failed status, leaving a "-> expr" trace at debug level. */
#define TPM_CHECK(_expr)                                                                           \
    do {                                                                                           \
        tpm_status_t _tpm_s = (_expr);                                                             \
        if (_tpm_s != TPM_OK) {                                                                    \
            tpm_log_debug("-> %s", #_expr);                                                        \
            return _tpm_s;                                                                         \
        }                                                                                          \
    } while (0)

/** Store a failed status in @p _status and jump to @p _label. */
#define TPM_CHECK_GOTO(_expr, _status, _label)                                                     \
    do {                                                                                           \
        (_status) = (_expr);                                                                       \
        if ((_status) != TPM_OK) {                                                                 \
            tpm_log_debug("-> %s", #_expr);                                                        \
            goto _label;                                                                           \
        }                                                                                          \
    } while (0)

/** Internal invariant: stays on in release builds; never for user or file input. */
#define TPM_ASSERT(_cond)                                                                          \
    do {                                                                                           \
        if (!(_cond)) {                                                                            \
            tpm_assert_fail(#_cond, __FILE__, __LINE__);                                           \
        }                                                                                          \
    } while (0)

typedef void (*tpm_abort_func_t)(int code);

/** Install the function tpm_fatal()/TPM_ASSERT call to stop the job (main: MPI_Abort). */
void tpm_set_abort_hook(tpm_abort_func_t fn);

/** Log an error with the rank, then stop every rank through the abort hook. */
void tpm_fatal(tpm_status_t status, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 2, 3)));

void tpm_assert_fail(const char *cond, const char *file, int line) __attribute__((noreturn));

#endif /* TPM_BASE_STATUS_H */
