/* SPDX-License-Identifier: MIT */
/*
 * test_rng.c: unit tests of src/base/rng.c, the counter-based generator: a value depends
 * only on (seed, stream, index), uniforms lie in [0, 1) on a 2^-24 grid, and the normal
 * draws have the moments of N(0, 1) within a few standard errors.
 */
#include "base/rng.h"

#include <criterion/criterion.h>
#include <math.h>

#define N_DRAWS 1000000

TestSuite(rng, .timeout = 30);

Test(rng, same_counter_gives_the_same_value)
{
    for (uint64_t i = 0; i < 1000; i++) {
        cr_expect_eq(tpm_rng_u64(1337, 3, i), tpm_rng_u64(1337, 3, i));
        cr_expect_eq(tpm_rng_uniform(1337, 3, i), tpm_rng_uniform(1337, 3, i));
        cr_expect_eq(tpm_rng_normal(1337, 3, i), tpm_rng_normal(1337, 3, i));
    }
    /* order of draws does not matter: reading backwards gives the same values */
    uint64_t fwd[16];
    for (uint64_t i = 0; i < 16; i++) {
        fwd[i] = tpm_rng_u64(7, 0, i);
    }
    for (uint64_t i = 16; i-- > 0;) {
        cr_expect_eq(tpm_rng_u64(7, 0, i), fwd[i]);
    }
}

Test(rng, seed_stream_and_index_all_change_the_value)
{
    uint64_t base = tpm_rng_u64(1, 2, 3);

    cr_expect_neq(tpm_rng_u64(2, 2, 3), base);
    cr_expect_neq(tpm_rng_u64(1, 3, 3), base);
    cr_expect_neq(tpm_rng_u64(1, 2, 4), base);
    /* swapping the roles of stream and index must not collide */
    cr_expect_neq(tpm_rng_u64(1, 3, 2), base);
    cr_expect_neq(tpm_rng_u64(0, 0, 1), tpm_rng_u64(0, 1, 0));
}

Test(rng, consecutive_values_are_distinct)
{
    int dup = 0;

    for (uint64_t i = 1; i < 100000; i++) {
        dup += tpm_rng_u64(42, 0, i) == tpm_rng_u64(42, 0, i - 1);
    }
    cr_expect_eq(dup, 0);
}

Test(rng, u64_bits_are_balanced)
{
    int ones[64] = {0};

    for (uint64_t i = 0; i < 20000; i++) {
        uint64_t v = tpm_rng_u64(99, 1, i);

        for (int b = 0; b < 64; b++) {
            ones[b] += (int)((v >> b) & 1u);
        }
    }
    /* each bit is set half of the time; 20000 draws: sd ~71, allow ~6 sd */
    for (int b = 0; b < 64; b++) {
        cr_expect(ones[b] > 9570 && ones[b] < 10430, "bit %d set %d of 20000 times", b, ones[b]);
    }
}

Test(rng, uniform_is_in_the_unit_interval_on_a_24_bit_grid)
{
    double sum = 0.0, sum2 = 0.0;
    float  lo = 1.0f, hi = 0.0f;

    for (uint64_t i = 0; i < N_DRAWS; i++) {
        float u = tpm_rng_uniform(1337, 0, i);
        float g = u * 16777216.0f;

        cr_assert(u >= 0.0f && u < 1.0f, "uniform %g out of [0, 1) at %llu", (double)u,
                  (unsigned long long)i);
        cr_assert_eq(g, floorf(g), "uniform %g not on the 2^-24 grid", (double)u);
        sum += u;
        sum2 += (double)u * u;
        lo = fminf(lo, u);
        hi = fmaxf(hi, u);
    }
    double mean = sum / N_DRAWS, var = sum2 / N_DRAWS - mean * mean;
    cr_expect(fabs(mean - 0.5) < 0.002, "mean %g", mean);
    cr_expect(fabs(var - 1.0 / 12.0) < 0.002, "variance %g", var);
    cr_expect_lt(lo, 1e-4f);
    cr_expect_gt(hi, 1.0f - 1e-4f);
}

Test(rng, normal_has_standard_moments)
{
    double m1 = 0, m2 = 0, m3 = 0, m4 = 0;
    long   tail = 0;

    for (uint64_t i = 0; i < N_DRAWS; i++) {
        double x = tpm_rng_normal(2024, 5, i);

        cr_assert(isfinite(x), "normal draw %llu is not finite", (unsigned long long)i);
        m1 += x;
        m2 += x * x;
        m3 += x * x * x;
        m4 += x * x * x * x;
        tail += fabs(x) > 3.0;
    }
    m1 /= N_DRAWS;
    m2 /= N_DRAWS;
    m3 /= N_DRAWS;
    m4 /= N_DRAWS;
    /* standard errors at 1e6 draws: mean 0.001, E[x^2] 0.0014, E[x^3] 0.0039, E[x^4] 0.0095 */
    cr_expect(fabs(m1) < 0.006, "mean %g", m1);
    cr_expect(fabs(m2 - 1.0) < 0.008, "E[x^2] %g", m2);
    cr_expect(fabs(m3) < 0.025, "E[x^3] %g", m3);
    cr_expect(fabs(m4 - 3.0) < 0.06, "E[x^4] %g", m4);
    /* P(|x| > 3) = 0.0027: 2700 expected, sd ~52 */
    cr_expect(tail > 2400 && tail < 3000, "%ld draws beyond 3 sigma", tail);
}

Test(rng, normal_streams_are_uncorrelated)
{
    double sxy = 0;

    for (uint64_t i = 0; i < N_DRAWS / 4; i++) {
        sxy += (double)tpm_rng_normal(1, 0, i) * tpm_rng_normal(1, 1, i);
    }
    /* correlation of independent N(0,1) over 250000 pairs: sd 0.002 */
    cr_expect(fabs(sxy / (N_DRAWS / 4)) < 0.012, "correlation %g", sxy / (N_DRAWS / 4));
}
