/* SPDX-License-Identifier: MIT */
/*
 * ckpt.h: checkpoints in one parallel-HDF5 file, written and read collectively
 * through MPI-IO; each rank touches only its own rows (hyperslabs). Tensors are
 * stored as logical tensors with their true shapes, so a file written on N
 * ranks is read on any M ranks (training resume or tensor-parallel serving).
 * Layout and attributes: docs/CHECKPOINT.md.
 *
 * Every function here is collective over the communicator it is given (all
 * ranks call it, in the same order, with the same dataset names); errors are
 * agreed on, so every rank returns the same status.
 */
#ifndef TPM_CKPT_H
#define TPM_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "comm/comm.h"
#include "core/model.h"
#include "zero3/zero3.h"

#define TPM_CKPT_FORMAT  "tpmpi-checkpoint"
#define TPM_CKPT_VERSION 1

/** Training state stored beside the tensors. */
typedef struct tpm_ckpt_meta {
    tpm_model_config_t model;
    int64_t            step;        /* optimizer steps done */
    int64_t            tokens_seen; /* training tokens consumed */
    uint64_t           seed;        /* data order and init seed (counter RNG: the whole RNG state) */
    int                world_size;  /* ranks that wrote the file (informational) */
    const char        *config_json; /* resolved configuration (borrowed on save, owned on load) */
    const void        *tokenizer;   /* serialized tokenizer (borrowed on save, owned on load) */
    size_t             tokenizer_len;
} tpm_ckpt_meta_t;

/** Free what tpm_ckpt_load / tpm_ckpt_read_meta allocated inside @p meta. */
void tpm_ckpt_meta_cleanup(tpm_ckpt_meta_t *meta);

/**
 * Write @p path from the ZeRO-3 shards of @p z: /model/<name> from the parameter
 * shard, /optim/m/<name> and /optim/v/<name> from the AdamW moments, plus @p meta
 * and per-dataset checksums. Atomic: writes "<path>.tmp", fsyncs, then renames.
 */
tpm_status_t tpm_ckpt_save(tpm_zero3_t *z, const char *path, const tpm_ckpt_meta_t *meta);

/**
 * Load @p path into the shards of @p z (any rank count at save time): parameters,
 * and the AdamW moments when @p with_optim (else they are zeroed). Verifies the
 * format version, the checksums and that the model config matches z->cfg; every
 * mismatch is a clear error (TPM_ERR_FORMAT / TPM_ERR_INVALID_ARG) on every rank.
 */
tpm_status_t tpm_ckpt_load(tpm_zero3_t *z, const char *path, int with_optim,
                           tpm_ckpt_meta_t *meta_p);

/* ---- read access for other rank layouts (serving) ---------------------------------------- */

typedef struct tpm_ckpt tpm_ckpt_t;

/** Open @p path read-only; reads and checks the metadata (format, version). */
tpm_status_t tpm_ckpt_open(tpm_comm_t *comm, const char *path, tpm_ckpt_t **ck_p);
/** The metadata read at open (borrowed, valid until tpm_ckpt_close). */
const tpm_ckpt_meta_t *tpm_ckpt_meta(const tpm_ckpt_t *ck);
/**
 * Read rows [row0, row0 + nrows) of dataset @p name ("model/h.3.qkvw", "model/wte", ...)
 * into @p buf (nrows * cols floats; a vector has cols 1). nrows may be 0 on some ranks.
 * Collective: every rank calls it for the same dataset.
 */
tpm_status_t tpm_ckpt_read_rows(tpm_ckpt_t *ck, const char *name, int64_t row0, int64_t nrows,
                                float *buf);
void tpm_ckpt_close(tpm_ckpt_t *ck); /* collective; no-op on NULL */

/** Resolve a --ckpt argument: a file, or a directory (its "latest" pointer). */
tpm_status_t tpm_ckpt_resolve(const char *path_or_dir, char *buf, size_t cap);

#endif /* TPM_CKPT_H */
