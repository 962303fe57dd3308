/* SPDX-License-Identifier: MIT */
/*
 * bench_kernels.c: speed of the CPU backend's heavy ops at GPT-2 124M shapes
 * (matmul forward/backward of the four linear layers at N=256 rows, C=768, and
 * causal attention at B=4, NH=12, T=64/256/1024). Each point is validated
 * against a naive double-precision evaluation of sampled outputs first (the
 * "wrong" column), then timed after warm-up. Prints the BLAS build and core so
 * the kernel that ran is on record (PLATFORM.md §8).
 *
 * Usage: bench_kernels [-w warmups] [-n min_iters] [-s min_seconds] [-t threads]
 * FLOP counts: matmul 2*N*IC*OC forward, twice that backward (dinp + dw);
 * attention counts the useful causal products only: 2*hs*T*(T+1)*B*NH forward
 * (Q K^T and P V), 2.5x that backward (the recomputed Q K^T, dV, dP, dQ, dK).
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/backend_cpu.h"
#include "base/log.h"
#include "base/timer.h"

typedef struct {
    int    warmups;
    int    min_iters;
    double min_seconds;
} bench_opts_t;

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static float frand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

static float *alloc_rand(tpm_backend_t *be, size_t n, float scale)
{
    void  *p;
    float *f;

    if (be->ops->alloc(be, n * sizeof(float), &p) != TPM_OK) {
        fprintf(stderr, "bench_kernels: allocation of %zu floats failed\n", n);
        exit(1);
    }
    f = p;
    for (size_t i = 0; i < n; i++) {
        f[i] = scale * frand();
    }
    return f;
}

typedef tpm_status_t (*bench_fn_t)(void *ctx);

typedef struct {
    double median; /* seconds per call */
    double best;
} bench_time_t;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

#define BENCH_MAX_ITERS 100000

/*
 * Warm up, then time single calls until both min_iters and min_seconds are reached.
 * The median and the best call are reported: this machine is shared, and the best call
 * is the one least disturbed by other work.
 */
static bench_time_t time_op(const bench_opts_t *o, bench_fn_t fn, void *ctx)
{
    static double times[BENCH_MAX_ITERS];
    double        t0, t1, total = 0.0;
    int           it = 0;
    bench_time_t  r;

    for (int i = 0; i < o->warmups; i++) {
        if (fn(ctx) != TPM_OK) {
            fprintf(stderr, "bench_kernels: op failed during warm-up\n");
            exit(1);
        }
    }
    do {
        t0 = tpm_time_now();
        if (fn(ctx) != TPM_OK) {
            fprintf(stderr, "bench_kernels: op failed\n");
            exit(1);
        }
        t1          = tpm_time_now();
        times[it++] = t1 - t0;
        total += t1 - t0;
    } while ((it < o->min_iters || total < o->min_seconds) && it < BENCH_MAX_ITERS);
    qsort(times, (size_t)it, sizeof(double), cmp_double);
    r.median = times[it / 2];
    r.best   = times[0];
    return r;
}

static void report(const char *op, const char *shape, bench_time_t t, double flops, int wrong)
{
    printf("%-14s %-30s %9.3f %9.3f %9.1f %9.1f %6d\n", op, shape, t.median * 1e3, t.best * 1e3,
           flops / t.median * 1e-9, flops / t.best * 1e-9, wrong);
    fflush(stdout);
}

/* ------------------------------------------------------------------------------------------ */
/* matmul                                                                                     */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    tpm_backend_t *be;
    float         *inp, *w, *bias, *out, *dout, *dinp, *dw, *dbias;
    int            N, IC, OC, w_trans;
} mm_ctx_t;

static tpm_status_t mm_fwd(void *p)
{
    mm_ctx_t *c = p;

    return c->be->ops->matmul_fwd(c->be, c->out, c->inp, c->w, c->bias, c->N, c->IC, c->OC,
                                  c->w_trans);
}

static tpm_status_t mm_bwd(void *p)
{
    mm_ctx_t *c = p;

    return c->be->ops->matmul_bwd(c->be, c->dinp, c->dw, c->dbias, c->dout, c->inp, c->w, c->N,
                                  c->IC, c->OC, c->w_trans);
}

/* sampled outputs of the forward pass against a double dot product */
static int mm_validate(const mm_ctx_t *c)
{
    int wrong = 0;

    for (int k = 0; k < 64; k++) {
        int    n = (int)((unsigned)(k * 7919) % (unsigned)c->N);
        int    o = (int)((unsigned)(k * 104729 + 13) % (unsigned)c->OC);
        double s = c->bias ? c->bias[o] : 0.0, mag = fabs(s);

        for (int i = 0; i < c->IC; i++) {
            double wv = c->w_trans ? c->w[(size_t)i * c->OC + o] : c->w[(size_t)o * c->IC + i];
            double t  = (double)c->inp[(size_t)n * c->IC + i] * wv;

            s += t;
            mag += fabs(t);
        }
        if (!(fabs(c->out[(size_t)n * c->OC + o] - s) <= 1e-5 * mag)) {
            wrong++;
        }
    }
    return wrong;
}

static void bench_matmul(tpm_backend_t *be, const bench_opts_t *o, const char *name, int N, int IC,
                         int OC, int w_trans, int with_bias)
{
    mm_ctx_t     c = {.be = be, .N = N, .IC = IC, .OC = OC, .w_trans = w_trans};
    char         shape[96];
    double       flops = 2.0 * N * IC * OC;
    bench_time_t t;
    int          wrong;

    c.inp   = alloc_rand(be, (size_t)N * IC, 1.0f);
    c.w     = alloc_rand(be, (size_t)IC * OC, 0.02f);
    c.bias  = with_bias ? alloc_rand(be, (size_t)OC, 0.1f) : NULL;
    c.out   = alloc_rand(be, (size_t)N * OC, 0.0f);
    c.dout  = alloc_rand(be, (size_t)N * OC, 1.0f);
    c.dinp  = alloc_rand(be, (size_t)N * IC, 0.0f);
    c.dw    = alloc_rand(be, (size_t)IC * OC, 0.0f);
    c.dbias = with_bias ? alloc_rand(be, (size_t)OC, 0.0f) : NULL;

    snprintf(shape, sizeof(shape), "%s N=%d %d->%d%s", name, N, IC, OC, w_trans ? " (T)" : "");
    if (mm_fwd(&c) != TPM_OK) {
        exit(1);
    }
    wrong = mm_validate(&c);
    t     = time_op(o, mm_fwd, &c);
    report("matmul_fwd", shape, t, flops, wrong);
    t = time_op(o, mm_bwd, &c);
    report("matmul_bwd", shape, t, 2.0 * flops, 0);

    be->ops->free(be, c.inp), be->ops->free(be, c.w), be->ops->free(be, c.bias);
    be->ops->free(be, c.out), be->ops->free(be, c.dout), be->ops->free(be, c.dinp);
    be->ops->free(be, c.dw), be->ops->free(be, c.dbias);
}

/* ------------------------------------------------------------------------------------------ */
/* attention                                                                                  */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    tpm_backend_t *be;
    float         *qkv, *out, *lse, *dout, *dqkv;
    int            B, T, C, NH;
} attn_ctx_t;

static tpm_status_t attn_fwd(void *p)
{
    attn_ctx_t *c = p;

    return c->be->ops->attention_fwd(c->be, c->out, c->lse, c->qkv, c->B, c->T, c->C, c->NH);
}

static tpm_status_t attn_bwd(void *p)
{
    attn_ctx_t *c = p;

    return c->be->ops->attention_bwd(c->be, c->dqkv, c->dout, c->qkv, c->out, c->lse, c->B, c->T,
                                     c->C, c->NH);
}

/* sampled query rows of the forward pass against a double softmax */
static int attn_validate(const attn_ctx_t *c)
{
    int     hs = c->C / c->NH, wrong = 0;
    size_t  C3 = 3 * (size_t)c->C;
    double *p  = malloc((size_t)c->T * sizeof(double));

    if (p == NULL) {
        exit(1);
    }
    for (int k = 0; k < 16; k++) {
        int b = k % c->B, h = (k * 5) % c->NH, i = (int)((unsigned)(k * 7919 + 3) % (unsigned)c->T);
        const float *q  = c->qkv + ((size_t)b * c->T + i) * C3 + (size_t)h * 3 * hs;
        double       mx = -INFINITY, sum = 0.0;

        for (int j = 0; j <= i; j++) {
            const float *kr = c->qkv + ((size_t)b * c->T + j) * C3 + (size_t)h * 3 * hs + hs;
            double       s  = 0.0;

            for (int d = 0; d < hs; d++) {
                s += (double)q[d] * kr[d];
            }
            p[j] = s / sqrt((double)hs);
            mx   = fmax(mx, p[j]);
        }
        for (int j = 0; j <= i; j++) {
            p[j] = exp(p[j] - mx);
            sum += p[j];
        }
        for (int d = 0; d < hs; d++) {
            double o = 0.0;

            for (int j = 0; j <= i; j++) {
                o += p[j] / sum *
                     c->qkv[((size_t)b * c->T + j) * C3 + (size_t)h * 3 * hs + 2 * hs + d];
            }
            if (!(fabs(c->out[((size_t)b * c->T + i) * c->C + (size_t)h * hs + d] - o) <= 1e-5)) {
                wrong++;
            }
        }
    }
    free(p);
    return wrong;
}

static void bench_attention(tpm_backend_t *be, const bench_opts_t *o, int B, int T, int C, int NH)
{
    attn_ctx_t   c = {.be = be, .B = B, .T = T, .C = C, .NH = NH};
    char         shape[96];
    double       flops = 2.0 * (C / NH) * (double)T * (T + 1) * B * NH;
    bench_time_t t;
    int          wrong;

    c.qkv  = alloc_rand(be, (size_t)B * T * 3 * C, 1.0f);
    c.out  = alloc_rand(be, (size_t)B * T * C, 0.0f);
    c.lse  = alloc_rand(be, (size_t)B * NH * T, 0.0f);
    c.dout = alloc_rand(be, (size_t)B * T * C, 1.0f);
    c.dqkv = alloc_rand(be, (size_t)B * T * 3 * C, 0.0f);

    snprintf(shape, sizeof(shape), "B=%d T=%d C=%d NH=%d", B, T, C, NH);
    if (attn_fwd(&c) != TPM_OK) {
        exit(1);
    }
    wrong = attn_validate(&c);
    t     = time_op(o, attn_fwd, &c);
    report("attention_fwd", shape, t, flops, wrong);
    t = time_op(o, attn_bwd, &c);
    report("attention_bwd", shape, t, 2.5 * flops, 0);

    be->ops->free(be, c.qkv), be->ops->free(be, c.out), be->ops->free(be, c.lse);
    be->ops->free(be, c.dout), be->ops->free(be, c.dqkv);
}

/* strtol/strtod with the end pointer and range checked; -1 on failure */
static int parse_int(const char *s, int *v_p)
{
    char *end;
    long  v;

    errno = 0;
    v     = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 0 || v > INT_MAX) {
        return -1;
    }
    *v_p = (int)v;
    return 0;
}

static int parse_double(const char *s, double *v_p)
{
    char  *end;
    double v;

    errno = 0;
    v     = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= 0.0)) {
        return -1;
    }
    *v_p = v;
    return 0;
}

int main(int argc, char **argv)
{
    bench_opts_t   o       = {.warmups = 2, .min_iters = 5, .min_seconds = 0.5};
    int            threads = 0, opt, bad = 0;
    tpm_backend_t *be;

    while ((opt = getopt(argc, argv, "w:n:s:t:h")) != -1) {
        switch (opt) {
        case 'w': bad |= parse_int(optarg, &o.warmups); break;
        case 'n': bad |= parse_int(optarg, &o.min_iters); break;
        case 's': bad |= parse_double(optarg, &o.min_seconds); break;
        case 't': bad |= parse_int(optarg, &threads); break;
        default:
            fprintf(stderr, "usage: %s [-w warmups] [-n min_iters] [-s min_seconds] [-t threads]\n",
                    argv[0]);
            return opt == 'h' ? 0 : 2;
        }
    }
    if (bad || o.min_iters < 1) {
        fprintf(stderr, "bench_kernels: bad option value\n");
        return 2;
    }
    if (tpm_backend_create("cpu", threads, &be) != TPM_OK) {
        return 1;
    }

    printf("# bench_kernels: backend %s, %d OpenMP threads\n", be->ops->name, be->n_threads);
    printf("# blas: %s\n", tpm_backend_blas_info());
    printf("# OPENBLAS_CORETYPE=%s OMP_NUM_THREADS=%s\n",
           getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "(unset)",
           getenv("OMP_NUM_THREADS") ? getenv("OMP_NUM_THREADS") : "(unset)");
    printf("%-14s %-30s %9s %9s %9s %9s %6s\n", "# op", "shape", "med_ms", "best_ms", "GFLOP/s",
           "best_GF/s", "wrong");

    bench_matmul(be, &o, "qkv", 256, 768, 2304, 0, 1);
    bench_matmul(be, &o, "attproj", 256, 768, 768, 1, 1);
    bench_matmul(be, &o, "fc", 256, 768, 3072, 0, 1);
    bench_matmul(be, &o, "fcproj", 256, 3072, 768, 1, 1);
    bench_matmul(be, &o, "logits", 256, 768, 50304, 0, 0);
    bench_attention(be, &o, 4, 64, 768, 12);
    bench_attention(be, &o, 4, 256, 768, 12);
    bench_attention(be, &o, 4, 1024, 768, 12);

    tpm_backend_destroy(be);
    return 0;
}
