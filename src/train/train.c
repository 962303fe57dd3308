/* SPDX-License-Identifier: MIT */
/*
 * train.c: the training driver. Data order (docs/DATA.md section 4): in step s,
 * micro-step a, rank r reads samples (a*N + r)*B .. +B-1 of the step's global
 * batch, each window keyed by (step, sample index), so the samples of a step
 * depend only on the global batch N*A*B, never on how it is split (the ZeRO-3
 * equivalence tests rely on this). Every failure that one rank
 * can hit alone (files, memory) is agreed on before anyone proceeds.
 *
 * Checkpoints (docs/CHECKPOINT.md): the whole training state is the parameter
 * and AdamW shards plus the step, because the data order and every random draw
 * are functions of (seed, step). SIGTERM / SIGUSR1 only set a flag; the ranks
 * agree on it once per step (one int all-reduce, MAX), then checkpoint and stop.
 */
#include "train/train.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/backend.h"
#include "base/mem.h"
#include "base/timer.h"
#include "ckpt/ckpt.h"
#include "ckpt/ckpt_llmc.h"
#include "ckpt/hf.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "train/metrics.h"
#include "train/push.h"
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
    void        *tok_bytes; /* serialized tokenizer for checkpoints (NULL: none) */
    size_t       tok_len;
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
            status   = tpm_tokenizer_to_bytes(tok, &d->tok_bytes, &d->tok_len);
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
    tpm_free(d->tok_bytes);
    d->tok_bytes = NULL;
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
    mc->arch = tpm_arch_id_parse(cfg->arch);
    if (mc->arch == TPM_ARCH_LLAMA) {
        mc->NKV                   = cfg->n_kv_head;
        mc->F                     = cfg->intermediate_size;
        mc->rms_eps               = (float)cfg->rms_eps;
        mc->rope_theta            = cfg->rope_theta;
        mc->rope.factor           = cfg->rope_factor;
        mc->rope.low_freq_factor  = cfg->rope_low_freq_factor;
        mc->rope.high_freq_factor = cfg->rope_high_freq_factor;
        mc->rope.orig_ctx         = cfg->rope_orig_ctx;
        mc->tied                  = cfg->tie_embeddings;
        mc->qkv_bias              = cfg->qkv_bias;
    }
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

/*
 * mean validation loss over eval_batches fixed global batches of N*A*B windows,
 * keyed like training data (order 2, stream = e) so that it does not depend
 * on the split either
 */
static tpm_status_t evaluate(const tpm_config_t *cfg, tpm_zero3_t *z, const data_t *d,
                             int32_t *x, int32_t *y, double *val_p)
{
    const int N = z->comm->size, A = cfg->grad_accum;
    double    sum = 0.0, total = 0.0;
    float     loss;

    for (int e = 0; e < cfg->eval_batches; e++) {
        for (int a = 0; a < A; a++) {
            tpm_data_key_t k = tpm_data_key(TPM_DATA_ORDER_SAMPLE, cfg->seed ^ TPM_DATA_VAL_SALT, e,
                                            a, A, z->comm->rank, N, z->B);
            TPM_CHECK(tpm_tokens_batch(&d->val, k.seed, k.stream, k.first, z->B, z->T, x, y));
            TPM_CHECK(tpm_zero3_forward(z, x, y, &loss));
            sum += loss;
        }
    }
    TPM_CHECK(tpm_comm_all_reduce(z->comm, &sum, &total, 1, TPM_DT_DOUBLE, TPM_RED_SUM));
    *val_p = total / ((double)N * A * cfg->eval_batches);
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

/* mkdir -p: every missing parent too (an existing directory is fine) */
static tpm_status_t mkdir_p(const char *dir)
{
    char path[TPM_PATH_MAX];

    if (dir[0] == '\0') {
        return TPM_OK;
    }
    snprintf(path, sizeof(path), "%s", dir);
    for (char *p = path + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p     = '\0';
            if (mkdir(path, 0755) != 0 && errno != EEXIST) {
                tpm_log_error("cannot create directory %s: %s", path, strerror(errno));
                return TPM_ERR_IO;
            }
            *p = c;
            if (c == '\0') {
                return TPM_OK;
            }
        }
    }
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
            status = mkdir_p(cfg->out);
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
            status = tpm_metrics_open(m, mpath, cfg->resume);
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
    if (z->copts.enabled) {
        tpm_info0("2-bit compression per rank: residual %.1f MiB (does not shrink with the rank "
                  "count), all-to-all buffers %.1f MiB",
                  mm->residual_bytes / mib, mm->compress_buf_bytes / mib);
    }
    if (z->param16 != NULL) {
        tpm_info0("bf16 working weights: %.1f MiB per rank (fp32 master, gradients and moments "
                  "above; all-gathers move bf16)",
                  mm->work_bytes / mib);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* checkpoints and stop signals */

static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig)
{
    stop_signal = sig;
}

/*
 * SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 (Slurm's warning before the time limit) ask for
 * checkpoint-and-exit
 */
static void stop_handlers_install(struct sigaction *old_term, struct sigaction *old_usr1,
                                  struct sigaction *old_int)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    stop_signal = 0;
    sigaction(SIGTERM, &sa, old_term);
    sigaction(SIGUSR1, &sa, old_usr1);
    sigaction(SIGINT, &sa, old_int);
}

static void stop_handlers_restore(const struct sigaction *old_term,
                                  const struct sigaction *old_usr1,
                                  const struct sigaction *old_int)
{
    sigaction(SIGTERM, old_term, NULL);
    sigaction(SIGUSR1, old_usr1, NULL);
    sigaction(SIGINT, old_int, NULL);
}

/* the resolved configuration as a JSON string, secrets blanked; caller frees with free() */
static char *config_json(const tpm_config_t *cfg)
{
    char         *buf = NULL;
    size_t        len = 0;
    FILE         *f;
    tpm_config_t *copy;

    /* checkpoints get copied around: the serving API key must not travel with them */
    if (tpm_malloc(sizeof(*copy), (void **)&copy) != TPM_OK) {
        return NULL;
    }
    memcpy(copy, cfg, sizeof(*copy));
    memset(copy->api_key, 0, sizeof(copy->api_key));
    f = open_memstream(&buf, &len);
    if (f != NULL) {
        tpm_config_dump_json(copy, f);
        if (fclose(f) != 0) {
            free(buf);
            buf = NULL;
        }
    }
    tpm_free(copy);
    return buf;
}

typedef struct {
    int64_t step;        /* optimizer steps done */
    int64_t tokens_seen; /* training tokens consumed, over every run */
    int64_t last_saved;  /* step of the newest checkpoint of DIR (-1: none yet) */
    char   *json;        /* resolved configuration (free()) */
    int     data_order;  /* TPM_DATA_ORDER, or the older order of the resumed checkpoint */
} run_state_t;

/* write DIR/ckpt_<step>.h5, then (rank 0) move DIR/latest and prune; collective, agreed */
static tpm_status_t ckpt_write(const tpm_config_t *cfg, tpm_zero3_t *z, const data_t *d,
                               run_state_t *rs)
{
    char            path[TPM_PATH_MAX + 32];
    tpm_ckpt_meta_t meta;
    tpm_status_t    status;

    TPM_CHECK(tpm_ckpt_agree(z->comm, tpm_ckpt_path(cfg->ckpt_dir, rs->step, path, sizeof(path))));
    memset(&meta, 0, sizeof(meta));
    meta.model         = z->cfg;
    meta.step          = rs->step;
    meta.tokens_seen   = rs->tokens_seen;
    meta.seed          = cfg->seed;
    meta.world_size    = z->comm->size;
    meta.config_json   = rs->json;
    meta.tokenizer     = d->tok_bytes;
    meta.tokenizer_len = d->tok_len;
    meta.batch         = cfg->batch;
    meta.grad_accum    = cfg->grad_accum;
    meta.seq_len       = cfg->seq_len;
    meta.lr            = rs->step > 0 ? tpm_train_lr(cfg, rs->step - 1) : 0.0;
    meta.data_order    = rs->data_order;
    TPM_CHECK(tpm_ckpt_save(z, path, &meta));
    status = TPM_OK;
    if (z->comm->rank == 0) {
        status = tpm_ckpt_commit(cfg->ckpt_dir, path, cfg->keep);
    }
    TPM_CHECK(tpm_ckpt_agree(z->comm, status));
    rs->last_saved = rs->step;
    return TPM_OK;
}

/* rank 0 picks the file, everyone learns it */
static tpm_status_t ckpt_pick(tpm_comm_t *comm, const char *dir_or_file, int resume, char *path,
                              size_t cap)
{
    tpm_status_t status = TPM_OK;

    if (comm->rank == 0) {
        if (resume) {
            status = tpm_ckpt_find_latest(dir_or_file, path, cap);
            if (status == TPM_ERR_NOT_FOUND) {
                tpm_log_error("--resume: no checkpoint in %s (no 'latest' pointer and no "
                              "ckpt_*.h5 file); run without --resume to start from scratch",
                              dir_or_file);
            }
        } else {
            status = tpm_ckpt_resolve(dir_or_file, path, cap);
        }
    }
    TPM_CHECK(tpm_ckpt_agree(comm, status));
    return tpm_comm_bcast(comm, path, cap, TPM_DT_BYTE, 0);
}

/* --overwrite: delete an older run's checkpoints (ckpt_*.h5, their temporaries, latest) */
static tpm_status_t ckpt_dir_clear(const char *dir)
{
    DIR           *d = opendir(dir);
    struct dirent *e;
    char           p[TPM_PATH_MAX + 256];
    int            n = 0;
    tpm_status_t   status = TPM_OK;

    if (d == NULL) {
        tpm_log_error("--overwrite: cannot read %s: %s", dir, strerror(errno));
        return TPM_ERR_IO;
    }
    while ((e = readdir(d)) != NULL && status == TPM_OK) {
        if (strcmp(e->d_name, "latest") != 0 && strncmp(e->d_name, "ckpt_", 5) != 0) {
            continue;
        }
        if (snprintf(p, sizeof(p), "%s/%s", dir, e->d_name) >= (int)sizeof(p) || unlink(p) != 0) {
            tpm_log_error("--overwrite: cannot delete %s: %s", p, strerror(errno));
            status = TPM_ERR_IO;
        }
        n++;
    }
    closedir(d);
    if (status == TPM_OK) {
        tpm_log_info("--overwrite: deleted %d file(s) of the previous run in %s", n, dir);
    }
    return status;
}

/* resume (--resume), weights only (--init-from) or a fresh model; sets rs->step and tokens */
static tpm_status_t init_state(const tpm_config_t *cfg, tpm_zero3_t *z, const data_t *d,
                               run_state_t *rs)
{
    tpm_comm_t     *comm = z->comm;
    char            path[TPM_PATH_MAX + 32];
    tpm_ckpt_meta_t meta;
    tpm_status_t    status = TPM_OK;

    memset(&meta, 0, sizeof(meta));
    if (cfg->resume && cfg->init_from[0] != '\0') {
        tpm_log_error("--resume and --init-from exclude each other (resume continues a run, "
                      "init-from starts a new one from given weights)");
        return TPM_ERR_INVALID_ARG;
    }
    if ((cfg->resume || cfg->ckpt_every > 0) && cfg->ckpt_dir[0] == '\0') {
        tpm_log_error("%s needs --ckpt-dir=DIR", cfg->resume ? "--resume" : "--ckpt-every");
        return TPM_ERR_INVALID_ARG;
    }
    if (cfg->ckpt_dir[0] != '\0' && comm->rank == 0) {
        struct stat st;
        status = mkdir_p(cfg->ckpt_dir);
        /* found now, not at the first checkpoint after hours of training */
        if (status == TPM_OK && (stat(cfg->ckpt_dir, &st) != 0 || !S_ISDIR(st.st_mode))) {
            tpm_log_error("--ckpt-dir=%s is not a directory", cfg->ckpt_dir);
            status = TPM_ERR_INVALID_ARG;
        } else if (status == TPM_OK && access(cfg->ckpt_dir, W_OK | X_OK) != 0) {
            tpm_log_error("--ckpt-dir=%s is not writable: %s", cfg->ckpt_dir, strerror(errno));
            status = TPM_ERR_INVALID_ARG;
        }
        if (status == TPM_OK && !cfg->resume &&
            tpm_ckpt_find_latest(cfg->ckpt_dir, path, sizeof(path)) == TPM_OK) {
            if (cfg->overwrite) {
                status = ckpt_dir_clear(cfg->ckpt_dir);
            } else {
                /* a fresh run would overwrite that run's files and move "latest" backwards */
                tpm_log_error("--ckpt-dir=%s already holds the checkpoints of a run (newest %s): "
                              "continue it with --resume, start afresh with --overwrite (which "
                              "deletes them), or give this run another directory",
                              cfg->ckpt_dir, path);
                status = TPM_ERR_INVALID_ARG;
            }
        }
    }
    TPM_CHECK(tpm_ckpt_agree(comm, status));

    if (cfg->resume) {
        TPM_CHECK(ckpt_pick(comm, cfg->ckpt_dir, 1, path, sizeof(path)));
        TPM_CHECK(tpm_ckpt_load(z, path, 1, &meta));
        if (meta.seed != cfg->seed) {
            /* the data order and every random draw derive from the seed: not resumable */
            tpm_log_error("checkpoint %s was written with seed = %llu, but this run has seed = "
                          "%llu (--seed)",
                          path, (unsigned long long)meta.seed, (unsigned long long)cfg->seed);
            status = TPM_ERR_INVALID_ARG;
        }
        if (status == TPM_OK && meta.data_order == TPM_DATA_ORDER_MICROBATCH) {
            /* keep the old run's data: order 1 is still implemented */
            int same = meta.world_size == comm->size && meta.grad_accum == cfg->grad_accum &&
                       meta.batch == cfg->batch;
            tpm_info0("note: checkpoint %s uses data order 1 (windows keyed by micro-batch, "
                      "before data_order was recorded); this run continues in order 1%s, and "
                      "so will its checkpoints; start a new run (--init-from) for order 2, "
                      "where any split of the global batch reads the same samples",
                      path,
                      same ? "" : ", but order 1 depends on the split, which differs: the data "
                                  "will not be what the old run would have read");
        } else if (status == TPM_OK &&
                   (int64_t)meta.world_size * meta.grad_accum * meta.batch ==
                       (int64_t)comm->size * cfg->grad_accum * cfg->batch &&
                   (meta.world_size != comm->size || meta.grad_accum != cfg->grad_accum)) {
            tpm_info0("note: the global batch of %d sequences was split %d ranks x %d x %d, "
                      "now %d x %d x %d; the samples of every step are the same",
                      meta.world_size * meta.grad_accum * meta.batch, meta.world_size,
                      meta.grad_accum, meta.batch, comm->size, cfg->grad_accum, cfg->batch);
        } else if (status == TPM_OK &&
                   (int64_t)meta.world_size * meta.grad_accum * meta.batch !=
                       (int64_t)comm->size * cfg->grad_accum * cfg->batch) {
            tpm_info0("note: the global batch was %d ranks x %d x %d sequences, it is now "
                      "%d x %d x %d; the data order continues by step with the new batch",
                      meta.world_size, meta.grad_accum, meta.batch, comm->size, cfg->grad_accum,
                      cfg->batch);
        }
        if (status == TPM_OK && d->tok_bytes != NULL && meta.tokenizer != NULL &&
            (meta.tokenizer_len != d->tok_len ||
             memcmp(meta.tokenizer, d->tok_bytes, d->tok_len) != 0)) {
            tpm_info0("warning: the tokenizer of the data differs from the one in %s", path);
        }
        if (status == TPM_OK) {
            rs->step        = meta.step;
            rs->tokens_seen = meta.tokens_seen;
            rs->last_saved  = meta.step;
            rs->data_order  = meta.data_order;
            /* the 2-bit error-feedback residual is not in checkpoints (docs/COMPRESSION.md) */
            status = tpm_zero3_reset_residual(z);
        }
        if (status == TPM_OK) {
            tpm_info0("resuming from %s: step %lld, %lld tokens seen (written on %d rank(s), "
                      "now %d)",
                      path, (long long)meta.step, (long long)meta.tokens_seen, meta.world_size,
                      comm->size);
        }
        tpm_ckpt_meta_cleanup(&meta);
        return status;
    }
    if (strncmp(cfg->init_from, "llmc:", 5) == 0) {
        return tpm_ckpt_import_llmc(z, cfg->init_from + 5);
    }
    if (strncmp(cfg->init_from, "hf:", 3) == 0) {
        return tpm_ckpt_import_hf(z, cfg->init_from + 3);
    }
    if (cfg->init_from[0] != '\0') {
        TPM_CHECK(ckpt_pick(comm, cfg->init_from, 0, path, sizeof(path)));
        TPM_CHECK(tpm_ckpt_load(z, path, 0, &meta));
        tpm_info0("weights from %s (step %lld of its run); fresh optimizer, starting at step 0",
                  path, (long long)meta.step);
        tpm_ckpt_meta_cleanup(&meta);
        return TPM_OK;
    }
    /* a failed host allocation is local to one rank: agree before anyone trains */
    return tpm_comm_agree(z->comm, tpm_zero3_init_params(z, cfg->seed));
}

tpm_status_t tpm_train_run(const tpm_config_t *cfg, tpm_comm_t *comm)
{
    return tpm_train_run_linked(cfg, comm, NULL);
}

tpm_status_t tpm_train_run_linked(const tpm_config_t *cfg, tpm_comm_t *comm,
                                  const struct tpm_push_link *link)
{
    const int          bf16 = strcmp(cfg->precision, "bf16") == 0;
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
    int64_t            step, start_step, n_run;
    run_state_t        rs = {0, 0, -1, NULL, TPM_DATA_ORDER};
    struct sigaction   old_term, old_usr1, old_int;
    tpm_pusher_t      *pusher     = NULL;
    int                hello_done = 0, serve_stopped = 0;
    int64_t            last_pushed  = -1;
    tpm_status_t       serve_status = TPM_OK;

    memset(&d, 0, sizeof(d));
    stop_handlers_install(&old_term, &old_usr1, &old_int);
    TPM_CHECK_GOTO(data_load(cfg, comm, &d), status, out);
    status = model_config_from(cfg, &d, &mc);
    TPM_CHECK_GOTO(tpm_comm_agree(comm, status), status, out);
    T = cfg->seq_len;
    tokens_per_step = (double)N * A * B * T;

    status = tpm_backend_create(cfg->device, cfg->threads, &be);
    if (status == TPM_OK) {
        /* bf16 working weights pair with bf16 tensor-core inputs unless told otherwise */
        status = tpm_backend_set_matmul(
            be, strcmp(cfg->cuda_matmul, "auto") == 0 && bf16 ? "bf16" : cfg->cuda_matmul);
    }
    TPM_CHECK_GOTO(tpm_comm_agree(comm, status), status, out);
    status = tpm_zero3_create(be, comm, &mc, B, T, &z);
    if (status == TPM_OK) {
        status = tpm_zero3_set_precision(z, bf16);
    }
    TPM_CHECK_GOTO(tpm_comm_agree(comm, status), status, out);
    {
        tpm_compress_opts_t copts;
        status = tpm_compress_opts_from_config(cfg, &copts);
        if (status == TPM_OK) {
            status = tpm_zero3_set_compression(z, &copts);
        }
        TPM_CHECK_GOTO(tpm_comm_agree(comm, status), status, out);
    }
    status = tpm_malloc(2 * (size_t)B * T * sizeof(int32_t), (void **)&x);
    TPM_CHECK_GOTO(tpm_comm_agree(comm, status), status, out);
    y = x + (size_t)B * T;
    TPM_CHECK_GOTO(open_outputs(cfg, comm, &metrics), status, out);

    if (mc.arch == TPM_ARCH_LLAMA) {
        tpm_info0("model %s (llama): L=%d C=%d NH=%d NKV=%d F=%d V=%d (padded %d) n_ctx=%d, "
                  "rope theta %g%s, %s head%s, %zu parameters",
                  cfg->model, mc.L, mc.C, mc.NH, mc.NKV, mc.F, mc.V, mc.Vp, mc.maxT,
                  mc.rope_theta, mc.rope.factor > 0 ? " (llama3 scaling)" : "",
                  mc.tied ? "tied" : "untied", mc.qkv_bias ? ", qkv bias" : "",
                  z->lay.logical_numel);
    } else {
        tpm_info0("model %s: L=%d C=%d NH=%d V=%d (padded %d) n_ctx=%d, %zu parameters",
                  cfg->model, mc.L, mc.C, mc.NH, mc.V, mc.Vp, mc.maxT, z->lay.logical_numel);
    }
    tpm_info0("data %s: %zu train tokens, %zu val tokens", d.dir, d.train.n, d.val.n);
    tpm_info0("%d rank(s) x batch %d x grad-accum %d x seq %d = %.0f tokens per step, "
              "backend %s, %d thread(s)",
              N, B, A, T, tokens_per_step, be->ops->name, be->n_threads);
    tpm_zero3_print_layout(z);
    report_memory(z);
    rs.json = config_json(cfg);
    status  = rs.json != NULL ? TPM_OK : TPM_ERR_NO_MEMORY;
    TPM_CHECK_GOTO(tpm_comm_agree(comm, status), status, out);
    if (cfg->min_lr > cfg->lr) {
        tpm_info0("warning: --min-lr=%g is above --lr=%g: the schedule rises instead of decaying",
                  cfg->min_lr, cfg->lr);
    }
    if (cfg->warmup > cfg->steps) {
        tpm_info0("warning: --warmup=%lld is longer than --steps=%lld: the learning rate never "
                  "reaches --lr",
                  (long long)cfg->warmup, (long long)cfg->steps);
    }
    TPM_CHECK_GOTO(init_state(cfg, z, &d, &rs), status, out);
    start_step = rs.step;
    if (link != NULL) {
        /* the serving group waits for the model: tell it, then give it the first weights */
        status = d.tok_bytes != NULL ? TPM_OK : TPM_ERR_NOT_FOUND;
        if (status != TPM_OK) {
            tpm_info0("error: --mode=trainserve needs the data folder's tokenizer.bin (the "
                      "serving ranks detokenize with it)");
        } else {
            status = tpm_pusher_create(link, z, &pusher);
        }
        TPM_CHECK_GOTO(tpm_comm_agree(comm, status), status, out);
        status     = tpm_push_hello(link, comm->rank, TPM_OK, &mc, d.tok_bytes, d.tok_len);
        hello_done = 1;
        TPM_CHECK_GOTO(tpm_comm_agree(comm, status), status, out);
        TPM_CHECK_GOTO(tpm_comm_agree(comm, tpm_pusher_start(pusher, rs.step)), status, out);
        last_pushed = rs.step;
        tpm_info0("trainserve: %d training rank(s) push to %d serving rank(s) every %lld "
                  "step(s) (%s)",
                  link->n_train, link->n_serve, (long long)link->push_every,
                  link->bf16 ? "bf16" : "fp32");
    }
    if (start_step >= cfg->steps) {
        tpm_info0("the checkpoint is at step %lld and --steps is %lld: nothing to train",
                  (long long)start_step, (long long)cfg->steps);
    }

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
    for (step = start_step; step < cfg->steps; step++) {
        double   t0 = tpm_time_now(), lr = tpm_train_lr(cfg, step), norm, sum = 0.0, loss_all;
        float    clip = 1.0f, loss;
        uint64_t gb0  = tpm_zero3_grad_bytes_sent(z);
        wait0         = z->times.wait_s;

        tpm_zero3_begin_step(z, step);

        STEP_CALL(tpm_zero3_zero_grad(z));
        for (int a = 0; a < A; a++) {
            tpm_data_key_t k = tpm_data_key(rs.data_order, cfg->seed, step, a, A, comm->rank, N, B);
            STEP_CALL(tpm_tokens_batch(&d.train, k.seed, k.stream, k.first, B, T, x, y));
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
                                 "\"comm_wait_ms\":%.3f,\"grad_bytes\":%llu}",
                                 (long long)step + 1, last_loss, lr, norm, tokens_per_step / dt,
                                 dt * 1e3, (z->times.wait_s - wait0) * 1e3,
                                 (unsigned long long)(tpm_zero3_grad_bytes_sent(z) - gb0));
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
        rs.step = step + 1;
        rs.tokens_seen += (int64_t)tokens_per_step;
        if (cfg->ckpt_dir[0] != '\0' && cfg->ckpt_every > 0 && rs.step % cfg->ckpt_every == 0 &&
            ckpt_write(cfg, z, &d, &rs) != TPM_OK) {
            /* agreed on every rank; the state is intact in memory: try again next interval */
            int64_t next = rs.step + cfg->ckpt_every;
            tpm_log_error("the checkpoint of step %lld failed (above): training goes on, the "
                          "next attempt is at step %lld",
                          (long long)rs.step, (long long)(next < cfg->steps ? next : cfg->steps));
        }
        {
            /*
             * A signal may reach only some ranks: agree on it before anyone acts. The serving
             * group's control messages (push request, stop) reach training rank 0 only.
             */
            int32_t mine[4] = {(int32_t)stop_signal, 0, 0, 0}, all[4], any;
            if (pusher != NULL) {
                int          req = 0, stop = 0;
                tpm_status_t why = TPM_OK;
                STEP_CALL(tpm_pusher_poll(pusher, &req, &stop, &why));
                mine[1] = req;
                mine[2] = stop;
                mine[3] = -(int32_t)why;
            }
            STEP_CALL(tpm_comm_all_reduce(comm, mine, all, 4, TPM_DT_INT32, TPM_RED_MAX));
            any = all[0];
            if (pusher != NULL && all[2] != 0) {
                serve_stopped = 1;
                serve_status  = (tpm_status_t)(-all[3]);
                tpm_info0("the serving group stopped%s: stopping after step %lld",
                          serve_status != TPM_OK ? " on a failure" : "", (long long)rs.step);
                break;
            }
            if (pusher != NULL &&
                (all[1] != 0 || (link->push_every > 0 && rs.step % link->push_every == 0))) {
                STEP_CALL(tpm_pusher_start(pusher, rs.step));
                last_pushed = rs.step;
                tpm_log_debug("pushed the weights of step %lld", (long long)rs.step);
            }
            if (any != 0) {
                tpm_info0("%s received: stopping after step %lld%s", strsignal(any),
                          (long long)rs.step,
                          cfg->ckpt_dir[0] != '\0' ? " with a checkpoint"
                                                   : " (no --ckpt-dir: no checkpoint)");
                break;
            }
        }
    }
    if (cfg->ckpt_dir[0] != '\0' && rs.step != rs.last_saved) {
        TPM_CHECK_GOTO(ckpt_write(cfg, z, &d, &rs), status, out);
    }
    if (pusher != NULL && !serve_stopped && rs.step != last_pushed) {
        STEP_CALL(tpm_pusher_start(pusher, rs.step)); /* the final weights */
        last_pushed = rs.step;
    }
    if (serve_status != TPM_OK) {
        status = TPM_ERR_REMOTE;
        tpm_info0("error: the serving group failed; the training group stops too");
        goto out;
    }
    n_run = rs.step - start_step;
    if (n_run == 0) {
        status = TPM_OK;
        goto out;
    }
    {
        double   wall = tpm_time_now() - t_start, wait_frac;
        double   local[2] = {(double)tpm_peak_rss_bytes(), z->times.wait_s}, maxv[2];
        uint64_t gbytes   = z->comm->stats.bytes[TPM_COLL_REDUCE_SCATTER];
        uint64_t abytes   = z->comm->stats.bytes[TPM_COLL_ALLGATHER];
        uint64_t a2abytes = z->comm->stats.bytes[TPM_COLL_ALLTOALL];
        uint64_t g2bit    = z->gx != NULL ? z->gx->stats.bytes_2bit : 0;
        double   codec_s  = z->gx != NULL ? z->gx->stats.codec_s : 0.0;

        TPM_CHECK_GOTO(tpm_comm_all_reduce(comm, local, maxv, 2, TPM_DT_DOUBLE, TPM_RED_MAX),
                       status, out);
        wait_frac = wall > 0 ? maxv[1] / wall : 0.0;
        tpm_info0("done: %lld steps, %.0f tokens in %.1f s (%.0f tok/s), final loss %.4f%s",
                  (long long)n_run, tokens_per_step * n_run, wall, tokens_per_step * n_run / wall,
                  last_loss,
                  last_val >= 0  ? ""
                  : d.val.n == 0 ? " (no validation split)"
                                 : " (stopped before the first validation)");
        if (comm->rank == 0) {
            tpm_metrics_line(
                &metrics,
                "{\"type\":\"summary\",\"steps\":%lld,\"tokens\":%.0f,\"wall_s\":%.3f,"
                "\"tokens_per_s\":%.2f,\"final_loss\":%.7g,\"final_val_loss\":%.7g,"
                "\"world_size\":%d,\"peak_rss_bytes\":%.0f,\"params\":%zu,"
                "\"mem\":{\"param_bytes\":%zu,\"grad_bytes\":%zu,\"optim_bytes\":%zu,"
                "\"model_state_bytes\":%zu,\"gather_bytes\":%zu,\"act_bytes\":%zu,"
                "\"work_bytes\":%zu,\"comm_scratch_bytes\":%zu},\"precision\":\"%s\","
                "\"comm\":{\"allgather_bytes\":%llu,\"reduce_scatter_bytes\":%llu,"
                "\"alltoall_bytes\":%llu,\"wait_s\":%.3f,\"wait_frac\":%.4f},"
                "\"grad_bytes_sent\":%llu,\"grad_bytes_compressed\":%llu,"
                "\"grad_compression\":\"%s\",\"compression_residual\":\"%s\","
                "\"residual_bytes\":%zu,\"codec_s\":%.3f}",
                (long long)rs.step, tokens_per_step * n_run, wall, tokens_per_step * n_run / wall,
                last_loss, last_val, N, maxv[0],
                z->lay.logical_numel, z->mem.param_bytes, z->mem.grad_bytes, z->mem.optim_bytes,
                z->mem.param_bytes + z->mem.grad_bytes + z->mem.optim_bytes, z->mem.gather_bytes,
                z->mem.act_bytes, z->mem.work_bytes, comm->stats.scratch_bytes,
                z->param16 != NULL ? "bf16" : "fp32",
                (unsigned long long)abytes, (unsigned long long)gbytes,
                (unsigned long long)a2abytes, maxv[1], wait_frac,
                (unsigned long long)tpm_zero3_grad_bytes_sent(z), (unsigned long long)g2bit,
                z->copts.enabled ? "2bit" : "none",
                z->copts.enabled ? cfg->compression_residual : "none", z->mem.residual_bytes,
                codec_s);
        }
    }
#undef STEP_CALL
    status = TPM_OK;

out:
    if (link != NULL) {
        /* the serving group waits for HELLO, or for BYE once it has one: never leave it */
        if (!hello_done) {
            tpm_push_hello(link, comm->rank, status != TPM_OK ? status : TPM_ERR_INTERNAL, NULL,
                           NULL, 0);
        } else if (pusher != NULL) {
            tpm_status_t fs = tpm_pusher_finish(pusher, serve_stopped, status);
            if (fs != TPM_OK) {
                tpm_fatal(fs, "trainserve: ending the weight push protocol failed");
            }
            if (comm->rank == 0) {
                const tpm_push_stats_t *ps = tpm_pusher_stats(pusher);
                tpm_info0("trainserve: %llu push(es), %.1f MiB sent by training rank 0, packing "
                          "%.3f s",
                          (unsigned long long)ps->pushes, (double)ps->bytes / 1048576.0,
                          ps->pack_s);
            }
        }
        tpm_pusher_destroy(pusher);
    }
    stop_handlers_restore(&old_term, &old_usr1, &old_int);
    free(rs.json);
    {
        /* rank 0 only: after the last collective, so the other ranks are not left waiting */
        tpm_status_t ms = tpm_metrics_close(&metrics);
        status          = status != TPM_OK ? status : ms;
    }
    tpm_free(x);
    tpm_zero3_destroy(z);
    tpm_backend_destroy(be);
    data_cleanup(&d);
    return status;
}
