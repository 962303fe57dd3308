/* SPDX-License-Identifier: MIT */
/*
 * test_backend_cuda.c: every op of the CUDA backend against the CPU backend (the
 * reference) on the same random inputs, plus the CUDA-only behaviour: bit-identical
 * reruns, in-place cross-entropy, NULL outputs, ignored rows, empty sizes and the device
 * error word. Exit 77 (automake SKIP) when no CUDA device is usable, 1 on any failure.
 *
 * Error measure: normalised max error max_i |gpu_i - cpu_i| / max_i |cpu_i| (NaN/Inf fail).
 * Thresholds, per op and stated at each check:
 *   0      encoder forward/backward (same additions in the same order: bit-identical);
 *   1e-6   elementwise ops (add, axpy, scale, AdamW: at most FMA contraction, 1 ulp);
 *   1e-5   GELU, LayerNorm, attention forward, cross-entropy (fp32 ulps, exp, other
 *          summation orders over at most ~5e4 terms);
 *   5e-5   attention backward (longer chains of fp32 operations);
 *   bits   bf16 conversions and the 2-bit codec ops: identical bytes, residuals and sums;
 *   1e-5 / 1e-2 / 5e-2  matmuls with TPMPI_CUDA_MATMUL fp32 / tf32 / bf16: TF32 and bf16
 *          keep 10 and 7 mantissa bits of the inputs (relative 2^-11 and 2^-8 per input),
 *          accumulation is fp32 in all three.
 *
 * Usage: test_backend_cuda [--big] [--probe]
 *   --probe  exit 0 if a CUDA device is usable, 77 if not (for the shell tests)
 *   --big    GPT-2 124M shapes (B=4, T=1024, C=768, NH=12, V=50257) instead of small odd ones
 */
#include <cuda_runtime.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "base/log.h"
#include "base/status.h"
#include "backend/backend_twobit.h"

#define SKIP 77

static tpm_backend_t *cpu, *gpu;
static int            n_pass, n_fail;

/* ------------------------------------------------------------------------------------------ */
/* helpers                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* uniform in [-1, 1) (xorshift64*) */
static float frand(void)
{
    uint64_t x = rng_state;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return (float)((double)((x * 0x2545f4914f6cdd1dull) >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

static void die(const char *what)
{
    fprintf(stderr, "test_backend_cuda: %s\n", what);
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);

    if (p == NULL) {
        die("out of host memory");
    }
    return p;
}

/* a host array and a device copy of it */
typedef struct {
    float *h;
    float *d;
    size_t n;
} fbuf_t;

typedef struct {
    int32_t *h;
    int32_t *d;
    size_t   n;
} ibuf_t;

static void *dev_alloc(size_t nbytes)
{
    void *p = NULL;

    if (gpu->ops->alloc(gpu, nbytes, &p) != TPM_OK) {
        die("device allocation failed");
    }
    return p;
}

static void upload(void *d, const void *h, size_t nbytes)
{
    if (gpu->ops->copy(gpu, d, h, nbytes, TPM_COPY_H2D) != TPM_OK) {
        die("host-to-device copy failed");
    }
}

static fbuf_t fb_rand(size_t n, float scale)
{
    fbuf_t b = {xmalloc(n * sizeof(float)), NULL, n};

    for (size_t i = 0; i < n; i++) {
        b.h[i] = scale * frand();
    }
    b.d = dev_alloc(n * sizeof(float));
    upload(b.d, b.h, n * sizeof(float));
    return b;
}

static ibuf_t ib_make(const int32_t *vals, size_t n)
{
    ibuf_t b = {xmalloc(n * sizeof(int32_t)), NULL, n};

    memcpy(b.h, vals, n * sizeof(int32_t));
    b.d = dev_alloc(n * sizeof(int32_t));
    upload(b.d, b.h, n * sizeof(int32_t));
    return b;
}

/* the device contents (caller frees) */
static float *fb_down(const fbuf_t *b)
{
    float *h = xmalloc(b->n * sizeof(float));

    if (gpu->ops->copy(gpu, h, b->d, b->n * sizeof(float), TPM_COPY_D2H) != TPM_OK) {
        die("device-to-host copy failed");
    }
    return h;
}

static void fb_free(fbuf_t *b)
{
    free(b->h);
    gpu->ops->free(gpu, b->d);
    b->h = NULL;
    b->d = NULL;
}

static void ib_free(ibuf_t *b)
{
    free(b->h);
    gpu->ops->free(gpu, b->d);
    b->h = NULL;
    b->d = NULL;
}

static void ok(int cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* one TAP-style line per check */
static void ok(int cond, const char *fmt, ...)
{
    va_list ap;

    printf("%s %d - ", cond ? "ok" : "not ok", n_pass + n_fail + 1);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    if (cond) {
        n_pass++;
    } else {
        n_fail++;
    }
}

static void expect_ok(tpm_status_t s, const char *what)
{
    if (s != TPM_OK) {
        ok(0, "%s returned %s", what, tpm_status_str(s));
    }
}

/* normalised max error; infinity when got has a NaN/Inf that ref does not */
static double nerr(const float *got, const float *ref, size_t n)
{
    double emax = 0.0, rmax = 0.0;

    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) && isfinite(ref[i])) {
            return INFINITY;
        }
        emax = fmax(emax, fabs((double)got[i] - (double)ref[i]));
        rmax = fmax(rmax, fabs((double)ref[i]));
    }
    return rmax > 0.0 ? emax / rmax : emax;
}

/* compare the device contents of @p b with the CPU result @p ref */
static void check(const char *op, const fbuf_t *b, const float *ref, double thr)
{
    float *got = fb_down(b);
    double e   = nerr(got, ref, b->n);

    ok(e <= thr, "%-34s n=%-10zu nerr=%.3e thr=%.0e", op, b->n, e, thr);
    free(got);
}

static void check_bits(const char *op, const fbuf_t *a, const fbuf_t *b)
{
    float *x = fb_down(a), *y = fb_down(b);

    ok(memcmp(x, y, a->n * sizeof(float)) == 0, "%-34s n=%-10zu bit-identical rerun", op, a->n);
    free(x);
    free(y);
}

/* n zeros (+0.0f) on host and device */
static fbuf_t fb_zero(size_t n)
{
    fbuf_t b = {xmalloc(n * sizeof(float)), NULL, n};

    memset(b.h, 0, n * sizeof(float));
    b.d = dev_alloc(n * sizeof(float));
    upload(b.d, b.h, n * sizeof(float));
    return b;
}

/* a fresh output: same random start on host (for the CPU) and device (for the GPU) */
static fbuf_t out_like(size_t n)
{
    return fb_rand(n, 0.5f);
}

/* ------------------------------------------------------------------------------------------ */
/* checks                                                                                     */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    int B, T, C, NH, V, Vp;
} shape_t;

static int32_t *rand_tokens(size_t n, int V, int with_ignore)
{
    int32_t *t = xmalloc(n * sizeof(int32_t));

    for (size_t i = 0; i < n; i++) {
        t[i] = (int32_t)(((uint64_t)((frand() + 1.0f) * 0.5f * (float)V)) % (uint64_t)V);
        if (with_ignore && i % 7 == 3) {
            t[i] = -1;
        }
    }
    /* repeated tokens exercise the deterministic dwte accumulation */
    if (n > 3) {
        t[n - 1] = t[0];
        t[n - 2] = t[0];
    }
    return t;
}

static void test_encoder(const shape_t *s)
{
    const size_t N = (size_t)s->B * s->T, C = (size_t)s->C;
    int32_t     *tok = rand_tokens(N, s->V, 0);
    ibuf_t       tk  = ib_make(tok, N);
    fbuf_t       wte = fb_rand((size_t)s->Vp * C, 1.0f), wpe = fb_rand((size_t)s->T * C, 1.0f);
    fbuf_t       out = out_like(N * C), dout = fb_rand(N * C, 1.0f);
    fbuf_t       dwte = out_like((size_t)s->Vp * C), dwpe = out_like((size_t)s->T * C);

    expect_ok(cpu->ops->encoder_fwd(cpu, out.h, tk.h, wte.h, wpe.h, s->B, s->T, s->C), "cpu");
    expect_ok(gpu->ops->encoder_fwd(gpu, out.d, tk.d, wte.d, wpe.d, s->B, s->T, s->C), "gpu");
    check("encoder_fwd", &out, out.h, 0.0);
    expect_ok(cpu->ops->encoder_bwd(cpu, dwte.h, dwpe.h, dout.h, tk.h, s->B, s->T, s->C), "cpu");
    expect_ok(gpu->ops->encoder_bwd(gpu, dwte.d, dwpe.d, dout.d, tk.d, s->B, s->T, s->C), "gpu");
    check("encoder_bwd dwte (+=, repeats)", &dwte, dwte.h, 0.0);
    check("encoder_bwd dwpe (+=)", &dwpe, dwpe.h, 0.0);
    free(tok);
    ib_free(&tk);
    fb_free(&wte);
    fb_free(&wpe);
    fb_free(&out);
    fb_free(&dout);
    fb_free(&dwte);
    fb_free(&dwpe);
}

static void test_layernorm(int N, int C)
{
    const size_t n   = (size_t)N * C;
    fbuf_t       inp = fb_rand(n, 2.0f), w = fb_rand((size_t)C, 1.0f), b = fb_rand((size_t)C, 1.0f);
    fbuf_t       out = out_like(n), mean = out_like((size_t)N), rstd = out_like((size_t)N);
    fbuf_t       dout = fb_rand(n, 1.0f), dinp = out_like(n);
    fbuf_t       dw = out_like((size_t)C), db = out_like((size_t)C);
    fbuf_t       dw2 = fb_zero((size_t)C);
    char         name[64];

    /* a large common offset makes the two-pass variance matter */
    for (size_t i = 0; i < n; i++) {
        inp.h[i] += 3.0f;
    }
    upload(inp.d, inp.h, n * sizeof(float));
    expect_ok(cpu->ops->layernorm_fwd(cpu, out.h, mean.h, rstd.h, inp.h, w.h, b.h, N, C), "cpu");
    expect_ok(gpu->ops->layernorm_fwd(gpu, out.d, mean.d, rstd.d, inp.d, w.d, b.d, N, C), "gpu");
    snprintf(name, sizeof(name), "layernorm_fwd out (C=%d)", C);
    check(name, &out, out.h, 1e-5);
    check("layernorm_fwd mean", &mean, mean.h, 1e-5);
    check("layernorm_fwd rstd", &rstd, rstd.h, 1e-5);
    expect_ok(gpu->ops->layernorm_fwd(gpu, out.d, NULL, NULL, inp.d, w.d, b.d, N, C), "gpu");
    check("layernorm_fwd, NULL mean/rstd", &out, out.h, 1e-5);

    expect_ok(
        cpu->ops->layernorm_bwd(cpu, dinp.h, dw.h, db.h, dout.h, inp.h, w.h, mean.h, rstd.h, N, C),
        "cpu");
    expect_ok(
        gpu->ops->layernorm_bwd(gpu, dinp.d, dw.d, db.d, dout.d, inp.d, w.d, mean.d, rstd.d, N, C),
        "gpu");
    check("layernorm_bwd dinp (+=)", &dinp, dinp.h, 1e-5);
    check("layernorm_bwd dw (+=)", &dw, dw.h, 1e-5);
    check("layernorm_bwd db (+=)", &db, db.h, 1e-5);
    /* dw alone (dinp, db NULL), from zero, twice: bit-identical */
    expect_ok(
        gpu->ops->layernorm_bwd(gpu, NULL, dw2.d, NULL, dout.d, inp.d, w.d, mean.d, rstd.d, N, C),
        "gpu");
    {
        fbuf_t dw3 = fb_zero((size_t)C);
        expect_ok(gpu->ops->layernorm_bwd(gpu, NULL, dw3.d, NULL, dout.d, inp.d, w.d, mean.d,
                                          rstd.d, N, C),
                  "gpu");
        check_bits("layernorm_bwd dw only", &dw2, &dw3);
        fb_free(&dw3);
    }
    fb_free(&inp);
    fb_free(&w);
    fb_free(&b);
    fb_free(&out);
    fb_free(&mean);
    fb_free(&rstd);
    fb_free(&dout);
    fb_free(&dinp);
    fb_free(&dw);
    fb_free(&db);
    fb_free(&dw2);
}

static void test_matmul(tpm_backend_t *g, const char *math, double thr, int N, int IC, int OC)
{
    tpm_backend_t *save = gpu;

    gpu = g; /* the helpers allocate on the backend under test */
    for (int wt = 0; wt <= 1; wt++) {
        fbuf_t inp = fb_rand((size_t)N * IC, 1.0f), w = fb_rand((size_t)OC * IC, 1.0f);
        fbuf_t bias = fb_rand((size_t)OC, 1.0f), out = out_like((size_t)N * OC);
        fbuf_t dout = fb_rand((size_t)N * OC, 1.0f), dinp = out_like((size_t)N * IC);
        fbuf_t dw = out_like((size_t)OC * IC), db = out_like((size_t)OC);
        char   name[96];

        expect_ok(cpu->ops->matmul_fwd(cpu, out.h, inp.h, w.h, bias.h, N, IC, OC, wt), "cpu");
        expect_ok(gpu->ops->matmul_fwd(gpu, out.d, inp.d, w.d, bias.d, N, IC, OC, wt), "gpu");
        snprintf(name, sizeof(name), "matmul_fwd %s w_trans=%d %dx%dx%d", math, wt, N, IC, OC);
        check(name, &out, out.h, thr);
        expect_ok(cpu->ops->matmul_bwd(cpu, dinp.h, dw.h, db.h, dout.h, inp.h, w.h, N, IC, OC, wt),
                  "cpu");
        expect_ok(gpu->ops->matmul_bwd(gpu, dinp.d, dw.d, db.d, dout.d, inp.d, w.d, N, IC, OC, wt),
                  "gpu");
        snprintf(name, sizeof(name), "matmul_bwd %s w_trans=%d dinp (+=)", math, wt);
        check(name, &dinp, dinp.h, thr);
        snprintf(name, sizeof(name), "matmul_bwd %s w_trans=%d dw (+=)", math, wt);
        check(name, &dw, dw.h, thr);
        snprintf(name, sizeof(name), "matmul_bwd %s w_trans=%d dbias (+=)", math, wt);
        check(name, &db, db.h, 1e-5);
        /* no bias */
        expect_ok(cpu->ops->matmul_fwd(cpu, out.h, inp.h, w.h, NULL, N, IC, OC, wt), "cpu");
        expect_ok(gpu->ops->matmul_fwd(gpu, out.d, inp.d, w.d, NULL, N, IC, OC, wt), "gpu");
        snprintf(name, sizeof(name), "matmul_fwd %s w_trans=%d no bias", math, wt);
        check(name, &out, out.h, thr);
        fb_free(&inp);
        fb_free(&w);
        fb_free(&bias);
        fb_free(&out);
        fb_free(&dout);
        fb_free(&dinp);
        fb_free(&dw);
        fb_free(&db);
    }
    gpu = save;
}

static void test_attention(int B, int T, int C, int NH)
{
    const size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C, nl = (size_t)B * NH * T;
    fbuf_t       qkv = fb_rand(nq, 1.5f), out = out_like(no), lse = out_like(nl);
    fbuf_t       dout = fb_rand(no, 1.0f), dqkv = out_like(nq), dqkv2 = out_like(nq);
    char         name[96];

    expect_ok(cpu->ops->attention_fwd(cpu, out.h, lse.h, qkv.h, B, T, C, NH), "cpu");
    expect_ok(gpu->ops->attention_fwd(gpu, out.d, lse.d, qkv.d, B, T, C, NH), "gpu");
    snprintf(name, sizeof(name), "attention_fwd out B%d T%d C%d NH%d", B, T, C, NH);
    check(name, &out, out.h, 1e-5);
    check("attention_fwd lse", &lse, lse.h, 1e-5);
    /* the backward pass runs on the CPU's forward outputs on both sides */
    upload(out.d, out.h, no * sizeof(float));
    upload(lse.d, lse.h, nl * sizeof(float));
    upload(dqkv2.d, dqkv.h, nq * sizeof(float));
    expect_ok(cpu->ops->attention_bwd(cpu, dqkv.h, dout.h, qkv.h, out.h, lse.h, B, T, C, NH),
              "cpu");
    expect_ok(gpu->ops->attention_bwd(gpu, dqkv.d, dout.d, qkv.d, out.d, lse.d, B, T, C, NH),
              "gpu");
    expect_ok(gpu->ops->attention_bwd(gpu, dqkv2.d, dout.d, qkv.d, out.d, lse.d, B, T, C, NH),
              "gpu");
    check("attention_bwd dqkv (+=)", &dqkv, dqkv.h, 5e-5);
    check_bits("attention_bwd", &dqkv, &dqkv2);
    fb_free(&qkv);
    fb_free(&out);
    fb_free(&lse);
    fb_free(&dout);
    fb_free(&dqkv);
    fb_free(&dqkv2);
}

/*
 * Serving: a prompt of 5 tokens in slot 1, then a decode step for slot 1 and a prompt of 3
 * in slot 0 in one batch, against the CPU (out and both caches).
 */
static void test_attention_kv(int C, int NH)
{
    const int     ctx = 16, n_slots = 2;
    const int32_t slot1[] = {1, 1, 1, 1, 1}, pos1[] = {0, 1, 2, 3, 4};
    const int32_t slot2[] = {1, 0, 0, 0}, pos2[] = {5, 0, 1, 2};
    const size_t  ncache = (size_t)n_slots * ctx * C;
    fbuf_t        kc = fb_zero(ncache), vc = fb_zero(ncache);
    char          name[96];

    for (int step = 0; step < 2; step++) {
        const int32_t *sl = step == 0 ? slot1 : slot2, *ps = step == 0 ? pos1 : pos2;
        const int      N = step == 0 ? 5 : 4;
        ibuf_t         s = ib_make(sl, (size_t)N), p = ib_make(ps, (size_t)N);
        fbuf_t         qkv = fb_rand((size_t)N * 3 * C, 1.0f), out = out_like((size_t)N * C);

        expect_ok(cpu->ops->attention_kv(cpu, out.h, qkv.h, kc.h, vc.h, s.h, p.h, N, C, NH, ctx),
                  "cpu");
        expect_ok(gpu->ops->attention_kv(gpu, out.d, qkv.d, kc.d, vc.d, s.d, p.d, N, C, NH, ctx),
                  "gpu");
        snprintf(name, sizeof(name), "attention_kv %s C%d NH%d out",
                 step == 0 ? "prefill" : "decode+prefill", C, NH);
        check(name, &out, out.h, 1e-5);
        check("attention_kv kcache", &kc, kc.h, 0.0);
        check("attention_kv vcache", &vc, vc.h, 0.0);
        ib_free(&s);
        ib_free(&p);
        fb_free(&qkv);
        fb_free(&out);
    }
    fb_free(&kc);
    fb_free(&vc);
}

static void test_elementwise(size_t n)
{
    fbuf_t a = fb_rand(n, 3.0f), b = fb_rand(n, 3.0f), out = out_like(n), y = out_like(n);
    fbuf_t dinp  = out_like(n);
    double s_cpu = 0.0, s_gpu = 0.0;

    expect_ok(cpu->ops->gelu_fwd(cpu, out.h, a.h, n), "cpu");
    expect_ok(gpu->ops->gelu_fwd(gpu, out.d, a.d, n), "gpu");
    check("gelu_fwd", &out, out.h, 1e-5);
    expect_ok(cpu->ops->gelu_bwd(cpu, dinp.h, a.h, b.h, n), "cpu");
    expect_ok(gpu->ops->gelu_bwd(gpu, dinp.d, a.d, b.d, n), "gpu");
    check("gelu_bwd (+=)", &dinp, dinp.h, 1e-5);
    expect_ok(cpu->ops->add(cpu, out.h, a.h, b.h, n), "cpu");
    expect_ok(gpu->ops->add(gpu, out.d, a.d, b.d, n), "gpu");
    check("add", &out, out.h, 1e-6);
    expect_ok(cpu->ops->add(cpu, out.h, out.h, a.h, n), "cpu");
    expect_ok(gpu->ops->add(gpu, out.d, out.d, a.d, n), "gpu");
    check("add, out aliases a", &out, out.h, 1e-6);
    expect_ok(cpu->ops->axpy(cpu, y.h, -0.37f, a.h, n), "cpu");
    expect_ok(gpu->ops->axpy(gpu, y.d, -0.37f, a.d, n), "gpu");
    check("axpy", &y, y.h, 1e-6);
    expect_ok(cpu->ops->scale(cpu, y.h, 1.7f, n), "cpu");
    expect_ok(gpu->ops->scale(gpu, y.d, 1.7f, n), "gpu");
    check("scale", &y, y.h, 1e-6);
    expect_ok(cpu->ops->sumsq(cpu, a.h, n, &s_cpu), "cpu");
    expect_ok(gpu->ops->sumsq(gpu, a.d, n, &s_gpu), "gpu");
    ok(fabs(s_gpu - s_cpu) <= 1e-12 * fabs(s_cpu), "%-34s n=%-10zu rel=%.3e thr=1e-12", "sumsq", n,
       fabs(s_gpu - s_cpu) / fmax(fabs(s_cpu), 1e-300));
    {
        double s2 = -1.0;
        expect_ok(gpu->ops->sumsq(gpu, a.d, n, &s2), "gpu");
        ok(s2 == s_gpu, "%-34s n=%-10zu bit-identical rerun", "sumsq", n);
    }
    fb_free(&a);
    fb_free(&b);
    fb_free(&out);
    fb_free(&y);
    fb_free(&dinp);
}

static void test_xent(int N, int V, int Vp)
{
    const size_t n      = (size_t)N * Vp;
    int32_t     *t      = rand_tokens((size_t)N, V, 1);
    ibuf_t       tg     = ib_make(t, (size_t)N);
    fbuf_t       logits = fb_rand(n, 4.0f), losses = out_like((size_t)N), dl = out_like(n);
    fbuf_t       inplace, losses2 = out_like((size_t)N);
    const float  dloss = 1.0f / (float)N;
    char         name[96];

    expect_ok(cpu->ops->xent_fwd_bwd(cpu, losses.h, dl.h, logits.h, tg.h, N, V, Vp, dloss), "cpu");
    expect_ok(gpu->ops->xent_fwd_bwd(gpu, losses.d, dl.d, logits.d, tg.d, N, V, Vp, dloss), "gpu");
    snprintf(name, sizeof(name), "xent losses N%d V%d Vp%d", N, V, Vp);
    check(name, &losses, losses.h, 1e-5);
    check("xent dlogits (ignored rows, pad)", &dl, dl.h, 1e-5);
    /* forward only: losses identical to the fused run */
    expect_ok(gpu->ops->xent_fwd_bwd(gpu, losses2.d, NULL, logits.d, tg.d, N, V, Vp, dloss), "gpu");
    check_bits("xent losses without dlogits", &losses, &losses2);
    /* in place over the logits */
    inplace = fb_zero(n);
    upload(inplace.d, logits.h, n * sizeof(float));
    expect_ok(gpu->ops->xent_fwd_bwd(gpu, losses2.d, inplace.d, inplace.d, tg.d, N, V, Vp, dloss),
              "gpu");
    check("xent dlogits in place", &inplace, dl.h, 1e-5);
    free(t);
    ib_free(&tg);
    fb_free(&logits);
    fb_free(&losses);
    fb_free(&dl);
    fb_free(&inplace);
    fb_free(&losses2);
}

static void test_adamw(size_t n)
{
    fbuf_t p = fb_rand(n, 1.0f), g = fb_rand(n, 0.1f), m = fb_rand(n, 0.01f), v = fb_rand(n, 0.0f);

    /* v must be >= 0 */
    for (size_t i = 0; i < n; i++) {
        v.h[i] = fabsf(frand()) * 1e-3f;
    }
    upload(v.d, v.h, n * sizeof(float));
    for (int t = 1; t <= 3; t++) {
        expect_ok(cpu->ops->adamw(cpu, p.h, g.h, m.h, v.h, n, 3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, t),
                  "cpu");
        expect_ok(gpu->ops->adamw(gpu, p.d, g.d, m.d, v.d, n, 3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, t),
                  "gpu");
    }
    check("adamw param (3 steps)", &p, p.h, 1e-6);
    check("adamw m", &m, m.h, 1e-6);
    check("adamw v", &v, v.h, 1e-6);
    fb_free(&p);
    fb_free(&g);
    fb_free(&m);
    fb_free(&v);
}

/*
 * bf16 working-weight conversions and the codec ops through the op table: bit-identical to
 * the CPU backend (threshold 0), NaN and the rounding ties included.
 */
static void test_bf16_and_codec(size_t n)
{
    fbuf_t         x = fb_rand(n, 3.0f), back = fb_zero(n);
    uint16_t      *h16 = xmalloc(n * sizeof(uint16_t)), *g16 = xmalloc(n * sizeof(uint16_t));
    uint16_t      *d16       = dev_alloc(n * sizeof(uint16_t));
    const uint32_t special[] = {0x3f808000u, 0x3f818000u, 0x3f808001u, 0x7f7fffffu, 0x00008000u,
                                0x7f800001u, 0xffc12345u, 0x80000000u, 0x7f800000u};
    const size_t   ns        = sizeof(special) / sizeof(special[0]);
    const int      B = 256, modes = 3;

    for (size_t i = 0; i < ns && i < n; i++) {
        memcpy(&x.h[i], &special[i], sizeof(float));
    }
    upload(x.d, x.h, n * sizeof(float));
    expect_ok(cpu->ops->to_bf16(cpu, h16, x.h, n), "cpu to_bf16");
    expect_ok(gpu->ops->to_bf16(gpu, d16, x.d, n), "gpu to_bf16");
    if (gpu->ops->copy(gpu, g16, d16, n * sizeof(uint16_t), TPM_COPY_D2H) != TPM_OK) {
        die("device-to-host copy failed");
    }
    ok(memcmp(h16, g16, n * sizeof(uint16_t)) == 0, "%-34s n=%-10zu bit-identical to cpu",
       "to_bf16", n);
    expect_ok(cpu->ops->from_bf16(cpu, back.h, h16, n), "cpu from_bf16");
    expect_ok(gpu->ops->from_bf16(gpu, back.d, d16, n), "gpu from_bf16");
    {
        float *got = fb_down(&back);
        ok(memcmp(got, back.h, n * sizeof(float)) == 0, "%-34s n=%-10zu bit-identical to cpu",
           "from_bf16", n);
        free(got);
    }
    for (int mode = 0; mode < modes; mode++) {
        const size_t cb   = tpm_twobit_chunk_bytes(n, B);
        const size_t resb = n * (mode == 0 ? sizeof(float) : sizeof(uint16_t));
        uint8_t     *hc = xmalloc(cb), *gc = xmalloc(cb), *dc = dev_alloc(cb);
        void        *hr = xmalloc(resb), *dr = dev_alloc(resb), *gr = xmalloc(resb);
        fbuf_t       acc = fb_zero(n);
        float       *got;

        memset(hr, 0, resb);
        upload(dr, hr, resb);
        for (int round = 0; round < 2; round++) { /* the second round reads the residual */
            expect_ok(
                cpu->ops->twobit_encode(cpu, mode, B, x.h, n, mode == 2 ? NULL : hr, 77, 3, 5, hc),
                "cpu twobit_encode");
            expect_ok(
                gpu->ops->twobit_encode(gpu, mode, B, x.d, n, mode == 2 ? NULL : dr, 77, 3, 5, dc),
                "gpu twobit_encode");
        }
        if (gpu->ops->copy(gpu, gc, dc, cb, TPM_COPY_D2H) != TPM_OK ||
            gpu->ops->copy(gpu, gr, dr, resb, TPM_COPY_D2H) != TPM_OK) {
            die("device-to-host copy failed");
        }
        ok(memcmp(hc, gc, cb) == 0 && (mode == 2 || memcmp(hr, gr, resb) == 0),
           "twobit_encode op (mode %d)%-13s n=%-10zu bytes and residual bit-identical", mode, "",
           n);
        expect_ok(cpu->ops->twobit_decode_add(cpu, B, hc, n, acc.h), "cpu twobit_decode_add");
        expect_ok(gpu->ops->twobit_decode_add(gpu, B, dc, n, acc.d), "gpu twobit_decode_add");
        got = fb_down(&acc);
        ok(memcmp(got, acc.h, n * sizeof(float)) == 0,
           "twobit_decode_add op (mode %d)%-9s n=%-10zu bit-identical", mode, "", n);
        free(got);
        free(hc), free(gc), free(hr), free(gr);
        gpu->ops->free(gpu, dc);
        gpu->ops->free(gpu, dr);
        fb_free(&acc);
    }
    free(h16), free(g16);
    gpu->ops->free(gpu, d16);
    fb_free(&x);
    fb_free(&back);
}

static void test_empty_and_errors(void)
{
    tpm_backend_t *g = gpu;
    int            all_ok;
    fbuf_t         f         = fb_rand(64, 1.0f);
    const int32_t  bad_tok[] = {1, -5}, bad_tgt[] = {0, 99}, bad_pos[] = {0, 40}, zero[] = {0, 0};
    ibuf_t         bt, tt, bp, z;

    /* empty sizes do nothing and succeed, even with NULL pointers */
    all_ok =
        g->ops->encoder_fwd(g, NULL, NULL, NULL, NULL, 0, 5, 8) == TPM_OK &&
        g->ops->layernorm_fwd(g, NULL, NULL, NULL, NULL, NULL, NULL, 0, 8) == TPM_OK &&
        g->ops->matmul_fwd(g, NULL, NULL, NULL, NULL, 0, 4, 4, 0) == TPM_OK &&
        g->ops->matmul_bwd(g, NULL, NULL, NULL, NULL, NULL, NULL, 3, 4, 0, 1) == TPM_OK &&
        g->ops->attention_fwd(g, NULL, NULL, NULL, 0, 4, 8, 2) == TPM_OK &&
        g->ops->attention_kv(g, NULL, NULL, NULL, NULL, NULL, NULL, 0, 8, 2, 4) == TPM_OK &&
        g->ops->gelu_fwd(g, NULL, NULL, 0) == TPM_OK &&
        g->ops->add(g, NULL, NULL, NULL, 0) == TPM_OK &&
        g->ops->xent_fwd_bwd(g, NULL, NULL, NULL, NULL, 0, 5, 8, 1.0f) == TPM_OK &&
        g->ops->adamw(g, NULL, NULL, NULL, NULL, 0, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.0f, 1) == TPM_OK &&
        g->ops->sync(g) == TPM_OK;
    ok(all_ok, "empty sizes succeed without touching memory");
    /* invalid arguments are refused before any launch */
    ok(g->ops->attention_fwd(g, f.d, f.d, f.d, 1, 2, 6, 4) == TPM_ERR_INVALID_ARG &&
           g->ops->matmul_fwd(g, f.d, f.d, f.d, NULL, 2, 2, 2, 2) == TPM_ERR_INVALID_ARG &&
           g->ops->adamw(g, f.d, f.d, f.d, f.d, 4, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.0f, 0) ==
               TPM_ERR_INVALID_ARG,
       "bad shapes are refused (C %% NH, w_trans, step 0)");
    /* errors only the device sees are reported at the next synchronisation, then cleared */
    bt = ib_make(bad_tok, 2);
    tt = ib_make(bad_tgt, 2);
    bp = ib_make(bad_pos, 2);
    z  = ib_make(zero, 2);
    ok(g->ops->encoder_fwd(g, f.d, bt.d, f.d, f.d, 1, 2, 4) == TPM_OK &&
           g->ops->sync(g) == TPM_ERR_INVALID_ARG && g->ops->sync(g) == TPM_OK,
       "a negative token is reported at sync, once");
    ok(g->ops->xent_fwd_bwd(g, f.d, NULL, f.d, tt.d, 2, 10, 16, 1.0f) == TPM_OK &&
           g->ops->sync(g) == TPM_ERR_INVALID_ARG && g->ops->sync(g) == TPM_OK,
       "a target outside [-1, V) is reported at sync");
    ok(g->ops->attention_kv(g, f.d, f.d, f.d, f.d, z.d, bp.d, 2, 4, 2, 8) == TPM_OK &&
           g->ops->sync(g) == TPM_ERR_INVALID_ARG && g->ops->sync(g) == TPM_OK,
       "a cache position outside [0, ctx) is reported at sync");
    ib_free(&bt);
    ib_free(&tt);
    ib_free(&bp);
    ib_free(&z);
    fb_free(&f);
}

static tpm_backend_t *make_gpu(const char *math)
{
    tpm_backend_t *b = NULL;

    setenv("TPMPI_CUDA_MATMUL", math, 1);
    if (tpm_backend_create("cuda", 0, &b) != TPM_OK) {
        die("cannot create the cuda backend");
    }
    return b;
}

int main(int argc, char **argv)
{
    int     big = 0, probe = 0, ndev = 0;
    shape_t s;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--big") == 0) {
            big = 1;
        } else if (strcmp(argv[i], "--probe") == 0) {
            probe = 1;
        } else {
            fprintf(stderr, "usage: %s [--big] [--probe]\n", argv[0]);
            return 2;
        }
    }
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        printf("1..0 # SKIP no CUDA device: %s\n", cudaGetErrorString(cudaGetLastError()));
        return SKIP;
    }
    if (probe) {
        return 0;
    }
    tpm_log_set_level(TPM_LOG_WARN);
    if (tpm_backend_create("cpu", 0, &cpu) != TPM_OK) {
        die("cannot create the cpu backend");
    }
    gpu = make_gpu("fp32");

    if (big) {
        s = (shape_t){4, 1024, 768, 12, 50257, 50304};
    } else {
        s = (shape_t){2, 37, 48, 4, 301, 384};
    }
    test_encoder(&s);
    test_layernorm(s.B * s.T, s.C);
    test_layernorm(5, 3);
    {
        tpm_backend_t *tf32 = make_gpu("tf32"), *bf16 = make_gpu("bf16");
        int            N = big ? 4096 : 67, IC = big ? 768 : 45, OC = big ? 3072 : 29;

        test_matmul(gpu, "fp32", 1e-5, N, IC, OC);
        test_matmul(tf32, "tf32", 1e-2, N, IC, OC);
        test_matmul(bf16, "bf16", 5e-2, N, IC, OC);
        if (big) {
            test_matmul(tf32, "tf32", 1e-2, N, 3072, 768);
            test_matmul(tf32, "tf32", 1e-2, N, 768, 50304);
        }
        tpm_backend_destroy(tf32);
        tpm_backend_destroy(bf16);
    }
    if (big) {
        test_attention(4, 1024, 768, 12); /* hs 64 */
        test_attention(1, 1024, 1024, 8); /* hs 128 */
    } else {
        test_attention(2, 37, 48, 4);  /* hs 12 */
        test_attention(1, 70, 256, 4); /* hs 64, tiles of 16 and 32 not aligned with T */
        test_attention(1, 40, 256, 2); /* hs 128 */
        test_attention(1, 33, 256, 1); /* hs 256: more than 48 KiB of shared memory */
        test_attention(3, 1, 12, 3);   /* T = 1, hs 4 */
    }
    test_attention_kv(48, 4);
    test_attention_kv(256, 2);
    test_elementwise(big ? (size_t)16 << 20 : 100003);
    test_xent(big ? 1024 : 29, s.V, s.Vp);
    test_adamw(big ? (size_t)16 << 20 : 70001);
    test_bf16_and_codec(big ? (size_t)16 << 20 : 100003);
    test_empty_and_errors();

    printf("1..%d\n", n_pass + n_fail);
    printf("# %d passed, %d failed\n", n_pass, n_fail);
    tpm_backend_destroy(gpu);
    tpm_backend_destroy(cpu);
    return n_fail == 0 ? 0 : 1;
}
