/* SPDX-License-Identifier: MIT */
/*
 * backend_cpu.h: the parts of the CPU backend that backend.c and the benchmarks
 * need beyond the op table: its private state (per-thread scratch buffers for
 * attention, grown on first use) and a description of the BLAS library in use.
 */
#ifndef TPM_BACKEND_CPU_H
#define TPM_BACKEND_CPU_H

#include "base/status.h"

/**
 * Create the CPU backend's private state (empty scratch; buffers are grown by the
 * first op that needs them and reused afterwards). Caller owns *priv_p and frees it
 * with tpm_backend_cpu_priv_destroy(). A backend, like a CUDA stream, is used by one
 * thread at a time: the scratch is not protected against concurrent calls.
 */
tpm_status_t tpm_backend_cpu_priv_create(void **priv_p);
/** No-op on NULL. */
void tpm_backend_cpu_priv_destroy(void *priv);

/**
 * "<openblas_get_config()> core=<openblas_get_corename()>", for benchmark logs.
 * Static storage, overwritten by the next call (not thread-safe); never NULL.
 */
const char *tpm_backend_blas_info(void);

#endif /* TPM_BACKEND_CPU_H */
