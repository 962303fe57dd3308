/* SPDX-License-Identifier: MIT */
/*
 * zero3.c: the ZeRO-3 engine (see zero3.h for the schedule). Buffers, all
 * allocated once at create:
 *   gather_stage  <- non-blocking all-gather of the next block (prefetch)
 *   blk_full      <- the block being computed (unpacked from gather_stage)
 *   blk_gfull     <- that block's gradients, then packed into rs_stage
 *   rs_stage/recv <- the non-blocking reduce-scatter in flight (fp32, or the
 *                    2-bit all-to-all of compress/exchange.c encoding rs_stage)
 * so at most two gathered blocks exist at any time (current + prefetched).
 */
#include "zero3/zero3.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/mem.h"
#include "base/timer.h"

/* the gradient exchange: one chunk per owner and group = the group's shard */
static tpm_status_t exchange_create(tpm_zero3_t *z, const tpm_compress_opts_t *opts)
{
    size_t      *chunk_n;
    tpm_status_t status;

    TPM_CHECK(tpm_calloc((size_t)z->lay.n_groups, sizeof(size_t), (void **)&chunk_n));
    for (int g = 0; g < z->lay.n_groups; g++) {
        chunk_n[g] = z->lay.g[g].shard_numel;
    }
    status = tpm_exchange_create(z->be, z->comm, opts, z->lay.n_groups, chunk_n, &z->gx);
    tpm_free(chunk_n);
    TPM_CHECK(status);
    /* the embedding exchange is blocking and comes after the last use of emb_full */
    tpm_exchange_set_scratch(z->gx, z->emb_full, z->lay.g[z->cfg.L].full_numel);
    z->copts                  = *opts;
    z->mem.residual_bytes     = z->gx->residual_bytes;
    z->mem.compress_buf_bytes = z->gx->buffer_bytes;
    return TPM_OK;
}

static tpm_status_t be_alloc(tpm_zero3_t *z, size_t nfloat, float **p)
{
    void *ptr;

    TPM_CHECK(z->be->ops->alloc(z->be, nfloat * sizeof(float), &ptr));
    TPM_CHECK(z->be->ops->memzero(z->be, ptr, nfloat * sizeof(float)));
    *p = ptr;
    return TPM_OK;
}

static void be_free(tpm_zero3_t *z, float *p)
{
    if (p != NULL) {
        z->be->ops->free(z->be, p);
    }
}

tpm_status_t tpm_zero3_create(tpm_backend_t *be, tpm_comm_t *comm, const tpm_model_config_t *cfg,
                              int B, int T, tpm_zero3_t **z_p)
{
    tpm_zero3_t *z;
    tpm_status_t status;
    size_t       n, emb_full, max_shard = 0;

    TPM_CHECK(tpm_calloc(1, sizeof(*z), (void **)&z));
    z->be           = be;
    z->comm         = comm;
    z->cfg          = *cfg;
    z->B            = B;
    z->T            = T;
    z->gather_group = -1;
    z->rs_group     = -1;
    TPM_CHECK_GOTO(tpm_shard_layout_init(&z->lay, cfg, comm->size), status, err);
    n = z->lay.shard_numel;
    TPM_CHECK_GOTO(be_alloc(z, n, &z->param), status, err);
    TPM_CHECK_GOTO(be_alloc(z, n, &z->grad), status, err);
    TPM_CHECK_GOTO(be_alloc(z, n, &z->m), status, err);
    TPM_CHECK_GOTO(be_alloc(z, n, &z->v), status, err);
    z->mem.param_bytes = n * sizeof(float);
    z->mem.grad_bytes  = n * sizeof(float);
    z->mem.optim_bytes = 2 * n * sizeof(float);

    if (comm->size > 1) {
        const size_t blk = z->lay.max_full_block;
        for (int g = 0; g < z->lay.n_groups; g++) {
            if (z->lay.g[g].shard_numel > max_shard) {
                max_shard = z->lay.g[g].shard_numel;
            }
        }
        emb_full = z->lay.g[cfg->L].full_numel;
        TPM_CHECK_GOTO(be_alloc(z, blk, &z->gather_stage), status, err);
        TPM_CHECK_GOTO(be_alloc(z, blk, &z->blk_full), status, err);
        TPM_CHECK_GOTO(be_alloc(z, blk, &z->blk_gfull), status, err);
        TPM_CHECK_GOTO(be_alloc(z, blk, &z->rs_stage), status, err);
        TPM_CHECK_GOTO(be_alloc(z, max_shard, &z->rs_recv), status, err);
        TPM_CHECK_GOTO(be_alloc(z, emb_full, &z->emb_full), status, err);
        TPM_CHECK_GOTO(be_alloc(z, emb_full, &z->emb_gfull), status, err);
        TPM_CHECK_GOTO(be_alloc(z, emb_full, &z->emb_stage), status, err);
        z->mem.gather_bytes = (4 * blk + max_shard + 3 * emb_full) * sizeof(float);
        {
            tpm_compress_opts_t off;
            memset(&off, 0, sizeof(off));
            TPM_CHECK_GOTO(exchange_create(z, &off), status, err);
        }
    }
    TPM_CHECK_GOTO(tpm_acts_create(be, cfg, B, T, &z->acts), status, err);
    z->mem.act_bytes = z->acts->nbytes;
    *z_p             = z;
    return TPM_OK;

err:
    tpm_zero3_destroy(z);
    return status;
}

void tpm_zero3_destroy(tpm_zero3_t *z)
{
    if (z == NULL) {
        return;
    }
    tpm_comm_wait(z->comm, &z->gather_req);
    tpm_comm_wait(z->comm, &z->rs_req);
    tpm_exchange_destroy(z->gx);
    tpm_acts_destroy(z->be, z->acts);
    be_free(z, z->param);
    be_free(z, z->grad);
    be_free(z, z->m);
    be_free(z, z->v);
    be_free(z, z->gather_stage);
    be_free(z, z->blk_full);
    be_free(z, z->blk_gfull);
    be_free(z, z->rs_stage);
    be_free(z, z->rs_recv);
    be_free(z, z->emb_full);
    be_free(z, z->emb_gfull);
    be_free(z, z->emb_stage);
    if (z->param16 != NULL) {
        z->be->ops->free(z->be, z->param16);
    }
    be_free(z, z->work16);
    tpm_shard_layout_cleanup(&z->lay);
    tpm_free(z);
}

static void z3_rows(void *ctx, int g, int t, int64_t *row0_p, int64_t *nrows_p)
{
    const tpm_zero3_t *z = ctx;

    tpm_shard_rows(&z->lay.g[g].t[t], z->comm->rank, row0_p, nrows_p);
}

/* this rank's block of tensor (g, t) in z->param, and its row count (padding included) */
static float *z3_block(const tpm_zero3_t *z, int g, int t, int64_t *cols_p, int64_t *block_p)
{
    const tpm_shard_group_t  *sg = &z->lay.g[g];
    const tpm_shard_tensor_t *st = &sg->t[t];

    *cols_p  = st->desc.cols;
    *block_p = st->rows_per_rank;
    return z->param + sg->shard_base + st->shard_off;
}

static tpm_status_t z3_read(void *ctx, int g, int t, int64_t row0, int64_t nrows, float *dst)
{
    tpm_zero3_t *z = ctx;
    int64_t      cols, block;
    const float *p = z3_block(z, g, t, &cols, &block);

    (void)row0;
    return z->be->ops->copy(z->be, dst, p, (size_t)nrows * (size_t)cols * sizeof(float),
                            TPM_COPY_D2H);
}

static tpm_status_t z3_write(void *ctx, int g, int t, int64_t row0, int64_t nrows, const float *src)
{
    tpm_zero3_t *z = ctx;
    int64_t      cols, block;
    float       *p = z3_block(z, g, t, &cols, &block);
    const size_t n = (size_t)nrows * (size_t)cols;

    (void)row0;
    TPM_CHECK(z->be->ops->copy(z->be, p, src, n * sizeof(float), TPM_COPY_H2D));
    /* the padding rows of the last block stay zero */
    return z->be->ops->memzero(z->be, p + n,
                               (size_t)(block - nrows) * (size_t)cols * sizeof(float));
}

tpm_tensor_io_t tpm_zero3_tensor_io(tpm_zero3_t *z)
{
    return (tpm_tensor_io_t){.ctx = z, .rows = z3_rows, .read = z3_read, .write = z3_write};
}

tpm_status_t tpm_zero3_init_params(tpm_zero3_t *z, uint64_t seed)
{
    tpm_tensor_io_init_ctx_t init = {.cfg = &z->cfg, .seed = seed};
    const tpm_tensor_io_t    src = tpm_tensor_io_init(&init), dst = tpm_zero3_tensor_io(z);

    TPM_CHECK(tpm_tensor_copy(&z->cfg, NULL, &src, &dst));
    TPM_CHECK(z->be->ops->memzero(z->be, z->m, z->lay.shard_numel * sizeof(float)));
    TPM_CHECK(z->be->ops->memzero(z->be, z->v, z->lay.shard_numel * sizeof(float)));
    z->work_valid = 0;
    return TPM_OK;
}

void tpm_zero3_print_layout(const tpm_zero3_t *z)
{
    const int N = z->lay.world;

    if (z->comm->rank != 0) {
        return;
    }
    tpm_log_info("shard layout: %d rank(s), %zu parameters, %zu floats per rank (%.1f MiB)", N,
                 z->lay.logical_numel, z->lay.shard_numel,
                 (double)z->lay.shard_numel * 4.0 / 1048576.0);
    tpm_log_info("  %-16s %14s %14s %14s", "tensor", "shape", "rows/rank", "bytes/rank");
    for (int gi = 0; gi < z->lay.n_groups; gi++) {
        const tpm_shard_group_t *g = &z->lay.g[gi];
        /* blocks are identical: show the first and the embedding group */
        if (gi > 0 && gi < z->cfg.L) {
            continue;
        }
        for (int t = 0; t < g->n_tensors; t++) {
            const tpm_shard_tensor_t *st = &g->t[t];
            char                      name[32], shape[32];
            if (gi < z->cfg.L) {
                snprintf(name, sizeof(name), "h.*.%s", st->desc.name);
            } else {
                snprintf(name, sizeof(name), "%s", st->desc.name);
            }
            if (st->desc.cols > 1) {
                snprintf(shape, sizeof(shape), "(%lld, %lld)", (long long)st->desc.rows,
                         (long long)st->desc.cols);
            } else {
                snprintf(shape, sizeof(shape), "(%lld)", (long long)st->desc.rows);
            }
            tpm_log_info("  %-16s %14s %14lld %14zu", name, shape, (long long)st->rows_per_rank,
                         (size_t)st->rows_per_rank * (size_t)st->desc.cols * sizeof(float));
        }
    }
    if (z->cfg.L > 1) {
        tpm_log_info("  (h.* repeats for all %d blocks; every tensor is split in %d row blocks, "
                     "the last padded)",
                     z->cfg.L, N);
    }
}

tpm_status_t tpm_zero3_set_compression(tpm_zero3_t *z, const tpm_compress_opts_t *opts)
{
    z->copts = *opts;
    if (!opts->enabled) {
        return TPM_OK;
    }
    if (z->lay.world == 1) {
        tpm_info0("--grad-compression=2bit has no effect on 1 rank: no gradient is sent");
        z->copts.enabled = 0;
        return TPM_OK;
    }
    if (opts->freeze_v && strcmp(z->be->ops->name, "cpu") != 0) {
        tpm_log_error("--compression-freeze-v runs on host memory; the %s backend has no "
                      "frozen-v AdamW (drop the option, or use --device=cpu)",
                      z->be->ops->name);
        return TPM_ERR_UNSUPPORTED;
    }
    TPM_ASSERT(z->rs_group < 0);
    tpm_exchange_destroy(z->gx);
    z->gx = NULL;
    return exchange_create(z, opts);
}

void tpm_zero3_begin_step(tpm_zero3_t *z, int64_t step)
{
    z->step         = step;
    z->micro        = 0;
    z->compress_now = z->copts.enabled && z->lay.world > 1 && step >= z->copts.warmup;
}

tpm_status_t tpm_zero3_reset_residual(tpm_zero3_t *z)
{
    return tpm_exchange_reset_residual(z->gx);
}

tpm_status_t tpm_zero3_set_precision(tpm_zero3_t *z, int bf16)
{
    const size_t n = z->lay.shard_numel;
    void        *p;

    TPM_ASSERT(z->gather_group < 0 && z->rs_group < 0);
    if (!bf16 || z->param16 != NULL) {
        return TPM_OK;
    }
    TPM_CHECK(z->be->ops->alloc(z->be, n * sizeof(uint16_t), &p));
    z->param16        = p;
    z->work_valid     = 0;
    z->mem.work_bytes = n * sizeof(uint16_t);
    if (z->lay.world == 1) {
        TPM_CHECK(be_alloc(z, n, &z->work16));
        z->mem.work_bytes += n * sizeof(float);
    }
    return TPM_OK;
}

void tpm_zero3_params_changed(tpm_zero3_t *z)
{
    z->work_valid = 0;
}

/* bf16 mode: round the fp32 master shard into the working copy (once per parameter update) */
static tpm_status_t working_refresh(tpm_zero3_t *z)
{
    const size_t n = z->lay.shard_numel;

    if (z->param16 == NULL || z->work_valid) {
        return TPM_OK;
    }
    TPM_CHECK(z->be->ops->to_bf16(z->be, z->param16, z->param, n));
    if (z->work16 != NULL) {
        TPM_CHECK(z->be->ops->from_bf16(z->be, z->work16, z->param16, n));
    }
    z->work_valid = 1;
    return TPM_OK;
}

/* the parameters the N = 1 pass computes on: the master shard, or its bf16 rounding */
static float *local_params(tpm_zero3_t *z)
{
    return z->param16 != NULL ? z->work16 : z->param;
}

uint64_t tpm_zero3_grad_bytes_sent(const tpm_zero3_t *z)
{
    if (z->gx == NULL) {
        return 0;
    }
    return z->gx->stats.bytes_fp32 + z->gx->stats.bytes_2bit;
}

tpm_status_t tpm_zero3_zero_grad(tpm_zero3_t *z)
{
    double t0 = tpm_prof_begin(z->be);

    TPM_CHECK(z->be->ops->memzero(z->be, z->grad, z->lay.shard_numel * sizeof(float)));
    tpm_prof_end(z->be, TPM_PROF_ZERO_GRAD, t0);
    return TPM_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* gather / reduce-scatter */

static tpm_group_view_t group_view(const tpm_shard_group_t *g, float *full)
{
    tpm_group_view_t v;

    memset(&v, 0, sizeof(v));
    for (int t = 0; t < g->n_tensors; t++) {
        v.t[t] = full + g->t[t].full_off;
    }
    return v;
}

static void progress_cb(void *ctx)
{
    tpm_zero3_t *z = ctx;

    /* Open MPI moves non-blocking collectives forward only inside MPI calls */
    (void)tpm_comm_test(z->comm, &z->gather_req);
    (void)tpm_comm_test(z->comm, &z->rs_req);
}

static tpm_status_t timed_wait(tpm_zero3_t *z, tpm_comm_req_t *req)
{
    double t0 = tpm_time_now();

    TPM_CHECK(tpm_comm_wait(z->comm, req));
    z->times.wait_s += tpm_time_now() - t0;
    return TPM_OK;
}

typedef enum {
    MOVE_PACK,        /* full layout (fp32) -> rank-major (fp32): gradients to reduce-scatter */
    MOVE_UNPACK,      /* rank-major (fp32) -> full layout: gathered parameters */
    MOVE_UNPACK_BF16, /* rank-major (bf16 bits) -> full layout (fp32, exact widening) */
} move_dir_t;

/*
 * Move a group between the rank-major (gathered / to-be-reduced) layout and the full
 * layout through the backend (copy, or from_bf16), so that device buffers (CUDA + NCCL)
 * work as well as host ones; shard.h's tpm_shard_pack/unpack are the host reference of the
 * same mapping. src and dst are float buffers, or bf16 bits for the rank-major side of
 * MOVE_UNPACK_BF16.
 */
static tpm_status_t group_move(tpm_zero3_t *z, const tpm_shard_group_t *g, const void *src,
                               float *dst, move_dir_t dir)
{
    for (int i = 0; i < z->lay.world; i++) {
        for (int t = 0; t < g->n_tensors; t++) {
            const tpm_shard_tensor_t *st   = &g->t[t];
            const size_t              n    = (size_t)st->rows_per_rank * (size_t)st->desc.cols;
            const size_t              full = st->full_off + (size_t)i * n;
            const size_t              rm   = (size_t)i * g->shard_numel + st->shard_off;
            tpm_status_t              status;
            if (dir == MOVE_UNPACK_BF16) {
                status = z->be->ops->from_bf16(z->be, dst + full, (const uint16_t *)src + rm, n);
            } else if (dir == MOVE_PACK) {
                status = z->be->ops->copy(z->be, dst + rm, (const float *)src + full,
                                          n * sizeof(float), TPM_COPY_D2D);
            } else {
                status = z->be->ops->copy(z->be, dst + full, (const float *)src + rm,
                                          n * sizeof(float), TPM_COPY_D2D);
            }
            TPM_CHECK(status);
        }
    }
    return TPM_OK;
}

/*
 * All-gather group @p gi's parameters into @p stage (rank-major): fp32, or in bf16 mode the
 * bf16 working copy (the stage, sized for fp32, holds it in its first half).
 */
static tpm_status_t gather_group_start(tpm_zero3_t *z, int gi, float *stage, tpm_comm_req_t *req)
{
    const tpm_shard_group_t *g = &z->lay.g[gi];

    if (z->param16 != NULL) {
        return tpm_comm_all_gather(z->comm, z->param16 + g->shard_base, stage,
                                   g->shard_numel * sizeof(uint16_t), TPM_DT_BYTE, req);
    }
    return tpm_comm_all_gather(z->comm, z->param + g->shard_base, stage, g->shard_numel,
                               TPM_DT_FLOAT, req);
}

/* the gathered @p stage of group @p gi -> @p full (full layout, fp32) */
static tpm_status_t gather_group_unpack(tpm_zero3_t *z, int gi, const float *stage, float *full)
{
    return group_move(z, &z->lay.g[gi], stage, full,
                      z->param16 != NULL ? MOVE_UNPACK_BF16 : MOVE_UNPACK);
}

static tpm_status_t gather_start(tpm_zero3_t *z, int gi)
{
    TPM_ASSERT(z->gather_group < 0);
    TPM_CHECK(gather_group_start(z, gi, z->gather_stage, &z->gather_req));
    z->gather_group = gi;
    return TPM_OK;
}

static tpm_status_t gather_finish(tpm_zero3_t *z, int gi)
{
    TPM_ASSERT(z->gather_group == gi);
    TPM_CHECK(timed_wait(z, &z->gather_req));
    z->gather_group = -1;
    TPM_CHECK(gather_group_unpack(z, gi, z->gather_stage, z->blk_full));
    return TPM_OK;
}

/* stochastic rounding key of this rank's current micro-batch */
static uint64_t compress_key(const tpm_zero3_t *z)
{
    return tpm_compress_key(z->copts.seed, z->step, z->micro, z->comm->rank);
}

static tpm_status_t rs_finish(tpm_zero3_t *z)
{
    const tpm_shard_group_t *g;

    if (z->rs_group < 0) {
        return TPM_OK;
    }
    g = &z->lay.g[z->rs_group];
    TPM_CHECK(timed_wait(z, &z->rs_req));
    TPM_CHECK(tpm_exchange_finish(z->gx, &z->rs_req, z->rs_recv));
    TPM_CHECK(z->be->ops->axpy(z->be, z->grad + g->shard_base, 1.0f, z->rs_recv, g->shard_numel));
    z->rs_group = -1;
    return TPM_OK;
}

static tpm_status_t rs_start(tpm_zero3_t *z, int gi)
{
    const tpm_shard_group_t *g = &z->lay.g[gi];

    TPM_ASSERT(z->rs_group < 0);
    TPM_CHECK(group_move(z, g, z->blk_gfull, z->rs_stage, MOVE_PACK));
    TPM_CHECK(tpm_exchange_start(z->gx, gi, z->rs_stage, z->compress_now, compress_key(z),
                                 z->rs_recv, &z->rs_req));
    z->rs_group = gi;
    return TPM_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* forward / backward */

static tpm_status_t forward_pass(tpm_zero3_t *z, const int32_t *x, const int32_t *y, int grads,
                                 float dloss_scale, float *loss_p, tpm_group_view_t *emb_p,
                                 tpm_group_view_t *demb_p)
{
    const int                L  = z->cfg.L;
    const int                N  = z->lay.world;
    const tpm_shard_group_t *ge = &z->lay.g[L];
    tpm_acts_t              *a  = z->acts;
    double                   t0;

    TPM_CHECK(tpm_model_set_batch(z->be, a, x, y));
    TPM_CHECK(working_refresh(z));
    a->progress     = progress_cb;
    a->progress_ctx = z;
    if (N == 1) {
        *emb_p  = group_view(ge, local_params(z) + ge->shard_base);
        *demb_p = group_view(ge, z->grad + ge->shard_base);
    } else {
        double tw = tpm_time_now(), tp = tpm_prof_begin(z->be);
        TPM_CHECK(gather_group_start(z, L, z->emb_stage, NULL));
        z->times.wait_s += tpm_time_now() - tw;
        TPM_CHECK(gather_group_unpack(z, L, z->emb_stage, z->emb_full));
        *emb_p  = group_view(ge, z->emb_full);
        *demb_p = group_view(ge, z->emb_gfull);
        if (grads) {
            TPM_CHECK(z->be->ops->memzero(z->be, z->emb_gfull, ge->full_numel * sizeof(float)));
        }
        TPM_CHECK(gather_start(z, 0));
        tpm_prof_end(z->be, TPM_PROF_GATHER_FWD, tp);
    }
    t0 = tpm_time_now();
    TPM_CHECK(tpm_model_embed_fwd(z->be, &z->cfg, emb_p, a));
    for (int l = 0; l < L; l++) {
        tpm_group_view_t p;
        if (N == 1) {
            p = group_view(&z->lay.g[l], local_params(z) + z->lay.g[l].shard_base);
        } else {
            const double tp = tpm_prof_begin(z->be);
            TPM_CHECK(gather_finish(z, l));
            if (l + 1 < L) {
                TPM_CHECK(gather_start(z, l + 1));
            }
            tpm_prof_end(z->be, TPM_PROF_GATHER_FWD, tp);
            p = group_view(&z->lay.g[l], z->blk_full);
        }
        TPM_CHECK(tpm_model_block_fwd(z->be, &z->cfg, l, &p, a));
    }
    TPM_CHECK(tpm_model_head_fwd_bwd(z->be, &z->cfg, emb_p, grads ? demb_p : NULL, dloss_scale, a,
                                     loss_p));
    z->times.compute_s += tpm_time_now() - t0;
    return TPM_OK;
}

tpm_status_t tpm_zero3_forward(tpm_zero3_t *z, const int32_t *x, const int32_t *y, float *loss_p)
{
    tpm_group_view_t emb, demb;

    return forward_pass(z, x, y, 0, 0.0f, loss_p, &emb, &demb);
}

tpm_status_t tpm_zero3_fwd_bwd(tpm_zero3_t *z, const int32_t *x, const int32_t *y,
                               float dloss_scale, float *loss_p)
{
    const int                L  = z->cfg.L;
    const int                N  = z->lay.world;
    const tpm_shard_group_t *ge = &z->lay.g[L];
    tpm_group_view_t         emb, demb;
    double                   t0, tc = 0.0;

    TPM_CHECK(forward_pass(z, x, y, 1, dloss_scale, loss_p, &emb, &demb));
    /* the last block's parameters are still in blk_full: no re-gather for it */
    for (int l = L - 1; l >= 0; l--) {
        const tpm_shard_group_t *g = &z->lay.g[l];
        tpm_group_view_t         p, dp;
        if (N == 1) {
            p  = group_view(g, local_params(z) + g->shard_base);
            dp = group_view(g, z->grad + g->shard_base);
        } else {
            double tp = tpm_prof_begin(z->be);
            if (l != L - 1) {
                TPM_CHECK(gather_finish(z, l));
            }
            if (l > 0) {
                TPM_CHECK(gather_start(z, l - 1));
            }
            tpm_prof_end(z->be, TPM_PROF_GATHER_BWD, tp);
            p  = group_view(g, z->blk_full);
            dp = group_view(g, z->blk_gfull);
            tp = tpm_prof_begin(z->be);
            TPM_CHECK(z->be->ops->memzero(z->be, z->blk_gfull, g->full_numel * sizeof(float)));
            tpm_prof_end(z->be, TPM_PROF_MEMZERO_BWD, tp);
        }
        t0 = tpm_time_now();
        TPM_CHECK(tpm_model_block_bwd(z->be, &z->cfg, l, &p, &dp, z->acts));
        tc += tpm_time_now() - t0;
        if (N > 1) {
            const double tp = tpm_prof_begin(z->be);
            TPM_CHECK(rs_finish(z));
            TPM_CHECK(rs_start(z, l));
            tpm_prof_end(z->be, TPM_PROF_RS_BWD, tp);
        }
    }
    t0 = tpm_time_now();
    TPM_CHECK(tpm_model_embed_bwd(z->be, &z->cfg, &demb, z->acts));
    tc += tpm_time_now() - t0;
    z->times.compute_s += tc;
    if (N > 1) {
        const double tp = tpm_prof_begin(z->be);
        double       tw;
        TPM_CHECK(rs_finish(z));
        TPM_CHECK(group_move(z, ge, z->emb_gfull, z->emb_stage, MOVE_PACK));
        tw = tpm_time_now() - z->gx->stats.codec_s; /* blocking: all but the encoding is wait */
        TPM_CHECK(tpm_exchange_start(z->gx, L, z->emb_stage, z->compress_now, compress_key(z),
                                     z->rs_recv, NULL));
        z->times.wait_s += tpm_time_now() - tw - z->gx->stats.codec_s;
        TPM_CHECK(tpm_exchange_finish(z->gx, NULL, z->rs_recv));
        TPM_CHECK(
            z->be->ops->axpy(z->be, z->grad + ge->shard_base, 1.0f, z->rs_recv, ge->shard_numel));
        tpm_prof_end(z->be, TPM_PROF_EMB_RS_BWD, tp);
    }
    z->micro++;
    return TPM_OK;
}

tpm_status_t tpm_zero3_grad_norm(tpm_zero3_t *z, double *norm_p)
{
    double local = 0.0, total = 0.0, t0 = tpm_prof_begin(z->be);

    TPM_CHECK(z->be->ops->sumsq(z->be, z->grad, z->lay.shard_numel, &local));
    tpm_prof_end(z->be, TPM_PROF_GRAD_NORM, t0);
    TPM_CHECK(tpm_comm_all_reduce(z->comm, &local, &total, 1, TPM_DT_DOUBLE, TPM_RED_SUM));
    *norm_p = total > 0.0 ? sqrt(total) : 0.0;
    return TPM_OK;
}

/*
 * AdamW with the second moment frozen (1-bit Adam's remedy for Adam on compressed gradients):
 * v keeps its value from the last uncompressed step K = warm-up, bias-corrected with
 * 1 - beta2^K; m and the parameters update as in the backend's AdamW. Host memory only, like
 * the codec (compression is refused on other backends).
 */
static void adamw_frozen_v(float *param, const float *grad, float *m, const float *v, size_t n,
                           float lr, float beta1, float eps, float wd, float bc1, float bc2)
{
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float mi = beta1 * m[i] + (1.0f - beta1) * grad[i];
        float mh = mi / bc1;
        float vh = v[i] / bc2;

        m[i] = mi;
        param[i] -= lr * (mh / (sqrtf(vh) + eps) + wd * param[i]);
    }
}

tpm_status_t tpm_zero3_adamw(tpm_zero3_t *z, float lr, float beta1, float beta2, float eps,
                             float wd, float clip_scale, int t)
{
    const int frozen = z->compress_now && z->copts.freeze_v;
    float     bc1 = 1.0f - powf(beta1, (float)t), bc2 = 1.0f - powf(beta2, (float)z->copts.warmup);
    double    t0 = tpm_prof_begin(z->be);

    if (clip_scale != 1.0f) {
        TPM_CHECK(z->be->ops->scale(z->be, z->grad, clip_scale, z->lay.shard_numel));
        tpm_prof_end(z->be, TPM_PROF_CLIP, t0);
        t0 = tpm_prof_begin(z->be);
    }
    for (int gi = 0; gi < z->lay.n_groups; gi++) {
        const tpm_shard_group_t *g = &z->lay.g[gi];
        for (int k = 0; k < g->n_tensors; k++) {
            const tpm_shard_tensor_t *st  = &g->t[k];
            const size_t              off = g->shard_base + st->shard_off;
            const size_t              n   = (size_t)st->rows_per_rank * (size_t)st->desc.cols;
            if (frozen) {
                adamw_frozen_v(z->param + off, z->grad + off, z->m + off, z->v + off, n, lr, beta1,
                               eps, st->desc.decay ? wd : 0.0f, bc1, bc2);
                continue;
            }
            TPM_CHECK(z->be->ops->adamw(z->be, z->param + off, z->grad + off, z->m + off,
                                        z->v + off, n, lr, beta1, beta2, eps,
                                        st->desc.decay ? wd : 0.0f, t));
        }
    }
    z->work_valid = 0;
    tpm_prof_end(z->be, TPM_PROF_ADAMW, t0);
    return TPM_OK;
}
