/* SPDX-License-Identifier: MIT */
/*
 * test_mem.c: unit tests of src/base/mem.c: overflow-checked size arithmetic, 64-byte
 * aligned allocation, zero-filled calloc, NULL-safe free. Sizes that would overflow must be
 * refused before any allocator call (so no huge allocation is ever attempted here, which
 * also keeps the test quiet under AddressSanitizer).
 */
#include "base/mem.h"

#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

TestSuite(mem, .timeout = 10);

Test(mem, mul_size_multiplies_in_range)
{
    size_t n = 7;

    cr_expect_eq(tpm_mul_size(3, 5, &n), TPM_OK);
    cr_expect_eq(n, 15);
    cr_expect_eq(tpm_mul_size(0, SIZE_MAX, &n), TPM_OK);
    cr_expect_eq(n, 0);
    cr_expect_eq(tpm_mul_size(SIZE_MAX, 0, &n), TPM_OK);
    cr_expect_eq(n, 0);
    cr_expect_eq(tpm_mul_size(SIZE_MAX, 1, &n), TPM_OK);
    cr_expect_eq(n, SIZE_MAX);
    cr_expect_eq(tpm_mul_size((size_t)1 << 31, (size_t)1 << 31, &n), TPM_OK);
    cr_expect_eq(n, (size_t)1 << 62);
}

Test(mem, mul_size_reports_overflow_and_leaves_the_output_alone)
{
    size_t n = 12345;

    cr_expect_eq(tpm_mul_size(SIZE_MAX / 2 + 1, 2, &n), TPM_ERR_OVERFLOW);
    cr_expect_eq(n, 12345);
    cr_expect_eq(tpm_mul_size((size_t)1 << 32, (size_t)1 << 32, &n), TPM_ERR_OVERFLOW);
    cr_expect_eq(tpm_mul_size(SIZE_MAX, SIZE_MAX, &n), TPM_ERR_OVERFLOW);
    cr_expect_eq(tpm_mul_size(3, SIZE_MAX / 3 + 1, &n), TPM_ERR_OVERFLOW);
    cr_expect_eq(n, 12345);
}

Test(mem, malloc_is_64_byte_aligned_and_usable)
{
    static const size_t sizes[] = {0, 1, 63, 64, 65, 1000, 1 << 20};

    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        void *p = NULL;

        cr_assert_eq(tpm_malloc(sizes[i], &p), TPM_OK, "size %zu", sizes[i]);
        cr_assert_not_null(p);
        cr_expect_eq((uintptr_t)p % 64, 0, "size %zu not aligned", sizes[i]);
        memset(p, 0xab, sizes[i]);
        tpm_free(p);
    }
}

Test(mem, malloc_refuses_sizes_that_overflow_when_rounded_up)
{
    void *p = (void *)0x1;

    cr_expect_eq(tpm_malloc(SIZE_MAX, &p), TPM_ERR_OVERFLOW);
    cr_expect_eq(tpm_malloc(SIZE_MAX - 10, &p), TPM_ERR_OVERFLOW);
    cr_expect_eq(p, (void *)0x1, "output must be untouched on failure");
}

Test(mem, calloc_zero_fills_and_checks_the_product)
{
    float *p = NULL;
    void  *q = (void *)0x1;

    cr_assert_eq(tpm_calloc(1000, sizeof(float), (void **)&p), TPM_OK);
    cr_expect_eq((uintptr_t)p % 64, 0);
    for (size_t i = 0; i < 1000; i++) {
        cr_expect_eq(p[i], 0.0f);
    }
    tpm_free(p);

    cr_expect_eq(tpm_calloc(SIZE_MAX / 4 + 1, 4, &q), TPM_ERR_OVERFLOW);
    cr_expect_eq(tpm_calloc(SIZE_MAX, SIZE_MAX, &q), TPM_ERR_OVERFLOW);
    cr_expect_eq(q, (void *)0x1, "output must be untouched on failure");
}

Test(mem, free_accepts_null_and_the_allocator_stays_usable)
{
    void *p = NULL;

    /* a crash would fail the test (Criterion reports the signal); then check the heap */
    tpm_free(NULL);
    cr_assert_eq(tpm_malloc(128, &p), TPM_OK);
    cr_assert_not_null(p);
    cr_expect_eq((uintptr_t)p % 64, 0);
    memset(p, 0x5a, 128);
    cr_expect_eq(((unsigned char *)p)[127], 0x5a);
    tpm_free(p);
}

Test(mem, peak_rss_is_reported)
{
    cr_expect_gt(tpm_peak_rss_bytes(), 0);
}
