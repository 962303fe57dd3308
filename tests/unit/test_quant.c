/* SPDX-License-Identifier: MIT */
/*
 * test_quant.c: serving weight formats and products (src/backend/backend_cpu_quant.c).
 *
 *  - fp16 conversion against the compiler's _Float16 (an independent IEEE implementation):
 *    all 65,536 halves widened, and fp32 values of every kind (ties, subnormal halves,
 *    overflow, NaN) rounded;
 *  - int8 codes: |w - d q| <= d / 2 for every weight, the block maximum at +-127, a zero
 *    block gives d = 0;
 *  - products of every kernel family this CPU runs (ref, avx2, avx512-vnni), every dtype,
 *    odd shapes (cols not a multiple of 32), 1..16 input rows (GEMV) and more (GEMM),
 *    against a double-precision evaluation of the format's definition written here:
 *    fp32 and bf16 with the widened weights; int8 GEMV with the activations quantized by
 *    this file's own block quantizer; normalised error <= 1e-5;
 *  - the transposed source layout, the bias, and int8 / bf16 close to the fp32 product.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend_cpu_quant.h"
#include "base/bf16.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static uint16_t half_bits(_Float16 h)
{
    uint16_t b;

    memcpy(&b, &h, sizeof(b));
    return b;
}

Test(quant, fp16_widen_all_halves)
{
    for (uint32_t i = 0; i < 65536; i++) {
        const uint16_t h = (uint16_t)i;
        _Float16       ref;
        float          got = tpm_fp16_to_float(h), want;

        memcpy(&ref, &h, sizeof(ref));
        want = (float)ref;
        if (isnan(want)) {
            cr_assert(isnan(got), "half 0x%04x: got %g, want NaN", i, (double)got);
        } else {
            cr_assert(memcmp(&got, &want, sizeof(got)) == 0, "half 0x%04x: got %a, want %a", i,
                      (double)got, (double)want);
        }
    }
}

Test(quant, fp16_round_nearest_even)
{
    static const float special[] = {0.0f,     -0.0f,        1.0f,       65504.0f,  65519.0f,
                                    65520.0f, 1e9f,         -1e9f,      6.1e-5f,   6.0e-8f,
                                    2.9e-8f,  3.0e-8f,      5.96e-8f,   1e-30f,    1.0009765625f,
                                    1.00048828125f, 1.00146484375f, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof(special) / sizeof(special[0]); i++) {
        cr_assert_eq(tpm_fp16_rne(special[i]), half_bits((_Float16)special[i]), "%a",
                     (double)special[i]);
    }
    cr_assert(isnan(tpm_fp16_to_float(tpm_fp16_rne(NAN))));
    /* random values over the whole half range and its subnormals, and the exact ties */
    for (int i = 0; i < 200000; i++) {
        const float f = ldexpf(frand(), (int)(frand() * 30.0f) - 12);
        cr_assert_eq(tpm_fp16_rne(f), half_bits((_Float16)f), "%a", (double)f);
    }
    for (uint32_t h = 0; h < 0x7bff; h += 7) {
        const float a = tpm_fp16_to_float((uint16_t)h), b = tpm_fp16_to_float((uint16_t)(h + 1));
        const float mid = (float)(((double)a + (double)b) / 2.0);
        cr_assert_eq(tpm_fp16_rne(mid), half_bits((_Float16)mid), "tie %a", (double)mid);
    }
}

static float *rand_matrix(int rows, int cols, float scale)
{
    float *w = malloc((size_t)rows * (size_t)cols * sizeof(float) + 4);

    for (size_t i = 0; i < (size_t)rows * (size_t)cols; i++) {
        w[i] = scale * frand();
    }
    return w;
}

Test(quant, int8_codes_within_half_a_step)
{
    const int  rows = 9, cols = 77; /* 3 blocks, the last of 13 values */
    float     *w    = rand_matrix(rows, cols, 3.0f);
    tpm_qmat_t m;

    for (int c = 32; c < 64; c++) {
        w[2 * cols + c] = 0.0f; /* row 2, block 1: all zero */
    }
    cr_assert_eq(tpm_qmat_create(&m, TPM_WDT_Q8, w, rows, cols, 0), TPM_OK);
    cr_assert_eq(m.kb, 3);
    cr_assert_eq(m.bytes, (size_t)rows * 3 * 34);
    for (int r = 0; r < rows; r++) {
        const int8_t *q = (const int8_t *)m.w + (size_t)r * 96;
        for (int b = 0; b < 3; b++) {
            const float d    = tpm_fp16_to_float(m.d[r * 3 + b]);
            int         qmax = 0;
            for (int i = 0; i < 32; i++) {
                const int c = b * 32 + i;
                if (c >= cols) {
                    cr_assert_eq(q[b * 32 + i], 0, "padding code is zero");
                    continue;
                }
                cr_assert(q[b * 32 + i] >= -127 && q[b * 32 + i] <= 127);
                cr_assert(fabsf(w[r * cols + c] - d * (float)q[b * 32 + i]) <= 0.5f * d * 1.0001f,
                          "row %d col %d: w %g, d %g, q %d", r, c, (double)w[r * cols + c],
                          (double)d, q[b * 32 + i]);
                qmax = abs(q[b * 32 + i]) > qmax ? abs(q[b * 32 + i]) : qmax;
            }
            if (r == 2 && b == 1) {
                cr_assert(d == 0.0f && qmax == 0, "a zero block has scale 0");
            } else {
                cr_assert(qmax >= 126, "the block maximum uses the full range (%d)", qmax);
            }
        }
    }
    tpm_qmat_destroy(&m);
    tpm_qmat_destroy(&m); /* safe twice */
    free(w);
}

/* the format's definition in double: W widened; int8 GEMV with activations quantized here */
static void ref_product(const tpm_qmat_t *m, const float *x, const float *bias, int n_in,
                        double *out, double *mag)
{
    const int R = m->rows, C = m->cols, kb = (C + 31) / 32;
    float    *row = malloc((size_t)C * sizeof(float) + 4);
    float    *xq  = malloc((size_t)kb * 32 * sizeof(float));
    const int quant_x = m->dt == TPM_WDT_Q8 && n_in <= TPM_QMAT_GEMV_MAX;

    for (int n = 0; n < n_in; n++) {
        const float *xn = x + (size_t)n * C;
        for (int b = 0; b < kb; b++) {
            double amax = 0.0;
            for (int i = 0; i < 32 && b * 32 + i < C; i++) {
                amax = fmax(amax, fabs((double)xn[b * 32 + i]));
            }
            const float d = (float)amax / 127.0f;
            for (int i = 0; i < 32 && b * 32 + i < C; i++) {
                xq[b * 32 + i] = quant_x ? (d > 0 ? d * nearbyintf(xn[b * 32 + i] * (1.0f / d)) : 0)
                                         : xn[b * 32 + i];
            }
        }
        for (int r = 0; r < R; r++) {
            double s = bias != NULL ? bias[r] : 0.0, a = fabs(s);
            tpm_qmat_row_f32(m, r, row);
            for (int c = 0; c < C; c++) {
                s += (double)row[c] * (double)xq[c];
                a += fabs((double)row[c] * (double)xq[c]);
            }
            out[(size_t)n * R + r] = s;
            mag[(size_t)n * R + r] = a;
        }
    }
    free(row);
    free(xq);
}

static void check_family(tpm_qkernel_t k)
{
    static const int shapes[][2] = {{1, 1}, {7, 31}, {33, 32}, {5, 100}, {64, 768}, {3, 1000},
                                    {130, 64}};
    static const int n_ins[]     = {1, 2, 5, 16, 17, 40};

    cr_assert_eq(tpm_qkernel_set(k), TPM_OK);
    cr_assert_eq(tpm_qkernel_active(), k);
    for (int dt = 0; dt < TPM_WDT_N; dt++) {
        for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
            const int R = shapes[s][0], C = shapes[s][1];
            float    *w = rand_matrix(R, C, 0.5f), *bias = rand_matrix(1, R, 1.0f);
            tpm_qmat_t m;

            cr_assert_eq(tpm_qmat_create(&m, (tpm_wdtype_t)dt, w, R, C, 0), TPM_OK);
            for (size_t ni = 0; ni < sizeof(n_ins) / sizeof(n_ins[0]); ni++) {
                const int n_in = n_ins[ni];
                float    *x    = rand_matrix(n_in, C, 2.0f);
                float    *out  = malloc((size_t)n_in * R * sizeof(float));
                double   *ref  = malloc((size_t)n_in * R * sizeof(double));
                double   *mag  = malloc((size_t)n_in * R * sizeof(double));
                double    err = 0.0, top = 0.0;

                cr_assert_eq(tpm_qmat_matmul(&m, out, x, bias, n_in), TPM_OK);
                ref_product(&m, x, bias, n_in, ref, mag);
                for (size_t i = 0; i < (size_t)n_in * R; i++) {
                    cr_assert(isfinite(out[i]));
                    err = fmax(err, fabs(out[i] - ref[i]));
                    top = fmax(top, mag[i]);
                }
                cr_assert(err <= 1e-5 * top, "%s %s %dx%d n=%d: error %g of %g",
                          tpm_qkernel_name(k), tpm_wdtype_name((tpm_wdtype_t)dt), R, C, n_in,
                          err, top);
                free(x);
                free(out);
                free(ref);
                free(mag);
            }
            tpm_qmat_destroy(&m);
            free(w);
            free(bias);
        }
    }
    cr_assert_eq(tpm_qkernel_set(TPM_QK_AUTO), TPM_OK);
}

Test(quant, products_ref)
{
    check_family(TPM_QK_REF);
}

Test(quant, products_avx2)
{
    if (tpm_qkernel_set(TPM_QK_AVX2) != TPM_OK) {
        cr_skip_test("this CPU has no AVX2 + FMA + F16C");
    }
    check_family(TPM_QK_AVX2);
}

Test(quant, products_avx512_vnni)
{
    if (tpm_qkernel_set(TPM_QK_AVX512) != TPM_OK) {
        cr_skip_test("this CPU has no AVX-512 VNNI");
    }
    check_family(TPM_QK_AVX512);
}

Test(quant, transposed_source_and_accuracy)
{
    const int R = 48, C = 96, n_in = 3;
    float    *w = rand_matrix(R, C, 0.2f), *wt = malloc((size_t)R * C * sizeof(float));
    float    *x = rand_matrix(n_in, C, 1.0f);
    float    *y[TPM_WDT_N], *yt = malloc((size_t)n_in * R * sizeof(float));

    for (int r = 0; r < R; r++) {
        for (int c = 0; c < C; c++) {
            wt[(size_t)c * R + r] = w[(size_t)r * C + c];
        }
    }
    for (int dt = 0; dt < TPM_WDT_N; dt++) {
        tpm_qmat_t a, b;
        y[dt] = malloc((size_t)n_in * R * sizeof(float));
        cr_assert_eq(tpm_qmat_create(&a, (tpm_wdtype_t)dt, w, R, C, 0), TPM_OK);
        cr_assert_eq(tpm_qmat_create(&b, (tpm_wdtype_t)dt, wt, R, C, 1), TPM_OK);
        cr_assert_eq(memcmp(a.w, b.w, a.bytes - (a.d != NULL ? (size_t)R * a.kb * 2 : 0)), 0,
                     "%s: the transposed layout gives the same codes",
                     tpm_wdtype_name((tpm_wdtype_t)dt));
        cr_assert_eq(tpm_qmat_matmul(&a, y[dt], x, NULL, n_in), TPM_OK);
        cr_assert_eq(tpm_qmat_matmul(&b, yt, x, NULL, n_in), TPM_OK);
        cr_assert_eq(memcmp(y[dt], yt, (size_t)n_in * R * sizeof(float)), 0);
        tpm_qmat_destroy(&a);
        tpm_qmat_destroy(&b);
    }
    /* bf16 and int8 against fp32: relative L2 error of the outputs */
    for (int dt = TPM_WDT_BF16; dt < TPM_WDT_N; dt++) {
        double e = 0.0, n = 0.0;
        for (size_t i = 0; i < (size_t)n_in * R; i++) {
            e += (y[dt][i] - y[TPM_WDT_F32][i]) * (double)(y[dt][i] - y[TPM_WDT_F32][i]);
            n += (double)y[TPM_WDT_F32][i] * y[TPM_WDT_F32][i];
        }
        cr_assert(sqrt(e / n) < (dt == TPM_WDT_BF16 ? 5e-3 : 2e-2), "%s: relative error %g",
                  tpm_wdtype_name((tpm_wdtype_t)dt), sqrt(e / n));
    }
    for (int dt = 0; dt < TPM_WDT_N; dt++) {
        free(y[dt]);
    }
    free(w);
    free(wt);
    free(x);
    free(yt);
}

Test(quant, names_and_bad_input)
{
    tpm_wdtype_t dt;
    tpm_qmat_t   m;

    cr_assert_eq(tpm_wdtype_parse("int8", &dt), TPM_OK);
    cr_assert_eq(dt, TPM_WDT_Q8);
    cr_assert_eq(tpm_wdtype_parse("bf16", &dt), TPM_OK);
    cr_assert_eq(dt, TPM_WDT_BF16);
    cr_assert_eq(tpm_wdtype_parse("q4", &dt), TPM_ERR_INVALID_ARG);
    cr_assert_eq(tpm_qmat_create(&m, TPM_WDT_Q8, NULL, 3, 3, 0), TPM_ERR_INVALID_ARG);
    cr_assert_eq(tpm_qmat_create(&m, TPM_WDT_N, NULL, 0, 0, 0), TPM_ERR_INVALID_ARG);
    cr_assert_eq(tpm_qkernel_set((tpm_qkernel_t)99), TPM_ERR_UNSUPPORTED);
    cr_assert_str_eq(tpm_qkernel_name(TPM_QK_AVX512), "avx512-vnni");
}
