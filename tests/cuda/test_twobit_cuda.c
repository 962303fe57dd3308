/* SPDX-License-Identifier: MIT */
/*
 * test_twobit_cuda.c: the device 2-bit codec (kernels/twobit.cu) against the CPU reference
 * (src/backend/backend_twobit.c), byte for byte: encoded chunks, error-feedback residuals (fp32
 * and bf16) and decoded sums, for the three modes, several block sizes and lengths, and
 * inputs built to hit the rules' edges (ties at exactly s/2, zeros of both signs,
 * subnormals, values far above the scale, NaN and Inf). Exit 77 (automake SKIP) without a
 * CUDA device, 1 on any mismatch.
 *
 * Usage: test_twobit_cuda [--bench [N]]
 *   --bench  also time encode and decode_add on N values (default 64 Mi) per mode and
 *            print the throughput (input values per second and GB/s of fp32 gradient).
 */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/backend_cuda.h"
#include "base/log.h"
#include "base/timer.h"
#include "backend/backend_twobit.h"
#include "kernels/kernels.h"

#define SKIP 77

static tpm_backend_t *gpu;
static void          *stream;
static int            n_pass, n_fail;

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static uint64_t next_u64(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static float frand(void)
{
    return (float)((double)(next_u64() >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

static void die(const char *what)
{
    fprintf(stderr, "test_twobit_cuda: %s\n", what);
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = calloc(n ? n : 1, 1);

    if (p == NULL) {
        die("out of host memory");
    }
    return p;
}

static void *dev(size_t nbytes)
{
    void *p = NULL;

    if (gpu->ops->alloc(gpu, nbytes, &p) != TPM_OK) {
        die("device allocation failed");
    }
    return p;
}

static void h2d(void *d, const void *h, size_t n)
{
    if (n > 0 && gpu->ops->copy(gpu, d, h, n, TPM_COPY_H2D) != TPM_OK) {
        die("host-to-device copy failed");
    }
}

static void d2h(void *h, const void *d, size_t n)
{
    if (n > 0 && gpu->ops->copy(gpu, h, d, n, TPM_COPY_D2H) != TPM_OK) {
        die("device-to-host copy failed");
    }
}

static void ok(int cond, const char *what, int mode, int B, size_t n)
{
    printf("%s %d - %-28s mode=%d B=%-4d n=%zu\n", cond ? "ok" : "not ok", n_pass + n_fail + 1,
           what, mode, B, n);
    if (cond) {
        n_pass++;
    } else {
        n_fail++;
    }
}

/* gradients with the awkward cases mixed in; kind 0 random, 1 ties, 2 specials */
static void fill(float *g, size_t n, int B, int kind)
{
    for (size_t i = 0; i < n; i++) {
        g[i] = frand() * (i % 17 == 0 ? 40.0f : 1.0f);
    }
    if (kind == 1) {
        /*
         * Per 4 values |x| = 1, 0.5, 1.25, 1.25: a full block sums to B, so s = 1 and
         * t = 0.5, and every second value is exactly at the threshold (a tie: code 0).
         */
        static const float mag[4] = {1.0f, 0.5f, 1.25f, 1.25f};
        for (size_t i = 0; i < n; i++) {
            g[i] = (i / 4 % 2 ? -1.0f : 1.0f) * mag[(i % (size_t)B) % 4];
        }
    } else if (kind == 2) {
        const float sp[] = {0.0f, -0.0f, 1e-40f, -1e-41f, 3e38f, -3e38f, NAN, INFINITY, -INFINITY};
        for (size_t i = 0; i < n; i += 13) {
            g[i] = sp[(i / 13) % (sizeof(sp) / sizeof(sp[0]))];
        }
    }
}

static void check_case(int mode, int B, size_t n, int kind)
{
    const size_t   cb    = tpm_twobit_chunk_bytes(n, B);
    const size_t   esize = mode == TPM_TWOBIT_EF_FP32 ? sizeof(float) : sizeof(uint16_t);
    const int      ef    = mode != TPM_TWOBIT_STOCHASTIC;
    float         *g = xmalloc(n * sizeof(float)), *acc = xmalloc(n * sizeof(float));
    float         *acc_g = xmalloc(n * sizeof(float));
    uint8_t       *res = xmalloc(n * esize), *res_g = xmalloc(n * esize);
    uint8_t       *ch = xmalloc(cb), *ch_g = xmalloc(cb);
    float         *g_d = dev(n * sizeof(float)), *acc_d = dev(n * sizeof(float));
    void          *res_d = dev(n * esize);
    uint8_t       *ch_d  = dev(cb);
    const uint64_t key = next_u64(), strm = 7, index0 = 1000;

    fill(g, n, B, kind);
    for (size_t i = 0; i < n; i++) {
        /* the ties need x = g exactly: no starting residual then */
        const float r = kind == 1 ? 0.0f : 0.05f * frand();
        acc[i]        = frand();
        if (mode == TPM_TWOBIT_EF_FP32) {
            ((float *)res)[i] = r;
        } else {
            ((uint16_t *)res)[i] = tpm_bf16_rne(r);
        }
    }
    h2d(g_d, g, n * sizeof(float));
    h2d(res_d, res, n * esize);
    h2d(acc_d, acc, n * sizeof(float));
    memset(ch_g, 0xa5, cb); /* every byte must be written */
    h2d(ch_d, ch_g, cb);

    /* two rounds: the second starts from the residual the first left */
    for (int round = 0; round < 2; round++) {
        tpm_twobit_encode((tpm_twobit_mode_t)mode, B, g, n, ef ? (void *)res : NULL, key, strm,
                          index0, ch);
        if (tpm_cuda_twobit_encode(mode, B, g_d, n, ef ? res_d : NULL, key, strm, index0, ch_d,
                                   stream) != TPM_OK) {
            die("tpm_cuda_twobit_encode failed");
        }
        d2h(ch_g, ch_d, cb);
        ok(memcmp(ch, ch_g, cb) == 0, round ? "chunk bytes, round 2" : "chunk bytes", mode, B, n);
        if (ef) {
            d2h(res_g, res_d, n * esize);
            ok(memcmp(res, res_g, n * esize) == 0, "residual bits", mode, B, n);
        }
    }
    tpm_twobit_decode_add(B, ch, n, acc);
    if (tpm_cuda_twobit_decode_add(B, ch_d, n, acc_d, stream) != TPM_OK) {
        die("tpm_cuda_twobit_decode_add failed");
    }
    d2h(acc_g, acc_d, n * sizeof(float));
    ok(memcmp(acc, acc_g, n * sizeof(float)) == 0, "decode_add bits", mode, B, n);

    free(g);
    free(acc);
    free(acc_g);
    free(res);
    free(res_g);
    free(ch);
    free(ch_g);
    gpu->ops->free(gpu, g_d);
    gpu->ops->free(gpu, acc_d);
    gpu->ops->free(gpu, res_d);
    gpu->ops->free(gpu, ch_d);
}

static void bench(size_t n)
{
    const int B = 256, reps = 10;
    float    *g_d = dev(n * sizeof(float)), *acc_d = dev(n * sizeof(float));
    float    *h     = xmalloc(n * sizeof(float));
    void     *res_d = dev(n * sizeof(float));
    uint8_t  *ch_d  = dev(tpm_twobit_chunk_bytes(n, B));

    for (size_t i = 0; i < n; i++) {
        h[i] = frand();
    }
    h2d(g_d, h, n * sizeof(float));
    gpu->ops->memzero(gpu, res_d, n * sizeof(float));
    gpu->ops->memzero(gpu, acc_d, n * sizeof(float));
    for (int mode = 0; mode < 3; mode++) {
        double t0, te, td;
        void  *r = mode == TPM_TWOBIT_STOCHASTIC ? NULL : res_d;

        /* warm-up, then timed repetitions */
        tpm_cuda_twobit_encode(mode, B, g_d, n, r, 1, 2, 0, ch_d, stream);
        gpu->ops->sync(gpu);
        t0 = tpm_time_now();
        for (int k = 0; k < reps; k++) {
            tpm_cuda_twobit_encode(mode, B, g_d, n, r, 1, 2, 0, ch_d, stream);
        }
        gpu->ops->sync(gpu);
        te = (tpm_time_now() - t0) / reps;
        t0 = tpm_time_now();
        for (int k = 0; k < reps; k++) {
            tpm_cuda_twobit_decode_add(B, ch_d, n, acc_d, stream);
        }
        gpu->ops->sync(gpu);
        td = (tpm_time_now() - t0) / reps;
        printf("# bench twobit mode=%d B=%d n=%zu encode %.3f ms (%.1f Gvalues/s, %.0f GB/s of "
               "fp32 input) decode_add %.3f ms (%.1f Gvalues/s)\n",
               mode, B, n, te * 1e3, (double)n / te * 1e-9, (double)n * 4.0 / te * 1e-9, td * 1e3,
               (double)n / td * 1e-9);
    }
    free(h);
    gpu->ops->free(gpu, g_d);
    gpu->ops->free(gpu, acc_d);
    gpu->ops->free(gpu, res_d);
    gpu->ops->free(gpu, ch_d);
}

int main(int argc, char **argv)
{
    const int    blocks[] = {4, 12, 256};
    const size_t lens[]   = {1, 5, 1000, 4097, 100003};
    size_t       bench_n  = 0;
    int          ndev     = 0;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--bench") == 0) {
            bench_n = (size_t)64 << 20;
            if (i + 1 < argc && argv[i + 1][0] != '-') {
                bench_n = strtoull(argv[++i], NULL, 10);
            }
        } else {
            fprintf(stderr, "usage: %s [--bench [N]]\n", argv[0]);
            return 2;
        }
    }
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        printf("1..0 # SKIP no CUDA device: %s\n", cudaGetErrorString(cudaGetLastError()));
        return SKIP;
    }
    tpm_log_set_level(TPM_LOG_WARN);
    if (tpm_backend_create("cuda", 0, &gpu) != TPM_OK ||
        tpm_cuda_proc_acquire(-1, &stream) != TPM_OK) {
        die("cannot create the cuda backend");
    }
    for (int mode = 0; mode < 3; mode++) {
        for (size_t b = 0; b < sizeof(blocks) / sizeof(blocks[0]); b++) {
            for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
                for (int kind = 0; kind < 3; kind++) {
                    check_case(mode, blocks[b], lens[l], kind);
                }
            }
        }
    }
    if (bench_n > 0) {
        bench(bench_n);
    }
    printf("1..%d\n# %d passed, %d failed\n", n_pass + n_fail, n_pass, n_fail);
    tpm_cuda_proc_release();
    tpm_backend_destroy(gpu);
    return n_fail == 0 ? 0 : 1;
}
