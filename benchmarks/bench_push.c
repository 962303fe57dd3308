/* SPDX-License-Identifier: MIT */
/*
 * bench_push.c: the latency of one live weight push (--mode=trainserve's exchange) from a
 * training group of NT ranks to a serving group of M ranks, under mpirun with NT + M ranks,
 * against the physical bound measured in the same run: the bytes the push moves divided by
 * rank 0's memcpy bandwidth over a buffer of that size.
 *
 *   bench_push --serve=M --model=small|gpt2-124m [--vocab-size=V] [--push-dtype=fp32|bf16]
 *              [--reps=R] [--threads=N]
 *
 * One repetition: a world barrier, then the trainer packs and posts its sends
 * (tpm_pusher_start) and the servers poll, unpack and swap as the engine would; a second
 * world barrier after the swap ends it. Reported on rank 0 as one CSV line:
 * model,params,NT,M,dtype,bytes,push_min_s,push_median_s,memcpy_GBs,bound_s,ratio
 * (ratio = push median / bound).
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "base/mem.h"
#include "base/timer.h"
#include "comm/comm.h"
#include "core/model.h"
#include "core/model_tp.h"
#include "core/reshard.h"
#include "serve/swap.h"
#include "train/push.h"
#include "zero3/zero3.h"

#define MAX_REPS 64

static void die(const char *what)
{
    fprintf(stderr, "bench_push: %s failed\n", what);
    MPI_Abort(MPI_COMM_WORLD, 1);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

/* best of 3 memcpy of n bytes, GB/s */
static double memcpy_gbs(size_t n)
{
    char  *a = malloc(n), *b = malloc(n);
    double best = 0.0;

    if (a == NULL || b == NULL) {
        die("memcpy buffers");
    }
    memset(a, 1, n);
    memset(b, 2, n);
    for (int k = 0; k < 3; k++) {
        double t0 = tpm_time_now(), dt;

        memcpy(b, a, n);
        dt = tpm_time_now() - t0;
        if (dt > 0 && (double)n / dt / 1e9 > best) {
            best = (double)n / dt / 1e9;
        }
    }
    if (b[n / 2] != 1) {
        die("memcpy check");
    }
    free(a);
    free(b);
    return best;
}

int main(int argc, char **argv)
{
    tpm_model_config_t cfg   = {.L = 4, .C = 256, .NH = 4, .V = 50257, .maxT = 256};
    const char        *model = "small";
    int                M = 1, reps = 5, threads = 1, bf16 = 0, provided, rank, size, serving;
    tpm_comm_t        *world = NULL, *group = NULL;
    tpm_backend_t     *be = NULL;
    tpm_push_link_t    link;
    tpm_reshard_plan_t plan;
    double             lat[MAX_REPS];
    size_t             bytes = 0;
    tpm_zero3_t       *z     = NULL;
    tpm_pusher_t      *p     = NULL;
    tpm_tp_model_t    *m     = NULL;
    tpm_swapper_t     *s     = NULL;

    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--serve=", 8) == 0) {
            M = atoi(argv[i] + 8);
        } else if (strcmp(argv[i], "--model=small") == 0) {
            model = "small";
        } else if (strcmp(argv[i], "--model=gpt2-124m") == 0) {
            model = "gpt2-124m";
            cfg   = (tpm_model_config_t){.L = 12, .C = 768, .NH = 12, .V = 50257, .maxT = 1024};
        } else if (strncmp(argv[i], "--vocab-size=", 13) == 0) {
            cfg.V = atoi(argv[i] + 13);
        } else if (strcmp(argv[i], "--push-dtype=bf16") == 0) {
            bf16 = 1;
        } else if (strcmp(argv[i], "--push-dtype=fp32") == 0) {
            bf16 = 0;
        } else if (strncmp(argv[i], "--reps=", 7) == 0) {
            reps = atoi(argv[i] + 7);
        } else if (strncmp(argv[i], "--threads=", 10) == 0) {
            threads = atoi(argv[i] + 10);
        } else {
            fprintf(stderr,
                    "usage: %s --serve=M --model=small|gpt2-124m [--vocab-size=V] "
                    "[--push-dtype=fp32|bf16] [--reps=R] [--threads=N]\n",
                    argv[0]);
            return 2;
        }
    }
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    tpm_log_set_rank(rank);
    if (M < 1 || M >= size || reps < 1 || reps > MAX_REPS) {
        if (rank == 0) {
            fprintf(stderr, "bench_push: need 1 <= --serve < ranks and 1 <= --reps <= %d\n",
                    MAX_REPS);
        }
        MPI_Finalize();
        return 2;
    }
    if (tpm_comm_mpi_create(0, &world) != TPM_OK || tpm_backend_create("cpu", threads, &be) ||
        tpm_model_config_finish(&cfg) != TPM_OK) {
        die("set-up");
    }
    serving = rank >= size - M;
    if (tpm_comm_split(world, serving, rank, &group) != TPM_OK) {
        die("split");
    }
    memset(&link, 0, sizeof(link));
    link.world   = world;
    link.n_train = size - M;
    link.n_serve = M;
    link.bf16    = bf16;
    if (tpm_reshard_plan_init(&plan, &cfg, link.n_train, M) != TPM_OK) {
        die("plan");
    }
    for (int i = 0; i < link.n_train; i++) {
        bytes += tpm_reshard_send_total(&plan, i) * (bf16 ? 2 : 4);
    }
    tpm_reshard_plan_cleanup(&plan);
    if (serving) {
        if (tpm_tp_create(be, group, &cfg, 1, 16, 16, 1, &m) != TPM_OK ||
            tpm_swapper_create(&link, group->rank, m, NULL, &s) != TPM_OK) {
            die("server set-up");
        }
    } else if (tpm_zero3_create(be, group, &cfg, 1, 16, &z) != TPM_OK ||
               tpm_zero3_init_params(z, 1) != TPM_OK || tpm_pusher_create(&link, z, &p)) {
        die("trainer set-up");
    }
    for (int r = 0; r < reps; r++) {
        const struct timespec nap = {0, 100 * 1000};
        double                t0;

        tpm_comm_barrier(world);
        t0 = tpm_time_now();
        if (serving) {
            while (!tpm_swapper_ready(s)) {
                nanosleep(&nap, NULL);
            }
            tpm_comm_barrier(group);
            tpm_swapper_swap(s);
        } else if (tpm_pusher_start(p, r + 1) != TPM_OK) {
            die("push");
        }
        tpm_comm_barrier(world);
        lat[r] = tpm_time_now() - t0;
    }
    if (serving) {
        if (tpm_swapper_drain(s, TPM_OK) != TPM_OK) {
            die("drain");
        }
    } else if (tpm_pusher_finish(p, 0, TPM_OK) != TPM_OK) {
        die("finish");
    }
    if (rank == 0) {
        double bw = memcpy_gbs(bytes), bound = (double)bytes / (bw * 1e9), med;

        qsort(lat, (size_t)reps, sizeof(double), cmp_double);
        med = lat[reps / 2];
        printf("%s,%zu,%d,%d,%s,%zu,%.4f,%.4f,%.2f,%.4f,%.2f\n", model, z->lay.logical_numel,
               link.n_train, M, bf16 ? "bf16" : "fp32", bytes, lat[0], med, bw, bound, med / bound);
        fflush(stdout);
    }
    tpm_swapper_destroy(s);
    tpm_tp_destroy(m);
    tpm_pusher_destroy(p);
    tpm_zero3_destroy(z);
    tpm_comm_destroy(group);
    tpm_comm_destroy(world);
    tpm_backend_destroy(be);
    MPI_Finalize();
    return 0;
}
