/* SPDX-License-Identifier: MIT */
/*
 * model_tp.c: tensor-parallel GPT-2 forward with a KV cache (see model_tp.h).
 * Notation: L layers, C channels, NH heads, hs = C / NH, V / Vp vocabulary, n tokens in
 * the call; Cl = nh * hs local attention width, nf local MLP width, nv local vocabulary.
 *
 * A block is the training block itself (tpm_block_fwd, core/model.h) run on this rank's
 * partition; the sums that tensor parallelism splits are completed by an all-reduce. The row-parallel biases are added on
 * rank 0 only, before the all-reduce, so that they count once. The embedding lookup is
 * vocabulary-parallel: a rank writes the wte rows it owns and zeros elsewhere (a zero row
 * is kept after the slice for that), the all-reduce assembles the rows exactly (x + 0 = x),
 * and the replicated wpe rows are added after it, so the result has the bits of the
 * training embedding.
 */
#include "core/model_tp.h"

#include <string.h>

#include "base/mem.h"

void tpm_tp_partition(const tpm_model_config_t *cfg, int world, int rank, tpm_tp_part_t *p)
{
    const int NKV = tpm_model_nkv(cfg), rep = cfg->NH / NKV;
    int64_t   g0 = (int64_t)rank * NKV / world, g1 = (int64_t)(rank + 1) * NKV / world;
    int64_t   h0 = g0 * rep, h1 = g1 * rep;

    /*
     * Heads as evenly as possible. When world divides NH this is the row rule on the QKV
     * rows (3C / world rows = NH / world whole heads); otherwise the row rule would cut
     * heads apart, while a near-even split keeps every head whole on one rank.
     */
    /* LLaMA: the same on whole KV groups (GPT-2: a group is one head, rep = 1) */
    p->h0  = (int)h0;
    p->nh  = (int)(h1 - h0);
    p->kv0 = (int)g0;
    p->nkv = (int)(g1 - g0);
    tpm_split_rows(tpm_model_ffn(cfg), world, rank, &p->f0, &p->nf);
    tpm_split_rows(cfg->Vp, world, rank, &p->v0, &p->nv);
    p->v_stride = tpm_split_block_rows(cfg->Vp, world);
}

tpm_tp_slice_t *tpm_tp_slice(tpm_tp_model_t *m, int g, int t)
{
    return &m->w[(size_t)g * TPM_GROUP_MAX_NT + (size_t)t];
}

void tpm_tp_rows(const tpm_model_config_t *cfg, const tpm_tp_part_t *p, const tpm_param_desc_t *d,
                 int64_t *row0_p, int64_t *nrows_p)
{
    const int64_t hs = cfg->C / cfg->NH;

    switch (d->split) {
    case TPM_SPLIT_REPLICATED:
        *row0_p  = 0;
        *nrows_p = d->rows;
        return;
    case TPM_SPLIT_HEADS_QKV: {
        /* whole KV groups: (NH / NKV + 2) hs rows each (GPT-2: 3 hs per head) */
        const int64_t grp = (int64_t)(cfg->NH / tpm_model_nkv(cfg) + 2) * hs;
        *row0_p           = grp * p->kv0;
        *nrows_p          = grp * p->nkv;
        return;
    }
    case TPM_SPLIT_HEADS_IN:
        *row0_p  = hs * p->h0;
        *nrows_p = hs * p->nh;
        return;
    case TPM_SPLIT_COL:
    case TPM_SPLIT_ROW:
        /* the MLP hidden units: the only equal-block split of a block (tpm_tp_part_t f0, nf) */
        TPM_ASSERT(d->rows == tpm_model_ffn(cfg));
        *row0_p  = p->f0;
        *nrows_p = p->nf;
        return;
    case TPM_SPLIT_VOCAB:
        *row0_p  = p->v0;
        *nrows_p = p->nv;
        return;
    }
    TPM_ASSERT(0);
}

/* rows [row0, row0 + nrows) of a tensor on this rank, from its split kind (core/arch.h) */
static void slice_rows(const tpm_tp_model_t *m, const tpm_param_desc_t *d, int64_t *row0_p,
                       int64_t *nrows_p)
{
    tpm_tp_rows(&m->cfg, &m->part, d, row0_p, nrows_p);
}

static size_t align64(size_t nbytes)
{
    return (nbytes + 63) / 64 * 64;
}

/* the next 64-byte aligned piece of @p nbytes at *off_p (NULL when only sizing) */
static void *carve(char *base, size_t *off_p, size_t nbytes)
{
    void *p = base != NULL ? base + *off_p : NULL;

    *off_p += align64(nbytes);
    return p;
}

/* point the activation buffers into @p base (NULL: only size them); returns the bytes */
static size_t act_layout(tpm_tp_model_t *m, char *base)
{
    const size_t n = (size_t)m->max_tok, nl = (size_t)m->max_logits, C = (size_t)m->cfg.C;
    const size_t hs = C / (size_t)m->cfg.NH, nf = (size_t)m->part.nf;
    const size_t Cl = (size_t)m->part.nh * hs, Ql = Cl + 2 * (size_t)m->part.nkv * hs;
    const int    llama = m->cfg.arch == TPM_ARCH_LLAMA;
    const size_t vs = (size_t)m->part.v_stride, f = sizeof(float), i = sizeof(int32_t);
    size_t       off = 0;

    m->x      = carve(base, &off, n * C * f);
    m->buf    = carve(base, &off, n * C * f);
    m->ln     = carve(base, &off, n * C * f);
    m->mean   = carve(base, &off, n * f);
    m->rstd   = carve(base, &off, n * f);
    m->qkv    = carve(base, &off, n * Ql * f);
    m->atty   = carve(base, &off, n * Cl * f);
    m->fch    = carve(base, &off, n * nf * f);
    m->fchg   = carve(base, &off, n * nf * f);
    m->fcu      = llama ? carve(base, &off, n * nf * f) : NULL;
    m->inv_freq = llama ? carve(base, &off, hs / 2 * f) : NULL;
    m->sel    = carve(base, &off, nl * C * f);
    m->lnf    = carve(base, &off, nl * C * f);
    m->lg_loc = carve(base, &off, nl * vs * f);
    m->lg_all = carve(base, &off, (size_t)m->comm->size * nl * vs * f);
    m->zero   = carve(base, &off, C * f);
    m->tok    = carve(base, &off, n * i);
    m->pos    = carve(base, &off, n * i);
    m->slot   = carve(base, &off, n * i);
    return off;
}

/*
 * The matrix weights a serving format can hold, with the layout of their fp32 slice:
 * w_trans 0 is (outputs, inputs), 1 the row-parallel (inputs, outputs) storage. They are the
 * split matrices of the table (GPT-2: qkvw, fcw, attprojw, fcprojw, wte; LLaMA: qkvw, gatew,
 * upw, ow, downw, wte, lm_head); vectors and replicated tensors stay fp32.
 */
static int qmat_trans(const tpm_model_config_t *cfg, int g, int t)
{
    const tpm_tensor_spec_t *s = tpm_model_spec(cfg, g, t);

    if (s->cols == TPM_DIM_1) {
        return -1;
    }
    switch (s->split) {
    case TPM_SPLIT_HEADS_QKV:
    case TPM_SPLIT_COL:
    case TPM_SPLIT_VOCAB: return 0;
    case TPM_SPLIT_HEADS_IN:
    case TPM_SPLIT_ROW: return 1;
    case TPM_SPLIT_REPLICATED: return -1;
    }
    return -1;
}

static int held_in_format(const tpm_tp_model_t *m, int g, int t)
{
    return m->wdt != TPM_WDT_F32 && qmat_trans(&m->cfg, g, t) >= 0;
}

/* bytes of the fp32 slice of (g, t): none for a tensor held in a serving format */
static size_t slice_bytes(const tpm_tp_model_t *m, int g, int t, const tpm_param_desc_t *d)
{
    const tpm_tp_slice_t *s = &m->w[(size_t)g * TPM_GROUP_MAX_NT + (size_t)t];

    if (held_in_format(m, g, t)) {
        return 0;
    }
    return align64((size_t)(s->nrows + (d->split == TPM_SPLIT_VOCAB)) * (size_t)s->cols *
                   sizeof(float));
}

/* bytes tensor (g, t) takes in the serving format once written (0: an fp32 slice) */
static size_t held_bytes(const tpm_tp_model_t *m, int g, int t)
{
    const tpm_tp_slice_t *s = &m->w[(size_t)g * TPM_GROUP_MAX_NT + (size_t)t];
    const int             tr = qmat_trans(&m->cfg, g, t);
    const size_t          rows = (size_t)(tr ? s->cols : s->nrows);
    const size_t          cols = (size_t)(tr ? s->nrows : s->cols);

    if (!held_in_format(m, g, t)) {
        return 0;
    }
    return m->wdt == TPM_WDT_BF16 ? rows * cols * 2
                                  : rows * ((cols + TPM_Q8_BLOCK - 1) / TPM_Q8_BLOCK) *
                                        (TPM_Q8_BLOCK + sizeof(uint16_t));
}

/* (re)allocate the fp32 slices, zeroed, and point them into one allocation */
static tpm_status_t weights_alloc(tpm_tp_model_t *m)
{
    tpm_param_desc_t d[TPM_GROUP_MAX_NT];
    const int        NG = tpm_model_n_groups(&m->cfg);
    size_t           wbytes = 0, wheld = 0, off = 0;
    char            *base;

    for (int g = 0; g < NG; g++) {
        int nt = tpm_model_group_desc(&m->cfg, g, d);
        for (int t = 0; t < nt; t++) {
            wbytes += slice_bytes(m, g, t, &d[t]);
        }
    }
    m->be->ops->free(m->be, m->wmem);
    m->wmem = NULL;
    TPM_CHECK(m->be->ops->alloc(m->be, wbytes > 0 ? wbytes : 64, &m->wmem));
    TPM_CHECK(m->be->ops->memzero(m->be, m->wmem, wbytes > 0 ? wbytes : 64));
    base = m->wmem;
    for (int g = 0; g < NG; g++) {
        int nt = tpm_model_group_desc(&m->cfg, g, d);
        for (int t = 0; t < nt; t++) {
            const size_t nb = slice_bytes(m, g, t, &d[t]);
            tpm_tp_slice(m, g, t)->data = nb > 0 ? (float *)(void *)(base + off) : NULL;
            off += nb;
            wheld += held_bytes(m, g, t);
        }
    }
    m->mem.weight_bytes = wbytes + wheld; /* what the rank holds once the weights are in */
    return TPM_OK;
}

tpm_status_t tpm_tp_set_weight_dtype(tpm_tp_model_t *m, tpm_wdtype_t dt)
{
    const int NG = tpm_model_n_groups(&m->cfg);

    if (dt == TPM_WDT_F32 || dt == m->wdt) {
        return TPM_OK;
    }
    if (m->wdt != TPM_WDT_F32 || (unsigned)dt >= TPM_WDT_N) {
        tpm_log_error("tensor-parallel model: the weight format is set once, before loading");
        return TPM_ERR_INVALID_ARG;
    }
    if (m->be->ops->matmul_fwd_q == NULL) {
        tpm_log_error("serving weights in %s need the CPU backend (the %s backend has no %s "
                      "kernels yet); use fp32",
                      tpm_wdtype_name(dt), m->be->ops->name, tpm_wdtype_name(dt));
        return TPM_ERR_UNSUPPORTED;
    }
    TPM_CHECK(tpm_calloc((size_t)NG * TPM_GROUP_MAX_NT, sizeof(*m->q), (void **)&m->q));
    m->wdt = dt;
    /* the converted matrices appear as the slices are written (tp_write) */
    return weights_alloc(m);
}

tpm_status_t tpm_tp_set_kv_dtype(tpm_tp_model_t *m, int bf16)
{
    const size_t kv_floats = m->mem.kv_bytes / (2 * (m->kcache16 != NULL ? 2 : 4));

    if (!bf16 == (m->kcache16 == NULL)) {
        return TPM_OK;
    }
    if (bf16 && m->cfg.arch == TPM_ARCH_LLAMA) {
        /* the grouped-query attention reads an fp32 cache only (backend.h attention_gqa_kv) */
        tpm_log_error("a bf16 KV cache is not implemented for LLaMA models yet; use "
                      "--kv-dtype=fp32");
        return TPM_ERR_UNSUPPORTED;
    }
    if (bf16 && m->be->ops->attention_kv16 == NULL) {
        tpm_log_error("a bf16 KV cache needs the CPU backend (the %s backend has no bf16 "
                      "attention yet); use --kv-dtype=fp32",
                      m->be->ops->name);
        return TPM_ERR_UNSUPPORTED;
    }
    m->be->ops->free(m->be, m->kvmem);
    m->kvmem  = NULL;
    m->kcache = m->vcache = NULL;
    m->kcache16 = m->vcache16 = NULL;
    m->mem.kv_bytes           = 2 * kv_floats * (bf16 ? sizeof(uint16_t) : sizeof(float));
    if (m->mem.kv_bytes == 0) {
        return TPM_OK;
    }
    TPM_CHECK(m->be->ops->alloc(m->be, m->mem.kv_bytes, &m->kvmem));
    TPM_CHECK(m->be->ops->memzero(m->be, m->kvmem, m->mem.kv_bytes));
    if (bf16) {
        m->kcache16 = m->kvmem;
        m->vcache16 = m->kcache16 + kv_floats;
    } else {
        m->kcache = m->kvmem;
        m->vcache = m->kcache + kv_floats;
    }
    return TPM_OK;
}

tpm_status_t tpm_tp_create(tpm_backend_t *be, tpm_comm_t *comm, const tpm_model_config_t *cfg,
                           int n_slots, int ctx, int max_tok, int max_logits, tpm_tp_model_t **m_p)
{
    const int        L = cfg->L, C = cfg->C, NG = cfg->L + 1;
    tpm_param_desc_t d[TPM_GROUP_MAX_NT];
    tpm_tp_model_t  *m;
    tpm_status_t     status;
    size_t           off, Cl, kv_floats, abytes;
    const size_t     n_lg   = (size_t)max_logits;

    if (n_slots < 1 || ctx < 1 || ctx > cfg->maxT || max_tok < 1 || max_logits < 1 ||
        max_logits > max_tok) {
        tpm_log_error("tensor-parallel model: %d slots x %d positions (position table %d), "
                      "%d tokens and %d logit rows per call are not a valid shape",
                      n_slots, ctx, cfg->maxT, max_tok, max_logits);
        return TPM_ERR_INVALID_ARG;
    }
    TPM_CHECK(tpm_calloc(1, sizeof(*m), (void **)&m));
    m->be         = be;
    m->comm       = comm;
    m->cfg        = *cfg;
    m->n_slots    = n_slots;
    m->ctx        = ctx;
    m->max_tok    = max_tok;
    m->max_logits = max_logits;
    tpm_tp_partition(cfg, comm->size, comm->rank, &m->part);
    TPM_CHECK_GOTO(tpm_calloc((size_t)NG * TPM_GROUP_MAX_NT, sizeof(*m->w), (void **)&m->w), status,
                   err);

    /* weights: one allocation, every slice 64-byte aligned; wte gets one extra zero row */
    for (int g = 0; g < NG; g++) {
        int nt = tpm_model_group_desc(cfg, g, d);

        for (int t = 0; t < nt; t++) {
            tpm_tp_slice_t *s = tpm_tp_slice(m, g, t);

            slice_rows(m, &d[t], &s->row0, &s->nrows);
            s->cols = d[t].cols;
        }
    }
    TPM_CHECK_GOTO(weights_alloc(m), status, err);

    /* KV cache: (L, slots, ctx, Cl) for K and for V, Cl = this rank's KV heads x hs */
    Cl              = (size_t)m->part.nkv * (size_t)(C / cfg->NH);
    kv_floats       = (size_t)L * (size_t)n_slots * (size_t)ctx * Cl;
    m->mem.kv_bytes = 2 * kv_floats * sizeof(float);
    if (m->mem.kv_bytes > 0) {
        TPM_CHECK_GOTO(be->ops->alloc(be, m->mem.kv_bytes, &m->kvmem), status, err);
        TPM_CHECK_GOTO(be->ops->memzero(be, m->kvmem, m->mem.kv_bytes), status, err);
        m->kcache = m->kvmem;
        m->vcache = m->kcache + kv_floats;
    }

    /* activations */
    abytes           = act_layout(m, NULL);
    m->mem.act_bytes = abytes;
    TPM_CHECK_GOTO(be->ops->alloc(be, abytes, &m->amem), status, err);
    TPM_CHECK_GOTO(be->ops->memzero(be, m->amem, abytes), status, err);
    off = act_layout(m, m->amem);
    TPM_ASSERT(off == abytes);
    if (cfg->arch == TPM_ARCH_LLAMA) {
        /* the rotary frequencies of the configuration, once */
        const int hs = C / cfg->NH;
        float    *inv;

        TPM_CHECK_GOTO(tpm_malloc((size_t)hs / 2 * sizeof(float), (void **)&inv), status, err);
        status = tpm_rope_inv_freq(hs, cfg->rope_theta, &cfg->rope, inv);
        if (status == TPM_OK) {
            status = be->ops->copy(be, m->inv_freq, inv, (size_t)hs / 2 * sizeof(float),
                                   TPM_COPY_H2D);
        }
        tpm_free(inv);
        TPM_CHECK_GOTO(status, status, err);
    }

    TPM_CHECK_GOTO(tpm_calloc((size_t)max_tok, sizeof(int32_t), (void **)&m->tok_h), status, err);
    if (comm->rank == 0) {
        TPM_CHECK_GOTO(tpm_calloc(n_lg * (size_t)cfg->Vp, sizeof(float), (void **)&m->logits_h),
                       status, err);
        if (be->ops == &tpm_backend_cpu_ops) {
            m->lg_all_h = m->lg_all; /* host memory already */
        } else {
            TPM_CHECK_GOTO(tpm_calloc((size_t)comm->size * n_lg * (size_t)m->part.v_stride,
                                      sizeof(float), (void **)&m->lg_all_h),
                           status, err);
        }
    }
    *m_p = m;
    return TPM_OK;

err:
    tpm_tp_destroy(m);
    return status;
}

tpm_status_t tpm_tp_back_create(tpm_tp_model_t *m)
{
    const size_t n = (size_t)tpm_model_n_groups(&m->cfg) * TPM_GROUP_MAX_NT;
    char        *base, *front = m->wmem;

    if (m->wmem_back != NULL) {
        return TPM_OK;
    }
    if (m->wdt != TPM_WDT_F32) {
        /* the back buffer is fp32 slices; a swap would leave the held matrices as they were */
        tpm_log_error("weights arriving while serving (--mode=trainserve, --watch) need "
                      "--serve-dtype=fp32 for now, not %s",
                      tpm_wdtype_name(m->wdt));
        return TPM_ERR_UNSUPPORTED;
    }
    TPM_CHECK(tpm_calloc(n, sizeof(*m->w_back), (void **)&m->w_back));
    if (m->be->ops->alloc(m->be, m->mem.weight_bytes, &m->wmem_back) != TPM_OK ||
        m->be->ops->memzero(m->be, m->wmem_back, m->mem.weight_bytes) != TPM_OK) {
        m->be->ops->free(m->be, m->wmem_back);
        m->wmem_back = NULL;
        tpm_free(m->w_back);
        m->w_back = NULL;
        return TPM_ERR_NO_MEMORY;
    }
    /* the same carving as the front: every slice at the same offset */
    base = m->wmem_back;
    for (size_t i = 0; i < n; i++) {
        m->w_back[i] = m->w[i];
        if (m->w[i].data != NULL) {
            m->w_back[i].data = (float *)(void *)(base + ((char *)m->w[i].data - front));
        }
    }
    m->mem.weight_bytes_back = m->mem.weight_bytes;
    return TPM_OK;
}

tpm_tp_slice_t *tpm_tp_back_slice(tpm_tp_model_t *m, int g, int t)
{
    TPM_ASSERT(m->w_back != NULL);
    return &m->w_back[(size_t)g * TPM_GROUP_MAX_NT + (size_t)t];
}

void tpm_tp_swap(tpm_tp_model_t *m)
{
    tpm_tp_slice_t *w   = m->w;
    void           *mem = m->wmem;

    TPM_ASSERT(m->w_back != NULL);
    m->w         = m->w_back;
    m->w_back    = w;
    m->wmem      = m->wmem_back;
    m->wmem_back = mem;
}

void tpm_tp_destroy(tpm_tp_model_t *m)
{
    if (m == NULL) {
        return;
    }
    m->be->ops->free(m->be, m->wmem_back);
    tpm_free(m->w_back);
    if (m->lg_all_h != m->lg_all) {
        tpm_free(m->lg_all_h);
    }
    tpm_free(m->logits_h);
    tpm_free(m->tok_h);
    m->be->ops->free(m->be, m->amem);
    m->be->ops->free(m->be, m->kvmem);
    m->be->ops->free(m->be, m->wmem);
    if (m->q != NULL) {
        for (int i = 0; i < tpm_model_n_groups(&m->cfg) * TPM_GROUP_MAX_NT; i++) {
            tpm_qmat_destroy(&m->q[i]);
        }
    }
    tpm_free(m->q);
    tpm_free(m->w);
    tpm_free(m);
}

static void tp_rows(void *ctx, int g, int t, int64_t *row0_p, int64_t *nrows_p)
{
    const tpm_tp_slice_t *s = tpm_tp_slice(ctx, g, t);

    *row0_p  = s->row0;
    *nrows_p = s->nrows;
}

/* the (rows, cols) matrix of a held tensor back in its slice layout, (nrows, cols) */
static tpm_status_t held_read(tpm_tp_model_t *m, int g, int t, float *dst)
{
    const tpm_tp_slice_t *s  = tpm_tp_slice(m, g, t);
    const tpm_qmat_t     *q  = &m->q[(size_t)g * TPM_GROUP_MAX_NT + (size_t)t];
    const int             tr = qmat_trans(&m->cfg, g, t);
    float                *row;

    if (q->w == NULL) {
        memset(dst, 0, (size_t)s->nrows * (size_t)s->cols * sizeof(float)); /* never written */
        return TPM_OK;
    }
    if (!tr) {
        for (int r = 0; r < q->rows; r++) {
            tpm_qmat_row_f32(q, r, dst + (size_t)r * (size_t)q->cols);
        }
        return TPM_OK;
    }
    TPM_CHECK(tpm_malloc((size_t)q->cols * sizeof(float) + 4, (void **)&row));
    for (int r = 0; r < q->rows; r++) {
        tpm_qmat_row_f32(q, r, row);
        for (int c = 0; c < q->cols; c++) {
            dst[(size_t)c * (size_t)q->rows + (size_t)r] = row[c];
        }
    }
    tpm_free(row);
    return TPM_OK;
}

static tpm_status_t tp_read(void *ctx, int g, int t, int64_t row0, int64_t nrows, float *dst)
{
    tpm_tp_model_t       *m = ctx;
    const tpm_tp_slice_t *s = tpm_tp_slice(m, g, t);

    (void)row0;
    if (held_in_format(m, g, t)) {
        return held_read(m, g, t, dst);
    }
    return m->be->ops->copy(m->be, dst, s->data, (size_t)nrows * (size_t)s->cols * sizeof(float),
                            TPM_COPY_D2H);
}

static tpm_status_t tp_write(void *ctx, int g, int t, int64_t row0, int64_t nrows, const float *src)
{
    tpm_tp_model_t       *m = ctx;
    const tpm_tp_slice_t *s = tpm_tp_slice(m, g, t);

    if (held_in_format(m, g, t)) {
        tpm_qmat_t *q  = &m->q[(size_t)g * TPM_GROUP_MAX_NT + (size_t)t];
        const int   tr = qmat_trans(&m->cfg, g, t);
        tpm_qmat_t  fresh;

        if (row0 != s->row0 || nrows != s->nrows) {
            tpm_log_error("tensor-parallel model: a %s tensor is written whole (rows %lld + %lld "
                          "given, the slice is %lld + %lld)",
                          tpm_wdtype_name(m->wdt), (long long)row0, (long long)nrows,
                          (long long)s->row0, (long long)s->nrows);
            return TPM_ERR_INVALID_ARG;
        }
        /* (nrows, cols) as stored: rows are outputs, or inputs for the row-parallel ones */
        TPM_CHECK(tpm_qmat_create(&fresh, m->wdt, src, tr ? (int)s->cols : (int)s->nrows,
                                  tr ? (int)s->nrows : (int)s->cols, tr));
        TPM_ASSERT(fresh.bytes == held_bytes(m, g, t));
        tpm_qmat_destroy(q);
        *q = fresh;
        return TPM_OK;
    }
    (void)row0;
    return m->be->ops->copy(m->be, s->data, src, (size_t)nrows * (size_t)s->cols * sizeof(float),
                            TPM_COPY_H2D);
}

tpm_tensor_io_t tpm_tp_tensor_io(tpm_tp_model_t *m)
{
    return (tpm_tensor_io_t){.ctx = m, .rows = tp_rows, .read = tp_read, .write = tp_write};
}

tpm_status_t tpm_tp_init_params(tpm_tp_model_t *m, uint64_t seed)
{
    tpm_tensor_io_init_ctx_t init = {.cfg = &m->cfg, .seed = seed};
    const tpm_tensor_io_t    src = tpm_tensor_io_init(&init), dst = tpm_tp_tensor_io(m);

    return tpm_tensor_copy(&m->cfg, NULL, &src, &dst);
}

static tpm_status_t check_batch(const tpm_tp_model_t *m, int n, const int32_t *tokens,
                                const int32_t *slots, const int32_t *pos, int n_logits,
                                const int32_t *logit_rows)
{
    if (n < 1 || n > m->max_tok || n_logits < 0 || n_logits > m->max_logits) {
        tpm_log_error("tensor-parallel forward: %d tokens / %d logit rows (limits %d / %d)", n,
                      n_logits, m->max_tok, m->max_logits);
        return TPM_ERR_INVALID_ARG;
    }
    for (int i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= m->cfg.V || slots[i] < 0 || slots[i] >= m->n_slots ||
            pos[i] < 0 || pos[i] >= m->ctx) {
            tpm_log_error("tensor-parallel forward: token %d (id %d, slot %d, position %d) is "
                          "outside vocabulary %d / %d slots / %d positions",
                          i, (int)tokens[i], (int)slots[i], (int)pos[i], m->cfg.V, m->n_slots,
                          m->ctx);
            return TPM_ERR_INVALID_ARG;
        }
    }
    for (int j = 0; j < n_logits; j++) {
        if (logit_rows[j] < 0 || logit_rows[j] >= n) {
            tpm_log_error("tensor-parallel forward: logit row %d is not a token of the call",
                          (int)logit_rows[j]);
            return TPM_ERR_INVALID_ARG;
        }
    }
    return TPM_OK;
}

/* one block on this rank's slice: the training block (tpm_block_fwd) on the partition */
static tpm_status_t block_fwd(tpm_tp_model_t *m, int l, int n)
{
    const int              Ckv    = m->part.nkv * (m->cfg.C / m->cfg.NH);
    const size_t           kv_off = (size_t)l * (size_t)m->n_slots * (size_t)m->ctx * (size_t)Ckv;
    const tpm_block_part_t part   = {
          .nh       = m->part.nh,
          .nkv      = m->part.nkv,
          .nf       = (int)m->part.nf,
          .add_bias = m->comm->rank == 0, /* row-parallel biases count once in the sum */
          .comm     = m->comm,
    };
    /* the residual stream m->x is updated in place; the partial sums go through m->buf */
    const tpm_block_io_t io = {
        .n        = n,
        .x        = m->x,
        .ln1      = m->ln,
        .ln1_mean = m->mean,
        .ln1_rstd = m->rstd,
        .qkv      = m->qkv,
        .atty     = m->atty,
        .res2     = m->x,
        .ln2      = m->ln,
        .ln2_mean = m->mean,
        .ln2_rstd = m->rstd,
        .fch      = m->fch,
        .fch_gelu = m->fchg,
        .fcu      = m->fcu,
        .inv_freq = m->inv_freq,
        .out      = m->x,
        .part     = m->buf,
        .kcache   = m->kcache != NULL ? m->kcache + kv_off : NULL,
        .vcache   = m->vcache != NULL ? m->vcache + kv_off : NULL,
        .kcache16 = m->kcache16 != NULL ? m->kcache16 + kv_off : NULL,
        .vcache16 = m->vcache16 != NULL ? m->vcache16 + kv_off : NULL,
        .slot     = m->slot,
        .pos      = m->pos,
        .ctx      = m->ctx,
    };
    float            *w[TPM_BLOCK_NT];
    const tpm_qmat_t *qw[TPM_BLOCK_NT];
    tpm_block_io_t    iq = io;

    const int         nt = tpm_model_arch(&m->cfg)->n_block;

    TPM_ASSERT(nt <= TPM_BLOCK_NT);
    memset(w, 0, sizeof(w));
    memset(qw, 0, sizeof(qw));
    for (int t = 0; t < nt; t++) {
        w[t]  = tpm_tp_slice(m, l, t)->data;
        qw[t] = held_in_format(m, l, t) ? &m->q[(size_t)l * TPM_GROUP_MAX_NT + (size_t)t] : NULL;
    }
    iq.qw = m->wdt != TPM_WDT_F32 ? qw : NULL;
    return tpm_block_fwd(m->be, &m->cfg, w, &part, &iq);
}

static tpm_status_t head_fwd(tpm_tp_model_t *m, int n_logits, const int32_t *logit_rows,
                             const float **logits_p)
{
    const tpm_backend_ops_t *op = m->be->ops;
    tpm_backend_t           *be = m->be;
    const int                C = m->cfg.C, world = m->comm->size;
    const size_t             rowb = (size_t)C * sizeof(float);
    const size_t             cnt  = (size_t)n_logits * (size_t)m->part.v_stride;
    const int                L    = m->cfg.L;
    const int                llama = m->cfg.arch == TPM_ARCH_LLAMA;
    /* the output head: the tied wte, or LLaMA's own lm_head (the same vocabulary rows) */
    const int                th = llama && !m->cfg.tied ? TPM_LE_HEAD : TPM_E_WTE;

    for (int j = 0; j < n_logits; j++) {
        TPM_CHECK(op->copy(be, m->sel + (size_t)j * C, m->x + (size_t)logit_rows[j] * C, rowb,
                           TPM_COPY_D2D));
    }
    if (llama) {
        TPM_CHECK(op->rmsnorm_fwd(be, m->lnf, m->rstd, m->sel,
                                  tpm_tp_slice(m, L, TPM_LE_LNFW)->data, n_logits, C,
                                  m->cfg.rms_eps));
    } else {
        TPM_CHECK(op->layernorm_fwd(be, m->lnf, m->mean, m->rstd, m->sel,
                                    tpm_tp_slice(m, L, TPM_E_LNFW)->data,
                                    tpm_tp_slice(m, L, TPM_E_LNFB)->data, n_logits, C));
    }
    /* (n_logits, nv) in the first n_logits * nv floats of this rank's v_stride block */
    if (held_in_format(m, L, th)) {
        TPM_CHECK(op->matmul_fwd_q(be, m->lg_loc, m->lnf,
                                   &m->q[(size_t)L * TPM_GROUP_MAX_NT + (size_t)th], NULL,
                                   n_logits));
    } else {
        TPM_CHECK(op->matmul_fwd(be, m->lg_loc, m->lnf, tpm_tp_slice(m, L, th)->data, NULL,
                                 n_logits, C, (int)m->part.nv, 0));
    }
    TPM_CHECK(tpm_comm_all_gather(m->comm, m->lg_loc, m->lg_all, cnt, TPM_DT_FLOAT, NULL));
    if (m->comm->rank != 0) {
        *logits_p = NULL;
        return TPM_OK;
    }
    TPM_CHECK(
        op->copy(be, m->lg_all_h, m->lg_all, (size_t)world * cnt * sizeof(float), TPM_COPY_D2H));
    for (int r = 0; r < world; r++) {
        tpm_tp_part_t pr;
        const float  *blk = m->lg_all_h + (size_t)r * cnt;

        tpm_tp_partition(&m->cfg, world, r, &pr);
        for (int j = 0; j < n_logits; j++) {
            memcpy(m->logits_h + (size_t)j * m->cfg.Vp + pr.v0, blk + (size_t)j * pr.nv,
                   (size_t)pr.nv * sizeof(float));
        }
    }
    *logits_p = m->logits_h;
    return TPM_OK;
}

tpm_status_t tpm_tp_forward(tpm_tp_model_t *m, int n, const int32_t *tokens, const int32_t *slots,
                            const int32_t *pos, int n_logits, const int32_t *logit_rows,
                            const float **logits_p)
{
    const tpm_backend_ops_t *op = m->be->ops;
    tpm_backend_t           *be = m->be;
    const int                C  = m->cfg.C;
    const int64_t            v0 = m->part.v0, nv = m->part.nv;
    const size_t             nc = (size_t)n * (size_t)C, ib = (size_t)n * sizeof(int32_t);

    *logits_p = NULL;
    TPM_CHECK(check_batch(m, n, tokens, slots, pos, n_logits, logit_rows));

    /* embedding: owned wte rows (others read the zero row nv), summed over ranks, + wpe */
    for (int i = 0; i < n; i++) {
        m->tok_h[i] =
            tokens[i] >= v0 && tokens[i] < v0 + nv ? (int32_t)(tokens[i] - v0) : (int32_t)nv;
    }
    TPM_CHECK(op->copy(be, m->tok, m->tok_h, ib, TPM_COPY_H2D));
    TPM_CHECK(op->copy(be, m->pos, pos, ib, TPM_COPY_H2D));
    TPM_CHECK(op->copy(be, m->slot, slots, ib, TPM_COPY_H2D));
    if (held_in_format(m, m->cfg.L, TPM_E_WTE)) {
        /* the owned rows widened from the serving format (host memory, matmul_fwd_q's) */
        const tpm_qmat_t *q = &m->q[(size_t)m->cfg.L * TPM_GROUP_MAX_NT + TPM_E_WTE];
        for (int i = 0; i < n; i++) {
            if (m->tok_h[i] < nv && q->w != NULL) {
                tpm_qmat_row_f32(q, m->tok_h[i], m->x + (size_t)i * C);
            } else {
                memset(m->x + (size_t)i * C, 0, (size_t)C * sizeof(float));
            }
        }
    } else {
        TPM_CHECK(op->encoder_fwd(be, m->x, m->tok, tpm_tp_slice(m, m->cfg.L, TPM_E_WTE)->data,
                                  m->zero, n, 1, C));
    }
    TPM_CHECK(tpm_comm_all_reduce(m->comm, m->x, m->x, nc, TPM_DT_FLOAT, TPM_RED_SUM));
    if (m->cfg.arch != TPM_ARCH_LLAMA) { /* LLaMA has no position table: RoPE in the blocks */
        TPM_CHECK(op->encoder_fwd(be, m->buf, m->pos, tpm_tp_slice(m, m->cfg.L, TPM_E_WPE)->data,
                                  m->zero, n, 1, C));
        TPM_CHECK(op->add(be, m->x, m->x, m->buf, nc));
    }

    for (int l = 0; l < m->cfg.L; l++) {
        TPM_CHECK(block_fwd(m, l, n));
    }
    if (n_logits == 0) {
        return TPM_OK;
    }
    return head_fwd(m, n_logits, logit_rows, logits_p);
}
