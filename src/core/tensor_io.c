/* SPDX-License-Identifier: MIT */
/* tensor_io.c: the logical-tensor transfer and the generator and memory ends (tensor_io.h). */
#include "core/tensor_io.h"

#include <string.h>

#include "base/log.h"
#include "base/mem.h"

/* the rows of tensor (g, t) the transfer moves on this rank */
static void xfer_rows(const tpm_param_desc_t *d, const tpm_tensor_io_t *src,
                      const tpm_tensor_io_t *dst, int g, int t, int64_t *row0_p, int64_t *nrows_p)
{
    const tpm_tensor_io_t *part = dst->rows != NULL ? dst : src->rows != NULL ? src : NULL;

    *row0_p  = 0;
    *nrows_p = d->rows;
    if (part != NULL) {
        part->rows(part->ctx, g, t, row0_p, nrows_p);
    }
}

tpm_status_t tpm_tensor_copy(const tpm_model_config_t *cfg, tpm_comm_t *comm,
                             const tpm_tensor_io_t *src, const tpm_tensor_io_t *dst)
{
    tpm_param_desc_t d[TPM_GROUP_MAX_NT];
    const int        NG  = tpm_model_n_groups(cfg);
    size_t           cap = 0;
    float           *buf = NULL;
    tpm_status_t     status;

    TPM_ASSERT(src->read != NULL && dst->write != NULL && (src->rows == NULL || dst->rows == NULL));
    /* one staging buffer for the largest local piece */
    for (int g = 0; g < NG; g++) {
        int nt = tpm_model_group_desc(cfg, g, d);

        for (int t = 0; t < nt; t++) {
            int64_t row0, nrows;

            xfer_rows(&d[t], src, dst, g, t, &row0, &nrows);
            if ((size_t)nrows * (size_t)d[t].cols > cap) {
                cap = (size_t)nrows * (size_t)d[t].cols;
            }
        }
    }
    status = tpm_malloc((cap > 0 ? cap : 1) * sizeof(float), (void **)&buf);
    if (comm != NULL) {
        status = tpm_comm_agree(comm, status);
    }
    for (int g = 0; g < NG && status == TPM_OK; g++) {
        int nt = tpm_model_group_desc(cfg, g, d);

        for (int t = 0; t < nt && status == TPM_OK; t++) {
            int64_t row0, nrows;

            xfer_rows(&d[t], src, dst, g, t, &row0, &nrows);
            status = src->read(src->ctx, g, t, row0, nrows, buf);
            if (status == TPM_OK) {
                status = dst->write(dst->ctx, g, t, row0, nrows, buf);
            }
            if (comm != NULL) {
                status = tpm_comm_agree(comm, status);
            }
        }
    }
    tpm_free(buf);
    return status;
}

/* ---------------------------------------------------------------------------------------------- */
/* the counter-RNG initial values */

static tpm_status_t init_read(void *ctx, int g, int t, int64_t row0, int64_t nrows, float *dst)
{
    const tpm_tensor_io_init_ctx_t *c = ctx;
    tpm_param_desc_t                d[TPM_GROUP_MAX_NT];
    const tpm_param_desc_t         *dt;

    tpm_model_group_desc(c->cfg, g, d);
    dt = &d[t];
    for (int64_t r = 0; r < nrows; r++) {
        for (int64_t k = 0; k < dt->cols; k++) {
            dst[r * dt->cols + k] = tpm_model_init_value(dt, c->seed, g, t, row0 + r, k);
        }
    }
    return TPM_OK;
}

tpm_tensor_io_t tpm_tensor_io_init(tpm_tensor_io_init_ctx_t *ctx)
{
    return (tpm_tensor_io_t){.ctx = ctx, .read = init_read};
}

/* ---------------------------------------------------------------------------------------------- */
/* whole tensors in host memory */

static float *mem_rows(const tpm_tensor_io_memory_ctx_t *c, int g, int t, int64_t row0,
                       int64_t *cols_p)
{
    tpm_param_desc_t d[TPM_GROUP_MAX_NT];

    tpm_model_group_desc(c->cfg, g, d);
    *cols_p = d[t].cols;
    return c->t[(size_t)g * TPM_GROUP_MAX_NT + (size_t)t] + (size_t)row0 * (size_t)d[t].cols;
}

static tpm_status_t mem_read(void *ctx, int g, int t, int64_t row0, int64_t nrows, float *dst)
{
    int64_t      cols;
    const float *p = mem_rows(ctx, g, t, row0, &cols);

    memcpy(dst, p, (size_t)nrows * (size_t)cols * sizeof(float));
    return TPM_OK;
}

static tpm_status_t mem_write(void *ctx, int g, int t, int64_t row0, int64_t nrows,
                              const float *src)
{
    int64_t cols;
    float  *p = mem_rows(ctx, g, t, row0, &cols);

    memcpy(p, src, (size_t)nrows * (size_t)cols * sizeof(float));
    return TPM_OK;
}

tpm_tensor_io_t tpm_tensor_io_memory(tpm_tensor_io_memory_ctx_t *ctx)
{
    return (tpm_tensor_io_t){.ctx = ctx, .read = mem_read, .write = mem_write};
}
