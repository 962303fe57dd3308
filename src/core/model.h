/* SPDX-License-Identifier: MIT */
/*
 * model.h: the GPT-2 definition: configuration, the parameter tensor table
 * (names, logical shapes, weight decay, init rule; layout in docs/MODEL.md),
 * the activation buffers, and the forward/backward pass of one transformer
 * block, of the embedding and of the output head with the loss.
 *
 * The model does not know it is sharded: it computes on full tensors handed to
 * it as views (tpm_block_view_t), which the ZeRO-3 engine gathers, and it
 * calls only backend ops. Gradients are ADDED into the gradient views.
 */
#ifndef TPM_CORE_MODEL_H
#define TPM_CORE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "base/status.h"
#include "comm/comm.h"
#include "core/arch.h"
#include "core/rope.h"

#define TPM_VOCAB_PAD 128 /* Vp = roundup(V, TPM_VOCAB_PAD), independent of the rank count */

/* the architecture of a model (tpm_model_config_t.arch); 0 is GPT-2, so a zeroed config is one */
typedef enum {
    TPM_ARCH_GPT2 = 0,
    TPM_ARCH_LLAMA,
} tpm_arch_id_t;

typedef struct tpm_model_config {
    int L;    /* layers */
    int C;    /* channels */
    int NH;   /* heads */
    int V;    /* vocabulary */
    int Vp;   /* padded vocabulary (derived) */
    int maxT; /* position table size (LLaMA: the longest sequence; there is no position table) */
    /*
     * LLaMA family (arch TPM_ARCH_LLAMA; docs/MODEL.md "LLaMA"). tpm_model_config_finish sets
     * the GPT-2 values for GPT-2 (NKV = NH, F = 4C, tied, biases) whatever was given.
     */
    int                arch;       /* tpm_arch_id_t */
    int                NKV;        /* key/value heads (grouped-query attention), divides NH */
    int                F;          /* MLP hidden units (intermediate size) */
    int                tied;       /* the output head is wte (1) or its own lm_head (0) */
    int                qkv_bias;   /* q, k and v projections have biases */
    float              rms_eps;    /* RMSNorm epsilon */
    double             rope_theta; /* rotary base */
    tpm_rope_scaling_t rope;       /* Llama-3 frequency scaling (factor 0: none) */
} tpm_model_config_t;

/** "gpt2" or "llama"; NULL for an unknown id. */
const char *tpm_arch_id_name(int arch);

/** The id of architecture @p name; -1 when unknown. */
int tpm_arch_id_parse(const char *name);

/* tensors of one transformer block, in storage order: the rows of the table in core/arch.c */
enum {
    TPM_B_LN1W = 0, /* (C) */
    TPM_B_LN1B,     /* (C) */
    TPM_B_QKVW,     /* (3C, C) rows grouped by head */
    TPM_B_QKVB,     /* (3C) */
    TPM_B_ATTPROJW, /* (C, C) stored [in, out] */
    TPM_B_ATTPROJB, /* (C) */
    TPM_B_LN2W,     /* (C) */
    TPM_B_LN2B,     /* (C) */
    TPM_B_FCW,      /* (4C, C) */
    TPM_B_FCB,      /* (4C) */
    TPM_B_FCPROJW,  /* (4C, C) stored [in, out] */
    TPM_B_FCPROJB,  /* (C) */
    TPM_BLOCK_NT
};

/* tensors of the embedding group */
enum {
    TPM_E_WTE = 0, /* (Vp, C) */
    TPM_E_WPE,     /* (maxT, C) */
    TPM_E_LNFW,    /* (C) */
    TPM_E_LNFB,    /* (C) */
    TPM_EMB_NT
};

/*
 * Tensors of a LLaMA block, the rows of its table in core/arch.c (docs/MODEL.md "LLaMA").
 * qkvb comes last: a model without q/k/v biases has the first TPM_LB_QKVB rows only.
 */
enum {
    TPM_LB_LN1W = 0, /* (C) input RMSNorm weight */
    TPM_LB_QKVW,     /* (QKV, C) q, k, v rows grouped by KV group */
    TPM_LB_OW,       /* (C, C) o_proj stored [in, out] */
    TPM_LB_LN2W,     /* (C) post-attention RMSNorm weight */
    TPM_LB_GATEW,    /* (F, C) gate_proj */
    TPM_LB_UPW,      /* (F, C) up_proj */
    TPM_LB_DOWNW,    /* (F, C) down_proj stored [in, out] */
    TPM_LB_QKVB,     /* (QKV) q, k, v biases (only with qkv_bias) */
    TPM_LBLOCK_NT
};

/* tensors of the LLaMA embedding group; lm_head only with an untied head */
enum {
    TPM_LE_WTE = 0, /* (Vp, C) embed_tokens (and the tied head) */
    TPM_LE_LNFW,    /* (C) final RMSNorm weight */
    TPM_LE_HEAD,    /* (Vp, C) lm_head (untied) */
    TPM_LEMB_NT
};

#define TPM_GROUP_MAX_NT TPM_BLOCK_NT

typedef enum {
    TPM_INIT_NORMAL = 0, /* N(0, std) */
    TPM_INIT_CONST,      /* value */
} tpm_init_kind_t;

/**
 * One parameter tensor of a configured model: a (rows, cols) matrix; a vector is (n, 1).
 * Derived from its row of the architecture table (core/arch.h) by tpm_model_group_desc().
 */
typedef struct tpm_param_desc {
    char                     name[16];
    int64_t                  rows;
    int64_t                  cols;
    int64_t                  valid_rows; /* rows holding real values (wte: V; others: rows) */
    int                      decay;      /* AdamW weight decay applies (2-D tensors) */
    tpm_init_kind_t          init;
    float                    init_value; /* std for NORMAL, value for CONST */
    tpm_split_t              split;      /* tensor-parallel split of the rows */
    const tpm_tensor_spec_t *spec;       /* its table row (static storage) */
} tpm_param_desc_t;

/**
 * Groups: 0..L-1 are the transformer blocks, L is the embedding group
 * (wte, wpe, lnfw, lnfb). A group is the unit ZeRO-3 gathers.
 */
static inline int tpm_model_n_groups(const tpm_model_config_t *cfg)
{
    return cfg->L + 1;
}

/**
 * Check the configuration (heads divide C, sizes positive and within limits)
 * and fill Vp. Logs a message naming the problem; TPM_ERR_INVALID_ARG.
 */
tpm_status_t tpm_model_config_finish(tpm_model_config_t *cfg);

/** Key/value heads: NKV for LLaMA, NH for GPT-2. */
static inline int tpm_model_nkv(const tpm_model_config_t *cfg)
{
    return cfg->arch == TPM_ARCH_LLAMA ? cfg->NKV : cfg->NH;
}

/** MLP hidden units: F for LLaMA, 4C for GPT-2. */
static inline int tpm_model_ffn(const tpm_model_config_t *cfg)
{
    return cfg->arch == TPM_ARCH_LLAMA ? cfg->F : 4 * cfg->C;
}

/** Rows of the QKV projection: (NH + 2 NKV) hs (3C for GPT-2). */
static inline int64_t tpm_model_qkv_rows(const tpm_model_config_t *cfg)
{
    return (int64_t)(cfg->NH + 2 * tpm_model_nkv(cfg)) * (cfg->C / cfg->NH);
}

/** The architecture table of @p cfg (static storage). */
const tpm_arch_t *tpm_model_arch(const tpm_model_config_t *cfg);

/** The size of dimension @p d in model @p cfg (Vp must be set: tpm_model_config_finish). */
int64_t tpm_model_dim(const tpm_model_config_t *cfg, tpm_dim_t d);

/** Tensor descriptors of group @p g into @p desc; returns the tensor count. */
int tpm_model_group_desc(const tpm_model_config_t *cfg, int g, tpm_param_desc_t *desc);

/** The table row of tensor @p t of group @p g (static storage). */
const tpm_tensor_spec_t *tpm_model_spec(const tpm_model_config_t *cfg, int g, int t);

/**
 * The stable name of tensor @p t of group @p g: "h.<g>.<name>" for a block, "<name>" for
 * the embedding group, as checkpoint datasets (under /model, /optim/...) are named.
 * TPM_ERR_INVALID_ARG when it does not fit in @p cap bytes.
 */
tpm_status_t tpm_model_tensor_name(const tpm_model_config_t *cfg, int g, int t, char *buf,
                                   size_t cap);

/** Logical parameter count (padded vocabulary rows included). */
size_t tpm_model_num_params(const tpm_model_config_t *cfg);

/** Pointers to the full tensors of one group (parameters or gradients). */
typedef struct tpm_group_view {
    float *t[TPM_GROUP_MAX_NT];
} tpm_group_view_t;

/**
 * Saved activations of one block for a (B, T) micro-batch. LLaMA uses the same buffers:
 * ln1/ln2 hold the RMSNorm outputs (no means), qkv the (B,T,(NH + 2 NKV) hs) projections
 * after RoPE, fch the gate, fcu the up projection and fch_gelu silu(gate) * up (F each).
 */
typedef struct tpm_block_acts {
    float *ln1;      /* (B,T,C) */
    float *ln1_mean; /* (B,T) */
    float *ln1_rstd; /* (B,T) */
    float *qkv;      /* (B,T,3C) */
    float *atty;     /* (B,T,C) */
    float *att_lse;  /* (B,NH,T) */
    float *res2;     /* (B,T,C) residual after attention */
    float *ln2;      /* (B,T,C) */
    float *ln2_mean; /* (B,T) */
    float *ln2_rstd; /* (B,T) */
    float *fch;      /* (B,T,4C) pre-GELU */
    float *fch_gelu; /* (B,T,4C) */
    float *fcu;      /* (B,T,F) LLaMA: the up projection (NULL for GPT-2) */
} tpm_block_acts_t;

/**
 * The part of a block one forward pass computes: the whole block (training: every head, every
 * MLP unit, on one rank of the ZeRO-3 view) or one tensor-parallel rank's slice (serving:
 * core/model_tp.h). The weights handed with it are that part's rows, in the split of the
 * tensor table (core/arch.h): QKV rows of heads [h0, h0 + nh), attprojw input rows of those
 * heads, MLP units [f0, f0 + nf); replicated tensors whole.
 */
typedef struct tpm_block_part {
    int nh;  /* heads computed here (NH: the whole block) */
    int nkv; /* LLaMA: key/value heads computed here, whole groups (NKV: the whole block) */
    int nf; /* MLP hidden units computed here (4C: the whole block) */
    /* add the row-parallel biases (attprojb, fcprojb): on exactly one rank of the split */
    int add_bias;
    /*
     * (optional) completes the row-parallel sums with an all-reduce over the split's ranks;
     * NULL for the whole block. Borrowed.
     */
    tpm_comm_t *comm;
} tpm_block_part_t;

/** The whole block: the partition of a one-rank model, which training uses. */
tpm_block_part_t tpm_block_part_whole(const tpm_model_config_t *cfg);

/**
 * Buffers of one block forward over n tokens, with Cl = nh hs and nf of the partition. The
 * residual stream may be updated in place (res2 == out == x) when @c part is set.
 */
typedef struct tpm_block_io {
    int          n;                         /* tokens */
    const float *x;                         /* (n, C) block input */
    float       *ln1, *ln1_mean, *ln1_rstd; /* (n, C), (n), (n) */
    float       *qkv;                       /* (n, 3 Cl) head-grouped */
    float       *atty;                      /* (n, Cl) */
    float       *res2;                      /* (n, C) residual stream after attention */
    float       *ln2, *ln2_mean, *ln2_rstd; /* (n, C), (n), (n) */
    float       *fch, *fch_gelu;            /* (n, nf) */
    float       *fcu;                       /* (n, nf) LLaMA: the up projection */
    float       *out;                       /* (n, C) block output */
    /* LLaMA: the rotary position of every token (device int32, n) and inv_freq (hs / 2) */
    const int32_t *rope_pos;
    const float   *inv_freq;
    /*
     * (optional) (n, C) scratch for the partial sums of the two row-parallel projections,
     * needed when part->comm is set; NULL: they are written straight into res2 and out.
     */
    float *part;
    /* attention over whole sequences (training): n = B T, causal, log-sum-exp saved */
    int    B, T;
    float *att_lse; /* (B, nh, T) */
    /*
     * (optional) attention against a KV cache instead (serving): when ctx > 0, token i goes
     * to slot[i] at position pos[i] (device int32 arrays of n), the caches are
     * (n_slots, ctx, Cl) of this layer (NULL when Cl = 0); B, T and att_lse are unused.
     */
    float         *kcache, *vcache;
    uint16_t      *kcache16, *vcache16; /* (optional) bf16 caches instead (attention_kv16) */
    const int32_t *slot, *pos;
    int            ctx;
    /*
     * (optional, serving) the matrix weights in a serving format, indexed like w (TPM_B_*):
     * a non-NULL entry replaces w[t] in its product (backend op matmul_fwd_q). NULL: fp32.
     */
    const struct tpm_qmat *const *qw;
    /* (optional) called between ops so that non-blocking collectives progress */
    void (*progress)(void *ctx);
    void *progress_ctx;
} tpm_block_io_t;

/**
 * The forward of one transformer block: io->out = block(io->x), on the partition @p part
 * with its weight rows @p w (indexed by TPM_B_*). Training (tpm_model_block_fwd) and
 * tensor-parallel serving (tpm_tp_forward) both run this one function. Collective over
 * part->comm when it is set (two all-reduces of (n, C)).
 */
tpm_status_t tpm_block_fwd(tpm_backend_t *be, const tpm_model_config_t *cfg, float *const *w,
                           const tpm_block_part_t *part, const tpm_block_io_t *io);

/** All activations and activation-gradient scratch of one micro-batch shape. */
typedef struct tpm_acts {
    int               B, T;
    tpm_block_acts_t *blk;      /* (L) */
    float            *resid;    /* (L+1, B, T, C): resid[l] is the input of block l */
    float            *lnf;      /* (B,T,C) */
    float            *lnf_mean; /* (B,T) */
    float            *lnf_rstd; /* (B,T) */
    float            *logits;   /* (B,T,Vp), overwritten by dlogits in training */
    float            *losses;   /* (B,T) */
    int32_t          *tokens;   /* (B,T) device copy of the inputs */
    int32_t          *targets;  /* (B,T) */
    /* gradient scratch, reused by every block */
    float *dresid; /* (B,T,C) gradient of the residual stream */
    float *dbtc;   /* (B,T,C) */
    float *dbtc2;  /* (B,T,C) */
    float *dqkv;   /* (B,T,3C) */
    float *dfch;   /* (B,T,4C) */
    float *dfch2;  /* (B,T,4C) */
    float *dfch3;  /* (B,T,F) LLaMA: gradient of the up projection */
    int32_t *pos;      /* (B,T) LLaMA: position t of every token, for RoPE */
    float   *inv_freq; /* (hs/2) LLaMA: rotary frequencies of the configuration */
    int    n_valid;  /* targets >= 0 in the current batch (set by tpm_model_set_batch) */
    float *losses_h; /* (B,T) host copy of the losses */
    /*
     * (optional, serving) the matrix weights in a serving format, indexed like w (TPM_B_*):
     * a non-NULL entry replaces w[t] in its product (backend op matmul_fwd_q). NULL: fp32.
     */
    const struct tpm_qmat *const *qw;
    /* (optional) called between ops so that non-blocking collectives progress */
    void (*progress)(void *ctx);
    void  *progress_ctx;
    void  *mem; /* the one allocation all of the above point into */
    size_t nbytes;
} tpm_acts_t;

/** Allocate activations for micro-batch (B, T) on @p be, once. */
tpm_status_t tpm_acts_create(tpm_backend_t *be, const tpm_model_config_t *cfg, int B, int T,
                             tpm_acts_t **acts_p);
void tpm_acts_destroy(tpm_backend_t *be, tpm_acts_t *acts); /* no-op on NULL */

/** Copy host tokens/targets (B*T each; targets may be NULL) into the activations. */
tpm_status_t tpm_model_set_batch(tpm_backend_t *be, tpm_acts_t *a, const int32_t *tokens,
                                 const int32_t *targets);

/** resid[0] = wte[tokens] + wpe. */
tpm_status_t tpm_model_embed_fwd(tpm_backend_t *be, const tpm_model_config_t *cfg,
                                 const tpm_group_view_t *emb, tpm_acts_t *a);

/** resid[l+1] = block_l(resid[l]). */
tpm_status_t tpm_model_block_fwd(tpm_backend_t *be, const tpm_model_config_t *cfg, int l,
                                 const tpm_group_view_t *p, tpm_acts_t *a);

/**
 * Final LayerNorm, logits, per-position losses. Returns the mean loss over
 * positions with a target >= 0 in *loss_p. If @p demb is not NULL, also runs
 * the backward of the head with d(loss)/d(position loss) = dloss_scale / n_valid:
 * logits become dlogits, demb (wte, lnfw, lnfb) gets its gradients added, and
 * a->dresid is SET to the gradient of resid[L].
 */
tpm_status_t tpm_model_head_fwd_bwd(tpm_backend_t *be, const tpm_model_config_t *cfg,
                                    const tpm_group_view_t *emb, const tpm_group_view_t *demb,
                                    float dloss_scale, tpm_acts_t *a, float *loss_p);

/**
 * Backward of block l: in: a->dresid = d/d resid[l+1]; out: a->dresid = d/d resid[l].
 * Parameter gradients are added into @p dp.
 */
tpm_status_t tpm_model_block_bwd(tpm_backend_t *be, const tpm_model_config_t *cfg, int l,
                                 const tpm_group_view_t *p, const tpm_group_view_t *dp,
                                 tpm_acts_t *a);

/** Backward of the embedding: dwte, dwpe += from a->dresid (= d/d resid[0]). */
tpm_status_t tpm_model_embed_bwd(tpm_backend_t *be, const tpm_model_config_t *cfg,
                                 const tpm_group_view_t *demb, tpm_acts_t *a);

/**
 * Deterministic initial value of element (row, col) of tensor @p t of group @p g,
 * independent of the rank count (counter RNG keyed by seed, group, tensor, element).
 */
float tpm_model_init_value(const tpm_param_desc_t *d, uint64_t seed, int g, int t, int64_t row,
                           int64_t col);

/* ---------------------------------------------------------------------------------------------- */
/*
 * Opt-in per-op timing: with TPMPI_PROFILE=1 in the environment every backend op
 * of the model and of the optimizer is bracketed by a backend sync and the wall
 * clock, and a table (ms per micro-batch / per step, share) is printed by rank 0
 * at exit. The first optimizer step (page faults, scratch growth) and forward-only
 * (evaluation) passes are left out. Off, each op costs one well-predicted branch.
 */
typedef enum {
    TPM_PROF_EMBED_FWD = 0,
    TPM_PROF_LN_FWD,
    TPM_PROF_QKV_FWD,
    TPM_PROF_ATTN_FWD,
    TPM_PROF_ATTPROJ_FWD,
    TPM_PROF_RESID_FWD,
    TPM_PROF_FC_FWD,
    TPM_PROF_GELU_FWD,
    TPM_PROF_FCPROJ_FWD,
    TPM_PROF_LOGITS_FWD,
    TPM_PROF_XENT,
    TPM_PROF_GATHER_FWD, /* ZeRO-3: all-gather issue, wait and unpack */
    TPM_PROF_N_FWD,      /* forward ops come before this mark */
    TPM_PROF_LOGITS_BWD = TPM_PROF_N_FWD,
    TPM_PROF_LN_BWD,
    TPM_PROF_FCPROJ_BWD,
    TPM_PROF_GELU_BWD,
    TPM_PROF_FC_BWD,
    TPM_PROF_ATTPROJ_BWD,
    TPM_PROF_ATTN_BWD,
    TPM_PROF_QKV_BWD,
    TPM_PROF_EMBED_BWD,
    TPM_PROF_MEMZERO_BWD,
    TPM_PROF_GATHER_BWD, /* ZeRO-3: all-gather issue, wait and unpack */
    TPM_PROF_RS_BWD,     /* ZeRO-3: gradient pack, reduce-scatter (or 2-bit exchange), sum */
    TPM_PROF_EMB_RS_BWD, /* the same for the embedding group (blocking, at the end) */
    TPM_PROF_N_BWD,      /* backward ops come before this mark */
    TPM_PROF_ZERO_GRAD = TPM_PROF_N_BWD,
    TPM_PROF_GRAD_NORM,
    TPM_PROF_CLIP,
    TPM_PROF_ADAMW, /* the end of an optimizer step */
    TPM_PROF_N
} tpm_prof_op_t;

/** Start timing an op: 0.0 when profiling is off, else the time after a backend sync. */
double tpm_prof_begin(tpm_backend_t *be);

/** Stop timing @p op started at @p t0 (a no-op when t0 is 0.0). */
void tpm_prof_end(tpm_backend_t *be, tpm_prof_op_t op, double t0);

#endif /* TPM_CORE_MODEL_H */
