/* SPDX-License-Identifier: MIT */
/*
 * test_backend_llama.c: the LLaMA-family ops of the CPU backend (backend_cpu_llama.c):
 * RMSNorm, RoPE (Hugging Face's rotate_half layout), SwiGLU and grouped-query attention,
 * each forward against a direct formula evaluated in double or by hand, each backward
 * against central finite differences of its forward, and grouped-query attention with
 * NKV = NH against the GPT-2 attention op, whose layout it then equals. Thresholds as in
 * test_backend_cpu.c: 1e-5 normalised for fp32 vs double, 5e-3 for finite differences.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"

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

TestSuite(backend_llama, .init = setup, .fini = teardown, .timeout = 60);


/* ------------------------------------------------------------------------------------------ */
/* RMSNorm                                                                                    */
/* ------------------------------------------------------------------------------------------ */

enum { RN = 7, RC = 13 };
static const float RMS_EPS = 1e-6f;

typedef struct {
    float *x, *w, *g, *y, *rstd;
} rms_ctx_t;

static double rms_loss(void *p)
{
    rms_ctx_t *c = p;

    cr_assert_eq(be->ops->rmsnorm_fwd(be, c->y, c->rstd, c->x, c->w, RN, RC, RMS_EPS), TPM_OK);
    return dot_loss(c->g, c->y, (size_t)RN * RC);
}

Test(backend_llama, rmsnorm_forward_matches_the_formula_in_double)
{
    float  *x = frand_vec(RN * RC, 2.0f), *w = frand_vec(RC, 1.0f), *y = fvec(RN * RC);
    float  *rstd = fvec(RN);
    double *ref = dvec(RN * RC), *rref = dvec(RN);

    cr_assert_eq(be->ops->rmsnorm_fwd(be, y, rstd, x, w, RN, RC, RMS_EPS), TPM_OK);
    for (int n = 0; n < RN; n++) {
        double ss = 0.0;
        for (int c = 0; c < RC; c++) {
            ss += (double)x[n * RC + c] * x[n * RC + c];
        }
        rref[n] = 1.0 / sqrt(ss / RC + RMS_EPS);
        for (int c = 0; c < RC; c++) {
            ref[n * RC + c] = x[n * RC + c] * rref[n] * w[c];
        }
    }
    expect_close(y, ref, RN * RC, REF_TOL, "rmsnorm out");
    expect_close(rstd, rref, RN, REF_TOL, "rmsnorm rstd");
    free(x), free(w), free(y), free(rstd), free(ref), free(rref);
}

Test(backend_llama, rmsnorm_backward_matches_finite_differences_and_accumulates)
{
    rms_ctx_t c  = {frand_vec(RN * RC, 2.0f), frand_vec(RC, 1.0f), frand_vec(RN * RC, 1.0f),
                    fvec(RN * RC), fvec(RN)};
    float    *dx = frand_vec(RN * RC, 1.0f), *dw = frand_vec(RC, 1.0f);
    float    *dx0 = fcopy(dx, RN * RC), *dw0 = fcopy(dw, RC);

    (void)rms_loss(&c);
    cr_assert_eq(be->ops->rmsnorm_bwd(be, dx, dw, c.g, c.x, c.w, c.rstd, RN, RC), TPM_OK);
    for (size_t i = 0; i < RN * RC; i++) {
        dx[i] -= dx0[i];
    }
    for (size_t i = 0; i < RC; i++) {
        dw[i] -= dw0[i];
    }
    fd_check(c.x, RN * RC, dx, rms_loss, &c, "rmsnorm d input");
    fd_check(c.w, RC, dw, rms_loss, &c, "rmsnorm d weight");
    free(c.x), free(c.w), free(c.g), free(c.y), free(c.rstd);
    free(dx), free(dw), free(dx0), free(dw0);
}

/* ------------------------------------------------------------------------------------------ */
/* RoPE                                                                                       */
/* ------------------------------------------------------------------------------------------ */

Test(backend_llama, rope_rotates_q_and_k_by_halves_and_leaves_v)
{
    /* NH 2, NKV 1 (rep 2), hs 4: a row is q0 q1 k v, 16 floats; position 3 */
    const float   inv_freq[2] = {1.0f, 0.5f};
    const int32_t pos[1]      = {3};
    float         row[16], orig[16];

    for (int i = 0; i < 16; i++) {
        orig[i] = row[i] = (float)(i + 1);
    }
    cr_assert_eq(be->ops->rope_fwd(be, row, pos, inv_freq, 1, 2, 1, 4), TPM_OK);
    for (int blk = 0; blk < 3; blk++) { /* q0, q1, k */
        const float *x = orig + 4 * blk;
        const float *y = row + 4 * blk;
        /* Hugging Face: x * cos + rotate_half(x) * sin, rotate_half(x) = (-x[2:], x[:2]) */
        const double a0 = 3.0 * 1.0, a1 = 3.0 * 0.5;
        const double want[4] = {x[0] * cos(a0) - x[2] * sin(a0), x[1] * cos(a1) - x[3] * sin(a1),
                                x[2] * cos(a0) + x[0] * sin(a0), x[3] * cos(a1) + x[1] * sin(a1)};
        expect_close(y, want, 4, REF_TOL, "rope q/k");
    }
    for (int i = 12; i < 16; i++) {
        cr_assert(row[i] == orig[i], "v element %d changed", i);
    }
}

enum { PN = 5, PNH = 4, PNKV = 2, PHS = 6, PW = (PNH + 2 * PNKV) * PHS };

typedef struct {
    float   *x, *g, *y;
    int32_t *pos;
    float   *inv_freq;
} rope_ctx_t;

static double rope_loss(void *p)
{
    rope_ctx_t *c = p;

    memcpy(c->y, c->x, sizeof(float) * PN * PW);
    cr_assert_eq(be->ops->rope_fwd(be, c->y, c->pos, c->inv_freq, PN, PNH, PNKV, PHS), TPM_OK);
    return dot_loss(c->g, c->y, (size_t)PN * PW);
}

Test(backend_llama, rope_backward_is_the_transpose_and_matches_finite_differences)
{
    int32_t    pos[PN] = {0, 1, 7, 2, 40};
    float      inv_freq[PHS / 2];
    rope_ctx_t c = {frand_vec(PN * PW, 1.0f), frand_vec(PN * PW, 1.0f), fvec(PN * PW), pos,
                    inv_freq};
    float     *d = fcopy(c.g, PN * PW), *back = fvec(PN * PW);
    double    *ref = dvec(PN * PW);

    for (int i = 0; i < PHS / 2; i++) {
        inv_freq[i] = (float)(1.0 / pow(10000.0, 2.0 * i / PHS));
    }
    /* gradient of sum g . rope(x) with respect to x: rope_bwd applied to g */
    cr_assert_eq(be->ops->rope_bwd(be, d, pos, inv_freq, PN, PNH, PNKV, PHS), TPM_OK);
    fd_check(c.x, PN * PW, d, rope_loss, &c, "rope d input");
    /* a rotation: the inverse of the forward */
    (void)rope_loss(&c);
    memcpy(back, c.y, sizeof(float) * PN * PW);
    cr_assert_eq(be->ops->rope_bwd(be, back, pos, inv_freq, PN, PNH, PNKV, PHS), TPM_OK);
    for (size_t i = 0; i < PN * PW; i++) {
        ref[i] = c.x[i];
    }
    expect_close(back, ref, PN * PW, REF_TOL, "rope_bwd(rope_fwd(x)) = x");
    free(c.x), free(c.g), free(c.y), free(d), free(back), free(ref);
}

/* ------------------------------------------------------------------------------------------ */
/* SwiGLU                                                                                     */
/* ------------------------------------------------------------------------------------------ */

enum { SN = 37 };

typedef struct {
    float *gate, *up, *g, *y;
} swiglu_ctx_t;

static double swiglu_loss(void *p)
{
    swiglu_ctx_t *c = p;

    cr_assert_eq(be->ops->swiglu_fwd(be, c->y, c->gate, c->up, SN), TPM_OK);
    return dot_loss(c->g, c->y, SN);
}

Test(backend_llama, swiglu_forward_and_backward_match_the_formula_and_finite_differences)
{
    swiglu_ctx_t c  = {frand_vec(SN, 4.0f), frand_vec(SN, 2.0f), frand_vec(SN, 1.0f), fvec(SN)};
    float       *dg = frand_vec(SN, 1.0f), *du = frand_vec(SN, 1.0f);
    float       *dg0 = fcopy(dg, SN), *du0 = fcopy(du, SN);
    double      *ref = dvec(SN);

    (void)swiglu_loss(&c);
    for (int i = 0; i < SN; i++) {
        double g = c.gate[i];
        ref[i]   = g / (1.0 + exp(-g)) * c.up[i];
    }
    expect_close(c.y, ref, SN, REF_TOL, "swiglu out");
    cr_assert_eq(be->ops->swiglu_bwd(be, dg, du, c.g, c.gate, c.up, SN), TPM_OK);
    for (int i = 0; i < SN; i++) {
        dg[i] -= dg0[i];
        du[i] -= du0[i];
    }
    fd_check(c.gate, SN, dg, swiglu_loss, &c, "swiglu d gate");
    fd_check(c.up, SN, du, swiglu_loss, &c, "swiglu d up");
    free(c.gate), free(c.up), free(c.g), free(c.y), free(dg), free(du), free(dg0), free(du0);
    free(ref);
}

/* ------------------------------------------------------------------------------------------ */
/* grouped-query attention                                                                    */
/* ------------------------------------------------------------------------------------------ */

enum { AB = 2, AT = 5, ANH = 4, ANKV = 2, AHS = 3, AW = (ANH + 2 * ANKV) * AHS, AOW = ANH * AHS };

/* naive causal GQA in double: out (B,T,NH hs) from qkv in the grouped layout */
static void gqa_naive(const float *qkv, int B, int T, int NH, int NKV, int hs, double *out)
{
    const int rep = NH / NKV, W = (NH + 2 * NKV) * hs;
    double   *p = calloc((size_t)T, sizeof(double));

    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const int g = h / rep, qo = (g * (rep + 2) + h % rep) * hs,
                      ko = (g * (rep + 2) + rep) * hs;
            for (int t = 0; t < T; t++) {
                double m = -INFINITY, z = 0.0;
                for (int j = 0; j <= t; j++) {
                    double s = 0.0;
                    for (int d = 0; d < hs; d++) {
                        s += (double)qkv[(b * T + t) * W + qo + d] * qkv[(b * T + j) * W + ko + d];
                    }
                    p[j] = s / sqrt((double)hs);
                    m    = fmax(m, p[j]);
                }
                for (int j = 0; j <= t; j++) {
                    p[j] = exp(p[j] - m);
                    z += p[j];
                }
                for (int d = 0; d < hs; d++) {
                    double acc = 0.0;
                    for (int j = 0; j <= t; j++) {
                        acc += p[j] / z * qkv[(b * T + j) * W + ko + hs + d];
                    }
                    out[(b * T + t) * NH * hs + h * hs + d] = acc;
                }
            }
        }
    }
    free(p);
}

Test(backend_llama, gqa_attention_matches_a_naive_softmax_in_double)
{
    float *qkv = frand_vec(AB * AT * AW, 1.5f), *out = fvec(AB * AT * AOW),
          *lse  = fvec(AB * ANH * AT);
    double *ref = dvec(AB * AT * AOW);

    cr_assert_eq(be->ops->attention_gqa_fwd(be, out, lse, qkv, AB, AT, ANH, ANKV, AHS), TPM_OK);
    gqa_naive(qkv, AB, AT, ANH, ANKV, AHS, ref);
    expect_close(out, ref, AB * AT * AOW, REF_TOL, "gqa out");
    free(qkv), free(out), free(lse), free(ref);
}

Test(backend_llama, gqa_attention_with_one_kv_head_per_head_equals_the_gpt2_attention)
{
    enum { NH = 3, HS = 4, C = NH * HS };
    float *qkv = frand_vec(AB * AT * 3 * C, 1.5f);
    float *o1 = fvec(AB * AT * C), *o2 = fvec(AB * AT * C), *l1 = fvec(AB * NH * AT),
          *l2   = fvec(AB * NH * AT);
    double *ref = dvec(AB * AT * C), *lref = dvec(AB * NH * AT);

    cr_assert_eq(be->ops->attention_fwd(be, o1, l1, qkv, AB, AT, C, NH), TPM_OK);
    cr_assert_eq(be->ops->attention_gqa_fwd(be, o2, l2, qkv, AB, AT, NH, NH, HS), TPM_OK);
    for (size_t i = 0; i < AB * AT * C; i++) {
        ref[i] = o1[i];
    }
    for (size_t i = 0; i < AB * NH * AT; i++) {
        lref[i] = l1[i];
    }
    expect_close(o2, ref, AB * AT * C, REF_TOL, "gqa (NKV = NH) vs attention_fwd out");
    expect_close(l2, lref, AB * NH * AT, REF_TOL, "gqa (NKV = NH) vs attention_fwd lse");
    free(qkv), free(o1), free(o2), free(l1), free(l2), free(ref), free(lref);
}

typedef struct {
    float *qkv, *g, *out, *lse;
} gqa_ctx_t;

static double gqa_loss(void *p)
{
    gqa_ctx_t *c = p;

    cr_assert_eq(be->ops->attention_gqa_fwd(be, c->out, c->lse, c->qkv, AB, AT, ANH, ANKV, AHS),
                 TPM_OK);
    return dot_loss(c->g, c->out, (size_t)AB * AT * AOW);
}

Test(backend_llama, gqa_attention_backward_matches_finite_differences_and_accumulates)
{
    gqa_ctx_t c  = {frand_vec(AB * AT * AW, 1.5f), frand_vec(AB * AT * AOW, 1.0f),
                    fvec(AB * AT * AOW), fvec(AB * ANH * AT)};
    float    *dq = frand_vec(AB * AT * AW, 1.0f), *dq0 = fcopy(dq, AB * AT * AW);

    (void)gqa_loss(&c);
    cr_assert_eq(
        be->ops->attention_gqa_bwd(be, dq, c.g, c.qkv, c.out, c.lse, AB, AT, ANH, ANKV, AHS),
        TPM_OK);
    for (size_t i = 0; i < AB * AT * AW; i++) {
        dq[i] -= dq0[i];
    }
    fd_check(c.qkv, AB * AT * AW, dq, gqa_loss, &c, "gqa d qkv");
    free(c.qkv), free(c.g), free(c.out), free(c.lse), free(dq), free(dq0);
}

Test(backend_llama, gqa_kv_cache_prefill_and_decode_match_the_training_attention)
{
    /* slot 1 of 2 holds batch row 0: its first 3 tokens in one call, then 2 decode steps */
    enum { CTX = 8, KW = ANKV * AHS };
    float  *qkv = frand_vec(AT * AW, 1.5f), *ref = fvec(AT * AOW), *lse = fvec(ANH * AT);
    float  *out = fvec(AT * AOW), *kc = fvec(2 * CTX * KW), *vc = fvec(2 * CTX * KW);
    int32_t slot[AT], pos[AT];
    double *want = dvec(AT * AOW);

    cr_assert_eq(be->ops->attention_gqa_fwd(be, ref, lse, qkv, 1, AT, ANH, ANKV, AHS), TPM_OK);
    for (int t = 0; t < AT; t++) {
        slot[t] = 1;
        pos[t]  = t;
    }
    cr_assert_eq(be->ops->attention_gqa_kv(be, out, qkv, kc, vc, slot, pos, 3, ANH, ANKV, AHS, CTX),
                 TPM_OK);
    for (int t = 3; t < AT; t++) {
        cr_assert_eq(be->ops->attention_gqa_kv(be, out + t * AOW, qkv + t * AW, kc, vc, slot + t,
                                               pos + t, 1, ANH, ANKV, AHS, CTX),
                     TPM_OK);
    }
    for (size_t i = 0; i < AT * AOW; i++) {
        want[i] = ref[i];
    }
    expect_close(out, want, AT * AOW, REF_TOL, "gqa kv vs training attention");
    /* the cache is sized by KV heads: k of group 1 of token 4 at slot 1, row 4 */
    for (int d = 0; d < AHS; d++) {
        cr_assert(kc[(1 * CTX + 4) * KW + 1 * AHS + d] == qkv[4 * AW + (1 * 4 + 2) * AHS + d]);
        cr_assert(vc[(1 * CTX + 4) * KW + 1 * AHS + d] == qkv[4 * AW + (1 * 4 + 3) * AHS + d]);
        cr_assert(kc[(0 * CTX + 4) * KW + d] == 0.0f, "slot 0 untouched");
    }
    cr_assert_eq(be->ops->attention_gqa_kv(be, out, qkv, kc, vc, slot, (int32_t[]){CTX}, 1, ANH,
                                           ANKV, AHS, CTX),
                 TPM_ERR_INVALID_ARG);
    free(qkv), free(ref), free(lse), free(out), free(kc), free(vc), free(want);
}

Test(backend_llama, gqa_rejects_query_heads_that_kv_heads_do_not_divide)
{
    float buf[64] = {0};

    cr_assert_eq(be->ops->attention_gqa_fwd(be, buf, buf, buf, 1, 1, 3, 2, 2), TPM_ERR_INVALID_ARG);
}
