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

int tpm_eval_pick(const double *ll, const size_t *bytes, int n, int norm)
{
    int    best = 0;
    double bs   = 0.0;

    for (int i = 0; i < n; i++) {
        double s = ll[i];

        if (norm) {
            s /= (double)(bytes[i] > 0 ? bytes[i] : 1);
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
    status = eval_loss(cfg, comm, &sc, &meta, res);
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
