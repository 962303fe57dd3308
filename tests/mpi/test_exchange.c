/* SPDX-License-Identifier: MIT */
/*
 * test_exchange.c: the gradient exchange (src/compress/exchange.c) under mpirun, any rank
 * count. Every rank's gradients come from the counter RNG keyed by (rank, round, group), so
 * each rank can recompute every other rank's contribution and check its own result exactly:
 *  - compression off: the exchange equals the plain fp32 reduce-scatter bit for bit
 *    (blocking and non-blocking);
 *  - compression on (each variant, several rounds so the residual matters): the owner's sum
 *    equals the rank-order fp32 sum of the dequantized contributions of all ranks bit for bit;
 *  - the byte counters: (N-1) chunks per all-to-all, and at least 15x fewer gradient bytes
 *    than the fp32 reduce-scatter, scales and padding included.
 * Rank 0 prints "N passed, N failed"; exit 1 on failure.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "base/rng.h"
#include "comm/comm.h"
#include "mpi_check.h"
#include "compress/exchange.h"

/* the exchange's codec and buffers live in a backend: the CPU one here */
static tpm_backend_t *g_be;

#define N_GROUPS 4
#define ROUNDS   3

/* chunk sizes (values per owner): not multiples of the block, one shorter than a block */
static const size_t chunk_n[N_GROUPS] = {1000, 37, 20000, 1};

/* rank r's gradient of group g in round k, owner-major (N * chunk_n[g] values) */
static void fill(float *buf, int r, int k, int g, int N)
{
    const size_t n = (size_t)N * chunk_n[g];

    for (size_t i = 0; i < n; i++) {
        float z = tpm_rng_normal(12345, (uint64_t)(r * 1000 + k * 10 + g), i);
        buf[i]  = (i % 53 == 0 ? 20.0f : 1.0f) * 1e-3f * z;
    }
}

static int bitwise_equal(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, n * sizeof(float)) == 0;
}

static void test_off(tpm_comm_t *c, float *grad, float *got, float *want)
{
    const int           N = c->size;
    tpm_compress_opts_t off;
    tpm_exchange_t     *x;
    int                 ok = 1;

    memset(&off, 0, sizeof(off));
    if (tpm_exchange_create(g_be, c, &off, N_GROUPS, chunk_n, &x) != TPM_OK) {
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (int nb = 0; nb < 2; nb++) {
        for (int g = 0; g < N_GROUPS; g++) {
            tpm_comm_req_t req;
            memset(&req, 0, sizeof(req));
            fill(grad, c->rank, 0, g, N);
            tpm_comm_reduce_scatter(c, grad, want, chunk_n[g], TPM_DT_FLOAT, TPM_RED_SUM, NULL);
            tpm_exchange_start(x, g, grad, 0, 0, got, nb ? &req : NULL);
            tpm_exchange_finish(x, nb ? &req : NULL, got);
            ok &= bitwise_equal(got, want, chunk_n[g]);
        }
        mc_check_all(
            ok, nb ? "compression off, non-blocking: equals the plain reduce-scatter bit for bit"
                   : "compression off, blocking: equals the plain reduce-scatter bit for bit");
    }
    mc_check_all(x->stats.calls_2bit == 0 && x->stats.bytes_2bit == 0 && x->stats.calls_fp32 == 8,
                 "compression off sends no all-to-all");
    tpm_exchange_destroy(x);
}

static void test_on(tpm_comm_t *c, tpm_twobit_mode_t mode, int B, float *grad, float *got,
                    float *want)
{
    static const char  *names[] = {"ef-fp32", "ef-bf16", "stochastic"};
    const int           N = c->size, me = c->rank;
    tpm_compress_opts_t on;
    tpm_exchange_t     *x;
    void               *res[64]; /* simulated residual of every rank (same layout as x's) */
    uint8_t            *chunk;
    size_t              res_n = 0, esize = mode == TPM_TWOBIT_EF_FP32 ? 4 : 2;
    uint64_t            expect_bytes = 0, big_fp32 = 0, big_2bit = 0;
    int                 ok = 1, ok_bound = 1;
    char                what[160];

    memset(&on, 0, sizeof(on));
    on.enabled = 1;
    on.mode    = mode;
    on.block   = B;
    on.seed    = 42;
    if (N > 64 || tpm_exchange_create(g_be, c, &on, N_GROUPS, chunk_n, &x) != TPM_OK) {
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (int g = 0; g < N_GROUPS; g++) {
        res_n += (size_t)N * chunk_n[g];
    }
    for (int r = 0; r < N; r++) {
        res[r] = mode == TPM_TWOBIT_STOCHASTIC ? NULL : calloc(res_n, esize);
    }
    chunk = malloc(tpm_twobit_chunk_bytes(chunk_n[2], 4));
    for (int k = 0; k < ROUNDS; k++) {
        for (int g = 0; g < N_GROUPS; g++) {
            const size_t   n = chunk_n[g];
            tpm_comm_req_t req;
            float          smax = 0.0f;
            memset(&req, 0, sizeof(req));
            /* the real exchange: this rank's gradients, non-blocking in odd rounds */
            fill(grad, me, k, g, N);
            tpm_exchange_start(x, g, grad, 1, tpm_compress_key(42, k, 0, me), got,
                               k % 2 ? &req : NULL);
            tpm_exchange_finish(x, k % 2 ? &req : NULL, got);
            /* the reference: every rank's chunk for owner `me`, encoded here, summed in order */
            memset(want, 0, n * sizeof(float));
            for (int r = 0; r < N; r++) {
                size_t   goff = 0;
                uint8_t *rr;
                for (int h = 0; h < g; h++) {
                    goff += (size_t)N * chunk_n[h];
                }
                fill(grad, r, k, g, N);
                /* rank r encodes all its owners' chunks: its residual advances for each */
                for (int j = 0; j < N; j++) {
                    rr = res[r] != NULL ? (uint8_t *)res[r] + (goff + (size_t)j * n) * esize : NULL;
                    tpm_twobit_encode(mode, B, grad + (size_t)j * n, n, rr,
                                      tpm_compress_key(42, k, 0, r), (uint64_t)g, (size_t)j * n,
                                      chunk);
                    if (j == me) {
                        tpm_twobit_decode_add(B, chunk, n, want);
                    }
                }
                for (size_t i = 0; i < n; i++) {
                    float a = fabsf(grad[(size_t)me * n + i]);
                    smax    = a > smax ? a : smax;
                }
            }
            ok &= bitwise_equal(got, want, n);
            /* sanity: every result is finite and not absurdly far from the true scale */
            for (size_t i = 0; i < n; i++) {
                ok_bound &= isfinite(got[i]) && fabsf(got[i]) <= 64.0f * (float)N * smax + 1e-6f;
            }
            expect_bytes += (uint64_t)(N - 1) * tpm_twobit_chunk_bytes(n, B);
            if (g == 2) { /* the one chunk much larger than a block: padding is negligible */
                big_2bit += (uint64_t)(N - 1) * tpm_twobit_chunk_bytes(n, B);
                big_fp32 += (uint64_t)(N - 1) * n * sizeof(float);
            }
        }
    }
    snprintf(what, sizeof(what),
             "%s B=%d: owner's sum equals the rank-order sum of dequantized contributions",
             names[mode], B);
    mc_check_all(ok, what);
    snprintf(what, sizeof(what), "%s B=%d: decoded sums are finite and bounded", names[mode], B);
    mc_check_all(ok_bound, what);
    snprintf(what, sizeof(what), "%s B=%d: all-to-all bytes counted as (N-1) chunks", names[mode],
             B);
    mc_check_all(x->stats.bytes_2bit == expect_bytes && x->stats.calls_2bit == ROUNDS * N_GROUPS,
                 what);
    if (B == 256) {
        /* small chunks pay for their padded last block; the model test checks real sizes */
        double ratio = (double)big_fp32 / (double)big_2bit;
        if (me == 0) {
            printf("%s B=%d, %zu-value chunks: fp32 reduce-scatter would send %llu bytes, "
                   "2-bit sent %llu (%.2fx less)\n",
                   names[mode], B, chunk_n[2], (unsigned long long)big_fp32,
                   (unsigned long long)big_2bit, ratio);
        }
        snprintf(what, sizeof(what), "%s: >= 15x fewer gradient bytes than fp32", names[mode]);
        mc_check_all(ratio >= 15.0, what);
    }
    for (int r = 0; r < N; r++) {
        free(res[r]);
    }
    free(chunk);
    tpm_exchange_destroy(x);
}

int main(int argc, char **argv)
{
    int         rc;
    tpm_comm_t *c;
    size_t      maxn = 0;
    float      *grad, *got, *want;

    MPI_Init(&argc, &argv);
    tpm_set_abort_hook(mc_abort_hook);
    if (tpm_comm_mpi_create(1, &c) != TPM_OK || tpm_backend_create("cpu", 1, &g_be) != TPM_OK) {
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (int g = 0; g < N_GROUPS; g++) {
        maxn = chunk_n[g] > maxn ? chunk_n[g] : maxn;
    }
    grad = malloc((size_t)c->size * maxn * sizeof(float));
    got  = malloc(maxn * sizeof(float));
    want = malloc(maxn * sizeof(float));

    test_off(c, grad, got, want);
    for (int m = 0; m < 3; m++) {
        test_on(c, (tpm_twobit_mode_t)m, 256, grad, got, want);
        test_on(c, (tpm_twobit_mode_t)m, 12, grad, got, want);
    }
    rc = mc_report(""); /* every verdict was all-reduced: the counts agree on all ranks */
    free(grad);
    free(got);
    free(want);
    tpm_backend_destroy(g_be);
    tpm_comm_destroy(c);
    MPI_Finalize();
    return rc;
}
