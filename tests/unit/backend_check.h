/* SPDX-License-Identifier: MIT */
/*
 * backend_check.h: helpers of the backend unit tests (test_backend_cpu.c,
 * test_backend_llama.c), header-only: a deterministic xorshift64* generator, vectors, the
 * normalised error against a double-precision reference, and the finite-difference check.
 */
#ifndef TPM_TESTS_UNIT_BACKEND_CHECK_H
#define TPM_TESTS_UNIT_BACKEND_CHECK_H

#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define REF_TOL 1e-5
#define FD_TOL  5e-3
#define FD_STEP 1e-2f

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* uniform in [-1, 1) (xorshift64*) */
static inline float frand(void)
{
    uint64_t x = rng_state;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return (float)((double)((x * 0x2545f4914f6cdd1dull) >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

static inline float *fvec(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof(float));

    cr_assert_not_null(p);
    return p;
}

static inline double *dvec(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof(double));

    cr_assert_not_null(p);
    return p;
}

static inline float *frand_vec(size_t n, float scale)
{
    float *p = fvec(n);

    for (size_t i = 0; i < n; i++) {
        p[i] = scale * frand();
    }
    return p;
}

static inline float *fcopy(const float *src, size_t n)
{
    float *p = fvec(n);

    memcpy(p, src, n * sizeof(float));
    return p;
}

/* normalised max error of got against ref; fails on NaN/Inf */
static inline double nerr(const float *got, const double *ref, size_t n)
{
    double emax = 0.0, rmax = 0.0;

    for (size_t i = 0; i < n; i++) {
        cr_assert(isfinite(got[i]), "element %zu is %f", i, (double)got[i]);
        emax = fmax(emax, fabs((double)got[i] - ref[i]));
        rmax = fmax(rmax, fabs(ref[i]));
    }
    return rmax > 0.0 ? emax / rmax : emax;
}

static inline void expect_close(const float *got, const double *ref, size_t n, double tol,
                         const char *what)
{
    double e = nerr(got, ref, n);

    cr_expect(e <= tol, "%s: normalised error %.3g > %.3g", what, e, tol);
}

/* sum_i g_i * y_i in double: the scalar loss of every finite-difference check */
static inline double dot_loss(const float *g, const float *y, size_t n)
{
    double s = 0.0;

    for (size_t i = 0; i < n; i++) {
        s += (double)g[i] * (double)y[i];
    }
    return s;
}

typedef double (*loss_fn_t)(void *ctx);

/*
 * Central differences of fn with respect to every element of x, compared with the
 * analytic gradient: max |fd - grad| <= FD_TOL * max |grad|. The step actually
 * taken, (x+h) - (x-h) in float, is used as the denominator.
 */
static inline void fd_check(float *x, size_t n, const float *grad, loss_fn_t fn, void *ctx,
                     const char *what)
{
    double emax = 0.0, gmax = 0.0;

    for (size_t i = 0; i < n; i++) {
        float  x0 = x[i];
        float  xp = x0 + FD_STEP, xm = x0 - FD_STEP;
        double lp, lm, fd;

        x[i] = xp;
        lp   = fn(ctx);
        x[i] = xm;
        lm   = fn(ctx);
        x[i] = x0;
        fd   = (lp - lm) / ((double)xp - (double)xm);
        cr_assert(isfinite(grad[i]), "%s: gradient %zu is not finite", what, i);
        emax = fmax(emax, fabs(fd - (double)grad[i]));
        gmax = fmax(gmax, fabs((double)grad[i]));
    }
    cr_expect(gmax > 0.0, "%s: gradient is all zero", what);
    cr_expect(emax <= FD_TOL * gmax, "%s: finite-difference error %.3g > %.3g * max|grad| %.3g",
              what, emax, FD_TOL, gmax);
}

#endif /* TPM_TESTS_UNIT_BACKEND_CHECK_H */
