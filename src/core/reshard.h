/* SPDX-License-Identifier: MIT */
/*
 * reshard.h: the resharding plan of a weight push (--mode=trainserve, docs/DESIGN.md "Live
 * weight push"), pure arithmetic. A training group of n_train ranks holds every tensor of the
 * table (core/arch.h) in ZeRO-3 row blocks (the shard rule, tpm_split_rows over n_train); a
 * serving group of n_serve ranks needs, per tensor, the rows of its tensor-parallel slice
 * (tpm_tp_partition / tpm_tp_rows over n_serve: whole heads, MLP rows, vocabulary rows, or
 * all rows of a replicated tensor). The plan intersects the two row ranges of every tensor
 * for every (training rank i, serving rank j) and packs the intersections into one message
 * per pair, contiguously, in a deterministic order: groups in storage order, tensors in
 * table order, rows ascending. Both ends compute the same plan, so a message carries only
 * values, never a description. Every row a serving rank needs comes from exactly one
 * training rank (the row blocks are disjoint); a replicated row goes to every serving rank.
 *
 * The push protocol on the parent communicator (world ranks [0, n_train) train, the rest
 * serve) uses the tags below; core/reshard.h only names them, train/push.c sends, serve
 * receives (docs/DESIGN.md).
 */
#ifndef TPM_CORE_RESHARD_H
#define TPM_CORE_RESHARD_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "core/model.h"

/** One intersection: rows [row0, row0 + nrows) of tensor (g, t), at element off of its message. */
typedef struct tpm_reshard_seg {
    int     g, t;
    int64_t row0, nrows, cols;
    size_t  off;
} tpm_reshard_seg_t;

typedef struct tpm_reshard_plan {
    int     n_train, n_serve;
    size_t *count; /* (n_train * n_serve): elements of message (i, j) at i n_serve + j */
    size_t *first; /* (n_train * n_serve + 1): its segments are seg[first[k], first[k+1]) */
    tpm_reshard_seg_t *seg; /* (n_seg) */
    size_t             n_seg;
} tpm_reshard_plan_t;

/** Build the plan of model @p cfg (Vp set) from @p n_train to @p n_serve ranks. Pure. */
tpm_status_t tpm_reshard_plan_init(tpm_reshard_plan_t *p, const tpm_model_config_t *cfg,
                                   int n_train, int n_serve);
void         tpm_reshard_plan_cleanup(tpm_reshard_plan_t *p); /* no-op on a zeroed plan */

/** Elements of message (training rank @p i, serving rank @p j). */
static inline size_t tpm_reshard_count(const tpm_reshard_plan_t *p, int i, int j)
{
    return p->count[(size_t)i * (size_t)p->n_serve + (size_t)j];
}

/** Elements training rank @p i sends in all, and serving rank @p j receives in all. */
size_t tpm_reshard_send_total(const tpm_reshard_plan_t *p, int i);
size_t tpm_reshard_recv_total(const tpm_reshard_plan_t *p, int j);

/* ---- the push protocol (tags on the parent communicator) ---------------------------------- */

enum {
    TPM_PUSH_TAG_HDR  = 7101, /* training rank 0 -> every serving rank: tpm_push_hdr_t */
    TPM_PUSH_TAG_TOK  = 7102, /* training rank 0 -> every serving rank: the tokenizer bytes */
    TPM_PUSH_TAG_DATA = 7103, /* training rank i -> serving rank j: message (i, j) */
    TPM_PUSH_TAG_CTL  = 7104, /* serving rank 0 -> training rank 0: tpm_push_ctl_t */
};

typedef enum {
    TPM_PUSH_HELLO = 1, /* start-up: status, model configuration, tokenizer length */
    TPM_PUSH_WEIGHTS,   /* a push: the data messages of this step follow */
    TPM_PUSH_BYE,       /* the trainer sends no more */
} tpm_push_kind_t;

typedef enum {
    TPM_PUSH_CTL_REQUEST = 1, /* POST /admin/push: push at the next step boundary */
    TPM_PUSH_CTL_STOP,        /* the serving group stops (status: why); the trainer stops too */
} tpm_push_ctl_kind_t;

typedef struct tpm_push_hdr {
    int32_t            kind;   /* tpm_push_kind_t */
    int32_t            status; /* HELLO: the trainer's start-up status */
    int32_t            bf16;   /* WEIGHTS: values are bf16 (else fp32) */
    int32_t            reserved;
    int64_t            step;    /* WEIGHTS: optimizer steps the weights have seen */
    int64_t            tok_len; /* HELLO: tokenizer bytes that follow */
    tpm_model_config_t model;   /* HELLO */
} tpm_push_hdr_t;

typedef struct tpm_push_ctl {
    int32_t kind;   /* tpm_push_ctl_kind_t */
    int32_t status; /* STOP: TPM_OK (SIGTERM) or the serving group's failure */
} tpm_push_ctl_t;

/** The two groups of one job and the communicator over both (borrowed). */
typedef struct tpm_push_link {
    struct tpm_comm *world; /* ranks [0, n_train) train, [n_train, n_train + n_serve) serve */
    int              n_train, n_serve;
    int              bf16;       /* --push-dtype=bf16 */
    int64_t          push_every; /* --push-every */
} tpm_push_link_t;

#endif /* TPM_CORE_RESHARD_H */
