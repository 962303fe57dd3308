/* SPDX-License-Identifier: MIT */
/* shard.c: partition arithmetic of the shard rule (see shard.h). */
#include "zero3/shard.h"

#include <string.h>

#include "base/mem.h"

tpm_status_t tpm_shard_layout_init(tpm_shard_layout_t *lay, const tpm_model_config_t *cfg,
                                   int world)
{
    size_t base = 0;

    if (world < 1) {
        tpm_log_error("shard: world size %d must be positive", world);
        return TPM_ERR_INVALID_ARG;
    }
    memset(lay, 0, sizeof(*lay));
    lay->world    = world;
    lay->n_groups = tpm_model_n_groups(cfg);
    TPM_CHECK(tpm_calloc((size_t)lay->n_groups, sizeof(*lay->g), (void **)&lay->g));
    for (int gi = 0; gi < lay->n_groups; gi++) {
        tpm_shard_group_t *g = &lay->g[gi];
        tpm_param_desc_t   d[TPM_GROUP_MAX_NT];
        size_t             off = 0;

        g->n_tensors = tpm_model_group_desc(cfg, gi, d);
        for (int t = 0; t < g->n_tensors; t++) {
            tpm_shard_tensor_t *st = &g->t[t];
            st->desc               = d[t];
            st->rows_per_rank      = tpm_split_block_rows(d[t].rows, world);
            st->shard_off          = off;
            st->full_off           = off * (size_t)world;
            off += (size_t)st->rows_per_rank * (size_t)d[t].cols;
            lay->logical_numel += (size_t)d[t].rows * (size_t)d[t].cols;
        }
        g->shard_numel = off;
        g->full_numel  = off * (size_t)world;
        g->shard_base  = base;
        base += off;
        if (gi < cfg->L && g->full_numel > lay->max_full_block) {
            lay->max_full_block = g->full_numel;
        }
    }
    lay->shard_numel = base;
    return TPM_OK;
}

void tpm_shard_layout_cleanup(tpm_shard_layout_t *lay)
{
    tpm_free(lay->g);
    lay->g = NULL;
}

void tpm_shard_rows(const tpm_shard_tensor_t *t, int rank, int64_t *row0_p, int64_t *nrows_p)
{
    int64_t row0 = t->rows_per_rank * rank;
    int64_t end  = row0 + t->rows_per_rank;

    if (end > t->desc.rows) {
        end = t->desc.rows;
    }
    *row0_p  = row0 < t->desc.rows ? row0 : t->desc.rows;
    *nrows_p = end > *row0_p ? end - *row0_p : 0;
}

void tpm_shard_unpack(const tpm_shard_group_t *g, int world, const float *gathered, float *full)
{
    for (int i = 0; i < world; i++) {
        const float *src = gathered + (size_t)i * g->shard_numel;
        for (int t = 0; t < g->n_tensors; t++) {
            const tpm_shard_tensor_t *st = &g->t[t];
            size_t                    n  = (size_t)st->rows_per_rank * (size_t)st->desc.cols;
            memcpy(full + st->full_off + (size_t)i * n, src + st->shard_off, n * sizeof(float));
        }
    }
}

void tpm_shard_pack(const tpm_shard_group_t *g, int world, const float *full, float *rank_major)
{
    for (int i = 0; i < world; i++) {
        float *dst = rank_major + (size_t)i * g->shard_numel;
        for (int t = 0; t < g->n_tensors; t++) {
            const tpm_shard_tensor_t *st = &g->t[t];
            size_t                    n  = (size_t)st->rows_per_rank * (size_t)st->desc.cols;
            memcpy(dst + st->shard_off, full + st->full_off + (size_t)i * n, n * sizeof(float));
        }
    }
}
