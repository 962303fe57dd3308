/* SPDX-License-Identifier: MIT */
/*
 * bf16.h: bf16 bit conversions on the host (pure, header only). bf16 is the top 16 bits of
 * an IEEE-754 binary32. Used by the CPU backend (bf16 working weights), the 2-bit codec's
 * scales (backend/backend_twobit.h) and the tests; kernels/common.cuh has the device twins.
 */
#ifndef TPM_BASE_BF16_H
#define TPM_BASE_BF16_H

#include <stdint.h>
#include <string.h>

/** bf16 bits of @p f, round to nearest even (NaN stays a quiet NaN). */
static inline uint16_t tpm_bf16_rne(float f)
{
    uint32_t u;

    memcpy(&u, &f, sizeof(u));
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((u >> 16) | 0x0040u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/** bf16 bits of the smallest bf16 >= @p f, for f >= 0 (NaN stays NaN). */
static inline uint16_t tpm_bf16_up(float f)
{
    uint32_t u;

    memcpy(&u, &f, sizeof(u));
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((u >> 16) | 0x0040u);
    }
    return (uint16_t)((u >> 16) + ((u & 0xffffu) != 0));
}

static inline float tpm_bf16_to_float(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float    f;

    memcpy(&f, &u, sizeof(f));
    return f;
}

#endif /* TPM_BASE_BF16_H */
