/* SPDX-License-Identifier: MIT */
/*
 * backend_cpu.c: the CPU backend, the numerical reference of tpmpi.
 *
 * Notation: B batch, T sequence length, C channels, NH heads, hs = C / NH,
 * N = B*T rows, V vocabulary, Vp padded vocabulary (see backend.h).
 * Matrix products go to OpenBLAS cblas_sgemm (OpenMP flavour); everything else
 * is plain C with OpenMP over rows and `omp simd` inner loops. Every reduction
 * has a fixed order (within a row, per-column sums over rows in row order,
 * fixed-size blocks for sumsq; never an OpenMP reduction across threads), so
 * results are bit-identical run to run, and most do not depend on the thread
 * count either.
 *
 * Attention is memory-efficient (FlashAttention's recomputation scheme done with
 * sgemm): query rows are processed in tiles of CPU_ATTN_TILE against the causal key
 * prefix, only the log-sum-exp of each score row is stored, and the backward pass
 * recomputes the probabilities. The one deliberate approximation is cpu_expf(), a
 * vectorisable exp (1.2 ulp max measured; see its comment), used in softmaxes and
 * GELU because glibc's expf does not vectorise without -ffast-math; those loops
 * are also compiled for AVX2 and AVX-512 and chosen at load time (CPU_CLONES).
 */
#include "backend/backend_cpu.h"

#include "backend/backend.h"
#include "backend/backend_cpu_quant.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"
#include "backend/backend_twobit.h"
#include "base/bf16.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Below this many elements an elementwise loop is not worth waking the OpenMP team. */
#define CPU_PAR_MIN ((size_t)1 << 15)
/* Query rows per attention tile: small enough that the causal waste is ~TILE/T,
 * large enough that the sgemm calls stay efficient. */
#define CPU_ATTN_TILE 64
/* Above this many bytes memzero/copy are split across threads. */
#define CPU_MEM_PAR_MIN ((size_t)1 << 22)
/* sumsq adds fixed-size blocks in double, then the block sums in order. */
#define CPU_SUMSQ_BLOCK  ((size_t)1 << 14)
#define CPU_SUMSQ_NBLOCK 1024
#define CPU_LN_EPS       1e-5f

typedef struct {
    float   *scratch;     /* per-thread slots for attention */
    size_t   scratch_cap; /* capacity in floats */
    int32_t *tiles;       /* attention_kv: first token of each query tile */
    size_t   tiles_cap;   /* capacity in entries */
} cpu_priv_t;

#define CPU_REQUIRE(_cond)                                                                         \
    do {                                                                                           \
        if (!(_cond)) {                                                                            \
            tpm_log_error("cpu backend %s: invalid argument: %s", __func__, #_cond);               \
            return TPM_ERR_INVALID_ARG;                                                            \
        }                                                                                          \
    } while (0)

/*
 * The exp-heavy loops (softmaxes, GELU) are compiled three times and picked at load
 * time for the CPU at hand (AVX-512, AVX2+FMA or the build's baseline), because the
 * default x86-64 target only has 4-wide SSE2 and these loops are compute bound
 * (measured: 0.22 vs 1.3 ns per cpu_expf). Same C, same IEEE operations (gcc keeps
 * FMA contraction off under -std=c11); only the lane count of the in-row sums changes
 * with the clone, so results are deterministic on a given machine, not across machines.
 */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 &&           \
    !defined(TPM_NO_TARGET_CLONES)
#define CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CPU_CLONES
#endif

/* ------------------------------------------------------------------------------------------ */
/* helpers                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/*
 * exp(x) for float, written so that gcc vectorises it inside `omp simd` loops
 * (glibc only exposes its vector expf under -ffast-math). x = k ln2 + r with
 * |r| <= ln2/2 (Cody-Waite split of ln2, the high part exact in 9 bits so k*hi
 * is exact), exp(r) by its degree-7 Taylor polynomial (truncation < 1e-8
 * relative), times 2^k built in the exponent bits. Measured max error 1.2 ulp
 * against double exp on [-87, 88]. x < -87 gives 0 (exp(-87) ~ 1.6e-38 is
 * negligible to every caller here), x > 88 gives +inf, NaN propagates.
 * The range cases are integer masks on the bits, not branches: with the default
 * -ftrapping-math gcc will not if-convert float compares and the loop would stay
 * scalar.
 */
#define CPU_EXP_LO_BITS ((int32_t)0xc2ae0000) /* -87.0f */
#define CPU_EXP_HI_BITS ((int32_t)0x42b00000) /* 88.0f */
#define CPU_INF_BITS    ((int32_t)0x7f800000)

static inline float cpu_expf(float x)
{
    int32_t ix, cb, rb, lo, hi, nan;
    float   xc, kf, r, p, two_k;

    memcpy(&ix, &x, sizeof(ix));
    /* negative floats have negative bit patterns that grow with |x| */
    lo  = -(int32_t)((ix < 0) & (ix > CPU_EXP_LO_BITS));
    hi  = -(int32_t)(ix > CPU_EXP_HI_BITS);
    nan = -(int32_t)((ix & INT32_MAX) > CPU_INF_BITS);
    cb  = (ix & ~(lo | hi)) | (CPU_EXP_LO_BITS & lo) | (CPU_EXP_HI_BITS & hi);
    memcpy(&xc, &cb, sizeof(xc));

    /* round x / ln2 to the nearest integer by adding and removing 1.5 * 2^23 */
    kf = xc * 1.44269504088896341f + 12582912.0f;
    kf -= 12582912.0f;
    r  = xc - kf * 0.693359375f;
    r  = r - kf * -2.12194440e-4f;
    p  = 1.0f / 5040.0f;
    p  = p * r + 1.0f / 720.0f;
    p  = p * r + 1.0f / 120.0f;
    p  = p * r + 1.0f / 24.0f;
    p  = p * r + 1.0f / 6.0f;
    p  = p * r + 0.5f;
    p  = p * r + 1.0f;
    p  = p * r + 1.0f;
    rb = ((int32_t)kf + 127) << 23; /* kf in [-126, 127]: a normal power of two */
    memcpy(&two_k, &rb, sizeof(two_k));
    p *= two_k;

    memcpy(&rb, &p, sizeof(rb));
    rb = (rb & ~(lo | hi | nan)) | (CPU_INF_BITS & hi) | (ix & nan);
    memcpy(&p, &rb, sizeof(p));
    return p;
}

static size_t round_up(size_t a, size_t b)
{
    return (a + b - 1) / b * b;
}

/* Columns per thread for the column-parallel reductions (a multiple of 16 floats). */
static size_t col_chunk(size_t C)
{
    size_t nthr = (size_t)omp_get_max_threads();

    return round_up((C + nthr - 1) / nthr, 16);
}

/*
 * dst[c] += sum_n src[n*ld + c] for c < C. Threads own column blocks and add
 * rows in order, so the result does not depend on the thread count.
 */
static void colsum_add(float *dst, const float *src, size_t N, size_t C, size_t ld)
{
    size_t chunk   = col_chunk(C);
    size_t nchunks = (C + chunk - 1) / chunk;

#pragma omp parallel for schedule(static) if (N * C >= CPU_PAR_MIN)
    for (size_t ch = 0; ch < nchunks; ch++) {
        size_t c0 = ch * chunk;
        size_t c1 = c0 + chunk < C ? c0 + chunk : C;

        for (size_t n = 0; n < N; n++) {
            const float *row = src + n * ld;
#pragma omp simd
            for (size_t c = c0; c < c1; c++) {
                dst[c] += row[c];
            }
        }
    }
}

/*
 * Per-thread scratch of n_slots slots of at least slot_floats floats each (64-byte
 * aligned); *stride_p is the slot stride. Reallocated only when it must grow.
 */
static tpm_status_t cpu_scratch(tpm_backend_t *be, size_t slot_floats, size_t n_slots,
                                float **base_p, size_t *stride_p)
{
    cpu_priv_t  *priv   = be->priv;
    size_t       stride = round_up(slot_floats, 16);
    size_t       need, nbytes;
    void        *p;
    tpm_status_t status;

    if (priv == NULL) {
        tpm_log_error("cpu backend has no private state: create it with tpm_backend_create()");
        return TPM_ERR_INVALID_ARG;
    }
    if (tpm_mul_size(stride, n_slots, &need) != TPM_OK ||
        tpm_mul_size(need, sizeof(float), &nbytes) != TPM_OK) {
        tpm_log_error("cpu backend scratch of %zu x %zu floats overflows", n_slots, stride);
        return TPM_ERR_OVERFLOW;
    }
    if (need > priv->scratch_cap) {
        tpm_free(priv->scratch);
        priv->scratch     = NULL;
        priv->scratch_cap = 0;
        status            = tpm_malloc(nbytes, &p);
        if (status != TPM_OK) {
            return status;
        }
        priv->scratch     = p;
        priv->scratch_cap = need;
        tpm_log_debug("cpu backend scratch grown to %zu bytes", nbytes);
    }
    *base_p   = priv->scratch;
    *stride_p = stride;
    return TPM_OK;
}

tpm_status_t tpm_backend_cpu_priv_create(void **priv_p)
{
    void *p;

    TPM_CHECK(tpm_calloc(1, sizeof(cpu_priv_t), &p));
    *priv_p = p;
    return TPM_OK;
}

void tpm_backend_cpu_priv_destroy(void *priv)
{
    cpu_priv_t *cp = priv;

    if (cp == NULL) {
        return;
    }
    tpm_free(cp->scratch);
    tpm_free(cp->tiles);
    tpm_free(cp);
}

const char *tpm_backend_blas_info(void)
{
    static char buf[512];
    const char *config = openblas_get_config();
    const char *core   = openblas_get_corename();

    snprintf(buf, sizeof(buf), "%s core=%s", config ? config : "?", core ? core : "?");
    return buf;
}

/* ------------------------------------------------------------------------------------------ */
/* memory                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static tpm_status_t cpu_alloc(tpm_backend_t *be, size_t nbytes, void **ptr_p)
{
    (void)be;
    CPU_REQUIRE(ptr_p != NULL);
    return tpm_malloc(nbytes, ptr_p);
}

static void cpu_free(tpm_backend_t *be, void *ptr)
{
    (void)be;
    tpm_free(ptr);
}

static tpm_status_t cpu_memzero(tpm_backend_t *be, void *ptr, size_t nbytes)
{
    char  *p = ptr;
    size_t nthr, chunk;

    (void)be;
    if (nbytes == 0) {
        return TPM_OK;
    }
    CPU_REQUIRE(ptr != NULL);
    if (nbytes < CPU_MEM_PAR_MIN) {
        memset(p, 0, nbytes);
        return TPM_OK;
    }
    /* gradient buffers are zeroed every step: use every core's store bandwidth */
    nthr  = (size_t)omp_get_max_threads();
    chunk = round_up((nbytes + nthr - 1) / nthr, 4096);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < nthr; i++) {
        size_t off = i * chunk;

        if (off < nbytes) {
            memset(p + off, 0, nbytes - off < chunk ? nbytes - off : chunk);
        }
    }
    return TPM_OK;
}

static tpm_status_t cpu_copy(tpm_backend_t *be, void *dst, const void *src, size_t nbytes,
                             tpm_copy_kind_t kind)
{
    char       *d = dst;
    const char *s = src;
    size_t      nthr, chunk;

    (void)be;
    CPU_REQUIRE(kind == TPM_COPY_H2D || kind == TPM_COPY_D2H || kind == TPM_COPY_D2D);
    if (nbytes == 0 || dst == src) {
        return TPM_OK;
    }
    CPU_REQUIRE(dst != NULL && src != NULL);
    /* overlapping ranges must be moved in order, by one thread */
    if (nbytes < CPU_MEM_PAR_MIN || (d < s + nbytes && s < d + nbytes)) {
        memmove(d, s, nbytes);
        return TPM_OK;
    }
    nthr  = (size_t)omp_get_max_threads();
    chunk = round_up((nbytes + nthr - 1) / nthr, 4096);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < nthr; i++) {
        size_t off = i * chunk;

        if (off < nbytes) {
            memcpy(d + off, s + off, nbytes - off < chunk ? nbytes - off : chunk);
        }
    }
    return TPM_OK;
}

static tpm_status_t cpu_sync(tpm_backend_t *be)
{
    (void)be;
    return TPM_OK; /* every op has finished when it returns */
}

/* ------------------------------------------------------------------------------------------ */
/* encoder                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static tpm_status_t check_tokens(const int32_t *tokens, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (tokens[i] < 0) {
            tpm_log_error("cpu backend: token %d at position %zu is negative", (int)tokens[i], i);
            return TPM_ERR_INVALID_ARG;
        }
    }
    return TPM_OK;
}

static tpm_status_t cpu_encoder_fwd(tpm_backend_t *be, float *out, const int32_t *tokens,
                                    const float *wte, const float *wpe, int B, int T, int C)
{
    size_t N  = (size_t)B * (size_t)T;
    size_t Cs = (size_t)C;

    (void)be;
    CPU_REQUIRE(B >= 0 && T >= 0 && C >= 0);
    if (N == 0 || C == 0) {
        return TPM_OK;
    }
    CPU_REQUIRE(out != NULL && tokens != NULL && wte != NULL);
    TPM_CHECK(check_tokens(tokens, N));

#pragma omp parallel for schedule(static) if (N * Cs >= CPU_PAR_MIN)
    for (size_t bt = 0; bt < N; bt++) {
        float       *o  = out + bt * Cs;
        const float *we = wte + (size_t)tokens[bt] * Cs;
        const float *wp = wpe != NULL ? wpe + (bt % (size_t)T) * Cs : NULL;

        if (wp == NULL) {
            memcpy(o, we, Cs * sizeof(float)); /* no position table (LLaMA: RoPE) */
            continue;
        }
#pragma omp simd
        for (size_t c = 0; c < Cs; c++) {
            o[c] = we[c] + wp[c];
        }
    }
    return TPM_OK;
}

static tpm_status_t cpu_encoder_bwd(tpm_backend_t *be, float *dwte, float *dwpe, const float *dout,
                                    const int32_t *tokens, int B, int T, int C)
{
    size_t N  = (size_t)B * (size_t)T;
    size_t Cs = (size_t)C;
    size_t chunk, nchunks;

    (void)be;
    CPU_REQUIRE(B >= 0 && T >= 0 && C >= 0);
    if (N == 0 || C == 0) {
        return TPM_OK;
    }
    CPU_REQUIRE(dout != NULL && tokens != NULL);

    if (dwte != NULL) {
        TPM_CHECK(check_tokens(tokens, N));
        /*
         * Repeated tokens hit the same dwte row. Instead of atomics, each thread
         * owns a block of columns and walks the positions in order, which is
         * deterministic and independent of the thread count.
         */
        chunk   = col_chunk(Cs);
        nchunks = (Cs + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (N * Cs >= CPU_PAR_MIN)
        for (size_t ch = 0; ch < nchunks; ch++) {
            size_t c0 = ch * chunk;
            size_t c1 = c0 + chunk < Cs ? c0 + chunk : Cs;

            for (size_t bt = 0; bt < N; bt++) {
                float       *dw = dwte + (size_t)tokens[bt] * Cs;
                const float *d  = dout + bt * Cs;

#pragma omp simd
                for (size_t c = c0; c < c1; c++) {
                    dw[c] += d[c];
                }
            }
        }
    }
    if (dwpe != NULL) {
        /* position t collects the B rows b*T + t, in order of b */
#pragma omp parallel for schedule(static) if (N * Cs >= CPU_PAR_MIN)
        for (size_t t = 0; t < (size_t)T; t++) {
            float *dp = dwpe + t * Cs;

            for (size_t b = 0; b < (size_t)B; b++) {
                const float *d = dout + (b * (size_t)T + t) * Cs;

#pragma omp simd
                for (size_t c = 0; c < Cs; c++) {
                    dp[c] += d[c];
                }
            }
        }
    }
    return TPM_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* layernorm                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static tpm_status_t cpu_layernorm_fwd(tpm_backend_t *be, float *out, float *mean, float *rstd,
                                      const float *inp, const float *w, const float *b, int N,
                                      int C)
{
    size_t Ns = (size_t)N, Cs = (size_t)C;

    (void)be;
    CPU_REQUIRE(N >= 0 && C >= 0);
    if (Ns == 0) {
        return TPM_OK;
    }
    CPU_REQUIRE(C > 0 && out != NULL && inp != NULL && w != NULL && b != NULL);

#pragma omp      parallel for schedule(static) if (Ns * Cs >= CPU_PAR_MIN)
    for (size_t n = 0; n < Ns; n++) {
             const float *x   = inp + n * Cs;
             float       *o   = out + n * Cs;
             float        sum = 0.0f, var = 0.0f, m, s;

             /* two passes: the variance of the centred values does not cancel */
#pragma omp simd reduction(+ : sum)
        for (size_t c = 0; c < Cs; c++) {
                 sum += x[c];
        }
        m = sum / (float)C;
     #pragma omp simd reduction(+ : var)
        for (size_t c = 0; c < Cs; c++) {
                 float d = x[c] - m;

                 var += d * d;
        }
        s = 1.0f / sqrtf(var / (float)C + CPU_LN_EPS);
     #pragma omp simd
        for (size_t c = 0; c < Cs; c++) {
                 o[c] = (x[c] - m) * s * w[c] + b[c];
        }
        if (mean != NULL) {
                 mean[n] = m;
        }
        if (rstd != NULL) {
                 rstd[n] = s;
        }
    }
    return TPM_OK;
}

static tpm_status_t cpu_layernorm_bwd(tpm_backend_t *be, float *dinp, float *dw, float *db,
                                      const float *dout, const float *inp, const float *w,
                                      const float *mean, const float *rstd, int N, int C)
{
    size_t Ns = (size_t)N, Cs = (size_t)C;
    size_t chunk, nchunks;

    (void)be;
    CPU_REQUIRE(N >= 0 && C >= 0);
    if (Ns == 0 || Cs == 0) {
        return TPM_OK;
    }
    CPU_REQUIRE(dout != NULL && inp != NULL && mean != NULL && rstd != NULL);

    if (dinp != NULL) {
        CPU_REQUIRE(w != NULL);
        /*
         * dxhat = dout * w; dinp += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
         */
#pragma omp parallel for schedule(static) if (Ns * Cs >= CPU_PAR_MIN)
        for (size_t n = 0; n < Ns; n++) {
            const float *x  = inp + n * Cs;
            const float *d  = dout + n * Cs;
            float       *dx = dinp + n * Cs;
            float        m = mean[n], s = rstd[n];
            float        sum_g = 0.0f, sum_gx = 0.0f;

#pragma omp simd reduction(+ : sum_g, sum_gx)
            for (size_t c = 0; c < Cs; c++) {
                float g = d[c] * w[c];

                sum_g += g;
                sum_gx += g * (x[c] - m) * s;
            }
            sum_g /= (float)C;
            sum_gx /= (float)C;
#pragma omp simd
            for (size_t c = 0; c < Cs; c++) {
                float xhat = (x[c] - m) * s;

                dx[c] += s * (d[c] * w[c] - sum_g - xhat * sum_gx);
            }
        }
    }

    if (dw != NULL || db != NULL) {
        /* column blocks, rows in order: deterministic for any thread count */
        chunk   = col_chunk(Cs);
        nchunks = (Cs + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (Ns * Cs >= CPU_PAR_MIN)
        for (size_t ch = 0; ch < nchunks; ch++) {
            size_t c0 = ch * chunk;
            size_t c1 = c0 + chunk < Cs ? c0 + chunk : Cs;

            for (size_t n = 0; n < Ns; n++) {
                const float *x = inp + n * Cs;
                const float *d = dout + n * Cs;
                float        m = mean[n], s = rstd[n];

                if (dw != NULL) {
#pragma omp simd
                    for (size_t c = c0; c < c1; c++) {
                        dw[c] += d[c] * ((x[c] - m) * s);
                    }
                }
                if (db != NULL) {
#pragma omp simd
                    for (size_t c = c0; c < c1; c++) {
                        db[c] += d[c];
                    }
                }
            }
        }
    }
    return TPM_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* matmul                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static tpm_status_t cpu_matmul_fwd(tpm_backend_t *be, float *out, const float *inp, const float *w,
                                   const float *bias, int N, int IC, int OC, int w_trans)
{
    size_t Ns = (size_t)N, OCs = (size_t)OC;

    (void)be;
    CPU_REQUIRE(N >= 0 && IC >= 0 && OC >= 0);
    CPU_REQUIRE(w_trans == 0 || w_trans == 1);
    if (N == 0 || OC == 0) {
        return TPM_OK;
    }
    CPU_REQUIRE(out != NULL);
    if (IC == 0) {
        memset(out, 0, Ns * OCs * sizeof(float));
    } else if (N == 1) {
        CPU_REQUIRE(inp != NULL && w != NULL);
        /*
         * One row (a serving decode step): OpenBLAS 0.3.21's sgemm still packs all of w for
         * it; sgemv streams w once. Measured on the 2-core VM, one thread, GPT-2 shapes:
         * 4-5x faster (768x50304 logits: 42 -> 9 ms).
         */
        cblas_sgemv(CblasRowMajor, w_trans ? CblasTrans : CblasNoTrans, w_trans ? IC : OC,
                    w_trans ? OC : IC, 1.0f, w, w_trans ? OC : IC, inp, 1, 0.0f, out, 1);
    } else {
        CPU_REQUIRE(inp != NULL && w != NULL);
        /* w_trans 0: w (OC, IC), out = inp w^T; w_trans 1: w (IC, OC), out = inp w */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, w_trans ? CblasNoTrans : CblasTrans, N, OC, IC,
                    1.0f, inp, IC, w, w_trans ? OC : IC, 0.0f, out, OC);
    }
    if (bias != NULL) {
#pragma omp parallel for schedule(static) if (Ns * OCs >= CPU_PAR_MIN)
        for (size_t n = 0; n < Ns; n++) {
            float *o = out + n * OCs;

#pragma omp simd
            for (size_t j = 0; j < OCs; j++) {
                o[j] += bias[j];
            }
        }
    }
    return TPM_OK;
}

static tpm_status_t cpu_matmul_fwd_q(tpm_backend_t *be, float *out, const float *inp,
                                     const tpm_qmat_t *w, const float *bias, int N)
{
    (void)be;
    return tpm_qmat_matmul(w, out, inp, bias, N);
}

static tpm_status_t cpu_matmul_bwd(tpm_backend_t *be, float *dinp, float *dw, float *dbias,
                                   const float *dout, const float *inp, const float *w, int N,
                                   int IC, int OC, int w_trans)
{
    (void)be;
    CPU_REQUIRE(N >= 0 && IC >= 0 && OC >= 0);
    CPU_REQUIRE(w_trans == 0 || w_trans == 1);
    if (N == 0 || OC == 0) {
        return TPM_OK; /* every gradient is an empty sum */
    }
    CPU_REQUIRE(dout != NULL);

    if (dinp != NULL && IC > 0) {
        CPU_REQUIRE(w != NULL);
        /* dinp (N, IC) += dout (N, OC) @ [w (OC, IC) | w^T where w is (IC, OC)] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, w_trans ? CblasTrans : CblasNoTrans, N, IC, OC,
                    1.0f, dout, OC, w, w_trans ? OC : IC, 1.0f, dinp, IC);
    }
    if (dw != NULL && IC > 0) {
        CPU_REQUIRE(inp != NULL);
        if (w_trans) {
            /* dw (IC, OC) += inp^T dout */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, IC, OC, N, 1.0f, inp, IC, dout, OC,
                        1.0f, dw, OC);
        } else {
            /* dw (OC, IC) += dout^T inp */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, N, 1.0f, dout, OC, inp, IC,
                        1.0f, dw, IC);
        }
    }
    if (dbias != NULL) {
        colsum_add(dbias, dout, (size_t)N, (size_t)OC, (size_t)OC);
    }
    return TPM_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* attention                                                                                  */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    int   T, C, NH, hs;
    float scale;
} attn_shape_t;

static tpm_status_t attn_check(int B, int T, int C, int NH)
{
    CPU_REQUIRE(B >= 0 && T >= 0 && C >= 0 && NH > 0);
    CPU_REQUIRE(C % NH == 0);
    CPU_REQUIRE(C <= INT_MAX / 3);
    return TPM_OK;
}

/* Use one thread per work unit when there are enough units to keep half the threads busy;
 * otherwise run the units in turn and let OpenBLAS thread each sgemm. */
static int attn_parallel(size_t units)
{
    size_t nthr = (size_t)omp_get_max_threads();

    return nthr > 1 && 2 * units >= nthr;
}

/*
 * Causal softmax of a tile of score rows, in place: row r of S (m, n) has i0 + r + 1
 * valid keys. Leaves E = exp(S - rowmax) (zero beyond the valid keys), inv[r] = 1 / sum E
 * and lse[r] = rowmax + log(sum E); the caller normalises the product E V instead of E.
 */
CPU_CLONES static void attn_softmax_rows(float *S, int m, int n, int i0, float *inv, float *lse)
{
    for (int r = 0; r < m; r++) {
        float *row = S + (size_t)r * (size_t)n;
        int    nv  = i0 + r + 1; /* causal: keys 0..i */
        float  mx = -INFINITY, sum = 0.0f;

#pragma omp simd reduction(max : mx)
        for (int j = 0; j < nv; j++) {
            mx = row[j] > mx ? row[j] : mx;
        }
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < nv; j++) {
            float e = cpu_expf(row[j] - mx);

            row[j] = e;
            sum += e;
        }
        for (int j = nv; j < n; j++) {
            row[j] = 0.0f;
        }
        inv[r] = 1.0f / sum;
        lse[r] = mx + logf(sum);
    }
}

/* P = exp(S - lse) in place for the valid keys of each causal row, zero beyond */
CPU_CLONES static void attn_prob_rows(float *P, int m, int n, int i0, const float *lse)
{
    for (int r = 0; r < m; r++) {
        float *row = P + (size_t)r * (size_t)n;
        int    nv  = i0 + r + 1;
        float  l   = lse[r];

#pragma omp simd
        for (int j = 0; j < nv; j++) {
            row[j] = cpu_expf(row[j] - l);
        }
        for (int j = nv; j < n; j++) {
            row[j] = 0.0f;
        }
    }
}

/* dS = P (dP - D) in place in dP, with D_r = dO_r . O_r (rows of dO and O have stride ld) */
CPU_CLONES static void attn_dscore_rows(float *dP, const float *P, int m, int n, int i0,
                                        const float *dO, const float *O, size_t ld, int hs)
{
    for (int r = 0; r < m; r++) {
        const float *pr  = P + (size_t)r * (size_t)n;
        float       *dpr = dP + (size_t)r * (size_t)n;
        const float *dor = dO + (size_t)r * ld;
        const float *orr = O + (size_t)r * ld;
        int          nv  = i0 + r + 1;
        float        D   = 0.0f;

#pragma omp simd reduction(+ : D)
        for (int d = 0; d < hs; d++) {
            D += dor[d] * orr[d];
        }
#pragma omp simd
        for (int j = 0; j < nv; j++) {
            dpr[j] = pr[j] * (dpr[j] - D);
        }
        for (int j = nv; j < n; j++) {
            dpr[j] = 0.0f;
        }
    }
}

/*
 * Query rows [i0, i0 + m) of head h in batch row b attend to keys [0, i0 + m).
 * S (m, n) scratch. Writes out rows and lse entries of those queries.
 */
static void attn_fwd_tile(const attn_shape_t *sh, float *out, float *lse, const float *qkv,
                          float *S, int b, int h, int i0, int m)
{
    size_t       C3   = 3 * (size_t)sh->C;
    const float *q    = qkv + (size_t)b * (size_t)sh->T * C3 + (size_t)h * 3 * (size_t)sh->hs;
    const float *k    = q + sh->hs;
    const float *v    = q + 2 * sh->hs;
    int          n    = i0 + m;
    float       *lrow = lse + ((size_t)b * (size_t)sh->NH + (size_t)h) * (size_t)sh->T;
    float       *o =
        out + ((size_t)b * (size_t)sh->T + (size_t)i0) * (size_t)sh->C + (size_t)h * (size_t)sh->hs;
    float inv[CPU_ATTN_TILE];

    /* S = scale * Q[i0:i0+m] K[0:n]^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, sh->hs, sh->scale,
                q + (size_t)i0 * C3, (int)C3, k, (int)C3, 0.0f, S, n);

    attn_softmax_rows(S, m, n, i0, inv, lrow + i0);

    /* O[i0:i0+m] = (E V[0:n]) / rowsum: normalising hs outputs instead of n scores */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, sh->hs, n, 1.0f, S, n, v, (int)C3,
                0.0f, o, sh->C);
    for (int r = 0; r < m; r++) {
        float *orow = o + (size_t)r * (size_t)sh->C;

#pragma omp simd
        for (int d = 0; d < sh->hs; d++) {
            orow[d] *= inv[r];
        }
    }
}

static tpm_status_t cpu_attention_fwd(tpm_backend_t *be, float *out, float *lse, const float *qkv,
                                      int B, int T, int C, int NH)
{
    attn_shape_t sh;
    size_t       n_tiles, units, stride;
    int          par;
    float       *base;

    TPM_CHECK(attn_check(B, T, C, NH));
    if (B == 0 || T == 0 || C == 0) {
        return TPM_OK;
    }
    CPU_REQUIRE(out != NULL && lse != NULL && qkv != NULL);
    sh.T     = T;
    sh.C     = C;
    sh.NH    = NH;
    sh.hs    = C / NH;
    sh.scale = 1.0f / sqrtf((float)sh.hs);

    /* tiles are independent in the forward pass: they are the work units */
    n_tiles = ((size_t)T + CPU_ATTN_TILE - 1) / CPU_ATTN_TILE;
    units   = (size_t)B * (size_t)NH * n_tiles;
    par     = attn_parallel(units);
    TPM_CHECK(cpu_scratch(be, (size_t)CPU_ATTN_TILE * (size_t)T,
                          par ? (size_t)omp_get_max_threads() : 1, &base, &stride));

    /* dynamic: causal tiles grow along the sequence (each head's largest is issued first) */
#pragma omp parallel for schedule(dynamic, 1) if (par)
    for (size_t u = 0; u < units; u++) {
        size_t tile = n_tiles - 1 - u % n_tiles;
        size_t bh   = u / n_tiles;
        int    i0   = (int)(tile * CPU_ATTN_TILE);
        int    m    = T - i0 < CPU_ATTN_TILE ? T - i0 : CPU_ATTN_TILE;
        float *S    = base + (size_t)omp_get_thread_num() * stride;

        attn_fwd_tile(&sh, out, lse, qkv, S, (int)(bh / (size_t)NH), (int)(bh % (size_t)NH), i0, m);
    }
    return TPM_OK;
}

/*
 * Backward of one (b, h): for each query tile, recompute P = exp(S - lse), then
 * dV += P^T dO, dP = dO V^T, dS = P (dP - D) with D_i = dO_i . O_i,
 * dQ += scale dS K, dK += scale dS^T Q. P and dP are (m, n) scratch.
 */
static void attn_bwd_head(const attn_shape_t *sh, float *dqkv, const float *dout, const float *qkv,
                          const float *out, const float *lse, float *P, float *dP, int b, int h)
{
    size_t       C3   = 3 * (size_t)sh->C;
    size_t       Cs   = (size_t)sh->C;
    size_t       hs   = (size_t)sh->hs;
    size_t       qoff = (size_t)b * (size_t)sh->T * C3 + (size_t)h * 3 * hs;
    size_t       ooff = (size_t)b * (size_t)sh->T * Cs + (size_t)h * hs;
    const float *q    = qkv + qoff;
    const float *k    = q + hs;
    const float *v    = q + 2 * hs;
    float       *dq   = dqkv + qoff;
    float       *dk   = dq + hs;
    float       *dv   = dq + 2 * hs;
    const float *lrow = lse + ((size_t)b * (size_t)sh->NH + (size_t)h) * (size_t)sh->T;

    for (int i0 = 0; i0 < sh->T; i0 += CPU_ATTN_TILE) {
        int          m   = sh->T - i0 < CPU_ATTN_TILE ? sh->T - i0 : CPU_ATTN_TILE;
        int          n   = i0 + m;
        const float *qb  = q + (size_t)i0 * C3;
        const float *dob = dout + ooff + (size_t)i0 * Cs;
        const float *ob  = out + ooff + (size_t)i0 * Cs;

        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, sh->hs, sh->scale, qb, (int)C3,
                    k, (int)C3, 0.0f, P, n);
        attn_prob_rows(P, m, n, i0, lrow + i0);
        /* dV[0:n] += P^T dO */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, sh->hs, m, 1.0f, P, n, dob, sh->C,
                    1.0f, dv, (int)C3);
        /* dP = dO V[0:n]^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, sh->hs, 1.0f, dob, sh->C, v,
                    (int)C3, 0.0f, dP, n);
        attn_dscore_rows(dP, P, m, n, i0, dob, ob, Cs, sh->hs);
        /* dQ[i0:n] += scale dS K[0:n];  dK[0:n] += scale dS^T Q[i0:n] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, sh->hs, n, sh->scale, dP, n, k,
                    (int)C3, 1.0f, dq + (size_t)i0 * C3, (int)C3);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, sh->hs, m, sh->scale, dP, n, qb,
                    (int)C3, 1.0f, dk, (int)C3);
    }
}

static tpm_status_t cpu_attention_bwd(tpm_backend_t *be, float *dqkv, const float *dout,
                                      const float *qkv, const float *out, const float *lse, int B,
                                      int T, int C, int NH)
{
    attn_shape_t sh;
    size_t       units, stride, tile_floats;
    int          par;
    float       *base;

    TPM_CHECK(attn_check(B, T, C, NH));
    if (B == 0 || T == 0 || C == 0) {
        return TPM_OK;
    }
    CPU_REQUIRE(dqkv != NULL && dout != NULL && qkv != NULL && out != NULL && lse != NULL);
    sh.T     = T;
    sh.C     = C;
    sh.NH    = NH;
    sh.hs    = C / NH;
    sh.scale = 1.0f / sqrtf((float)sh.hs);

    /* dK and dV of a head collect every query tile: the unit is a whole (b, h) */
    units       = (size_t)B * (size_t)NH;
    par         = attn_parallel(units);
    tile_floats = (size_t)CPU_ATTN_TILE * (size_t)T;
    TPM_CHECK(
        cpu_scratch(be, 2 * tile_floats, par ? (size_t)omp_get_max_threads() : 1, &base, &stride));

#pragma omp parallel for schedule(static) if (par)
    for (size_t bh = 0; bh < units; bh++) {
        float *P = base + (size_t)omp_get_thread_num() * stride;

        attn_bwd_head(&sh, dqkv, dout, qkv, out, lse, P, P + tile_floats, (int)(bh / (size_t)NH),
                      (int)(bh % (size_t)NH));
    }
    return TPM_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* attention with a KV cache (serving)                                                        */
/* ------------------------------------------------------------------------------------------ */

/*
 * A query tile of attention_kv: tokens [i, i + m) of the batch that belong to one slot at
 * consecutive positions (a prompt chunk, or one decode token), m <= CPU_ATTN_TILE. Such a
 * tile is exactly a tile of the training attention: one sgemm for the scores against the
 * cached key prefix, the same causal softmax, one sgemm with the cached values.
 */
static tpm_status_t kv_tiles(tpm_backend_t *be, const int32_t *slot, const int32_t *pos, int N,
                             size_t *n_tiles_p)
{
    cpu_priv_t  *priv = be->priv;
    size_t       n    = 0;
    void        *p;
    tpm_status_t status;

    if (priv == NULL) {
        tpm_log_error("cpu backend has no private state: create it with tpm_backend_create()");
        return TPM_ERR_INVALID_ARG;
    }
    if ((size_t)N > priv->tiles_cap) {
        tpm_free(priv->tiles);
        priv->tiles     = NULL;
        priv->tiles_cap = 0;
        status          = tpm_calloc((size_t)N, sizeof(int32_t), &p);
        if (status != TPM_OK) {
            return status;
        }
        priv->tiles     = p;
        priv->tiles_cap = (size_t)N;
    }
    for (int i = 0; i < N;) {
        int m = 1;

        while (i + m < N && m < CPU_ATTN_TILE && slot[i + m] == slot[i] &&
               pos[i + m] == pos[i] + m) {
            m++;
        }
        priv->tiles[n++] = i;
        i += m;
    }
    *n_tiles_p = n;
    return TPM_OK;
}

/*
 * The attention of one head for m queries at positions p0 .. p0 + m - 1 of one slot against
 * its cached rows [0, p0 + m): kc and vc point at row 0 of the head, ld floats apart.
 * S (m, p0 + m) scratch. o (m rows, Cs apart).
 */
static void kv_attn_core(const attn_shape_t *sh, float *o, size_t Cs, const float *q, size_t C3,
                         const float *kc, const float *vc, int ld, float *S, int p0, int m)
{
    const int n = p0 + m;
    float     inv[CPU_ATTN_TILE], lse[CPU_ATTN_TILE];

    /* a decode token (m = 1): sgemv streams the cached rows instead of packing them */
    if (m == 1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, n, sh->hs, sh->scale, kc, ld, q, 1, 0.0f, S, 1);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, sh->hs, sh->scale, q, (int)C3,
                    kc, ld, 0.0f, S, n);
    }
    /* row r is the query at position p0 + r: keys 0 .. p0 + r, as in a training tile at p0 */
    attn_softmax_rows(S, m, n, p0, inv, lse);
    if (m == 1) {
        cblas_sgemv(CblasRowMajor, CblasTrans, n, sh->hs, 1.0f, vc, ld, S, 1, 0.0f, o, 1);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, sh->hs, n, 1.0f, S, n, vc, ld,
                    0.0f, o, (int)Cs);
    }
    for (int r = 0; r < m; r++) {
        float *orow = o + (size_t)r * Cs;

#pragma omp simd
        for (int d = 0; d < sh->hs; d++) {
            orow[d] *= inv[r];
        }
    }
}

/*
 * Head h of the tile starting at token i (m tokens, positions p0 .. p0 + m - 1 of one slot)
 * attends to that slot's cached rows [0, p0 + m). S (m, p0 + m) scratch. With bf16 caches
 * (k16, v16 non-NULL) the head's rows are widened into KV (2 (p0 + m) hs floats) first.
 */
static void kv_attn_tile(const attn_shape_t *sh, float *out, const float *qkv, const float *kcache,
                         const float *vcache, const uint16_t *k16, const uint16_t *v16,
                         const int32_t *slot, const int32_t *pos, int ctx, float *S, float *KV,
                         int i, int m, int h)
{
    const size_t C3   = 3 * (size_t)sh->C;
    const size_t Cs   = (size_t)sh->C;
    const size_t hoff = (size_t)h * (size_t)sh->hs;
    const size_t base = (size_t)slot[i] * (size_t)ctx * Cs + hoff;
    const float *q    = qkv + (size_t)i * C3 + (size_t)h * 3 * (size_t)sh->hs;
    const int    n    = pos[i] + m, hs = sh->hs;

    if (k16 == NULL) {
        kv_attn_core(sh, out + (size_t)i * Cs + hoff, Cs, q, C3, kcache + base, vcache + base,
                     sh->C, S, pos[i], m);
        return;
    }
    for (int j = 0; j < n; j++) {
        const uint16_t *kr = k16 + base + (size_t)j * Cs, *vr = v16 + base + (size_t)j * Cs;
        float          *kd = KV + (size_t)j * (size_t)hs, *vd = KV + ((size_t)n + j) * (size_t)hs;
#pragma omp simd
        for (int d = 0; d < hs; d++) {
            kd[d] = tpm_bf16_to_float(kr[d]);
            vd[d] = tpm_bf16_to_float(vr[d]);
        }
    }
    kv_attn_core(sh, out + (size_t)i * Cs + hoff, Cs, q, C3, KV, KV + (size_t)n * (size_t)hs, hs, S,
                 pos[i], m);
}

/* attention_kv and attention_kv16: the caches are fp32 (kcache, vcache) or bf16 (k16, v16) */
static tpm_status_t attention_kv_any(tpm_backend_t *be, float *out, const float *qkv,
                                     float *kcache, float *vcache, uint16_t *k16, uint16_t *v16,
                                     const int32_t *slot, const int32_t *pos, int N, int C, int NH,
                                     int ctx)
{
    attn_shape_t sh;
    size_t       n_tiles, units, stride, C3 = 3 * (size_t)C;
    int          par, n_max = 0;
    float       *base;

    CPU_REQUIRE(N >= 0 && C >= 0 && ctx > 0);
    if (N == 0 || C == 0) {
        return TPM_OK; /* C == 0: a tensor-parallel rank that owns no head */
    }
    TPM_CHECK(attn_check(1, 1, C, NH));
    CPU_REQUIRE(out != NULL && qkv != NULL && slot != NULL && pos != NULL &&
                ((kcache != NULL && vcache != NULL) || (k16 != NULL && v16 != NULL)));
    for (int i = 0; i < N; i++) {
        if (slot[i] < 0 || pos[i] < 0 || pos[i] >= ctx) {
            tpm_log_error("cpu backend: token %d has slot %d position %d (cache length %d)", i,
                          (int)slot[i], (int)pos[i], ctx);
            return TPM_ERR_INVALID_ARG;
        }
        n_max = pos[i] + 1 > n_max ? pos[i] + 1 : n_max;
    }
    sh.T     = 0; /* unused: keys come from the cache */
    sh.C     = C;
    sh.NH    = NH;
    sh.hs    = C / NH;
    sh.scale = 1.0f / sqrtf((float)sh.hs);

    /* every k and v goes to the cache first, so a prompt chunk attends to itself */
#pragma omp parallel for schedule(static) if ((size_t)N * (size_t)C >= CPU_PAR_MIN)
    for (int i = 0; i < N; i++) {
        size_t       row = ((size_t)slot[i] * (size_t)ctx + (size_t)pos[i]) * (size_t)C;
        const float *src = qkv + (size_t)i * C3;

        for (int h = 0; h < NH; h++) {
            size_t       so = (size_t)h * 3 * (size_t)sh.hs, co = (size_t)h * (size_t)sh.hs;
            const float *k = src + so + (size_t)sh.hs, *v = src + so + 2 * (size_t)sh.hs;

            if (k16 != NULL) {
                for (int d = 0; d < sh.hs; d++) {
                    k16[row + co + (size_t)d] = tpm_bf16_rne(k[d]);
                    v16[row + co + (size_t)d] = tpm_bf16_rne(v[d]);
                }
            } else {
                memcpy(kcache + row + co, k, (size_t)sh.hs * sizeof(float));
                memcpy(vcache + row + co, v, (size_t)sh.hs * sizeof(float));
            }
        }
    }

    TPM_CHECK(kv_tiles(be, slot, pos, N, &n_tiles));
    units = n_tiles * (size_t)NH;
    par   = attn_parallel(units);
    /* per thread: the scores, and with bf16 caches the widened rows of one head */
    TPM_CHECK(cpu_scratch(be,
                          (size_t)CPU_ATTN_TILE * (size_t)n_max +
                              (k16 != NULL ? 2 * (size_t)n_max * (size_t)sh.hs : 0),
                          par ? (size_t)omp_get_max_threads() : 1, &base, &stride));
    {
        const int32_t *tiles = ((cpu_priv_t *)be->priv)->tiles;

        /* dynamic: a long prompt tile costs far more than a decode token */
#pragma omp parallel for schedule(dynamic, 1) if (par)
        for (size_t u = 0; u < units; u++) {
            size_t t  = u / (size_t)NH;
            int    i  = tiles[t];
            int    i1 = t + 1 < n_tiles ? tiles[t + 1] : N;
            float *S  = base + (size_t)omp_get_thread_num() * stride;

            kv_attn_tile(&sh, out, qkv, kcache, vcache, k16, v16, slot, pos, ctx, S,
                         S + (size_t)CPU_ATTN_TILE * (size_t)n_max, i, i1 - i,
                         (int)(u % (size_t)NH));
        }
    }
    return TPM_OK;
}

static tpm_status_t cpu_attention_kv(tpm_backend_t *be, float *out, const float *qkv, float *kcache,
                                     float *vcache, const int32_t *slot, const int32_t *pos, int N,
                                     int C, int NH, int ctx)
{
    return attention_kv_any(be, out, qkv, kcache, vcache, NULL, NULL, slot, pos, N, C, NH, ctx);
}

static tpm_status_t cpu_attention_kv16(tpm_backend_t *be, float *out, const float *qkv,
                                       uint16_t *kcache, uint16_t *vcache, const int32_t *slot,
                                       const int32_t *pos, int N, int C, int NH, int ctx)
{
    return attention_kv_any(be, out, qkv, NULL, NULL, kcache, vcache, slot, pos, N, C, NH, ctx);
}

/* ------------------------------------------------------------------------------------------ */
/* GELU                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/*
 * gelu(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
 * Since 1 + tanh(u) = 2 sigmoid(2u), gelu(x) = x s with s = 1 / (1 + exp(-2u)),
 * which has no cancellation and needs one exp. The derivative is
 * s + 2 x s (1 - s) du/dx.
 */
#define CPU_GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define CPU_GELU_A 0.044715f

/* elements per OpenMP work item of the elementwise GELU loops */
#define CPU_GELU_CHUNK ((size_t)1 << 14)

CPU_CLONES static void gelu_fwd_range(float *out, const float *inp, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float u = CPU_GELU_K * (x + CPU_GELU_A * x * x * x);

        out[i] = x / (1.0f + cpu_expf(-2.0f * u));
    }
}

CPU_CLONES static void gelu_bwd_range(float *dinp, const float *inp, const float *dout, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float x  = inp[i];
        float x2 = x * x;
        float u  = CPU_GELU_K * (x + CPU_GELU_A * x2 * x);
        float du = CPU_GELU_K * (1.0f + 3.0f * CPU_GELU_A * x2);
        float s  = 1.0f / (1.0f + cpu_expf(-2.0f * u));

        dinp[i] += dout[i] * (s + 2.0f * x * s * (1.0f - s) * du);
    }
}

static tpm_status_t cpu_gelu_fwd(tpm_backend_t *be, float *out, const float *inp, size_t n)
{
    size_t nch = (n + CPU_GELU_CHUNK - 1) / CPU_GELU_CHUNK;

    (void)be;
    if (n == 0) {
        return TPM_OK;
    }
    CPU_REQUIRE(out != NULL && inp != NULL);
#pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t ch = 0; ch < nch; ch++) {
        size_t i0 = ch * CPU_GELU_CHUNK;

        gelu_fwd_range(out + i0, inp + i0, n - i0 < CPU_GELU_CHUNK ? n - i0 : CPU_GELU_CHUNK);
    }
    return TPM_OK;
}

static tpm_status_t cpu_gelu_bwd(tpm_backend_t *be, float *dinp, const float *inp,
                                 const float *dout, size_t n)
{
    size_t nch = (n + CPU_GELU_CHUNK - 1) / CPU_GELU_CHUNK;

    (void)be;
    if (n == 0) {
        return TPM_OK;
    }
    CPU_REQUIRE(dinp != NULL && inp != NULL && dout != NULL);
#pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t ch = 0; ch < nch; ch++) {
        size_t i0 = ch * CPU_GELU_CHUNK;

        gelu_bwd_range(dinp + i0, inp + i0, dout + i0,
                       n - i0 < CPU_GELU_CHUNK ? n - i0 : CPU_GELU_CHUNK);
    }
    return TPM_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* elementwise and reductions                                                                 */
/* ------------------------------------------------------------------------------------------ */

static tpm_status_t cpu_add(tpm_backend_t *be, float *out, const float *a, const float *b, size_t n)
{
    (void)be;
    if (n == 0) {
        return TPM_OK;
    }
    CPU_REQUIRE(out != NULL && a != NULL && b != NULL);
#pragma omp parallel for simd schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        out[i] = a[i] + b[i];
    }
    return TPM_OK;
}

static tpm_status_t cpu_axpy(tpm_backend_t *be, float *y, float alpha, const float *x, size_t n)
{
    (void)be;
    if (n == 0) {
        return TPM_OK;
    }
    CPU_REQUIRE(y != NULL && x != NULL);
#pragma omp parallel for simd schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        y[i] += alpha * x[i];
    }
    return TPM_OK;
}

static tpm_status_t cpu_scale(tpm_backend_t *be, float *x, float alpha, size_t n)
{
    (void)be;
    if (n == 0) {
        return TPM_OK;
    }
    CPU_REQUIRE(x != NULL);
#pragma omp parallel for simd schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        x[i] *= alpha;
    }
    return TPM_OK;
}

static tpm_status_t cpu_sumsq(tpm_backend_t *be, const float *x, size_t n, double *sumsq_p)
{
    double part[CPU_SUMSQ_NBLOCK];
    double total = 0.0;
    size_t nblk, bs;

    (void)be;
    CPU_REQUIRE(sumsq_p != NULL);
    if (n == 0) {
        *sumsq_p = 0.0;
        return TPM_OK;
    }
    CPU_REQUIRE(x != NULL);
    /*
     * The block layout depends on n only, and the block sums are added in order,
     * so the result is the same for any thread count (an OpenMP reduction clause
     * would combine the threads in arrival order).
     */
    nblk = (n + CPU_SUMSQ_BLOCK - 1) / CPU_SUMSQ_BLOCK;
    nblk = nblk < CPU_SUMSQ_NBLOCK ? nblk : CPU_SUMSQ_NBLOCK;
    bs   = (n + nblk - 1) / nblk;
#pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t blk = 0; blk < nblk; blk++) {
        size_t i0  = blk * bs;
        size_t i1  = i0 + bs < n ? i0 + bs : n;
        double acc = 0.0;

#pragma omp simd reduction(+ : acc)
        for (size_t i = i0; i < i1; i++) {
            acc += (double)x[i] * (double)x[i];
        }
        part[blk] = acc;
    }
    for (size_t blk = 0; blk < nblk; blk++) {
        total += part[blk];
    }
    *sumsq_p = total;
    return TPM_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* softmax + cross-entropy                                                                    */
/* ------------------------------------------------------------------------------------------ */

/*
 * One row of softmax + cross-entropy over the first V of Vp logits; returns the loss.
 * With dl (may alias l): dl = dloss * (softmax - onehot(tgt)), 0 in the padded columns.
 * The sum of exponentials is accumulated in double: V is ~5e4 terms.
 */
CPU_CLONES static float xent_row(float *dl, const float *l, int tgt, size_t V, size_t Vp,
                                 float dloss)
{
    float  mx = -INFINITY, lt = l[tgt], g;
    double sum = 0.0;

#pragma omp simd reduction(max : mx)
    for (size_t j = 0; j < V; j++) {
        mx = l[j] > mx ? l[j] : mx;
    }
    if (dl == NULL) {
#pragma omp simd reduction(+ : sum)
        for (size_t j = 0; j < V; j++) {
            sum += (double)cpu_expf(l[j] - mx);
        }
        return mx + (float)log(sum) - lt;
    }
    /* keep exp(l - max) in dl; it is scaled in the last pass */
#pragma omp simd reduction(+ : sum)
    for (size_t j = 0; j < V; j++) {
        float e = cpu_expf(l[j] - mx);

        dl[j] = e;
        sum += (double)e;
    }
    g = dloss / (float)sum;
#pragma omp simd
    for (size_t j = 0; j < V; j++) {
        dl[j] *= g;
    }
    dl[tgt] -= dloss;
    for (size_t j = V; j < Vp; j++) {
        dl[j] = 0.0f;
    }
    return mx + (float)log(sum) - lt;
}

static tpm_status_t cpu_xent_fwd_bwd(tpm_backend_t *be, float *losses, float *dlogits,
                                     const float *logits, const int32_t *targets, int N, int V,
                                     int Vp, float dloss)
{
    size_t Ns = (size_t)N, Vs = (size_t)V, Vps = (size_t)Vp;

    (void)be;
    CPU_REQUIRE(N >= 0 && V > 0 && Vp >= V);
    if (Ns == 0) {
        return TPM_OK;
    }
    CPU_REQUIRE(losses != NULL && logits != NULL && targets != NULL);
    for (size_t i = 0; i < Ns; i++) {
        if (targets[i] < -1 || targets[i] >= V) {
            tpm_log_error("cpu backend: target %d at row %zu is outside [-1, %d)", (int)targets[i],
                          i, V);
            return TPM_ERR_INVALID_ARG;
        }
    }

    /* dlogits may alias logits: every row reads what it needs before writing */
#pragma omp parallel for schedule(static) if (Ns * Vs >= CPU_PAR_MIN)
    for (size_t i = 0; i < Ns; i++) {
        float *dl = dlogits != NULL ? dlogits + i * Vps : NULL;

        if (targets[i] < 0) {
            losses[i] = 0.0f;
            if (dl != NULL) {
                memset(dl, 0, Vps * sizeof(float));
            }
            continue;
        }
        losses[i] = xent_row(dl, logits + i * Vps, targets[i], Vs, Vps, dloss);
    }
    return TPM_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* AdamW                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/*
 * AdamW over a range. Three divisions and a square root per element make the 4-wide
 * SSE2 baseline compute bound (124M parameters: 96 -> 66 ms of CPU time on one core with
 * the AVX-512 clone, 110 -> 88 ms wall on 2 cores), hence the clones. Division and square
 * root are correctly rounded at any width and FMA contraction is off, so every clone gives
 * the same bits as the baseline loop.
 */
#define CPU_ADAMW_CHUNK ((size_t)1 << 16) /* elements per OpenMP work item */

CPU_CLONES static void adamw_range(float *param, const float *grad, float *m, float *v, size_t n,
                                   float lr, float beta1, float beta2, float eps, float wd,
                                   float bc1, float bc2)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float g  = grad[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        float mh = mi / bc1;
        float vh = vi / bc2;

        m[i] = mi;
        v[i] = vi;
        param[i] -= lr * (mh / (sqrtf(vh) + eps) + wd * param[i]);
    }
}

static tpm_status_t cpu_adamw(tpm_backend_t *be, float *param, const float *grad, float *m,
                              float *v, size_t n, float lr, float beta1, float beta2, float eps,
                              float wd, int t)
{
    size_t nch = (n + CPU_ADAMW_CHUNK - 1) / CPU_ADAMW_CHUNK;
    float  bc1, bc2;

    (void)be;
    CPU_REQUIRE(t >= 1);
    if (n == 0) {
        return TPM_OK;
    }
    CPU_REQUIRE(param != NULL && grad != NULL && m != NULL && v != NULL);
    /* bias corrections once per call, not per element */
    bc1 = 1.0f - powf(beta1, (float)t);
    bc2 = 1.0f - powf(beta2, (float)t);
#pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t ch = 0; ch < nch; ch++) {
        size_t i0 = ch * CPU_ADAMW_CHUNK;

        adamw_range(param + i0, grad + i0, m + i0, v + i0,
                    n - i0 < CPU_ADAMW_CHUNK ? n - i0 : CPU_ADAMW_CHUNK, lr, beta1, beta2, eps, wd,
                    bc1, bc2);
    }
    return TPM_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* bf16 working weights and the 2-bit codec                                                   */
/* ------------------------------------------------------------------------------------------ */

static tpm_status_t cpu_to_bf16(tpm_backend_t *be, uint16_t *dst, const float *src, size_t n)
{
    (void)be;
    if (n == 0) {
        return TPM_OK;
    }
    CPU_REQUIRE(dst != NULL && src != NULL);
#pragma omp parallel for simd schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        dst[i] = tpm_bf16_rne(src[i]);
    }
    return TPM_OK;
}

static tpm_status_t cpu_from_bf16(tpm_backend_t *be, float *dst, const uint16_t *src, size_t n)
{
    (void)be;
    if (n == 0) {
        return TPM_OK;
    }
    CPU_REQUIRE(dst != NULL && src != NULL);
#pragma omp parallel for simd schedule(static) if (n >= CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        dst[i] = tpm_bf16_to_float(src[i]);
    }
    return TPM_OK;
}

static tpm_status_t cpu_twobit_encode(tpm_backend_t *be, int mode, int B, const float *g, size_t n,
                                      void *residual, uint64_t key, uint64_t stream,
                                      uint64_t index0, uint8_t *chunk)
{
    (void)be;
    CPU_REQUIRE(tpm_twobit_block_ok(B) && mode >= TPM_TWOBIT_EF_FP32 &&
                mode <= TPM_TWOBIT_STOCHASTIC);
    CPU_REQUIRE(chunk != NULL && (n == 0 || g != NULL));
    CPU_REQUIRE(mode == TPM_TWOBIT_STOCHASTIC || n == 0 || residual != NULL);
    tpm_twobit_encode((tpm_twobit_mode_t)mode, B, g, n, residual, key, stream, index0, chunk);
    return TPM_OK;
}

static tpm_status_t cpu_twobit_decode_add(tpm_backend_t *be, int B, const uint8_t *chunk, size_t n,
                                          float *acc)
{
    (void)be;
    CPU_REQUIRE(tpm_twobit_block_ok(B));
    CPU_REQUIRE(n == 0 || (chunk != NULL && acc != NULL));
    tpm_twobit_decode_add(B, chunk, n, acc);
    return TPM_OK;
}

const tpm_backend_ops_t tpm_backend_cpu_ops = {
    .name              = "cpu",
    .alloc             = cpu_alloc,
    .free              = cpu_free,
    .memzero           = cpu_memzero,
    .copy              = cpu_copy,
    .sync              = cpu_sync,
    .encoder_fwd       = cpu_encoder_fwd,
    .encoder_bwd       = cpu_encoder_bwd,
    .layernorm_fwd     = cpu_layernorm_fwd,
    .layernorm_bwd     = cpu_layernorm_bwd,
    .matmul_fwd        = cpu_matmul_fwd,
    .matmul_fwd_q      = cpu_matmul_fwd_q,
    .matmul_bwd        = cpu_matmul_bwd,
    .attention_fwd     = cpu_attention_fwd,
    .attention_bwd     = cpu_attention_bwd,
    .attention_kv      = cpu_attention_kv,
    .attention_kv16    = cpu_attention_kv16,
    .gelu_fwd          = cpu_gelu_fwd,
    .gelu_bwd          = cpu_gelu_bwd,
    .add               = cpu_add,
    .axpy              = cpu_axpy,
    .scale             = cpu_scale,
    .sumsq             = cpu_sumsq,
    .xent_fwd_bwd      = cpu_xent_fwd_bwd,
    .adamw             = cpu_adamw,
    .to_bf16           = cpu_to_bf16,
    .from_bf16         = cpu_from_bf16,
    .twobit_encode     = cpu_twobit_encode,
    .twobit_decode_add = cpu_twobit_decode_add,
    /* LLaMA family: backend_cpu_llama.c */
    .rmsnorm_fwd       = tpm_cpu_rmsnorm_fwd,
    .rmsnorm_bwd       = tpm_cpu_rmsnorm_bwd,
    .rope_fwd          = tpm_cpu_rope_fwd,
    .rope_bwd          = tpm_cpu_rope_bwd,
    .swiglu_fwd        = tpm_cpu_swiglu_fwd,
    .swiglu_bwd        = tpm_cpu_swiglu_bwd,
    .attention_gqa_fwd = tpm_cpu_attention_gqa_fwd,
    .attention_gqa_bwd = tpm_cpu_attention_gqa_bwd,
    .attention_gqa_kv  = tpm_cpu_attention_gqa_kv,
};
