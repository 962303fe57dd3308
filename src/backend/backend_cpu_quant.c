/* SPDX-License-Identifier: MIT */
/*
 * backend_cpu_quant.c: fp32 / bf16 / int8 weight matrices and their products on the CPU
 * (backend_cpu_quant.h has the formats). Three kernel families, chosen once at run time:
 *
 *   ref     plain C, the definition the others are tested against
 *   avx2    AVX2 + FMA + F16C: int8 by maddubs/madd (sign trick), bf16 by a 16-bit shift
 *   avx512  AVX-512 F/BW/VL + VNNI: int8 by vpdpbusd on |w| and sign(w) * x, 64 codes a
 *           step; bf16 and fp32 16 lanes a step
 *
 * The SIMD bodies are compiled with function target attributes, so the file builds with the
 * project's portable flags and the dispatch (__builtin_cpu_supports) decides what runs.
 * Integer block sums are exact in every family; the families differ only in the order of
 * the fp32 accumulation.
 */
#include "backend/backend_cpu_quant.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/mem.h"
#include "base/bf16.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define QK_X86 1
#else
#define QK_X86 0
#endif

#define QK_ROW_TILE 32          /* rows a thread finishes for every input row (GEMV) */
#define QK_PAR_MIN  (1u << 16)  /* weights below which a product stays on one thread */
#define QK_GEMM_TILE_BYTES (1u << 20) /* fp32 tile of W widened for one sgemm (prefill) */

/* ---- names ------------------------------------------------------------------------------ */

const char *tpm_wdtype_name(tpm_wdtype_t dt)
{
    static const char *names[TPM_WDT_N] = {"fp32", "bf16", "int8"};

    return (unsigned)dt < TPM_WDT_N ? names[dt] : NULL;
}

tpm_status_t tpm_wdtype_parse(const char *s, tpm_wdtype_t *dt_p)
{
    for (int i = 0; i < TPM_WDT_N; i++) {
        if (s != NULL && strcmp(s, tpm_wdtype_name((tpm_wdtype_t)i)) == 0) {
            *dt_p = (tpm_wdtype_t)i;
            return TPM_OK;
        }
    }
    tpm_log_error("weight dtype '%s': expected fp32, bf16 or int8", s != NULL ? s : "(null)");
    return TPM_ERR_INVALID_ARG;
}

const char *tpm_qkernel_name(tpm_qkernel_t k)
{
    switch (k) {
    case TPM_QK_REF: return "ref";
    case TPM_QK_AVX2: return "avx2";
    case TPM_QK_AVX512: return "avx512-vnni";
    case TPM_QK_AUTO: return "auto";
    default: return "unknown";
    }
}

/* ---- quantization (shared by every family) --------------------------------------------- */

/* one block of n <= 32 values to codes q[32] (zero-padded); returns the scale */
static float q8_block(const float *x, int n, int8_t *q)
{
    float amax = 0.0f, d, inv;

    for (int i = 0; i < n; i++) {
        amax = fmaxf(amax, fabsf(x[i]));
    }
    d   = amax / 127.0f;
    inv = d > 0.0f ? 1.0f / d : 0.0f;
    for (int i = 0; i < TPM_Q8_BLOCK; i++) {
        float v = i < n ? nearbyintf(x[i] * inv) : 0.0f;
        q[i]    = (int8_t)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
    }
    return d;
}

/* a weight row: the scale is rounded to fp16 first and the codes made with that scale */
static void q8_row(const float *x, int cols, int kb, int8_t *q, uint16_t *d)
{
    for (int b = 0; b < kb; b++) {
        const int n = cols - b * TPM_Q8_BLOCK < TPM_Q8_BLOCK ? cols - b * TPM_Q8_BLOCK
                                                               : TPM_Q8_BLOCK;
        float     amax = 0.0f, ds, inv;

        for (int i = 0; i < n; i++) {
            amax = fmaxf(amax, fabsf(x[b * TPM_Q8_BLOCK + i]));
        }
        d[b] = tpm_fp16_rne(amax / 127.0f);
        ds   = tpm_fp16_to_float(d[b]);
        inv  = ds > 0.0f ? 1.0f / ds : 0.0f;
        for (int i = 0; i < TPM_Q8_BLOCK; i++) {
            float v = i < n ? nearbyintf(x[b * TPM_Q8_BLOCK + i] * inv) : 0.0f;
            q[b * TPM_Q8_BLOCK + i] = (int8_t)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
        }
    }
}

tpm_status_t tpm_qmat_create(tpm_qmat_t *m, tpm_wdtype_t dt, const float *w, int rows, int cols,
                             int w_trans)
{
    const size_t R = (size_t)rows, C = (size_t)cols;
    size_t       n, esz;
    float       *tmp = NULL;
    tpm_status_t status;

    memset(m, 0, sizeof(*m));
    if (rows < 0 || cols < 0 || (unsigned)dt >= TPM_WDT_N || (w == NULL && R * C > 0)) {
        tpm_log_error("qmat: bad matrix (%d x %d, dtype %d)", rows, cols, (int)dt);
        return TPM_ERR_INVALID_ARG;
    }
    m->dt   = dt;
    m->rows = rows;
    m->cols = cols;
    m->kb   = (cols + TPM_Q8_BLOCK - 1) / TPM_Q8_BLOCK;
    esz     = dt == TPM_WDT_F32 ? 4 : dt == TPM_WDT_BF16 ? 2 : 1;
    n       = dt == TPM_WDT_Q8 ? R * (size_t)m->kb * TPM_Q8_BLOCK : R * C;
    TPM_CHECK(tpm_malloc(n * esz + 1, &m->w));
    m->bytes = n * esz;
    if (dt == TPM_WDT_Q8) {
        TPM_CHECK_GOTO(tpm_malloc(R * (size_t)m->kb * sizeof(uint16_t) + 1, (void **)&m->d),
                       status, err);
        m->bytes += R * (size_t)m->kb * sizeof(uint16_t);
    }
    if (w_trans && R * C > 0) {
        /* (cols, rows) -> (rows, cols), then the same conversion as the plain layout */
        TPM_CHECK_GOTO(tpm_malloc(R * C * sizeof(float), (void **)&tmp), status, err);
#pragma omp parallel for schedule(static) if (R * C >= QK_PAR_MIN)
        for (size_t r = 0; r < R; r++) {
            for (size_t c = 0; c < C; c++) {
                tmp[r * C + c] = w[c * R + r];
            }
        }
        w = tmp;
    }
#pragma omp parallel for schedule(static) if (R * C >= QK_PAR_MIN)
    for (size_t r = 0; r < R; r++) {
        const float *src = w + r * C;

        if (dt == TPM_WDT_F32) {
            memcpy((float *)m->w + r * C, src, C * sizeof(float));
        } else if (dt == TPM_WDT_BF16) {
            uint16_t *dst = (uint16_t *)m->w + r * C;
            for (size_t c = 0; c < C; c++) {
                dst[c] = tpm_bf16_rne(src[c]);
            }
        } else {
            q8_row(src, cols, m->kb, (int8_t *)m->w + r * (size_t)m->kb * TPM_Q8_BLOCK,
                   m->d + r * (size_t)m->kb);
        }
    }
    tpm_free(tmp);
    return TPM_OK;

err:
    tpm_qmat_destroy(m);
    return status;
}

void tpm_qmat_destroy(tpm_qmat_t *m)
{
    if (m == NULL) {
        return;
    }
    tpm_free(m->w);
    tpm_free(m->d);
    memset(m, 0, sizeof(*m));
}

void tpm_qmat_row_f32(const tpm_qmat_t *m, int r, float *dst)
{
    const size_t C = (size_t)m->cols;

    if (m->dt == TPM_WDT_F32) {
        memcpy(dst, (const float *)m->w + (size_t)r * C, C * sizeof(float));
    } else if (m->dt == TPM_WDT_BF16) {
        const uint16_t *src = (const uint16_t *)m->w + (size_t)r * C;
        for (size_t c = 0; c < C; c++) {
            dst[c] = tpm_bf16_to_float(src[c]);
        }
    } else {
        const int8_t   *q = (const int8_t *)m->w + (size_t)r * (size_t)m->kb * TPM_Q8_BLOCK;
        const uint16_t *d = m->d + (size_t)r * (size_t)m->kb;
        for (size_t c = 0; c < C; c++) {
            dst[c] = tpm_fp16_to_float(d[c / TPM_Q8_BLOCK]) * (float)q[c];
        }
    }
}

/* ---- row dot products, one per family and dtype ----------------------------------------- */

/* an input row prepared for one matrix: fp32 as is, or int8 codes + fp32 block scales */
typedef struct {
    const float   *x;
    const int8_t  *xq;
    const uint8_t *xu; /* xq + 128: the unsigned operand of vpdpbusd */
    const float   *xd;
} qk_in_t;

typedef float (*qk_dot_t)(const tpm_qmat_t *m, int r, const qk_in_t *in);

static float dot_f32_ref(const tpm_qmat_t *m, int r, const qk_in_t *in)
{
    const float *w = (const float *)m->w + (size_t)r * (size_t)m->cols;
    float        s = 0.0f;

    for (int c = 0; c < m->cols; c++) {
        s += w[c] * in->x[c];
    }
    return s;
}

static float dot_bf16_ref(const tpm_qmat_t *m, int r, const qk_in_t *in)
{
    const uint16_t *w = (const uint16_t *)m->w + (size_t)r * (size_t)m->cols;
    float           s = 0.0f;

    for (int c = 0; c < m->cols; c++) {
        s += tpm_bf16_to_float(w[c]) * in->x[c];
    }
    return s;
}

static float dot_q8_ref(const tpm_qmat_t *m, int r, const qk_in_t *in)
{
    const int8_t   *q = (const int8_t *)m->w + (size_t)r * (size_t)m->kb * TPM_Q8_BLOCK;
    const uint16_t *d = m->d + (size_t)r * (size_t)m->kb;
    float           s = 0.0f;

    for (int b = 0; b < m->kb; b++) {
        int32_t acc = 0;
        for (int i = 0; i < TPM_Q8_BLOCK; i++) {
            acc += (int32_t)q[b * TPM_Q8_BLOCK + i] * (int32_t)in->xq[b * TPM_Q8_BLOCK + i];
        }
        s += (float)acc * (tpm_fp16_to_float(d[b]) * in->xd[b]);
    }
    return s;
}

#if QK_X86

#define QK_AVX2_TARGET   __attribute__((target("avx2,fma,f16c")))
#define QK_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")))

QK_AVX2_TARGET static float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s        = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s        = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

QK_AVX2_TARGET static float dot_f32_avx2(const tpm_qmat_t *m, int r, const qk_in_t *in)
{
    const float *w = (const float *)m->w + (size_t)r * (size_t)m->cols;
    const int    C = m->cols;
    __m256       a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int          c = 0;
    float        s;

    for (; c + 16 <= C; c += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + c), _mm256_loadu_ps(in->x + c), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + c + 8), _mm256_loadu_ps(in->x + c + 8), a1);
    }
    s = hsum256(_mm256_add_ps(a0, a1));
    for (; c < C; c++) {
        s += w[c] * in->x[c];
    }
    return s;
}

QK_AVX2_TARGET static __m256 bf16x8_avx2(const uint16_t *p)
{
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

QK_AVX2_TARGET static float dot_bf16_avx2(const tpm_qmat_t *m, int r, const qk_in_t *in)
{
    const uint16_t *w = (const uint16_t *)m->w + (size_t)r * (size_t)m->cols;
    const int       C = m->cols;
    __m256          a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int             c = 0;
    float           s;

    for (; c + 16 <= C; c += 16) {
        a0 = _mm256_fmadd_ps(bf16x8_avx2(w + c), _mm256_loadu_ps(in->x + c), a0);
        a1 = _mm256_fmadd_ps(bf16x8_avx2(w + c + 8), _mm256_loadu_ps(in->x + c + 8), a1);
    }
    s = hsum256(_mm256_add_ps(a0, a1));
    for (; c < C; c++) {
        s += tpm_bf16_to_float(w[c]) * in->x[c];
    }
    return s;
}

QK_AVX2_TARGET static float dot_q8_avx2(const tpm_qmat_t *m, int r, const qk_in_t *in)
{
    const int8_t   *q    = (const int8_t *)m->w + (size_t)r * (size_t)m->kb * TPM_Q8_BLOCK;
    const uint16_t *d    = m->d + (size_t)r * (size_t)m->kb;
    const __m256i   ones = _mm256_set1_epi16(1);
    __m256          acc  = _mm256_setzero_ps();

    for (int b = 0; b < m->kb; b++) {
        const __m256i w  = _mm256_loadu_si256((const __m256i *)(const void *)(q + b * 32));
        const __m256i x  = _mm256_loadu_si256((const __m256i *)(const void *)(in->xq + b * 32));
        /* |w| (unsigned) times sign(w) * x (signed): the products of w * x, pairwise in 16
         * bits (at most 2 * 127 * 127, no saturation), then in 32 bits */
        const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        const __m256  f   = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
        const float   sc  = _cvtsh_ss(d[b]) * in->xd[b];
        acc               = _mm256_fmadd_ps(f, _mm256_set1_ps(sc), acc);
    }
    return hsum256(acc);
}

QK_AVX512_TARGET static float dot_f32_avx512(const tpm_qmat_t *m, int r, const qk_in_t *in)
{
    const float *w = (const float *)m->w + (size_t)r * (size_t)m->cols;
    const int    C = m->cols;
    __m512       a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int          c = 0;

    for (; c + 32 <= C; c += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + c), _mm512_loadu_ps(in->x + c), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + c + 16), _mm512_loadu_ps(in->x + c + 16), a1);
    }
    for (; c < C; c += 16) {
        const __mmask16 k = C - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (C - c)) - 1u);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, w + c), _mm512_maskz_loadu_ps(k, in->x + c),
                             a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

QK_AVX512_TARGET static __m512 bf16x16_avx512(__mmask16 k, const uint16_t *p)
{
    __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

QK_AVX512_TARGET static float dot_bf16_avx512(const tpm_qmat_t *m, int r, const qk_in_t *in)
{
    const uint16_t *w = (const uint16_t *)m->w + (size_t)r * (size_t)m->cols;
    const int       C = m->cols;
    __m512          a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int             c = 0;

    for (; c + 32 <= C; c += 32) {
        a0 = _mm512_fmadd_ps(bf16x16_avx512(0xffff, w + c), _mm512_loadu_ps(in->x + c), a0);
        a1 = _mm512_fmadd_ps(bf16x16_avx512(0xffff, w + c + 16), _mm512_loadu_ps(in->x + c + 16),
                             a1);
    }
    for (; c < C; c += 16) {
        const __mmask16 k = C - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (C - c)) - 1u);
        a0 = _mm512_fmadd_ps(bf16x16_avx512(k, w + c), _mm512_maskz_loadu_ps(k, in->x + c), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

/*
 * 64 codes (two blocks) a step. vpdpbusd multiplies unsigned by signed bytes, so the
 * activations are offset to u = x + 128 (once per input row, qk_in_t.xu) and the offset is
 * taken out again: sum u w = sum x w + 128 sum w, with sum w from a second vpdpbusd on a
 * vector of ones (no mask registers in the loop: a sign-transfer through vpmovb2m measured
 * 4x slower on this Zen 5). Each 32-bit lane sums 4 products, so lanes 0-7 hold block b
 * and lanes 8-15 block b + 1; the per-block scales d_w * d_x of 16 blocks are converted at
 * once and spread to the lanes with one permute.
 */
QK_AVX512_TARGET static float dot_q8_avx512(const tpm_qmat_t *m, int r, const qk_in_t *in)
{
    const int8_t   *q    = (const int8_t *)m->w + (size_t)r * (size_t)m->kb * TPM_Q8_BLOCK;
    const uint16_t *d    = m->d + (size_t)r * (size_t)m->kb;
    const int       kb   = m->kb;
    const __m512i   z    = _mm512_setzero_si512();
    const __m512i   ones = _mm512_set1_epi8(1);
    const __m512i   lo   = _mm512_set1_epi32(0), step = _mm512_set1_epi32(2);
    __m512          a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();

    for (int b0 = 0; b0 < kb; b0 += 16) {
        const int       nb = kb - b0 < 16 ? kb - b0 : 16;
        const __mmask16 km = nb == 16 ? (__mmask16)0xffff : (__mmask16)((1u << nb) - 1u);
        const __m512    sc = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(km, d + b0)),
                                           _mm512_maskz_loadu_ps(km, in->xd + b0));
        /* lanes 0-7 pick scale p, lanes 8-15 scale p + 1 */
        __m512i idx = _mm512_mask_blend_epi32((__mmask16)0xff00, lo, _mm512_set1_epi32(1));
        int     p   = 0;

        for (; p + 2 <= nb; p += 2) {
            const __m512i w  = _mm512_loadu_si512((const void *)(q + (b0 + p) * 32));
            const __m512i u  = _mm512_loadu_si512((const void *)(in->xu + (b0 + p) * 32));
            const __m512i su = _mm512_dpbusd_epi32(z, u, w);
            const __m512i sw = _mm512_dpbusd_epi32(z, ones, w);
            const __m512  f  = _mm512_cvtepi32_ps(_mm512_sub_epi32(su, _mm512_slli_epi32(sw, 7)));
            if ((p & 2) == 0) {
                a0 = _mm512_fmadd_ps(f, _mm512_permutexvar_ps(idx, sc), a0);
            } else {
                a1 = _mm512_fmadd_ps(f, _mm512_permutexvar_ps(idx, sc), a1);
            }
            idx = _mm512_add_epi32(idx, step);
        }
        if (p < nb) {
            /* one block left: the upper half of the codes is zero, so is its sum */
            const __m512i w  = _mm512_zextsi256_si512(
                _mm256_loadu_si256((const __m256i *)(const void *)(q + (b0 + p) * 32)));
            const __m512i u  = _mm512_zextsi256_si512(
                _mm256_loadu_si256((const __m256i *)(const void *)(in->xu + (b0 + p) * 32)));
            const __m512i su = _mm512_dpbusd_epi32(z, u, w);
            const __m512i sw = _mm512_dpbusd_epi32(z, ones, w);
            const __m512  f  = _mm512_cvtepi32_ps(_mm512_sub_epi32(su, _mm512_slli_epi32(sw, 7)));
            a0 = _mm512_fmadd_ps(f, _mm512_permutexvar_ps(idx, sc), a0);
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}


/* row r widened to fp32 (prefill): 16 values a step */
QK_AVX512_TARGET static void widen_avx512(const tpm_qmat_t *m, int r, float *dst)
{
    const int C = m->cols;

    if (m->dt == TPM_WDT_BF16) {
        const uint16_t *w = (const uint16_t *)m->w + (size_t)r * (size_t)C;
        for (int c = 0; c < C; c += 16) {
            const __mmask16 k = C - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (C - c)) - 1u);
            _mm512_mask_storeu_ps(dst + c, k, bf16x16_avx512(k, w + c));
        }
        return;
    }
    {
        const int8_t   *q = (const int8_t *)m->w + (size_t)r * (size_t)m->kb * TPM_Q8_BLOCK;
        const uint16_t *d = m->d + (size_t)r * (size_t)m->kb;
        for (int c = 0; c < C; c += 16) {
            const __mmask16 k = C - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (C - c)) - 1u);
            const __m512    v = _mm512_cvtepi32_ps(
                _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(q + c))));
            const __m512 sc = _mm512_set1_ps(_cvtsh_ss(d[c / TPM_Q8_BLOCK]));
            _mm512_mask_storeu_ps(dst + c, k, _mm512_mul_ps(v, sc));
        }
    }
}

#endif /* QK_X86 */

/* ---- dispatch ---------------------------------------------------------------------------- */

static tpm_qkernel_t qk_active = TPM_QK_AUTO;

static int qk_supported(tpm_qkernel_t k)
{
#if QK_X86
    __builtin_cpu_init();
    switch (k) {
    case TPM_QK_REF: return 1;
    case TPM_QK_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    case TPM_QK_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
               __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
    default: return 0;
    }
#else
    return k == TPM_QK_REF;
#endif
}

static tpm_qkernel_t qk_detect(void)
{
    const char *env = getenv("TPMPI_QKERNEL");

    for (int k = TPM_QK_REF; env != NULL && env[0] != '\0' && k < TPM_QK_N; k++) {
        if (strcmp(env, tpm_qkernel_name((tpm_qkernel_t)k)) == 0 && qk_supported(k)) {
            return (tpm_qkernel_t)k;
        }
    }
    if (env != NULL && env[0] != '\0') {
        tpm_log_warn("TPMPI_QKERNEL=%s: not a kernel family this CPU runs (ref, avx2, "
                     "avx512-vnni); choosing one",
                     env);
    }
    return qk_supported(TPM_QK_AVX512) ? TPM_QK_AVX512
           : qk_supported(TPM_QK_AVX2) ? TPM_QK_AVX2
                                       : TPM_QK_REF;
}

tpm_qkernel_t tpm_qkernel_active(void)
{
    if (qk_active == TPM_QK_AUTO) {
        qk_active = qk_detect();
    }
    return qk_active;
}

tpm_status_t tpm_qkernel_set(tpm_qkernel_t k)
{
    if (k == TPM_QK_AUTO) {
        qk_active = qk_detect();
        return TPM_OK;
    }
    if ((unsigned)k >= TPM_QK_N || !qk_supported(k)) {
        tpm_log_error("qmat: kernel family %s is not supported by this CPU", tpm_qkernel_name(k));
        return TPM_ERR_UNSUPPORTED;
    }
    qk_active = k;
    return TPM_OK;
}

static qk_dot_t qk_dot(tpm_wdtype_t dt)
{
    static const qk_dot_t ref[TPM_WDT_N] = {dot_f32_ref, dot_bf16_ref, dot_q8_ref};
#if QK_X86
    static const qk_dot_t avx2[TPM_WDT_N]   = {dot_f32_avx2, dot_bf16_avx2, dot_q8_avx2};
    static const qk_dot_t avx512[TPM_WDT_N] = {dot_f32_avx512, dot_bf16_avx512, dot_q8_avx512};

    switch (tpm_qkernel_active()) {
    case TPM_QK_AVX512: return avx512[dt];
    case TPM_QK_AVX2: return avx2[dt];
    default: break;
    }
#endif
    return ref[dt];
}

/* ---- products ---------------------------------------------------------------------------- */

/* decode and batched decode: W streamed once, row tiles shared by the threads */
static tpm_status_t qmat_gemv(const tpm_qmat_t *m, float *out, const float *inp,
                              const float *bias, int n_in)
{
    const qk_dot_t dot = qk_dot(m->dt);
    const int      R = m->rows, C = m->cols, kb = m->kb;
    const int      ntile = (R + QK_ROW_TILE - 1) / QK_ROW_TILE;
    qk_in_t        in[TPM_QMAT_GEMV_MAX];
    int8_t        *xq = NULL;
    float         *xd = NULL;
    const size_t   nq = (size_t)n_in * (size_t)kb * TPM_Q8_BLOCK;

    if (m->dt == TPM_WDT_Q8) {
        TPM_CHECK(tpm_malloc(2 * nq, (void **)&xq)); /* codes, then codes + 128 */
        if (tpm_malloc((size_t)n_in * (size_t)kb * sizeof(float), (void **)&xd) != TPM_OK) {
            tpm_free(xq);
            return TPM_ERR_NO_MEMORY;
        }
    }
    for (int n = 0; n < n_in; n++) {
        in[n].x  = inp + (size_t)n * (size_t)C;
        in[n].xq = NULL;
        in[n].xu = NULL;
        in[n].xd = NULL;
        if (xq != NULL) {
            int8_t  *qn = xq + (size_t)n * (size_t)kb * TPM_Q8_BLOCK;
            uint8_t *un = (uint8_t *)(xq + nq) + (size_t)n * (size_t)kb * TPM_Q8_BLOCK;
            float   *dn = xd + (size_t)n * (size_t)kb;
            for (int b = 0; b < kb; b++) {
                const int nv = C - b * TPM_Q8_BLOCK < TPM_Q8_BLOCK ? C - b * TPM_Q8_BLOCK
                                                                   : TPM_Q8_BLOCK;
                dn[b] = q8_block(in[n].x + b * TPM_Q8_BLOCK, nv, qn + b * TPM_Q8_BLOCK);
            }
            for (size_t i = 0; i < (size_t)kb * TPM_Q8_BLOCK; i++) {
                un[i] = (uint8_t)(qn[i] + 128);
            }
            in[n].xq = qn;
            in[n].xu = un;
            in[n].xd = dn;
        }
    }
#pragma omp parallel for schedule(static) if ((size_t)R * (size_t)C >= QK_PAR_MIN)
    for (int t = 0; t < ntile; t++) {
        const int r1 = (t + 1) * QK_ROW_TILE < R ? (t + 1) * QK_ROW_TILE : R;
        for (int n = 0; n < n_in; n++) {
            float *o = out + (size_t)n * (size_t)R;
            for (int r = t * QK_ROW_TILE; r < r1; r++) {
                o[r] = dot(m, r, &in[n]) + (bias != NULL ? bias[r] : 0.0f);
            }
        }
    }
    tpm_free(xq);
    tpm_free(xd);
    return TPM_OK;
}

/* prefill: tiles of W widened to fp32 (in parallel), each one sgemm on BLAS's threads */
static tpm_status_t qmat_gemm(const tpm_qmat_t *m, float *out, const float *inp,
                              const float *bias, int n_in)
{
    const int R = m->rows, C = m->cols;
    int       tile = (int)(QK_GEMM_TILE_BYTES / ((size_t)C * sizeof(float) + 1));
    float    *wt = NULL;
    const int simd = tpm_qkernel_active() == TPM_QK_AVX512;

    (void)simd;
    tile = tile < 16 ? 16 : tile > R ? R : tile;
    if (m->dt != TPM_WDT_F32) {
        TPM_CHECK(tpm_malloc((size_t)tile * (size_t)C * sizeof(float), (void **)&wt));
    }
    for (int r0 = 0; r0 < R; r0 += tile) {
        const int nr = R - r0 < tile ? R - r0 : tile;
        if (m->dt == TPM_WDT_F32) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n_in, nr, C, 1.0f, inp, C,
                        (const float *)m->w + (size_t)r0 * (size_t)C, C, 0.0f, out + r0, R);
            continue;
        }
#pragma omp parallel for schedule(static) if ((size_t)nr * (size_t)C >= QK_PAR_MIN)
        for (int r = 0; r < nr; r++) {
#if QK_X86
            if (simd) {
                widen_avx512(m, r0 + r, wt + (size_t)r * (size_t)C);
                continue;
            }
#endif
            tpm_qmat_row_f32(m, r0 + r, wt + (size_t)r * (size_t)C);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n_in, nr, C, 1.0f, inp, C, wt, C,
                    0.0f, out + r0, R);
    }
    tpm_free(wt);
    if (bias != NULL) {
        for (int n = 0; n < n_in; n++) {
            for (int r = 0; r < R; r++) {
                out[(size_t)n * (size_t)R + r] += bias[r];
            }
        }
    }
    return TPM_OK;
}

tpm_status_t tpm_qmat_matmul(const tpm_qmat_t *m, float *out, const float *inp, const float *bias,
                             int n_in)
{
    if (m == NULL || n_in < 0 || (n_in > 0 && m->rows > 0 && (out == NULL || inp == NULL))) {
        tpm_log_error("qmat matmul: bad arguments");
        return TPM_ERR_INVALID_ARG;
    }
    if (n_in == 0 || m->rows == 0) {
        return TPM_OK;
    }
    if (m->cols == 0) {
        for (int n = 0; n < n_in; n++) {
            for (int r = 0; r < m->rows; r++) {
                out[(size_t)n * (size_t)m->rows + r] = bias != NULL ? bias[r] : 0.0f;
            }
        }
        return TPM_OK;
    }
    return n_in <= TPM_QMAT_GEMV_MAX ? qmat_gemv(m, out, inp, bias, n_in)
                                     : qmat_gemm(m, out, inp, bias, n_in);
}
