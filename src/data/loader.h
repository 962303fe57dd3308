/* SPDX-License-Identifier: MIT */
/*
 * loader.h: token shard files and deterministic micro-batch sampling.
 *
 * Shard files use llm.c's format (docs/DATA.md): a 256 x int32 header (magic
 * 20240520, version 1, token count) then uint16 tokens. A split (train or val)
 * is every *train*.bin (or *val*.bin) file in the data directory, in name order,
 * read whole into memory as one token stream.
 *
 * Sampling (docs/DATA.md section 4): a window of T+1 tokens starts at an
 * offset drawn from the counter RNG keyed by (seed, stream, index). In data
 * order 2 the stream is the step and the index is the sample's place in the
 * global batch, so the samples of a step do not depend on how the global batch
 * is split into ranks x micro-steps x rows. Order 1 (checkpoints written before
 * order 2 existed) keyed a window by (micro-batch, row).
 */
#ifndef TPM_DATA_LOADER_H
#define TPM_DATA_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

typedef struct tpm_tokens {
    uint16_t *tok; /* (n) owned */
    size_t    n;
    int       max_id; /* largest token id seen */
} tpm_tokens_t;

/**
 * Load every shard of @p split ("train" or "val") in @p dir. TPM_ERR_NOT_FOUND
 * when there is none; TPM_ERR_FORMAT (message names the file) on a bad header or
 * size. Not collective: every rank loads on its own.
 */
tpm_status_t tpm_tokens_load(const char *dir, const char *split, tpm_tokens_t *toks);
void         tpm_tokens_cleanup(tpm_tokens_t *toks); /* no-op when empty */

/** Write @p n tokens as one shard file in llm.c format. */
tpm_status_t tpm_tokens_write_shard(const char *path, const uint16_t *tok, size_t n);

/**
 * Fill x and y (each B*T): row b is the window keyed (seed, @p stream,
 * @p first + b), and y is x shifted by one token. Needs toks->n >= T + 1
 * (TPM_ERR_INVALID_ARG otherwise, with a message).
 */
tpm_status_t tpm_tokens_batch(const tpm_tokens_t *toks, uint64_t seed, uint64_t stream,
                              uint64_t first, int B, int T, int32_t *x, int32_t *y);

/* data orders (the data_order attribute of a checkpoint) */
#define TPM_DATA_ORDER_MICROBATCH 1 /* window (seed, (s*A + a)*N + r, b): depends on the split */
#define TPM_DATA_ORDER_SAMPLE     2 /* window (seed ^ salt, s, (a*N + r)*B + b): split-free */
#define TPM_DATA_ORDER            TPM_DATA_ORDER_SAMPLE /* what new runs use */

/*
 * Validation windows: global batch e of an evaluation is keyed like a training step e in
 * data order 2, with the run's seed xor this salt (train.c evaluate, eval/eval.c)
 */
#define TPM_DATA_VAL_SALT 0x76616cULL /* "val" */

/** Where micro-step @p a of rank @p r in step @p s reads its B rows. */
typedef struct tpm_data_key {
    uint64_t seed, stream, first;
} tpm_data_key_t;

/**
 * The key of micro-step @p a (0 <= a < A) on rank @p r (0 <= r < N) of step
 * @p s with @p B rows per micro-batch, in data order @p order (one of the
 * TPM_DATA_ORDER_* values; the caller has checked it).
 */
tpm_data_key_t tpm_data_key(int order, uint64_t seed, int64_t s, int a, int A, int r, int N, int B);

#endif /* TPM_DATA_LOADER_H */
