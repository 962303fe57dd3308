/* SPDX-License-Identifier: MIT */
/*
 * bench_serve.c: single-stream decode speed of the serving engine against the memory
 * bandwidth bound. Run under mpirun at M ranks (benchmarks/bench_serve.sh):
 *
 *   bench_serve --ckpt=FILE|DIR [--threads=N] [--prompt=P] [--tokens=N] [--reps=R]
 *               [--dtype=fp32|bf16|int8]
 *
 * 1. Bandwidth: every rank, at the same time, sums a 256 MiB / M float array with its
 *    threads (read-only, like the weights in a decode step) and copies one with memcpy;
 *    the node's bandwidth is the sum over ranks, best of 5.
 * 2. Decode: rank 0 submits one greedy job (P random prompt tokens, N new tokens) through
 *    the engine's queue, R times; decode tok/s = (generated - 1) / (last - first token time),
 *    best of R. The bound is node read bandwidth / bytes of weights read per token (every
 *    rank's slices except the position table, of which a step reads one row).
 * Prints a human line and one CSV line ("csv,..."), validated: the generated token count
 * must be N (a random-init model does not end its text) or the run reports "#wrong". Also
 * the 1-minute load average and rank 0's CPU share during decode (CPU seconds / (wall
 * seconds x threads)): on a shared machine a share well below 1 means the run was
 * time-sliced and its speed understates the engine.
 */
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "base/rng.h"
#include "base/timer.h"
#include "ckpt/ckpt.h"
#include "comm/comm.h"
#include "data/tokenizer.h"
#include "serve/engine.h"

#include "bw_probe.h"

#define BW_BYTES ((size_t)256 << 20)

static double read_bw(const float *a, size_t n)
{
    double best = 0.0, sink = 0.0;

    for (int r = 0; r < 5; r++) {
        double t0, s;

        MPI_Barrier(MPI_COMM_WORLD);
        t0 = tpm_time_now();
        s  = bw_pass(a, n); /* vector loads at the CPU's widest (bw_probe.h) */
        t0 = tpm_time_now() - t0;
        sink += (double)s;
        best = (double)n * sizeof(float) / t0 > best ? (double)n * sizeof(float) / t0 : best;
    }
    return sink == -1.0 ? 0.0 : best; /* keeps the sums alive */
}

static double copy_bw(float *a, float *b, size_t n)
{
    double best = 0.0;
    int    nt   = omp_get_max_threads();

    for (int r = 0; r < 5; r++) {
        double t0;

        MPI_Barrier(MPI_COMM_WORLD);
        t0 = tpm_time_now();
#pragma omp parallel for schedule(static)
        for (int t = 0; t < nt; t++) {
            size_t c = (n + (size_t)nt - 1) / (size_t)nt, i0 = (size_t)t * c;

            if (i0 < n) {
                memcpy(b + i0, a + i0, (n - i0 < c ? n - i0 : c) * sizeof(float));
            }
        }
        t0 = tpm_time_now() - t0;
        /* read + write */
        best = 2.0 * (double)n * sizeof(float) / t0 > best ? 2.0 * (double)n * sizeof(float) / t0
                                                           : best;
    }
    return best;
}

static double cpu_seconds(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
           (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
}

static double load_avg(void)
{
    FILE  *f = fopen("/proc/loadavg", "r");
    double l = -1.0;

    if (f != NULL) {
        if (fscanf(f, "%lf", &l) != 1) {
            l = -1.0;
        }
        fclose(f);
    }
    return l;
}

static int    n_tok, done;
static double cpu_first; /* CPU seconds at the first token */

static void on_token(tpm_serve_job_t *job, int32_t t, const char *text, size_t len)
{
    (void)job, (void)t, (void)text, (void)len;
    if (n_tok++ == 0) {
        cpu_first = cpu_seconds();
    }
}

static void on_done(tpm_serve_job_t *job, tpm_finish_t finish)
{
    (void)job, (void)finish;
    done = 1;
}

int main(int argc, char **argv)
{
    const char        *ckpt = NULL;
    char               path[1024];
    int                threads = 1, P = 16, N = 64, R = 3, provided, rank, size, stop;
    tpm_comm_t        *comm = NULL;
    tpm_backend_t     *be   = NULL;
    tpm_ckpt_t        *ck   = NULL;
    tpm_tokenizer_t   *tok  = NULL;
    tpm_engine_t      *e    = NULL;
    tpm_serve_queue_t *q    = NULL;
    tpm_serve_stats_t  st;
    tpm_model_config_t cfg;
    tpm_engine_opts_t  o = {.n_slots = 1};
    float             *a, *b;
    size_t             n;
    double             bw[2], bw_all[2], wbytes, wbytes_all, best_tps = 0.0, prefill = 0.0;
    double             share = 0.0, load = load_avg();
    int32_t           *prompt;
    int                wrong = 0, bad = 0;

    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--ckpt=", 7) == 0) {
            ckpt = argv[i] + 7;
        } else if (strncmp(argv[i], "--threads=", 10) == 0) {
            threads = atoi(argv[i] + 10);
        } else if (strncmp(argv[i], "--prompt=", 9) == 0) {
            P = atoi(argv[i] + 9);
        } else if (strncmp(argv[i], "--tokens=", 9) == 0) {
            N = atoi(argv[i] + 9);
        } else if (strncmp(argv[i], "--reps=", 7) == 0) {
            R = atoi(argv[i] + 7);
        } else if (strncmp(argv[i], "--dtype=", 8) == 0) {
            bad |= tpm_wdtype_parse(argv[i] + 8, &o.wdt) != TPM_OK;
        } else {
            bad = 1;
        }
    }
    if (bad || ckpt == NULL || P < 1 || N < 2 || R < 1) {
        fprintf(stderr,
                "usage: %s --ckpt=FILE|DIR [--threads=N] [--prompt=P] [--tokens=N] "
                "[--reps=R] [--dtype=fp32|bf16|int8]\n",
                argv[0]);
        return 2;
    }
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    tpm_log_set_rank(rank);
    memset(&st, 0, sizeof(st));
    if (tpm_comm_mpi_create(0, &comm) != TPM_OK || tpm_backend_create("cpu", threads, &be) ||
        tpm_ckpt_resolve(ckpt, path, sizeof(path)) != TPM_OK ||
        tpm_ckpt_open(comm, path, &ck) != TPM_OK) {
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    cfg          = tpm_ckpt_meta(ck)->model;
    o.ctx        = cfg.maxT;
    o.max_tokens = N;
    if (P + N > cfg.maxT || tpm_model_config_finish(&cfg) != TPM_OK ||
        (rank == 0 && tpm_tokenizer_from_bytes(tpm_ckpt_meta(ck)->tokenizer,
                                               tpm_ckpt_meta(ck)->tokenizer_len, &tok)) ||
        tpm_engine_create(be, comm, &cfg, &o, tok, &e) != TPM_OK ||
        tpm_engine_load(e, ck) != TPM_OK) {
        fprintf(stderr, "cannot set up (prompt + tokens must fit %d positions)\n", cfg.maxT);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    tpm_ckpt_close(ck);

    /* bandwidth of the node: all ranks at once */
    n = BW_BYTES / sizeof(float) / (size_t)size;
    a = malloc(n * sizeof(float));
    b = malloc(n * sizeof(float));
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        a[i] = 1.0f, b[i] = 0.0f;
    }
    bw[0] = read_bw(a, n);
    bw[1] = copy_bw(a, b, n);
    free(a), free(b);
    MPI_Reduce(bw, bw_all, 2, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    {
        const tpm_tp_model_t *m = tpm_engine_model(e);

        wbytes = (double)m->mem.weight_bytes -
                 (double)cfg.maxT * cfg.C * sizeof(float); /* wpe: one row per step */
    }
    MPI_Reduce(&wbytes, &wbytes_all, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);

    prompt = calloc((size_t)P, sizeof(int32_t));
    for (int i = 0; i < P; i++) {
        prompt[i] = (int32_t)(tpm_rng_u64(1, 2, (uint64_t)i) % (uint64_t)(cfg.V - 1));
    }
    if (rank == 0) {
        tpm_serve_queue_create(4, &q);
        tpm_serve_queue_set_free(q, 1);
    }
    for (int r = 0; r < R; r++) {
        tpm_serve_job_t job;

        memset(&job, 0, sizeof(job));
        job.prompt     = prompt;
        job.n_prompt   = P;
        job.max_tokens = N;
        job.top_p      = 1.0f;
        job.on_token   = on_token;
        job.on_done    = on_done;
        n_tok = done = 0;
        if (rank == 0 && tpm_serve_queue_push(q, &job) != TPM_OK) {
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        stop = 0;
        for (;;) {
            int flag = 0;

            if (tpm_engine_step(e, q, rank == 0 ? &st : NULL, &stop) != TPM_OK) {
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
            flag = rank == 0 ? done : 0;
            MPI_Bcast(&flag, 1, MPI_INT, 0, MPI_COMM_WORLD);
            if (flag) {
                break;
            }
        }
        if (rank == 0) {
            double tps = (n_tok - 1) / (job.t_done - job.t_first_token);

            wrong += n_tok != N;
            if (tps > best_tps) {
                best_tps = tps;
                prefill  = job.t_first_token - job.t_submit;
                share    = (cpu_seconds() - cpu_first) /
                        ((job.t_done - job.t_first_token) * (double)be->n_threads);
            }
        }
    }
    if (rank == 0) {
        double bound = bw_all[0] / wbytes_all;

        printf("M=%d threads=%d %s L=%d C=%d NH=%d V=%d: weights read per token %.1f MiB, node "
               "bandwidth read %.2f GB/s (memcpy %.2f GB/s), bound %.1f tok/s; decode %.1f tok/s "
               "(%.0f%% of bound), prefill of %d tokens %.1f ms (%.0f tok/s), #wrong %d; load "
               "%.1f, rank 0 CPU share %.2f\n",
               size, threads, tpm_wdtype_name(o.wdt), cfg.L, cfg.C, cfg.NH, cfg.V,
               wbytes_all / 1048576.0, bw_all[0] / 1e9, bw_all[1] / 1e9, bound, best_tps,
               100.0 * best_tps / bound, P, prefill * 1e3, P / prefill, wrong, load, share);
        printf("csv,%d,%d,%s,%d,%d,%d,%d,%.0f,%.3f,%.3f,%.2f,%.2f,%.2f,%.1f,%d,%.2f,%.2f\n", size,
               threads, tpm_wdtype_name(o.wdt), cfg.L, cfg.C, cfg.NH, cfg.V, wbytes_all,
               bw_all[0] / 1e9, bw_all[1] / 1e9, bound, best_tps, prefill * 1e3, P / prefill,
               wrong, load, share);
    }
    st.stop = 1; /* one more step tells every rank to leave */
    stop    = 0;
    while (!stop) {
        tpm_engine_step(e, q, rank == 0 ? &st : NULL, &stop);
    }
    free(prompt);
    tpm_serve_queue_destroy(q);
    tpm_engine_destroy(e);
    tpm_tokenizer_destroy(tok);
    tpm_backend_destroy(be);
    tpm_comm_destroy(comm);
    MPI_Finalize();
    return wrong == 0 ? 0 : 1;
}
