/* SPDX-License-Identifier: MIT */
/*
 * safetensors.h: a reader of Hugging Face safetensors files that trusts nothing in them.
 *
 * Format: an unsigned little-endian 64-bit header length N, N bytes of JSON (an object of
 * tensors {"dtype", "shape", "data_offsets": [begin, end]}, plus an optional
 * "__metadata__" object of strings), then the data; offsets are relative to the end of the
 * header. tpm_st_open checks every entry before anything is read: the header fits the file
 * and is valid JSON, shapes are non-negative and their element count does not overflow, every
 * [begin, end) lies inside the data and holds exactly numel x element size bytes, and no two
 * tensors overlap. Reads convert F32, BF16 and F16 to fp32; other dtypes are named and
 * refused when read. Pure POSIX I/O (pread), no MPI: each rank opens the file and reads
 * only the elements it asks for.
 */
#ifndef TPM_CKPT_SAFETENSORS_H
#define TPM_CKPT_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

#define TPM_ST_MAX_DIM    8
#define TPM_ST_MAX_HEADER (100u << 20) /* the reference implementation's limit, 100 MB */

typedef enum {
    TPM_ST_F32 = 0,
    TPM_ST_BF16,
    TPM_ST_F16,
    TPM_ST_OTHER, /* a valid safetensors dtype tpmpi does not read (its name is kept) */
} tpm_st_dtype_t;

typedef struct tpm_st_tensor {
    char          *name;
    char           dtype_name[8];
    tpm_st_dtype_t dtype;
    int            esize; /* bytes per element */
    int            ndim;
    int64_t        shape[TPM_ST_MAX_DIM];
    int64_t        numel;
    uint64_t       begin, end; /* byte range inside the data section */
} tpm_st_tensor_t;

typedef struct tpm_st_file {
    int              fd;
    char            *path;
    uint64_t         data_off; /* 8 + N */
    uint64_t         size;     /* file size */
    int              n;
    tpm_st_tensor_t *t;
} tpm_st_file_t;

/**
 * Open and validate @p path (see above). TPM_ERR_IO when it cannot be read, TPM_ERR_FORMAT
 * (logged, naming the file, the tensor and the problem) for anything malformed. Caller owns
 * *f_p (tpm_st_close).
 */
tpm_status_t tpm_st_open(const char *path, tpm_st_file_t **f_p);
void         tpm_st_close(tpm_st_file_t *f); /* no-op on NULL */

/** The tensor called @p name; NULL when the file has none. */
const tpm_st_tensor_t *tpm_st_find(const tpm_st_file_t *f, const char *name);

/**
 * Elements [first, first + n) of @p t in row-major order into @p dst as fp32.
 * TPM_ERR_INVALID_ARG for a range outside the tensor, TPM_ERR_UNSUPPORTED for a dtype other
 * than F32, BF16, F16, TPM_ERR_IO for a failed read (all logged).
 */
tpm_status_t tpm_st_read(const tpm_st_file_t *f, const tpm_st_tensor_t *t, int64_t first,
                         int64_t n, float *dst);

#endif /* TPM_CKPT_SAFETENSORS_H */
