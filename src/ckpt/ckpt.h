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
#include "core/tensor_io.h"
#include "zero3/zero3.h"

#define TPM_CKPT_FORMAT  "tpmpi-checkpoint"
#define TPM_CKPT_VERSION 1

/** Training state stored beside the tensors. */
typedef struct tpm_ckpt_meta {
    tpm_model_config_t model;
    int64_t            step;        /* optimizer steps done */
    int64_t            tokens_seen; /* training tokens consumed */
    uint64_t           seed;       /* data order and init seed (counter RNG: the whole RNG state) */
    int                world_size; /* ranks that wrote the file (informational) */
    const char        *config_json; /* resolved configuration (borrowed on save, owned on load) */
    const void        *tokenizer;   /* serialized tokenizer (borrowed on save, owned on load) */
    size_t             tokenizer_len;
    /* the run that wrote the file (resume compares them; 0 when unknown) */
    int    batch;      /* micro-batch per rank */
    int    grad_accum; /* micro-batches per rank per step */
    int    seq_len;    /* training sequence length T */
    double lr;         /* learning rate of the last step taken (schedule position = step) */
    int    data_order; /* data order of the run (docs/DATA.md section 4); 1 when the file has
                          no data_order attribute (written before it existed) */
} tpm_ckpt_meta_t;

/** Free what tpm_ckpt_load allocated inside @p meta (config_json, tokenizer); no-op on NULL. */
void tpm_ckpt_meta_cleanup(tpm_ckpt_meta_t *meta);

/**
 * Write @p path from the ZeRO-3 shards of @p z: /model/<name> from the parameter
 * shard, /optim/m/<name> and /optim/v/<name> from the AdamW moments, plus @p meta
 * and per-dataset checksums. Atomic: checks that the file system has room, writes
 * "<path>.tmp", fsyncs it, reads it back and verifies every dataset, and only then renames it
 * (docs/CHECKPOINT.md, section 2). A full disk or a lost write is returned on every rank
 * (TPM_ERR_IO; the previous checkpoint is untouched and training may go on); an I/O error
 * that HDF5 reports inside its collective write stops the job (tpm_fatal), because HDF5 1.10
 * cannot close the file on the other ranks after it.
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

/**
 * The parameters (/model) of open checkpoint @p ck as a whole tensor source
 * (core/tensor_io.h), for its own model (tpm_ckpt_meta(ck)->model). Its reads are
 * tpm_ckpt_read_rows: collective, so transfer with a communicator. @p ck is borrowed.
 */
tpm_tensor_io_t tpm_ckpt_tensor_io(tpm_ckpt_t *ck);
void         tpm_ckpt_close(tpm_ckpt_t *ck); /* collective; no-op on NULL */

/** Resolve a --ckpt argument: a file, or a directory (its "latest" pointer). */
tpm_status_t tpm_ckpt_resolve(const char *path_or_dir, char *buf, size_t cap);

/* ---- checkpoint directories (ckpt_dir.c; plain POSIX, not collective) --------------------- */

/** "DIR/ckpt_<step, 8 digits>.h5" into @p buf; TPM_ERR_OVERFLOW if it does not fit. */
tpm_status_t tpm_ckpt_path(const char *dir, int64_t step, char *buf, size_t cap);

/**
 * The newest complete checkpoint of @p dir: the file "latest" names, or (no or a dangling
 * pointer) the highest-step ckpt_*.h5. Temporaries (*.tmp) never count. TPM_ERR_NOT_FOUND
 * (no message: the caller knows why it asked) when there is none.
 */
tpm_status_t tpm_ckpt_find_latest(const char *dir, char *buf, size_t cap);

/**
 * After @p path (inside @p dir) is complete: point DIR/latest at it atomically (temporary
 * file, fsync, rename, fsync of the directory), then delete all but the newest @p keep
 * checkpoints and any stale temporaries. Call on one rank only, between collectives.
 */
tpm_status_t tpm_ckpt_commit(const char *dir, const char *path, int keep);

/**
 * Agree on a local status so that every rank returns the same one: TPM_OK when all passed,
 * else the lowest failing code (tpm_comm_agree would give the others TPM_ERR_REMOTE, and a
 * different exit status). For local steps only (no HDF5 state involved). Collective.
 */
tpm_status_t tpm_ckpt_agree(tpm_comm_t *comm, tpm_status_t local);

/* ---- integrity ----------------------------------------------------------------------------- */

/**
 * Hash of one row (docs/CHECKPOINT.md, "Checksums"): 4-lane multiply-rotate over the row's
 * little-endian 32-bit words (a partial last word is zero-padded), keyed by the row index.
 * A dataset's checksum is the sum (mod 2^64) of the hashes of its rows, so it can be
 * computed from any split of the rows over ranks and combined with one all-reduce.
 */
uint64_t tpm_ckpt_row_hash(uint64_t row, const void *data, size_t nbytes);

#endif /* TPM_CKPT_H */
