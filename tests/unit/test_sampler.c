/* SPDX-License-Identifier: MIT */
/*
 * test_sampler.c: greedy choice and its ties, then the sampled distributions against their
 * closed forms (temperature, top-k, top-p), measured over 20000 draws (steps 0..19999 of
 * one seed): a frequency is within 0.015 of its probability (about 4.5 standard deviations
 * at p = 0.5); and the bucketed top-p search against a nucleus found by a full sort.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/sampler.h"

#define DRAWS 20000
#define FTOL  0.015

TestSuite(sampler, .timeout = 30);

static tpm_sampler_t *make(int V)
{
    tpm_sampler_t *s = NULL;

    cr_assert_eq(tpm_sampler_create(V, &s), TPM_OK);
    return s;
}

/* frequencies of each id over DRAWS steps */
static double *freq(tpm_sampler_t *s, const float *l, tpm_sampler_params_t p)
{
    double *f = calloc((size_t)s->V, sizeof(double));

    for (int i = 0; i < DRAWS; i++) {
        int32_t t = tpm_sampler_sample(s, l, &p, (uint64_t)i);

        cr_assert(t >= 0 && t < s->V);
        f[t] += 1.0 / DRAWS;
    }
    return f;
}

Test(sampler, greedy_takes_the_largest_logit_the_lowest_id_on_ties_and_skips_nan)
{
    tpm_sampler_t       *s    = make(6);
    float                l[6] = {0.5f, 2.0f, NAN, 2.0f, -1.0f, 1.0f};
    tpm_sampler_params_t p    = {0.0f, 3, 0.5f, 42};

    cr_expect_eq(tpm_sampler_sample(s, l, &p, 0), 1);
    cr_expect_eq(tpm_sampler_sample(s, l, &p, 7), 1); /* the step does not matter */
    l[2] = 3.0f;
    cr_expect_eq(tpm_sampler_sample(s, l, &p, 0), 2);
    p.temperature = 1.5f, p.top_k = 1; /* top_k 1 is greedy whatever the temperature */
    cr_expect_eq(tpm_sampler_sample(s, l, &p, 0), 2);
    p.temperature = NAN, p.top_k = 0; /* a NaN temperature counts as 0 */
    cr_expect_eq(tpm_sampler_sample(s, l, &p, 0), 2);
    tpm_sampler_destroy(s);
}

Test(sampler, temperature_sampling_follows_the_softmax)
{
    tpm_sampler_t       *s    = make(3);
    const float          l[3] = {0.0f, logf(2.0f), logf(4.0f)}; /* 1/7, 2/7, 4/7 */
    tpm_sampler_params_t p    = {1.0f, 0, 1.0f, 7};
    double              *f    = freq(s, l, p);

    for (int i = 0; i < 3; i++) {
        cr_expect(fabs(f[i] - (double)(1 << i) / 7.0) < FTOL, "id %d: %f", i, f[i]);
    }
    free(f);
    /* T = 2 halves the logits: probabilities 1, sqrt 2, 2 over their sum */
    p.temperature = 2.0f;
    f             = freq(s, l, p);
    for (int i = 0; i < 3; i++) {
        double want = pow(2.0, i / 2.0) / (1.0 + sqrt(2.0) + 2.0);

        cr_expect(fabs(f[i] - want) < FTOL, "T=2 id %d: %f want %f", i, f[i], want);
    }
    free(f);
    tpm_sampler_destroy(s);
}

Test(sampler, top_k_keeps_the_k_best_and_renormalises)
{
    tpm_sampler_t       *s    = make(5);
    const float          l[5] = {logf(4.0f), 0.0f, logf(2.0f), -1.0f, logf(3.0f)};
    tpm_sampler_params_t p    = {1.0f, 2, 1.0f, 3};
    double              *f    = freq(s, l, p);

    cr_expect(fabs(f[0] - 4.0 / 7.0) < FTOL, "%f", f[0]);
    cr_expect(fabs(f[4] - 3.0 / 7.0) < FTOL, "%f", f[4]);
    cr_expect(f[1] == 0.0 && f[2] == 0.0 && f[3] == 0.0);
    free(f);
    tpm_sampler_destroy(s);
}

Test(sampler, top_p_keeps_the_smallest_prefix_that_reaches_the_mass)
{
    tpm_sampler_t       *s    = make(4);
    const float          l[4] = {logf(0.15f), logf(0.5f), logf(0.05f), logf(0.3f)};
    tpm_sampler_params_t p    = {1.0f, 0, 0.7f, 11}; /* 0.5 < 0.7 <= 0.5 + 0.3 */
    double              *f    = freq(s, l, p);

    cr_expect(fabs(f[1] - 0.625) < FTOL, "%f", f[1]);
    cr_expect(fabs(f[3] - 0.375) < FTOL, "%f", f[3]);
    cr_expect(f[0] == 0.0 && f[2] == 0.0);
    free(f);
    /* with top_k first: top_k 3 then top_p 0.9 of {0.5, 0.3, 0.15}/0.95 keeps all three */
    p.top_k = 3, p.top_p = 0.9f;
    f = freq(s, l, p);
    cr_expect(f[2] == 0.0 && f[0] > 0.1, "%f %f", f[2], f[0]);
    free(f);
    tpm_sampler_destroy(s);
}

typedef struct {
    float   v;
    int32_t id;
} cand_t;

static int by_rank(const void *a, const void *b)
{
    const cand_t *x = a, *y = b;

    return x->v > y->v ? -1 : x->v < y->v ? 1 : (x->id > y->id) - (x->id < y->id);
}

/* the nucleus by a full sort, for comparison: in[id] = 1 for kept ids; returns its mass */
static double ref_nucleus(const float *l, int V, double T, double top_p, char *in)
{
    cand_t *c  = malloc((size_t)V * sizeof(*c));
    double  mx = -INFINITY, total = 0.0, cum = 0.0;

    for (int i = 0; i < V; i++) {
        c[i] = (cand_t){l[i], i};
        mx   = fmax(mx, l[i] / T);
    }
    for (int i = 0; i < V; i++) {
        total += exp(l[i] / T - mx);
    }
    qsort(c, (size_t)V, sizeof(*c), by_rank);
    memset(in, 0, (size_t)V);
    for (int j = 0; j < V; j++) {
        in[c[j].id] = 1;
        cum += exp(c[j].v / T - mx);
        if (cum >= top_p * total) {
            break;
        }
    }
    free(c);
    return cum / total;
}

Test(sampler, top_p_over_a_large_vocabulary_keeps_exactly_the_sorted_nucleus)
{
    const int      V  = 5000;
    float         *l  = malloc((size_t)V * sizeof(float));
    char          *in = malloc((size_t)V);
    tpm_sampler_t *s  = make(V);

    /* a nearly flat distribution (the whole vocabulary in a few buckets) and a spread one */
    for (int k = 0; k < 2; k++) {
        tpm_sampler_params_t p       = {0.7f, 0, k ? 0.6f : 0.5f, 5};
        int                  outside = 0, seen = 0;
        double               kept;

        for (int i = 0; i < V; i++) {
            l[i] = k ? 3.0f * sinf(0.37f * (float)i) * cosf(0.011f * (float)i) : -1e-5f * (float)i;
        }
        kept = ref_nucleus(l, V, p.temperature, p.top_p, in);
        for (int i = 0; i < 2000; i++) {
            int32_t t = tpm_sampler_sample(s, l, &p, (uint64_t)i);

            outside += !in[t];
            seen += in[t];
        }
        cr_expect_eq(outside, 0, "case %d: %d draws outside the nucleus (mass %.3f)", k, outside,
                     kept);
        cr_expect(kept >= p.top_p && seen == 2000);
    }
    free(l), free(in);
    tpm_sampler_destroy(s);
}

Test(sampler, a_draw_depends_only_on_seed_and_step)
{
    tpm_sampler_t       *s = make(50);
    float                l[50];
    tpm_sampler_params_t p      = {0.9f, 20, 0.95f, 1234};
    int                  differ = 0;

    for (int i = 0; i < 50; i++) {
        l[i] = sinf((float)i);
    }
    for (uint64_t step = 0; step < 64; step++) {
        int32_t a = tpm_sampler_sample(s, l, &p, step);

        cr_expect_eq(a, tpm_sampler_sample(s, l, &p, step));
        p.seed = 4321;
        differ += a != tpm_sampler_sample(s, l, &p, step);
        p.seed = 1234;
    }
    cr_expect(differ > 8, "another seed changed only %d of 64 draws", differ);
    tpm_sampler_destroy(s);
}

/* log-softmax written out in double, for the reference */
static double ref_logprob(const float *l, int V, int t)
{
    double mx = -INFINITY, sum = 0.0;

    for (int i = 0; i < V; i++) {
        mx = fmax(mx, (double)l[i]);
    }
    for (int i = 0; i < V; i++) {
        sum += exp((double)l[i] - mx);
    }
    return (double)l[t] - mx - log(sum);
}

Test(sampler, logprobs_are_the_log_softmax_and_the_top_k_is_sorted)
{
    float   l[300], lp, top_lp[TPM_LOGPROBS_MAX_TOP];
    int32_t top[TPM_LOGPROBS_MAX_TOP];

    for (int i = 0; i < 300; i++) {
        l[i] = 30.0f * sinf(0.37f * (float)i); /* large values: needs the max subtracted */
    }
    for (int t = 0; t < 300; t += 13) {
        tpm_logprobs(l, 300, t, 20, &lp, top, top_lp);
        cr_assert(fabs(lp - ref_logprob(l, 300, t)) < 1e-5, "token %d: %g vs %g", t, lp,
                  ref_logprob(l, 300, t));
    }
    for (int k = 0; k < 20; k++) {
        cr_assert(fabs(top_lp[k] - ref_logprob(l, 300, top[k])) < 1e-5);
        if (k > 0) {
            cr_assert(top_lp[k] <= top_lp[k - 1], "not sorted at %d", k);
        }
    }
    /* the top-k are the k largest: nothing outside beats the last one */
    for (int i = 0; i < 300; i++) {
        int in = 0;

        for (int k = 0; k < 20; k++) {
            in |= top[k] == i;
        }
        cr_assert(in || l[i] <= l[top[19]], "token %d missing from the top 20", i);
    }
}

Test(sampler, logprobs_ties_keep_the_lowest_id_and_nan_is_minus_infinity)
{
    float   l[6] = {1.0f, 3.0f, 3.0f, NAN, 3.0f, 0.0f}, lp, top_lp[4];
    int32_t top[4];

    tpm_logprobs(l, 6, 3, 4, &lp, top, top_lp);
    cr_assert(isinf(lp) && lp < 0.0f, "NaN logit: %g", lp);
    cr_assert_eq(top[0], 1);
    cr_assert_eq(top[1], 2);
    cr_assert_eq(top[2], 4);
    cr_assert_eq(top[3], 0);
    tpm_logprobs(l, 6, 1, 0, &lp, top, top_lp); /* k = 0: only the token */
    cr_assert(fabs(lp - log(exp(3.0) / (exp(1.0) + 3 * exp(3.0) + 1.0))) < 1e-6);
    tpm_logprobs(l, 2, 0, 20, &lp, top, top_lp); /* k > V: V entries */
    cr_assert_eq(top[0], 1);
    cr_assert_eq(top[1], 0);
}

Test(sampler, adjust_applies_bias_then_presence_and_frequency_per_distinct_token)
{
    float   l[8]      = {0, 0, 0, 0, 0, 0, 0, 0};
    int32_t counts[8] = {0}, gen[6] = {2, 5, 2, 2, 7, 99}, ids[3] = {1, 5, -4};
    float   val[3] = {100.0f, -1.0f, 3.0f};

    tpm_sampler_adjust(l, 8, ids, val, 3, gen, 6, 0.5f, 0.25f, counts);
    cr_assert_eq(l[0], 0.0f);
    cr_assert_eq(l[1], 100.0f);                 /* bias only */
    cr_assert_eq(l[2], -(3 * 0.25f + 0.5f));    /* 3 times */
    cr_assert_eq(l[5], -1.0f - (0.25f + 0.5f)); /* bias, then once */
    cr_assert_eq(l[7], -(0.25f + 0.5f));
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(counts[i], 0, "scratch left dirty at %d", i);
    }
    /* negative penalties raise, and nothing generated changes nothing */
    tpm_sampler_adjust(l, 8, NULL, NULL, 0, NULL, 0, -1.0f, -1.0f, counts);
    cr_assert_eq(l[0], 0.0f);
    tpm_sampler_adjust(l, 8, NULL, NULL, 0, gen, 1, -1.0f, 0.0f, counts);
    cr_assert_eq(l[2], -(3 * 0.25f + 0.5f) + 1.0f);
}
