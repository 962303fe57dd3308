/* SPDX-License-Identifier: MIT */
/*
 * bench_codec.c: throughput of the CPU reference 2-bit codec (src/backend/backend_twobit.c) for
 * each variant, on one thread by default: encode (with residual update) and decode-add of n values
 * in blocks of B. Each variant is first validated (the decode-of-encode bound of twobit.h on
 * every value: the "wrong" column), then timed. Bytes moved per value, as the research notes
 * count them (read g, read + write the residual, write 2 bits + scales), give an effective
 * memory bandwidth to compare with the machine's and with a device kernel.
 *
 * Usage: bench_codec [-n values] [-b block] [-i iters] [-t threads]
 */
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/mem.h"
#include "base/rng.h"
#include "base/timer.h"
#include "backend/backend_twobit.h"

static const char *const mode_names[] = {"ef-fp32", "ef-bf16", "stochastic"};

/* values that are never off by more than s/2, clipped values excepted (twobit.h) */
static size_t count_wrong(tpm_twobit_mode_t mode, int B, const float *x, const float *dec,
                          const uint8_t *chunk, size_t n)
{
    size_t wrong = 0;

    for (size_t i = 0; i < n; i++) {
        const size_t b = i / (size_t)B;
        const float  s = tpm_bf16_to_float((uint16_t)(chunk[2 * b] | (chunk[2 * b + 1] << 8)));
        const float  d = dec[i];
        if (d != 0.0f && d != s && d != -s) {
            wrong++;
        } else if (mode != TPM_TWOBIT_STOCHASTIC && fabsf(x[i]) <= 1.5f * s &&
                   fabsf(x[i] - d) > 0.5f * s) {
            wrong++;
        } else if (mode == TPM_TWOBIT_STOCHASTIC && fabsf(x[i]) > s) {
            wrong++;
        }
    }
    return wrong;
}

int main(int argc, char **argv)
{
    size_t    n = (size_t)1 << 22;
    int       B = 256, iters = 10, threads = 1, opt;
    float    *g, *dec, *res32;
    uint16_t *res16;
    uint8_t  *chunk;

    while ((opt = getopt(argc, argv, "n:b:i:t:")) != -1) {
        switch (opt) {
        case 'n': n = (size_t)strtoull(optarg, NULL, 10); break;
        case 'b': B = atoi(optarg); break;
        case 'i': iters = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: bench_codec [-n values] [-b block] [-i iters] [-t threads]\n");
            return 2;
        }
    }
    if (!tpm_twobit_block_ok(B) || n == 0 || iters < 1 || threads < 1) {
        fprintf(stderr, "bench_codec: bad arguments\n");
        return 2;
    }
    omp_set_num_threads(threads);
    if (tpm_calloc(n, sizeof(float), (void **)&g) != TPM_OK ||
        tpm_calloc(n, sizeof(float), (void **)&dec) != TPM_OK ||
        tpm_calloc(n, sizeof(float), (void **)&res32) != TPM_OK ||
        tpm_calloc(n, sizeof(uint16_t), (void **)&res16) != TPM_OK ||
        tpm_calloc(tpm_twobit_chunk_bytes(n, B), 1, (void **)&chunk) != TPM_OK) {
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        g[i] = 1e-3f * tpm_rng_normal(1, 0, i);
    }
    printf("# bench_codec n=%zu B=%d threads=%d chunk_bytes=%zu (fp32 %zu: %.2fx)\n", n, B, threads,
           tpm_twobit_chunk_bytes(n, B), n * 4,
           (double)(n * 4) / (double)tpm_twobit_chunk_bytes(n, B));
    printf("%-11s %10s %10s %12s %12s %7s\n", "variant", "enc_ms", "dec_ms", "enc_Gval_s",
           "enc_GB_s", "wrong");
    for (int m = 0; m < 3; m++) {
        const tpm_twobit_mode_t mode = (tpm_twobit_mode_t)m;
        void                   *res  = m == 0 ? (void *)res32 : m == 1 ? (void *)res16 : NULL;
        double                  t0, te, td;
        size_t                  wrong;
        /* bytes per value: g (4), residual read + write (8 or 4 or 0), codes 0.25 */
        const double bpv = 4.0 + (m == 0 ? 8.0 : m == 1 ? 4.0 : 0.0) + 0.25;

        for (size_t i = 0; i < n; i++) {
            res32[i] = 0.0f;
            res16[i] = 0;
            dec[i]   = 0.0f;
        }
        /* validation on the first encode: residual zero, so x = g */
        tpm_twobit_encode(mode, B, g, n, res, 7, 0, 0, chunk);
        tpm_twobit_decode_add(B, chunk, n, dec);
        wrong = count_wrong(mode, B, g, dec, chunk, n);
        t0    = tpm_time_now();
        for (int it = 0; it < iters; it++) {
            tpm_twobit_encode(mode, B, g, n, res, 7, 0, (uint64_t)it * n, chunk);
        }
        te = (tpm_time_now() - t0) / iters;
        t0 = tpm_time_now();
        for (int it = 0; it < iters; it++) {
            tpm_twobit_decode_add(B, chunk, n, dec);
        }
        td = (tpm_time_now() - t0) / iters;
        printf("%-11s %10.3f %10.3f %12.3f %12.2f %7zu\n", mode_names[m], te * 1e3, td * 1e3,
               (double)n / te * 1e-9, bpv * (double)n / te * 1e-9, wrong);
    }
    tpm_free(g);
    tpm_free(dec);
    tpm_free(res32);
    tpm_free(res16);
    tpm_free(chunk);
    return 0;
}
