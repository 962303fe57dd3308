/* SPDX-License-Identifier: MIT */
/*
 * bench_qgemv.c: the serving matrix products of one decode token (and of a prefill chunk)
 * at a model's shapes, for fp32, bf16 and int8 weights (src/backend/backend_cpu_quant.c),
 * against the memory-bandwidth bound measured in the same run and against OpenBLAS's
 * sgemv/sgemm on the same fp32 weights (the path serving uses today).
 *
 * One "token" is every linear layer of the model once: per block qkv (3C x C), attention
 * projection (C x C), MLP up (4C x C) and down (C x 4C), then the tied head (Vp x C). The
 * bound is bytes of weights read per token / read bandwidth, where read bandwidth is a
 * plain streaming sum over a buffer of the same size as the fp32 weights (so the caches
 * hold no more of it than of the weights), on the same threads.
 *
 * Every product is validated against the fp32 sgemv result first (relative L2 error,
 * printed), then timed after warm-up as the median of repeated tokens.
 *
 * Usage: bench_qgemv [-L layers] [-C embd] [-V vocab] [-t threads] [-n tokens] [-p prefill]
 *        defaults: gpt2-124m (L12 C768 V50257), 1 thread, 20 tokens, prefill 64 rows
 */
#include <cblas.h>
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend_cpu_quant.h"
#include "base/timer.h"
#include "bw_probe.h"

typedef struct {
    int rows, cols;
} shape_t;

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static float frand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* streaming read bandwidth in bytes/s: the median of `reps` passes over buf (n floats) */
static double read_bandwidth(const float *buf, size_t n, int reps)
{
    double t[32], sink = 0.0;

    n    = n / 4096 * 4096;
    reps = reps > 32 ? 32 : reps;
    for (int k = 0; k < reps; k++) {
        double t0 = tpm_time_now(), s = bw_pass(buf, n);
        t[k]      = tpm_time_now() - t0;
        sink += s;
    }
    if (sink == 12345.678) {
        printf("#\n"); /* keep the sums alive */
    }
    return (double)n * sizeof(float) / median(t, reps);
}

int main(int argc, char **argv)
{
    int        L = 12, C = 768, V = 50257, threads = 1, tokens = 20, prefill = 64, opt;
    shape_t    sh[4 * 64 + 1];
    int        ns = 0;
    size_t     wmax = 0, wtotal = 0, rmax = 0;
    float    **w, *x, *y, *yref, *xp, *yp;
    tpm_qmat_t *q[TPM_WDT_N];
    double     bw, t_ref = 0.0, t_ref_pf = 0.0;

    while ((opt = getopt(argc, argv, "L:C:V:t:n:p:")) != -1) {
        switch (opt) {
        case 'L': L = atoi(optarg); break;
        case 'C': C = atoi(optarg); break;
        case 'V': V = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'n': tokens = atoi(optarg); break;
        case 'p': prefill = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: bench_qgemv [-L layers] [-C embd] [-V vocab] [-t threads] "
                            "[-n tokens] [-p prefill]\n");
            return 2;
        }
    }
    if (L < 1 || L > 64 || C < 32 || V < 1 || threads < 1 || tokens < 3 || tokens > 200 ||
        prefill < TPM_QMAT_GEMV_MAX + 1) {
        fprintf(stderr, "bench_qgemv: bad arguments (1 <= L <= 64, C >= 32, 3 <= n <= 200, "
                        "p > %d)\n",
                TPM_QMAT_GEMV_MAX);
        return 2;
    }
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);
    for (int l = 0; l < L; l++) {
        sh[ns++] = (shape_t){3 * C, C};
        sh[ns++] = (shape_t){C, C};
        sh[ns++] = (shape_t){4 * C, C};
        sh[ns++] = (shape_t){C, 4 * C};
    }
    sh[ns++] = (shape_t){(V + 127) / 128 * 128, C};
    w        = calloc((size_t)ns, sizeof(*w));
    for (int i = 0; i < ns; i++) {
        const size_t n = (size_t)sh[i].rows * (size_t)sh[i].cols;
        w[i]           = malloc(n * sizeof(float));
        for (size_t j = 0; j < n; j++) {
            w[i][j] = 0.05f * frand();
        }
        wtotal += n;
        wmax = n > wmax ? n : wmax;
        rmax = (size_t)sh[i].rows > rmax ? (size_t)sh[i].rows : rmax;
    }
    x    = malloc(4 * (size_t)C * sizeof(float));
    y    = malloc(rmax * sizeof(float));
    yref = malloc(rmax * sizeof(float));
    xp   = malloc((size_t)prefill * 4 * (size_t)C * sizeof(float));
    yp   = malloc((size_t)prefill * rmax * sizeof(float));
    for (int i = 0; i < 4 * C; i++) {
        x[i] = frand();
    }
    for (size_t i = 0; i < (size_t)prefill * 4 * (size_t)C; i++) {
        xp[i] = frand();
    }
    for (int dt = 0; dt < TPM_WDT_N; dt++) {
        q[dt] = calloc((size_t)ns, sizeof(tpm_qmat_t));
        for (int i = 0; i < ns; i++) {
            if (tpm_qmat_create(&q[dt][i], (tpm_wdtype_t)dt, w[i], sh[i].rows, sh[i].cols, 0) !=
                TPM_OK) {
                return 1;
            }
        }
    }
    {
        /* the bandwidth probe reads as many bytes as the fp32 weights, from a new buffer */
        float *probe = malloc(wtotal * sizeof(float));
        memset(probe, 1, wtotal * sizeof(float));
        bw = read_bandwidth(probe, wtotal, 9);
        free(probe);
    }
    printf("# bench_qgemv: L%d C%d V%d (%d linear layers, %.1f M weights), %d thread(s), "
           "kernel %s\n",
           L, C, V, ns, (double)wtotal / 1e6, threads, tpm_qkernel_name(tpm_qkernel_active()));
    printf("# read bandwidth (streaming sum over %.0f MB): %.2f GB/s\n",
           (double)wtotal * 4 / 1e6, bw / 1e9);
    printf("%-14s %10s %9s %9s %9s %8s %9s %10s %9s\n", "weights", "MB/token", "ms/token",
           "tok/s", "bound", "of_bound", "vs_sgemv", "rel_err", "pf_tok/s");

    for (int path = -1; path < TPM_WDT_N; path++) {
        double t[200], err = 0.0, nrm = 0.0, bytes = 0.0, tpf[5];
        for (int i = 0; i < ns; i++) {
            bytes += path < 0 ? (double)sh[i].rows * sh[i].cols * 4.0 : (double)q[path][i].bytes;
        }
        /* validation against sgemv, on every layer */
        for (int i = 0; i < ns; i++) {
            cblas_sgemv(CblasRowMajor, CblasNoTrans, sh[i].rows, sh[i].cols, 1.0f, w[i],
                        sh[i].cols, x, 1, 0.0f, yref, 1);
            if (path < 0) {
                continue;
            }
            tpm_qmat_matmul(&q[path][i], y, x, NULL, 1);
            for (int r = 0; r < sh[i].rows; r++) {
                err += ((double)y[r] - yref[r]) * ((double)y[r] - yref[r]);
                nrm += (double)yref[r] * yref[r];
            }
        }
        for (int k = 0; k < tokens + 2; k++) {
            double t0 = tpm_time_now();
            for (int i = 0; i < ns; i++) {
                if (path < 0) {
                    cblas_sgemv(CblasRowMajor, CblasNoTrans, sh[i].rows, sh[i].cols, 1.0f, w[i],
                                sh[i].cols, x, 1, 0.0f, y, 1);
                } else {
                    tpm_qmat_matmul(&q[path][i], y, x, NULL, 1);
                }
            }
            if (k >= 2) {
                t[k - 2] = tpm_time_now() - t0;
            }
        }
        /* prefill: the same layers on `prefill` rows at once */
        for (int k = 0; k < 5; k++) {
            double t0 = tpm_time_now();
            for (int i = 0; i < ns; i++) {
                if (path < 0) {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, prefill, sh[i].rows,
                                sh[i].cols, 1.0f, xp, sh[i].cols, w[i], sh[i].cols, 0.0f, yp,
                                sh[i].rows);
                } else {
                    tpm_qmat_matmul(&q[path][i], yp, xp, NULL, prefill);
                }
            }
            tpf[k] = tpm_time_now() - t0;
        }
        {
            const double tm = median(t, tokens), tp = median(tpf, 5), bound = bytes / bw;
            if (path < 0) {
                t_ref    = tm;
                t_ref_pf = tp;
            }
            printf("%-14s %10.1f %9.2f %9.1f %8.2fms %7.0f%% %8.2fx %10.2e %9.0f\n",
                   path < 0 ? "fp32-sgemv" : tpm_wdtype_name((tpm_wdtype_t)path), bytes / 1e6,
                   tm * 1e3, 1.0 / tm, bound * 1e3, 100.0 * bound / tm, t_ref / tm,
                   path < 0 ? 0.0 : sqrt(err / nrm), prefill / tp);
            if (path >= 0) {
                printf("#   prefill %s vs sgemm: %.2fx\n", tpm_wdtype_name((tpm_wdtype_t)path),
                       t_ref_pf / tp);
            }
        }
    }
    for (int dt = 0; dt < TPM_WDT_N; dt++) {
        for (int i = 0; i < ns; i++) {
            tpm_qmat_destroy(&q[dt][i]);
        }
        free(q[dt]);
    }
    for (int i = 0; i < ns; i++) {
        free(w[i]);
    }
    free(w);
    free(x);
    free(y);
    free(yref);
    free(xp);
    free(yp);
    return 0;
}
