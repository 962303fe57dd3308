/* SPDX-License-Identifier: MIT */
/*
 * prepare.h: --mode=prepare: text files -> tokenizer + train/val token shards,
 * and the built-in fortunes corpus cache.
 */
#ifndef TPM_DATA_PREPARE_H
#define TPM_DATA_PREPARE_H

#include <stddef.h>

#include "base/status.h"

/* The built-in default corpus: Debian's fortunes package. */
#define TPM_FORTUNES_DIR   "/usr/share/games/fortunes"
#define TPM_BUILTIN_VOCAB  4096

/**
 * Read the input files (fortune-style files are split into documents at lines
 * holding a single '%'; other text files are one document each), train a BPE
 * tokenizer of @p vocab_size tokens, and write out_dir/tokenizer.bin,
 * out_dir/train_000.bin and out_dir/val_000.bin (every document whose index
 * hashes into @p val_fraction goes to val). Documents are separated by the
 * end-of-text token. Creates out_dir. Not collective (rank 0 runs it).
 */
tpm_status_t tpm_prepare_run(const char *const *inputs, int n_inputs, const char *out_dir,
                             int vocab_size, double val_fraction);

/**
 * Path of the built-in corpus cache (TPMPI_CACHE, else XDG_CACHE_HOME/tpmpi,
 * else HOME/.cache/tpmpi, then "/fortunes-v<vocab>") into @p buf.
 */
tpm_status_t tpm_prepare_builtin_dir(char *buf, size_t cap);

/**
 * Make sure the built-in corpus cache exists (prepare it from TPM_FORTUNES_DIR
 * if not, writing to a temporary folder and renaming it into place), and
 * return its path in @p buf. Clear error if the fortunes package is missing.
 */
tpm_status_t tpm_prepare_builtin(char *buf, size_t cap);

#endif /* TPM_DATA_PREPARE_H */
