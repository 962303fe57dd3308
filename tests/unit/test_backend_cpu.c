/* SPDX-License-Identifier: MIT */
/*
 * test_backend_cpu.c: every op of the CPU backend against a naive loop or direct
 * formula evaluated in double, and every backward op against central finite
 * differences of its forward op. Sizes are deliberately odd (N=7, IC=13, OC=5;
 * B=2, T=5, C=12, NH=3) and a few are large enough to take the OpenMP paths.
 *
 * Error measures: "normalised" = max_i |got_i - ref_i| / max_i |ref_i|; NaN and Inf
 * fail. Thresholds are stated at each check: 1e-5 for fp32 kernels vs double
 * references (a few ulp times the reduction length), 5e-3 for finite differences
 * of fp32 forwards (step 1e-2: truncation ~1e-4, rounding ~1e-5 relative).
 */
#include <config.h> /* HAVE_CUDA: "cuda" is refused only in builds without it */

#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/backend_cpu.h"
#include "base/bf16.h"

#include "backend_check.h"

static tpm_backend_t *be;

static void setup(void)
{
    cr_assert_eq(tpm_backend_create("cpu", 0, &be), TPM_OK);
}

static void teardown(void)
{
    tpm_backend_destroy(be);
    be = NULL;
}

TestSuite(backend_cpu, .init = setup, .fini = teardown, .timeout = 60);

/* ------------------------------------------------------------------------------------------ */
/* helpers (and backend_check.h)                                                             */
/* ------------------------------------------------------------------------------------------ */

/* ref[i] = base[i] + add[i]: the expected result of a += op */
static double *plus(const float *base, const double *add, size_t n)
{
    double *r = dvec(n);

    for (size_t i = 0; i < n; i++) {
        r[i] = (double)base[i] + add[i];
    }
    return r;
}


/* ------------------------------------------------------------------------------------------ */
/* creation, memory                                                                           */
/* ------------------------------------------------------------------------------------------ */

Test(backend_cpu, create_selects_the_cpu_ops_and_rejects_unknown_names)
{
    tpm_backend_t *b2 = NULL;

    cr_assert_eq(be->ops, &tpm_backend_cpu_ops);
    cr_assert_str_eq(be->ops->name, "cpu");
    cr_assert_gt(be->n_threads, 0);
    cr_assert_eq(tpm_backend_create("tpu", 0, &b2), TPM_ERR_INVALID_ARG);
    cr_assert_null(b2);
    cr_assert_eq(tpm_backend_create("cpu", -1, &b2), TPM_ERR_INVALID_ARG);
    cr_assert_eq(tpm_backend_create(NULL, 0, &b2), TPM_ERR_INVALID_ARG);
#ifndef HAVE_CUDA
    cr_assert_eq(tpm_backend_create("cuda", 0, &b2), TPM_ERR_UNSUPPORTED);
    cr_assert_null(b2);
#endif
    tpm_backend_destroy(NULL);
}

Test(backend_cpu, create_with_a_thread_count_sets_the_openmp_team)
{
    tpm_backend_t *b1 = NULL;

    cr_assert_eq(tpm_backend_create("cpu", 1, &b1), TPM_OK);
    cr_assert_eq(b1->n_threads, 1);
    cr_assert_eq(omp_get_max_threads(), 1);
    tpm_backend_destroy(b1);
}

Test(backend_cpu, blas_info_names_openblas_and_its_core)
{
    const char *s = tpm_backend_blas_info();

    cr_assert_not_null(s);
    cr_expect_not_null(strstr(s, "OpenBLAS"), "%s", s);
    cr_expect_not_null(strstr(s, "core="), "%s", s);
}

Test(backend_cpu, alloc_memzero_and_copy_round_trip_small_and_large_buffers)
{
    size_t sizes[] = {0, 1, 1000, (size_t)5 << 20}; /* the last one takes the threaded path */

    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t n = sizes[k];
        void  *a = NULL, *b = NULL;
        char  *host = malloc(n ? n : 1);

        cr_assert_not_null(host);
        for (size_t i = 0; i < n; i++) {
            host[i] = (char)(i * 7 + 3);
        }
        cr_assert_eq(be->ops->alloc(be, n, &a), TPM_OK);
        cr_assert_eq(be->ops->alloc(be, n, &b), TPM_OK);
        cr_assert_eq((uintptr_t)a % 64, 0);
        cr_assert_eq(be->ops->copy(be, a, host, n, TPM_COPY_H2D), TPM_OK);
        cr_assert_eq(be->ops->copy(be, b, a, n, TPM_COPY_D2D), TPM_OK);
        memset(host, 0, n);
        cr_assert_eq(be->ops->copy(be, host, b, n, TPM_COPY_D2H), TPM_OK);
        for (size_t i = 0; i < n; i++) {
            cr_assert_eq(host[i], (char)(i * 7 + 3), "n=%zu byte %zu", n, i);
        }
        cr_assert_eq(be->ops->memzero(be, b, n), TPM_OK);
        for (size_t i = 0; i < n; i++) {
            cr_assert_eq(((char *)b)[i], 0, "n=%zu byte %zu", n, i);
        }
        cr_assert_eq(be->ops->sync(be), TPM_OK);
        be->ops->free(be, a);
        be->ops->free(be, b);
        free(host);
    }
    be->ops->free(be, NULL);
}

Test(backend_cpu, copy_handles_overlapping_ranges_and_rejects_bad_kinds)
{
    size_t n   = (size_t)6 << 20;
    char  *buf = malloc(n + 4096);

    cr_assert_not_null(buf);
    for (size_t i = 0; i < n + 4096; i++) {
        buf[i] = (char)(i % 251);
    }
    cr_assert_eq(be->ops->copy(be, buf + 4096, buf, n, TPM_COPY_D2D), TPM_OK);
    for (size_t i = 0; i < n; i += 997) {
        cr_assert_eq(buf[4096 + i], (char)(i % 251), "byte %zu", i);
    }
    cr_assert_eq(be->ops->copy(be, buf, buf + 1, 1, (tpm_copy_kind_t)7), TPM_ERR_INVALID_ARG);
    free(buf);
}

/* ------------------------------------------------------------------------------------------ */
/* encoder                                                                                    */
/* ------------------------------------------------------------------------------------------ */

enum { EB = 2, ET = 5, EC = 12, EVp = 7 };

static const int32_t enc_tokens[EB * ET] = {3, 0, 6, 3, 3, 1, 6, 2, 3, 0}; /* repeats on purpose */

static void naive_encoder_fwd(double *out, const int32_t *tok, const float *wte, const float *wpe,
                              int B, int T, int C)
{
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            for (int c = 0; c < C; c++) {
                out[((size_t)b * T + t) * C + c] =
                    (double)wte[(size_t)tok[b * T + t] * C + c] + (double)wpe[(size_t)t * C + c];
            }
        }
    }
}

Test(backend_cpu, encoder_forward_adds_token_and_position_rows)
{
    size_t  n   = (size_t)EB * ET * EC;
    float  *wte = frand_vec((size_t)EVp * EC, 1.0f), *wpe = frand_vec((size_t)ET * EC, 1.0f);
    float  *out = fvec(n);
    double *ref = dvec(n);

    cr_assert_eq(be->ops->encoder_fwd(be, out, enc_tokens, wte, wpe, EB, ET, EC), TPM_OK);
    naive_encoder_fwd(ref, enc_tokens, wte, wpe, EB, ET, EC);
    expect_close(out, ref, n, 1e-7, "encoder out"); /* one rounding: tolerance 1e-7 */
    free(wte), free(wpe), free(out), free(ref);
}

Test(backend_cpu, encoder_backward_adds_into_repeated_token_rows)
{
    size_t  n    = (size_t)EB * ET * EC;
    float  *dout = frand_vec(n, 1.0f);
    float  *dwte = frand_vec((size_t)EVp * EC, 1.0f), *dwpe = frand_vec((size_t)ET * EC, 1.0f);
    double *gte = dvec((size_t)EVp * EC), *gpe = dvec((size_t)ET * EC);
    double *rte, *rpe;

    for (int bt = 0; bt < EB * ET; bt++) {
        for (int c = 0; c < EC; c++) {
            gte[(size_t)enc_tokens[bt] * EC + c] += dout[(size_t)bt * EC + c];
            gpe[(size_t)(bt % ET) * EC + c] += dout[(size_t)bt * EC + c];
        }
    }
    rte = plus(dwte, gte, (size_t)EVp * EC);
    rpe = plus(dwpe, gpe, (size_t)ET * EC);
    cr_assert_eq(be->ops->encoder_bwd(be, dwte, dwpe, dout, enc_tokens, EB, ET, EC), TPM_OK);
    expect_close(dwte, rte, (size_t)EVp * EC, REF_TOL, "dwte");
    expect_close(dwpe, rpe, (size_t)ET * EC, REF_TOL, "dwpe");
    /* rows of tokens that never occur keep their old values exactly (token 4, 5) */
    for (int c = 0; c < EC; c++) {
        cr_expect_eq(dwte[4 * EC + c], (float)rte[4 * EC + c]);
    }
    free(dout), free(dwte), free(dwpe), free(gte), free(gpe), free(rte), free(rpe);
}

typedef struct {
    float *out, *wte, *wpe, *g;
} enc_ctx_t;

static double enc_loss(void *p)
{
    enc_ctx_t *c = p;

    cr_assert_eq(be->ops->encoder_fwd(be, c->out, enc_tokens, c->wte, c->wpe, EB, ET, EC), TPM_OK);
    return dot_loss(c->g, c->out, (size_t)EB * ET * EC);
}

Test(backend_cpu, encoder_backward_matches_finite_differences)
{
    size_t    n    = (size_t)EB * ET * EC;
    enc_ctx_t c    = {fvec(n), frand_vec((size_t)EVp * EC, 1.0f), frand_vec((size_t)ET * EC, 1.0f),
                      frand_vec(n, 1.0f)};
    float    *dwte = fvec((size_t)EVp * EC), *dwpe = fvec((size_t)ET * EC);

    cr_assert_eq(be->ops->encoder_bwd(be, dwte, dwpe, c.g, enc_tokens, EB, ET, EC), TPM_OK);
    fd_check(c.wte, (size_t)EVp * EC, dwte, enc_loss, &c, "encoder dwte");
    fd_check(c.wpe, (size_t)ET * EC, dwpe, enc_loss, &c, "encoder dwpe");
    free(c.out), free(c.wte), free(c.wpe), free(c.g), free(dwte), free(dwpe);
}

Test(backend_cpu, encoder_rejects_negative_tokens)
{
    int32_t tok[2] = {1, -3};
    float   wte[8] = {0}, wpe[8] = {0}, out[8];

    cr_assert_eq(be->ops->encoder_fwd(be, out, tok, wte, wpe, 1, 2, 4), TPM_ERR_INVALID_ARG);
    cr_assert_eq(be->ops->encoder_bwd(be, wte, wpe, out, tok, 1, 2, 4), TPM_ERR_INVALID_ARG);
}

/* ------------------------------------------------------------------------------------------ */
/* layernorm                                                                                  */
/* ------------------------------------------------------------------------------------------ */

enum { LN = 7, LC = 13 };

static void naive_ln_fwd(double *out, double *mean, double *rstd, const float *x, const float *w,
                         const float *b, int N, int C)
{
    for (int n = 0; n < N; n++) {
        double m = 0.0, v = 0.0, s;

        for (int c = 0; c < C; c++) {
            m += x[n * C + c];
        }
        m /= C;
        for (int c = 0; c < C; c++) {
            v += (x[n * C + c] - m) * (x[n * C + c] - m);
        }
        s = 1.0 / sqrt(v / C + 1e-5);
        for (int c = 0; c < C; c++) {
            out[n * C + c] = (x[n * C + c] - m) * s * w[c] + b[c];
        }
        mean[n] = m;
        rstd[n] = s;
    }
}

Test(backend_cpu, layernorm_forward_matches_naive_double)
{
    float  *x = frand_vec(LN * LC, 2.0f), *w = frand_vec(LC, 1.0f), *b = frand_vec(LC, 1.0f);
    float  *out = fvec(LN * LC), *mean = fvec(LN), *rstd = fvec(LN);
    double *rout = dvec(LN * LC), *rmean = dvec(LN), *rrstd = dvec(LN);

    for (int c = 0; c < LC; c++) {
        x[c] += 100.0f; /* an offset row: the variance must not cancel */
    }
    cr_assert_eq(be->ops->layernorm_fwd(be, out, mean, rstd, x, w, b, LN, LC), TPM_OK);
    naive_ln_fwd(rout, rmean, rrstd, x, w, b, LN, LC);
    expect_close(out, rout, LN * LC, REF_TOL, "ln out");
    expect_close(mean, rmean, LN, REF_TOL, "ln mean");
    expect_close(rstd, rrstd, LN, REF_TOL, "ln rstd");
    /* mean and rstd are optional (inference) */
    cr_assert_eq(be->ops->layernorm_fwd(be, out, NULL, NULL, x, w, b, LN, LC), TPM_OK);
    expect_close(out, rout, LN * LC, REF_TOL, "ln out without stats");
    free(x), free(w), free(b), free(out), free(mean), free(rstd), free(rout), free(rmean),
        free(rrstd);
}

Test(backend_cpu, layernorm_backward_matches_the_formula_and_accumulates)
{
    float *x = frand_vec(LN * LC, 2.0f), *w = frand_vec(LC, 1.0f), *b = frand_vec(LC, 1.0f);
    float *dout = frand_vec(LN * LC, 1.0f), *out = fvec(LN * LC), *mean = fvec(LN),
          *rstd = fvec(LN);
    float  *dx = frand_vec(LN * LC, 1.0f), *dw = frand_vec(LC, 1.0f), *db = frand_vec(LC, 1.0f);
    double *gx = dvec(LN * LC), *gw = dvec(LC), *gb = dvec(LC);
    double *rx, *rw, *rb;

    cr_assert_eq(be->ops->layernorm_fwd(be, out, mean, rstd, x, w, b, LN, LC), TPM_OK);
    for (int n = 0; n < LN; n++) {
        double m = mean[n], s = rstd[n], sg = 0.0, sgx = 0.0;

        for (int c = 0; c < LC; c++) {
            double xh = (x[n * LC + c] - m) * s, g = (double)dout[n * LC + c] * w[c];

            sg += g;
            sgx += g * xh;
            gw[c] += dout[n * LC + c] * xh;
            gb[c] += dout[n * LC + c];
        }
        for (int c = 0; c < LC; c++) {
            double xh = (x[n * LC + c] - m) * s, g = (double)dout[n * LC + c] * w[c];

            gx[n * LC + c] = s * (g - sg / LC - xh * sgx / LC);
        }
    }
    rx = plus(dx, gx, LN * LC);
    rw = plus(dw, gw, LC);
    rb = plus(db, gb, LC);
    cr_assert_eq(be->ops->layernorm_bwd(be, dx, dw, db, dout, x, w, mean, rstd, LN, LC), TPM_OK);
    expect_close(dx, rx, LN * LC, REF_TOL, "ln dinp");
    expect_close(dw, rw, LC, REF_TOL, "ln dw");
    expect_close(db, rb, LC, REF_TOL, "ln db");
    free(x), free(w), free(b), free(dout), free(out), free(mean), free(rstd), free(dx), free(dw),
        free(db), free(gx), free(gw), free(gb), free(rx), free(rw), free(rb);
}

typedef struct {
    float *x, *w, *b, *out, *mean, *rstd, *g;
} ln_ctx_t;

static double ln_loss(void *p)
{
    ln_ctx_t *c = p;

    cr_assert_eq(be->ops->layernorm_fwd(be, c->out, c->mean, c->rstd, c->x, c->w, c->b, LN, LC),
                 TPM_OK);
    return dot_loss(c->g, c->out, LN * LC);
}

Test(backend_cpu, layernorm_backward_matches_finite_differences)
{
    ln_ctx_t c  = {frand_vec(LN * LC, 2.0f),
                   frand_vec(LC, 1.0f),
                   frand_vec(LC, 1.0f),
                   fvec(LN * LC),
                   fvec(LN),
                   fvec(LN),
                   frand_vec(LN * LC, 1.0f)};
    float   *dx = fvec(LN * LC), *dw = fvec(LC), *db = fvec(LC);

    ln_loss(&c);
    cr_assert_eq(be->ops->layernorm_bwd(be, dx, dw, db, c.g, c.x, c.w, c.mean, c.rstd, LN, LC),
                 TPM_OK);
    fd_check(c.x, LN * LC, dx, ln_loss, &c, "layernorm dinp");
    fd_check(c.w, LC, dw, ln_loss, &c, "layernorm dw");
    fd_check(c.b, LC, db, ln_loss, &c, "layernorm db");
    free(c.x), free(c.w), free(c.b), free(c.out), free(c.mean), free(c.rstd), free(c.g), free(dx),
        free(dw), free(db);
}

Test(backend_cpu, layernorm_backward_does_not_depend_on_the_thread_count)
{
    int    N = 96, C = 768; /* large enough for the threaded path */
    size_t n = (size_t)N * C;
    float *x = frand_vec(n, 1.0f), *w = frand_vec((size_t)C, 1.0f), *b = frand_vec((size_t)C, 1.0f);
    float *dout = frand_vec(n, 1.0f), *out = fvec(n), *mean = fvec((size_t)N),
          *rstd = fvec((size_t)N);
    float *dx[2], *dw[2], *db[2];
    int    nthr = omp_get_max_threads();

    cr_assert_eq(be->ops->layernorm_fwd(be, out, mean, rstd, x, w, b, N, C), TPM_OK);
    for (int k = 0; k < 2; k++) {
        dx[k] = fvec(n), dw[k] = fvec((size_t)C), db[k] = fvec((size_t)C);
        omp_set_num_threads(k == 0 ? 1 : (nthr > 1 ? nthr : 2));
        cr_assert_eq(be->ops->layernorm_bwd(be, dx[k], dw[k], db[k], dout, x, w, mean, rstd, N, C),
                     TPM_OK);
    }
    omp_set_num_threads(nthr);
    cr_expect_eq(memcmp(dx[0], dx[1], n * sizeof(float)), 0);
    cr_expect_eq(memcmp(dw[0], dw[1], (size_t)C * sizeof(float)), 0);
    cr_expect_eq(memcmp(db[0], db[1], (size_t)C * sizeof(float)), 0);
    for (int k = 0; k < 2; k++) {
        free(dx[k]), free(dw[k]), free(db[k]);
    }
    free(x), free(w), free(b), free(dout), free(out), free(mean), free(rstd);
}

/* ------------------------------------------------------------------------------------------ */
/* matmul                                                                                     */
/* ------------------------------------------------------------------------------------------ */

enum { MN = 7, MIC = 13, MOC = 5 };

/* W(o, i) in either storage */
static double wget(const float *w, int o, int i, int IC, int OC, int w_trans)
{
    return w_trans ? (double)w[(size_t)i * OC + o] : (double)w[(size_t)o * IC + i];
}

static void naive_matmul_fwd(double *out, const float *inp, const float *w, const float *bias,
                             int N, int IC, int OC, int w_trans)
{
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < OC; o++) {
            double s = bias ? (double)bias[o] : 0.0;

            for (int i = 0; i < IC; i++) {
                s += (double)inp[(size_t)n * IC + i] * wget(w, o, i, IC, OC, w_trans);
            }
            out[(size_t)n * OC + o] = s;
        }
    }
}

Test(backend_cpu, matmul_forward_matches_naive_for_both_weight_layouts)
{
    for (int wt = 0; wt <= 1; wt++) {
        for (int with_bias = 0; with_bias <= 1; with_bias++) {
            float  *inp = frand_vec(MN * MIC, 1.0f), *w = frand_vec(MOC * MIC, 1.0f);
            float  *bias = with_bias ? frand_vec(MOC, 1.0f) : NULL;
            float  *out  = frand_vec(MN * MOC, 9.0f); /* must be overwritten */
            double *ref  = dvec(MN * MOC);

            cr_assert_eq(be->ops->matmul_fwd(be, out, inp, w, bias, MN, MIC, MOC, wt), TPM_OK);
            naive_matmul_fwd(ref, inp, w, bias, MN, MIC, MOC, wt);
            cr_expect(nerr(out, ref, MN * MOC) <= REF_TOL, "w_trans %d bias %d: error %.3g", wt,
                      with_bias, nerr(out, ref, MN * MOC));
            free(inp), free(w), free(bias), free(out), free(ref);
        }
    }
}

Test(backend_cpu, matmul_forward_of_one_row_matches_naive_for_both_weight_layouts)
{
    /* N = 1 takes the sgemv path (a serving decode step); a large OC takes its threads */
    const int sizes[][2] = {{MIC, MOC}, {96, 4099}};

    for (int k = 0; k < 2; k++) {
        int IC = sizes[k][0], OC = sizes[k][1];

        for (int wt = 0; wt <= 1; wt++) {
            float  *inp = frand_vec((size_t)IC, 1.0f), *w = frand_vec((size_t)OC * IC, 1.0f);
            float  *bias = frand_vec((size_t)OC, 1.0f), *out = frand_vec((size_t)OC, 9.0f);
            double *ref = dvec((size_t)OC);

            cr_assert_eq(be->ops->matmul_fwd(be, out, inp, w, bias, 1, IC, OC, wt), TPM_OK);
            naive_matmul_fwd(ref, inp, w, bias, 1, IC, OC, wt);
            cr_expect(nerr(out, ref, (size_t)OC) <= REF_TOL, "IC %d OC %d w_trans %d: error %.3g",
                      IC, OC, wt, nerr(out, ref, (size_t)OC));
            free(inp), free(w), free(bias), free(out), free(ref);
        }
    }
}

Test(backend_cpu, matmul_backward_matches_naive_and_adds_for_both_weight_layouts)
{
    for (int wt = 0; wt <= 1; wt++) {
        float *inp = frand_vec(MN * MIC, 1.0f), *w = frand_vec(MOC * MIC, 1.0f);
        float *dout = frand_vec(MN * MOC, 1.0f);
        float *dinp = frand_vec(MN * MIC, 1.0f), *dw = frand_vec(MOC * MIC, 1.0f),
              *dbias = frand_vec(MOC, 1.0f);
        double *gi = dvec(MN * MIC), *gw = dvec(MOC * MIC), *gb = dvec(MOC);
        double *ri, *rw, *rb;

        for (int n = 0; n < MN; n++) {
            for (int o = 0; o < MOC; o++) {
                double d = dout[n * MOC + o];

                gb[o] += d;
                for (int i = 0; i < MIC; i++) {
                    gi[n * MIC + i] += d * wget(w, o, i, MIC, MOC, wt);
                    gw[wt ? i * MOC + o : o * MIC + i] += d * inp[n * MIC + i];
                }
            }
        }
        ri = plus(dinp, gi, MN * MIC);
        rw = plus(dw, gw, MOC * MIC);
        rb = plus(dbias, gb, MOC);
        cr_assert_eq(be->ops->matmul_bwd(be, dinp, dw, dbias, dout, inp, w, MN, MIC, MOC, wt),
                     TPM_OK);
        cr_expect(nerr(dinp, ri, MN * MIC) <= REF_TOL, "w_trans %d dinp", wt);
        cr_expect(nerr(dw, rw, MOC * MIC) <= REF_TOL, "w_trans %d dw", wt);
        cr_expect(nerr(dbias, rb, MOC) <= REF_TOL, "w_trans %d dbias", wt);
        free(inp), free(w), free(dout), free(dinp), free(dw), free(dbias), free(gi), free(gw),
            free(gb), free(ri), free(rw), free(rb);
    }
}

Test(backend_cpu, matmul_backward_leaves_null_outputs_out_and_touches_only_the_others)
{
    for (int wt = 0; wt <= 1; wt++) {
        float *inp = frand_vec(MN * MIC, 1.0f), *w = frand_vec(MOC * MIC, 1.0f);
        float *dout = frand_vec(MN * MOC, 1.0f);
        float *dinp = fvec(MN * MIC), *dw = fvec(MOC * MIC), *dbias = fvec(MOC);
        float *dinp1 = fvec(MN * MIC), *dw1 = fvec(MOC * MIC), *dbias1 = fvec(MOC);

        /* all three at once, then each alone: the same numbers */
        cr_assert_eq(be->ops->matmul_bwd(be, dinp, dw, dbias, dout, inp, w, MN, MIC, MOC, wt),
                     TPM_OK);
        cr_assert_eq(be->ops->matmul_bwd(be, dinp1, NULL, NULL, dout, inp, w, MN, MIC, MOC, wt),
                     TPM_OK);
        cr_assert_eq(be->ops->matmul_bwd(be, NULL, dw1, NULL, dout, inp, NULL, MN, MIC, MOC, wt),
                     TPM_OK);
        cr_assert_eq(
            be->ops->matmul_bwd(be, NULL, NULL, dbias1, dout, NULL, NULL, MN, MIC, MOC, wt),
            TPM_OK);
        cr_expect_eq(memcmp(dinp, dinp1, sizeof(float) * MN * MIC), 0);
        cr_expect_eq(memcmp(dw, dw1, sizeof(float) * MOC * MIC), 0);
        cr_expect_eq(memcmp(dbias, dbias1, sizeof(float) * MOC), 0);
        cr_assert_eq(be->ops->matmul_bwd(be, NULL, NULL, NULL, dout, inp, w, MN, MIC, MOC, wt),
                     TPM_OK);
        free(inp), free(w), free(dout), free(dinp), free(dw), free(dbias), free(dinp1), free(dw1),
            free(dbias1);
    }
}

typedef struct {
    float *inp, *w, *bias, *out, *g;
    int    wt;
} mm_ctx_t;

static double mm_loss(void *p)
{
    mm_ctx_t *c = p;

    cr_assert_eq(be->ops->matmul_fwd(be, c->out, c->inp, c->w, c->bias, MN, MIC, MOC, c->wt),
                 TPM_OK);
    return dot_loss(c->g, c->out, MN * MOC);
}

Test(backend_cpu, matmul_backward_matches_finite_differences_for_both_weight_layouts)
{
    for (int wt = 0; wt <= 1; wt++) {
        mm_ctx_t c    = {frand_vec(MN * MIC, 1.0f), frand_vec(MOC * MIC, 1.0f),
                         frand_vec(MOC, 1.0f),      fvec(MN * MOC),
                         frand_vec(MN * MOC, 1.0f), wt};
        float   *dinp = fvec(MN * MIC), *dw = fvec(MOC * MIC), *dbias = fvec(MOC);

        cr_assert_eq(be->ops->matmul_bwd(be, dinp, dw, dbias, c.g, c.inp, c.w, MN, MIC, MOC, wt),
                     TPM_OK);
        fd_check(c.inp, MN * MIC, dinp, mm_loss, &c, wt ? "matmul(T) dinp" : "matmul dinp");
        fd_check(c.w, MOC * MIC, dw, mm_loss, &c, wt ? "matmul(T) dw" : "matmul dw");
        fd_check(c.bias, MOC, dbias, mm_loss, &c, wt ? "matmul(T) dbias" : "matmul dbias");
        free(c.inp), free(c.w), free(c.bias), free(c.out), free(c.g), free(dinp), free(dw),
            free(dbias);
    }
}

Test(backend_cpu, matmul_bias_column_sums_are_exact_over_many_rows)
{
    /* 4096 rows x 9 columns of 0.5: the threaded column-sum path, exactly representable */
    int    N = 4096, IC = 3, OC = 9;
    float *dout = fvec((size_t)N * OC), *db = fvec((size_t)OC);

    for (size_t i = 0; i < (size_t)N * OC; i++) {
        dout[i] = 0.5f;
    }
    cr_assert_eq(be->ops->matmul_bwd(be, NULL, NULL, db, dout, NULL, NULL, N, IC, OC, 0), TPM_OK);
    for (int o = 0; o < OC; o++) {
        cr_expect_eq(db[o], 2048.0f, "column %d: %f", o, (double)db[o]);
    }
    free(dout), free(db);
}

/* ------------------------------------------------------------------------------------------ */
/* attention                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static size_t qidx(int b, int t, int h, int j, int d, int T, int C, int hs)
{
    /* head-grouped qkv (B, T, 3C): head h, part j (0 q, 1 k, 2 v), dim d */
    return ((size_t)b * T + t) * 3 * C + (size_t)h * 3 * hs + (size_t)j * hs + d;
}

/* out (B,T,C), lse (B,NH,T), and with dout != NULL the gradient dqkv (B,T,3C) */
static void naive_attention(double *out, double *lse, double *dqkv, const float *dout,
                            const float *qkv, int B, int T, int C, int NH)
{
    int     hs    = C / NH;
    double  scale = 1.0 / sqrt((double)hs);
    double *p = dvec((size_t)T * T), *dp = dvec((size_t)T * T);

    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            for (int i = 0; i < T; i++) {
                double mx = -INFINITY, sum = 0.0;

                for (int j = 0; j <= i; j++) {
                    double s = 0.0;

                    for (int d = 0; d < hs; d++) {
                        s += (double)qkv[qidx(b, i, h, 0, d, T, C, hs)] *
                             qkv[qidx(b, j, h, 1, d, T, C, hs)];
                    }
                    p[i * T + j] = s * scale;
                    mx           = fmax(mx, s * scale);
                }
                for (int j = 0; j <= i; j++) {
                    p[i * T + j] = exp(p[i * T + j] - mx);
                    sum += p[i * T + j];
                }
                for (int j = 0; j <= i; j++) {
                    p[i * T + j] /= sum;
                }
                lse[((size_t)b * NH + h) * T + i] = mx + log(sum);
                for (int d = 0; d < hs; d++) {
                    double o = 0.0;

                    for (int j = 0; j <= i; j++) {
                        o += p[i * T + j] * qkv[qidx(b, j, h, 2, d, T, C, hs)];
                    }
                    out[((size_t)b * T + i) * C + h * hs + d] = o;
                }
            }
            if (dout == NULL) {
                continue;
            }
            for (int i = 0; i < T; i++) {
                const float *doi = dout + ((size_t)b * T + i) * C + h * hs;
                double       D   = 0.0;

                for (int j = 0; j <= i; j++) {
                    double s = 0.0;

                    for (int d = 0; d < hs; d++) {
                        s += (double)doi[d] * qkv[qidx(b, j, h, 2, d, T, C, hs)];
                        dqkv[qidx(b, j, h, 2, d, T, C, hs)] += p[i * T + j] * doi[d];
                    }
                    dp[i * T + j] = s;
                    D += p[i * T + j] * s;
                }
                for (int j = 0; j <= i; j++) {
                    double ds = p[i * T + j] * (dp[i * T + j] - D);

                    for (int d = 0; d < hs; d++) {
                        dqkv[qidx(b, i, h, 0, d, T, C, hs)] +=
                            scale * ds * qkv[qidx(b, j, h, 1, d, T, C, hs)];
                        dqkv[qidx(b, j, h, 1, d, T, C, hs)] +=
                            scale * ds * qkv[qidx(b, i, h, 0, d, T, C, hs)];
                    }
                }
            }
        }
    }
    free(p);
    free(dp);
}

/* fwd + bwd at one shape against the naive version; qkv scaled so the softmax is peaked */
static void check_attention(int B, int T, int C, int NH, float amp)
{
    size_t  nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C, nl = (size_t)B * NH * T;
    float  *qkv = frand_vec(nq, amp), *dout = frand_vec(no, 1.0f);
    float  *out = fvec(no), *lse = fvec(nl), *dqkv = frand_vec(nq, 1.0f);
    double *rout = dvec(no), *rlse = dvec(nl), *gq = dvec(nq), *rq;

    naive_attention(rout, rlse, gq, dout, qkv, B, T, C, NH);
    rq = plus(dqkv, gq, nq);
    cr_assert_eq(be->ops->attention_fwd(be, out, lse, qkv, B, T, C, NH), TPM_OK);
    cr_assert_eq(be->ops->attention_bwd(be, dqkv, dout, qkv, out, lse, B, T, C, NH), TPM_OK);
    cr_expect(nerr(out, rout, no) <= REF_TOL, "B%d T%d C%d NH%d out error %.3g", B, T, C, NH,
              nerr(out, rout, no));
    cr_expect(nerr(lse, rlse, nl) <= REF_TOL, "B%d T%d C%d NH%d lse error %.3g", B, T, C, NH,
              nerr(lse, rlse, nl));
    cr_expect(nerr(dqkv, rq, nq) <= REF_TOL, "B%d T%d C%d NH%d dqkv error %.3g", B, T, C, NH,
              nerr(dqkv, rq, nq));
    free(qkv), free(dout), free(out), free(lse), free(dqkv), free(rout), free(rlse), free(gq),
        free(rq);
}

Test(backend_cpu, attention_matches_naive_softmax_and_accumulates_gradients)
{
    check_attention(2, 5, 12, 3, 1.0f);
    check_attention(2, 5, 12, 3, 4.0f); /* sharper softmax */
}

Test(backend_cpu, attention_matches_naive_over_several_query_tiles)
{
    check_attention(1, 64, 16, 2, 1.0f);  /* one full tile */
    check_attention(2, 150, 24, 3, 1.0f); /* three tiles, the last partial */
    check_attention(1, 130, 8, 1, 2.0f);  /* one head: the serial path with threaded BLAS */
}

Test(backend_cpu, attention_with_one_token_returns_its_value_and_no_query_key_gradient)
{
    int    B = 2, T = 1, C = 12, NH = 3, hs = 4;
    size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C;
    float *qkv = frand_vec(nq, 1.0f), *dout = frand_vec(no, 1.0f);
    float *out = fvec(no), *lse = fvec((size_t)B * NH), *dqkv = fvec(nq);

    cr_assert_eq(be->ops->attention_fwd(be, out, lse, qkv, B, T, C, NH), TPM_OK);
    cr_assert_eq(be->ops->attention_bwd(be, dqkv, dout, qkv, out, lse, B, T, C, NH), TPM_OK);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            double s = 0.0;

            for (int d = 0; d < hs; d++) {
                size_t o = (size_t)b * C + (size_t)h * hs + d;

                s +=
                    (double)qkv[qidx(b, 0, h, 0, d, T, C, hs)] * qkv[qidx(b, 0, h, 1, d, T, C, hs)];
                cr_expect(fabsf(out[o] - qkv[qidx(b, 0, h, 2, d, T, C, hs)]) <= 1e-6f);
                cr_expect(fabsf(dqkv[qidx(b, 0, h, 2, d, T, C, hs)] - dout[o]) <= 1e-6f);
                cr_expect(fabsf(dqkv[qidx(b, 0, h, 0, d, T, C, hs)]) <= 1e-6f);
                cr_expect(fabsf(dqkv[qidx(b, 0, h, 1, d, T, C, hs)]) <= 1e-6f);
            }
            cr_expect(fabs(lse[b * NH + h] - s / 2.0) <= 1e-6, "lse %f want %f",
                      (double)lse[b * NH + h], s / 2.0);
        }
    }
    free(qkv), free(dout), free(out), free(lse), free(dqkv);
}

typedef struct {
    float *qkv, *out, *lse, *g;
    int    B, T, C, NH;
} attn_ctx_t;

static double attn_loss(void *p)
{
    attn_ctx_t *c = p;

    cr_assert_eq(be->ops->attention_fwd(be, c->out, c->lse, c->qkv, c->B, c->T, c->C, c->NH),
                 TPM_OK);
    return dot_loss(c->g, c->out, (size_t)c->B * c->T * c->C);
}

Test(backend_cpu, attention_backward_matches_finite_differences)
{
    int        B = 2, T = 5, C = 12, NH = 3;
    size_t     nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C;
    attn_ctx_t c = {
        frand_vec(nq, 1.0f), fvec(no), fvec((size_t)B * NH * T), frand_vec(no, 1.0f), B, T, C, NH};
    float *dqkv = fvec(nq);

    attn_loss(&c);
    cr_assert_eq(be->ops->attention_bwd(be, dqkv, c.g, c.qkv, c.out, c.lse, B, T, C, NH), TPM_OK);
    fd_check(c.qkv, nq, dqkv, attn_loss, &c, "attention dqkv");
    free(c.qkv), free(c.out), free(c.lse), free(c.g), free(dqkv);
}

Test(backend_cpu, attention_is_bitwise_deterministic_run_to_run)
{
    int    B = 4, T = 96, C = 32, NH = 4;
    size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C;
    float *qkv = frand_vec(nq, 1.0f), *dout = frand_vec(no, 1.0f);
    float *out[2], *lse[2], *dqkv[2];

    for (int k = 0; k < 2; k++) {
        out[k] = fvec(no), lse[k] = fvec((size_t)B * NH * T), dqkv[k] = fvec(nq);
        cr_assert_eq(be->ops->attention_fwd(be, out[k], lse[k], qkv, B, T, C, NH), TPM_OK);
        cr_assert_eq(be->ops->attention_bwd(be, dqkv[k], dout, qkv, out[k], lse[k], B, T, C, NH),
                     TPM_OK);
    }
    cr_expect_eq(memcmp(out[0], out[1], no * sizeof(float)), 0);
    cr_expect_eq(memcmp(dqkv[0], dqkv[1], nq * sizeof(float)), 0);
    for (int k = 0; k < 2; k++) {
        free(out[k]), free(lse[k]), free(dqkv[k]);
    }
    free(qkv), free(dout);
}

Test(backend_cpu, attention_rejects_heads_that_do_not_divide_the_channels)
{
    float buf[64] = {0};

    cr_assert_eq(be->ops->attention_fwd(be, buf, buf, buf, 1, 1, 10, 3), TPM_ERR_INVALID_ARG);
    cr_assert_eq(be->ops->attention_fwd(be, buf, buf, buf, 1, 1, 12, 0), TPM_ERR_INVALID_ARG);
}

/* ------------------------------------------------------------------------------------------ */
/* attention with a KV cache                                                                  */
/* ------------------------------------------------------------------------------------------ */

Test(backend_cpu, attention_kv_on_a_whole_prompt_matches_the_training_attention_and_fills_the_cache)
{
    int     T = 150, C = 24, NH = 3, hs = 8, ctx = 160, S = 2, s1 = 1;
    size_t  nq = (size_t)T * 3 * C, no = (size_t)T * C, nc = (size_t)S * ctx * C;
    float  *qkv = frand_vec(nq, 1.0f), *ref = fvec(no), *lse = fvec((size_t)NH * T);
    float  *out = fvec(no), *kc = fvec(nc), *vc = fvec(nc);
    int32_t slot[150], pos[150];
    double *r = dvec(no);

    for (int i = 0; i < T; i++) {
        slot[i] = s1, pos[i] = i;
    }
    cr_assert_eq(be->ops->attention_fwd(be, ref, lse, qkv, 1, T, C, NH), TPM_OK);
    cr_assert_eq(be->ops->attention_kv(be, out, qkv, kc, vc, slot, pos, T, C, NH, ctx), TPM_OK);
    for (size_t i = 0; i < no; i++) {
        r[i] = ref[i];
    }
    expect_close(out, r, no, REF_TOL, "attention_kv vs attention_fwd");
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < NH; h++) {
            for (int d = 0; d < hs; d++) {
                size_t c = ((size_t)s1 * ctx + t) * C + (size_t)h * hs + d;

                cr_expect_eq(kc[c], qkv[qidx(0, t, h, 1, d, T, C, hs)]);
                cr_expect_eq(vc[c], qkv[qidx(0, t, h, 2, d, T, C, hs)]);
            }
        }
    }
    for (size_t i = 0; i < (size_t)ctx * C; i++) {
        cr_expect_eq(kc[i], 0.0f, "slot 0 was written"); /* other slots untouched */
    }
    free(qkv), free(ref), free(lse), free(out), free(kc), free(vc), free(r);
}

/* token i of a call attends over its slot's history rows [0, pos] (double) */
static void naive_kv(double *out, const float *hist, const float *qkv, const int32_t *slot,
                     const int32_t *pos, int N, int C, int NH, int ctx)
{
    int     hs    = C / NH;
    double  scale = 1.0 / sqrt((double)hs);
    double *p     = dvec((size_t)ctx);

    for (int i = 0; i < N; i++) {
        for (int h = 0; h < NH; h++) {
            const float *q  = qkv + (size_t)i * 3 * C + (size_t)h * 3 * hs;
            double       mx = -INFINITY, sum = 0.0;

            for (int j = 0; j <= pos[i]; j++) {
                const float *k = hist + ((size_t)slot[i] * ctx + j) * 3 * C + (size_t)h * 3 * hs;
                double       s = 0.0;

                for (int d = 0; d < hs; d++) {
                    s += (double)q[d] * k[hs + d];
                }
                p[j] = s * scale;
                mx   = fmax(mx, p[j]);
            }
            for (int j = 0; j <= pos[i]; j++) {
                p[j] = exp(p[j] - mx);
                sum += p[j];
            }
            for (int d = 0; d < hs; d++) {
                double o = 0.0;

                for (int j = 0; j <= pos[i]; j++) {
                    o += p[j] * hist[((size_t)slot[i] * ctx + j) * 3 * C + (size_t)h * 3 * hs +
                                     2 * (size_t)hs + d];
                }
                out[(size_t)i * C + (size_t)h * hs + d] = o / sum;
            }
        }
    }
    free(p);
}

/*
 * A serving schedule: prompts prefilled whole or in chunks, mixed in one call with other
 * slots' decode tokens, then decode steps; every call checked against the naive loop over
 * the rows written so far.
 */
Test(backend_cpu, attention_kv_prefill_chunks_and_decode_steps_match_a_naive_loop)
{
    enum { C = 12, NH = 3, CTX = 120, S = 3, MAXN = 80 };
    /* per call: (slot, first position, count) runs */
    static const int calls[][3][3] = {
        {{2, 0, 7}, {0, 0, 4}, {-1, 0, 0}},  /* two prompts in one call */
        {{0, 4, 1}, {2, 7, 1}, {1, 0, 70}},  /* decodes + the first chunk of a long prompt */
        {{1, 70, 30}, {2, 8, 1}, {0, 5, 1}}, /* its second chunk (crosses a tile) + decodes */
        {{1, 100, 1}, {0, 6, 1}, {2, 9, 1}}, {{2, 10, 1}, {-1, 0, 0}, {-1, 0, 0}},
    };
    size_t  nc   = (size_t)S * CTX * C;
    float  *hist = fvec((size_t)S * CTX * 3 * C), *kc = fvec(nc), *vc = fvec(nc);
    float  *qkv = fvec((size_t)MAXN * 3 * C), *out = fvec((size_t)MAXN * C);
    double *ref = dvec((size_t)MAXN * C);
    int32_t slot[MAXN], pos[MAXN];

    for (size_t c = 0; c < sizeof(calls) / sizeof(calls[0]); c++) {
        int N = 0;

        for (int r = 0; r < 3; r++) {
            for (int k = 0; k < calls[c][r][2]; k++, N++) {
                slot[N] = calls[c][r][0];
                pos[N]  = calls[c][r][1] + k;
                for (int j = 0; j < 3 * C; j++) {
                    qkv[(size_t)N * 3 * C + j] = frand();
                }
                memcpy(hist + ((size_t)slot[N] * CTX + pos[N]) * 3 * C, qkv + (size_t)N * 3 * C,
                       3 * C * sizeof(float));
            }
        }
        naive_kv(ref, hist, qkv, slot, pos, N, C, NH, CTX);
        cr_assert_eq(be->ops->attention_kv(be, out, qkv, kc, vc, slot, pos, N, C, NH, CTX), TPM_OK);
        cr_expect(nerr(out, ref, (size_t)N * C) <= REF_TOL, "call %zu: error %.3g", c,
                  nerr(out, ref, (size_t)N * C));
    }
    free(hist), free(kc), free(vc), free(qkv), free(out), free(ref);
}

/*
 * The bf16 KV cache (attention_kv16): the same schedule against the naive loop over a
 * history whose k and v are rounded to bf16 (the cache's definition; q stays fp32), and the
 * cache holds exactly those rounded values.
 */
Test(backend_cpu, attention_kv16_matches_a_naive_loop_over_bf16_keys_and_values)
{
    enum { C = 12, NH = 3, CTX = 120, S = 3, MAXN = 80 };
    static const int calls[][3][3] = {
        {{2, 0, 7}, {0, 0, 4}, {-1, 0, 0}},
        {{0, 4, 1}, {2, 7, 1}, {1, 0, 70}},
        {{1, 70, 30}, {2, 8, 1}, {0, 5, 1}}, {{1, 100, 1}, {0, 6, 1}, {2, 9, 1}},
    };
    const int hs   = C / NH;
    size_t    nc   = (size_t)S * CTX * C;
    float    *hist = fvec((size_t)S * CTX * 3 * C), *qkv = fvec((size_t)MAXN * 3 * C);
    float    *out = fvec((size_t)MAXN * C);
    uint16_t *kc = calloc(nc, sizeof(uint16_t)), *vc = calloc(nc, sizeof(uint16_t));
    double   *ref = dvec((size_t)MAXN * C);
    int32_t   slot[MAXN], pos[MAXN];

    cr_assert_not_null(be->ops->attention_kv16);
    for (size_t c = 0; c < sizeof(calls) / sizeof(calls[0]); c++) {
        int N = 0;

        for (int r = 0; r < 3; r++) {
            for (int k = 0; k < calls[c][r][2]; k++, N++) {
                float *h;
                slot[N] = calls[c][r][0];
                pos[N]  = calls[c][r][1] + k;
                for (int j = 0; j < 3 * C; j++) {
                    qkv[(size_t)N * 3 * C + j] = frand();
                }
                h = hist + ((size_t)slot[N] * CTX + pos[N]) * 3 * C;
                memcpy(h, qkv + (size_t)N * 3 * C, 3 * C * sizeof(float));
                for (int hd = 0; hd < NH; hd++) {
                    for (int d = hs; d < 3 * hs; d++) { /* k and v of head hd */
                        float *x = h + (size_t)hd * 3 * hs + d;
                        *x       = tpm_bf16_to_float(tpm_bf16_rne(*x));
                    }
                }
            }
        }
        naive_kv(ref, hist, qkv, slot, pos, N, C, NH, CTX);
        cr_assert_eq(be->ops->attention_kv16(be, out, qkv, kc, vc, slot, pos, N, C, NH, CTX),
                     TPM_OK);
        cr_expect(nerr(out, ref, (size_t)N * C) <= REF_TOL, "call %zu: error %.3g", c,
                  nerr(out, ref, (size_t)N * C));
        for (int i = 0; i < N; i++) {
            const float *h = hist + ((size_t)slot[i] * CTX + pos[i]) * 3 * C;
            size_t       row = ((size_t)slot[i] * CTX + pos[i]) * C;
            for (int hd = 0; hd < NH; hd++) {
                for (int d = 0; d < hs; d++) {
                    cr_expect_eq(tpm_bf16_to_float(kc[row + (size_t)hd * hs + d]),
                                 h[(size_t)hd * 3 * hs + hs + d]);
                    cr_expect_eq(tpm_bf16_to_float(vc[row + (size_t)hd * hs + d]),
                                 h[(size_t)hd * 3 * hs + 2 * hs + d]);
                }
            }
        }
    }
    free(hist), free(kc), free(vc), free(qkv), free(out), free(ref);
}

Test(backend_cpu, attention_kv_with_one_thread_gives_the_same_bits)
{
    int     N = 40, C = 16, NH = 4, ctx = 48;
    size_t  nq = (size_t)N * 3 * C, no = (size_t)N * C, nc = 2 * (size_t)ctx * C;
    float  *qkv = frand_vec(nq, 1.0f), *o1 = fvec(no), *o2 = fvec(no);
    float  *kc = fvec(nc), *vc = fvec(nc);
    int32_t slot[40], pos[40];
    int     nthr = omp_get_max_threads();

    for (int i = 0; i < N; i++) {
        slot[i] = i % 2, pos[i] = i / 2; /* interleaved slots: every token is its own tile */
    }
    cr_assert_eq(be->ops->attention_kv(be, o1, qkv, kc, vc, slot, pos, N, C, NH, ctx), TPM_OK);
    omp_set_num_threads(1);
    cr_assert_eq(be->ops->attention_kv(be, o2, qkv, kc, vc, slot, pos, N, C, NH, ctx), TPM_OK);
    omp_set_num_threads(nthr);
    cr_expect_eq(memcmp(o1, o2, no * sizeof(float)), 0);
    free(qkv), free(o1), free(o2), free(kc), free(vc);
}

Test(backend_cpu, attention_kv_rejects_positions_outside_the_cache_and_negative_slots)
{
    float   buf[256] = {0};
    int32_t slot[2] = {0, 0}, pos[2] = {0, 4};

    cr_assert_eq(be->ops->attention_kv(be, buf, buf, buf, buf, slot, pos, 2, 12, 3, 4),
                 TPM_ERR_INVALID_ARG);
    pos[1]  = 1;
    slot[0] = -1;
    cr_assert_eq(be->ops->attention_kv(be, buf, buf, buf, buf, slot, pos, 2, 12, 3, 4),
                 TPM_ERR_INVALID_ARG);
    slot[0] = 0;
    cr_assert_eq(be->ops->attention_kv(be, buf, buf, buf, buf, slot, pos, 2, 10, 3, 4),
                 TPM_ERR_INVALID_ARG);
    /* a rank that owns no head (C == 0) has nothing to do */
    cr_assert_eq(be->ops->attention_kv(be, buf, buf, buf, buf, slot, pos, 2, 0, 0, 4), TPM_OK);
}

/* ------------------------------------------------------------------------------------------ */
/* GELU and elementwise                                                                       */
/* ------------------------------------------------------------------------------------------ */

static double gelu_ref(double x)
{
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

static double gelu_grad_ref(double x)
{
    double k = sqrt(2.0 / M_PI), u = k * (x + 0.044715 * x * x * x), t = tanh(u);

    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
}

Test(backend_cpu, gelu_forward_and_backward_match_the_tanh_formula_elementwise)
{
    size_t n = 100003; /* threaded path */
    float *x = frand_vec(n, 6.0f), *out = fvec(n), *dout = frand_vec(n, 1.0f);
    float *dx = frand_vec(n, 1.0f), *dx0 = fcopy(dx, n);
    float  special[] = {0.0f, -0.0f, 1e-8f, -1e-8f, 20.0f, -20.0f, 1e4f, -1e4f};

    memcpy(x, special, sizeof(special));
    cr_assert_eq(be->ops->gelu_fwd(be, out, x, n), TPM_OK);
    cr_assert_eq(be->ops->gelu_bwd(be, dx, x, dout, n), TPM_OK);
    /*
     * Per element, relative to the size of the terms: |err| <= 1e-6 * cond * scale + 1e-13,
     * with cond = 1 + 2|u| (a float's relative rounding of u becomes |2u| times that in
     * exp(-2u)) and scale = |ref| (forward) or the sum of the magnitudes of the terms of
     * the derivative. The 1e-13 floor covers the double reference's own cancellation in
     * 1 + tanh(u) for x << 0.
     */
    for (size_t i = 0; i < n; i++) {
        double xd = x[i], k = sqrt(2.0 / M_PI), u = k * (xd + 0.044715 * xd * xd * xd);
        double t = tanh(u), cond = 1.0 + 2.0 * fabs(u);
        double r = gelu_ref(xd), dg = (double)dout[i] * gelu_grad_ref(xd);
        double g      = (double)dx0[i] + dg;
        double gscale = fabs(dx0[i]) +
                        fabs(dout[i]) * (0.5 * (1.0 + t) + fabs(0.5 * xd * (1.0 - t * t) * k *
                                                                (1.0 + 3.0 * 0.044715 * xd * xd)));

        cr_assert(fabs(out[i] - r) <= 1e-6 * cond * fabs(r) + 1e-13, "gelu(%g) = %.9g, want %.9g",
                  xd, (double)out[i], r);
        cr_assert(fabs(dx[i] - g) <= 1e-6 * cond * gscale + 1e-13, "gelu'(%g): %.9g, want %.9g", xd,
                  (double)dx[i], g);
    }
    free(x), free(out), free(dout), free(dx), free(dx0);
}

typedef struct {
    float *x, *out, *g;
    size_t n;
} gelu_ctx_t;

static double gelu_loss(void *p)
{
    gelu_ctx_t *c = p;

    cr_assert_eq(be->ops->gelu_fwd(be, c->out, c->x, c->n), TPM_OK);
    return dot_loss(c->g, c->out, c->n);
}

Test(backend_cpu, gelu_backward_matches_finite_differences)
{
    gelu_ctx_t c  = {frand_vec(41, 3.0f), fvec(41), frand_vec(41, 1.0f), 41};
    float     *dx = fvec(41);

    cr_assert_eq(be->ops->gelu_bwd(be, dx, c.x, c.g, c.n), TPM_OK);
    fd_check(c.x, c.n, dx, gelu_loss, &c, "gelu dinp");
    free(c.x), free(c.out), free(c.g), free(dx);
}

Test(backend_cpu, add_axpy_and_scale_match_plain_loops_including_in_place_add)
{
    size_t sizes[] = {1, 7, 100003};

    for (size_t k = 0; k < 3; k++) {
        size_t n = sizes[k];
        float *a = frand_vec(n, 1.0f), *b = frand_vec(n, 1.0f), *out = fvec(n);
        float *a0 = fcopy(a, n);

        cr_assert_eq(be->ops->add(be, out, a, b, n), TPM_OK);
        for (size_t i = 0; i < n; i++) {
            cr_assert_eq(out[i], a[i] + b[i]);
        }
        cr_assert_eq(be->ops->add(be, a, a, b, n), TPM_OK); /* out aliases a */
        cr_assert_eq(memcmp(a, out, n * sizeof(float)), 0);
        memcpy(a, a0, n * sizeof(float));
        cr_assert_eq(be->ops->axpy(be, a, -0.75f, b, n), TPM_OK);
        for (size_t i = 0; i < n; i++) {
            cr_assert(fabsf(a[i] - (a0[i] + -0.75f * b[i])) <= 1e-7f);
        }
        cr_assert_eq(be->ops->scale(be, b, 0.5f, n), TPM_OK);
        cr_assert_eq(be->ops->scale(be, b, 2.0f, n), TPM_OK);
        cr_assert_eq(be->ops->add(be, out, a0, b, n), TPM_OK);
        for (size_t i = 0; i < n; i++) {
            cr_assert_eq(out[i], a0[i] + b[i]); /* halving and doubling is exact */
        }
        free(a), free(b), free(out), free(a0);
    }
    cr_assert_eq(be->ops->add(be, NULL, NULL, NULL, 0), TPM_OK);
}

Test(backend_cpu, sumsq_accumulates_in_double_and_does_not_depend_on_threads)
{
    size_t      n   = 3000017;
    float      *x   = fvec(n);
    long double ref = 0.0L; /* a plain double loop drifts by ~5e-12 here: use 64-bit mantissa */
    double      got = -1.0, got1 = -1.0;
    int         nthr = omp_get_max_threads();

    for (size_t i = 0; i < n; i++) {
        x[i] = (i % 3 == 0) ? 0.1f : 1e-3f * frand();
        ref += (long double)x[i] * x[i];
    }
    cr_assert_eq(be->ops->sumsq(be, x, n, &got), TPM_OK);
    /* float accumulation would be off by ~1e-4 here; double blocks by < 1e-13 */
    cr_expect(fabsl((long double)got - ref) <= 1e-12L * ref, "sumsq %.17g want %.17Lg", got, ref);
    omp_set_num_threads(1);
    cr_assert_eq(be->ops->sumsq(be, x, n, &got1), TPM_OK);
    omp_set_num_threads(nthr);
    cr_expect_eq(got, got1);
    cr_assert_eq(be->ops->sumsq(be, x, 0, &got), TPM_OK);
    cr_expect_eq(got, 0.0);
    free(x);
}

/* ------------------------------------------------------------------------------------------ */
/* cross-entropy                                                                              */
/* ------------------------------------------------------------------------------------------ */

enum { XN = 6, XV = 11, XVp = 16 };

static const int32_t xent_targets[XN] = {3, -1, 0, 10, -1, 7};

/* losses (N) and dlogits (N, Vp) in double */
static void naive_xent(double *loss, double *dl, const float *logits, const int32_t *tg, int N,
                       int V, int Vp, double dloss)
{
    for (int n = 0; n < N; n++) {
        const float *l  = logits + (size_t)n * Vp;
        double       mx = -INFINITY, sum = 0.0;

        for (int j = 0; j < Vp; j++) {
            dl[(size_t)n * Vp + j] = 0.0;
        }
        loss[n] = 0.0;
        if (tg[n] < 0) {
            continue;
        }
        for (int j = 0; j < V; j++) {
            mx = fmax(mx, l[j]);
        }
        for (int j = 0; j < V; j++) {
            sum += exp(l[j] - mx);
        }
        loss[n] = mx + log(sum) - l[tg[n]];
        for (int j = 0; j < V; j++) {
            dl[(size_t)n * Vp + j] = dloss * (exp(l[j] - mx) / sum - (j == tg[n]));
        }
    }
}

static float *xent_logits(void)
{
    float *l = frand_vec(XN * XVp, 4.0f);

    for (int n = 0; n < XN; n++) {
        for (int j = XV; j < XVp; j++) {
            l[n * XVp + j] = 50.0f; /* padded columns must not enter the softmax */
        }
    }
    return l;
}

Test(backend_cpu, xent_matches_naive_with_ignored_rows_and_padded_columns)
{
    float  *l = xent_logits(), *loss = fvec(XN), *dl = frand_vec(XN * XVp, 9.0f);
    double *rloss = dvec(XN), *rdl = dvec(XN * XVp);
    float   dloss = 0.25f;

    naive_xent(rloss, rdl, l, xent_targets, XN, XV, XVp, dloss);
    cr_assert_eq(be->ops->xent_fwd_bwd(be, loss, dl, l, xent_targets, XN, XV, XVp, dloss), TPM_OK);
    expect_close(loss, rloss, XN, REF_TOL, "xent losses");
    expect_close(dl, rdl, XN * XVp, REF_TOL, "xent dlogits");
    for (int n = 0; n < XN; n++) {
        for (int j = 0; j < XVp; j++) {
            if (xent_targets[n] < 0 || j >= XV) {
                cr_expect_eq(dl[n * XVp + j], 0.0f, "row %d col %d", n, j);
            }
        }
    }
    cr_expect_eq(loss[1], 0.0f);
    cr_expect_eq(loss[4], 0.0f);
    free(l), free(loss), free(dl), free(rloss), free(rdl);
}

Test(backend_cpu, xent_in_place_and_loss_only_give_the_same_numbers)
{
    float *l = xent_logits(), *loss = fvec(XN), *dl = fvec(XN * XVp);
    float *inplace = fcopy(l, XN * XVp), *loss2 = fvec(XN), *loss3 = fvec(XN);

    cr_assert_eq(be->ops->xent_fwd_bwd(be, loss, dl, l, xent_targets, XN, XV, XVp, 1.0f), TPM_OK);
    cr_assert_eq(
        be->ops->xent_fwd_bwd(be, loss2, inplace, inplace, xent_targets, XN, XV, XVp, 1.0f),
        TPM_OK);
    cr_assert_eq(be->ops->xent_fwd_bwd(be, loss3, NULL, l, xent_targets, XN, XV, XVp, 1.0f),
                 TPM_OK);
    cr_expect_eq(memcmp(dl, inplace, sizeof(float) * XN * XVp), 0);
    cr_expect_eq(memcmp(loss, loss2, sizeof(float) * XN), 0);
    cr_expect_eq(memcmp(loss, loss3, sizeof(float) * XN), 0);
    free(l), free(loss), free(dl), free(inplace), free(loss2), free(loss3);
}

typedef struct {
    float *logits, *loss;
    float  dloss;
} xent_ctx_t;

static double xent_loss(void *p)
{
    xent_ctx_t *c = p;
    double      s = 0.0;

    cr_assert_eq(
        be->ops->xent_fwd_bwd(be, c->loss, NULL, c->logits, xent_targets, XN, XV, XVp, c->dloss),
        TPM_OK);
    for (int n = 0; n < XN; n++) {
        s += (double)c->dloss * c->loss[n];
    }
    return s;
}

Test(backend_cpu, xent_backward_matches_finite_differences)
{
    xent_ctx_t c  = {xent_logits(), fvec(XN), 0.25f};
    float     *dl = fvec(XN * XVp);

    cr_assert_eq(
        be->ops->xent_fwd_bwd(be, c.loss, dl, c.logits, xent_targets, XN, XV, XVp, c.dloss),
        TPM_OK);
    fd_check(c.logits, XN * XVp, dl, xent_loss, &c, "xent dlogits");
    free(c.logits), free(c.loss), free(dl);
}

Test(backend_cpu, xent_handles_a_large_vocabulary_on_the_threaded_path)
{
    int     N = 4, V = 50257, Vp = 50304;
    int32_t tg[4] = {0, 50256, -1, 1234};
    float *l = frand_vec((size_t)N * Vp, 8.0f), *loss = fvec((size_t)N), *dl = fvec((size_t)N * Vp);
    double *rloss = dvec((size_t)N), *rdl = dvec((size_t)N * Vp);

    naive_xent(rloss, rdl, l, tg, N, V, Vp, 1.0);
    cr_assert_eq(be->ops->xent_fwd_bwd(be, loss, dl, l, tg, N, V, Vp, 1.0f), TPM_OK);
    expect_close(loss, rloss, (size_t)N, REF_TOL, "xent losses (V=50257)");
    expect_close(dl, rdl, (size_t)N * Vp, REF_TOL, "xent dlogits (V=50257)");
    free(l), free(loss), free(dl), free(rloss), free(rdl);
}

Test(backend_cpu, xent_rejects_targets_outside_the_vocabulary)
{
    float   l[2 * 8] = {0}, loss[2];
    int32_t bad1[2] = {0, 5}, bad2[2] = {-2, 0};

    cr_assert_eq(be->ops->xent_fwd_bwd(be, loss, NULL, l, bad1, 2, 5, 8, 1.0f),
                 TPM_ERR_INVALID_ARG);
    cr_assert_eq(be->ops->xent_fwd_bwd(be, loss, NULL, l, bad2, 2, 5, 8, 1.0f),
                 TPM_ERR_INVALID_ARG);
}

/* ------------------------------------------------------------------------------------------ */
/* AdamW                                                                                      */
/* ------------------------------------------------------------------------------------------ */

Test(backend_cpu, adamw_matches_a_hand_computed_first_and_second_step)
{
    float p = 1.0f, g = 0.5f, m = 0.0f, v = 0.0f;

    /*
     * t=1, lr 0.1, b1 0.9, b2 0.999, eps 1e-8, wd 0.01:
     * m = 0.05, v = 0.00025, mhat = 0.5, vhat = 0.25, mhat/(sqrt(vhat)+eps) = 0.99999998,
     * p = 1 - 0.1 * (0.99999998 + 0.01) = 0.899000002.
     * The float betas are not the decimal ones: 1 - 0.999f = 9.99987e-4 (1.3e-5 relative
     * off), so v is checked to 2e-5 relative, m and p to 1e-6.
     */
    cr_assert_eq(be->ops->adamw(be, &p, &g, &m, &v, 1, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 1),
                 TPM_OK);
    cr_expect(fabsf(m - 0.05f) <= 1e-6f * 0.05f, "m %.9g", (double)m);
    cr_expect(fabsf(v - 0.00025f) <= 2e-5f * 0.00025f, "v %.9g", (double)v);
    cr_expect(fabsf(p - 0.899f) <= 1e-6f, "p %.9g", (double)p);
    /*
     * t=2 with g = -1: m = 0.045 - 0.1 = -0.055, v = 0.00024975 + 0.001 = 0.00124975,
     * mhat = -0.055/0.19 = -0.289473684, vhat = 0.00124975/0.001999 = 0.625187594,
     * sqrt = 0.790688, step = -0.366102, p = 0.899 - 0.1 * (-0.366102 + 0.00899) = 0.9347112
     */
    g = -1.0f;
    cr_assert_eq(be->ops->adamw(be, &p, &g, &m, &v, 1, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 2),
                 TPM_OK);
    cr_expect(fabsf(m + 0.055f) <= 1e-6f * 0.055f, "m %.9g", (double)m);
    cr_expect(fabsf(v - 0.00124975f) <= 2e-5f * 0.00124975f, "v %.9g", (double)v);
    cr_expect(fabsf(p - 0.9347112f) <= 2e-6f, "p %.9g", (double)p);
}

Test(backend_cpu, adamw_matches_a_double_reference_over_three_steps)
{
    size_t  n = 70001; /* threaded path */
    float  *p = frand_vec(n, 1.0f), *m = fvec(n), *v = fvec(n), *g = fvec(n);
    double *rp = dvec(n), *rm = dvec(n), *rv = dvec(n);
    double  lr = 3e-3, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;

    for (size_t i = 0; i < n; i++) {
        rp[i] = p[i];
    }
    for (int t = 1; t <= 3; t++) {
        for (size_t i = 0; i < n; i++) {
            g[i]  = frand();
            rm[i] = b1 * rm[i] + (1 - b1) * g[i];
            rv[i] = b2 * rv[i] + (1 - b2) * g[i] * g[i];
            rp[i] -= lr * ((rm[i] / (1 - pow(b1, t))) / (sqrt(rv[i] / (1 - pow(b2, t))) + eps) +
                           wd * rp[i]);
        }
        cr_assert_eq(be->ops->adamw(be, p, g, m, v, n, (float)lr, (float)b1, (float)b2, (float)eps,
                                    (float)wd, t),
                     TPM_OK);
    }
    /* the update is ~lr per step: compare with an absolute tolerance of 1e-3 lr */
    for (size_t i = 0; i < n; i++) {
        cr_assert(fabs(p[i] - rp[i]) <= 3e-6, "param %zu: %.9g want %.9g", i, (double)p[i], rp[i]);
    }
    expect_close(m, rm, n, REF_TOL, "adamw m");
    expect_close(v, rv, n, REF_TOL, "adamw v");
    cr_assert_eq(be->ops->adamw(be, p, g, m, v, n, 1.0f, 0.9f, 0.9f, 1e-8f, 0.0f, 0),
                 TPM_ERR_INVALID_ARG);
    free(p), free(m), free(v), free(g), free(rp), free(rm), free(rv);
}

/* ------------------------------------------------------------------------------------------ */
/* bf16 working weights and the 2-bit codec ops                                               */
/* ------------------------------------------------------------------------------------------ */

/*
 * Independent reference for round-to-nearest-even bf16: scale the value so that its 8
 * significant bits are the integer part, round with nearbyint() (ties to even in the
 * default rounding mode) and scale back; bf16 shares fp32's exponent range, so values
 * below 2^-126 keep a fixed quantum of 2^-133. Overflow becomes Inf through the float cast.
 */
static float bf16_ref(float x)
{
    int    e;
    double q;

    if (!isfinite(x) || x == 0.0f) {
        return x;
    }
    (void)frexp((double)x, &e);
    q = e - 8 < -133 ? -133 : e - 8;
    return (float)ldexp(nearbyint(ldexp((double)x, (int)-q)), (int)q);
}

static uint32_t f32_bits(float f)
{
    uint32_t u;

    memcpy(&u, &f, sizeof(u));
    return u;
}

static float f32_of(uint32_t u)
{
    float f;

    memcpy(&f, &u, sizeof(f));
    return f;
}

Test(backend_cpu, bf16_conversion_rounds_to_nearest_even_and_widens_exactly)
{
    const float  special[] = {1.0f,
                              f32_of(0x3f808000u) /* 1 + 2^-8: tie, stays 1 */,
                              f32_of(0x3f818000u) /* 1 + 3 * 2^-8: tie, goes to even 1 + 2^-6 */,
                              f32_of(0x3f808001u) /* just above the tie: rounds up */,
                              -0.0f,
                              0.0f,
                              INFINITY,
                              -INFINITY,
                              FLT_MAX /* rounds to Inf */,
                              -FLT_MAX,
                              FLT_MIN,
                              f32_of(0x00000001u),
                              f32_of(0x00008000u) /* subnormal tie: to even (0) */,
                              f32_of(0x00018000u),
                              f32_of(0x007fffffu),
                              65504.0f,
                              -3.14159265f};
    const size_t ns        = sizeof(special) / sizeof(special[0]);
    const size_t n         = 100003; /* threaded path */
    float       *x = fvec(n), *back = fvec(n);
    uint16_t    *h = calloc(n, sizeof(uint16_t));

    cr_assert_not_null(h);
    for (size_t i = 0; i < n; i++) {
        /* random sign, mantissa and exponent over the whole finite range */
        uint32_t u = (uint32_t)((frand() + 1.0f) * 2147483647.0f);
        x[i]       = i < ns ? special[i] : f32_of(u & 0xff7fffffu);
    }
    cr_assert_eq(be->ops->to_bf16(be, h, x, n), TPM_OK);
    cr_assert_eq(be->ops->from_bf16(be, back, h, n), TPM_OK);
    for (size_t i = 0; i < n; i++) {
        float want = bf16_ref(x[i]);
        cr_assert_eq(f32_bits(back[i]), f32_bits(want), "x[%zu] = %a (%08x): got %a, want %a", i,
                     (double)x[i], f32_bits(x[i]), (double)back[i], (double)want);
        cr_assert_eq(f32_bits(back[i]) & 0xffffu, 0u);
    }
    /* NaN stays a quiet NaN with its sign and top payload bits */
    x[0] = f32_of(0x7f800001u); /* signalling NaN, payload only in the low bits */
    x[1] = f32_of(0xffc12345u);
    cr_assert_eq(be->ops->to_bf16(be, h, x, 2), TPM_OK);
    cr_assert_eq(h[0], 0x7fc0u);
    cr_assert_eq(h[1], 0xffc1u);
    cr_assert_eq(be->ops->to_bf16(be, h, x, 0), TPM_OK);
    cr_assert_eq(be->ops->to_bf16(be, NULL, x, 3), TPM_ERR_INVALID_ARG);
    cr_assert_eq(be->ops->from_bf16(be, x, NULL, 3), TPM_ERR_INVALID_ARG);
    free(x), free(back), free(h);
}

Test(backend_cpu, twobit_ops_decode_to_the_values_they_encode)
{
    /* block 8: two blocks, the second padded; scale = bf16(mean |x|) */
    const float x[12]   = {4.0f, -4.0f, 0.5f, 4.0f,  -3.0f, 0.0f,
                           4.0f, 2.0f,  1.0f, -1.0f, 0.25f, 1.0f};
    float       res[12] = {0}, acc[12] = {0};
    uint8_t     chunk[64];
    const float s0 = 21.5f / 8.0f, s1 = 3.25f / 8.0f; /* 2.6875 and 0.40625: exact in bf16 */

    cr_assert_eq(be->ops->twobit_encode(be, 0, 8, x, 12, res, 0, 0, 0, chunk), TPM_OK);
    cr_assert_eq(be->ops->twobit_decode_add(be, 8, chunk, 12, acc), TPM_OK);
    for (int i = 0; i < 12; i++) {
        const float s = i < 8 ? s0 : s1;
        /* the residual holds the coding error: acc + res == x exactly for these values */
        cr_assert_float_eq(acc[i] + res[i], x[i], 0.0f, "value %d", i);
        cr_assert(fabsf(acc[i]) == (fabsf(x[i]) > 0.5f * s ? s : 0.0f), "value %d decodes to %g", i,
                  (double)acc[i]);
    }
    cr_assert_eq(be->ops->twobit_encode(be, 0, 6, x, 12, res, 0, 0, 0, chunk), TPM_ERR_INVALID_ARG);
    cr_assert_eq(be->ops->twobit_encode(be, 0, 8, x, 12, NULL, 0, 0, 0, chunk),
                 TPM_ERR_INVALID_ARG);
    cr_assert_eq(be->ops->twobit_decode_add(be, 8, chunk, 12, NULL), TPM_ERR_INVALID_ARG);
}
