/* SPDX-License-Identifier: MIT */
/*
 * test_swap_policy.c: the engine's weight swap (engine.h, tpm_engine_set_swap_hook) and
 * --swap-policy=recompute, at any rank count under mpirun, without HTTP:
 *
 *   test_swap_policy --tokenizer=FILE [--threads=N]
 *
 * Two random `tiny` models A (seed 1, the front buffer) and B (seed 2, the back buffer), their
 * matrices scaled up so that attention is sharp and the KV cache matters. A
 * greedy job runs on A; once it has K tokens every rank reports ready and the engine swaps
 * at the start of the next iteration, on every rank. With recompute the job's tokens so far
 * are fed again on B, so its continuation must be exactly the greedy continuation that a
 * fresh engine holding only B gives for the prompt + the tokens generated before the swap.
 * With keep the job goes on with A's KV cache on B's weights; it must still finish and its
 * tokens before the swap are A's, and its continuation must differ from recompute's (else
 * this test could not tell the two policies apart). Rank 0 prints "N passed, N failed".
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "comm/comm.h"
#include "core/model_tp.h"
#include "data/tokenizer.h"
#include "serve/engine.h"

#include "mpi_check.h"

#define MAXGEN 24
#define K      6

typedef struct {
    tpm_serve_job_t job;
    int32_t         prompt[64];
    int32_t         toks[MAXGEN];
    int             ntok, done;
} rec_t;

typedef struct {
    tpm_tp_model_t *m;
    rec_t          *r;
    int             rank, swapped, n_at_swap;
} hook_ctx_t;

static void on_token(tpm_serve_job_t *job, int32_t token, const char *text, size_t len)
{
    rec_t *r = job->user;

    (void)text;
    (void)len;
    if (r->ntok < MAXGEN) {
        r->toks[r->ntok] = token;
    }
    r->ntok++;
}

static void on_done(tpm_serve_job_t *job, tpm_finish_t finish)
{
    rec_t *r = job->user;

    (void)finish;
    r->done++;
}

static int hook_ready(void *ctx)
{
    hook_ctx_t *h = ctx;

    if (h->swapped) {
        return 0;
    }
    return h->rank != 0 || h->r->ntok >= K;
}

static void hook_swap(void *ctx)
{
    hook_ctx_t *h = ctx;

    tpm_tp_swap(h->m);
    h->swapped   = 1;
    h->n_at_swap = h->r->ntok;
}

static void set_job(rec_t *r, const int32_t *prompt, int n, int max)
{
    memset(r, 0, sizeof(*r));
    memcpy(r->prompt, prompt, (size_t)n * sizeof(int32_t));
    r->job.prompt      = r->prompt;
    r->job.n_prompt    = n;
    r->job.max_tokens  = max;
    r->job.temperature = 0.0f;
    r->job.top_p       = 1.0f;
    r->job.on_token    = on_token;
    r->job.on_done     = on_done;
    r->job.user        = r;
}

/* run one job to its end on engine e (rank 0 decides when to stop) */
static void run_job(tpm_engine_t *e, int rank, rec_t *r, int n_slots)
{
    tpm_serve_queue_t *q = NULL;
    tpm_serve_stats_t  st;
    int                stop = 0;

    memset(&st, 0, sizeof(st));
    if (rank == 0) {
        if (tpm_serve_queue_create(4, &q) != TPM_OK) {
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        tpm_serve_queue_set_free(q, n_slots);
        if (tpm_serve_queue_push(q, &r->job) != TPM_OK) {
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
    }
    while (!stop) {
        if (tpm_engine_step(e, q, rank == 0 ? &st : NULL, &stop) != TPM_OK) {
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        if (rank == 0 && r->done > 0) {
            st.stop = 1;
        }
    }
    tpm_serve_queue_destroy(q);
}

/*
 * Random initial weights (std 0.02) barely use attention: the next token follows from the
 * current one, and the KV cache hardly matters. Scaling the matrices up makes the attention
 * sharp, so that a cache computed with other weights changes the continuation. CPU backend:
 * the slices are host memory.
 */
static void sharpen(tpm_tp_model_t *m, uint64_t seed)
{
    if (tpm_tp_init_params(m, seed) != TPM_OK) {
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (int g = 0; g < tpm_model_n_groups(&m->cfg); g++) {
        for (int t = 0; t < TPM_GROUP_MAX_NT; t++) {
            tpm_tp_slice_t *sl = tpm_tp_slice(m, g, t);

            if (sl->data == NULL || sl->cols <= 1) {
                continue;
            }
            for (int64_t i = 0; i < sl->nrows * sl->cols; i++) {
                sl->data[i] *= 12.0f;
            }
        }
    }
}

/* an engine with A in front and B in the back (or only B when @p only_b) */
static tpm_engine_t *make_engine(tpm_backend_t *be, tpm_comm_t *comm, const tpm_model_config_t *cfg,
                                 const tpm_engine_opts_t *o, const tpm_tokenizer_t *tok, int only_b)
{
    tpm_engine_t   *e = NULL;
    tpm_tp_model_t *m;

    if (tpm_engine_create(be, comm, cfg, o, tok, &e) != TPM_OK) {
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    m = tpm_engine_model(e);
    if (only_b) {
        sharpen(m, 2);
        return e;
    }
    /* init writes the front: fill the back with B through one swap, then the front with A */
    if (tpm_tp_back_create(m) != TPM_OK) {
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    tpm_tp_swap(m);
    sharpen(m, 2);
    tpm_tp_swap(m);
    sharpen(m, 1);
    return e;
}

int main(int argc, char **argv)
{
    tpm_model_config_t cfg       = {.L = 2, .C = 64, .NH = 4, .V = 0, .maxT = 64};
    tpm_engine_opts_t  o         = {.n_slots = 2, .ctx = 64, .max_tokens = 40, .n_batch = 0};
    const char        *tokf      = NULL;
    const int32_t      prompt[5] = {5, 17, 300, 42, 7};
    int                threads   = 1, provided, rank, rc;
    tpm_comm_t        *comm      = NULL;
    tpm_backend_t     *be        = NULL;
    tpm_tokenizer_t   *tok       = NULL;
    rec_t              keep, rec, ref;
    hook_ctx_t         hk, hr;

    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--tokenizer=", 12) == 0) {
            tokf = argv[i] + 12;
        } else if (strncmp(argv[i], "--threads=", 10) == 0) {
            threads = atoi(argv[i] + 10);
        } else {
            fprintf(stderr, "usage: %s --tokenizer=FILE [--threads=N]\n", argv[0]);
            return 2;
        }
    }
    if (tokf == NULL) {
        fprintf(stderr, "usage: %s --tokenizer=FILE [--threads=N]\n", argv[0]);
        return 2;
    }
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    tpm_log_set_rank(rank);
    tpm_set_abort_hook(mc_abort_hook);
    if (tpm_comm_mpi_create(0, &comm) != TPM_OK || tpm_backend_create("cpu", threads, &be) ||
        tpm_tokenizer_load(tokf, &tok) != TPM_OK) {
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    cfg.V = tpm_tokenizer_vocab_size(tok);
    if (tpm_model_config_finish(&cfg) != TPM_OK) {
        MPI_Abort(MPI_COMM_WORLD, 1);
    }

    for (int policy = 0; policy < 2; policy++) { /* 0: keep, 1: recompute */
        rec_t                 *r = policy ? &rec : &keep;
        hook_ctx_t            *h = policy ? &hr : &hk;
        tpm_engine_t          *e = make_engine(be, comm, &cfg, &o, tok, 0);
        tpm_engine_swap_hook_t hook = {0};

        set_job(r, prompt, 5, MAXGEN);
        memset(h, 0, sizeof(*h));
        h->m       = tpm_engine_model(e);
        h->r       = r;
        h->rank    = rank;
        hook.ctx   = h;
        hook.ready = hook_ready;
        hook.swap  = hook_swap;
        tpm_engine_set_swap_hook(e, &hook, policy);
        run_job(e, rank, r, o.n_slots);
        mc_check_all(h->swapped, "every rank swapped");
        tpm_engine_destroy(e);
    }
    if (rank == 0) {
        mc_check(rec.ntok == MAXGEN && keep.ntok == MAXGEN,
                 "the jobs did not run to max_tokens (%d, %d tokens)", rec.ntok, keep.ntok);
        mc_check(hr.n_at_swap >= K && hr.n_at_swap < MAXGEN - 2, "swap after %d tokens",
                 hr.n_at_swap);
        mc_check(memcmp(rec.toks, keep.toks, (size_t)K * sizeof(int32_t)) == 0,
                 "the tokens before the swap are not the same under both policies");
    }
    {
        /* the reference: only B, prompt + the tokens generated on A before the swap */
        int32_t       p2[64];
        int           n2 = 5, nb = hr.n_at_swap;
        tpm_engine_t *e = make_engine(be, comm, &cfg, &o, tok, 1);

        MPI_Bcast(&nb, 1, MPI_INT, 0, MPI_COMM_WORLD);
        memcpy(p2, prompt, sizeof(prompt));
        if (rank == 0) {
            memcpy(p2 + 5, rec.toks, (size_t)nb * sizeof(int32_t));
        }
        n2 += nb;
        set_job(&ref, p2, n2, MAXGEN - nb);
        run_job(e, rank, &ref, o.n_slots);
        tpm_engine_destroy(e);
        if (rank == 0) {
            int same = ref.ntok == MAXGEN - nb &&
                       memcmp(ref.toks, rec.toks + nb, (size_t)ref.ntok * sizeof(int32_t)) == 0;
            int keep_same =
                memcmp(keep.toks + nb, rec.toks + nb, (size_t)(MAXGEN - nb) * sizeof(int32_t)) == 0;

            mc_check(same, "recompute: the continuation after the swap is not B's greedy "
                           "continuation of the prompt and the tokens before it");
            mc_check(!keep_same, "keep and recompute continue alike: the test cannot tell them "
                                 "apart (sharpen the weights more)");
            printf("swap after %d tokens; recompute continuation %s B's reference; keep "
                   "continuation %s recompute's\n",
                   nb, same ? "equals" : "differs from", keep_same ? "equals" : "differs from");
        }
    }
    rc = mc_report("");
    tpm_tokenizer_destroy(tok);
    tpm_backend_destroy(be);
    tpm_comm_destroy(comm);
    MPI_Finalize();
    return rc;
}
