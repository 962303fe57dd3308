/* SPDX-License-Identifier: MIT */
/*
 * backend_cpu_llama.c: the CPU reference of the LLaMA-family ops (backend.h): RMSNorm,
 * rotary position embedding (Hugging Face's rotate_half layout), SwiGLU and grouped-query
 * attention for training and for the KV cache. Straightforward loops, OpenMP over rows or
 * (batch, head) pairs; every sum has a fixed order (no atomics, no reductions across
 * threads), so results are bit-identical run to run. Attention is the naive online-softmax
 * loop, O(T^2 hs) per head with no tiling: the reference, not yet the fast path.
 *
 * Notation: N rows (tokens), C channels, NH query heads, NKV key/value heads,
 * rep = NH / NKV, hs head size, W = (NH + 2 NKV) hs the width of a qkv row.
 */
#include "backend/backend_cpu.h"

#include "backend/backend.h"
#include "base/log.h"
#include "base/status.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#define LL_REQUIRE(_cond)                                                                          \
    do {                                                                                           \
        if (!(_cond)) {                                                                            \
            tpm_log_error("cpu backend %s: invalid argument: %s", __func__, #_cond);               \
            return TPM_ERR_INVALID_ARG;                                                            \
        }                                                                                          \
    } while (0)

/* offsets inside a qkv row of the grouped-query layout (backend.h) */
static inline size_t q_off(int h, int rep, int hs)
{
    return ((size_t)(h / rep) * (size_t)(rep + 2) + (size_t)(h % rep)) * (size_t)hs;
}

static inline size_t k_off(int g, int rep, int hs)
{
    return ((size_t)g * (size_t)(rep + 2) + (size_t)rep) * (size_t)hs;
}

static inline size_t v_off(int g, int rep, int hs)
{
    return k_off(g, rep, hs) + (size_t)hs;
}

static int gqa_shape_ok(int NH, int NKV, int hs)
{
    return NH >= 1 && NKV >= 1 && hs >= 1 && NH % NKV == 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* RMSNorm */

tpm_status_t tpm_cpu_rmsnorm_fwd(tpm_backend_t *be, float *out, float *rstd, const float *inp,
                                 const float *w, int N, int C, float eps)
{
    (void)be;
    LL_REQUIRE(N >= 0 && C >= 1 && eps >= 0.0f);
    LL_REQUIRE(N == 0 || (out != NULL && rstd != NULL && inp != NULL && w != NULL));
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x  = inp + (size_t)n * C;
        float       *y  = out + (size_t)n * C;
        double       ss = 0.0;
        float        r;

        for (int c = 0; c < C; c++) {
            ss += (double)x[c] * (double)x[c];
        }
        r       = (float)(1.0 / sqrt(ss / C + (double)eps));
        rstd[n] = r;
        for (int c = 0; c < C; c++) {
            y[c] = (x[c] * r) * w[c]; /* Hugging Face's order: normalise, then scale */
        }
    }
    return TPM_OK;
}

tpm_status_t tpm_cpu_rmsnorm_bwd(tpm_backend_t *be, float *dinp, float *dw, const float *dout,
                                 const float *inp, const float *w, const float *rstd, int N, int C)
{
    (void)be;
    LL_REQUIRE(N >= 0 && C >= 1);
    LL_REQUIRE(N == 0 || (dout != NULL && inp != NULL && w != NULL && rstd != NULL));
    if (dinp != NULL) {
        /* dx = r w dy - r^3 / C x sum_j(dy_j w_j x_j) */
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            const float *x  = inp + (size_t)n * C;
            const float *dy = dout + (size_t)n * C;
            float       *dx = dinp + (size_t)n * C;
            const double r  = rstd[n];
            double       s  = 0.0, k;

            for (int c = 0; c < C; c++) {
                s += (double)dy[c] * (double)w[c] * (double)x[c];
            }
            k = r * r * r * s / C;
            for (int c = 0; c < C; c++) {
                dx[c] += (float)(r * (double)w[c] * (double)dy[c] - k * (double)x[c]);
            }
        }
    }
    if (dw != NULL) {
        /* per column, rows in order */
#pragma omp parallel for schedule(static)
        for (int c = 0; c < C; c++) {
            double s = 0.0;

            for (int n = 0; n < N; n++) {
                s += (double)dout[(size_t)n * C + c] * (double)inp[(size_t)n * C + c] *
                     (double)rstd[n];
            }
            dw[c] += (float)s;
        }
    }
    return TPM_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* rotary position embedding */

/* rotate the hs values at x by the angles of position p: sign +1 forward, -1 inverse */
static void rope_rotate(float *x, int p, const float *inv_freq, int hs, float sign)
{
    const int half = hs / 2;

    for (int d = 0; d < half; d++) {
        const float a = (float)p * inv_freq[d]; /* fp32, as Hugging Face computes it */
        const float c = cosf(a), s = sign * sinf(a);
        const float x1 = x[d], x2 = x[d + half];

        x[d]        = x1 * c - x2 * s;
        x[d + half] = x2 * c + x1 * s;
    }
}

static tpm_status_t rope_apply(float *qkv, const int32_t *pos, const float *inv_freq, int N, int NH,
                               int NKV, int hs, float sign)
{
    const int    rep = NH / NKV;
    const size_t W   = (size_t)(NH + 2 * NKV) * (size_t)hs;

#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float *row = qkv + (size_t)i * W;

        for (int h = 0; h < NH; h++) {
            rope_rotate(row + q_off(h, rep, hs), pos[i], inv_freq, hs, sign);
        }
        for (int g = 0; g < NKV; g++) {
            rope_rotate(row + k_off(g, rep, hs), pos[i], inv_freq, hs, sign);
        }
    }
    return TPM_OK;
}

tpm_status_t tpm_cpu_rope_fwd(tpm_backend_t *be, float *qkv, const int32_t *pos,
                              const float *inv_freq, int N, int NH, int NKV, int hs)
{
    (void)be;
    LL_REQUIRE(N >= 0 && gqa_shape_ok(NH, NKV, hs) && hs % 2 == 0);
    LL_REQUIRE(N == 0 || (qkv != NULL && pos != NULL && inv_freq != NULL));
    return rope_apply(qkv, pos, inv_freq, N, NH, NKV, hs, 1.0f);
}

tpm_status_t tpm_cpu_rope_bwd(tpm_backend_t *be, float *dqkv, const int32_t *pos,
                              const float *inv_freq, int N, int NH, int NKV, int hs)
{
    (void)be;
    LL_REQUIRE(N >= 0 && gqa_shape_ok(NH, NKV, hs) && hs % 2 == 0);
    LL_REQUIRE(N == 0 || (dqkv != NULL && pos != NULL && inv_freq != NULL));
    return rope_apply(dqkv, pos, inv_freq, N, NH, NKV, hs, -1.0f);
}

/* ---------------------------------------------------------------------------------------------- */
/* SwiGLU */

static inline float sigmoidf_(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

tpm_status_t tpm_cpu_swiglu_fwd(tpm_backend_t *be, float *out, const float *gate, const float *up,
                                size_t n)
{
    (void)be;
    LL_REQUIRE(n == 0 || (out != NULL && gate != NULL && up != NULL));
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        const float g = gate[i];

        out[i] = g * sigmoidf_(g) * up[i];
    }
    return TPM_OK;
}

tpm_status_t tpm_cpu_swiglu_bwd(tpm_backend_t *be, float *dgate, float *dup, const float *dout,
                                const float *gate, const float *up, size_t n)
{
    (void)be;
    LL_REQUIRE(n == 0 || (dout != NULL && gate != NULL && up != NULL));
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        const float g = gate[i], s = sigmoidf_(g);

        if (dgate != NULL) {
            /* silu'(g) = s (1 + g (1 - s)) */
            dgate[i] += dout[i] * up[i] * (s * (1.0f + g * (1.0f - s)));
        }
        if (dup != NULL) {
            dup[i] += dout[i] * g * s;
        }
    }
    return TPM_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* grouped-query attention */

/*
 * One query row against keys/values k_j, v_j (j = 0..nk-1, row stride kstride):
 * online softmax, out = sum_j p_j v_j, returns the log-sum-exp of the scaled scores.
 */
static float attend_row(float *out, const float *q, const float *k, const float *v, size_t kstride,
                        int nk, int hs, float scale)
{
    float m = -INFINITY, l = 0.0f;

    memset(out, 0, (size_t)hs * sizeof(float));
    for (int j = 0; j < nk; j++) {
        const float *kj = k + (size_t)j * kstride, *vj = v + (size_t)j * kstride;
        float        s = 0.0f, e;

        for (int d = 0; d < hs; d++) {
            s += q[d] * kj[d];
        }
        s *= scale;
        if (s > m) {
            const float r = expf(m - s); /* 0 on the first key */

            for (int d = 0; d < hs; d++) {
                out[d] *= r;
            }
            l *= r;
            m = s;
        }
        e = expf(s - m);
        l += e;
        for (int d = 0; d < hs; d++) {
            out[d] += e * vj[d];
        }
    }
    for (int d = 0; d < hs; d++) {
        out[d] /= l;
    }
    return m + logf(l);
}

tpm_status_t tpm_cpu_attention_gqa_fwd(tpm_backend_t *be, float *out, float *lse, const float *qkv,
                                       int B, int T, int NH, int NKV, int hs)
{
    const int    rep = NH / NKV;
    const size_t W = (size_t)(NH + 2 * NKV) * (size_t)hs, OW = (size_t)NH * (size_t)hs;
    const float  scale = 1.0f / sqrtf((float)hs);

    (void)be;
    LL_REQUIRE(B >= 0 && T >= 0 && gqa_shape_ok(NH, NKV, hs));
    LL_REQUIRE(B * T == 0 || (out != NULL && lse != NULL && qkv != NULL));
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float *base = qkv + (size_t)b * T * W;
            const int    g    = h / rep;

            for (int t = 0; t < T; t++) {
                lse[((size_t)b * NH + h) * T + t] =
                    attend_row(out + ((size_t)b * T + t) * OW + (size_t)h * hs,
                               base + (size_t)t * W + q_off(h, rep, hs), base + k_off(g, rep, hs),
                               base + v_off(g, rep, hs), W, t + 1, hs, scale);
            }
        }
    }
    return TPM_OK;
}

tpm_status_t tpm_cpu_attention_gqa_bwd(tpm_backend_t *be, float *dqkv, const float *dout,
                                       const float *qkv, const float *out, const float *lse, int B,
                                       int T, int NH, int NKV, int hs)
{
    const int    rep = NH / NKV;
    const size_t W = (size_t)(NH + 2 * NKV) * (size_t)hs, OW = (size_t)NH * (size_t)hs;
    const float  scale = 1.0f / sqrtf((float)hs);

    (void)be;
    LL_REQUIRE(B >= 0 && T >= 0 && gqa_shape_ok(NH, NKV, hs));
    LL_REQUIRE(B * T == 0 ||
               (dqkv != NULL && dout != NULL && qkv != NULL && out != NULL && lse != NULL));
    /* one thread per (batch, KV group): it owns dk_g, dv_g and the dq of the group's heads */
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int g = 0; g < NKV; g++) {
            const float *base  = qkv + (size_t)b * T * W;
            float       *dbase = dqkv + (size_t)b * T * W;

            for (int h = g * rep; h < (g + 1) * rep; h++) {
                for (int t = 0; t < T; t++) {
                    const float *q  = base + (size_t)t * W + q_off(h, rep, hs);
                    const float *o  = out + ((size_t)b * T + t) * OW + (size_t)h * hs;
                    const float *dy = dout + ((size_t)b * T + t) * OW + (size_t)h * hs;
                    float       *dq = dbase + (size_t)t * W + q_off(h, rep, hs);
                    const float  L  = lse[((size_t)b * NH + h) * T + t];
                    float        D  = 0.0f;

                    for (int d = 0; d < hs; d++) {
                        D += dy[d] * o[d];
                    }
                    for (int j = 0; j <= t; j++) {
                        const float *kj  = base + (size_t)j * W + k_off(g, rep, hs);
                        const float *vj  = base + (size_t)j * W + v_off(g, rep, hs);
                        float       *dkj = dbase + (size_t)j * W + k_off(g, rep, hs);
                        float       *dvj = dbase + (size_t)j * W + v_off(g, rep, hs);
                        float        s = 0.0f, dp = 0.0f, p, ds;

                        for (int d = 0; d < hs; d++) {
                            s += q[d] * kj[d];
                            dp += dy[d] * vj[d];
                        }
                        p  = expf(s * scale - L);
                        ds = p * (dp - D) * scale;
                        for (int d = 0; d < hs; d++) {
                            dq[d] += ds * kj[d];
                            dkj[d] += ds * q[d];
                            dvj[d] += p * dy[d];
                        }
                    }
                }
            }
        }
    }
    return TPM_OK;
}

tpm_status_t tpm_cpu_attention_gqa_kv(tpm_backend_t *be, float *out, const float *qkv,
                                      float *kcache, float *vcache, const int32_t *slot,
                                      const int32_t *pos, int N, int NH, int NKV, int hs, int ctx)
{
    const int    rep = NH / NKV;
    const size_t W = (size_t)(NH + 2 * NKV) * (size_t)hs, OW = (size_t)NH * (size_t)hs;
    const size_t KW    = (size_t)NKV * (size_t)hs;
    const float  scale = 1.0f / sqrtf((float)hs);

    (void)be;
    LL_REQUIRE(N >= 0 && ctx >= 1 && gqa_shape_ok(NH, NKV, hs));
    LL_REQUIRE(N == 0 || (out != NULL && qkv != NULL && kcache != NULL && vcache != NULL &&
                          slot != NULL && pos != NULL));
    for (int i = 0; i < N; i++) {
        LL_REQUIRE(slot[i] >= 0 && pos[i] >= 0 && pos[i] < ctx);
    }
    /* every token's k and v into its cache row first: a prompt attends to itself */
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *row = qkv + (size_t)i * W;
        const size_t c   = ((size_t)slot[i] * (size_t)ctx + (size_t)pos[i]) * KW;

        for (int g = 0; g < NKV; g++) {
            memcpy(kcache + c + (size_t)g * hs, row + k_off(g, rep, hs),
                   (size_t)hs * sizeof(float));
            memcpy(vcache + c + (size_t)g * hs, row + v_off(g, rep, hs),
                   (size_t)hs * sizeof(float));
        }
    }
#pragma omp parallel for collapse(2) schedule(static)
    for (int i = 0; i < N; i++) {
        for (int h = 0; h < NH; h++) {
            const size_t s0 = (size_t)slot[i] * (size_t)ctx * KW + (size_t)(h / rep) * hs;

            (void)attend_row(out + (size_t)i * OW + (size_t)h * hs,
                             qkv + (size_t)i * W + q_off(h, rep, hs), kcache + s0, vcache + s0, KW,
                             pos[i] + 1, hs, scale);
        }
    }
    return TPM_OK;
}
