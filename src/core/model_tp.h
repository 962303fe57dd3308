/* SPDX-License-Identifier: MIT */
/*
 * model_tp.h: the GPT-2 forward pass for serving, tensor-parallel over the ranks of a
 * communicator, with a KV cache per sequence slot. Math and storage layout as in
 * docs/MODEL.md; the partition is the shard rule (ARCHITECTURE.md §3, docs/SERVING.md):
 *
 *  - heads [h0, h0 + nh): QKV rows [3 hs h0, 3 hs (h0 + nh)) (column-parallel, whole
 *    heads), attprojw rows [hs h0, hs (h0 + nh)) (stored [in, out]: row-parallel), and the
 *    KV cache of those heads;
 *  - MLP rows [f0, f0 + nf) of fcw, fcb and fcprojw (stored [in, out]);
 *  - vocabulary rows [v0, v0 + nv) of wte (embedding lookup and tied output head);
 *  - replicated: LayerNorm weights and biases, attprojb, fcprojb, wpe.
 *
 * When the rank count M divides NH, every slice is exactly the rows a training rank of an
 * M-rank run owns (tpm_split_rows, core/arch.h). Otherwise heads are spread as evenly as possible
 * (h0 = floor(r NH / M)); some ranks may own none when M > NH. Per token a layer costs two
 * all-reduces of (n, C) activations; the embedding one more; the head one all-gather of
 * the selected rows' vocabulary slices. Only backend ops and the comm handle are used.
 */
#ifndef TPM_CORE_MODEL_TP_H
#define TPM_CORE_MODEL_TP_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "backend/backend_cpu_quant.h"
#include "base/status.h"
#include "comm/comm.h"
#include "core/model.h"
#include "core/tensor_io.h"

/**
 * Which rows of the partitioned tensors rank @p rank of @p world owns. LLaMA splits by whole
 * KV groups (a KV head and the NH / NKV query heads that read it): KV heads [kv0, kv0 + nkv)
 * as evenly as possible, and their query heads [h0, h0 + nh); GPT-2 has kv0 = h0, nkv = nh.
 */
typedef struct tpm_tp_part {
    int     h0, nh;   /* heads */
    int     kv0, nkv; /* key/value heads (KV cache columns) */
    int64_t f0, nf;   /* MLP hidden units (rows of fcw, fcb, fcprojw) */
    int64_t v0, nv;   /* vocabulary rows of wte */
    int64_t v_stride; /* vocabulary rows per rank of the split, ceil(Vp / world) */
} tpm_tp_part_t;

/** Pure arithmetic (unit-tested): the partition of @p cfg for @p rank of @p world. */
void tpm_tp_partition(const tpm_model_config_t *cfg, int world, int rank, tpm_tp_part_t *p);

/**
 * Pure: the rows [*row0_p, *row0_p + *nrows_p) of tensor @p d that the rank of partition
 * @p p holds (all rows of a replicated tensor, its heads' rows, its MLP or vocabulary rows).
 */
void tpm_tp_rows(const tpm_model_config_t *cfg, const tpm_tp_part_t *p, const tpm_param_desc_t *d,
                 int64_t *row0_p, int64_t *nrows_p);

/** This rank's rows of one parameter tensor. */
typedef struct tpm_tp_slice {
    float  *data;  /* (nrows, cols) on the backend's device */
    int64_t row0;  /* first logical row */
    int64_t nrows; /* rows held (0 on a rank that owns none) */
    int64_t cols;
} tpm_tp_slice_t;

typedef struct tpm_tp_mem {
    size_t weight_bytes;      /* parameter slices, in their serving format */
    size_t kv_bytes;          /* K and V caches */
    size_t act_bytes;         /* activations for the largest forward call */
    size_t weight_bytes_back; /* the second weight buffer (tpm_tp_back_create), 0 without */
} tpm_tp_mem_t;

typedef struct tpm_tp_model {
    tpm_backend_t     *be;
    tpm_comm_t        *comm; /* borrowed */
    tpm_model_config_t cfg;
    tpm_tp_part_t      part;
    int                n_slots, ctx;    /* KV cache: slots x positions */
    int                max_tok;         /* tokens per forward call */
    int                max_logits;      /* rows of logits per forward call */
    tpm_tp_slice_t    *w;               /* (n_groups * TPM_GROUP_MAX_NT), index g * MAX + t */
    /*
     * Serving format of the matrix weights (tpm_tp_set_weight_dtype). For TPM_WDT_F32 q is
     * NULL and every tensor is its fp32 slice; otherwise q is indexed like w, and a tensor
     * held in the format has q[i].w != NULL and no fp32 slice (w[i].data NULL).
     */
    tpm_wdtype_t wdt;
    tpm_qmat_t  *q;
    float             *kcache, *vcache; /* (L, n_slots, ctx, nkv * hs) each; NULL when bf16 */
    uint16_t          *kcache16, *vcache16; /* the same in bf16 (tpm_tp_set_kv_dtype) */

    /* activations (device), sized for max_tok tokens / max_logits rows */
    float   *x;      /* (max_tok, C) residual stream */
    float   *buf;    /* (max_tok, C) partial sums of the row-parallel layers */
    float   *ln;     /* (max_tok, C) */
    float   *mean;   /* (max_tok) */
    float   *rstd;   /* (max_tok) */
    float   *qkv;    /* (max_tok, (nh + 2 nkv) hs) */
    float   *atty;   /* (max_tok, nh hs) */
    float   *fch;    /* (max_tok, nf) */
    float   *fchg;   /* (max_tok, nf) */
    float   *fcu;    /* (max_tok, nf) LLaMA: the up projection */
    float   *inv_freq; /* (hs / 2) LLaMA: rotary frequencies */
    float   *sel;    /* (max_logits, C) rows that need logits */
    float   *lnf;    /* (max_logits, C) */
    float   *lg_loc; /* (max_logits, v_stride) this rank's vocabulary slice of the logits */
    float   *lg_all; /* (world, max_logits, v_stride) all-gathered */
    float   *zero;   /* (C) zeros: the "position" row of the embedding lookups */
    int32_t *tok;    /* (max_tok) local wte row per token (nv = not owned: the zero row) */
    int32_t *pos;    /* (max_tok) */
    int32_t *slot;   /* (max_tok) */

    /* host */
    int32_t *tok_h;    /* (max_tok) */
    float   *logits_h; /* (max_logits, Vp) on rank 0 */
    float   *lg_all_h; /* host copy of lg_all (rank 0; aliases lg_all on a host backend) */

    tpm_tp_mem_t mem;
    void        *wmem, *kvmem, *amem; /* the allocations the pointers above carve up */

    /* the second weight buffer (NULL until tpm_tp_back_create): filled while serving */
    tpm_tp_slice_t *w_back;
    void           *wmem_back;
} tpm_tp_model_t;

/**
 * Allocate this rank's weight slices (zeroed), the KV cache for @p n_slots x @p ctx
 * positions (ctx <= cfg->maxT) and the activations for up to @p max_tok tokens and
 * @p max_logits logit rows per call, all at once. Not collective (callers agree on the
 * status). @p be and @p comm are borrowed and must outlive the model. Caller owns *m_p.
 */
tpm_status_t tpm_tp_create(tpm_backend_t *be, tpm_comm_t *comm, const tpm_model_config_t *cfg,
                           int n_slots, int ctx, int max_tok, int max_logits, tpm_tp_model_t **m_p);
void         tpm_tp_destroy(tpm_tp_model_t *m); /* no-op on NULL */

/**
 * Hold the matrix weights of this rank (per block QKV, attention projection, MLP up and
 * down; the tied wte, i.e. the embedding rows and the output head) in @p dt instead of fp32
 * (formats: backend/backend_cpu_quant.h; norms, biases and wpe stay fp32). Call it right
 * after tpm_tp_create, before the slices are filled: their fp32 slices are released, and
 * every later write through tpm_tp_tensor_io (tpm_tp_init_params, a checkpoint load)
 * converts the rows it is given, so that the fp32 copy of the model never exists on the
 * rank. Needs a backend with matmul_fwd_q (the CPU one): TPM_ERR_UNSUPPORTED with a message
 * otherwise. TPM_WDT_F32 is a no-op. Not collective.
 */
tpm_status_t tpm_tp_set_weight_dtype(tpm_tp_model_t *m, tpm_wdtype_t dt);

/**
 * Keep the KV cache in bf16 (@p bf16 = 1: half the memory; k and v rounded to nearest even
 * when written, widened when read) or fp32 (0, the default). Its contents are dropped: call
 * it before the first forward pass. Needs a backend with attention_kv16 (the CPU one):
 * TPM_ERR_UNSUPPORTED with a message otherwise. Not collective.
 */
tpm_status_t tpm_tp_set_kv_dtype(tpm_tp_model_t *m, int bf16);

/**
 * A second weight buffer of the same layout (zeroed), for weights that arrive while the
 * model keeps serving on the first (--mode=trainserve). Not collective. Idempotent.
 */
tpm_status_t tpm_tp_back_create(tpm_tp_model_t *m);
/** The back buffer's slice of tensor (g, t) (tpm_tp_back_create first); borrowed. */
tpm_tp_slice_t *tpm_tp_back_slice(tpm_tp_model_t *m, int g, int t);
/** Exchange the two weight buffers: the next forward computes on what was the back one. */
void tpm_tp_swap(tpm_tp_model_t *m);

/** The slice of tensor @p t of group @p g (tpm_model_group_desc numbering); borrowed. */
tpm_tp_slice_t *tpm_tp_slice(tpm_tp_model_t *m, int g, int t);

/**
 * The weight slices of @p m as a partitioned tensor end (core/tensor_io.h): this rank's rows
 * of every tensor, read from or written into the slices. A tensor held in a serving format
 * (tpm_tp_set_weight_dtype) is written whole (its slice's rows in one call) and converted;
 * reading it gives the widened values. Not collective; @p m is borrowed.
 */
tpm_tensor_io_t tpm_tp_tensor_io(tpm_tp_model_t *m);

/**
 * Fill the slices from the counter RNG (tpm_model_init_value): the same model that
 * tpm_zero3_init_params() builds with @p seed, for any rank count. Not collective.
 */
tpm_status_t tpm_tp_init_params(tpm_tp_model_t *m, uint64_t seed);

/**
 * One forward pass over @p n tokens (host arrays): token i has id tokens[i] in [0, V),
 * belongs to KV slot slots[i] in [0, n_slots) at position pos[i] in [0, ctx); its k and v
 * are stored in the cache and it attends to its slot's positions [0, pos[i]] (earlier
 * positions must have been filled by earlier calls or earlier in this one). The logits
 * of the @p n_logits rows logit_rows[j] in [0, n) are returned in *logits_p on rank 0:
 * (n_logits, Vp) host floats, borrowed until the next call; NULL on other ranks.
 * Collective over m->comm with identical arguments on every rank.
 */
tpm_status_t tpm_tp_forward(tpm_tp_model_t *m, int n, const int32_t *tokens, const int32_t *slots,
                            const int32_t *pos, int n_logits, const int32_t *logit_rows,
                            const float **logits_p);

#endif /* TPM_CORE_MODEL_TP_H */
