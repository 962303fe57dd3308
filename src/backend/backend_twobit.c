/* SPDX-License-Identifier: MIT */
/*
 * backend_twobit.c: CPU reference of the 2-bit codec (rules and byte layout in
 * backend_twobit.h). Blocks are independent, so the block loop is split over OpenMP
 * threads without changing a single output bit; inside a block the order of
 * the scale's sum is the documented sequential one.
 */
#include "backend/backend_twobit.h"

#include <math.h>

#include "base/rng.h"

/* decoded code value; 0b11 is never written and reads as 0 */
static const float twobit_code_value[4] = {0.0f, 1.0f, -1.0f, 0.0f};

size_t tpm_twobit_nblocks(size_t n, int B)
{
    return (n + (size_t)B - 1) / (size_t)B;
}

size_t tpm_twobit_chunk_bytes(size_t n, int B)
{
    size_t nblk = tpm_twobit_nblocks(n, B);

    return (nblk * (2 + (size_t)B / 4) + 3) / 4 * 4;
}

int tpm_twobit_block_ok(int B)
{
    return B >= 4 && B % 4 == 0;
}

static void put_scale(uint8_t *p, uint16_t h)
{
    /* little-endian on every host, so the wire format does not depend on the machine */
    p[0] = (uint8_t)(h & 0xffu);
    p[1] = (uint8_t)(h >> 8);
}

static uint16_t get_scale(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

#define TWOBIT_LANES 32
#define TWOBIT_TILE  256 /* values per pass, a multiple of the lanes: x stays in L1 */

/*
 * The documented sum of |x| over a block uses 32 lanes: lane l adds the values l, l + 32,
 * l + 64, ... in increasing order, then the lanes are folded by halves (16, 8, 4, 2, 1): a
 * warp's shuffle-down reduction on a GPU, 4 AVX2 vectors here. lanes_add() adds a tile of
 * |x| whose first value has an index that is a multiple of 32.
 */
static void lanes_add(float *lane, const float *ax, size_t m)
{
    size_t i = 0;

    for (; i + TWOBIT_LANES <= m; i += TWOBIT_LANES) {
        for (int l = 0; l < TWOBIT_LANES; l++) {
            lane[l] = lane[l] + ax[i + (size_t)l];
        }
    }
    for (int l = 0; i + (size_t)l < m; l++) {
        lane[l] = lane[l] + ax[i + (size_t)l];
    }
}

static float lanes_fold(float *lane)
{
    for (int w = TWOBIT_LANES / 2; w >= 1; w /= 2) {
        for (int l = 0; l < w; l++) {
            lane[l] = lane[l] + lane[l + w];
        }
    }
    return lane[0];
}

/* x = g + r for one tile (the same fp32 add every time it is formed) */
static void tile_x(tpm_twobit_mode_t mode, const float *g, const float *r32, const uint16_t *r16,
                   size_t m, float *x, float *ax)
{
    if (mode == TPM_TWOBIT_EF_FP32) {
        for (size_t i = 0; i < m; i++) {
            x[i] = g[i] + r32[i];
        }
    } else {
        for (size_t i = 0; i < m; i++) {
            x[i] = g[i] + tpm_bf16_to_float(r16[i]);
        }
    }
    for (size_t i = 0; i < m; i++) {
        ax[i] = fabsf(x[i]);
    }
}

/*
 * Codes and new residual of one tile (m values, m a multiple of 4 except at the block's
 * end). Branch-free so that it vectorises: code = on * (1 + neg) gives 0b00, 0b01, 0b10.
 */
static void tile_quantize(tpm_twobit_mode_t mode, const float *x, const float *ax, size_t m,
                          float s, float *r32, uint16_t *r16, uint8_t *codes)
{
    const float t = 0.5f * s;
    uint8_t     code[TWOBIT_TILE];
    float       rnew[TWOBIT_TILE];

#pragma omp simd
    for (size_t i = 0; i < m; i++) {
        const int   on  = ax[i] > t; /* ties at exactly t give 0 */
        const int   neg = x[i] < 0.0f;
        const float c   = (float)on * (neg ? -1.0f : 1.0f);
        code[i]         = (uint8_t)(on * (1 + neg));
        rnew[i]         = x[i] - c * s;
    }
    if (mode == TPM_TWOBIT_EF_FP32) {
        memcpy(r32, rnew, m * sizeof(float));
    } else {
        for (size_t i = 0; i < m; i++) {
            r16[i] = tpm_bf16_rne(rnew[i]);
        }
    }
    for (size_t i = m; i % 4 != 0; i++) {
        code[i] = 0;
    }
    for (size_t k = 0; k < (m + 3) / 4; k++) {
        codes[k] = (uint8_t)(code[4 * k] | code[4 * k + 1] << 2 | code[4 * k + 2] << 4 |
                             code[4 * k + 3] << 6);
    }
}

/*
 * One block of the error-feedback variant (m <= B real values, the rest padding, which is 0
 * and adds nothing to any lane); returns the scale's bf16 bits. Exactly one of r32 / r16 is
 * used, as the mode says.
 */
static uint16_t encode_block_ef(tpm_twobit_mode_t mode, int B, const float *g, size_t m, float *r32,
                                uint16_t *r16, uint8_t *codes)
{
    float    lane[TWOBIT_LANES] = {0};
    float    x[TWOBIT_TILE], ax[TWOBIT_TILE];
    float    s;
    uint16_t sh;

    for (size_t i = 0; i < m; i += TWOBIT_TILE) {
        const size_t tm = m - i < TWOBIT_TILE ? m - i : TWOBIT_TILE;
        tile_x(mode, g + i, r32 != NULL ? r32 + i : NULL, r16 != NULL ? r16 + i : NULL, tm, x, ax);
        lanes_add(lane, ax, tm);
    }
    sh = tpm_bf16_rne(lanes_fold(lane) / (float)B);
    s  = tpm_bf16_to_float(sh);
    for (size_t i = 0; i < m; i += TWOBIT_TILE) {
        const size_t tm = m - i < TWOBIT_TILE ? m - i : TWOBIT_TILE;
        if (m > TWOBIT_TILE) { /* x of this tile was overwritten by the later ones */
            tile_x(mode, g + i, r32 != NULL ? r32 + i : NULL, r16 != NULL ? r16 + i : NULL, tm, x,
                   ax);
        }
        tile_quantize(mode, x, ax, tm, s, r32 != NULL ? r32 + i : NULL,
                      r16 != NULL ? r16 + i : NULL, codes + i / 4);
    }
    return sh;
}

/* one block of the stochastic variant; index0 is the RNG index of the block's first value */
static uint16_t encode_block_stoch(const float *g, size_t m, uint64_t key, uint64_t stream,
                                   uint64_t index0, uint8_t *codes)
{
    float    mx = 0.0f, s;
    uint16_t sh;
    double   k[TWOBIT_TILE];
    uint8_t  code[TWOBIT_TILE];

    for (size_t i = 0; i < m; i++) {
        const float a = fabsf(g[i]);
        if (a > mx || a != a) { /* a NaN sticks: the block's scale becomes NaN */
            mx = a;
        }
    }
    sh = tpm_bf16_up(mx);
    s  = tpm_bf16_to_float(sh);
    for (size_t i0 = 0; i0 < m; i0 += TWOBIT_TILE) {
        const size_t tm = m - i0 < TWOBIT_TILE ? m - i0 : TWOBIT_TILE;
        for (size_t i = 0; i < tm; i++) {
            k[i] = (double)(tpm_rng_u64(key, stream, index0 + i0 + i) >> 40);
        }
        /* branch-free (the outcome is random): both products are exact in binary64, so
         * P(nonzero) = ceil(2^24 |g| / s) / 2^24 */
#pragma omp simd
        for (size_t i = 0; i < tm; i++) {
            const float x  = g[i0 + i];
            const int   on = k[i] * (double)s < (double)fabsf(x) * 16777216.0;
            code[i]        = (uint8_t)(on * (1 + (x < 0.0f)));
        }
        for (size_t i = tm; i % 4 != 0; i++) {
            code[i] = 0;
        }
        for (size_t q = 0; q < (tm + 3) / 4; q++) {
            codes[i0 / 4 + q] = (uint8_t)(code[4 * q] | code[4 * q + 1] << 2 |
                                          code[4 * q + 2] << 4 | code[4 * q + 3] << 6);
        }
    }
    return sh;
}

void tpm_twobit_encode(tpm_twobit_mode_t mode, int B, const float *g, size_t n, void *residual,
                       uint64_t key, uint64_t stream, uint64_t index0, uint8_t *chunk)
{
    const size_t nblk  = tpm_twobit_nblocks(n, B);
    const size_t cb    = (size_t)B / 4;
    const size_t used  = nblk * (2 + cb);
    uint8_t     *codes = chunk + 2 * nblk;

    memset(chunk + used, 0, tpm_twobit_chunk_bytes(n, B) - used);
#pragma omp parallel for schedule(static) if (nblk >= 64)
    for (size_t b = 0; b < nblk; b++) {
        const size_t i0     = b * (size_t)B;
        const size_t m      = n - i0 < (size_t)B ? n - i0 : (size_t)B;
        uint8_t     *cbytes = codes + b * cb;
        uint16_t     sh;

        memset(cbytes, 0, cb);
        if (mode == TPM_TWOBIT_STOCHASTIC) {
            sh = encode_block_stoch(g + i0, m, key, stream, index0 + i0, cbytes);
        } else if (mode == TPM_TWOBIT_EF_FP32) {
            sh = encode_block_ef(mode, B, g + i0, m, (float *)residual + i0, NULL, cbytes);
        } else {
            sh = encode_block_ef(mode, B, g + i0, m, NULL, (uint16_t *)residual + i0, cbytes);
        }
        put_scale(chunk + 2 * b, sh);
    }
}

void tpm_twobit_decode_add(int B, const uint8_t *chunk, size_t n, float *acc)
{
    const size_t   nblk  = tpm_twobit_nblocks(n, B);
    const size_t   cb    = (size_t)B / 4;
    const uint8_t *codes = chunk + 2 * nblk;

#pragma omp parallel for schedule(static) if (nblk >= 64)
    for (size_t b = 0; b < nblk; b++) {
        const size_t   i0     = b * (size_t)B;
        const size_t   m      = n - i0 < (size_t)B ? n - i0 : (size_t)B;
        const float    s      = tpm_bf16_to_float(get_scale(chunk + 2 * b));
        const uint8_t *cbytes = codes + b * cb;
        float         *out    = acc + i0;

        for (size_t i = 0; i < m; i++) {
            const unsigned code = (cbytes[i / 4] >> (2 * (i % 4))) & 3u;
            /* c * s is exact (c in {-1, 0, 1}); 0 * NaN keeps a broken block visible */
            out[i] = out[i] + twobit_code_value[code] * s;
        }
    }
}
