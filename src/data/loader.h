/* SPDX-License-Identifier: MIT */
/*
 * loader.h: token shard files and deterministic micro-batch sampling.
 *
 * Shard files use llm.c's format (docs/DATA.md): a 256 x int32 header (magic
 * 20240520, version 1, token count) then uint16 tokens. A split (train or val)
 * is every *train*.bin (or *val*.bin) file in the data directory, in name order,
 * read whole into memory as one token stream.
 *
 * Sampling: micro-batch number g (a global counter over all ranks and steps)
 * takes B windows of T+1 tokens at offsets drawn from the counter RNG keyed by
 * (seed, g, b). The data position is therefore a single integer (the next g),
 * the same on every rank count, which is what exact resume and the ZeRO-3
 * equivalence tests need.
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
void tpm_tokens_cleanup(tpm_tokens_t *toks); /* no-op when empty */

/** Write @p n tokens as one shard file in llm.c format. */
tpm_status_t tpm_tokens_write_shard(const char *path, const uint16_t *tok, size_t n);

/**
 * Fill x and y (each B*T) for micro-batch @p g: y is x shifted by one token.
 * Needs toks->n >= T + 1 (TPM_ERR_INVALID_ARG otherwise, with a message).
 */
tpm_status_t tpm_tokens_batch(const tpm_tokens_t *toks, uint64_t seed, uint64_t g, int B, int T,
                              int32_t *x, int32_t *y);

#endif /* TPM_DATA_LOADER_H */
