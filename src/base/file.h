/* SPDX-License-Identifier: MIT */
/*
 * file.h: durable file replacement. Every file tpmpi publishes (tokenizer, token shards, the
 * prepared data folder, the checkpoint directory's "latest" pointer, llm.c exports, HDF5
 * checkpoints) is written under a temporary name, flushed to the device (fsync), renamed over
 * the final name, and then the directory holding it is fsync'ed, so that after a crash or a
 * power loss a reader finds either the old complete file or the new complete one, never a
 * torn one. Plain POSIX, no MPI: callers on several ranks agree on the results themselves.
 */
#ifndef TPM_BASE_FILE_H
#define TPM_BASE_FILE_H

#include <stdio.h>

#include "base/status.h"

/** fsync the file @p path (opened read-only). TPM_ERR_IO with a message on failure. */
tpm_status_t tpm_file_sync(const char *path);

/** fsync the directory @p dir, so that renames and creations inside it are durable. */
tpm_status_t tpm_dir_sync(const char *dir);

/**
 * rename(@p tmp, @p path), then fsync the directory of @p path. @p tmp must already be
 * durable (tpm_file_sync, or a directory whose files are). On a failed rename @p tmp is left
 * in place (the caller owns it) and @p path is untouched.
 */
tpm_status_t tpm_file_publish(const char *tmp, const char *path);

/**
 * Finish a file written through @p f under the name @p tmp and publish it as @p path:
 * fflush, fsync, fclose (each checked), tpm_file_publish. Takes ownership of @p f (always
 * closed). @p write_status is the caller's own status of the writes: when it is not TPM_OK
 * nothing is published. On any failure @p tmp is deleted and @p path is untouched; the
 * result is the first failure.
 */
tpm_status_t tpm_file_commit(FILE *f, const char *tmp, const char *path, tpm_status_t write_status);

/**
 * "@p path.tmp" into @p buf (TPM_ERR_INVALID_ARG with a message when it does not fit), then
 * fopen it for writing ("wb"). On success *f_p is the stream to hand to tpm_file_commit.
 */
tpm_status_t tpm_file_create_tmp(const char *path, char *buf, size_t cap, FILE **f_p);

#endif /* TPM_BASE_FILE_H */
