/* SPDX-License-Identifier: MIT */
/*
 * zero3.h: the ZeRO-3 engine. Each rank keeps 1/N of every parameter, of its
 * gradient and of the AdamW moments (fp32), in the layout of shard.h. Around
 * the model's per-block forward and backward it:
 *  - all-gathers one whole group (transformer block) at a time into a
 *    preallocated buffer, prefetching block i+1 (forward) or i-1 (backward)
 *    with a non-blocking all-gather while block i computes, and releases a
 *    block by reusing its buffer for the next;
 *  - reduce-scatters a block's gradients (fp32 sum) as soon as its backward is
 *    done, overlapped with the next block's backward, and adds them into the
 *    gradient shard (so gradient accumulation over micro-batches is a sum);
 *  - runs clipping (one scalar all-reduce) and AdamW on the local shard only.
 * The gradient reduce-scatter goes through compress/exchange.h: fp32, or, with
 * tpm_zero3_set_compression(), 2-bit codes in one all-to-all per block.
 * At N = 1 the full and shard layouts coincide and no buffer or copy is used.
 * All buffers are allocated in tpm_zero3_create(); nothing is allocated per step.
 * Every function taking a tpm_zero3_t is collective over its communicator.
 */
#ifndef TPM_ZERO3_H
#define TPM_ZERO3_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "comm/comm.h"
#include "compress/exchange.h"
#include "core/model.h"
#include "core/tensor_io.h"
#include "zero3/shard.h"

typedef struct tpm_zero3_mem {
    size_t param_bytes;        /* parameter shard */
    size_t grad_bytes;         /* gradient shard */
    size_t optim_bytes;        /* AdamW m and v */
    size_t gather_bytes;       /* gather/prefetch and reduce-scatter buffers */
    size_t act_bytes;          /* activations and their gradients */
    size_t residual_bytes;     /* 2-bit error-feedback residual (per rank, not / N) */
    size_t compress_buf_bytes; /* 2-bit all-to-all send and receive buffers */
    size_t work_bytes;         /* bf16 working copy of the shard (+ fp32 view at N = 1) */
} tpm_zero3_mem_t;

typedef struct tpm_zero3_times {
    double wait_s;    /* time blocked waiting for collectives (not hidden by compute) */
    double compute_s; /* time in forward/backward compute */
} tpm_zero3_times_t;

typedef struct tpm_zero3 {
    tpm_backend_t     *be;
    tpm_comm_t        *comm;
    tpm_model_config_t cfg;
    tpm_shard_layout_t lay;
    tpm_acts_t        *acts;
    int                B, T;

    float *param; /* (shard_numel) this rank's parameters */
    float *grad;  /* (shard_numel) accumulated gradients */
    float *m, *v; /* (shard_numel) AdamW moments */

    /*
     * bf16 working weights (--precision=bf16, on when param16 is not NULL): param16 is the
     * bf16 rounding of param, what every forward/backward sees and what the all-gathers move
     * (half the bytes); at N = 1 work16 is its fp32 widening, the view the blocks compute on.
     * work_valid = 0 after anything that writes param (AdamW, init, checkpoint load): the
     * next pass refreshes.
     */
    uint16_t *param16; /* (shard_numel), NULL in fp32 mode */
    float    *work16;  /* (shard_numel), N = 1 only */
    int       work_valid;

    /* N > 1 only */
    float         *gather_stage;  /* (max_full_block) all-gather destination, rank-major */
    float         *blk_full;      /* (max_full_block) current block, full layout */
    float         *blk_gfull;     /* (max_full_block) current block's gradients, full layout */
    float         *rs_stage;      /* (max_full_block) gradients packed rank-major for RS */
    float         *rs_recv;       /* (max block shard) reduce-scatter result */
    float         *emb_full;      /* embedding group, full layout */
    float         *emb_gfull;     /* its gradients */
    float         *emb_stage;     /* its gather / reduce-scatter staging */
    tpm_comm_req_t gather_req;
    int            gather_group; /* group in flight in gather_req, -1 none */
    tpm_comm_req_t rs_req;
    int            rs_group; /* group in flight in rs_req, -1 none */

    /* gradient exchange (N > 1): fp32 reduce-scatter or compressed all-to-all */
    tpm_exchange_t     *gx;
    tpm_compress_opts_t copts;        /* copts.enabled: 2-bit after the warm-up */
    int                 compress_now; /* the current step compresses */
    int64_t             step;         /* current step (tpm_zero3_begin_step), 0-based */
    int                 micro;        /* micro-batches done in the current step */

    tpm_zero3_mem_t   mem;
    tpm_zero3_times_t times;
} tpm_zero3_t;

/** Allocate shards, buffers and activations for micro-batch (B, T). Collective. */
tpm_status_t tpm_zero3_create(tpm_backend_t *be, tpm_comm_t *comm, const tpm_model_config_t *cfg,
                              int B, int T, tpm_zero3_t **z_p);
void tpm_zero3_destroy(tpm_zero3_t *z); /* no-op on NULL */

/** Fill this rank's parameter shard from the counter RNG (same model at any N); zero m, v. */
tpm_status_t tpm_zero3_init_params(tpm_zero3_t *z, uint64_t seed);

/** Print the layout table (tensor, shape, rows per rank, bytes per rank) on rank 0. */
void tpm_zero3_print_layout(const tpm_zero3_t *z);

tpm_status_t tpm_zero3_zero_grad(tpm_zero3_t *z);

/**
 * One micro-batch: forward, loss, backward; gradients of d(dloss_scale * loss)
 * are added into the gradient shard. x, y are host (B*T) arrays. *loss_p is
 * this rank's micro-batch loss.
 */
tpm_status_t tpm_zero3_fwd_bwd(tpm_zero3_t *z, const int32_t *x, const int32_t *y,
                               float dloss_scale, float *loss_p);

/** Forward only (evaluation); *loss_p is this rank's mean loss. */
tpm_status_t tpm_zero3_forward(tpm_zero3_t *z, const int32_t *x, const int32_t *y, float *loss_p);

/**
 * Use 2-bit gradient compression as @p opts says (opts->enabled = 0: fp32).
 * Allocates the residual and the all-to-all buffers here, once. Local, before
 * the step loop. At N = 1 nothing is sent, so it is accepted and ignored.
 * The codec runs on the backend (CPU or CUDA); --compression-freeze-v is
 * refused (TPM_ERR_UNSUPPORTED) on any backend but cpu.
 */
tpm_status_t tpm_zero3_set_compression(tpm_zero3_t *z, const tpm_compress_opts_t *opts);

/**
 * Begin optimizer step @p step (0-based; a resumed run passes the restored
 * step): compression is on for it when enabled, N > 1 and step >= warm-up.
 * Without this call every step uses the fp32 reduce-scatter.
 */
void tpm_zero3_begin_step(tpm_zero3_t *z, int64_t step);

/** Zero the error-feedback residual (policy: reset on checkpoint load, docs/COMPRESSION.md). */
tpm_status_t tpm_zero3_reset_residual(tpm_zero3_t *z);

/**
 * Working-weight precision: @p bf16 = 0 computes on the fp32 parameters (the default); 1 on
 * their bf16 rounding (fp32 master weights, gradients and AdamW moments, bf16 all-gathers).
 * Allocates the bf16 copy here, once; bf16 cannot be switched off again. Local, before the
 * step loop.
 */
tpm_status_t tpm_zero3_set_precision(tpm_zero3_t *z, int bf16);

/** The parameter shard was written from outside (checkpoint load): refresh the working copy. */
void tpm_zero3_params_changed(tpm_zero3_t *z);

/**
 * The parameter shards of @p z as a partitioned tensor end (core/tensor_io.h): this rank's
 * rows of every tensor, read from or written into z->param (a write also zeroes the
 * block's padding rows). Writing does not mark the working copy stale: the caller calls
 * tpm_zero3_params_changed(). Not collective. @p z is borrowed.
 */
tpm_tensor_io_t tpm_zero3_tensor_io(tpm_zero3_t *z);

/** Gradient bytes this rank has sent so far: fp32 reduce-scatter + compressed all-to-all. */
uint64_t tpm_zero3_grad_bytes_sent(const tpm_zero3_t *z);

/** Global L2 norm of the gradient: local sum of squares, one scalar all-reduce. */
tpm_status_t tpm_zero3_grad_norm(tpm_zero3_t *z, double *norm_p);

/** Scale the gradient shard by @p clip_scale, then AdamW on the local shard (t 1-based). */
tpm_status_t tpm_zero3_adamw(tpm_zero3_t *z, float lr, float beta1, float beta2, float eps,
                             float wd, float clip_scale, int t);

#endif /* TPM_ZERO3_H */
