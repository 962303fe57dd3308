/* SPDX-License-Identifier: MIT */
/*
 * train.c: the training driver. Data order: step s, micro-step a, rank r reads
 * micro-batch g = (s*A + a)*N + r, so the set of micro-batches in a step
 * depends only on the global batch N*A, never on how it is split across ranks
 * (the ZeRO-3 equivalence test relies on this). Every failure that one rank
 * can hit alone (files, memory) is agreed on before anyone proceeds.
 */
#include "train/train.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/backend.h"
#include "base/mem.h"
#include "base/timer.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "train/metrics.h"
#include "zero3/zero3.h"

double tpm_train_lr(const tpm_config_t *cfg, int64_t step)
{
    double progress;

    if (cfg->warmup > 0 && step < cfg->warmup) {
        return cfg->lr * (double)(step + 1) / (double)cfg->warmup;
    }
    if (cfg->steps <= cfg->warmup + 1) {
        return cfg->lr;
    }
    progress = (double)(step - cfg->warmup) / (double)(cfg->steps - 1 - cfg->warmup);
    if (progress > 1.0) {
        progress = 1.0;
    }
    return cfg->min_lr + 0.5 * (cfg->lr - cfg->min_lr) * (1.0 + cos(M_PI * progress));
}

typedef struct {
    char         dir[TPM_PATH_MAX];
    int          vocab; /* from tokenizer.bin, 0 if the folder has none */
    tpm_tokens_t train;
    tpm_tokens_t val;
} data_t;

static int file_exists(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* rank 0 prepares the built-in corpus if needed; everyone learns the folder */
static tpm_status_t data_resolve_dir(const tpm_config_t *cfg, tpm_comm_t *comm, data_t *d)
{
    tpm_status_t status = TPM_OK;

    if (cfg->data[0] != '\0') {
        snprintf(d->dir, sizeof(d->dir), "%s", cfg->data);
        return TPM_OK;
    }
    if (comm->rank == 0) {
        status = tpm_prepare_builtin(d->dir, sizeof(d->dir));
        if (status == TPM_OK) {
            tpm_log_info("no --data given: training on the built-in corpus (Debian fortunes) "
                         "from %s",
                         d->dir);
        }
    }
    TPM_CHECK(tpm_comm_agree(comm, status));
    return tpm_comm_bcast(comm, d->dir, sizeof(d->dir), TPM_DT_BYTE, 0);
}

static tpm_status_t data_load(const tpm_config_t *cfg, tpm_comm_t *comm, data_t *d)
{
    char             path[TPM_PATH_MAX + 32];
    tpm_tokenizer_t *tok    = NULL;
    tpm_status_t     status = TPM_OK;

    TPM_CHECK(data_resolve_dir(cfg, comm, d));
    snprintf(path, sizeof(path), "%s/tokenizer.bin", d->dir);
    if (file_exists(path)) {
        status = tpm_tokenizer_load(path, &tok);
        if (status == TPM_OK) {
            d->vocab = tpm_tokenizer_vocab_size(tok);
            tpm_tokenizer_destroy(tok);
        }
    }
    if (status == TPM_OK) {
        status = tpm_tokens_load(d->dir, "train", &d->train);
    }
    if (status == TPM_OK) {
        tpm_status_t vs = tpm_tokens_load(d->dir, "val", &d->val);
        if (vs == TPM_ERR_NOT_FOUND) {
            if (comm->rank == 0) {
                tpm_log_warn("no validation split in %s: validation loss is not reported",
                             d->dir);
            }
        } else {
            status = vs;
        }
    }
    return tpm_comm_agree(comm, status);
}

static void data_cleanup(data_t *d)
{
    tpm_tokens_cleanup(&d->train);
    tpm_tokens_cleanup(&d->val);
}

static tpm_status_t model_config_from(const tpm_config_t *cfg, const data_t *d,
                                      tpm_model_config_t *mc)
{
    memset(mc, 0, sizeof(*mc));
    mc->L    = cfg->n_layer;
    mc->C    = cfg->n_embd;
    mc->NH   = cfg->n_head;
    mc->maxT = cfg->n_ctx;
    mc->V    = cfg->vocab_size > 0 ? cfg->vocab_size : d->vocab;
    if (mc->V == 0) {
        tpm_log_error("%s has no tokenizer.bin: give the vocabulary size with --vocab-size "
                      "(50257 for GPT-2 token shards)",
                      d->dir);
        return TPM_ERR_INVALID_ARG;
    }
    if (d->vocab > 0 && cfg->vocab_size > 0 && cfg->vocab_size < d->vocab) {
        tpm_log_error("--vocab-size %d is smaller than the tokenizer's %d in %s", cfg->vocab_size,
                      d->vocab, d->dir);
        return TPM_ERR_INVALID_ARG;
    }
    TPM_CHECK(tpm_model_config_finish(mc));
    if (cfg->seq_len > mc->maxT) {
        tpm_log_error("--seq-len %d exceeds the position table of the model (--n-ctx %d)",
                      cfg->seq_len, mc->maxT);
        return TPM_ERR_INVALID_ARG;
    }
    if (d->train.max_id >= mc->V) {
        tpm_log_error("token id %d in %s is outside the vocabulary of %d", d->train.max_id,
                      d->dir, mc->V);
        return TPM_ERR_FORMAT;
    }
    if (d->val.n > 0 && d->val.max_id >= mc->V) {
        tpm_log_error("token id %d in the val split of %s is outside the vocabulary of %d",
                      d->val.max_id, d->dir, mc->V);
        return TPM_ERR_FORMAT;
    }
    if (d->train.n < (size_t)cfg->seq_len + 1) {
        tpm_log_error("the train split of %s has %zu tokens, fewer than seq_len + 1 = %d",
                      d->dir, d->train.n, cfg->seq_len + 1);
        return TPM_ERR_INVALID_ARG;
    }
    return TPM_OK;
}

/* mean validation loss over N * eval_batches fixed micro-batches */
static tpm_status_t evaluate(const tpm_config_t *cfg, tpm_zero3_t *z, const data_t *d,
                             int32_t *x, int32_t *y, double *val_p)
{
    const int N = z->comm->size;
    double    sum = 0.0, total = 0.0;
    float     loss;

    for (int e = 0; e < cfg->eval_batches; e++) {
        uint64_t g = (uint64_t)e * N + z->comm->rank;
        TPM_CHECK(tpm_tokens_batch(&d->val, cfg->seed ^ 0x76616cULL, g, z->B, z->T, x, y));
        TPM_CHECK(tpm_zero3_forward(z, x, y, &loss));
        sum += loss;
    }
    TPM_CHECK(tpm_comm_all_reduce(z->comm, &sum, &total, 1, TPM_DT_DOUBLE, TPM_RED_SUM));
    *val_p = total / ((double)N * cfg->eval_batches);
    return TPM_OK;
}

static void progress_line(const tpm_config_t *cfg, int64_t step, double loss, double tok_s,
                          double elapsed, int tty)
{
    double eta = (double)(cfg->steps - step - 1) * elapsed / (double)(step + 1);

    if (tty) {
        fprintf(stderr, "\r[tpmpi] step %lld/%lld  loss %.4f  %.0f tok/s  eta %.0fs   ",
                (long long)step + 1, (long long)cfg->steps, loss, tok_s, eta);
        if (step + 1 == cfg->steps) {
            fputc('\n', stderr);
        }
        fflush(stderr);
    } else if ((step + 1) % cfg->log_every == 0 || step == 0 || step + 1 == cfg->steps) {
        tpm_log_info("step %lld/%lld loss %.4f %.0f tok/s eta %.0fs", (long long)step + 1,
                     (long long)cfg->steps, loss, tok_s, eta);
    }
}

static tpm_status_t ensure_dir(const char *dir)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        tpm_log_error("cannot create output directory %s: %s", dir, strerror(errno));
        return TPM_ERR_IO;
    }
    return TPM_OK;
}

/* rank 0: output directory with the resolved config, and the metrics file */
static tpm_status_t open_outputs(const tpm_config_t *cfg, tpm_comm_t *comm, tpm_metrics_t *m)
{
    char         path[TPM_PATH_MAX + 32];
    tpm_status_t status = TPM_OK;

    m->f = NULL;
    if (comm->rank == 0) {
        const char *mpath = cfg->metrics;
        if (cfg->out[0] != '\0') {
            status = ensure_dir(cfg->out);
            if (status == TPM_OK) {
                FILE *f;
                snprintf(path, sizeof(path), "%s/config.json", cfg->out);
                f = fopen(path, "w");
                if (f == NULL) {
                    tpm_log_error("cannot write %s: %s", path, strerror(errno));
                    status = TPM_ERR_IO;
                } else {
                    tpm_config_dump_json(cfg, f);
                    fputc('\n', f);
                    fclose(f);
                }
            }
            if (mpath[0] == '\0') {
                snprintf(path, sizeof(path), "%s/metrics.jsonl", cfg->out);
                mpath = path;
            }
        }
        if (status == TPM_OK) {
            status = tpm_metrics_open(m, mpath);
        }
    }
    return tpm_comm_agree(comm, status);
}

static void report_memory(tpm_zero3_t *z)
{
    const tpm_zero3_mem_t *mm = &z->mem;
    const double           mib = 1048576.0;

    tpm_info0("memory per rank (rank 0): params %.1f MiB, grads %.1f MiB, adamw %.1f MiB, "
              "gather buffers %.1f MiB, activations %.1f MiB",
              mm->param_bytes / mib, mm->grad_bytes / mib, mm->optim_bytes / mib,
              mm->gather_bytes / mib, mm->act_bytes / mib);
}

tpm_status_t tpm_train_run(const tpm_config_t *cfg, tpm_comm_t *comm)
{
    const int          N = comm->size, A = cfg->grad_accum, B = cfg->batch;
    data_t             d;
    tpm_model_config_t mc;
    tpm_backend_t     *be = NULL;
    tpm_zero3_t       *z  = NULL;
    tpm_metrics_t      metrics = {NULL};
    int32_t           *x = NULL, *y = NULL;
    tpm_status_t       status;
    int                T, tty = isatty(STDERR_FILENO);
    double             t_start, last_loss = 0.0, last_val = -1.0, wait0, tokens_per_step;
    int64_t            step;

    memset(&d, 0, sizeof(d));
    TPM_CHECK_GOTO(data_load(cfg, comm, &d), status, out);
    status = model_config_from(cfg, &d, &mc);
    TPM_CHECK_GOTO(tpm_comm_agree(comm, status), status, out);
    T = cfg->seq_len;
    tokens_per_step = (double)N * A * B * T;

    status = tpm_backend_create(cfg->device, cfg->threads, &be);
    TPM_CHECK_GOTO(tpm_comm_agree(comm, status), status, out);
    status = tpm_zero3_create(be, comm, &mc, B, T, &z);
    TPM_CHECK_GOTO(tpm_comm_agree(comm, status), status, out);
    status = tpm_malloc(2 * (size_t)B * T * sizeof(int32_t), (void **)&x);
    TPM_CHECK_GOTO(tpm_comm_agree(comm, status), status, out);
    y = x + (size_t)B * T;
    TPM_CHECK_GOTO(open_outputs(cfg, comm, &metrics), status, out);

    tpm_info0("model %s: L=%d C=%d NH=%d V=%d (padded %d) n_ctx=%d, %zu parameters",
              cfg->model, mc.L, mc.C, mc.NH, mc.V, mc.Vp, mc.maxT, z->lay.logical_numel);
    tpm_info0("data %s: %zu train tokens, %zu val tokens", d.dir, d.train.n, d.val.n);
    tpm_info0("%d rank(s) x batch %d x grad-accum %d x seq %d = %.0f tokens per step, "
              "backend %s, %d thread(s)",
              N, B, A, T, tokens_per_step, be->ops->name, be->n_threads);
    tpm_zero3_print_layout(z);
    report_memory(z);
    status = tpm_zero3_init_params(z, cfg->seed);
    TPM_CHECK_GOTO(tpm_comm_agree(comm, status), status, out);

    /*
     * Inside the step loop every rank runs the same collectives; a failure on
     * one rank cannot be agreed on without risking a hang, so it is fatal.
     */
#define STEP_CALL(_expr)                                                                           \
    do {                                                                                           \
        tpm_status_t _st = (_expr);                                                                \
        if (_st != TPM_OK) {                                                                       \
            tpm_fatal(_st, "training step %lld: %s failed", (long long)step + 1, #_expr);          \
        }                                                                                          \
    } while (0)
    t_start = tpm_time_now();
    for (step = 0; step < cfg->steps; step++) {
        double t0 = tpm_time_now(), lr = tpm_train_lr(cfg, step), norm, sum = 0.0, loss_all;
        float  clip = 1.0f, loss;
        wait0       = z->times.wait_s;

        STEP_CALL(tpm_zero3_zero_grad(z));
        for (int a = 0; a < A; a++) {
            uint64_t g = ((uint64_t)step * A + a) * N + comm->rank;
            STEP_CALL(tpm_tokens_batch(&d.train, cfg->seed, g, B, T, x, y));
            STEP_CALL(tpm_zero3_fwd_bwd(z, x, y, 1.0f / (float)(N * A), &loss));
            sum += loss;
        }
        STEP_CALL(tpm_zero3_grad_norm(z, &norm));
        if (cfg->grad_clip > 0.0 && norm > cfg->grad_clip) {
            clip = (float)(cfg->grad_clip / norm);
        }
        STEP_CALL(tpm_zero3_adamw(z, (float)lr, (float)cfg->beta1, (float)cfg->beta2,
                                  (float)cfg->eps, (float)cfg->weight_decay, clip, (int)step + 1));
        STEP_CALL(tpm_comm_all_reduce(comm, &sum, &loss_all, 1, TPM_DT_DOUBLE, TPM_RED_SUM));
        last_loss = loss_all / (double)(N * A);
        if (!isfinite(last_loss)) {
            status = TPM_ERR_INTERNAL;
            tpm_log_error("loss is %f at step %lld: training diverged (lower --lr?)", last_loss,
                          (long long)step + 1);
            goto out;
        }
        {
            double dt = tpm_time_now() - t0;
            if (comm->rank == 0) {
                tpm_metrics_line(&metrics,
                                 "{\"type\":\"step\",\"step\":%lld,\"loss\":%.7g,\"lr\":%.7g,"
                                 "\"grad_norm\":%.7g,\"tokens_per_s\":%.2f,\"step_ms\":%.3f,"
                                 "\"comm_wait_ms\":%.3f}",
                                 (long long)step + 1, last_loss, lr, norm, tokens_per_step / dt,
                                 dt * 1e3, (z->times.wait_s - wait0) * 1e3);
                progress_line(cfg, step, last_loss, tokens_per_step / dt,
                              tpm_time_now() - t_start, tty);
            }
        }
        if (d.val.n > 0 && ((cfg->eval_every > 0 && (step + 1) % cfg->eval_every == 0) ||
                            step + 1 == cfg->steps)) {
            STEP_CALL(evaluate(cfg, z, &d, x, y, &last_val));
            tpm_info0("step %lld val_loss %.4f", (long long)step + 1, last_val);
            if (comm->rank == 0) {
                tpm_metrics_line(&metrics, "{\"type\":\"eval\",\"step\":%lld,\"val_loss\":%.7g}",
                                 (long long)step + 1, last_val);
            }
        }
    }
    {
        double   wall = tpm_time_now() - t_start, wait_frac;
        double   local[2] = {(double)tpm_peak_rss_bytes(), z->times.wait_s}, maxv[2];
        uint64_t gbytes   = z->comm->stats.bytes[TPM_COLL_REDUCE_SCATTER];
        uint64_t abytes   = z->comm->stats.bytes[TPM_COLL_ALLGATHER];

        TPM_CHECK_GOTO(tpm_comm_all_reduce(comm, local, maxv, 2, TPM_DT_DOUBLE, TPM_RED_MAX),
                       status, out);
        wait_frac = wall > 0 ? maxv[1] / wall : 0.0;
        tpm_info0("done: %lld steps, %.0f tokens in %.1f s (%.0f tok/s), final loss %.4f%s",
                  (long long)cfg->steps, tokens_per_step * cfg->steps, wall,
                  tokens_per_step * cfg->steps / wall, last_loss,
                  last_val >= 0 ? "" : " (no validation split)");
        if (comm->rank == 0) {
            tpm_metrics_line(
                &metrics,
                "{\"type\":\"summary\",\"steps\":%lld,\"tokens\":%.0f,\"wall_s\":%.3f,"
                "\"tokens_per_s\":%.2f,\"final_loss\":%.7g,\"final_val_loss\":%.7g,"
                "\"world_size\":%d,\"peak_rss_bytes\":%.0f,\"params\":%zu,"
                "\"mem\":{\"param_bytes\":%zu,\"grad_bytes\":%zu,\"optim_bytes\":%zu,"
                "\"model_state_bytes\":%zu,\"gather_bytes\":%zu,\"act_bytes\":%zu},"
                "\"comm\":{\"allgather_bytes\":%llu,\"reduce_scatter_bytes\":%llu,"
                "\"wait_s\":%.3f,\"wait_frac\":%.4f},\"grad_bytes_sent\":%llu}",
                (long long)cfg->steps, tokens_per_step * cfg->steps, wall,
                tokens_per_step * cfg->steps / wall, last_loss, last_val, N, maxv[0],
                z->lay.logical_numel, z->mem.param_bytes, z->mem.grad_bytes, z->mem.optim_bytes,
                z->mem.param_bytes + z->mem.grad_bytes + z->mem.optim_bytes, z->mem.gather_bytes,
                z->mem.act_bytes, (unsigned long long)abytes, (unsigned long long)gbytes,
                maxv[1], wait_frac, (unsigned long long)gbytes);
        }
    }
#undef STEP_CALL
    status = TPM_OK;

out:
    tpm_metrics_close(&metrics);
    tpm_free(x);
    tpm_zero3_destroy(z);
    tpm_backend_destroy(be);
    data_cleanup(&d);
    return status;
}
