/* SPDX-License-Identifier: MIT */
/*
 * tokenizer.h: byte-level BPE tokenizer (train, encode, decode, save, load).
 *
 * Token ids: 0..255 are the 256 single bytes; 256..V-2 are merges in the order
 * they were learned (a merge joins two existing tokens); V-1 is the end-of-text
 * token that separates documents. Encode then decode returns the input bytes
 * exactly, for any byte string. File format: docs/DATA.md.
 */
#ifndef TPM_DATA_TOKENIZER_H
#define TPM_DATA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

typedef struct tpm_tokenizer tpm_tokenizer_t;

/**
 * Learn a vocabulary of @p vocab_size tokens (>= 258: bytes + at least one merge
 * + end-of-text) from @p n_docs documents. Caller owns *tok_p.
 */
tpm_status_t tpm_tokenizer_train(const char *const *docs, const size_t *doc_lens, size_t n_docs,
                                 int vocab_size, tpm_tokenizer_t **tok_p);
tpm_status_t tpm_tokenizer_save(const tpm_tokenizer_t *tok, const char *path);
/** Load a tokenizer file; TPM_ERR_FORMAT (with a message) on a bad or truncated file. */
tpm_status_t tpm_tokenizer_load(const char *path, tpm_tokenizer_t **tok_p);
/** Build from the serialized bytes (as stored in a file or a checkpoint attribute). */
tpm_status_t tpm_tokenizer_from_bytes(const void *buf, size_t n, tpm_tokenizer_t **tok_p);
/** Serialize; caller owns *buf_p (tpm_free). */
tpm_status_t tpm_tokenizer_to_bytes(const tpm_tokenizer_t *tok, void **buf_p, size_t *n_p);
void tpm_tokenizer_destroy(tpm_tokenizer_t *tok); /* no-op on NULL */

int tpm_tokenizer_vocab_size(const tpm_tokenizer_t *tok);
int tpm_tokenizer_eot(const tpm_tokenizer_t *tok);

/**
 * Encode @p n bytes. Writes at most @p cap ids to @p ids and the number needed to
 * *n_ids_p (call with cap 0 to size). Returns TPM_ERR_OVERFLOW if cap is too small.
 */
tpm_status_t tpm_tokenizer_encode(const tpm_tokenizer_t *tok, const char *text, size_t n,
                                  int32_t *ids, size_t cap, size_t *n_ids_p);
/**
 * Decode @p n_ids ids into bytes: same contract as encode for @p cap / *n_p.
 * The end-of-text id decodes to nothing; an id outside the vocabulary is TPM_ERR_INVALID_ARG.
 */
tpm_status_t tpm_tokenizer_decode(const tpm_tokenizer_t *tok, const int32_t *ids, size_t n_ids,
                                  char *out, size_t cap, size_t *n_p);
/** Bytes of one token (borrowed, valid while tok lives); NULL for eot or a bad id. */
const char *tpm_tokenizer_token_bytes(const tpm_tokenizer_t *tok, int32_t id, size_t *len_p);

#endif /* TPM_DATA_TOKENIZER_H */
