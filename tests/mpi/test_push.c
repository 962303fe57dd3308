/* SPDX-License-Identifier: MIT */
/*
 * test_push.c: a live weight push (--mode=trainserve's exchange, train/push.h and
 * serve/swap.h) between a training group of NT ranks (ZeRO-3) and a serving group of M ranks
 * (tensor parallel), run under mpirun with NT + M ranks:
 *
 *   test_push --serve=M [--push-dtype=fp32|bf16] [--unpack-budget=BYTES] [--threads=N]
 *
 * Two rounds: the trainer takes an AdamW step on random tokens (so the weights are no longer
 * the initial ones), pushes, and runs the training forward pass (tpm_zero3_forward) over a
 * fixed sequence; training rank 0 sends those logits to serving rank 0. The serving ranks
 * wait for their receives, swap, run the tensor-parallel forward over the same sequence and
 * compare every row over the first V columns: max |serve - train| / max |train| <= 1e-5
 * (fp32; bf16 pushes round the weights, so there the bound is 2e-2). The second round also
 * checks that the served logits moved away from the first round's (the swap happened), and
 * the push protocol's end (STOP, BYE) must complete on both sides. A small --unpack-budget
 * makes the servers unpack each push over many polls, as the engine does for a large model. Rank 0
 * prints "N passed, N failed".
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "base/mem.h"
#include "base/rng.h"
#include "comm/comm.h"
#include "core/model.h"
#include "core/model_tp.h"
#include "core/reshard.h"
#include "serve/swap.h"
#include "train/push.h"
#include "zero3/zero3.h"

#include "mpi_check.h"

#define T       32
#define ROUNDS  2
#define TAG_REF 99

static void die(const char *what)
{
    fprintf(stderr, "test_push: %s failed\n", what);
    MPI_Abort(MPI_COMM_WORLD, 1);
}

/* normalised error of one row, first V columns */
static double row_err(const float *got, const float *ref, int V)
{
    double emax = 0.0, rmax = 0.0;

    for (int i = 0; i < V; i++) {
        if (!isfinite(got[i])) {
            return INFINITY;
        }
        emax = fmax(emax, fabs((double)got[i] - ref[i]));
        rmax = fmax(rmax, fabs((double)ref[i]));
    }
    return rmax > 0.0 ? emax / rmax : emax;
}

static void train_side(tpm_backend_t *be, tpm_comm_t *group, const tpm_push_link_t *link,
                       const tpm_model_config_t *cfg, const int32_t *seq)
{
    tpm_zero3_t  *z = NULL;
    tpm_pusher_t *p = NULL;
    int32_t       x[T], y[T];
    float         loss;
    double        norm;
    uint64_t      k = 0;

    if (tpm_zero3_create(be, group, cfg, 1, T, &z) != TPM_OK ||
        tpm_zero3_init_params(z, 7) != TPM_OK || tpm_pusher_create(link, z, &p) != TPM_OK) {
        die("trainer set-up");
    }
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < T; i++) {
            x[i] = (int32_t)(tpm_rng_u64(11, (uint64_t)group->rank, k++) % (uint64_t)cfg->V);
            y[i] = (int32_t)(tpm_rng_u64(11, (uint64_t)group->rank, k++) % (uint64_t)cfg->V);
        }
        if (tpm_zero3_zero_grad(z) != TPM_OK ||
            tpm_zero3_fwd_bwd(z, x, y, 1.0f / (float)group->size, &loss) != TPM_OK ||
            tpm_zero3_grad_norm(z, &norm) != TPM_OK ||
            tpm_zero3_adamw(z, 3e-2f, 0.9f, 0.95f, 1e-8f, 0.0f, 1.0f, r + 1) != TPM_OK) {
            die("training step");
        }
        if (tpm_pusher_start(p, r + 1) != TPM_OK) {
            die("push");
        }
        /* the training forward on the weights just pushed (AdamW runs only after the next
         * fwd_bwd, so they are still the same) */
        if (tpm_zero3_forward(z, seq, y, &loss) != TPM_OK) {
            die("training forward");
        }
        if (group->rank == 0 &&
            tpm_comm_send(link->world, z->acts->logits, (size_t)T * (size_t)cfg->Vp, TPM_DT_FLOAT,
                          link->n_train, TAG_REF, NULL) != TPM_OK) {
            die("reference send");
        }
    }
    if (tpm_pusher_finish(p, 0, TPM_OK) != TPM_OK) {
        die("push protocol end (trainer)");
    }
    mc_check(tpm_pusher_stats(p)->pushes == ROUNDS, "trainer counted %llu pushes",
             (unsigned long long)tpm_pusher_stats(p)->pushes);
    tpm_pusher_destroy(p);
    tpm_zero3_destroy(z);
}

static void serve_side(tpm_backend_t *be, tpm_comm_t *group, const tpm_push_link_t *link,
                       const tpm_model_config_t *cfg, const int32_t *seq, double tol, size_t budget)
{
    const struct timespec nap = {0, 1000 * 1000};
    tpm_tp_model_t       *m   = NULL;
    tpm_swapper_t        *s   = NULL;
    int32_t               slot[T], pos[T], rows[T];
    float                *ref = NULL, *prev = NULL;
    const float          *lg = NULL;

    if (tpm_tp_create(be, group, cfg, 1, T, T, T, &m) != TPM_OK ||
        tpm_swapper_create(link, group->rank, m, NULL, &s) != TPM_OK) {
        die("server set-up");
    }
    if (budget > 0) {
        tpm_swapper_set_unpack_budget(s, budget);
    }
    ref  = calloc((size_t)T * (size_t)cfg->Vp, sizeof(float));
    prev = calloc((size_t)T * (size_t)cfg->Vp, sizeof(float));
    if (ref == NULL || prev == NULL) {
        die("allocation");
    }
    for (int i = 0; i < T; i++) {
        slot[i] = 0;
        pos[i]  = i;
        rows[i] = i;
    }
    for (int r = 0; r < ROUNDS; r++) {
        double worst = 0.0, moved = 0.0;

        /* keep polling, as the engine would between iterations, until this rank is ready */
        while (!tpm_swapper_ready(s)) {
            nanosleep(&nap, NULL);
        }
        if (tpm_comm_barrier(group) != TPM_OK) { /* every serving rank is ready */
            die("barrier");
        }
        tpm_swapper_swap(s);
        mc_check(tpm_swapper_weights_step(s) == r + 1, "round %d: weights step %lld", r,
                 (long long)tpm_swapper_weights_step(s));
        if (tpm_tp_forward(m, T, seq, slot, pos, T, rows, &lg) != TPM_OK) {
            die("serving forward");
        }
        if (group->rank != 0) {
            continue;
        }
        if (tpm_comm_recv(link->world, ref, (size_t)T * (size_t)cfg->Vp, TPM_DT_FLOAT, 0, TAG_REF,
                          NULL) != TPM_OK) {
            die("reference receive");
        }
        for (int i = 0; i < T; i++) {
            worst =
                fmax(worst, row_err(lg + (size_t)i * cfg->Vp, ref + (size_t)i * cfg->Vp, cfg->V));
            if (r > 0) {
                moved = fmax(moved,
                             row_err(lg + (size_t)i * cfg->Vp, prev + (size_t)i * cfg->Vp, cfg->V));
            }
        }
        mc_check(worst <= tol, "round %d: served logits differ from the training forward by %.3g",
                 r, worst);
        mc_check(r == 0 || moved > 10 * tol,
                 "round %d: the served logits did not change after the push (%.3g)", r, moved);
        printf("round %d: %d train -> %d serve ranks, normalised error %.3g, change from the "
               "last round %.3g\n",
               r, link->n_train, link->n_serve, worst, moved);
        fflush(stdout);
        memcpy(prev, lg, (size_t)T * (size_t)cfg->Vp * sizeof(float));
    }
    if (tpm_swapper_drain(s, TPM_OK) != TPM_OK) {
        die("push protocol end (server)");
    }
    mc_check(tpm_swapper_bye(s) && tpm_swapper_bye_status(s) == TPM_OK, "no BYE from the trainer");
    free(ref);
    free(prev);
    tpm_swapper_destroy(s);
    tpm_tp_destroy(m);
}

int main(int argc, char **argv)
{
    tpm_model_config_t cfg = {.L = 2, .C = 64, .NH = 4, .V = 500, .maxT = 64};
    int                M = 1, threads = 1, bf16 = 0, provided, rank, size, serving, rc;
    size_t             budget = 0;
    tpm_comm_t        *world = NULL, *group = NULL;
    tpm_backend_t     *be = NULL;
    tpm_push_link_t    link;
    int32_t            seq[T];

    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--serve=", 8) == 0) {
            M = atoi(argv[i] + 8);
        } else if (strncmp(argv[i], "--threads=", 10) == 0) {
            threads = atoi(argv[i] + 10);
        } else if (strcmp(argv[i], "--push-dtype=bf16") == 0) {
            bf16 = 1;
        } else if (strcmp(argv[i], "--push-dtype=fp32") == 0) {
            bf16 = 0;
        } else if (strncmp(argv[i], "--unpack-budget=", 16) == 0) {
            budget = (size_t)strtoull(argv[i] + 16, NULL, 10);
        } else {
            fprintf(stderr,
                    "usage: %s --serve=M [--push-dtype=fp32|bf16] [--unpack-budget=BYTES] "
                    "[--threads=N]\n",
                    argv[0]);
            return 2;
        }
    }
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    tpm_log_set_rank(rank);
    tpm_set_abort_hook(mc_abort_hook);
    if (M < 1 || M >= size) {
        if (rank == 0) {
            fprintf(stderr, "test_push: --serve=%d needs 1 <= M < %d ranks\n", M, size);
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
    for (int i = 0; i < T; i++) {
        seq[i] = (int32_t)((i * 37 + 5) % cfg.V);
    }
    if (serving) {
        serve_side(be, group, &link, &cfg, seq, bf16 ? 2e-2 : 1e-5, budget);
    } else {
        train_side(be, group, &link, &cfg, seq);
    }
    tpm_comm_destroy(group);
    {
        /* the verdicts are made on both groups' ranks: rank 0 reports their sum */
        int mine[2] = {mc_pass, mc_fail}, all[2];

        MPI_Allreduce(mine, all, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
        mc_pass = all[0];
        mc_fail = all[1];
    }
    rc = mc_report("");
    tpm_comm_destroy(world);
    tpm_backend_destroy(be);
    MPI_Finalize();
    return rc;
}
