/* SPDX-License-Identifier: MIT */
/*
 * test_comm_nccl.c: the NCCL communicator (src/comm/comm_nccl.c) under mpirun, one GPU per
 * rank (a single-GPU machine runs it at -np 1, which still exercises the bootstrap, the
 * streams, the events and the host/device routing). Every collective, blocking and not, on
 * device buffers whose input is written by a kernel just before the call (the
 * communication stream must wait for it) and whose output is read back through the
 * backend right after the wait (the compute stream must wait for the collective); the
 * host-buffer path through MPI; the byte counters; a host/device mix is refused; groups
 * (ncclCommSplit) with a device all-reduce inside each, and (at 2+ ranks) a device
 * point-to-point transfer from one group to the other on the parent.
 * Exit 77 (automake SKIP) without a CUDA device; rank 0 prints the results, exit 1 on failure.
 */
#include <cuda_runtime.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "base/log.h"
#include "comm/comm.h"

#define SKIP 77

static int            n_pass, n_fail;
static tpm_backend_t *gpu;

static void abort_hook(int code)
{
    MPI_Abort(MPI_COMM_WORLD, code);
}

static void check(tpm_comm_t *c, int good, const char *what)
{
    int all = 0;

    MPI_Allreduce(&good, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    if (c->rank == 0) {
        printf("%s %d - %s\n", all ? "ok" : "not ok", n_pass + n_fail + 1, what);
        fflush(stdout);
    }
    if (all) {
        n_pass++;
    } else {
        n_fail++;
    }
}

static float *dev(size_t n)
{
    void *p = NULL;

    if (gpu->ops->alloc(gpu, n * sizeof(float), &p) != TPM_OK) {
        abort_hook(1);
    }
    return p;
}

/* upload v/2, then double it on the compute stream: the collective must see v */
static void put(float *d, const float *h, size_t n)
{
    float *half = malloc(n * sizeof(float));

    for (size_t i = 0; i < n; i++) {
        half[i] = 0.5f * h[i];
    }
    gpu->ops->copy(gpu, d, half, n * sizeof(float), TPM_COPY_H2D);
    gpu->ops->scale(gpu, d, 2.0f, n);
    free(half);
}

static int get_eq(const float *d, const float *want, size_t n)
{
    float *h = malloc(n * sizeof(float));
    int    good;

    gpu->ops->copy(gpu, h, d, n * sizeof(float), TPM_COPY_D2H);
    good = memcmp(h, want, n * sizeof(float)) == 0;
    free(h);
    return good;
}

int main(int argc, char **argv)
{
    const size_t   n = 100003; /* per-rank chunk, odd */
    tpm_comm_t    *c;
    tpm_comm_req_t req;
    int            ndev = 0, N, r, done = 0;
    float         *hs, *hw, *d_send, *d_recv;
    double         hd = 0.0, hd_all = 0.0;

    MPI_Init(&argc, &argv);
    tpm_set_abort_hook(abort_hook);
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        printf("1..0 # SKIP no CUDA device: %s\n", cudaGetErrorString(cudaGetLastError()));
        MPI_Finalize();
        return SKIP;
    }
    tpm_log_set_level(TPM_LOG_WARN);
    if (tpm_comm_nccl_create(0, &c) != TPM_OK || tpm_backend_create("cuda", 0, &gpu) != TPM_OK) {
        fprintf(stderr, "test_comm_nccl: cannot set up NCCL and the cuda backend\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    N      = c->size;
    r      = c->rank;
    hs     = malloc((size_t)N * n * sizeof(float));
    hw     = malloc((size_t)N * n * sizeof(float));
    d_send = dev((size_t)N * n);
    d_recv = dev((size_t)N * n);

    /* all-gather: rank q contributes q*1000 + i */
    for (size_t i = 0; i < n; i++) {
        hs[i] = (float)(r * 1000) + (float)(i % 997);
    }
    for (int q = 0; q < N; q++) {
        for (size_t i = 0; i < n; i++) {
            hw[(size_t)q * n + i] = (float)(q * 1000) + (float)(i % 997);
        }
    }
    put(d_send, hs, n);
    check(c,
          tpm_comm_all_gather(c, d_send, d_recv, n, TPM_DT_FLOAT, NULL) == TPM_OK &&
              get_eq(d_recv, hw, (size_t)N * n),
          "all_gather, blocking");
    gpu->ops->memzero(gpu, d_recv, (size_t)N * n * sizeof(float));
    put(d_send, hs, n);
    memset(&req, 0, sizeof(req));
    check(c, tpm_comm_all_gather(c, d_send, d_recv, n, TPM_DT_FLOAT, &req) == TPM_OK && req.active,
          "all_gather, non-blocking start");
    while (req.active && tpm_comm_test(c, &req) == TPM_OK) {
        done++; /* polls until the event has completed */
    }
    check(c, !req.active && get_eq(d_recv, hw, (size_t)N * n), "all_gather, test until done");
    put(d_send, hs, n);
    tpm_comm_all_gather(c, d_send, d_recv, n, TPM_DT_FLOAT, &req);
    check(c, tpm_comm_wait(c, &req) == TPM_OK && !req.active && get_eq(d_recv, hw, (size_t)N * n),
          "all_gather, wait");
    check(c, c->stats.bytes[TPM_COLL_ALLGATHER] == (uint64_t)(3 * n * 4 * (size_t)(N - 1)),
          "all_gather byte counter");

    /* reduce-scatter: chunk q of rank s is s + q + i%7; the sum over s for my chunk r */
    for (int q = 0; q < N; q++) {
        for (size_t i = 0; i < n; i++) {
            hs[(size_t)q * n + i] = (float)(r + q) + (float)(i % 7);
        }
    }
    for (size_t i = 0; i < n; i++) {
        hw[i] = (float)(N * (N - 1) / 2 + N * r) + (float)N * (float)(i % 7);
    }
    put(d_send, hs, (size_t)N * n);
    tpm_comm_reduce_scatter(c, d_send, d_recv, n, TPM_DT_FLOAT, TPM_RED_SUM, &req);
    check(c, tpm_comm_wait(c, &req) == TPM_OK && get_eq(d_recv, hw, n),
          "reduce_scatter sum, non-blocking");
    for (size_t i = 0; i < n; i++) {
        hw[i] = (float)(N - 1 + r) + (float)(i % 7);
    }
    check(c,
          tpm_comm_reduce_scatter(c, d_send, d_recv, n, TPM_DT_FLOAT, TPM_RED_MAX, NULL) ==
                  TPM_OK &&
              get_eq(d_recv, hw, n),
          "reduce_scatter max, blocking");

    /* all-to-all: rank s sends s*100 + q to rank q; I receive q*100 + r from rank q */
    for (int q = 0; q < N; q++) {
        for (size_t i = 0; i < n; i++) {
            hs[(size_t)q * n + i] = (float)(r * 100 + q) + 0.25f * (float)(i % 3);
            hw[(size_t)q * n + i] = (float)(q * 100 + r) + 0.25f * (float)(i % 3);
        }
    }
    put(d_send, hs, (size_t)N * n);
    tpm_comm_all_to_all(c, d_send, d_recv, n, TPM_DT_FLOAT, &req);
    check(c, tpm_comm_wait(c, &req) == TPM_OK && get_eq(d_recv, hw, (size_t)N * n),
          "all_to_all, non-blocking");

    /*
     * all-to-allv: rank s sends q + 1 values (s*100 + q) to rank q, at displacement 2q; rank r
     * receives r + 1 values from each q, packed in rank order
     */
    {
        size_t sc[64], sd[64], rc[64], rd[64], off = 0;
        if (N <= 64 && (size_t)3 * N <= (size_t)N * n) { /* the chunks end before 3N */
            for (int q = 0; q < N; q++) {
                sc[q] = (size_t)q + 1;
                sd[q] = 2 * (size_t)q;
                rc[q] = (size_t)r + 1;
                rd[q] = off;
                for (size_t i = 0; i < sc[q]; i++) {
                    hs[sd[q] + i] = (float)(r * 100 + q);
                }
                for (size_t i = 0; i < rc[q]; i++) {
                    hw[off + i] = (float)(q * 100 + r);
                }
                off += rc[q];
            }
            put(d_send, hs, (size_t)N * 3);
            check(c,
                  tpm_comm_all_to_allv(c, d_send, sc, sd, d_recv, rc, rd, TPM_DT_FLOAT) == TPM_OK &&
                      get_eq(d_recv, hw, off),
                  "all_to_allv, variable chunks");
        }
    }

    /* all-reduce in place and broadcast */
    for (size_t i = 0; i < n; i++) {
        hs[i] = (float)(r + 1) * (float)(i % 5);
        hw[i] = (float)(N * (N + 1) / 2) * (float)(i % 5);
    }
    put(d_send, hs, n);
    check(c,
          tpm_comm_all_reduce(c, d_send, d_send, n, TPM_DT_FLOAT, TPM_RED_SUM) == TPM_OK &&
              get_eq(d_send, hw, n),
          "all_reduce sum, in place");
    for (size_t i = 0; i < n; i++) {
        hs[i] = r == N - 1 ? (float)i : -1.0f;
        hw[i] = (float)i;
    }
    put(d_send, hs, n);
    check(c, tpm_comm_bcast(c, d_send, n, TPM_DT_FLOAT, N - 1) == TPM_OK && get_eq(d_send, hw, n),
          "bcast from the last rank");

    /* host buffers go through MPI; a host/device mix is refused */
    hd = (double)r + 0.5;
    check(c,
          tpm_comm_all_reduce(c, &hd, &hd_all, 1, TPM_DT_DOUBLE, TPM_RED_SUM) == TPM_OK &&
              hd_all == (double)N * (N - 1) / 2.0 + 0.5 * N,
          "all_reduce on host buffers (MPI path)");
    tpm_comm_all_gather(c, hs, hw, 4, TPM_DT_FLOAT, &req);
    check(c, tpm_comm_wait(c, &req) == TPM_OK && hw[(size_t)(N - 1) * 4 + 1] == 1.0f,
          "all_gather on host buffers, non-blocking");
    check(c,
          tpm_comm_all_reduce(c, hs, d_recv, 4, TPM_DT_FLOAT, TPM_RED_SUM) == TPM_ERR_INVALID_ARG,
          "host send with device receive is refused");
    check(c, tpm_comm_agree(c, TPM_OK) == TPM_OK && tpm_comm_barrier(c) == TPM_OK,
          "agree and barrier");

    /* groups: even and odd ranks; a device all-reduce inside each group */
    {
        tpm_comm_t *g = NULL;
        const int   odd = r % 2, gsize = odd ? N / 2 : (N + 1) / 2;

        check(c, tpm_comm_split(c, odd, r, &g) == TPM_OK && g != NULL && g->size == gsize &&
                     g->rank == r / 2,
              "split into even and odd ranks");
        for (size_t i = 0; i < n; i++) {
            hs[i] = (float)(i % 7);
            hw[i] = (float)gsize * (float)(i % 7);
        }
        put(d_send, hs, n);
        check(c,
              g != NULL &&
                  tpm_comm_all_reduce(g, d_send, d_recv, n, TPM_DT_FLOAT, TPM_RED_SUM) == TPM_OK &&
                  get_eq(d_recv, hw, n),
              "device all_reduce inside a group");
        if (N >= 2) {
            /* rank 0 (even group) sends to rank 1 (odd group) on the parent, non-blocking */
            for (size_t i = 0; i < n; i++) {
                hs[i] = (float)(i % 11) + 0.25f;
            }
            put(d_send, hs, n);
            memset(&req, 0, sizeof(req));
            if (r == 0) {
                check(c, tpm_comm_send(c, d_send, n, TPM_DT_FLOAT, 1, 3, &req) == TPM_OK &&
                             tpm_comm_wait(c, &req) == TPM_OK,
                      "device send to the other group");
            } else if (r == 1) {
                check(c, tpm_comm_recv(c, d_recv, n, TPM_DT_FLOAT, 0, 3, &req) == TPM_OK &&
                             tpm_comm_wait(c, &req) == TPM_OK && get_eq(d_recv, hs, n),
                      "device send to the other group");
            } else {
                check(c, 1, "device send to the other group");
            }
        }
        tpm_comm_destroy(g);
    }

    if (r == 0) {
        printf("1..%d\n# %d passed, %d failed (%d rank(s), %d test polls)\n", n_pass + n_fail,
               n_pass, n_fail, N, done);
    }
    gpu->ops->free(gpu, d_send);
    gpu->ops->free(gpu, d_recv);
    free(hs);
    free(hw);
    tpm_backend_destroy(gpu);
    tpm_comm_destroy(c);
    MPI_Finalize();
    return n_fail == 0 ? 0 : 1;
}
