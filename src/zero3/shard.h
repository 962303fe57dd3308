/* SPDX-License-Identifier: MIT */
/*
 * shard.h: the shard rule as pure arithmetic (no MPI, unit-tested).
 *
 * Every tensor of a group is a (rows, cols) matrix (vectors are (n, 1)). With N
 * ranks, each tensor is cut into N row blocks of r = ceil(rows / N) rows (the rule of
 * tpm_split_rows, core/arch.h, which serving uses too); rank i
 * owns rows [i*r, min((i+1)*r, rows)) and its block is padded with zero rows to
 * r. Because QKV rows are grouped by head, when N divides the head count every
 * rank's QKV block is whole heads; row-parallel weights are stored transposed,
 * so their split is also dim 0 (ARCHITECTURE.md §3, docs/DESIGN.md).
 *
 * Memory layouts (floats):
 *  - rank shard: groups one after the other; inside a group, the tensors' row
 *    blocks one after the other (shard_off);
 *  - gathered (full) group: tensor t at full_off, N*r rows (padding included);
 *    rank i's rows of t start at full_off + i*r*cols. At N = 1 both layouts are
 *    the same, which is what lets one rank skip the gather entirely.
 */
#ifndef TPM_ZERO3_SHARD_H
#define TPM_ZERO3_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "core/model.h"

typedef struct tpm_shard_tensor {
    tpm_param_desc_t desc;
    int64_t          rows_per_rank; /* r */
    size_t           shard_off;     /* offset inside a rank's group shard */
    size_t           full_off;      /* offset inside the gathered group */
} tpm_shard_tensor_t;

typedef struct tpm_shard_group {
    int                n_tensors;
    tpm_shard_tensor_t t[TPM_GROUP_MAX_NT];
    size_t             shard_numel; /* floats per rank for this group */
    size_t             full_numel;  /* = world * shard_numel */
    size_t             shard_base;  /* offset of this group in a rank's flat shard */
} tpm_shard_group_t;

typedef struct tpm_shard_layout {
    int                world;
    int                n_groups; /* L blocks + the embedding group */
    tpm_shard_group_t *g;        /* (n_groups) owned */
    size_t             shard_numel;    /* floats per rank, all groups */
    size_t             max_full_block; /* largest gathered transformer block */
    size_t             logical_numel;  /* the model's parameter count */
} tpm_shard_layout_t;

/** Build the layout for @p world ranks. */
tpm_status_t tpm_shard_layout_init(tpm_shard_layout_t *lay, const tpm_model_config_t *cfg,
                                   int world);
void tpm_shard_layout_cleanup(tpm_shard_layout_t *lay);

/** Real (unpadded) rows of tensor @p t owned by @p rank: [*row0_p, *row0_p + *nrows_p). */
void tpm_shard_rows(const tpm_shard_tensor_t *t, int rank, int64_t *row0_p, int64_t *nrows_p);

/** Copy an all-gathered buffer (rank-major shards) into the full group layout. */
void tpm_shard_unpack(const tpm_shard_group_t *g, int world, const float *gathered, float *full);
/** The reverse: full group layout -> rank-major (for reduce-scatter). */
void tpm_shard_pack(const tpm_shard_group_t *g, int world, const float *full, float *rank_major);

#endif /* TPM_ZERO3_SHARD_H */
