/* SPDX-License-Identifier: MIT */
/*
 * exchange.c: gradient reduce-scatter, fp32 or 2-bit compressed (see
 * exchange.h). The codec and its buffers belong to the backend, so the same code
 * serves host gradients (CPU) and device gradients (CUDA + NCCL).
 */
#include "compress/exchange.h"

#include <string.h>

#include "base/mem.h"
#include "base/rng.h"
#include "base/timer.h"

#define TPM_COMPRESS_SEED_SALT 0x32626974ULL /* "2bit" */

tpm_status_t tpm_compress_opts_from_config(const tpm_config_t *cfg, tpm_compress_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->enabled = strcmp(cfg->grad_compression, "2bit") == 0;
    if (strcmp(cfg->compression_residual, "bf16") == 0) {
        o->mode = TPM_TWOBIT_EF_BF16;
    } else if (strcmp(cfg->compression_residual, "none") == 0) {
        o->mode = TPM_TWOBIT_STOCHASTIC;
    } else {
        o->mode = TPM_TWOBIT_EF_FP32;
    }
    o->block    = cfg->compression_block;
    o->warmup   = cfg->compression_warmup;
    o->seed     = cfg->seed;
    o->freeze_v = cfg->compression_freeze_v;
    if (!tpm_twobit_block_ok(o->block)) {
        tpm_log_error("--compression-block %d must be a positive multiple of 4 (4 codes per "
                      "byte)",
                      o->block);
        return TPM_ERR_INVALID_ARG;
    }
    if (o->enabled && o->freeze_v && o->warmup < 1) {
        tpm_log_error("--compression-freeze-v needs --compression-warmup >= 1: the frozen second "
                      "moment is the one of the uncompressed warm-up");
        return TPM_ERR_INVALID_ARG;
    }
    return TPM_OK;
}

uint64_t tpm_compress_key(uint64_t seed, int64_t step, int micro, int rank)
{
    return tpm_rng_u64(seed ^ TPM_COMPRESS_SEED_SALT, (uint64_t)step,
                       ((uint64_t)(uint32_t)micro << 32) | (uint64_t)(uint32_t)rank);
}

void tpm_exchange_destroy(tpm_exchange_t *x)
{
    if (x == NULL) {
        return;
    }
    tpm_free(x->chunk_n);
    tpm_free(x->chunk_bytes);
    tpm_free(x->res_off);
    if (x->be != NULL) {
        x->be->ops->free(x->be, x->residual); /* no-op on NULL */
        x->be->ops->free(x->be, x->send);
        x->be->ops->free(x->be, x->recv);
    }
    tpm_free(x);
}

/* nbytes of zeroed backend memory */
static tpm_status_t be_zalloc(tpm_backend_t *be, size_t nbytes, void **p)
{
    TPM_CHECK(be->ops->alloc(be, nbytes, p));
    return be->ops->memzero(be, *p, nbytes);
}

tpm_status_t tpm_exchange_create(tpm_backend_t *be, tpm_comm_t *comm,
                                 const tpm_compress_opts_t *opts, int n_groups,
                                 const size_t *chunk_n, tpm_exchange_t **x_p)
{
    const size_t    N = (size_t)comm->size;
    tpm_exchange_t *x;
    tpm_status_t    status;
    size_t          res_n = 0, max_bytes = 0, buf;

    if (opts->enabled && !tpm_twobit_block_ok(opts->block)) {
        tpm_log_error("compression block %d must be a positive multiple of 4", opts->block);
        return TPM_ERR_INVALID_ARG;
    }
    TPM_CHECK(tpm_calloc(1, sizeof(*x), (void **)&x));
    x->be       = be;
    x->comm     = comm;
    x->opts     = *opts;
    x->n_groups = n_groups;
    x->group    = -1;
    TPM_CHECK_GOTO(tpm_calloc((size_t)n_groups, sizeof(size_t), (void **)&x->chunk_n), status, err);
    TPM_CHECK_GOTO(tpm_calloc((size_t)n_groups, sizeof(size_t), (void **)&x->chunk_bytes), status,
                   err);
    TPM_CHECK_GOTO(tpm_calloc((size_t)n_groups, sizeof(size_t), (void **)&x->res_off), status, err);
    for (int g = 0; g < n_groups; g++) {
        x->chunk_n[g] = chunk_n[g];
        x->res_off[g] = res_n;
        res_n += N * chunk_n[g];
        if (opts->enabled) {
            x->chunk_bytes[g] = tpm_twobit_chunk_bytes(chunk_n[g], opts->block);
            if (x->chunk_bytes[g] > max_bytes) {
                max_bytes = x->chunk_bytes[g];
            }
        }
    }
    if (!opts->enabled) {
        *x_p = x;
        return TPM_OK;
    }
    if (opts->mode != TPM_TWOBIT_STOCHASTIC) {
        size_t esize = opts->mode == TPM_TWOBIT_EF_FP32 ? sizeof(float) : sizeof(uint16_t);
        /* zero = "no error yet"; both encodings of 0.0 are all-zero bits */
        TPM_CHECK_GOTO(tpm_mul_size(res_n, esize, &x->residual_bytes), status, err);
        TPM_CHECK_GOTO(be_zalloc(be, x->residual_bytes, &x->residual), status, err);
    }
    TPM_CHECK_GOTO(tpm_mul_size(N, max_bytes, &buf), status, err);
    TPM_CHECK_GOTO(be_zalloc(be, buf, (void **)&x->send), status, err);
    TPM_CHECK_GOTO(be_zalloc(be, buf, (void **)&x->recv), status, err);
    x->buffer_bytes = 2 * buf;
    *x_p            = x;
    return TPM_OK;

err:
    tpm_exchange_destroy(x);
    return status;
}

void tpm_exchange_set_scratch(tpm_exchange_t *x, float *scratch, size_t n)
{
    x->scratch   = scratch;
    x->scratch_n = scratch != NULL ? n : 0;
}

tpm_status_t tpm_exchange_reset_residual(tpm_exchange_t *x)
{
    if (x == NULL || x->residual == NULL) {
        return TPM_OK;
    }
    return x->be->ops->memzero(x->be, x->residual, x->residual_bytes);
}

static uint64_t grad_wire_bytes(const tpm_comm_t *c)
{
    return c->stats.bytes[TPM_COLL_REDUCE_SCATTER] + c->stats.bytes[TPM_COLL_ALLTOALL];
}

tpm_status_t tpm_exchange_start(tpm_exchange_t *x, int gi, const float *rank_major, int compress,
                                uint64_t key, float *out, tpm_comm_req_t *req)
{
    const int    N  = x->comm->size;
    const size_t n  = x->chunk_n[gi];
    uint64_t     b0 = grad_wire_bytes(x->comm);
    tpm_status_t status;

    TPM_ASSERT(x->group < 0);
    TPM_ASSERT(!compress || x->opts.enabled);
    if (!compress) {
        /* blocking: the lent scratch, when large enough, lets the comm avoid MPI's algorithm */
        float *scratch = x->scratch_n >= (size_t)N * n ? x->scratch : NULL;
        status         = req == NULL ? tpm_comm_reduce_scatter_scratch(x->comm, rank_major, out, n,
                                                                       TPM_DT_FLOAT, TPM_RED_SUM, scratch)
                                     : tpm_comm_reduce_scatter(x->comm, rank_major, out, n, TPM_DT_FLOAT,
                                                               TPM_RED_SUM, req);
        x->stats.bytes_fp32 += grad_wire_bytes(x->comm) - b0;
        x->stats.calls_fp32++;
    } else {
        const size_t cb    = x->chunk_bytes[gi];
        uint8_t     *res8  = x->residual;
        const size_t esize = x->opts.mode == TPM_TWOBIT_EF_FP32 ? sizeof(float) : sizeof(uint16_t);
        const double t0    = tpm_time_now();

        for (int j = 0; j < N; j++) {
            const size_t off = (size_t)j * n;
            void        *res = res8 != NULL ? res8 + (x->res_off[gi] + off) * esize : NULL;
            TPM_CHECK(x->be->ops->twobit_encode(x->be, (int)x->opts.mode, x->opts.block,
                                                rank_major + off, n, res, key, (uint64_t)gi, off,
                                                x->send + (size_t)j * cb));
        }
        x->stats.codec_s += tpm_time_now() - t0;
        status = tpm_comm_all_to_all(x->comm, x->send, x->recv, cb, TPM_DT_BYTE, req);
        x->stats.bytes_2bit += grad_wire_bytes(x->comm) - b0;
        x->stats.calls_2bit++;
    }
    TPM_CHECK(status);
    x->group      = gi;
    x->compressed = compress;
    return TPM_OK;
}

tpm_status_t tpm_exchange_finish(tpm_exchange_t *x, tpm_comm_req_t *req, float *out)
{
    const int gi = x->group;

    TPM_ASSERT(gi >= 0);
    TPM_CHECK(tpm_comm_wait(x->comm, req));
    x->group = -1;
    if (x->compressed) {
        const size_t n  = x->chunk_n[gi];
        const size_t cb = x->chunk_bytes[gi];
        const double t0 = tpm_time_now();
        TPM_CHECK(x->be->ops->memzero(x->be, out, n * sizeof(float)));
        for (int j = 0; j < x->comm->size; j++) {
            TPM_CHECK(x->be->ops->twobit_decode_add(x->be, x->opts.block, x->recv + (size_t)j * cb,
                                                    n, out));
        }
        x->stats.codec_s += tpm_time_now() - t0;
    }
    return TPM_OK;
}
