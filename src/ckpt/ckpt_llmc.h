/* SPDX-License-Identifier: MIT */
/*
 * ckpt_llmc.h: llm.c model files (fp32, version 3) in and out of tpmpi.
 *
 * llm.c file: 256 int32 header (magic 20240326, version 3, maxT, V, L, NH, C, Vp), then the
 * 16 parameter tensors in llm.c's order: wte (Vp,C), wpe (maxT,C), ln1w (L,C), ln1b (L,C),
 * qkvw (L,3C,C), qkvb (L,3C), attprojw (L,C,C), attprojb (L,C), ln2w, ln2b (L,C),
 * fcw (L,4C,C), fcb (L,4C), fcprojw (L,C,4C), fcprojb (L,C), lnfw (C), lnfb (C). Weights are
 * (out, in) and QKV rows are q of all heads, then k, then v. tpmpi's layout (docs/MODEL.md)
 * groups QKV rows by head and stores attprojw and fcprojw transposed ([in, out]); both pad
 * the vocabulary to a multiple of 128 with zero rows.
 */
#ifndef TPM_CKPT_LLMC_H
#define TPM_CKPT_LLMC_H

#include <stdint.h>

#include "base/status.h"
#include "comm/comm.h"
#include "zero3/zero3.h"

#define TPM_LLMC_MAGIC        20240326
#define TPM_LLMC_VERSION_FP32 3
#define TPM_LLMC_VERSION_BF16 5
#define TPM_LLMC_HEADER_INTS  256
#define TPM_LLMC_N_TENSORS    16

/** llm.c row of tpmpi's head-grouped QKV row @p r (C channels, NH heads); pure. */
int64_t tpm_llmc_qkv_row(int64_t r, int C, int NH);

/**
 * Load the weights of llm.c model file @p path into the parameter shards of @p z (every rank
 * reads only what its rows need) and zero the AdamW moments. The header must match z->cfg
 * (a mismatch names the field); bf16 files, a bad magic or a truncated file are
 * TPM_ERR_FORMAT. Collective over z->comm; every rank returns the same status.
 */
tpm_status_t tpm_ckpt_import_llmc(tpm_zero3_t *z, const char *path);

/**
 * Write checkpoint @p ckpt_path as llm.c model file @p out_path (fp32, version 3). Rank 0
 * reads one tensor at a time and writes "<out_path>.tmp", then renames it. Collective over
 * @p comm (the other ranks take part in the reads with no rows).
 */
tpm_status_t tpm_ckpt_export_llmc(tpm_comm_t *comm, const char *ckpt_path, const char *out_path);

#endif /* TPM_CKPT_LLMC_H */
