/* SPDX-License-Identifier: MIT */
/*
 * test_serve_engine.c: the serving engine end to end without HTTP: rank 0 submits jobs to
 * the queue (more jobs than slots, prompts longer than a prefill chunk), every rank runs
 * the lockstep loop, and rank 0 checks the callback contract of engine.h and the finish
 * reasons: greedy and seeded sampling, end-of-text, max_tokens, a full context, a stop
 * string (cut off, job finished with TPM_FINISH_STOP), a cancelled job, an empty prompt and
 * an invalid one (TPM_FINISH_ERROR, no abort). It writes every job's tokens and text to
 * --out, so that runs at several rank counts can be compared byte for byte.
 *
 *   test_serve_engine --ckpt=FILE|DIR --out=FILE [--threads=N]
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "base/mem.h"
#include "ckpt/ckpt.h"
#include "comm/comm.h"
#include "data/tokenizer.h"
#include "serve/engine.h"

#include "mpi_check.h"

#define MAXGEN  128
#define NJOBS   8
#define TEXTCAP 8192

typedef struct {
    tpm_serve_job_t job;
    int             id;
    int32_t         toks[MAXGEN];
    int             ntok;
    char            text[TEXTCAP];
    size_t          tlen;
    int             n_done;
    tpm_finish_t    fin;
    int             cancel_after; /* set job->cancel after this many tokens (0: never) */
    /* on_logprob calls, in order */
    int   n_lp, lp_bad;
    int   lp_idx[MAXGEN], lp_tok[MAXGEN], lp_top0[MAXGEN];
    float lp[MAXGEN], lp_top0_lp[MAXGEN];
} rec_t;

static void check(int ok, const char *what, int id)
{
    mc_check(ok, "job %d: %s", id, what);
}

static void on_token(tpm_serve_job_t *job, int32_t token, const char *text, size_t len)
{
    rec_t *r = job->user;

    if (r->ntok < MAXGEN) {
        r->toks[r->ntok] = token;
    }
    r->ntok++;
    if (r->tlen + len <= TEXTCAP) {
        memcpy(r->text + r->tlen, text, len);
        r->tlen += len;
    }
    if (r->cancel_after > 0 && r->ntok == r->cancel_after) {
        job->cancel = 1;
    }
}

static void on_logprob(tpm_serve_job_t *job, int index, int32_t token, float lp, int n_top,
                       const int32_t *top_ids, const float *top_lp)
{
    rec_t *r = job->user;

    if (n_top != job->top_logprobs || !(lp <= 0.0f) || !isfinite(lp)) {
        r->lp_bad++;
    }
    for (int k = 1; k < n_top; k++) {
        r->lp_bad += top_lp[k] > top_lp[k - 1];
    }
    if (r->n_lp < MAXGEN) {
        r->lp_idx[r->n_lp]     = index;
        r->lp_tok[r->n_lp]     = token;
        r->lp[r->n_lp]         = lp;
        r->lp_top0[r->n_lp]    = n_top > 0 ? top_ids[0] : -1;
        r->lp_top0_lp[r->n_lp] = n_top > 0 ? top_lp[0] : 0.0f;
    }
    r->n_lp++;
}

static void on_done(tpm_serve_job_t *job, tpm_finish_t finish)
{
    rec_t *r = job->user;

    r->n_done++;
    r->fin = finish;
}

static void set_job(rec_t *r, int id, const tpm_tokenizer_t *tok, const char *prompt, int max,
                    float temp, int top_k, float top_p, uint64_t seed)
{
    size_t n = 0;

    memset(r, 0, sizeof(*r));
    r->id = id;
    tpm_tokenizer_encode(tok, prompt, strlen(prompt), NULL, 0, &n);
    r->job.prompt = calloc(n + 1, sizeof(int32_t));
    tpm_tokenizer_encode(tok, prompt, strlen(prompt), r->job.prompt, n, &n);
    r->job.n_prompt    = (int)n;
    r->job.max_tokens  = max;
    r->job.temperature = temp;
    r->job.top_k       = top_k;
    r->job.top_p       = top_p;
    r->job.seed        = seed;
    r->job.on_token    = on_token;
    r->job.on_done     = on_done;
    r->job.user        = r;
}

/* the text of a job's tokens as the tokenizer decodes it */
static int text_matches_tokens(const tpm_tokenizer_t *tok, const rec_t *r)
{
    char   buf[TEXTCAP];
    size_t n = 0;

    if (tpm_tokenizer_decode(tok, r->toks, (size_t)r->ntok, buf, sizeof(buf), &n) != TPM_OK) {
        return 0;
    }
    return n == r->tlen && memcmp(buf, r->text, n) == 0;
}

static void write_job(FILE *f, const rec_t *r)
{
    fprintf(f, "job %d finish %d tokens %d:", r->id, (int)r->fin, r->ntok);
    for (int i = 0; i < r->ntok && i < MAXGEN; i++) {
        fprintf(f, " %d", (int)r->toks[i]);
    }
    fprintf(f, "\ntext %d: ", r->id);
    for (size_t i = 0; i < r->tlen; i++) {
        unsigned char ch = (unsigned char)r->text[i];

        fprintf(f, ch >= 32 && ch < 127 && ch != '\\' ? "%c" : "\\x%02x", ch);
    }
    fprintf(f, "\n");
}

int main(int argc, char **argv)
{
    const char        *ckpt = NULL, *out = NULL;
    char               path[1024];
    int                threads = 1, provided, rank, stop = 0, phase = 1;
    tpm_comm_t        *comm = NULL;
    tpm_backend_t     *be   = NULL;
    tpm_ckpt_t        *ck   = NULL;
    tpm_tokenizer_t   *tok  = NULL;
    tpm_engine_t      *e    = NULL;
    tpm_serve_queue_t *q    = NULL;
    tpm_serve_stats_t  st;
    tpm_model_config_t cfg;
    tpm_engine_opts_t  o = {.n_slots = 2, .max_tokens = 64, .n_batch = 2 + 8};
    static rec_t       r[NJOBS + 2]; /* 0..7, 8: cancelled before it runs, 9: echo logprobs */
    char               stop_str[8] = "";
    const char        *expect_end  = NULL;
    int                rc;

    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--ckpt=", 7) == 0) {
            ckpt = argv[i] + 7;
        } else if (strncmp(argv[i], "--out=", 6) == 0) {
            out = argv[i] + 6;
        } else if (strncmp(argv[i], "--threads=", 10) == 0) {
            threads = atoi(argv[i] + 10);
        }
    }
    if (ckpt == NULL || out == NULL) {
        fprintf(stderr, "usage: %s --ckpt=FILE|DIR --out=FILE [--threads=N]\n", argv[0]);
        return 2;
    }
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    tpm_log_set_rank(rank);
    memset(&st, 0, sizeof(st));
    if (tpm_comm_mpi_create(0, &comm) != TPM_OK || tpm_backend_create("cpu", threads, &be) ||
        tpm_ckpt_resolve(ckpt, path, sizeof(path)) != TPM_OK ||
        tpm_ckpt_open(comm, path, &ck) != TPM_OK) {
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    cfg   = tpm_ckpt_meta(ck)->model;
    o.ctx = cfg.maxT;
    if (tpm_model_config_finish(&cfg) != TPM_OK ||
        (rank == 0 && tpm_tokenizer_from_bytes(tpm_ckpt_meta(ck)->tokenizer,
                                               tpm_ckpt_meta(ck)->tokenizer_len, &tok)) ||
        tpm_engine_create(be, comm, &cfg, &o, tok, &e) != TPM_OK ||
        tpm_engine_load(e, ck) != TPM_OK) {
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    tpm_ckpt_close(ck);

    if (rank == 0) {
        static char longp[1024];
        size_t      nl = 0;

        /* a prompt of 44 or more tokens: several prefill chunks, little room left to fill */
        while (nl < 44 && strlen(longp) + 40 < sizeof(longp)) {
            strcat(longp, "A fortune is a short saying. ");
            tpm_tokenizer_encode(tok, longp, strlen(longp), NULL, 0, &nl);
        }

        tpm_serve_queue_create(16, &q);
        tpm_serve_queue_set_free(q, o.n_slots);
        set_job(&r[0], 0, tok, "The quick brown fox", 20, 0.0f, 0, 1.0f, 0);
        set_job(&r[1], 1, tok, longp, 60, 0.0f, 0, 1.0f, 0);
        set_job(&r[2], 2, tok, "", 12, 0.0f, 0, 1.0f, 0);
        set_job(&r[3], 3, tok, "Hello", 16, 0.8f, 40, 0.9f, 1234);
        set_job(&r[4], 4, tok, "Hello", 16, 1.0f, 0, 1.0f, 99);
        set_job(&r[5], 5, tok, "Once upon a time", 30, 0.0f, 0, 1.0f, 0);
        r[5].cancel_after = 2;
        set_job(&r[6], 6, tok, "x", 8, 0.0f, 0, 1.0f, 0);
        r[6].job.prompt[0] = cfg.V + 5; /* not a token of the model */
        set_job(&r[8], 8, tok, "cancelled while queued", 8, 0.0f, 0, 1.0f, 0);
        r[8].job.cancel = 1;
        set_job(&r[7], 7, tok, "The quick brown fox", 20, 0.0f, 0, 1.0f, 0);
        /* job 0's prompt again, with echo and log-probabilities (top 3) */
        set_job(&r[9], 9, tok, "The quick brown fox", 5, 0.0f, 0, 1.0f, 0);
        r[9].job.logprobs     = 1;
        r[9].job.top_logprobs = 3;
        r[9].job.echo         = 1;
        r[9].job.on_logprob   = on_logprob;
        if (r[1].job.n_prompt < 40 || r[1].job.n_prompt >= o.ctx) {
            fprintf(stderr, "the long prompt has %d tokens: adjust the test\n", r[1].job.n_prompt);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        for (int j = 0; j < NJOBS - 1; j++) { /* job 7 comes when job 0 is known */
            check(tpm_serve_queue_push(q, &r[j].job) == TPM_OK, "push refused", j);
        }
        check(tpm_serve_queue_push(q, &r[8].job) == TPM_OK, "push refused", 8);
        check(tpm_serve_queue_push(q, &r[9].job) == TPM_OK, "push refused", 9);
    }

    while (!stop) {
        if (tpm_engine_step(e, q, rank == 0 ? &st : NULL, &stop) != TPM_OK) {
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        if (rank != 0) {
            continue;
        }
        if (phase == 1) {
            int all = 1;

            for (int j = 0; j <= NJOBS + 1; j++) {
                all &= j == 7 || r[j].n_done > 0;
            }
            if (all) {
                /* a stop string from the middle of job 0's text: job 7 (the same prompt,
                 * greedy) must end just before its first occurrence */
                if (r[0].tlen >= 8) {
                    memcpy(stop_str, r[0].text + r[0].tlen / 2, 3);
                    r[7].job.stop[0] = stop_str;
                    expect_end       = memmem(r[0].text, r[0].tlen, stop_str, 3);
                }
                check(tpm_serve_queue_push(q, &r[7].job) == TPM_OK, "push refused", 7);
                phase = 2;
            }
        } else if (r[7].n_done > 0) {
            st.stop = 1;
        }
    }

    if (rank == 0) {
        FILE    *f     = fopen(out, "w");
        uint64_t total = 0;

        for (int j = 0; j < NJOBS; j++) {
            check(r[j].n_done == 1, "on_done not called exactly once", j);
            check(r[j].job.n_generated == r[j].ntok, "n_generated is not the on_token count", j);
            total += (uint64_t)r[j].ntok;
            if (r[j].ntok > 0) {
                check(r[j].job.t_first_token >= r[j].job.t_submit &&
                          r[j].job.t_done >= r[j].job.t_first_token,
                      "timestamps out of order", j);
            }
            if (j != 6 && j != 7) {
                check(r[j].fin != TPM_FINISH_ERROR, "finished with an error", j);
                check(text_matches_tokens(tok, &r[j]), "text is not the decoded tokens", j);
            }
            if (f != NULL && j != 5 && j != 6) {
                write_job(f, &r[j]);
            }
        }
        check(r[0].ntok <= 20, "more than max_tokens", 0);
        check(r[0].fin == TPM_FINISH_STOP || r[0].ntok == 20, "stopped early without a reason", 0);
        /* context 64: at most 64 - n_prompt + 1 tokens */
        check(r[1].ntok <= o.ctx - r[1].job.n_prompt + 1, "generated past the context", 1);
        check(r[1].fin == TPM_FINISH_STOP || r[1].ntok == o.ctx - r[1].job.n_prompt + 1,
              "did not fill the context", 1);
        check(r[1].fin != TPM_FINISH_LENGTH || r[1].toks[r[1].ntok - 1] != tpm_tokenizer_eot(tok),
              "LENGTH after an end-of-text token", 1);
        check(r[2].ntok >= 1 && r[2].ntok <= 12, "empty prompt not served", 2);
        /* cancelled in flight after 2 tokens, unless the model ended the text before */
        check((r[5].fin == TPM_FINISH_CANCELLED && r[5].ntok == 2) ||
                  (r[5].fin == TPM_FINISH_STOP && r[5].ntok <= 2 &&
                   r[5].toks[r[5].ntok - 1] == tpm_tokenizer_eot(tok)),
              "not cancelled after 2 tokens", 5);
        check(r[8].n_done == 1 && r[8].fin == TPM_FINISH_CANCELLED && r[8].ntok == 0,
              "cancelled while queued but not finished as cancelled", 8);
        check(r[6].fin == TPM_FINISH_ERROR && r[6].ntok == 0, "bad token id not refused", 6);
        if (expect_end != NULL) {
            size_t want = (size_t)(expect_end - r[0].text);

            check(r[7].fin == TPM_FINISH_STOP, "stop string did not stop", 7);
            check(r[7].tlen == want && memcmp(r[7].text, r[0].text, want) == 0,
                  "text is not job 0's up to the stop string", 7);
        }
        /* echo: prompt tokens 1..p-1, then each generated token, in order; greedy: the
         * generated token is the most likely one, and the same as job 0's */
        {
            const rec_t *e9 = &r[9];
            int          p = e9->job.n_prompt, ok = e9->lp_bad == 0 && e9->fin != TPM_FINISH_ERROR;

            ok = ok && e9->n_lp == p - 1 + e9->ntok && e9->ntok >= 1;
            for (int i = 0; ok && i < e9->n_lp; i++) {
                ok = e9->lp_idx[i] == i + 1;
                if (ok && i < p - 1) {
                    ok = e9->lp_tok[i] == e9->job.prompt[i + 1];
                } else if (ok) {
                    ok = e9->lp_tok[i] == e9->toks[i - (p - 1)] &&
                         e9->lp_top0[i] == e9->lp_tok[i] && e9->lp_top0_lp[i] == e9->lp[i] &&
                         e9->lp_tok[i] == r[0].toks[i - (p - 1)];
                }
            }
            check(ok, "echo log-probabilities: indices, tokens, greedy = top 1, = job 0", 9);
            total += (uint64_t)e9->ntok;
            if (ok) {
                printf("M=%d: echo log-probabilities of job 9:", comm->size);
                for (int i = 0; i < e9->n_lp; i++) {
                    printf(" %.4f", e9->lp[i]);
                }
                printf("\n");
            }
        }
        check(st.generated_tokens == total, "generated_tokens counter", -1);
        check(st.running == 0 && tpm_serve_queue_len(q) == 0, "jobs left over", -1);
        if (f == NULL || fclose(f) != 0) {
            check(0, "cannot write --out", -1);
        }
        printf("M=%d: %llu prompt tokens, %llu generated; job 0: \"%.*s\"\n", comm->size,
               (unsigned long long)st.prompt_tokens, (unsigned long long)st.generated_tokens,
               (int)r[0].tlen, r[0].text);
    }
    rc = mc_report("");
    if (rank == 0) {
        for (int j = 0; j <= NJOBS + 1; j++) {
            free(r[j].job.prompt);
        }
    }
    tpm_serve_queue_destroy(q);
    tpm_engine_destroy(e);
    tpm_tokenizer_destroy(tok);
    tpm_backend_destroy(be);
    tpm_comm_destroy(comm);
    MPI_Finalize();
    return rc;
}
