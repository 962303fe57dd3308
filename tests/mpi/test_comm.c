/* SPDX-License-Identifier: MIT */
/*
 * test_comm.c: the MPI comm layer under mpirun (any rank count): results of
 * every collective, blocking and non-blocking, the byte counters,
 * agree-then-branch, groups (split) and point-to-point transfers between them. Rank 0 prints "N passed, N failed"; exit 1 on failure.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "mpi_check.h"

int main(int argc, char **argv)
{
    tpm_comm_t    *c;
    const size_t   n = 1000;
    int            N, r, ok;
    char           prefix[32];
    float         *send, *recv;
    tpm_comm_req_t req;

    MPI_Init(&argc, &argv);
    tpm_set_abort_hook(mc_abort_hook);
    if (tpm_comm_mpi_create(1, &c) != TPM_OK) {
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    N    = c->size;
    r    = c->rank;
    if (argc > 1 && strcmp(argv[1], "--mismatch") == 0) {
        /* a deliberate divergence: --debug-collectives must report it, not hang */
        double d = 1.0;
        if (r == N - 1) {
            tpm_comm_barrier(c);
        } else {
            tpm_comm_all_reduce(c, &d, &d, 1, TPM_DT_DOUBLE, TPM_RED_SUM);
        }
        MPI_Finalize();
        return 0;
    }
    send = malloc(n * N * sizeof(float));
    recv = malloc(n * N * sizeof(float));

    /* all-gather, blocking and non-blocking */
    for (int nb = 0; nb < 2; nb++) {
        for (size_t i = 0; i < n; i++) {
            send[i] = (float)(r * 100000 + (int)i);
        }
        memset(&req, 0, sizeof(req));
        tpm_comm_all_gather(c, send, recv, n, TPM_DT_FLOAT, nb ? &req : NULL);
        tpm_comm_wait(c, &req);
        ok = 1;
        for (int j = 0; j < N; j++) {
            for (size_t i = 0; i < n; i++) {
                ok &= recv[(size_t)j * n + i] == (float)(j * 100000 + (int)i);
            }
        }
        mc_check_all(ok, nb ? "iallgather" : "allgather");
    }

    /* reduce-scatter: chunk j of every rank's send is summed on rank j */
    for (int nb = 0; nb < 2; nb++) {
        for (int j = 0; j < N; j++) {
            for (size_t i = 0; i < n; i++) {
                send[(size_t)j * n + i] = (float)(r + 1) * (float)(j + 1) + (float)i;
            }
        }
        memset(&req, 0, sizeof(req));
        tpm_comm_reduce_scatter(c, send, recv, n, TPM_DT_FLOAT, TPM_RED_SUM, nb ? &req : NULL);
        tpm_comm_wait(c, &req);
        ok = 1;
        for (size_t i = 0; i < n; i++) {
            float want = (float)(N * (N + 1) / 2) * (float)(r + 1) + (float)N * (float)i;
            ok &= recv[i] == want;
        }
        mc_check_all(ok, nb ? "ireduce_scatter" : "reduce_scatter");
    }

    /* blocking reduce-scatter through a caller's scratch buffer (the embedding exchange) */
    {
        float *scratch = malloc((size_t)N * n * sizeof(float));
        for (int j = 0; j < N; j++) {
            for (size_t i = 0; i < n; i++) {
                send[(size_t)j * n + i] = (float)(r + 1) * (float)(j + 1) + (float)i;
            }
        }
        ok = scratch != NULL && tpm_comm_reduce_scatter_scratch(c, send, recv, n, TPM_DT_FLOAT,
                                                                TPM_RED_SUM, scratch) == TPM_OK;
        for (size_t i = 0; ok && i < n; i++) {
            ok &= recv[i] == (float)(N * (N + 1) / 2) * (float)(r + 1) + (float)N * (float)i;
        }
        mc_check_all(ok, "reduce_scatter with a scratch buffer");
        free(scratch);
    }

    /*
     * two non-blocking reduce-scatters in flight at once, other types and ops: int32 max and
     * double sum (the non-blocking path reduces on the owner, in rank order)
     */
    {
        int32_t        isend[64 * 3], irecv[3];
        double         dsend[64 * 3], drecv[3];
        tpm_comm_req_t ra, rb;
        if (N <= 64) {
            for (int j = 0; j < N; j++) {
                for (int i = 0; i < 3; i++) {
                    isend[j * 3 + i] = (r == N - 1 - i % N) ? 1000 + j : -r;
                    dsend[j * 3 + i] = 0.5 * (double)(r + 1) + (double)(j * 10 + i);
                }
            }
            memset(&ra, 0, sizeof(ra));
            memset(&rb, 0, sizeof(rb));
            tpm_comm_reduce_scatter(c, isend, irecv, 3, TPM_DT_INT32, TPM_RED_MAX, &ra);
            tpm_comm_reduce_scatter(c, dsend, drecv, 3, TPM_DT_DOUBLE, TPM_RED_SUM, &rb);
            ok = tpm_comm_wait(c, &rb) == TPM_OK && tpm_comm_wait(c, &ra) == TPM_OK;
            for (int i = 0; i < 3; i++) {
                ok &= irecv[i] == 1000 + r;
                ok &= drecv[i] == 0.25 * (double)N * (double)(N + 1) + (double)N * (r * 10 + i);
            }
            mc_check_all(ok, "ireduce_scatter int32 max and double sum, both in flight");
        }
    }

    /* all-to-all: chunk j goes to rank j */
    for (int j = 0; j < N; j++) {
        for (size_t i = 0; i < n; i++) {
            send[(size_t)j * n + i] = (float)(r * 1000 + j);
        }
    }
    tpm_comm_all_to_all(c, send, recv, n, TPM_DT_FLOAT, NULL);
    ok = 1;
    for (int j = 0; j < N; j++) {
        ok &= recv[(size_t)j * n + 5] == (float)(j * 1000 + r);
    }
    mc_check_all(ok, "all_to_all");

    /* all-to-allv: rank r sends j+1 values r*100+j to rank j */
    {
        size_t sc[64], sd[64], rc[64], rd[64], off = 0, roff = 0;
        if (N <= 64) {
            for (int j = 0; j < N; j++) {
                sc[j] = (size_t)j + 1;
                sd[j] = off;
                for (size_t i = 0; i < sc[j]; i++) {
                    send[off + i] = (float)(r * 100 + j);
                }
                off += sc[j];
                rc[j] = (size_t)r + 1;
                rd[j] = roff;
                roff += rc[j];
            }
            tpm_comm_all_to_allv(c, send, sc, sd, recv, rc, rd, TPM_DT_FLOAT);
            ok = 1;
            for (int j = 0; j < N; j++) {
                for (size_t i = 0; i < rc[j]; i++) {
                    ok &= recv[rd[j] + i] == (float)(j * 100 + r);
                }
            }
            mc_check_all(ok, "all_to_allv");
        }
    }

    /* all-reduce in place, double and int */
    {
        double d = r + 0.5, dsum = 0;
        int64_t i64 = r, imax = -1;
        tpm_comm_all_reduce(c, &d, &dsum, 1, TPM_DT_DOUBLE, TPM_RED_SUM);
        tpm_comm_all_reduce(c, &i64, &imax, 1, TPM_DT_INT64, TPM_RED_MAX);
        mc_check_all(dsum == N * (N - 1) / 2.0 + 0.5 * N && imax == N - 1, "all_reduce");
        d = 1.0;
        tpm_comm_all_reduce(c, &d, &d, 1, TPM_DT_DOUBLE, TPM_RED_SUM);
        mc_check_all(d == (double)N, "all_reduce in place");
    }

    /* broadcast */
    {
        char buf[16] = {0};
        if (r == 0) {
            strcpy(buf, "hello");
        }
        tpm_comm_bcast(c, buf, sizeof(buf), TPM_DT_BYTE, 0);
        mc_check_all(strcmp(buf, "hello") == 0, "bcast");
    }

    /* agree: one failing rank makes everyone see a failure */
    mc_check_all(tpm_comm_agree(c, TPM_OK) == TPM_OK, "agree all ok");
    {
        tpm_status_t s = tpm_comm_agree(c, r == N - 1 ? TPM_ERR_IO : TPM_OK);
        mc_check_all(s != TPM_OK && (r != N - 1 || s == TPM_ERR_IO), "agree one failure");
    }

    /* byte counters: all-gather of n floats sends (N-1)*n*4 bytes */
    {
        tpm_comm_stats_t before = c->stats;
        tpm_comm_all_gather(c, send, recv, n, TPM_DT_FLOAT, NULL);
        mc_check_all(c->stats.bytes[TPM_COLL_ALLGATHER] - before.bytes[TPM_COLL_ALLGATHER] ==
                      (uint64_t)(N - 1) * n * 4 &&
                  c->stats.calls[TPM_COLL_ALLGATHER] == before.calls[TPM_COLL_ALLGATHER] + 1,
              "byte counters");
    }
    mc_check_all(c->seq > 0, "sequence numbers advance");

    /*
     * Groups: the last M = N/2 ranks (at least one) form a "serving" group, the others a
     * "training" group, with the ranks reversed by key in the serving group; each group runs
     * its own collectives, and a transfer between the groups goes point-to-point on the parent.
     */
    {
        const int   M = N > 1 ? N / 2 : 1, T = N - M, serving = r >= T;
        tpm_comm_t *g = NULL, *none = (tpm_comm_t *)&ok;
        int64_t     sum = 0, me = r;

        ok = tpm_comm_split(c, serving, serving ? -r : r, &g) == TPM_OK && g != NULL;
        mc_check_all(ok, "split into two groups");
        if (ok) {
            const int want_size = serving ? M : T;
            const int want_rank = serving ? (N - 1 - r) : r;
            mc_check_all(g->size == want_size && g->rank == want_rank,
                         "group size and rank order by key");
            tpm_comm_all_reduce(g, &me, &sum, 1, TPM_DT_INT64, TPM_RED_SUM);
            mc_check_all(sum == (serving ? (int64_t)(T + N - 1) * M / 2
                                         : (int64_t)(T - 1) * T / 2),
                         "all_reduce inside each group");
            mc_check_all(g->seq == 1 && g->stats.calls[TPM_COLL_ALLREDUCE] == 1,
                         "a group has its own sequence and counters");
        }
        /* a rank that joins no group gets NULL; the split is still collective */
        mc_check_all(tpm_comm_split(c, r == 0 ? 0 : TPM_COMM_NO_GROUP, 0, &none) == TPM_OK &&
                         (r == 0 ? none != NULL && none->size == 1 : none == NULL),
                     "TPM_COMM_NO_GROUP gives no communicator");
        tpm_comm_destroy(none);
        mc_check_all(tpm_comm_split(c, -5, 0, &none) == TPM_ERR_INVALID_ARG && none == NULL,
                     "a negative colour is refused");

        /*
         * Between the groups: training rank t sends a distinct chunk to every serving rank
         * (tag = t), non-blocking on both sides; a serving rank posts all its receives first
         * and tests them while "decoding" (here: a collective of its own group) until done.
         */
        if (N > 1) {
            const size_t   m  = 257;
            float         *out = calloc((size_t)T * m, sizeof(float));
            tpm_comm_req_t reqs[64];
            int            nreq = 0, good = 1, polls = 0;
            uint64_t       b0 = c->stats.bytes[TPM_COLL_P2P], s0 = c->seq;

            memset(reqs, 0, sizeof(reqs));
            if (serving) {
                for (int t = 0; t < T && nreq < 64; t++) {
                    good &= tpm_comm_recv(c, out + (size_t)t * m, m, TPM_DT_FLOAT, t, t,
                                          &reqs[nreq++]) == TPM_OK;
                }
                for (int busy = 1; busy;) {
                    double x = 1.0;
                    busy     = 0;
                    tpm_comm_all_reduce(g, &x, &x, 1, TPM_DT_DOUBLE, TPM_RED_SUM);
                    good &= x == (double)M;
                    for (int i = 0; i < nreq; i++) {
                        good &= tpm_comm_test(c, &reqs[i]) == TPM_OK;
                        busy |= reqs[i].active;
                    }
                    polls++;
                    /* every serving rank polls the same number of times: agree on "done" */
                    {
                        int32_t b = busy;
                        tpm_comm_all_reduce(g, &b, &b, 1, TPM_DT_INT32, TPM_RED_MAX);
                        busy = b;
                    }
                }
                for (int t = 0; t < T; t++) {
                    for (size_t i = 0; i < m; i++) {
                        good &= out[(size_t)t * m + i] == (float)(t * 1000 + r * 10) + (float)i;
                    }
                }
            } else {
                float *chunk = calloc((size_t)M * m, sizeof(float));
                for (int s = 0; s < M; s++) {
                    for (size_t i = 0; i < m; i++) {
                        chunk[(size_t)s * m + i] = (float)(r * 1000 + (T + s) * 10) + (float)i;
                    }
                    good &= tpm_comm_send(c, chunk + (size_t)s * m, m, TPM_DT_FLOAT, T + s, r,
                                          &reqs[nreq++]) == TPM_OK;
                }
                for (int i = 0; i < nreq; i++) {
                    good &= tpm_comm_wait(c, &reqs[i]) == TPM_OK && !reqs[i].active;
                }
                free(chunk);
            }
            mc_check_all(good && polls >= (serving ? 1 : 0),
                         "non-blocking transfer between the groups");
            mc_check_all(c->stats.bytes[TPM_COLL_P2P] - b0 ==
                                 (serving ? 0 : (uint64_t)M * m * sizeof(float)) &&
                             c->seq == s0,
                         "p2p bytes counted, sequence unchanged");
            free(out);
        }
        mc_check_all(tpm_comm_send(c, send, 1, TPM_DT_FLOAT, N, 0, NULL) == TPM_ERR_INVALID_ARG &&
                         tpm_comm_recv(c, recv, 1, TPM_DT_FLOAT, 0, 40000, NULL) ==
                             TPM_ERR_INVALID_ARG,
                     "bad peer and tag refused");
        tpm_comm_destroy(g);
    }

    snprintf(prefix, sizeof(prefix), "test_comm np=%d: ", N);
    ok = mc_report(prefix);
    free(send);
    free(recv);
    tpm_comm_destroy(c);
    MPI_Finalize();
    return ok;
}
