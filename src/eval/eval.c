/* SPDX-License-Identifier: MIT */
/*
 * eval.c: --mode=eval (eval.h). Every rank runs the same tensor-parallel forward calls with
 * the same arguments (the tokens are read on every rank, or broadcast from rank 0); rank 0
 * receives the logits and does all the scoring, in double.
 */
#include "eval/eval.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "backend/backend.h"
#include "base/file.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/timer.h"
#include "ckpt/ckpt.h"
#include "core/model_tp.h"
#include "core/tensor_io.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/tokenizer.h"

/* tokens per forward call: bounds rank 0's logits buffer (chunk x Vp floats) */
#define EVAL_CHUNK 256

double tpm_eval_logprob(const float *logits, int V, int target)
{
    double mx = logits[0], s = 0.0;

    for (int v = 1; v < V; v++) {
        if (logits[v] > mx) {
            mx = logits[v];
        }
    }
    for (int v = 0; v < V; v++) {
        s += exp((double)logits[v] - mx);
    }
    return (double)logits[target] - mx - log(s);
}

int tpm_eval_pick(const double *ll, const size_t *len, int n, int norm)
{
    int    best = 0;
    double bs   = 0.0;

    for (int i = 0; i < n; i++) {
        double s = ll[i];

        if (norm) {
            s /= (double)(len[i] > 0 ? len[i] : 1);
        }
        if (i == 0 || s > bs) {
            best = i;
            bs   = s;
        }
    }
    return best;
}

typedef struct {
    tpm_tp_model_t *m;
    int             chunk;
    int32_t         slots[EVAL_CHUNK], pos[EVAL_CHUNK], rows[EVAL_CHUNK];
} scorer_t;

/*
 * Sum of log p(y[i] | x[0..i]) over i in [first, n), on rank 0 (0 elsewhere): x is one
 * sequence in slot 0 from position 0. Collective, identical arguments on every rank.
 */
static tpm_status_t score_seq(scorer_t *sc, const int32_t *x, const int32_t *y, int n, int first,
                              double *sum_p)
{
    const int V   = sc->m->cfg.V;
    const int Vp  = sc->m->cfg.Vp;
    double    sum = 0.0;

    for (int c0 = 0; c0 < n; c0 += sc->chunk) {
        int          k = n - c0 < sc->chunk ? n - c0 : sc->chunk;
        const float *lg;

        for (int i = 0; i < k; i++) {
            sc->slots[i] = 0;
            sc->pos[i]   = c0 + i;
            sc->rows[i]  = i;
        }
        TPM_CHECK(tpm_tp_forward(sc->m, k, x + c0, sc->slots, sc->pos, k, sc->rows, &lg));
        if (lg != NULL) {
            for (int i = 0; i < k; i++) {
                if (c0 + i >= first) {
                    sum += tpm_eval_logprob(lg + (size_t)i * (size_t)Vp, V, y[c0 + i]);
                }
            }
        }
    }
    *sum_p = sum;
    return TPM_OK;
}

/* rank 0: print the result and write it to --out when set (a temporary file, renamed) */
static tpm_status_t emit(const tpm_config_t *cfg, json_t *res)
{
    char        *text = json_dumps(res, JSON_COMPACT | JSON_REAL_PRECISION(10));
    char         tmp[TPM_PATH_MAX + 16];
    FILE        *f;
    tpm_status_t status = TPM_OK;

    if (text == NULL) {
        tpm_log_error("cannot format the evaluation result");
        return TPM_ERR_NO_MEMORY;
    }
    printf("%s\n", text);
    fflush(stdout);
    if (cfg->out[0] != '\0') {
        status = tpm_file_create_tmp(cfg->out, tmp, sizeof(tmp), &f);
        if (status == TPM_OK) {
            int ok = fprintf(f, "%s\n", text) >= 0;
            status = tpm_file_commit(f, tmp, cfg->out, ok ? TPM_OK : TPM_ERR_IO);
        }
        if (status != TPM_OK) {
            tpm_log_error("cannot write the evaluation result to %s", cfg->out);
        } else {
            tpm_log_info("wrote %s", cfg->out);
        }
    }
    free(text);
    return status;
}

/* ---- loss on a split -------------------------------------------------------------------- */

static tpm_status_t eval_loss(const tpm_config_t *cfg, tpm_comm_t *comm, scorer_t *sc,
                              const tpm_ckpt_meta_t *meta, json_t *res)
{
    const int    root = comm->rank == 0;
    char         dir[TPM_PATH_MAX];
    tpm_tokens_t toks;
    int32_t     *x = NULL, *y = NULL;
    int          T = meta->seq_len > 0 ? meta->seq_len : sc->m->cfg.maxT;
    int64_t      G = (int64_t)meta->world_size * meta->batch * meta->grad_accum;
    int64_t      n_win;
    double       sum    = 0.0, t0;
    tpm_status_t status = TPM_OK;

    memset(&toks, 0, sizeof(toks));
    memset(dir, 0, sizeof(dir));
    if (G <= 0) {
        /* a checkpoint that does not say how its run was batched: this run's options */
        G = (int64_t)comm->size * cfg->batch * cfg->grad_accum;
        tpm_info0("the checkpoint does not record its global batch: windows keyed for %lld "
                  "per batch (ranks x --batch x --grad-accum)",
                  (long long)G);
    }
    if (T > sc->m->cfg.maxT) {
        tpm_error0("the checkpoint's seq_len %d exceeds its n_ctx %d", T, sc->m->cfg.maxT);
        return TPM_ERR_FORMAT;
    }
    n_win = cfg->eval_tokens > 0 ? (cfg->eval_tokens + T - 1) / T : (int64_t)cfg->eval_batches * G;

    /* the data directory: --data, or the built-in corpus (prepared by rank 0 if needed) */
    if (cfg->data[0] != '\0') {
        snprintf(dir, sizeof(dir), "%s", cfg->data);
    } else if (root) {
        status = tpm_prepare_builtin(dir, sizeof(dir));
        if (status == TPM_OK) {
            tpm_log_info("no --data given: the built-in corpus (Debian fortunes) from %s", dir);
        }
    }
    TPM_CHECK(tpm_ckpt_agree(comm, status));
    TPM_CHECK(tpm_comm_bcast(comm, dir, sizeof(dir), TPM_DT_BYTE, 0));

    status = tpm_tokens_load(dir, cfg->split, &toks);
    if (status == TPM_ERR_NOT_FOUND) {
        tpm_log_error("no %s split (*%s*.bin) in %s", cfg->split, cfg->split, dir);
    } else if (status == TPM_OK && toks.n < (size_t)T + 1) {
        tpm_log_error("the %s split of %s has %zu tokens, fewer than seq_len + 1 = %d", cfg->split,
                      dir, toks.n, T + 1);
        status = TPM_ERR_INVALID_ARG;
    } else if (status == TPM_OK && toks.max_id >= sc->m->cfg.V) {
        tpm_log_error("token id %d in the %s split of %s is outside the checkpoint's vocabulary "
                      "of %d (data of another tokenizer?)",
                      toks.max_id, cfg->split, dir, sc->m->cfg.V);
        status = TPM_ERR_FORMAT;
    }
    if (status == TPM_OK) {
        status = tpm_malloc((size_t)T * sizeof(int32_t), (void **)&x);
    }
    if (status == TPM_OK) {
        status = tpm_malloc((size_t)T * sizeof(int32_t), (void **)&y);
    }
    TPM_CHECK_GOTO(tpm_ckpt_agree(comm, status), status, out);

    tpm_info0("eval: %lld window(s) of %d tokens of the %s split (%lld per global batch, seed "
              "%llu), serve-dtype %s",
              (long long)n_win, T, cfg->split, (long long)G, (unsigned long long)meta->seed,
              cfg->serve_dtype);
    t0 = tpm_time_now();
    for (int64_t w = 0; w < n_win; w++) {
        tpm_data_key_t k   = tpm_data_key(TPM_DATA_ORDER_SAMPLE, meta->seed ^ TPM_DATA_VAL_SALT,
                                          w / G, 0, 1, 0, 1, 1);
        double         lps = 0.0;

        /* the same on every rank: a pure function of the key and the tokens */
        TPM_CHECK_GOTO(tpm_tokens_batch(&toks, k.seed, k.stream, (uint64_t)(w % G), 1, T, x, y),
                       status, out);
        TPM_CHECK_GOTO(score_seq(sc, x, y, T, 0, &lps), status, out);
        sum -= lps;
    }
    if (root) {
        double ntok = (double)n_win * T, loss = sum / ntok;

        json_object_set_new(res, "split", json_string(cfg->split));
        json_object_set_new(res, "tokens", json_integer((json_int_t)n_win * T));
        json_object_set_new(res, "windows", json_integer((json_int_t)n_win));
        json_object_set_new(res, "seq_len", json_integer(T));
        json_object_set_new(res, "global_batch", json_integer((json_int_t)G));
        json_object_set_new(res, "loss", json_real(loss));
        json_object_set_new(res, "perplexity", json_real(exp(loss)));
        tpm_log_info("eval: loss %.6f, perplexity %.4f over %lld tokens (%.1f s)", loss, exp(loss),
                     (long long)n_win * T, tpm_time_now() - t0);
    }
out:
    tpm_free(x);
    tpm_free(y);
    tpm_tokens_cleanup(&toks);
    return status;
}

/* ---- multiple choice --------------------------------------------------------------------- */

/* Python's str.isspace() for the ASCII whitespace lm-evaluation-harness's rstrip() removes */
static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' ||
           c == '\x1c' || c == '\x1d' || c == '\x1e' || c == '\x1f';
}

/* UTF-8 code points of @p s (Python's len() of the decoded string) */
static size_t utf8_chars(const char *s, size_t n)
{
    size_t c = 0;

    for (size_t i = 0; i < n; i++) {
        c += ((unsigned char)s[i] & 0xC0u) != 0x80u;
    }
    return c;
}

/* a growing int32 array (rank 0) */
typedef struct {
    int32_t *v;
    size_t   n, cap;
} ivec_t;

static tpm_status_t ivec_push(ivec_t *a, const int32_t *x, size_t k)
{
    if (a->n + k > a->cap) {
        size_t   cap = a->cap > 0 ? a->cap : 4096;
        int32_t *nv  = NULL;

        while (cap < a->n + k) {
            cap *= 2;
        }
        TPM_CHECK(tpm_malloc(cap * sizeof(int32_t), (void **)&nv));
        if (a->n > 0) {
            memcpy(nv, a->v, a->n * sizeof(int32_t));
        }
        tpm_free(a->v);
        a->v   = nv;
        a->cap = cap;
    }
    memcpy(a->v + a->n, x, k * sizeof(int32_t));
    a->n += k;
    return TPM_OK;
}

/* a byte-level BPE gives at most one token per byte */
static tpm_status_t encode(const tpm_tokenizer_t *tok, const char *s, size_t n, int32_t **ids_p,
                           size_t *n_p)
{
    int32_t     *ids = NULL;
    tpm_status_t st;

    TPM_CHECK(tpm_malloc((n > 0 ? n : 1) * sizeof(int32_t), (void **)&ids));
    st = tpm_tokenizer_encode(tok, s, n, ids, n, n_p);
    if (st != TPM_OK) {
        tpm_log_error("the task's text could not be encoded");
        tpm_free(ids);
        return st;
    }
    *ids_p = ids;
    return TPM_OK;
}

/*
 * One (context, choice) request as lm-evaluation-harness builds it for a causal model:
 * trailing whitespace of the context moves to the continuation; the continuation's tokens
 * are those of encode(context + continuation) after the first len(encode(context)); an
 * empty context is the end-of-text token. Appends [n, ctxlen, tokens...] to @p reqs.
 */
static tpm_status_t add_request(const tpm_tokenizer_t *tok, const char *ctx, size_t nc,
                                const char *cont, size_t nk, int max_len, size_t line, int ci,
                                ivec_t *reqs)
{
    int32_t     *whole = NULL, *cenc = NULL, hdr[2];
    size_t       nw = 0, ncx = 0, cut = nc;
    char        *buf = NULL;
    tpm_status_t status;

    while (cut > 0 && is_space(ctx[cut - 1])) {
        cut--;
    }
    status = tpm_malloc(nc + nk + 1, (void **)&buf);
    if (status == TPM_OK) {
        memcpy(buf, ctx, nc);
        memcpy(buf + nc, cont, nk);
        status = encode(tok, buf, nc + nk, &whole, &nw);
    }
    if (status == TPM_OK && cut > 0) {
        status = encode(tok, ctx, cut, &cenc, &ncx);
    } else if (status == TPM_OK && nc > 0) {
        tpm_log_error("task line %zu: the context is only whitespace", line);
        status = TPM_ERR_INVALID_ARG;
    }
    if (status == TPM_OK && nc == 0) {
        /* lm-evaluation-harness: the context is the prefix (end-of-text) token */
        int32_t eot = tpm_tokenizer_eot(tok);

        tpm_free(whole);
        whole  = NULL;
        status = encode(tok, cont, nk, &cenc, &ncx); /* the continuation, temporarily */
        if (status == TPM_OK) {
            status = tpm_malloc((ncx + 1) * sizeof(int32_t), (void **)&whole);
        }
        if (status == TPM_OK) {
            whole[0] = eot;
            memcpy(whole + 1, cenc, ncx * sizeof(int32_t));
            nw  = ncx + 1;
            ncx = 1;
        }
    }
    if (status == TPM_OK && (ncx == 0 || nw <= ncx)) {
        tpm_log_error("task line %zu, choice %d: the choice adds no token to the context", line,
                      ci);
        status = TPM_ERR_INVALID_ARG;
    } else if (status == TPM_OK && nw > (size_t)max_len) {
        tpm_log_error("task line %zu, choice %d: %zu tokens, more than the model's n_ctx %d", line,
                      ci, nw, max_len);
        status = TPM_ERR_INVALID_ARG;
    }
    if (status == TPM_OK) {
        hdr[0] = (int32_t)nw;
        hdr[1] = (int32_t)ncx;
        status = ivec_push(reqs, hdr, 2);
    }
    if (status == TPM_OK) {
        status = ivec_push(reqs, whole, nw);
    }
    tpm_free(buf);
    tpm_free(whole);
    tpm_free(cenc);
    return status;
}

/* one task item (rank 0) */
typedef struct {
    int     n_choices, label;
    size_t *chars, *bytes; /* (n_choices) each */
} item_t;

typedef struct {
    item_t *v;
    size_t  n, cap;
} items_t;

static void items_cleanup(items_t *it)
{
    for (size_t i = 0; i < it->n; i++) {
        tpm_free(it->v[i].chars);
        tpm_free(it->v[i].bytes);
    }
    tpm_free(it->v);
    memset(it, 0, sizeof(*it));
}

/* rank 0: read the JSONL task into items and requests; a message names the line */
static tpm_status_t task_read(const char *path, const tpm_tokenizer_t *tok, int max_len,
                              items_t *items, ivec_t *reqs)
{
    FILE        *f    = fopen(path, "r");
    char        *line = NULL;
    size_t       cap = 0, lineno = 0;
    ssize_t      len;
    tpm_status_t status = TPM_OK;

    if (f == NULL) {
        tpm_log_error("cannot open the task file %s: %s", path, strerror(errno));
        return TPM_ERR_NOT_FOUND;
    }
    while (status == TPM_OK && (len = getline(&line, &cap, f)) >= 0) {
        json_t      *o, *ctx, *ch, *lab;
        json_error_t jerr;
        item_t       it;
        size_t       k;

        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
            len--;
        }
        if (len == 0) {
            continue;
        }
        o = json_loadb(line, (size_t)len, JSON_REJECT_DUPLICATES, &jerr);
        if (o == NULL) {
            tpm_log_error("%s:%zu: not JSON: %s", path, lineno, jerr.text);
            status = TPM_ERR_FORMAT;
            break;
        }
        ctx = json_object_get(o, "context");
        ch  = json_object_get(o, "choices");
        lab = json_object_get(o, "label");
        if (!json_is_string(ctx) || !json_is_array(ch) || json_array_size(ch) < 2 ||
            !json_is_integer(lab) || json_integer_value(lab) < 0 ||
            (size_t)json_integer_value(lab) >= json_array_size(ch)) {
            tpm_log_error("%s:%zu: want {\"context\": string, \"choices\": [at least 2 strings], "
                          "\"label\": index of the right choice}",
                          path, lineno);
            json_decref(o);
            status = TPM_ERR_FORMAT;
            break;
        }
        memset(&it, 0, sizeof(it));
        it.n_choices = (int)json_array_size(ch);
        it.label     = (int)json_integer_value(lab);
        status       = tpm_calloc((size_t)it.n_choices, sizeof(size_t), (void **)&it.chars);
        if (status == TPM_OK) {
            status = tpm_calloc((size_t)it.n_choices, sizeof(size_t), (void **)&it.bytes);
        }
        for (k = 0; status == TPM_OK && k < json_array_size(ch); k++) {
            json_t *c = json_array_get(ch, k);

            if (!json_is_string(c)) {
                tpm_log_error("%s:%zu: choice %zu is not a string", path, lineno, k);
                status = TPM_ERR_FORMAT;
                break;
            }
            it.bytes[k] = json_string_length(c);
            it.chars[k] = utf8_chars(json_string_value(c), it.bytes[k]);
            status      = add_request(tok, json_string_value(ctx), json_string_length(ctx),
                                      json_string_value(c), it.bytes[k], max_len, lineno, (int)k, reqs);
        }
        json_decref(o);
        if (status == TPM_OK && items->n == items->cap) {
            size_t  ncap = items->cap > 0 ? 2 * items->cap : 64;
            item_t *nv   = NULL;

            status = tpm_calloc(ncap, sizeof(item_t), (void **)&nv);
            if (status == TPM_OK) {
                if (items->n > 0) {
                    memcpy(nv, items->v, items->n * sizeof(item_t));
                }
                tpm_free(items->v);
                items->v   = nv;
                items->cap = ncap;
            }
        }
        if (status == TPM_OK) {
            items->v[items->n++] = it;
        } else {
            tpm_free(it.chars);
            tpm_free(it.bytes);
        }
    }
    if (status == TPM_OK && ferror(f)) {
        tpm_log_error("cannot read the task file %s", path);
        status = TPM_ERR_IO;
    }
    if (status == TPM_OK && items->n == 0) {
        tpm_log_error("the task file %s holds no item", path);
        status = TPM_ERR_FORMAT;
    }
    free(line);
    fclose(f);
    return status;
}

static tpm_status_t eval_task(const tpm_config_t *cfg, tpm_comm_t *comm, scorer_t *sc,
                              const tpm_ckpt_meta_t *meta, json_t *res)
{
    const int        root = comm->rank == 0;
    tpm_tokenizer_t *tok  = NULL;
    items_t          items;
    ivec_t           reqs;
    double          *ll  = NULL;
    int64_t          n64 = 0, n_req = 0;
    tpm_status_t     status = TPM_OK;

    memset(&items, 0, sizeof(items));
    memset(&reqs, 0, sizeof(reqs));
    if (root) {
        status = tpm_tokenizer_from_bytes(meta->tokenizer, meta->tokenizer_len, &tok);
        if (status == TPM_OK) {
            status = task_read(cfg->task, tok, sc->m->cfg.maxT, &items, &reqs);
        }
        n64 = (int64_t)reqs.n;
    }
    TPM_CHECK_GOTO(tpm_ckpt_agree(comm, status), status, out);
    /* every rank runs the same forward calls: the requests go to all */
    TPM_CHECK_GOTO(tpm_comm_bcast(comm, &n64, 1, TPM_DT_INT64, 0), status, out);
    if (!root) {
        status = tpm_malloc((size_t)n64 * sizeof(int32_t), (void **)&reqs.v);
        reqs.n = (size_t)n64;
    }
    TPM_CHECK_GOTO(tpm_ckpt_agree(comm, status), status, out);
    TPM_CHECK_GOTO(tpm_comm_bcast(comm, reqs.v, reqs.n, TPM_DT_INT32, 0), status, out);
    for (size_t o = 0; o < reqs.n; o += 2 + (size_t)reqs.v[o]) {
        n_req++;
    }
    TPM_CHECK_GOTO(tpm_calloc((size_t)n_req, sizeof(double), (void **)&ll), status, out);
    tpm_info0("eval: %s, %lld choice(s) to score", cfg->task, (long long)n_req);
    {
        size_t o = 0;

        for (int64_t r = 0; r < n_req; r++) {
            int            n = reqs.v[o], ctxlen = reqs.v[o + 1];
            const int32_t *s = reqs.v + o + 2;

            /* x = s[0, n-1), y = s[1, n): the continuation's tokens s[ctxlen..] are y[ctxlen-1..]
             */
            TPM_CHECK_GOTO(score_seq(sc, s, s + 1, n - 1, ctxlen - 1, &ll[r]), status, out);
            o += 2 + (size_t)n;
        }
    }
    if (root) {
        size_t  r = 0, acc = 0, acc_norm = 0, acc_bytes = 0;
        json_t *pred = json_array(), *lls = json_array();

        for (size_t i = 0; i < items.n; i++) {
            const item_t *it = &items.v[i];
            int           p  = tpm_eval_pick(ll + r, it->chars, it->n_choices, 0);

            acc += p == it->label;
            acc_norm += tpm_eval_pick(ll + r, it->chars, it->n_choices, 1) == it->label;
            acc_bytes += tpm_eval_pick(ll + r, it->bytes, it->n_choices, 1) == it->label;
            json_array_append_new(pred, json_integer(p));
            for (int k = 0; k < it->n_choices; k++) {
                json_array_append_new(lls, json_real(ll[r + (size_t)k]));
            }
            r += (size_t)it->n_choices;
        }
        json_object_set_new(res, "task", json_string(cfg->task));
        json_object_set_new(res, "items", json_integer((json_int_t)items.n));
        json_object_set_new(res, "acc", json_real((double)acc / (double)items.n));
        json_object_set_new(res, "acc_norm", json_real((double)acc_norm / (double)items.n));
        json_object_set_new(res, "acc_bytes", json_real((double)acc_bytes / (double)items.n));
        json_object_set_new(res, "pred", pred);
        json_object_set_new(res, "ll", lls);
        tpm_log_info("eval: %zu item(s): acc %.4f, acc_norm %.4f", items.n,
                     (double)acc / (double)items.n, (double)acc_norm / (double)items.n);
    }
out:
    tpm_free(ll);
    tpm_free(reqs.v);
    items_cleanup(&items);
    tpm_tokenizer_destroy(tok);
    return status;
}

/* ---- entry ------------------------------------------------------------------------------- */

tpm_status_t tpm_eval_run(const tpm_config_t *cfg, tpm_comm_t *comm)
{
    const int          root = comm->rank == 0;
    char               path[TPM_PATH_MAX];
    tpm_ckpt_t        *ck = NULL;
    tpm_backend_t     *be = NULL;
    tpm_tp_model_t    *m  = NULL;
    tpm_model_config_t mc;
    tpm_ckpt_meta_t    meta;
    tpm_wdtype_t       wdt = TPM_WDT_F32;
    tpm_tensor_io_t    src, dst;
    scorer_t           sc;
    json_t            *res    = NULL;
    tpm_status_t       status = TPM_OK;

    memset(path, 0, sizeof(path));
    if (cfg->ckpt[0] == '\0') {
        tpm_error0("--mode=eval needs --ckpt=FILE.h5 or --ckpt=DIR (its latest checkpoint)");
        return TPM_ERR_INVALID_ARG; /* the same configuration on every rank */
    }
    if (root) {
        status = tpm_ckpt_resolve(cfg->ckpt, path, sizeof(path));
    }
    TPM_CHECK(tpm_ckpt_agree(comm, status));
    TPM_CHECK(tpm_comm_bcast(comm, path, sizeof(path), TPM_DT_BYTE, 0));
    TPM_CHECK(tpm_ckpt_open(comm, path, &ck));
    meta   = *tpm_ckpt_meta(ck);
    mc     = meta.model;
    status = tpm_model_config_finish(&mc);
    TPM_CHECK_GOTO(tpm_ckpt_agree(comm, status), status, out);

    (void)tpm_wdtype_parse(cfg->serve_dtype, &wdt); /* the option table checked it */
    status = tpm_backend_create(cfg->device, cfg->threads, &be);
    if (status == TPM_OK) {
        status = tpm_backend_set_matmul(be, cfg->cuda_matmul);
    }
    if (status == TPM_OK) {
        sc.chunk = mc.maxT < EVAL_CHUNK ? mc.maxT : EVAL_CHUNK;
        status   = tpm_tp_create(be, comm, &mc, 1, mc.maxT, sc.chunk, sc.chunk, &m);
    }
    if (status == TPM_OK) {
        status = tpm_tp_set_weight_dtype(m, wdt);
    }
    TPM_CHECK_GOTO(tpm_ckpt_agree(comm, status), status, out);
    tpm_info0("eval %s (step %lld): L=%d C=%d NH=%d V=%d n_ctx=%d on %d rank(s), weights %s", path,
              (long long)meta.step, mc.L, mc.C, mc.NH, mc.V, mc.maxT, comm->size,
              tpm_wdtype_name(wdt));
    /* every rank reads its own rows of each tensor (collective) */
    src = tpm_ckpt_tensor_io(ck);
    dst = tpm_tp_tensor_io(m);
    TPM_CHECK_GOTO(tpm_tensor_copy(&m->cfg, comm, &src, &dst), status, out);
    sc.m = m;

    if (root) {
        res = json_object();
        if (res == NULL) {
            status = TPM_ERR_NO_MEMORY;
        } else {
            json_object_set_new(res, "ckpt", json_string(path));
            json_object_set_new(res, "step", json_integer((json_int_t)meta.step));
            json_object_set_new(res, "ranks", json_integer(comm->size));
            json_object_set_new(res, "serve_dtype", json_string(tpm_wdtype_name(wdt)));
        }
    }
    TPM_CHECK_GOTO(tpm_ckpt_agree(comm, status), status, out);
    if (cfg->task[0] != '\0') {
        status = eval_task(cfg, comm, &sc, &meta, res);
    } else {
        status = eval_loss(cfg, comm, &sc, &meta, res);
    }
    if (status == TPM_OK && root) {
        status = emit(cfg, res);
    }
    status = tpm_ckpt_agree(comm, status);
out:
    json_decref(res);
    tpm_tp_destroy(m);
    tpm_backend_destroy(be);
    tpm_ckpt_close(ck);
    return status;
}
