/* SPDX-License-Identifier: MIT */
/*
 * backend_cpu_quant.h: serving weights in fp32, bf16 or int8 on the CPU, and the matrix
 * products on them (decode GEMV, batched decode, prefill GEMM), with kernels chosen at run
 * time by CPU feature (AVX-512 VNNI, AVX2, or a plain C reference that the tests compare
 * the others against).
 *
 * A tpm_qmat_t is one weight matrix W (rows = output features, cols = input features),
 * always stored with the input dimension contiguous, whatever the layout it came from:
 *
 *   fp32  rows x cols floats
 *   bf16  rows x cols bfloat16 (round to nearest even from fp32), 2 bytes a weight
 *   int8  symmetric, block-wise: each row is cut into blocks of TPM_Q8_BLOCK = 32 inputs
 *         (the last one zero-padded); a block holds 32 int8 codes q in [-127, 127] and one
 *         fp16 scale d = max|w| / 127, w ~ d * q. 34 bytes per 32 weights (1.0625 bytes a
 *         weight), like llama.cpp's Q8_0; codes and scales are kept in two planes so that
 *         the SIMD kernels load 64 codes at once.
 *
 * Products: out[n, r] = sum_c inp[n, c] * W[r, c] (+ bias[r]). For int8 the activations are
 * quantized the same way (blocks of 32, int8 codes, an fp32 scale per block) and each block
 * is an exact integer dot product scaled by d_w * d_x; fp32 and bf16 accumulate in fp32.
 * Up to TPM_QMAT_GEMV_MAX rows of inp (decode, batched decode) stream W once in row tiles,
 * shared by the OpenMP threads; more rows (prefill) widen W tile by tile to fp32 and go to
 * BLAS sgemm. Memory is the caller's: tpm_qmat_create() allocates, tpm_qmat_destroy()
 * frees.
 */
#ifndef TPM_BACKEND_CPU_QUANT_H
#define TPM_BACKEND_CPU_QUANT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/status.h"

#define TPM_Q8_BLOCK      32
#define TPM_QMAT_GEMV_MAX 16 /* rows of inp up to which W is streamed (no sgemm) */

typedef enum {
    TPM_WDT_F32 = 0,
    TPM_WDT_BF16,
    TPM_WDT_Q8,
    TPM_WDT_N
} tpm_wdtype_t;

/** Kernel family: AUTO picks the best this CPU supports (TPMPI_QKERNEL can force one). */
typedef enum {
    TPM_QK_AUTO = 0,
    TPM_QK_REF,
    TPM_QK_AVX2,
    TPM_QK_AVX512,
    TPM_QK_N
} tpm_qkernel_t;

typedef struct tpm_qmat {
    tpm_wdtype_t dt;
    int          rows, cols;
    int          kb;    /* int8: blocks per row, ceil(cols / 32) */
    void        *w;     /* fp32, bf16 or int8 codes (rows * kb * 32 for int8) */
    uint16_t    *d;     /* int8: rows * kb fp16 scales; NULL otherwise */
    size_t       bytes; /* weight bytes held (codes and scales) */
} tpm_qmat_t;

/** "fp32", "bf16", "int8" (NULL for an out-of-range value). */
const char *tpm_wdtype_name(tpm_wdtype_t dt);
/** Parse "fp32" | "bf16" | "int8"; TPM_ERR_INVALID_ARG (with a message) otherwise. */
tpm_status_t tpm_wdtype_parse(const char *s, tpm_wdtype_t *dt_p);

/**
 * Make @p m from the fp32 matrix @p w: (rows, cols) row-major, or with @p w_trans = 1 the
 * transposed layout (cols, rows), as training stores row-parallel weights. Rows are
 * converted in parallel (OpenMP).
 */
tpm_status_t tpm_qmat_create(tpm_qmat_t *m, tpm_wdtype_t dt, const float *w, int rows, int cols,
                             int w_trans);
void tpm_qmat_destroy(tpm_qmat_t *m); /* NULL-safe; leaves *m zeroed */

/** out (n_in, rows) = inp (n_in, cols) W^T + bias (bias may be NULL). */
tpm_status_t tpm_qmat_matmul(const tpm_qmat_t *m, float *out, const float *inp, const float *bias,
                             int n_in);

/** Widen row @p r of @p m to fp32 (cols values): what the kernels compute with. */
void tpm_qmat_row_f32(const tpm_qmat_t *m, int r, float *dst);

/** The kernel family in use, and a name for logs ("avx512-vnni", "avx2", "ref"). */
tpm_qkernel_t tpm_qkernel_active(void);
const char   *tpm_qkernel_name(tpm_qkernel_t k);
/**
 * Force a family (TPM_QK_AUTO: detect again). TPM_ERR_UNSUPPORTED when this CPU lacks it.
 * Not thread-safe against running products: call it between them (tests, benchmarks).
 */
tpm_status_t tpm_qkernel_set(tpm_qkernel_t k);

/** IEEE half precision <-> fp32, portable (round to nearest even; NaN stays NaN). */
static inline float tpm_fp16_to_float(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp  = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t       bits;
    float          f;

    if (exp == 0) {
        f = (float)man * (1.0f / 16777216.0f); /* zero or subnormal: man * 2^-24, exact */
        memcpy(&bits, &f, sizeof(bits));
        bits |= sign;
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    memcpy(&f, &bits, sizeof(f));
    return f;
}

static inline uint16_t tpm_fp16_rne(float f)
{
    uint32_t x, ax, sign;

    memcpy(&x, &f, sizeof(x));
    sign = (x >> 16) & 0x8000u;
    ax   = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) {
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u)); /* inf, NaN */
    }
    if (ax >= 0x477ff000u) {
        return (uint16_t)(sign | 0x7c00u); /* 65520 and up round to infinity */
    }
    if (ax < 0x38800000u) {
        /* below 2^-14: a subnormal half, round(|f| * 2^24) in [0, 1024] (1024 = 2^-14) */
        float    a;
        uint32_t r;
        memcpy(&a, &ax, sizeof(a));
        a *= 16777216.0f;
        r = (uint32_t)a;
        if (a - (float)r > 0.5f || (a - (float)r == 0.5f && (r & 1u))) {
            r++;
        }
        return (uint16_t)(sign | r);
    }
    ax -= 0x38000000u; /* rebias the exponent: 127 - 15 = 112 */
    return (uint16_t)(sign | ((ax + 0x0fffu + ((ax >> 13) & 1u)) >> 13));
}

#endif /* TPM_BACKEND_CPU_QUANT_H */
