/* SPDX-License-Identifier: MIT */
/*
 * mem.h: host memory helpers with overflow-checked sizes. Buffers are 64-byte
 * aligned (one cache line, one AVX-512 vector). tpm_free() accepts NULL.
 */
#ifndef TPM_BASE_MEM_H
#define TPM_BASE_MEM_H

#include <stddef.h>

#include "base/status.h"

/** *n_p = a * b, or TPM_ERR_OVERFLOW (and *n_p untouched). */
tpm_status_t tpm_mul_size(size_t a, size_t b, size_t *n_p);

/** 64-byte aligned allocation; caller owns the result (free with tpm_free). Logs on failure. */
tpm_status_t tpm_malloc(size_t nbytes, void **ptr_p);
/** As tpm_malloc(), zero-filled, for n elements of size bytes (overflow-checked). */
tpm_status_t tpm_calloc(size_t n, size_t size, void **ptr_p);
/** No-op on NULL. */
void tpm_free(void *ptr);

/** Peak resident set size of this process in bytes (0 if unknown). */
size_t tpm_peak_rss_bytes(void);

#endif /* TPM_BASE_MEM_H */
