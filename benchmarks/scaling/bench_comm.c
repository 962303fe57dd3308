/* SPDX-License-Identifier: MIT */
/*
 * bench_comm.c: times the collectives the ZeRO-3 engine issues, through tpmpi's own comm
 * layer (src/comm), so that the scaling model (benchmarks/scaling/model.py, docs/SCALING.md)
 * can fit an alpha-beta cost to each: all-gather (fp32), reduce-scatter (fp32 sum) and
 * all-to-all (bytes, the 2-bit exchange), blocking, full buffer sizes from 4 KiB to
 * -e bytes growing 4x. Every rank runs the same loop; rank 0 prints the median of -n timed
 * calls (after 2 warm-ups, each preceded by a barrier) in microseconds:
 *
 *   mpirun -np N benchmarks/scaling/bench_comm [-e max_bytes] [-n iters]
 *   # kind ranks full_bytes median_us min_us
 */
#include <getopt.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/timer.h"
#include "comm/comm.h"

#define MAX_ITERS 200

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

/* one blocking collective of kind @p k over a full buffer of @p full bytes */
static tpm_status_t one(tpm_comm_t *c, int k, void *send, void *recv, size_t full)
{
    size_t chunk = full / (size_t)c->size; /* bytes per rank */

    switch (k) {
    case 0: return tpm_comm_all_gather(c, send, recv, chunk / 4, TPM_DT_FLOAT, NULL);
    case 1:
        return tpm_comm_reduce_scatter(c, send, recv, chunk / 4, TPM_DT_FLOAT, TPM_RED_SUM, NULL);
    default: return tpm_comm_all_to_all(c, send, recv, chunk, TPM_DT_BYTE, NULL);
    }
}

int main(int argc, char **argv)
{
    static const char *const names[]   = {"allgather_fp32", "reduce_scatter_fp32", "alltoall"};
    size_t                   max_bytes = (size_t)64 << 20;
    int                      iters     = 20, opt;
    tpm_comm_t              *c         = NULL;
    double                   t[MAX_ITERS];
    char                    *send, *recv;

    while ((opt = getopt(argc, argv, "e:n:")) != -1) {
        if (opt == 'e') {
            max_bytes = (size_t)strtoull(optarg, NULL, 10);
        } else if (opt == 'n') {
            iters = atoi(optarg);
        } else {
            fprintf(stderr, "usage: bench_comm [-e max_bytes] [-n iters]\n");
            return 2;
        }
    }
    if (iters < 1 || iters > MAX_ITERS || max_bytes < 4096) {
        fprintf(stderr, "bench_comm: -n must be 1..%d and -e at least 4096\n", MAX_ITERS);
        return 2;
    }
    MPI_Init(&argc, &argv);
    if (tpm_comm_mpi_create(0, &c) != TPM_OK) {
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    send = calloc(max_bytes + 4096, 1);
    recv = calloc(max_bytes + 4096, 1);
    if (send == NULL || recv == NULL) {
        fprintf(stderr, "bench_comm: out of memory\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (c->rank == 0) {
        printf("# kind ranks full_bytes median_us min_us\n");
    }
    for (int k = 0; k < 3; k++) {
        for (size_t full = 4096; full <= max_bytes; full *= 4) {
            size_t f = full / ((size_t)c->size * 4) * ((size_t)c->size * 4); /* whole floats */
            for (int i = -2; i < iters; i++) {
                double t0;
                MPI_Barrier(MPI_COMM_WORLD);
                t0 = tpm_time_now();
                if (one(c, k, send, recv, f) != TPM_OK) {
                    fprintf(stderr, "bench_comm: %s failed\n", names[k]);
                    MPI_Abort(MPI_COMM_WORLD, 1);
                }
                if (i >= 0) {
                    t[i] = (tpm_time_now() - t0) * 1e6;
                }
            }
            /* the slowest rank sets the time */
            MPI_Allreduce(MPI_IN_PLACE, t, iters, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
            qsort(t, (size_t)iters, sizeof(double), cmp_double);
            if (c->rank == 0) {
                printf("%s %d %zu %.1f %.1f\n", names[k], c->size, f, t[iters / 2], t[0]);
                fflush(stdout);
            }
        }
    }
    free(send);
    free(recv);
    tpm_comm_destroy(c);
    MPI_Finalize();
    return 0;
}
