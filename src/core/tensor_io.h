/* SPDX-License-Identifier: MIT */
/*
 * tensor_io.h: moving logical tensors (the rows of the tensor table, core/arch.h, in tpmpi's
 * storage layout, host fp32) between two ends of the same kind. An end is a file (a
 * checkpoint, an llm.c model file, later safetensors), memory (whole tensors), a generator
 * (the counter-RNG initial values) or a partitioned holder (ZeRO-3 shards, tensor-parallel
 * slices). A partitioned end says which rows of each tensor this rank holds; the other end
 * reads or writes exactly those rows, so every rank moves only its own rows.
 *
 * Implementations: tpm_tensor_io_init / tpm_tensor_io_memory (here), tpm_zero3_tensor_io
 * (zero3/zero3.h), tpm_tp_tensor_io (core/model_tp.h), tpm_ckpt_tensor_io (ckpt/ckpt.h),
 * the llm.c reader (ckpt/ckpt_llmc.c).
 */
#ifndef TPM_CORE_TENSOR_IO_H
#define TPM_CORE_TENSOR_IO_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "comm/comm.h"
#include "core/model.h"

/** One end of a tensor transfer. Callbacks get @c ctx; tensors are (group g, index t). */
typedef struct tpm_tensor_io {
    void *ctx; /* borrowed by the callbacks */
    /*
     * (optional) a partitioned end: the rows [*row0_p, *row0_p + *nrows_p) of tensor (g, t)
     * this rank holds. NULL: a whole end, which serves any rows.
     */
    void (*rows)(void *ctx, int g, int t, int64_t *row0_p, int64_t *nrows_p);
    /* (optional, sources) rows [row0, row0 + nrows) into dst, (nrows, cols) host floats */
    tpm_status_t (*read)(void *ctx, int g, int t, int64_t row0, int64_t nrows, float *dst);
    /* (optional, sinks) rows [row0, row0 + nrows) from src, (nrows, cols) host floats */
    tpm_status_t (*write)(void *ctx, int g, int t, int64_t row0, int64_t nrows, const float *src);
} tpm_tensor_io_t;

/**
 * Copy every tensor of @p cfg, group by group in storage order, from @p src to @p dst: the
 * rows the partitioned end holds (at most one of the two is partitioned; with neither,
 * whole tensors). With @p comm the copy is collective: every rank walks the same tensors,
 * local failures are agreed after each tensor (so collective ends such as a checkpoint see
 * the same calls everywhere) and every rank returns the same status. Without, local.
 */
tpm_status_t tpm_tensor_copy(const tpm_model_config_t *cfg, tpm_comm_t *comm,
                             const tpm_tensor_io_t *src, const tpm_tensor_io_t *dst);

/**
 * A source of the deterministic initial values (tpm_model_init_value) for seed *@p seed
 * (borrowed; must outlive the transfer) and model @p cfg (borrowed).
 */
typedef struct tpm_tensor_io_init_ctx {
    const tpm_model_config_t *cfg;
    uint64_t                  seed;
} tpm_tensor_io_init_ctx_t;
tpm_tensor_io_t tpm_tensor_io_init(tpm_tensor_io_init_ctx_t *ctx);

/**
 * Whole tensors in host memory, a source and a sink: @p ctx->t[g * TPM_GROUP_MAX_NT + t] is
 * tensor (g, t), (rows, cols) floats (borrowed).
 */
typedef struct tpm_tensor_io_memory_ctx {
    const tpm_model_config_t *cfg;
    float *const             *t;
} tpm_tensor_io_memory_ctx_t;
tpm_tensor_io_t tpm_tensor_io_memory(tpm_tensor_io_memory_ctx_t *ctx);

#endif /* TPM_CORE_TENSOR_IO_H */
