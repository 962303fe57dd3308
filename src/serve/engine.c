/* SPDX-License-Identifier: MIT */
/*
 * engine.c: the lockstep serving loop (engine.h): slot table, batch planning with chunked
 * prefill, the per-iteration descriptor exchange, sampling and stop handling on rank 0.
 *
 * Descriptor: a header of 4 int32 (tokens n, logit rows nl, stop flag, and each rank's own
 * "new weights ready" flag, which is why the header is an all-gather), then one
 * int32 array [token ids (n) | slots (n) | positions (n) | logit rows (nl)]. The header goes
 * out through a non-blocking all-gather (rank 0's entry counts) so that ranks waiting for
 * work can sleep between polls; the array follows with a broadcast.
 */
#include "serve/engine.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "base/mem.h"
#include "base/timer.h"
#include "core/sampler.h"

/* a waiting rank polls the header for this long before it starts sleeping between polls */
#define ENGINE_SPIN_S       0.005
#define ENGINE_SLEEP_MIN_NS 100000L  /* first sleep between polls: 0.1 ms */
#define ENGINE_SLEEP_MAX_NS 1000000L /* longest: 1 ms, the latency an idle rank adds */
/* how long an idle rank 0 sleeps on the queue before it sends an empty batch */
#define ENGINE_IDLE_WAIT_S 0.05

enum { HDR_N = 0, HDR_NL, HDR_STOP, HDR_READY, HDR_LEN = 4 };

typedef enum {
    SLOT_FREE = 0,
    SLOT_PREFILL, /* prompt tokens still to feed */
    SLOT_DECODE,  /* one sampled token to feed per iteration */
} slot_state_t;

typedef struct {
    tpm_serve_job_t *job;
    slot_state_t     state;
    const int32_t   *prompt; /* the job's prompt, or the end-of-text token for an empty one */
    int              n_prompt;
    int              n_past;  /* positions in the KV cache (prompt fed + tokens fed) */
    int              replay;  /* positions below it are fed again after a recompute swap: for
                                 the KV cache only (their echo and embedding rows are done) */
    int              max_gen; /* tokens this job may generate */
    int32_t          last;    /* sampled token to feed next (SLOT_DECODE) */
    int32_t         *gen;     /* (o.max_tokens) tokens generated so far, for the penalties */
    double          *emb;     /* (C) embedding jobs: the sum of the final layer norm's rows */
    int32_t         *hist;    /* (ctx) the tokens in the KV cache, by position */
    char            *hold;    /* generated text not passed on yet (hold_cap bytes) */
    size_t           hold_len;
} slot_t;

struct tpm_engine {
    tpm_backend_t         *be;
    tpm_comm_t            *comm;
    tpm_model_config_t     cfg;
    tpm_engine_opts_t      o;
    tpm_tp_model_t        *m;
    int32_t               *desc;      /* (4 n_batch) descriptor, every rank */
    int32_t               *hdr_all;   /* (world * HDR_LEN) all-gathered headers */
    int                    busy;      /* the last iteration ran tokens: the next header is near */
    tpm_engine_swap_hook_t hook;      /* weights arriving while serving (ready == NULL: none) */
    int                    recompute; /* --swap-policy=recompute */
    int                    swap_next; /* every rank was ready: swap at the next step's start */

    /* rank 0 */
    const tpm_tokenizer_t *tok;
    int32_t                eot;
    slot_t                *slots; /* (n_slots) */
    int                   *fifo;  /* (n_slots) slots in prefill, oldest admission first */
    int                    n_fifo;
    int                   *row_slot; /* (n_batch) logit row -> slot */
    int                   *row_echo; /* (n_batch) logit row -> position it scores the next
                                        prompt token of (echo), or -1: a row to sample from */
    char          *hold_mem;         /* n_slots * hold_cap */
    int32_t       *hist_mem;         /* n_slots * ctx */
    size_t         hold_cap;
    tpm_sampler_t *sampler;
    int32_t       *gen_mem; /* n_slots * o.max_tokens: the slots' gen arrays */
    int32_t       *counts;  /* (V) zeros: scratch of tpm_sampler_adjust */
    float         *adj;     /* (V) an adjusted copy of a logit row */
    double        *emb_mem; /* n_slots * C: the slots' emb sums */
    float         *emb_row; /* (C) one row of the final layer norm, on the host */
};

/* ---------------------------------------------------------------------------------------------- */
/* creation and loading */

tpm_status_t tpm_engine_create(tpm_backend_t *be, tpm_comm_t *comm, const tpm_model_config_t *cfg,
                               const tpm_engine_opts_t *opts, const tpm_tokenizer_t *tok,
                               tpm_engine_t **e_p)
{
    tpm_engine_t *e;
    tpm_status_t  status;
    size_t        max_tok_bytes = 0;
    const int     S             = opts->n_slots;

    if (S < 1 || opts->ctx < 1 || opts->max_tokens < 1 || opts->n_batch < 0 ||
        (opts->n_batch > 0 && opts->n_batch < S)) {
        tpm_log_error("serve engine: %d slots, context %d, max_tokens %d, batch %d: each must be "
                      "positive and the batch at least one token per slot",
                      S, opts->ctx, opts->max_tokens, opts->n_batch);
        return TPM_ERR_INVALID_ARG;
    }
    if (opts->ctx > cfg->maxT) {
        tpm_log_error("serve engine: context %d exceeds the model's %d positions", opts->ctx,
                      cfg->maxT);
        return TPM_ERR_INVALID_ARG;
    }
    if (comm->rank == 0 && tok == NULL) {
        tpm_log_error("serve engine: rank 0 needs the tokenizer");
        return TPM_ERR_INVALID_ARG;
    }
    TPM_CHECK(tpm_calloc(1, sizeof(*e), (void **)&e));
    e->be   = be;
    e->comm = comm;
    e->cfg  = *cfg;
    e->o    = *opts;
    if (e->o.n_batch == 0) {
        e->o.n_batch = S + TPM_ENGINE_PREFILL_CHUNK;
    }
    /* a logit row per token at most: echo requests score every prompt token */
    TPM_CHECK_GOTO(tpm_tp_create(be, comm, cfg, S, e->o.ctx, e->o.n_batch, e->o.n_batch, &e->m),
                   status, err);
    TPM_CHECK_GOTO(tpm_tp_set_weight_dtype(e->m, e->o.wdt), status, err);
    TPM_CHECK_GOTO(tpm_tp_set_kv_dtype(e->m, e->o.kv_bf16), status, err);
    TPM_CHECK_GOTO(tpm_calloc(4 * (size_t)e->o.n_batch, sizeof(int32_t), (void **)&e->desc), status,
                   err);
    TPM_CHECK_GOTO(tpm_calloc((size_t)comm->size * HDR_LEN, sizeof(int32_t), (void **)&e->hdr_all),
                   status, err);
    if (comm->rank != 0) {
        *e_p = e;
        return TPM_OK;
    }

    e->tok = tok;
    e->eot = tpm_tokenizer_eot(tok);
    if (e->eot < 0 || e->eot >= cfg->V) {
        tpm_log_error("serve engine: end-of-text token %d is outside the model's vocabulary %d",
                      (int)e->eot, cfg->V);
        status = TPM_ERR_FORMAT;
        goto err;
    }
    /* held text: a stop-string prefix + an unfinished UTF-8 sequence + one more token */
    for (int32_t id = 0; id < tpm_tokenizer_vocab_size(tok); id++) {
        size_t len = 0;

        if (tpm_tokenizer_token_bytes(tok, id, &len) != NULL && len > max_tok_bytes) {
            max_tok_bytes = len;
        }
    }
    e->hold_cap = TPM_ENGINE_MAX_STOP_BYTES + 4 + max_tok_bytes;
    TPM_CHECK_GOTO(tpm_calloc((size_t)S, sizeof(*e->slots), (void **)&e->slots), status, err);
    TPM_CHECK_GOTO(tpm_calloc((size_t)S, sizeof(int), (void **)&e->fifo), status, err);
    TPM_CHECK_GOTO(tpm_calloc((size_t)e->o.n_batch, sizeof(int), (void **)&e->row_slot), status,
                   err);
    TPM_CHECK_GOTO(tpm_calloc((size_t)e->o.n_batch, sizeof(int), (void **)&e->row_echo), status,
                   err);
    TPM_CHECK_GOTO(tpm_calloc((size_t)S, e->hold_cap, (void **)&e->hold_mem), status, err);
    TPM_CHECK_GOTO(
        tpm_calloc((size_t)S * (size_t)e->o.max_tokens, sizeof(int32_t), (void **)&e->gen_mem),
        status, err);
    TPM_CHECK_GOTO(tpm_calloc((size_t)cfg->V, sizeof(int32_t), (void **)&e->counts), status, err);
    TPM_CHECK_GOTO(tpm_calloc((size_t)cfg->V, sizeof(float), (void **)&e->adj), status, err);
    TPM_CHECK_GOTO(tpm_calloc((size_t)S * (size_t)cfg->C, sizeof(double), (void **)&e->emb_mem),
                   status, err);
    TPM_CHECK_GOTO(tpm_calloc((size_t)cfg->C, sizeof(float), (void **)&e->emb_row), status, err);
    TPM_CHECK_GOTO(tpm_calloc((size_t)S * (size_t)e->o.ctx, sizeof(int32_t), (void **)&e->hist_mem),
                   status, err);
    for (int s = 0; s < S; s++) {
        e->slots[s].hist = e->hist_mem + (size_t)s * (size_t)e->o.ctx;
        e->slots[s].hold = e->hold_mem + (size_t)s * e->hold_cap;
        e->slots[s].gen  = e->gen_mem + (size_t)s * (size_t)e->o.max_tokens;
        e->slots[s].emb  = e->emb_mem + (size_t)s * (size_t)cfg->C;
    }
    TPM_CHECK_GOTO(tpm_sampler_create(cfg->V, &e->sampler), status, err);
    *e_p = e;
    return TPM_OK;

err:
    tpm_engine_destroy(e);
    return status;
}

void tpm_engine_destroy(tpm_engine_t *e)
{
    if (e == NULL) {
        return;
    }
    tpm_sampler_destroy(e->sampler);
    tpm_free(e->hold_mem);
    tpm_free(e->gen_mem);
    tpm_free(e->counts);
    tpm_free(e->adj);
    tpm_free(e->emb_mem);
    tpm_free(e->emb_row);
    tpm_free(e->hist_mem);
    tpm_free(e->row_slot);
    tpm_free(e->row_echo);
    tpm_free(e->fifo);
    tpm_free(e->slots);
    tpm_free(e->hdr_all);
    tpm_free(e->desc);
    tpm_tp_destroy(e->m);
    tpm_free(e);
}

tpm_tp_model_t *tpm_engine_model(tpm_engine_t *e)
{
    return e->m;
}

tpm_status_t tpm_serve_load_model(tpm_tp_model_t *m, tpm_ckpt_t *ck)
{
    const tpm_ckpt_meta_t    *meta = tpm_ckpt_meta(ck);
    const tpm_model_config_t *mc   = &meta->model;
    tpm_tensor_io_t           src, dst;

    if (mc->L != m->cfg.L || mc->C != m->cfg.C || mc->NH != m->cfg.NH || mc->V != m->cfg.V ||
        mc->maxT != m->cfg.maxT) {
        tpm_log_error(
            "checkpoint model (L %d, C %d, NH %d, V %d, n_ctx %d) is not the one being served "
            "(L %d, C %d, NH %d, V %d, n_ctx %d)",
            mc->L, mc->C, mc->NH, mc->V, mc->maxT, m->cfg.L, m->cfg.C, m->cfg.NH, m->cfg.V,
            m->cfg.maxT);
        return TPM_ERR_FORMAT; /* same metadata on every rank: the same answer everywhere */
    }
    /* the same shape can be another architecture (a --watch reload): the whole definition */
    if (mc->arch != m->cfg.arch || mc->NKV != m->cfg.NKV || mc->F != m->cfg.F ||
        mc->tied != m->cfg.tied || mc->qkv_bias != m->cfg.qkv_bias ||
        mc->rms_eps != m->cfg.rms_eps || mc->rope_theta != m->cfg.rope_theta ||
        mc->rope.factor != m->cfg.rope.factor ||
        mc->rope.low_freq_factor != m->cfg.rope.low_freq_factor ||
        mc->rope.high_freq_factor != m->cfg.rope.high_freq_factor ||
        mc->rope.orig_ctx != m->cfg.rope.orig_ctx) {
        tpm_log_error("checkpoint model (%s, NKV %d, F %d, tied %d, qkv bias %d) is not the one "
                      "being served (%s, NKV %d, F %d, tied %d, qkv bias %d, or its norm or "
                      "rotary settings differ)",
                      tpm_arch_id_name(mc->arch), mc->NKV, mc->F, mc->tied, mc->qkv_bias,
                      tpm_arch_id_name(m->cfg.arch), m->cfg.NKV, m->cfg.F, m->cfg.tied,
                      m->cfg.qkv_bias);
        return TPM_ERR_FORMAT;
    }
    /* every rank reads its own rows of each tensor (collective over m->comm) */
    src = tpm_ckpt_tensor_io(ck);
    dst = tpm_tp_tensor_io(m);
    return tpm_tensor_copy(&m->cfg, m->comm, &src, &dst);
}

tpm_status_t tpm_engine_load(tpm_engine_t *e, tpm_ckpt_t *ck)
{
    return tpm_serve_load_model(e->m, ck);
}

/* ---------------------------------------------------------------------------------------------- */
/* rank 0: slots, admission, planning */

static void finish_slot(tpm_engine_t *e, int s, tpm_finish_t finish)
{
    slot_t          *sl  = &e->slots[s];
    tpm_serve_job_t *job = sl->job;

    if (sl->state == SLOT_PREFILL) {
        for (int i = 0; i < e->n_fifo; i++) {
            if (e->fifo[i] == s) {
                memmove(e->fifo + i, e->fifo + i + 1, (size_t)(e->n_fifo - i - 1) * sizeof(int));
                e->n_fifo--;
                break;
            }
        }
    }
    sl->job      = NULL;
    sl->state    = SLOT_FREE;
    sl->hold_len = 0;
    job->t_done  = tpm_time_now();
    if (job->on_done != NULL) {
        job->on_done(job, finish);
    }
}

static void finish_job_unadmitted(tpm_serve_job_t *job, tpm_finish_t finish)
{
    job->t_done = tpm_time_now();
    if (job->on_done != NULL) {
        job->on_done(job, finish);
    }
}

/* a bad job is answered with TPM_FINISH_ERROR, never an abort */
static int job_valid(const tpm_engine_t *e, const tpm_serve_job_t *job)
{
    if (job->n_prompt < 0 || (job->n_prompt > 0 && job->prompt == NULL) ||
        job->n_prompt > e->o.ctx) {
        tpm_log_warn("serve: rejected a job with a prompt of %d tokens (context %d)", job->n_prompt,
                     e->o.ctx);
        return 0;
    }
    for (int i = 0; i < job->n_prompt; i++) {
        if (job->prompt[i] < 0 || job->prompt[i] >= e->cfg.V) {
            tpm_log_warn("serve: rejected a job with token id %d (vocabulary %d)",
                         (int)job->prompt[i], e->cfg.V);
            return 0;
        }
    }
    for (int k = 0; k < TPM_SERVE_MAX_STOP && job->stop[k] != NULL; k++) {
        if (strlen(job->stop[k]) > TPM_ENGINE_MAX_STOP_BYTES) {
            tpm_log_warn("serve: rejected a job with a stop string over %d bytes",
                         TPM_ENGINE_MAX_STOP_BYTES);
            return 0;
        }
    }
    if (job->on_token == NULL || job->on_done == NULL ||
        (job->logprobs && job->on_logprob == NULL) || (job->embed && job->on_embedding == NULL)) {
        tpm_log_warn("serve: rejected a job without callbacks");
        return 0;
    }
    return 1;
}

static void admit(tpm_engine_t *e, tpm_serve_queue_t *q, tpm_serve_stats_t *st)
{
    int n_free = 0;

    for (int s = 0; s < e->o.n_slots; s++) {
        slot_t          *sl = &e->slots[s];
        tpm_serve_job_t *job;

        if (sl->state != SLOT_FREE) {
            continue;
        }
        /* jobs that cannot run are answered here and the slot goes to the next one */
        while ((job = tpm_serve_queue_pop(q)) != NULL) {
            if (job->cancel) {
                finish_job_unadmitted(job, TPM_FINISH_CANCELLED);
            } else if (!job_valid(e, job)) {
                finish_job_unadmitted(job, TPM_FINISH_ERROR);
            } else {
                break;
            }
        }
        if (job == NULL) {
            n_free++;
            continue;
        }
        sl->job      = job;
        sl->state    = SLOT_PREFILL;
        sl->prompt   = job->n_prompt > 0 ? job->prompt : &e->eot; /* the start of a document */
        sl->n_prompt = job->n_prompt > 0 ? job->n_prompt : 1;
        sl->n_past   = 0;
        sl->replay   = 0;
        sl->max_gen  = job->max_tokens > 0 && job->max_tokens < e->o.max_tokens ? job->max_tokens
                                                                                : e->o.max_tokens;
        sl->hold_len = 0;
        job->n_generated     = 0;
        job->t_first_token   = 0.0;
        e->fifo[e->n_fifo++] = s;
        st->prompt_tokens += (uint64_t)sl->n_prompt;
    }
    tpm_serve_queue_set_free(q, n_free);
}

/*
 * The batch: one token for every decoding slot, then prompt tokens of the slots in
 * prefill, oldest admission first, up to n_batch tokens. The positions are taken now:
 * a failed forward pass stops the job, so there is no rollback to do.
 */
static void plan(tpm_engine_t *e, int *n_p, int *nl_p)
{
    const int nb  = e->o.n_batch;
    int32_t  *tok = e->desc, *slot = tok + nb, *pos = slot + nb;
    int       n = 0, nl = 0, done = 0;

    for (int s = 0; s < e->o.n_slots; s++) {
        slot_t *sl = &e->slots[s];

        if (sl->state == SLOT_DECODE) {
            tok[n]                 = sl->last;
            slot[n]                = s;
            sl->hist[sl->n_past]   = sl->last;
            pos[n]                 = sl->n_past++;
            e->row_slot[nl]        = s;
            e->row_echo[nl]        = -1;
            e->desc[3 * nb + nl++] = n++;
        }
    }
    for (int i = 0; i < e->n_fifo && n < nb; i++) {
        slot_t *sl = &e->slots[e->fifo[i]];
        int     k  = sl->n_prompt - sl->n_past;

        k = k < nb - n ? k : nb - n;
        for (int j = 0; j < k; j++, n++) {
            tok[n]  = sl->prompt[sl->n_past];
            slot[n] = e->fifo[i];
            sl->hist[sl->n_past] = tok[n];
            pos[n]  = sl->n_past++;
            if (pos[n] < sl->replay) {
                continue; /* replayed for the new weights' KV cache: rows already given */
            }
            if (sl->job->embed) {
                e->row_slot[nl]        = e->fifo[i];
                e->row_echo[nl]        = -2 - pos[n]; /* an embedding row */
                e->desc[3 * nb + nl++] = n;
            } else if (sl->job->logprobs && sl->job->echo && pos[n] + 1 < sl->n_prompt) {
                e->row_slot[nl]        = e->fifo[i];
                e->row_echo[nl]        = pos[n]; /* scores prompt[pos + 1] */
                e->desc[3 * nb + nl++] = n;
            }
        }
        if (sl->n_past == sl->n_prompt && sl->job->embed) {
            done++; /* its last embedding row ends it */
        } else if (sl->n_past == sl->n_prompt) {
            e->row_slot[nl]        = e->fifo[i];
            e->row_echo[nl]        = -1;
            e->desc[3 * nb + nl++] = n - 1;
            done++; /* a prefix of the FIFO: it is served in order */
        }
    }
    memmove(e->fifo, e->fifo + done, (size_t)(e->n_fifo - done) * sizeof(int));
    e->n_fifo -= done;
    *n_p  = n;
    *nl_p = nl;
}

/* pack [tok | slot | pos] of the n_batch-strided plan, then the logit rows, contiguously */
static void pack(tpm_engine_t *e, int n, int nl)
{
    const int nb = e->o.n_batch;

    memmove(e->desc + n, e->desc + nb, (size_t)n * sizeof(int32_t));
    memmove(e->desc + 2 * n, e->desc + 2 * nb, (size_t)n * sizeof(int32_t));
    memmove(e->desc + 3 * n, e->desc + 3 * nb, (size_t)nl * sizeof(int32_t));
}

/* ---------------------------------------------------------------------------------------------- */
/* rank 0: sampling and text */

/*
 * Earliest match of any stop string in text[0..n) (SIZE_MAX: none), and in *safe_p how much
 * may be passed on: up to the match, or n minus the longest tail that is a proper prefix of
 * a stop string (it may still complete). Text already passed on never needs a look: it was
 * not the start of such a tail, so no stop string can begin in it.
 */
static size_t stop_scan(const char *text, size_t n, char *const *stop, size_t *safe_p)
{
    size_t best = SIZE_MAX, tail = 0;

    for (int k = 0; k < TPM_SERVE_MAX_STOP && stop[k] != NULL; k++) {
        size_t      len = strlen(stop[k]);
        const char *hit;

        if (len == 0) {
            continue;
        }
        hit = len <= n ? memmem(text, n, stop[k], len) : NULL;
        if (hit != NULL && (size_t)(hit - text) < best) {
            best = (size_t)(hit - text);
        }
        for (size_t j = len - 1 < n ? len - 1 : n; j > tail; j--) {
            if (memcmp(text + n - j, stop[k], j) == 0) {
                tail = j;
                break;
            }
        }
    }
    *safe_p = best != SIZE_MAX ? best : n - tail;
    return best;
}

/* n, or less when text[0..n) ends inside a UTF-8 sequence that later bytes may complete */
static size_t utf8_complete(const char *text, size_t n)
{
    const unsigned char *u = (const unsigned char *)text;
    size_t               i = n;

    while (i > 0 && n - i < 3 && (u[i - 1] & 0xC0) == 0x80) {
        i--; /* continuation bytes */
    }
    if (i > 0) {
        unsigned char lead = u[i - 1];
        size_t        want = lead >= 0xF8   ? 1 /* not a lead byte */
                             : lead >= 0xF0 ? 4
                             : lead >= 0xE0 ? 3
                             : lead >= 0xC0 ? 2
                                            : 1;

        if (n - (i - 1) < want) {
            return i - 1;
        }
    }
    return n; /* complete, or not UTF-8 at all: nothing to wait for */
}

/*
 * Pass the token on with the text that is final now (engine.h): a stop string ends the job
 * and is cut off; a tail that may still become a stop string, or ends inside a UTF-8
 * sequence, waits for the next token, unless this is the job's last call.
 */
static void emit(tpm_engine_t *e, int s, int32_t t, tpm_serve_stats_t *st)
{
    slot_t          *sl    = &e->slots[s];
    tpm_serve_job_t *job   = sl->job;
    int              final = 0;
    tpm_finish_t     fin   = TPM_FINISH_LENGTH;
    size_t           safe = 0, rel, len = 0;
    const char      *bytes;

    job->n_generated++;
    st->generated_tokens++;
    if (job->n_generated == 1) {
        job->t_first_token = tpm_time_now();
    }
    if (t == e->eot) {
        final = 1;
        fin   = TPM_FINISH_STOP;
    } else {
        bytes = tpm_tokenizer_token_bytes(e->tok, t, &len);
        if (bytes == NULL) {
            len = 0; /* an id beyond the tokenizer's vocabulary (padded model): no text */
        }
        TPM_ASSERT(sl->hold_len + len <= e->hold_cap); /* hold_cap covers the worst case */
        if (len > 0) {
            memcpy(sl->hold + sl->hold_len, bytes, len);
            sl->hold_len += len;
        }
        if (stop_scan(sl->hold, sl->hold_len, job->stop, &safe) != SIZE_MAX) {
            sl->hold_len = safe; /* the match: text before it is the last of the job */
            final        = 1;
            fin          = TPM_FINISH_STOP;
        } else if (job->n_generated >= sl->max_gen || sl->n_past >= e->o.ctx) {
            final = 1; /* max_tokens, or no cache row left to feed t */
        }
    }
    rel = final ? sl->hold_len : utf8_complete(sl->hold, safe);
    job->on_token(job, t, sl->hold, rel);
    memmove(sl->hold, sl->hold + rel, sl->hold_len - rel);
    sl->hold_len -= rel;
    if (final) {
        finish_slot(e, s, fin);
    } else {
        sl->last  = t;
        sl->state = SLOT_DECODE;
    }
}

/* the log-probability of @p t under row @p row and its top alternatives, to the job */
static void report_logprob(tpm_engine_t *e, tpm_serve_job_t *job, const float *row, int index,
                           int32_t t)
{
    int32_t top_ids[TPM_LOGPROBS_MAX_TOP];
    float   top_lp[TPM_LOGPROBS_MAX_TOP], lp;
    int     k = job->top_logprobs;

    k = k < 0 ? 0 : (k > TPM_LOGPROBS_MAX_TOP ? TPM_LOGPROBS_MAX_TOP : k);
    tpm_logprobs(row, e->cfg.V, t, k, &lp, top_ids, top_lp);
    job->on_logprob(job, index, t, lp, k < e->cfg.V ? k : e->cfg.V, top_ids, top_lp);
}

/* an embedding job's row j (prompt position pos): add it up; the last one ends the job */
static void embed_row(tpm_engine_t *e, int s, int j, int pos)
{
    slot_t          *sl   = &e->slots[s];
    tpm_serve_job_t *job  = sl->job;
    const int        C    = e->cfg.C;
    const float     *lnf  = e->m->lnf + (size_t)j * (size_t)C;
    double           norm = 0.0;

    if (pos == 0) {
        memset(sl->emb, 0, (size_t)C * sizeof(double));
    }
    if (e->be->ops->copy(e->be, e->emb_row, lnf, (size_t)C * sizeof(float), TPM_COPY_D2H) !=
        TPM_OK) {
        finish_slot(e, s, TPM_FINISH_ERROR);
        return;
    }
    for (int c = 0; c < C; c++) {
        sl->emb[c] += e->emb_row[c];
    }
    if (pos + 1 < sl->n_prompt) {
        return;
    }
    for (int c = 0; c < C; c++) {
        norm += sl->emb[c] * sl->emb[c]; /* the mean's norm is the sum's over n */
    }
    norm = norm > 0.0 ? 1.0 / sqrt(norm) : 0.0;
    for (int c = 0; c < C; c++) {
        e->emb_row[c] = (float)(sl->emb[c] * norm);
    }
    job->on_embedding(job, e->emb_row, C);
    finish_slot(e, s, TPM_FINISH_STOP);
}

static void sample_all(tpm_engine_t *e, const float *logits, int nl, tpm_serve_stats_t *st)
{
    for (int j = 0; j < nl; j++) {
        const int            s   = e->row_slot[j];
        slot_t              *sl  = &e->slots[s];
        tpm_serve_job_t     *job = sl->job;
        const float         *row = logits + (size_t)j * (size_t)e->cfg.Vp;
        tpm_sampler_params_t p   = {job->temperature, job->top_k, job->top_p, job->seed};
        int32_t              t;

        if (e->row_echo[j] >= 0) {
            report_logprob(e, job, row, e->row_echo[j] + 1, sl->prompt[e->row_echo[j] + 1]);
            continue;
        }
        if (e->row_echo[j] <= -2) {
            embed_row(e, s, j, -2 - e->row_echo[j]);
            continue;
        }
        if (job->n_bias > 0 || job->presence_penalty != 0.0f || job->frequency_penalty != 0.0f) {
            /* the log-probabilities stay the model's: they are taken from the row itself */
            memcpy(e->adj, row, (size_t)e->cfg.V * sizeof(float));
            tpm_sampler_adjust(e->adj, e->cfg.V, job->bias_ids, job->bias_val, job->n_bias, sl->gen,
                               job->n_generated, job->presence_penalty, job->frequency_penalty,
                               e->counts);
            t = tpm_sampler_sample(e->sampler, e->adj, &p, (uint64_t)job->n_generated);
        } else {
            t = tpm_sampler_sample(e->sampler, row, &p, (uint64_t)job->n_generated);
        }
        if (job->logprobs) {
            report_logprob(e, job, row, sl->n_prompt + job->n_generated, t);
        }
        if (job->n_generated < e->o.max_tokens) {
            sl->gen[job->n_generated] = t;
        }
        emit(e, s, t, st);
    }
}

static int n_active(const tpm_engine_t *e)
{
    int n = 0;

    for (int s = 0; s < e->o.n_slots; s++) {
        n += e->slots[s].state != SLOT_FREE;
    }
    return n;
}

/* ---------------------------------------------------------------------------------------------- */
/* the loop */

/* rank 0: drop cancelled jobs, admit queued ones, plan the batch; returns its token count */
static int prepare(tpm_engine_t *e, tpm_serve_queue_t *q, tpm_serve_stats_t *st, int *n_p,
                   int *nl_p)
{
    for (int s = 0; s < e->o.n_slots; s++) {
        if (e->slots[s].state != SLOT_FREE && e->slots[s].job->cancel) {
            finish_slot(e, s, TPM_FINISH_CANCELLED);
        }
    }
    admit(e, q, st);
    plan(e, n_p, nl_p);
    st->running = n_active(e);
    st->waiting = tpm_serve_queue_len(q);
    return *n_p;
}

static void sleep_ns(long ns)
{
    struct timespec ts = {0, ns};

    nanosleep(&ts, NULL);
}

void tpm_engine_set_swap_hook(tpm_engine_t *e, const tpm_engine_swap_hook_t *hook, int recompute)
{
    memset(&e->hook, 0, sizeof(e->hook));
    if (hook != NULL) {
        e->hook = *hook;
    }
    e->recompute = recompute;
    e->swap_next = 0;
}

/*
 * Rank 0, after a swap with --swap-policy=recompute: every running sequence feeds its tokens
 * so far again, as a prompt (hist), so that its KV cache holds the new weights' keys and
 * values; the last fed token's logits give its next token as a decode step would have.
 */
static void recompute_slots(tpm_engine_t *e)
{
    for (int s = 0; s < e->o.n_slots; s++) {
        slot_t *sl = &e->slots[s];

        if (sl->state == SLOT_FREE) {
            continue;
        }
        if (sl->state == SLOT_DECODE) {
            sl->hist[sl->n_past] = sl->last; /* fits: emit stops a job whose cache is full */
            sl->n_prompt         = sl->n_past + 1;
            sl->prompt           = sl->hist;
            sl->state            = SLOT_PREFILL;
            e->fifo[e->n_fifo++] = s;
        }
        /* echo log-probabilities and embedding sums of the positions fed so far are given */
        sl->replay = sl->n_past > sl->replay ? sl->n_past : sl->replay;
        sl->n_past = 0; /* a slot still in prefill keeps its prompt and its FIFO place */
    }
}

/*
 * Everyone learns rank 0's header. Rank 0 only calls this when it has decided; the others
 * may wait a long time (an idle server), so they poll with a growing sleep instead of
 * blocking in MPI, which spins a core per rank.
 */
static tpm_status_t exchange_header(tpm_engine_t *e, int32_t *hdr)
{
    tpm_comm_req_t req;
    double         t0 = tpm_time_now();
    long           ns = ENGINE_SLEEP_MIN_NS;

    memset(&req, 0, sizeof(req));
    TPM_CHECK(tpm_comm_all_gather(e->comm, hdr, e->hdr_all, HDR_LEN, TPM_DT_INT32, &req));
    if (e->comm->rank == 0) {
        TPM_CHECK(tpm_comm_wait(e->comm, &req));
    }
    while (req.active) {
        TPM_CHECK(tpm_comm_test(e->comm, &req));
        if (req.active && (!e->busy || tpm_time_now() - t0 > ENGINE_SPIN_S)) {
            sleep_ns(ns);
            ns = 2 * ns < ENGINE_SLEEP_MAX_NS ? 2 * ns : ENGINE_SLEEP_MAX_NS;
        }
    }
    memcpy(hdr, e->hdr_all, HDR_LEN * sizeof(int32_t));
    e->busy = hdr[HDR_N] > 0; /* an idle server sleeps at once instead of spinning first */
    return TPM_OK;
}

tpm_status_t tpm_engine_step(tpm_engine_t *e, tpm_serve_queue_t *q, tpm_serve_stats_t *st,
                             int *stop_p)
{
    int32_t      hdr[HDR_LEN] = {0, 0, 0, 0};
    int          n = 0, nl = 0;
    const float *logits = NULL;
    tpm_status_t status;

    *stop_p = 0;
    if (e->swap_next) {
        /* every rank was ready in the last header: all swap here, before the batch is planned */
        e->hook.swap(e->hook.ctx);
        e->swap_next = 0;
        if (e->recompute && e->comm->rank == 0) {
            recompute_slots(e);
        }
    }
    if (e->comm->rank == 0) {
        /* nothing to run: sleep on the queue, then look once more (a bounded idle step) */
        if (!st->stop && prepare(e, q, st, &n, &nl) == 0) {
            tpm_serve_queue_wait(q, ENGINE_IDLE_WAIT_S);
            if (!st->stop) {
                prepare(e, q, st, &n, &nl);
            }
        }
        if (st->stop) {
            n = nl        = 0;
            hdr[HDR_STOP] = 1;
            for (int s = 0; s < e->o.n_slots; s++) {
                if (e->slots[s].state != SLOT_FREE) {
                    finish_slot(e, s, TPM_FINISH_CANCELLED);
                }
            }
            st->running = 0;
        }
        hdr[HDR_N]  = n;
        hdr[HDR_NL] = nl;
        pack(e, n, nl);
    }
    if (e->hook.ready != NULL) {
        hdr[HDR_READY] = (int32_t)e->hook.ready(e->hook.ctx);
    }
    status = exchange_header(e, hdr);
    if (status != TPM_OK) {
        tpm_fatal(status, "serve: the batch header exchange failed");
    }
    if (e->hook.ready != NULL) {
        int all = 1;

        for (int r = 0; r < e->comm->size; r++) {
            all = all && e->hdr_all[(size_t)r * HDR_LEN + HDR_READY] == 1;
        }
        e->swap_next = all;
        if (e->hook.agreed != NULL) {
            e->hook.agreed(e->hook.ctx, e->hdr_all[HDR_READY]);
        }
    }
    if (hdr[HDR_STOP]) {
        *stop_p = 1;
        return TPM_OK;
    }
    n  = hdr[HDR_N];
    nl = hdr[HDR_NL];
    if (n == 0) {
        return TPM_OK; /* an idle step: the caller gets control back every ENGINE_IDLE_WAIT_S */
    }
    status = tpm_comm_bcast(e->comm, e->desc, 3 * (size_t)n + (size_t)nl, TPM_DT_INT32, 0);
    if (status == TPM_OK) {
        status = tpm_tp_forward(e->m, n, e->desc, e->desc + n, e->desc + 2 * n, nl, e->desc + 3 * n,
                                &logits);
    }
    if (status != TPM_OK) {
        tpm_fatal(status, "serve: forward pass over %d tokens failed", n);
    }
    if (e->comm->rank == 0) {
        sample_all(e, logits, nl, st);
        st->running = n_active(e);
    }
    return TPM_OK;
}

tpm_status_t tpm_engine_run(tpm_engine_t *e, tpm_serve_queue_t *q, tpm_serve_stats_t *st)
{
    int stop = 0;

    while (!stop) {
        TPM_CHECK(tpm_engine_step(e, q, st, &stop));
    }
    return TPM_OK;
}
