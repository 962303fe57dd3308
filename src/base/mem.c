/* SPDX-License-Identifier: MIT */
/*
 * mem.c: aligned, overflow-checked host allocation and peak-RSS reading.
 */
#include "base/mem.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define TPM_MEM_ALIGN 64

tpm_status_t tpm_mul_size(size_t a, size_t b, size_t *n_p)
{
    if (a != 0 && b > SIZE_MAX / a) {
        return TPM_ERR_OVERFLOW;
    }
    *n_p = a * b;
    return TPM_OK;
}

tpm_status_t tpm_malloc(size_t nbytes, void **ptr_p)
{
    void  *p;
    size_t n = (nbytes + TPM_MEM_ALIGN - 1) / TPM_MEM_ALIGN * TPM_MEM_ALIGN;

    if (n < nbytes) {
        return TPM_ERR_OVERFLOW;
    }
    if (n == 0) {
        n = TPM_MEM_ALIGN;
    }
    p = aligned_alloc(TPM_MEM_ALIGN, n);
    if (p == NULL) {
        tpm_log_error("allocation of %zu bytes failed", nbytes);
        return TPM_ERR_NO_MEMORY;
    }
    *ptr_p = p;
    return TPM_OK;
}

tpm_status_t tpm_calloc(size_t n, size_t size, void **ptr_p)
{
    size_t nbytes;
    void  *p;

    if (tpm_mul_size(n, size, &nbytes) != TPM_OK) {
        tpm_log_error("allocation of %zu x %zu bytes overflows", n, size);
        return TPM_ERR_OVERFLOW;
    }
    TPM_CHECK(tpm_malloc(nbytes, &p));
    memset(p, 0, nbytes);
    *ptr_p = p;
    return TPM_OK;
}

void tpm_free(void *ptr)
{
    free(ptr);
}

size_t tpm_peak_rss_bytes(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) != 0) {
        return 0;
    }
    return (size_t)ru.ru_maxrss * 1024; /* Linux reports KiB */
}
