/* SPDX-License-Identifier: MIT */
/*
 * bench_sgemm.c: the machine's fp32 matmul ceiling, the denominator of the MFU that
 * benchmarks/run reports. Times OpenBLAS cblas_sgemm (row-major, no transposes, C = A B) on
 * square sizes from -b to -e growing by -f, plus the GPT-2 124M MLP shape (M=256 rows of
 * K=768 into N=3072), after validating sampled outputs against a double-precision dot product
 * ("wrong" column, nccl-tests style). Prints the BLAS build and core so the kernel that ran is
 * on record (PLATFORM.md §8): unset OPENBLAS_CORETYPE for the AVX-512 kernels.
 *
 * Usage: bench_sgemm [-b min] [-e max] [-f factor] [-w warmups] [-n iters] [-t threads]
 * Output: one line per size: m n k time_us gflops best_gflops wrong (time_us is the median).
 */
#include <cblas.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/backend_cpu.h"
#include "base/timer.h"

#define MAX_ITERS 1000

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float frand(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

/* Compare 64 sampled entries of C with a double-precision dot product. */
static int count_wrong(const float *A, const float *B, const float *C, int m, int n, int k)
{
    int wrong = 0;

    for (int s = 0; s < 64; s++) {
        int    i   = (int)((unsigned)(s * 7919) % (unsigned)m);
        int    j   = (int)((unsigned)(s * 104729 + 17) % (unsigned)n);
        double ref = 0.0, mag = 0.0;

        for (int p = 0; p < k; p++) {
            ref += (double)A[(size_t)i * k + p] * B[(size_t)p * n + j];
            mag += fabs((double)A[(size_t)i * k + p] * B[(size_t)p * n + j]);
        }
        /* fp32 accumulation error grows with k and the magnitude of the terms */
        if (fabs(C[(size_t)i * n + j] - ref) > 1e-5 * mag + 1e-6) {
            wrong++;
        }
    }
    return wrong;
}

static void bench(int m, int n, int k, int warmups, int iters)
{
    float *A = malloc(sizeof(float) * (size_t)m * k);
    float *B = malloc(sizeof(float) * (size_t)k * n);
    float *C = malloc(sizeof(float) * (size_t)m * n);
    double times[MAX_ITERS], flops = 2.0 * m * n * k;
    int    wrong;

    if (A == NULL || B == NULL || C == NULL) {
        fprintf(stderr, "bench_sgemm: out of memory at %d x %d x %d\n", m, n, k);
        exit(1);
    }
    for (size_t i = 0; i < (size_t)m * k; i++) {
        A[i] = frand();
    }
    for (size_t i = 0; i < (size_t)k * n; i++) {
        B[i] = frand();
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, A, k, B, n, 0.0f, C, n);
    wrong = count_wrong(A, B, C, m, n, k);
    for (int i = 0; i < warmups; i++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, A, k, B, n, 0.0f, C,
                    n);
    }
    for (int i = 0; i < iters; i++) {
        double t0 = tpm_time_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, A, k, B, n, 0.0f, C,
                    n);
        times[i] = tpm_time_now() - t0;
    }
    qsort(times, (size_t)iters, sizeof(double), cmp_double);
    printf("%6d %6d %6d %12.1f %10.1f %11.1f %6d\n", m, n, k, times[iters / 2] * 1e6,
           flops / times[iters / 2] * 1e-9, flops / times[0] * 1e-9, wrong);
    fflush(stdout);
    free(A);
    free(B);
    free(C);
}

static int parse_int(const char *s, int *v)
{
    char *end;
    long  x;

    errno = 0;
    x     = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || x < 1 || x > INT_MAX) {
        return -1;
    }
    *v = (int)x;
    return 0;
}

int main(int argc, char **argv)
{
    int            lo = 256, hi = 2048, factor = 2, warmups = 3, iters = 20, threads = 0, opt;
    int            bad = 0;
    tpm_backend_t *be;

    while ((opt = getopt(argc, argv, "b:e:f:w:n:t:h")) != -1) {
        switch (opt) {
        case 'b': bad |= parse_int(optarg, &lo); break;
        case 'e': bad |= parse_int(optarg, &hi); break;
        case 'f': bad |= parse_int(optarg, &factor); break;
        case 'w': bad |= parse_int(optarg, &warmups); break;
        case 'n': bad |= parse_int(optarg, &iters); break;
        case 't': bad |= parse_int(optarg, &threads); break;
        default:
            fprintf(
                stderr,
                "usage: %s [-b min] [-e max] [-f factor] [-w warmups] [-n iters] [-t threads]\n",
                argv[0]);
            return opt == 'h' ? 0 : 2;
        }
    }
    if (bad || factor < 2 || iters > MAX_ITERS || lo > hi) {
        fprintf(stderr, "bench_sgemm: bad option value (factor >= 2, iters <= %d, min <= max)\n",
                MAX_ITERS);
        return 2;
    }
    /* the backend sets the OpenMP and OpenBLAS thread counts the way tpmpi does */
    if (tpm_backend_create("cpu", threads, &be) != TPM_OK) {
        return 1;
    }
    printf("# bench_sgemm: %d threads\n", be->n_threads);
    printf("# blas: %s\n", tpm_backend_blas_info());
    printf("# OPENBLAS_CORETYPE=%s\n",
           getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "(unset)");
    printf("# %4s %6s %6s %12s %10s %11s %6s\n", "m", "n", "k", "time_us", "gflops", "best_gflops",
           "wrong");
    for (long s = lo; s <= hi; s *= factor) {
        bench((int)s, (int)s, (int)s, warmups, iters);
    }
    bench(256, 3072, 768, warmups, iters); /* GPT-2 124M MLP up-projection, 256 tokens */
    tpm_backend_destroy(be);
    return 0;
}
