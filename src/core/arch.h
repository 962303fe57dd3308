/* SPDX-License-Identifier: MIT */
/*
 * arch.h: the model as data. One table per architecture lists every parameter tensor of a
 * transformer block and of the embedding group: its tpmpi name, its shape as a function of
 * the configuration, how tensor parallelism splits it, how it is initialised, whether AdamW
 * decays it, and its name and layout in Hugging Face and llm.c files. The ZeRO-3 layout
 * (zero3/shard.c), the tensor-parallel slices (core/model_tp.c), the checkpoint dataset names
 * (ckpt/ckpt.c), llm.c import/export (ckpt/ckpt_llmc.c) and serving's loader all read this
 * table; no other file spells a tensor's name or shape. Tables and layouts: docs/MODEL.md.
 *
 * The enums TPM_B_* / TPM_E_* of core/model.h are the row indices of the GPT-2 table (the
 * block code addresses tensors by them); tests/unit/test_arch.c pins the correspondence.
 */
#ifndef TPM_CORE_ARCH_H
#define TPM_CORE_ARCH_H

#include <stddef.h>
#include <stdint.h>

/* a dimension, as a function of the model configuration */
typedef enum {
    TPM_DIM_1 = 0, /* 1 (the second dimension of a vector) */
    TPM_DIM_C,     /* channels */
    TPM_DIM_3C,    /* q, k and v of all heads */
    TPM_DIM_4C,    /* MLP hidden units */
    TPM_DIM_VP,    /* padded vocabulary (rows from V on are zero) */
    TPM_DIM_MAXT,  /* position table */
    TPM_DIM_QKV,   /* LLaMA: q of all heads, k and v of the KV heads: (NH + 2 NKV) hs */
    TPM_DIM_F,     /* LLaMA: MLP hidden units (intermediate size) */
} tpm_dim_t;

/*
 * How tensor-parallel serving splits the first dimension (ARCHITECTURE.md §3). ZeRO-3
 * training cuts every tensor into equal row blocks whatever the kind (zero3/shard.h); when the
 * rank count divides the head count the two agree.
 */
typedef enum {
    TPM_SPLIT_REPLICATED = 0, /* every rank holds all rows */
    TPM_SPLIT_HEADS_QKV,      /* column-parallel by whole heads: 3 hs rows per head (q, k, v);
                                 LLaMA: by whole KV groups, (NH / NKV + 2) hs rows per group */
    TPM_SPLIT_HEADS_IN,       /* row-parallel by whole heads: hs input rows per head */
    TPM_SPLIT_COL,            /* column-parallel: output rows, equal row blocks */
    TPM_SPLIT_ROW,            /* row-parallel: input rows ([in, out] storage), equal row blocks */
    TPM_SPLIT_VOCAB,          /* vocabulary rows, equal row blocks of Vp */
} tpm_split_t;

/* initial values (counter RNG, core/model.c tpm_model_init_value) */
typedef enum {
    TPM_INIT_W = 0,   /* N(0, 0.02) */
    TPM_INIT_W_RESID, /* N(0, 0.02 / sqrt(2 L)): projections into the residual stream */
    TPM_INIT_ONE,     /* 1 */
    TPM_INIT_ZERO,    /* 0 */
} tpm_init_rule_t;

/* the layout of a foreign file's tensor relative to tpmpi's (rows, cols) storage */
typedef enum {
    TPM_XFORM_SAME = 0,  /* same (rows, cols), same order */
    TPM_XFORM_QKV,       /* rows permuted: tpmpi head-grouped, the file q | k | v blocks */
    TPM_XFORM_TRANSPOSE, /* the file holds the transpose */
    TPM_XFORM_QKV_T,     /* the file holds the transpose of the q | k | v permuted rows */
    TPM_XFORM_QKV_GQA,   /* LLaMA: rows from three files' tensors (q_proj, k_proj, v_proj),
                            tpmpi grouped by KV group (docs/MODEL.md) */
} tpm_xform_t;

typedef struct tpm_tensor_spec {
    const char     *name; /* tpmpi name: dataset h.<l>.<name> or <name> (at most 15 chars) */
    tpm_dim_t       rows, cols;
    tpm_split_t     split;
    tpm_init_rule_t init;
    int             decay;      /* AdamW weight decay applies */
    const char     *hf;         /* Hugging Face name; "%d" is the layer */
    tpm_xform_t     hf_xform;   /* Hugging Face layout */
    int             llmc_index; /* position in llm.c's file order (0..15); -1: none */
    tpm_xform_t     llmc_xform; /* llm.c layout */
} tpm_tensor_spec_t;

typedef struct tpm_arch {
    const char              *name;
    int                      n_block; /* tensors per transformer block */
    const tpm_tensor_spec_t *block;   /* (n_block) in storage order */
    int                      n_emb;   /* tensors of the embedding group */
    const tpm_tensor_spec_t *emb;     /* (n_emb) in storage order */
} tpm_arch_t;

/*
 * The shard rule (ARCHITECTURE.md §3) on one dimension of @p rows rows over @p world ranks:
 * equal blocks of ceil(rows / world) rows, rank i owning rows [i r, min((i + 1) r, rows)),
 * possibly none. ZeRO-3 shards every tensor by it (zero3/shard.h, padding the last block) and
 * tensor-parallel serving slices the equal-block splits by it (core/model_tp.h), which is why
 * a training rank of an M-rank run holds exactly the rows a serving rank of M ranks needs.
 */

/** Rows per rank of the split: ceil(rows / world). Pure. */
int64_t tpm_split_block_rows(int64_t rows, int world);

/** Rows [*row0_p, *row0_p + *nrows_p) of @p rank (nrows 0 past the end). Pure. */
void tpm_split_rows(int64_t rows, int world, int rank, int64_t *row0_p, int64_t *nrows_p);

/** The GPT-2 table (static storage). */
extern const tpm_arch_t tpm_arch_gpt2;

/*
 * The LLaMA tables (static storage): one block table whose last row (qkvb) exists only with
 * q/k/v biases, one embedding table whose last row (lm_head) exists only with an untied head;
 * the four variants share the rows and differ in their counts. Index: [qkv_bias][untied].
 */
extern const tpm_arch_t tpm_arch_llama[2][2];

#endif /* TPM_CORE_ARCH_H */
