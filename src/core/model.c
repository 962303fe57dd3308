/* SPDX-License-Identifier: MIT */
/*
 * model.c: GPT-2 forward and backward in layer order, on full tensor views,
 * through backend ops only. Layout and math: docs/MODEL.md. Notation:
 * B batch, T time, C channels, NH heads, V vocab, Vp padded vocab.
 */
#include "core/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/mem.h"
#include "base/rng.h"
#include "base/timer.h"

#define TPM_MAX_DIM (1 << 20)

/* ---------------------------------------------------------------------------------------------- */
/* opt-in per-op profile (TPMPI_PROFILE=1), see model.h */

static const char *const prof_name[TPM_PROF_N] = {
    [TPM_PROF_EMBED_FWD]   = "embedding",
    [TPM_PROF_LN_FWD]      = "layernorm",
    [TPM_PROF_QKV_FWD]     = "qkv matmul",
    [TPM_PROF_ATTN_FWD]    = "attention",
    [TPM_PROF_ATTPROJ_FWD] = "attproj matmul",
    [TPM_PROF_RESID_FWD]   = "residual add",
    [TPM_PROF_FC_FWD]      = "fc matmul",
    [TPM_PROF_GELU_FWD]    = "gelu",
    [TPM_PROF_FCPROJ_FWD]  = "fcproj matmul",
    [TPM_PROF_LOGITS_FWD]  = "logits matmul",
    [TPM_PROF_XENT]        = "xent fwd+bwd",
    [TPM_PROF_GATHER_FWD]  = "zero3 gather",
    [TPM_PROF_LOGITS_BWD]  = "logits matmul",
    [TPM_PROF_LN_BWD]      = "layernorm",
    [TPM_PROF_FCPROJ_BWD]  = "fcproj matmul",
    [TPM_PROF_GELU_BWD]    = "gelu",
    [TPM_PROF_FC_BWD]      = "fc matmul",
    [TPM_PROF_ATTPROJ_BWD] = "attproj matmul",
    [TPM_PROF_ATTN_BWD]    = "attention",
    [TPM_PROF_QKV_BWD]     = "qkv matmul",
    [TPM_PROF_EMBED_BWD]   = "embedding",
    [TPM_PROF_MEMZERO_BWD] = "memzero",
    [TPM_PROF_GATHER_BWD]  = "zero3 gather",
    [TPM_PROF_RS_BWD]      = "zero3 grad RS",
    [TPM_PROF_EMB_RS_BWD]  = "zero3 emb RS",
    [TPM_PROF_ZERO_GRAD]   = "zero grad",
    [TPM_PROF_GRAD_NORM]   = "grad norm",
    [TPM_PROF_CLIP]        = "clip scale",
    [TPM_PROF_ADAMW]       = "adamw",
};

static int    prof_state = -1; /* -1: environment not read yet, 0 off, 1 on */
static int    prof_warm;       /* the first optimizer step is over: record */
static double prof_s[TPM_PROF_N];
static double prof_pend[TPM_PROF_N_FWD]; /* forward ops of the pass in flight */
static long   prof_n[TPM_PROF_N];
static long   prof_pend_n[TPM_PROF_N_FWD];
static long   prof_mb, prof_steps; /* recorded micro-batches and optimizer steps */

static void prof_report(void)
{
    const double mb = prof_mb > 0 ? (double)prof_mb : 1.0, st = prof_steps > 0 ? prof_steps : 1;
    double       part[3] = {0.0, 0.0, 0.0}, total;

    if (prof_mb == 0 && prof_steps == 0) {
        return;
    }
    for (int i = 0; i < TPM_PROF_N; i++) {
        part[i < TPM_PROF_N_FWD   ? 0
             : i < TPM_PROF_N_BWD ? 1
                                  : 2] += prof_s[i] / (i < TPM_PROF_N_BWD ? mb : st);
    }
    total = part[0] + part[1] + part[2];
    tpm_info0("profile (TPMPI_PROFILE): %ld micro-batches, %ld optimizer steps after the first "
              "step; ms per micro-batch (forward, backward) or per step (optimizer)",
              prof_mb, prof_steps);
    tpm_info0("  %-9s %-16s %8s %10s %6s", "phase", "op", "calls", "ms", "share");
    for (int i = 0; i < TPM_PROF_N; i++) {
        const int    ph = i < TPM_PROF_N_FWD ? 0 : i < TPM_PROF_N_BWD ? 1 : 2;
        const double ms = prof_s[i] / (ph < 2 ? mb : st) * 1e3;

        if (prof_n[i] > 0) {
            tpm_info0("  %-9s %-16s %8ld %10.2f %5.1f%%",
                      ph == 0   ? "forward"
                      : ph == 1 ? "backward"
                                : "optimizer",
                      prof_name[i], prof_n[i], ms, total > 0 ? 100.0 * ms / 1e3 / total : 0.0);
        }
    }
    tpm_info0("  %-9s %-16s %8s %10.2f %5.1f%%", "forward", "total", "", part[0] * 1e3,
              total > 0 ? 100.0 * part[0] / total : 0.0);
    tpm_info0("  %-9s %-16s %8s %10.2f %5.1f%%", "backward", "total", "", part[1] * 1e3,
              total > 0 ? 100.0 * part[1] / total : 0.0);
    tpm_info0("  %-9s %-16s %8s %10.2f %5.1f%%", "optimizer", "total", "", part[2] * 1e3,
              total > 0 ? 100.0 * part[2] / total : 0.0);
    tpm_info0("  %-9s %-16s %8s %10.2f", "all", "per step", "", total * 1e3);
}

double tpm_prof_begin(tpm_backend_t *be)
{
    if (prof_state == 0) {
        return 0.0;
    }
    if (prof_state < 0) {
        const char *e = getenv("TPMPI_PROFILE");

        prof_state = e != NULL && e[0] != '\0' && strcmp(e, "0") != 0;
        if (prof_state == 0) {
            return 0.0;
        }
        atexit(prof_report);
    }
    /* ops may be asynchronous (CUDA): time from an idle device */
    (void)be->ops->sync(be);
    return tpm_time_now();
}

void tpm_prof_end(tpm_backend_t *be, tpm_prof_op_t op, double t0)
{
    double dt;

    if (t0 == 0.0) {
        return;
    }
    (void)be->ops->sync(be);
    dt = tpm_time_now() - t0;
    if (op < TPM_PROF_N_FWD) {
        /* kept aside until the head knows whether this is a training pass */
        prof_pend[op] += dt;
        prof_pend_n[op]++;
        return;
    }
    if (prof_warm) {
        prof_s[op] += dt;
        prof_n[op]++;
        prof_steps += op == TPM_PROF_ADAMW;
    }
    prof_warm |= op == TPM_PROF_ADAMW;
}

/* end of the forward pass: keep its times if it is a (recorded) training pass */
static void prof_commit_fwd(int training)
{
    if (prof_state <= 0) {
        return;
    }
    if (training && prof_warm) {
        for (int i = 0; i < TPM_PROF_N_FWD; i++) {
            prof_s[i] += prof_pend[i];
            prof_n[i] += prof_pend_n[i];
        }
        prof_mb++;
    }
    memset(prof_pend, 0, sizeof(prof_pend));
    memset(prof_pend_n, 0, sizeof(prof_pend_n));
}

/* one backend op, timed when TPMPI_PROFILE is set */
#define PROF_CALL(_op, _call)                                                                      \
    do {                                                                                           \
        double _t0 = tpm_prof_begin(be);                                                           \
        TPM_CHECK(_call);                                                                          \
        tpm_prof_end(be, (_op), _t0);                                                              \
    } while (0)

const char *tpm_arch_id_name(int arch)
{
    return arch == TPM_ARCH_GPT2 ? "gpt2" : arch == TPM_ARCH_LLAMA ? "llama" : NULL;
}

int tpm_arch_id_parse(const char *name)
{
    return strcmp(name, "gpt2") == 0 ? TPM_ARCH_GPT2 : strcmp(name, "llama") == 0 ? TPM_ARCH_LLAMA : -1;
}

/* the LLaMA-only fields: GQA heads, MLP width, RMSNorm and rotary parameters */
static tpm_status_t config_finish_llama(tpm_model_config_t *cfg)
{
    const int    hs = cfg->C / cfg->NH;
    float       *inv;
    tpm_status_t status;

    if (cfg->NKV < 1 || cfg->NKV > cfg->NH || cfg->NH % cfg->NKV != 0) {
        tpm_log_error("model: n_kv_head %d must divide n_head %d", cfg->NKV, cfg->NH);
        return TPM_ERR_INVALID_ARG;
    }
    if (cfg->F < 1 || cfg->F > TPM_MAX_DIM) {
        tpm_log_error("model: intermediate_size %d out of range [1, %d]", cfg->F, TPM_MAX_DIM);
        return TPM_ERR_INVALID_ARG;
    }
    if (hs % 2 != 0) {
        tpm_log_error("model: head size %d (n_embd / n_head) must be even for RoPE", hs);
        return TPM_ERR_INVALID_ARG;
    }
    if (!(cfg->rms_eps > 0.0f && cfg->rms_eps < 1.0f)) {
        tpm_log_error("model: rms_eps %g out of range (0, 1)", (double)cfg->rms_eps);
        return TPM_ERR_INVALID_ARG;
    }
    if (cfg->tied != 0 && cfg->tied != 1) {
        tpm_log_error("model: tie_embeddings %d is neither 0 nor 1", cfg->tied);
        return TPM_ERR_INVALID_ARG;
    }
    if (cfg->qkv_bias != 0 && cfg->qkv_bias != 1) {
        tpm_log_error("model: qkv_bias %d is neither 0 nor 1", cfg->qkv_bias);
        return TPM_ERR_INVALID_ARG;
    }
    /* the rotary parameters: tpm_rope_inv_freq names what is wrong */
    TPM_CHECK(tpm_malloc((size_t)hs / 2 * sizeof(float), (void **)&inv));
    status = tpm_rope_inv_freq(hs, cfg->rope_theta, &cfg->rope, inv);
    tpm_free(inv);
    return status;
}

tpm_status_t tpm_model_config_finish(tpm_model_config_t *cfg)
{
    if (cfg->L < 1 || cfg->L > 1024) {
        tpm_log_error("model: n_layer %d out of range [1, 1024]", cfg->L);
        return TPM_ERR_INVALID_ARG;
    }
    if (cfg->C < 1 || cfg->C > 65536 || cfg->NH < 1 || cfg->NH > cfg->C) {
        tpm_log_error("model: n_embd %d / n_head %d out of range", cfg->C, cfg->NH);
        return TPM_ERR_INVALID_ARG;
    }
    if (cfg->C % cfg->NH != 0) {
        tpm_log_error("model: n_head %d does not divide n_embd %d", cfg->NH, cfg->C);
        return TPM_ERR_INVALID_ARG;
    }
    if (cfg->V < 2 || cfg->V > TPM_MAX_DIM) {
        tpm_log_error("model: vocab_size %d out of range [2, %d]", cfg->V, TPM_MAX_DIM);
        return TPM_ERR_INVALID_ARG;
    }
    if (cfg->maxT < 1 || cfg->maxT > 65536) {
        tpm_log_error("model: seq_len %d out of range [1, 65536]", cfg->maxT);
        return TPM_ERR_INVALID_ARG;
    }
    cfg->Vp = (cfg->V + TPM_VOCAB_PAD - 1) / TPM_VOCAB_PAD * TPM_VOCAB_PAD;
    switch (cfg->arch) {
    case TPM_ARCH_GPT2:
        cfg->NKV      = cfg->NH;
        cfg->F        = 4 * cfg->C;
        cfg->tied     = 1;
        cfg->qkv_bias = 1;
        return TPM_OK;
    case TPM_ARCH_LLAMA: return config_finish_llama(cfg);
    default:
        tpm_log_error("model: unknown architecture id %d (this tpmpi knows gpt2 and llama)",
                      cfg->arch);
        return TPM_ERR_INVALID_ARG;
    }
}

const tpm_arch_t *tpm_model_arch(const tpm_model_config_t *cfg)
{
    if (cfg->arch == TPM_ARCH_LLAMA) {
        return &tpm_arch_llama[cfg->qkv_bias != 0][cfg->tied == 0];
    }
    return &tpm_arch_gpt2;
}

int64_t tpm_model_dim(const tpm_model_config_t *cfg, tpm_dim_t d)
{
    switch (d) {
    case TPM_DIM_1: return 1;
    case TPM_DIM_C: return cfg->C;
    case TPM_DIM_3C: return 3 * (int64_t)cfg->C;
    case TPM_DIM_4C: return 4 * (int64_t)cfg->C;
    case TPM_DIM_VP: return cfg->Vp;
    case TPM_DIM_MAXT: return cfg->maxT;
    case TPM_DIM_QKV: return tpm_model_qkv_rows(cfg);
    case TPM_DIM_F: return tpm_model_ffn(cfg);
    }
    TPM_ASSERT(0);
    return 0;
}

const tpm_tensor_spec_t *tpm_model_spec(const tpm_model_config_t *cfg, int g, int t)
{
    const tpm_arch_t *a = tpm_model_arch(cfg);

    TPM_ASSERT(g >= 0 && g <= cfg->L && t >= 0 && t < (g == cfg->L ? a->n_emb : a->n_block));
    return g == cfg->L ? &a->emb[t] : &a->block[t];
}

int tpm_model_group_desc(const tpm_model_config_t *cfg, int g, tpm_param_desc_t *d)
{
    const tpm_arch_t *a        = tpm_model_arch(cfg);
    const int         nt       = g == cfg->L ? a->n_emb : a->n_block;
    const float       std      = 0.02f;
    const float       proj_std = 0.02f / sqrtf(2.0f * (float)cfg->L);

    for (int t = 0; t < nt; t++) {
        const tpm_tensor_spec_t *s = tpm_model_spec(cfg, g, t);

        snprintf(d[t].name, sizeof(d[t].name), "%s", s->name);
        d[t].rows = tpm_model_dim(cfg, s->rows);
        d[t].cols = tpm_model_dim(cfg, s->cols);
        /* vocabulary padding rows hold zeros */
        d[t].valid_rows = s->rows == TPM_DIM_VP ? cfg->V : d[t].rows;
        d[t].decay      = s->decay;
        d[t].init =
            s->init == TPM_INIT_W || s->init == TPM_INIT_W_RESID ? TPM_INIT_NORMAL : TPM_INIT_CONST;
        d[t].init_value = s->init == TPM_INIT_W         ? std
                          : s->init == TPM_INIT_W_RESID ? proj_std
                          : s->init == TPM_INIT_ONE     ? 1.0f
                                                        : 0.0f;
        d[t].split      = s->split;
        d[t].spec       = s;
    }
    return nt;
}

tpm_status_t tpm_model_tensor_name(const tpm_model_config_t *cfg, int g, int t, char *buf,
                                   size_t cap)
{
    const tpm_tensor_spec_t *s = tpm_model_spec(cfg, g, t);
    int                      n =
        g < cfg->L ? snprintf(buf, cap, "h.%d.%s", g, s->name) : snprintf(buf, cap, "%s", s->name);

    if (n < 0 || (size_t)n >= cap) {
        tpm_log_error("model: the name of tensor %s of group %d does not fit %zu bytes", s->name, g,
                      cap);
        return TPM_ERR_INVALID_ARG;
    }
    return TPM_OK;
}

size_t tpm_model_num_params(const tpm_model_config_t *cfg)
{
    tpm_param_desc_t d[TPM_GROUP_MAX_NT];
    size_t           n = 0;

    for (int g = 0; g < tpm_model_n_groups(cfg); g++) {
        int nt = tpm_model_group_desc(cfg, g, d);
        for (int t = 0; t < nt; t++) {
            n += (size_t)d[t].rows * (size_t)d[t].cols;
        }
    }
    return n;
}

float tpm_model_init_value(const tpm_param_desc_t *d, uint64_t seed, int g, int t, int64_t row,
                           int64_t col)
{
    if (row >= d->valid_rows) {
        return 0.0f;
    }
    if (d->init == TPM_INIT_CONST) {
        return d->init_value;
    }
    return d->init_value *
           tpm_rng_normal(seed, (uint64_t)g * 64 + (uint64_t)t, (uint64_t)(row * d->cols + col));
}

/* ---------------------------------------------------------------------------------------------- */
/* activations */

tpm_status_t tpm_acts_create(tpm_backend_t *be, const tpm_model_config_t *cfg, int B, int T,
                             tpm_acts_t **acts_p)
{
    const size_t BT = (size_t)B * T, C = (size_t)cfg->C, L = (size_t)cfg->L;
    const int    llama = cfg->arch == TPM_ARCH_LLAMA;
    /* q, k, v rows and MLP units: 3C and 4C for GPT-2; the LLaMA MLP keeps its up projection */
    const size_t Q = (size_t)tpm_model_qkv_rows(cfg), F = (size_t)tpm_model_ffn(cfg);
    const size_t nfu = llama ? 1 : 0, hs2 = C / (size_t)cfg->NH / 2;
    const size_t per_block = BT * C * 5 + BT * Q + BT * F * (2 + nfu) + BT * 4 +
                             (size_t)B * cfg->NH * T;
    size_t       nfloat, off = 0;
    tpm_acts_t  *a;
    tpm_status_t status;
    char        *base;

    if (B < 1 || T < 1 || T > cfg->maxT) {
        tpm_log_error("model: batch %d x seq %d does not fit the position table (%d)", B, T,
                      cfg->maxT);
        return TPM_ERR_INVALID_ARG;
    }
    nfloat = per_block * L + (L + 1) * BT * C + BT * C + 2 * BT + BT * (size_t)cfg->Vp + BT +
             BT * C * 3 + BT * Q + BT * F * (2 + nfu) + nfu * hs2;
    TPM_CHECK(tpm_calloc(1, sizeof(*a), (void **)&a));
    TPM_CHECK_GOTO(tpm_calloc(L, sizeof(*a->blk), (void **)&a->blk), status, err_free_a);
    TPM_CHECK_GOTO(tpm_calloc(BT, sizeof(float), (void **)&a->losses_h), status, err_free_blk);
    /* floats, then the int32 token (and position) arrays; every sub-buffer 64-byte aligned */
    a->nbytes = (nfloat + 16 * (14 * L + 32)) * sizeof(float) + 3 * BT * sizeof(int32_t) + 192;
    TPM_CHECK_GOTO(be->ops->alloc(be, a->nbytes, &a->mem), status, err_free_blk);
    TPM_CHECK_GOTO(be->ops->memzero(be, a->mem, a->nbytes), status, err_free_mem);
    base = a->mem;

#define TAKE(_n)                                                                                   \
    ((void *)(base + off));                                                                        \
    off += ((_n) * sizeof(float) + 63) / 64 * 64
    for (size_t l = 0; l < L; l++) {
        tpm_block_acts_t *b = &a->blk[l];
        b->ln1              = TAKE(BT * C);
        b->ln1_mean         = TAKE(BT);
        b->ln1_rstd         = TAKE(BT);
        b->qkv              = TAKE(BT * Q);
        b->atty             = TAKE(BT * C);
        b->att_lse          = TAKE((size_t)B * cfg->NH * T);
        b->res2             = TAKE(BT * C);
        b->ln2              = TAKE(BT * C);
        b->ln2_mean         = TAKE(BT);
        b->ln2_rstd         = TAKE(BT);
        b->fch              = TAKE(BT * F);
        b->fch_gelu         = TAKE(BT * F);
        if (llama) {
            b->fcu = TAKE(BT * F);
        }
    }
    a->resid    = TAKE((L + 1) * BT * C);
    a->lnf      = TAKE(BT * C);
    a->lnf_mean = TAKE(BT);
    a->lnf_rstd = TAKE(BT);
    a->logits   = TAKE(BT * (size_t)cfg->Vp);
    a->losses   = TAKE(BT);
    a->dresid   = TAKE(BT * C);
    a->dbtc     = TAKE(BT * C);
    a->dbtc2    = TAKE(BT * C);
    a->dqkv     = TAKE(BT * Q);
    a->dfch     = TAKE(BT * F);
    a->dfch2    = TAKE(BT * F);
    a->tokens   = TAKE(BT);
    a->targets  = TAKE(BT);
    if (llama) {
        int32_t *pos_h;

        a->dfch3    = TAKE(BT * F);
        a->inv_freq = TAKE(hs2);
        a->pos      = TAKE(BT);
        TPM_ASSERT(off <= a->nbytes);
        /* positions 0..T-1 of every sequence, and the configuration's rotary frequencies */
        TPM_CHECK_GOTO(tpm_malloc(BT * sizeof(int32_t) + hs2 * sizeof(float), (void **)&pos_h),
                       status, err_free_mem);
        for (size_t i = 0; i < BT; i++) {
            pos_h[i] = (int32_t)(i % (size_t)T);
        }
        status = tpm_rope_inv_freq((int)(2 * hs2), cfg->rope_theta, &cfg->rope,
                                   (float *)(void *)(pos_h + BT));
        if (status == TPM_OK) {
            status = be->ops->copy(be, a->pos, pos_h, BT * sizeof(int32_t), TPM_COPY_H2D);
        }
        if (status == TPM_OK) {
            status = be->ops->copy(be, a->inv_freq, pos_h + BT, hs2 * sizeof(float),
                                   TPM_COPY_H2D);
        }
        tpm_free(pos_h);
        if (status != TPM_OK) {
            goto err_free_mem;
        }
    }
#undef TAKE
    TPM_ASSERT(off <= a->nbytes);
    a->B    = B;
    a->T    = T;
    *acts_p = a;
    return TPM_OK;

err_free_mem:
    be->ops->free(be, a->mem);
err_free_blk:
    tpm_free(a->losses_h);
    tpm_free(a->blk);
err_free_a:
    tpm_free(a);
    return status;
}

void tpm_acts_destroy(tpm_backend_t *be, tpm_acts_t *a)
{
    if (a == NULL) {
        return;
    }
    be->ops->free(be, a->mem);
    tpm_free(a->losses_h);
    tpm_free(a->blk);
    tpm_free(a);
}

tpm_status_t tpm_model_set_batch(tpm_backend_t *be, tpm_acts_t *a, const int32_t *tokens,
                                 const int32_t *targets)
{
    const size_t n = (size_t)a->B * a->T * sizeof(int32_t);

    TPM_CHECK(be->ops->copy(be, a->tokens, tokens, n, TPM_COPY_H2D));
    a->n_valid = 0;
    if (targets != NULL) {
        TPM_CHECK(be->ops->copy(be, a->targets, targets, n, TPM_COPY_H2D));
        for (size_t i = 0; i < (size_t)a->B * a->T; i++) {
            a->n_valid += targets[i] >= 0;
        }
    }
    return TPM_OK;
}

static inline void progress(tpm_acts_t *a)
{
    if (a->progress != NULL) {
        a->progress(a->progress_ctx);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* forward */

tpm_status_t tpm_model_embed_fwd(tpm_backend_t *be, const tpm_model_config_t *cfg,
                                 const tpm_group_view_t *emb, tpm_acts_t *a)
{
    /* LLaMA has no position table (RoPE in the blocks): wte rows only */
    const float *wpe = cfg->arch == TPM_ARCH_LLAMA ? NULL : emb->t[TPM_E_WPE];

    PROF_CALL(TPM_PROF_EMBED_FWD, be->ops->encoder_fwd(be, a->resid, a->tokens, emb->t[TPM_E_WTE],
                                                       wpe, a->B, a->T, cfg->C));
    return TPM_OK;
}

tpm_block_part_t tpm_block_part_whole(const tpm_model_config_t *cfg)
{
    return (tpm_block_part_t){.nh       = cfg->NH,
                              .nkv      = tpm_model_nkv(cfg),
                              .nf       = tpm_model_ffn(cfg),
                              .add_bias = 1,
                              .comm     = NULL};
}

static void io_progress(const tpm_block_io_t *io)
{
    if (io->progress != NULL) {
        io->progress(io->progress_ctx);
    }
}

/* a product of weight t: the serving format when the block has one for it, else fp32 */
static tpm_status_t block_matmul(tpm_backend_t *be, const tpm_block_io_t *io, float *const *w,
                                 int t, float *out, const float *inp, const float *bias, int n,
                                 int IC, int OC, int w_trans)
{
    if (io->qw != NULL && io->qw[t] != NULL) {
        return be->ops->matmul_fwd_q(be, out, inp, io->qw[t], bias, n);
    }
    return be->ops->matmul_fwd(be, out, inp, w[t], bias, n, IC, OC, w_trans);
}

static tpm_status_t gpt2_block_fwd(tpm_backend_t *be, const tpm_model_config_t *cfg,
                                   float *const *w, const tpm_block_part_t *part,
                                   const tpm_block_io_t *io)
{
    const tpm_backend_ops_t *op = be->ops;
    const int                n = io->n, C = cfg->C, nh = part->nh, nf = part->nf;
    const int                Cl    = nh * (C / cfg->NH);
    const size_t             nc    = (size_t)n * (size_t)C;
    float                   *proj1 = io->part != NULL ? io->part : io->res2;
    float                   *proj2 = io->part != NULL ? io->part : io->out;

    TPM_ASSERT(part->comm == NULL || io->part != NULL);
    /* attention: this part's heads, then the row-parallel projection (summed over the split) */
    PROF_CALL(TPM_PROF_LN_FWD, op->layernorm_fwd(be, io->ln1, io->ln1_mean, io->ln1_rstd, io->x,
                                                 w[TPM_B_LN1W], w[TPM_B_LN1B], n, C));
    PROF_CALL(TPM_PROF_QKV_FWD,
              block_matmul(be, io, w, TPM_B_QKVW, io->qkv, io->ln1, w[TPM_B_QKVB], n, C, 3 * Cl,
                           0));
    io_progress(io);
    if (io->ctx > 0) {
        if (nh > 0) {
            PROF_CALL(TPM_PROF_ATTN_FWD,
                      io->kcache16 != NULL
                          ? op->attention_kv16(be, io->atty, io->qkv, io->kcache16, io->vcache16,
                                               io->slot, io->pos, n, Cl, nh, io->ctx)
                          : op->attention_kv(be, io->atty, io->qkv, io->kcache, io->vcache,
                                             io->slot, io->pos, n, Cl, nh, io->ctx));
        }
    } else {
        PROF_CALL(TPM_PROF_ATTN_FWD,
                  op->attention_fwd(be, io->atty, io->att_lse, io->qkv, io->B, io->T, Cl, nh));
    }
    io_progress(io);
    PROF_CALL(TPM_PROF_ATTPROJ_FWD,
              block_matmul(be, io, w, TPM_B_ATTPROJW, proj1, io->atty,
                           part->add_bias ? w[TPM_B_ATTPROJB] : NULL, n, Cl, C, 1));
    if (part->comm != NULL) {
        TPM_CHECK(tpm_comm_all_reduce(part->comm, proj1, proj1, nc, TPM_DT_FLOAT, TPM_RED_SUM));
    }
    /* res2 = projection + x (a float add is commutative: the same bits in either order) */
    PROF_CALL(TPM_PROF_RESID_FWD, op->add(be, io->res2, proj1, io->x, nc));

    /* MLP: this part's hidden units, then the row-parallel down-projection */
    PROF_CALL(TPM_PROF_LN_FWD, op->layernorm_fwd(be, io->ln2, io->ln2_mean, io->ln2_rstd, io->res2,
                                                 w[TPM_B_LN2W], w[TPM_B_LN2B], n, C));
    io_progress(io);
    PROF_CALL(TPM_PROF_FC_FWD,
              block_matmul(be, io, w, TPM_B_FCW, io->fch, io->ln2, w[TPM_B_FCB], n, C, nf, 0));
    PROF_CALL(TPM_PROF_GELU_FWD, op->gelu_fwd(be, io->fch_gelu, io->fch, (size_t)n * (size_t)nf));
    io_progress(io);
    PROF_CALL(TPM_PROF_FCPROJ_FWD,
              block_matmul(be, io, w, TPM_B_FCPROJW, proj2, io->fch_gelu,
                           part->add_bias ? w[TPM_B_FCPROJB] : NULL, n, nf, C, 1));
    if (part->comm != NULL) {
        TPM_CHECK(tpm_comm_all_reduce(part->comm, proj2, proj2, nc, TPM_DT_FLOAT, TPM_RED_SUM));
    }
    PROF_CALL(TPM_PROF_RESID_FWD, op->add(be, io->out, proj2, io->res2, nc));
    io_progress(io);
    return TPM_OK;
}

/*
 * The LLaMA block (docs/MODEL.md "LLaMA"): x + o(attn(rope(qkv(rms(x))))), then
 * + down(silu(gate(rms)) * up(rms)). No row-parallel biases; q/k/v biases with qkv_bias.
 */
static tpm_status_t llama_block_fwd(tpm_backend_t *be, const tpm_model_config_t *cfg,
                                    float *const *w, const tpm_block_part_t *part,
                                    const tpm_block_io_t *io)
{
    const tpm_backend_ops_t *op = be->ops;
    const int                n = io->n, C = cfg->C, nh = part->nh, nkv = part->nkv, nf = part->nf;
    const int                hs = C / cfg->NH, Cl = nh * hs, Ql = (nh + 2 * nkv) * hs;
    const size_t             nc    = (size_t)n * (size_t)C;
    float                   *proj1 = io->part != NULL ? io->part : io->res2;
    float                   *proj2 = io->part != NULL ? io->part : io->out;
    const int32_t           *rpos  = io->rope_pos != NULL ? io->rope_pos : io->pos;

    TPM_ASSERT(part->comm == NULL || io->part != NULL);
    TPM_ASSERT(rpos != NULL && io->inv_freq != NULL && io->fcu != NULL);
    PROF_CALL(TPM_PROF_LN_FWD, op->rmsnorm_fwd(be, io->ln1, io->ln1_rstd, io->x, w[TPM_LB_LN1W], n,
                                               C, cfg->rms_eps));
    PROF_CALL(TPM_PROF_QKV_FWD,
              block_matmul(be, io, w, TPM_LB_QKVW, io->qkv, io->ln1,
                           cfg->qkv_bias ? w[TPM_LB_QKVB] : NULL, n, C, Ql, 0));
    if (nh > 0) {
        PROF_CALL(TPM_PROF_QKV_FWD, op->rope_fwd(be, io->qkv, rpos, io->inv_freq, n, nh, nkv, hs));
    }
    io_progress(io);
    if (io->ctx > 0) {
        if (nh > 0) {
            PROF_CALL(TPM_PROF_ATTN_FWD,
                      op->attention_gqa_kv(be, io->atty, io->qkv, io->kcache, io->vcache, io->slot,
                                           io->pos, n, nh, nkv, hs, io->ctx));
        }
    } else {
        PROF_CALL(TPM_PROF_ATTN_FWD, op->attention_gqa_fwd(be, io->atty, io->att_lse, io->qkv,
                                                           io->B, io->T, nh, nkv, hs));
    }
    io_progress(io);
    PROF_CALL(TPM_PROF_ATTPROJ_FWD,
              block_matmul(be, io, w, TPM_LB_OW, proj1, io->atty, NULL, n, Cl, C, 1));
    if (part->comm != NULL) {
        TPM_CHECK(tpm_comm_all_reduce(part->comm, proj1, proj1, nc, TPM_DT_FLOAT, TPM_RED_SUM));
    }
    PROF_CALL(TPM_PROF_RESID_FWD, op->add(be, io->res2, proj1, io->x, nc));

    PROF_CALL(TPM_PROF_LN_FWD, op->rmsnorm_fwd(be, io->ln2, io->ln2_rstd, io->res2,
                                               w[TPM_LB_LN2W], n, C, cfg->rms_eps));
    io_progress(io);
    PROF_CALL(TPM_PROF_FC_FWD,
              block_matmul(be, io, w, TPM_LB_GATEW, io->fch, io->ln2, NULL, n, C, nf, 0));
    PROF_CALL(TPM_PROF_FC_FWD,
              block_matmul(be, io, w, TPM_LB_UPW, io->fcu, io->ln2, NULL, n, C, nf, 0));
    PROF_CALL(TPM_PROF_GELU_FWD,
              op->swiglu_fwd(be, io->fch_gelu, io->fch, io->fcu, (size_t)n * (size_t)nf));
    io_progress(io);
    PROF_CALL(TPM_PROF_FCPROJ_FWD,
              block_matmul(be, io, w, TPM_LB_DOWNW, proj2, io->fch_gelu, NULL, n, nf, C, 1));
    if (part->comm != NULL) {
        TPM_CHECK(tpm_comm_all_reduce(part->comm, proj2, proj2, nc, TPM_DT_FLOAT, TPM_RED_SUM));
    }
    PROF_CALL(TPM_PROF_RESID_FWD, op->add(be, io->out, proj2, io->res2, nc));
    io_progress(io);
    return TPM_OK;
}

tpm_status_t tpm_block_fwd(tpm_backend_t *be, const tpm_model_config_t *cfg, float *const *w,
                           const tpm_block_part_t *part, const tpm_block_io_t *io)
{
    if (cfg->arch == TPM_ARCH_LLAMA) {
        return llama_block_fwd(be, cfg, w, part, io);
    }
    return gpt2_block_fwd(be, cfg, w, part, io);
}

tpm_status_t tpm_model_block_fwd(tpm_backend_t *be, const tpm_model_config_t *cfg, int l,
                                 const tpm_group_view_t *p, tpm_acts_t *a)
{
    const size_t           NC   = (size_t)a->B * (size_t)a->T * (size_t)cfg->C;
    tpm_block_acts_t      *b    = &a->blk[l];
    const tpm_block_part_t part = tpm_block_part_whole(cfg);
    const tpm_block_io_t   io   = {
            .n            = a->B * a->T,
            .x            = a->resid + (size_t)l * NC,
            .ln1          = b->ln1,
            .ln1_mean     = b->ln1_mean,
            .ln1_rstd     = b->ln1_rstd,
            .qkv          = b->qkv,
            .atty         = b->atty,
            .res2         = b->res2,
            .ln2          = b->ln2,
            .ln2_mean     = b->ln2_mean,
            .ln2_rstd     = b->ln2_rstd,
            .fch          = b->fch,
            .fch_gelu     = b->fch_gelu,
            .fcu          = b->fcu,
            .out          = a->resid + (size_t)(l + 1) * NC,
            .rope_pos     = a->pos,
            .inv_freq     = a->inv_freq,
            .B            = a->B,
            .T            = a->T,
            .att_lse      = b->att_lse,
            .progress     = a->progress,
            .progress_ctx = a->progress_ctx,
    };

    return tpm_block_fwd(be, cfg, p->t, &part, &io);
}

tpm_status_t tpm_model_head_fwd_bwd(tpm_backend_t *be, const tpm_model_config_t *cfg,
                                    const tpm_group_view_t *emb, const tpm_group_view_t *demb,
                                    float dloss_scale, tpm_acts_t *a, float *loss_p)
{
    const tpm_backend_ops_t *op = be->ops;
    const int                N = a->B * a->T, C = cfg->C;
    const float             *x     = a->resid + (size_t)cfg->L * N * C;
    const int                llama = cfg->arch == TPM_ARCH_LLAMA;
    /* the output head: wte (tied) or LLaMA's own lm_head */
    const int                th = llama && !cfg->tied ? TPM_LE_HEAD : TPM_E_WTE;
    double                   sum = 0.0;

    if (llama) {
        PROF_CALL(TPM_PROF_LN_FWD, op->rmsnorm_fwd(be, a->lnf, a->lnf_rstd, x, emb->t[TPM_LE_LNFW],
                                                   N, C, cfg->rms_eps));
    } else {
        PROF_CALL(TPM_PROF_LN_FWD, op->layernorm_fwd(be, a->lnf, a->lnf_mean, a->lnf_rstd, x,
                                                     emb->t[TPM_E_LNFW], emb->t[TPM_E_LNFB], N, C));
    }
    PROF_CALL(TPM_PROF_LOGITS_FWD,
              op->matmul_fwd(be, a->logits, a->lnf, emb->t[th], NULL, N, C, cfg->Vp, 0));
    progress(a);

    PROF_CALL(TPM_PROF_XENT,
              op->xent_fwd_bwd(be, a->losses, demb != NULL ? a->logits : NULL, a->logits,
                               a->targets, N, cfg->V, cfg->Vp,
                               a->n_valid > 0 ? dloss_scale / (float)a->n_valid : 0.0f));
    TPM_CHECK(op->copy(be, a->losses_h, a->losses, (size_t)N * sizeof(float), TPM_COPY_D2H));
    for (int i = 0; i < N; i++) {
        sum += a->losses_h[i];
    }
    *loss_p = a->n_valid > 0 ? (float)(sum / a->n_valid) : 0.0f;
    prof_commit_fwd(demb != NULL);

    if (demb != NULL) {
        /* logits now hold dlogits: d lnf = dlogits @ wte, d wte += dlogits^T @ lnf */
        PROF_CALL(TPM_PROF_MEMZERO_BWD, op->memzero(be, a->dbtc, (size_t)N * C * sizeof(float)));
        PROF_CALL(TPM_PROF_LOGITS_BWD,
                  op->matmul_bwd(be, a->dbtc, demb->t[th], NULL, a->logits, a->lnf, emb->t[th], N,
                                 C, cfg->Vp, 0));
        progress(a);
        PROF_CALL(TPM_PROF_MEMZERO_BWD, op->memzero(be, a->dresid, (size_t)N * C * sizeof(float)));
        if (llama) {
            PROF_CALL(TPM_PROF_LN_BWD,
                      op->rmsnorm_bwd(be, a->dresid, demb->t[TPM_LE_LNFW], a->dbtc, x,
                                      emb->t[TPM_LE_LNFW], a->lnf_rstd, N, C));
            return TPM_OK;
        }
        PROF_CALL(TPM_PROF_LN_BWD,
                  op->layernorm_bwd(be, a->dresid, demb->t[TPM_E_LNFW], demb->t[TPM_E_LNFB],
                                    a->dbtc, x, emb->t[TPM_E_LNFW], a->lnf_mean, a->lnf_rstd, N,
                                    C));
    }
    return TPM_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* backward */

static tpm_status_t gpt2_block_bwd(tpm_backend_t *be, const tpm_model_config_t *cfg, int l,
                                   const tpm_group_view_t *p, const tpm_group_view_t *dp,
                                   tpm_acts_t *a);

/* the backward of llama_block_fwd on the whole block; same contract as tpm_model_block_bwd */
static tpm_status_t llama_block_bwd(tpm_backend_t *be, const tpm_model_config_t *cfg, int l,
                                    const tpm_group_view_t *p, const tpm_group_view_t *dp,
                                    tpm_acts_t *a)
{
    const tpm_backend_ops_t *op = be->ops;
    const int                B = a->B, T = a->T, C = cfg->C, N = B * T, F = cfg->F;
    const int                NH = cfg->NH, NKV = cfg->NKV, hs = C / NH;
    const int                Q  = (NH + 2 * NKV) * hs;
    const size_t             NC = (size_t)N * C, NF = (size_t)N * F;
    tpm_block_acts_t        *b  = &a->blk[l];
    const float             *x  = a->resid + (size_t)l * NC;
    float *const            *w  = p->t;
    float *const            *dw = dp->t;

    /* MLP: a->dresid = d/d out; d act = dout @ down^T, then SwiGLU, then gate and up */
    PROF_CALL(TPM_PROF_MEMZERO_BWD, op->memzero(be, a->dfch, NF * sizeof(float)));
    PROF_CALL(TPM_PROF_FCPROJ_BWD,
              op->matmul_bwd(be, a->dfch, dw[TPM_LB_DOWNW], NULL, a->dresid, b->fch_gelu,
                             w[TPM_LB_DOWNW], N, F, C, 1));
    progress(a);
    PROF_CALL(TPM_PROF_MEMZERO_BWD, op->memzero(be, a->dfch2, NF * sizeof(float)));
    PROF_CALL(TPM_PROF_MEMZERO_BWD, op->memzero(be, a->dfch3, NF * sizeof(float)));
    PROF_CALL(TPM_PROF_GELU_BWD,
              op->swiglu_bwd(be, a->dfch2, a->dfch3, a->dfch, b->fch, b->fcu, NF));
    PROF_CALL(TPM_PROF_MEMZERO_BWD, op->memzero(be, a->dbtc, NC * sizeof(float)));
    PROF_CALL(TPM_PROF_FC_BWD, op->matmul_bwd(be, a->dbtc, dw[TPM_LB_GATEW], NULL, a->dfch2,
                                              b->ln2, w[TPM_LB_GATEW], N, C, F, 0));
    PROF_CALL(TPM_PROF_FC_BWD, op->matmul_bwd(be, a->dbtc, dw[TPM_LB_UPW], NULL, a->dfch3, b->ln2,
                                              w[TPM_LB_UPW], N, C, F, 0));
    progress(a);
    PROF_CALL(TPM_PROF_LN_BWD, op->rmsnorm_bwd(be, a->dresid, dw[TPM_LB_LN2W], a->dbtc, b->res2,
                                               w[TPM_LB_LN2W], b->ln2_rstd, N, C));
    /* a->dresid is now d/d res2: attention */
    PROF_CALL(TPM_PROF_MEMZERO_BWD, op->memzero(be, a->dbtc, NC * sizeof(float)));
    PROF_CALL(TPM_PROF_ATTPROJ_BWD, op->matmul_bwd(be, a->dbtc, dw[TPM_LB_OW], NULL, a->dresid,
                                                   b->atty, w[TPM_LB_OW], N, C, C, 1));
    progress(a);
    PROF_CALL(TPM_PROF_MEMZERO_BWD, op->memzero(be, a->dqkv, (size_t)N * Q * sizeof(float)));
    PROF_CALL(TPM_PROF_ATTN_BWD, op->attention_gqa_bwd(be, a->dqkv, a->dbtc, b->qkv, b->atty,
                                                       b->att_lse, B, T, NH, NKV, hs));
    /* qkv holds the rotated q and k: rotate their gradients back */
    PROF_CALL(TPM_PROF_ATTN_BWD, op->rope_bwd(be, a->dqkv, a->pos, a->inv_freq, N, NH, NKV, hs));
    progress(a);
    PROF_CALL(TPM_PROF_MEMZERO_BWD, op->memzero(be, a->dbtc2, NC * sizeof(float)));
    PROF_CALL(TPM_PROF_QKV_BWD,
              op->matmul_bwd(be, a->dbtc2, dw[TPM_LB_QKVW], cfg->qkv_bias ? dw[TPM_LB_QKVB] : NULL,
                             a->dqkv, b->ln1, w[TPM_LB_QKVW], N, C, Q, 0));
    progress(a);
    PROF_CALL(TPM_PROF_LN_BWD, op->rmsnorm_bwd(be, a->dresid, dw[TPM_LB_LN1W], a->dbtc2, x,
                                               w[TPM_LB_LN1W], b->ln1_rstd, N, C));
    return TPM_OK;
}

tpm_status_t tpm_model_block_bwd(tpm_backend_t *be, const tpm_model_config_t *cfg, int l,
                                 const tpm_group_view_t *p, const tpm_group_view_t *dp,
                                 tpm_acts_t *a)
{
    if (cfg->arch == TPM_ARCH_LLAMA) {
        return llama_block_bwd(be, cfg, l, p, dp, a);
    }
    return gpt2_block_bwd(be, cfg, l, p, dp, a);
}

static tpm_status_t gpt2_block_bwd(tpm_backend_t *be, const tpm_model_config_t *cfg, int l,
                                   const tpm_group_view_t *p, const tpm_group_view_t *dp,
                                   tpm_acts_t *a)
{
    const tpm_backend_ops_t *op = be->ops;
    const int                B = a->B, T = a->T, C = cfg->C, N = B * T;
    const size_t             NC = (size_t)N * C;
    tpm_block_acts_t        *b  = &a->blk[l];
    const float             *x  = a->resid + (size_t)l * NC;
    float *const            *w  = p->t;
    float *const            *dw = dp->t;

    /*
     * a->dresid holds d/d xout. xout = res2 + mlp(res2): the MLP branch gets dresid,
     * and dresid keeps flowing to res2 (the residual path), then gets the LN2 input
     * gradient added. Same again through the attention branch to x.
     */
    PROF_CALL(TPM_PROF_MEMZERO_BWD, op->memzero(be, a->dfch, (size_t)N * 4 * C * sizeof(float)));
    PROF_CALL(TPM_PROF_FCPROJ_BWD,
              op->matmul_bwd(be, a->dfch, dw[TPM_B_FCPROJW], dw[TPM_B_FCPROJB], a->dresid,
                             b->fch_gelu, w[TPM_B_FCPROJW], N, 4 * C, C, 1));
    progress(a);
    PROF_CALL(TPM_PROF_MEMZERO_BWD, op->memzero(be, a->dfch2, (size_t)N * 4 * C * sizeof(float)));
    PROF_CALL(TPM_PROF_GELU_BWD, op->gelu_bwd(be, a->dfch2, b->fch, a->dfch, (size_t)N * 4 * C));
    PROF_CALL(TPM_PROF_MEMZERO_BWD, op->memzero(be, a->dbtc, NC * sizeof(float)));
    PROF_CALL(TPM_PROF_FC_BWD, op->matmul_bwd(be, a->dbtc, dw[TPM_B_FCW], dw[TPM_B_FCB], a->dfch2,
                                              b->ln2, w[TPM_B_FCW], N, C, 4 * C, 0));
    progress(a);
    PROF_CALL(TPM_PROF_LN_BWD,
              op->layernorm_bwd(be, a->dresid, dw[TPM_B_LN2W], dw[TPM_B_LN2B], a->dbtc, b->res2,
                                w[TPM_B_LN2W], b->ln2_mean, b->ln2_rstd, N, C));
    /* a->dresid is now d/d res2 */
    PROF_CALL(TPM_PROF_MEMZERO_BWD, op->memzero(be, a->dbtc, NC * sizeof(float)));
    PROF_CALL(TPM_PROF_ATTPROJ_BWD,
              op->matmul_bwd(be, a->dbtc, dw[TPM_B_ATTPROJW], dw[TPM_B_ATTPROJB], a->dresid,
                             b->atty, w[TPM_B_ATTPROJW], N, C, C, 1));
    progress(a);
    PROF_CALL(TPM_PROF_MEMZERO_BWD, op->memzero(be, a->dqkv, NC * 3 * sizeof(float)));
    PROF_CALL(TPM_PROF_ATTN_BWD, op->attention_bwd(be, a->dqkv, a->dbtc, b->qkv, b->atty,
                                                   b->att_lse, B, T, C, cfg->NH));
    progress(a);
    PROF_CALL(TPM_PROF_MEMZERO_BWD, op->memzero(be, a->dbtc2, NC * sizeof(float)));
    PROF_CALL(TPM_PROF_QKV_BWD, op->matmul_bwd(be, a->dbtc2, dw[TPM_B_QKVW], dw[TPM_B_QKVB],
                                               a->dqkv, b->ln1, w[TPM_B_QKVW], N, C, 3 * C, 0));
    progress(a);
    PROF_CALL(TPM_PROF_LN_BWD,
              op->layernorm_bwd(be, a->dresid, dw[TPM_B_LN1W], dw[TPM_B_LN1B], a->dbtc2, x,
                                w[TPM_B_LN1W], b->ln1_mean, b->ln1_rstd, N, C));
    return TPM_OK;
}

tpm_status_t tpm_model_embed_bwd(tpm_backend_t *be, const tpm_model_config_t *cfg,
                                 const tpm_group_view_t *demb, tpm_acts_t *a)
{
    float *dwpe = cfg->arch == TPM_ARCH_LLAMA ? NULL : demb->t[TPM_E_WPE];

    PROF_CALL(TPM_PROF_EMBED_BWD, be->ops->encoder_bwd(be, demb->t[TPM_E_WTE], dwpe, a->dresid,
                                                       a->tokens, a->B, a->T, cfg->C));
    return TPM_OK;
}
