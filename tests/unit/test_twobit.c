/* SPDX-License-Identifier: MIT */
/*
 * test_twobit.c: the 2-bit codec (src/backend/backend_twobit.c) without MPI: the byte layout is
 * pinned by known inputs and known bytes (a device kernel must reproduce them), decode of
 * encode is within s/2 wherever twobit.h says it is, the residual holds exactly what was
 * not sent, the stochastic variant is unbiased, and non-finite input stays visible.
 */
#include "backend/backend_twobit.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"

TestSuite(twobit, .timeout = 60);

static float scale_of(const uint8_t *chunk, size_t b)
{
    return tpm_bf16_to_float((uint16_t)(chunk[2 * b] | (chunk[2 * b + 1] << 8)));
}

static void expect_bytes(const uint8_t *got, const uint8_t *want, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        cr_expect_eq(got[i], want[i], "byte %zu: got 0x%02x, want 0x%02x", i, got[i], want[i]);
    }
}

Test(twobit, bf16_conversions_round_as_documented)
{
    cr_expect_eq(tpm_bf16_rne(1.0f), 0x3f80);
    cr_expect_eq(tpm_bf16_rne(1.0625f), 0x3f88);
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0) */
    cr_expect_eq(tpm_bf16_rne(1.00390625f), 0x3f80);
    /* 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6 */
    cr_expect_eq(tpm_bf16_rne(1.01171875f), 0x3f82);
    cr_expect_eq(tpm_bf16_rne(-2.0f), 0xc000);
    cr_expect_eq(tpm_bf16_up(1.0f), 0x3f80);
    cr_expect_eq(tpm_bf16_up(1.00001f), 0x3f81);
    cr_expect_eq(tpm_bf16_up(0.0f), 0x0000);
    cr_expect(isnan(tpm_bf16_to_float(tpm_bf16_rne(NAN))));
    cr_expect(isnan(tpm_bf16_to_float(tpm_bf16_up(NAN))));
    cr_expect(isinf(tpm_bf16_to_float(tpm_bf16_up(INFINITY))));
    for (int i = 0; i < 10000; i++) {
        float x = tpm_rng_normal(3, 0, (uint64_t)i) * 1e-3f;
        float a = fabsf(x);
        cr_assert_geq(tpm_bf16_to_float(tpm_bf16_up(a)), a);
        cr_assert_leq(fabsf(tpm_bf16_to_float(tpm_bf16_rne(x)) - x), a * (1.0f / 256.0f));
    }
}

Test(twobit, chunk_sizes_follow_the_wire_layout)
{
    cr_expect_eq(tpm_twobit_nblocks(0, 256), 0);
    cr_expect_eq(tpm_twobit_nblocks(256, 256), 1);
    cr_expect_eq(tpm_twobit_nblocks(257, 256), 2);
    /* 1 block of 256: 2 scale bytes + 64 code bytes = 66, padded to 68 */
    cr_expect_eq(tpm_twobit_chunk_bytes(256, 256), 68);
    /* B = 4, n = 1: 2 + 1 = 3, padded to 4 */
    cr_expect_eq(tpm_twobit_chunk_bytes(1, 4), 4);
    cr_expect_eq(tpm_twobit_chunk_bytes(0, 4), 0);
    /* 4 blocks of 8: 4 * (2 + 2) = 16 */
    cr_expect_eq(tpm_twobit_chunk_bytes(32, 8), 16);
    /* fp32 over 2-bit, scales and padding included, for a large chunk at the default block */
    cr_expect_gt(4.0 * 1e6 / (double)tpm_twobit_chunk_bytes(1000000, 256), 15.5);
    cr_expect(tpm_twobit_block_ok(4) && tpm_twobit_block_ok(256));
    cr_expect(!tpm_twobit_block_ok(0) && !tpm_twobit_block_ok(6) && !tpm_twobit_block_ok(-4));
}

Test(twobit, error_feedback_layout_is_pinned)
{
    /*
     * B = 8, n = 10: two blocks, the second padded with 6 zeros.
     * Block 0: sum |x| = 8.5, s = 8.5 / 8 = 1.0625 (bf16 0x3f88), t = 0.53125:
     *   +1 -> +, -1 -> -, 0.25 -> 0, -3 -> -, 0 -> 0, 2 -> +, -0.5 -> 0, 0.75 -> +
     *   codes 01 10 00 10 | 00 01 00 01 -> bytes 0x89, 0x44 (value 0 in the low bits)
     * Block 1: (4, -4, 0 x 6): s = 8 / 8 = 1.0 (0x3f80), codes 01 10 -> 0x09, 0x00
     * Wire: scales 88 3f 80 3f, then codes 89 44 09 00 (8 bytes: no tail padding).
     */
    const float   g[10]     = {1.0f, -1.0f, 0.25f, -3.0f, 0.0f, 2.0f, -0.5f, 0.75f, 4.0f, -4.0f};
    const uint8_t want[8]   = {0x88, 0x3f, 0x80, 0x3f, 0x89, 0x44, 0x09, 0x00};
    const float   rwant[10] = {-0.0625f, 0.0625f, 0.25f,    -1.9375f, 0.0f,
                               0.9375f,  -0.5f,   -0.3125f, 3.0f,     -3.0f};
    float         r32[10]   = {0};
    uint16_t      r16[10]   = {0};
    uint8_t       chunk[8];
    float         dec[10] = {0};

    cr_assert_eq(tpm_twobit_chunk_bytes(10, 8), sizeof(chunk));
    memset(chunk, 0xaa, sizeof(chunk));
    tpm_twobit_encode(TPM_TWOBIT_EF_FP32, 8, g, 10, r32, 0, 0, 0, chunk);
    expect_bytes(chunk, want, sizeof(want));
    for (int i = 0; i < 10; i++) {
        cr_expect_eq(r32[i], rwant[i], "residual %d: %g != %g", i, r32[i], rwant[i]);
    }
    tpm_twobit_decode_add(8, chunk, 10, dec);
    cr_expect_eq(dec[0], 1.0625f);
    cr_expect_eq(dec[1], -1.0625f);
    cr_expect_eq(dec[2], 0.0f);
    cr_expect_eq(dec[8], 1.0f);
    cr_expect_eq(dec[9], -1.0f);

    /* the bf16 residual gives the same bytes (these residuals are exact in bf16) */
    memset(chunk, 0xaa, sizeof(chunk));
    tpm_twobit_encode(TPM_TWOBIT_EF_BF16, 8, g, 10, r16, 0, 0, 0, chunk);
    expect_bytes(chunk, want, sizeof(want));
    for (int i = 0; i < 10; i++) {
        cr_expect_eq(tpm_bf16_to_float(r16[i]), rwant[i]);
    }

    /* a second round adds the residual first: x = g + r */
    {
        float x[10], s0 = 0.0f;
        for (int i = 0; i < 10; i++) {
            x[i] = g[i] + rwant[i];
        }
        for (int i = 0; i < 8; i++) {
            s0 += fabsf(x[i]);
        }
        tpm_twobit_encode(TPM_TWOBIT_EF_FP32, 8, g, 10, r32, 0, 0, 0, chunk);
        cr_expect_eq(scale_of(chunk, 0), tpm_bf16_to_float(tpm_bf16_rne(s0 / 8.0f)));
    }
}

Test(twobit, stochastic_layout_is_pinned_where_the_draw_cannot_matter)
{
    /* |x| = max gives probability 1 and 0 gives 0, whatever the random numbers */
    const float   g[4]    = {2.0f, -2.0f, 0.0f, 2.0f};
    const uint8_t want[4] = {0x00, 0x40, 0x49, 0x00}; /* s = 2 (0x4000); 01 10 00 01; pad */
    uint8_t       chunk[4];

    for (uint64_t key = 0; key < 100; key++) {
        memset(chunk, 0xaa, sizeof(chunk));
        tpm_twobit_encode(TPM_TWOBIT_STOCHASTIC, 4, g, 4, NULL, key, 3, 0, chunk);
        expect_bytes(chunk, want, sizeof(want));
    }
}

Test(twobit, padding_bytes_are_zero_and_nothing_past_the_chunk_is_written)
{
    float   g[5] = {1, 2, 3, 4, 5}, r[5] = {0};
    uint8_t buf[16];

    /* B = 4, n = 5: 2 blocks -> 4 scale bytes + 2 code bytes = 6, padded to 8 */
    cr_assert_eq(tpm_twobit_chunk_bytes(5, 4), 8);
    memset(buf, 0xaa, sizeof(buf));
    tpm_twobit_encode(TPM_TWOBIT_EF_FP32, 4, g, 5, r, 0, 0, 0, buf);
    cr_expect_eq(buf[6], 0);
    cr_expect_eq(buf[7], 0);
    for (int i = 8; i < 16; i++) {
        cr_expect_eq(buf[i], 0xaa);
    }
    /* block 1 is (5, 0, 0, 0): s = 1.25, only value 0 is nonzero; 3 padding values are 0 */
    cr_expect_eq(scale_of(buf, 1), 1.25f);
    cr_expect_eq(buf[5], 0x01);
}

/* normal values with a heavy tail: some values far beyond 3s/2 get clipped */
static float sample(uint64_t i)
{
    float z = tpm_rng_normal(11, 0, i);

    if (i % 97 == 0) {
        z *= 30.0f;
    }
    return 1e-4f * z;
}

Test(twobit, decode_of_encode_is_within_half_a_scale_except_for_clipped_values)
{
    const int    blocks[] = {4, 8, 64, 256, 1000};
    const size_t n        = 10007; /* not a multiple of any block */
    float       *g, *r, *dec;
    uint8_t     *chunk;

    g     = malloc(n * sizeof(float));
    r     = malloc(n * sizeof(float));
    dec   = malloc(n * sizeof(float));
    chunk = malloc(tpm_twobit_chunk_bytes(n, 4));
    for (size_t i = 0; i < n; i++) {
        g[i] = sample(i);
    }
    for (size_t k = 0; k < sizeof(blocks) / sizeof(blocks[0]); k++) {
        const int B       = blocks[k];
        size_t    clipped = 0, zeros = 0;
        memset(r, 0, n * sizeof(float));
        memset(dec, 0, n * sizeof(float));
        tpm_twobit_encode(TPM_TWOBIT_EF_FP32, B, g, n, r, 0, 0, 0, chunk);
        tpm_twobit_decode_add(B, chunk, n, dec);
        for (size_t i = 0; i < n; i++) {
            const float s = scale_of(chunk, i / (size_t)B);
            const float a = fabsf(g[i]);
            /* decoded values are 0 or +-s, with the sign of x */
            cr_assert(dec[i] == 0.0f || dec[i] == s || dec[i] == -s);
            cr_assert(dec[i] == 0.0f || (dec[i] > 0) == (g[i] > 0));
            /* the threshold: nonzero exactly when |x| > s/2 */
            cr_assert_eq(dec[i] != 0.0f, a > 0.5f * s, "B=%d i=%zu", B, i);
            if (a <= 1.5f * s) {
                cr_assert_leq(fabsf(g[i] - dec[i]), 0.5f * s, "B=%d i=%zu x=%g s=%g", B, i, g[i],
                              s);
            } else {
                /* clipped: decoded to s, the excess |x| - s is exactly the residual */
                cr_assert_eq(fabsf(dec[i]), s);
                cr_assert_eq(fabsf(r[i]), a - s);
                clipped++;
            }
            /* whatever was not sent is kept: x = q + r exactly */
            cr_assert_eq(r[i], g[i] - dec[i]);
            zeros += dec[i] == 0.0f;
        }
        cr_expect_gt(clipped, 0, "B=%d: the heavy tail should clip some values", B);
        cr_expect_lt(zeros, n / 2, "B=%d: mean-|x| scale should send most values", B);
    }
    free(g);
    free(r);
    free(dec);
    free(chunk);
}

Test(twobit, error_feedback_sends_a_constant_gradient_on_average)
{
    /*
     * With a constant g, what was sent over T rounds is T*g - r_T exactly (fp32 sums aside),
     * so the average sent value converges to g as long as r stays bounded. The outliers
     * (30x) are clipped round after round: their residual grows until the block's scale
     * catches up, then stops growing. With a bf16 residual each round also rounds r to 8
     * bits, an extra error of at most 2^-9 |r| per round.
     */
    enum { n = 1000, B = 64, T = 400 };
    float    g[n], r32[n] = {0}, sent[n] = {0}, sent16[n] = {0};
    uint16_t r16[n] = {0};
    uint8_t  chunk[1100];
    float    peak_mid = 0.0f, peak_end = 0.0f, peak16 = 0.0f, gmax = 0.0f;

    cr_assert_leq(tpm_twobit_chunk_bytes(n, B), sizeof(chunk));
    for (size_t i = 0; i < n; i++) {
        g[i] = sample(i + 5);
        gmax = fabsf(g[i]) > gmax ? fabsf(g[i]) : gmax;
    }
    for (int t = 0; t < T; t++) {
        tpm_twobit_encode(TPM_TWOBIT_EF_FP32, B, g, n, r32, 0, 0, 0, chunk);
        tpm_twobit_decode_add(B, chunk, n, sent);
        tpm_twobit_encode(TPM_TWOBIT_EF_BF16, B, g, n, r16, 0, 0, 0, chunk);
        tpm_twobit_decode_add(B, chunk, n, sent16);
        for (size_t i = 0; i < n; i++) {
            float a = fabsf(r32[i]), a16 = fabsf(tpm_bf16_to_float(r16[i]));
            if (t >= T / 2 && t < 3 * T / 4 && a > peak_mid) {
                peak_mid = a;
            }
            if (t >= 3 * T / 4 && a > peak_end) {
                peak_end = a;
            }
            peak16 = a16 > peak16 ? a16 : peak16;
        }
    }
    cr_expect_leq(peak_end, 1.05f * peak_mid, "residual still growing: %g then %g", peak_mid,
                  peak_end);
    for (size_t i = 0; i < n; i++) {
        const double tg   = (double)T * g[i];
        const double r16i = tpm_bf16_to_float(r16[i]);
        cr_expect_leq(fabs((double)sent[i] + r32[i] - tg), 1e-5 * T * gmax, "i=%zu", i);
        cr_expect_leq(fabs((double)sent16[i] + r16i - tg), T * ldexp(peak16, -9) + 1e-5 * T * gmax,
                      "bf16 i=%zu", i);
        /* the average sent value is g up to |r_T| / T */
        cr_expect_leq(fabs((double)sent[i] / T - g[i]), peak_end / T + 1e-5 * gmax, "i=%zu", i);
    }
}

Test(twobit, stochastic_variant_is_unbiased)
{
    /* one block of 64 values of varied size and sign; mean of M independent decodes */
    enum { B = 64, M = 40000 };
    float   x[B];
    double  mean[B] = {0};
    uint8_t chunk[20]; /* 2 scale bytes + 16 code bytes, padded to a multiple of 4 */
    float   s;

    cr_assert_eq(tpm_twobit_chunk_bytes(B, B), sizeof(chunk));

    for (int i = 0; i < B; i++) {
        x[i] = (float)(i - 20) * 0.01f + 0.003f * (float)(i % 3);
    }
    for (int k = 0; k < M; k++) {
        float dec[B] = {0};
        tpm_twobit_encode(TPM_TWOBIT_STOCHASTIC, B, x, B, NULL, (uint64_t)k + 1, 5, 0, chunk);
        tpm_twobit_decode_add(B, chunk, B, dec);
        for (int i = 0; i < B; i++) {
            mean[i] += dec[i];
        }
    }
    s = scale_of(chunk, 0);
    cr_assert_geq(s, 0.43f); /* max |x| = 0.43, rounded up to bf16 */
    for (int i = 0; i < B; i++) {
        const double m   = mean[i] / M;
        const double var = (double)s * fabs((double)x[i]) - (double)x[i] * x[i];
        /* 5 standard errors of the mean, plus the documented 2^-24 s bias */
        const double tol = 5.0 * sqrt(var / M) + ldexp(s, -24) + 1e-12;
        const double z   = fabs(m - x[i]);
        cr_expect_leq(z, tol, "i=%d x=%g mean=%g tol=%g", i, x[i], m, tol);
    }
    /* the same key gives the same bytes (counter-based draws) */
    {
        uint8_t a[20], b[20];
        tpm_twobit_encode(TPM_TWOBIT_STOCHASTIC, B, x, B, NULL, 99, 5, 0, a);
        tpm_twobit_encode(TPM_TWOBIT_STOCHASTIC, B, x, B, NULL, 99, 5, 0, b);
        cr_expect_eq(memcmp(a, b, sizeof(a)), 0);
        tpm_twobit_encode(TPM_TWOBIT_STOCHASTIC, B, x, B, NULL, 99, 6, 0, b);
        cr_expect_neq(memcmp(a, b, sizeof(a)), 0, "another stream draws other numbers");
    }
}

Test(twobit, non_finite_input_reaches_the_decoded_block)
{
    float   g[8] = {1, 2, NAN, 4, 5, 6, 7, 8}, r[8] = {0}, dec[8] = {0};
    float   h[8] = {1, 2, INFINITY, 4, 5, 6, 7, 8};
    uint8_t chunk[4]; /* 1 block of 8: 2 scale bytes + 2 code bytes */

    cr_assert_eq(tpm_twobit_chunk_bytes(8, 8), sizeof(chunk));
    for (int mode = 0; mode < 3; mode++) {
        memset(r, 0, sizeof(r));
        memset(dec, 0, sizeof(dec));
        tpm_twobit_encode((tpm_twobit_mode_t)mode, 8, g, 8, mode == 2 ? NULL : (void *)r, 1, 0, 0,
                          chunk);
        tpm_twobit_decode_add(8, chunk, 8, dec);
        cr_expect(isnan(dec[0]), "mode %d: a NaN in the block must show in the decoded block",
                  mode);
        memset(r, 0, sizeof(r));
        memset(dec, 0, sizeof(dec));
        tpm_twobit_encode((tpm_twobit_mode_t)mode, 8, h, 8, mode == 2 ? NULL : (void *)r, 1, 0, 0,
                          chunk);
        tpm_twobit_decode_add(8, chunk, 8, dec);
        cr_expect(!isfinite(dec[0]), "mode %d: an Inf in the block must show", mode);
    }
}

Test(twobit, decode_add_sums_chunks_in_order)
{
    float   a[6] = {1, -1, 1, -1, 0, 0}, b[6] = {0.5f, 0.5f, -0.5f, 0, 0, 0.3f};
    float   ra[6] = {0}, rb[6] = {0}, da[6] = {0}, db[6] = {0}, acc[6] = {0};
    uint8_t ca[8], cb[8];

    tpm_twobit_encode(TPM_TWOBIT_EF_FP32, 4, a, 6, ra, 0, 0, 0, ca);
    tpm_twobit_encode(TPM_TWOBIT_EF_FP32, 4, b, 6, rb, 0, 0, 0, cb);
    tpm_twobit_decode_add(4, ca, 6, da);
    tpm_twobit_decode_add(4, cb, 6, db);
    tpm_twobit_decode_add(4, ca, 6, acc);
    tpm_twobit_decode_add(4, cb, 6, acc);
    for (int i = 0; i < 6; i++) {
        cr_expect_eq(acc[i], (0.0f + da[i]) + db[i], "i=%d", i);
    }
}
