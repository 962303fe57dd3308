/* SPDX-License-Identifier: MIT */
/*
 * exchange.h: the gradient reduce-scatter of the ZeRO-3 engine, plain (fp32
 * reduce-scatter) or 2-bit compressed. Packed 2-bit codes cannot be summed by
 * a reduce-scatter, so the compressed path is (ARCHITECTURE.md §5):
 *   each rank adds its residual to its gradients, encodes the chunk of every
 *   owner (twobit.h) and sends each owner its chunk in ONE all-to-all; each
 *   owner decodes the N chunks and sums them in fp32, in rank order 0..N-1.
 * A chunk is one owner's part of one group (its shard of that group), so a
 * block never straddles two owners; the last block of a chunk is zero-padded.
 *
 * The error-feedback residual is per rank and covers the whole local gradient
 * (N * group shard values per group): it does not shrink with N. It is reset
 * on checkpoint load (docs/COMPRESSION.md).
 *
 * The codec runs through the backend's twobit_encode/twobit_decode_add ops and
 * the residual and all-to-all buffers are backend memory, so gradients stay on
 * the device (CUDA: kernels/twobit.cu, the same bytes as the CPU reference).
 *
 * Byte accounting: the comm layer counts the wire bytes; this object keeps the
 * part that is gradient traffic (fp32 reduce-scatter and compressed all-to-all).
 * Every start/finish pair is collective over the communicator.
 */
#ifndef TPM_COMPRESS_EXCHANGE_H
#define TPM_COMPRESS_EXCHANGE_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "cli/config.h"
#include "comm/comm.h"
#include "backend/backend_twobit.h"

/** Options of the compressed exchange (from --grad-compression and friends). */
typedef struct tpm_compress_opts {
    int               enabled; /* --grad-compression=2bit */
    tpm_twobit_mode_t mode;    /* --compression-residual: fp32, bf16, none (= stochastic) */
    int               block;   /* --compression-block: values per scale */
    int64_t           warmup;  /* --compression-warmup: first K steps use the fp32 path */
    int               freeze_v; /* --compression-freeze-v: AdamW v fixed after the warm-up */
    uint64_t          seed;    /* stochastic rounding key (--seed) */
} tpm_compress_opts_t;

/** Fill @p o from the configuration; logs and returns TPM_ERR_INVALID_ARG on a bad block size. */
tpm_status_t tpm_compress_opts_from_config(const tpm_config_t *cfg, tpm_compress_opts_t *o);

/**
 * The key of the stochastic draws of one rank's micro-batch: tpm_rng_u64(seed ^ 0x32626974
 * ("2bit"), step, micro << 32 | rank). Value i of the rank-major buffer of group g then draws
 * tpm_rng_u64(key, g, i): deterministic, independent of thread count, and distinct for every
 * (step, micro-batch, rank, group, element).
 */
uint64_t tpm_compress_key(uint64_t seed, int64_t step, int micro, int rank);

typedef struct tpm_exchange_stats {
    uint64_t bytes_fp32; /* bytes sent by fp32 gradient reduce-scatters */
    uint64_t bytes_2bit; /* bytes sent by compressed all-to-alls (codes, scales, padding) */
    uint64_t calls_fp32;
    uint64_t calls_2bit;
    double   codec_s; /* time spent encoding and decoding (launching, on a device) */
} tpm_exchange_stats_t;

typedef struct tpm_exchange {
    tpm_backend_t       *be;
    tpm_comm_t          *comm;
    tpm_compress_opts_t  opts;
    int                  n_groups;
    size_t              *chunk_n;     /* (n_groups) values per owner chunk = group shard size */
    size_t              *chunk_bytes; /* (n_groups) encoded bytes per owner chunk */
    size_t              *res_off;     /* (n_groups) offset of the group in the residual */
    void    *residual; /* (sum N * chunk_n) fp32 or bf16 bits, backend memory; NULL if none */
    uint8_t *send;     /* (N * max chunk_bytes) encoded chunks, owner order, backend memory */
    uint8_t *recv;     /* (N * max chunk_bytes) received chunks, sender order, backend memory */
    size_t               residual_bytes;
    size_t               buffer_bytes; /* send + recv */
    float               *scratch;      /* optional, for the blocking fp32 path (backend memory) */
    size_t               scratch_n;    /* its floats */
    int                  group;        /* group in flight, -1 none */
    int                  compressed;   /* the one in flight is compressed */
    tpm_exchange_stats_t stats;
} tpm_exchange_t;

/**
 * Create the exchange for @p n_groups groups whose per-owner chunk sizes are
 * @p chunk_n. With @p opts->enabled the residual and the all-to-all buffers
 * are allocated here, once, in @p be's memory (the gradients' backend). Local
 * (no communication). Caller owns *x_p.
 */
tpm_status_t tpm_exchange_create(tpm_backend_t *be, tpm_comm_t *comm, const tpm_compress_opts_t *opts, int n_groups,
                                 const size_t *chunk_n, tpm_exchange_t **x_p);
void         tpm_exchange_destroy(tpm_exchange_t *x); /* no-op on NULL */

/**
 * Start the reduce-scatter of group @p gi. @p rank_major holds this rank's
 * gradients, owner-major (N * chunk_n[gi] floats, owner j's chunk at
 * j * chunk_n[gi]); it must stay untouched until finish. With @p compress (only
 * allowed when the exchange was created enabled) it is encoded into the send
 * buffer (residual updated) and exchanged by one all-to-all; otherwise it is
 * reduce-scattered in fp32 into @p out. @p key: tpm_compress_key() (stochastic
 * variant only). @p req: non-blocking when not NULL. Collective.
 */
tpm_status_t tpm_exchange_start(tpm_exchange_t *x, int gi, const float *rank_major, int compress,
                                uint64_t key, float *out, tpm_comm_req_t *req);

/**
 * Finish the exchange started last: wait for @p req (a no-op if the caller
 * already waited, or if it was blocking), then, if compressed, decode the N
 * received chunks and write their fp32 sum (rank order) to @p out
 * (chunk_n[gi] floats, overwritten). For the fp32 path @p out already holds
 * the reduce-scatter result.
 */
tpm_status_t tpm_exchange_finish(tpm_exchange_t *x, tpm_comm_req_t *req, float *out);

/**
 * Lend the exchange a buffer of @p n floats it may overwrite during a blocking fp32
 * exchange (an all-to-all receive buffer on MPI; see comm_mpi.c). NULL: none.
 */
void tpm_exchange_set_scratch(tpm_exchange_t *x, float *scratch, size_t n);

/** Zero the error-feedback residual (checkpoint load, or compression switched on). */
tpm_status_t tpm_exchange_reset_residual(tpm_exchange_t *x);

#endif /* TPM_COMPRESS_EXCHANGE_H */
