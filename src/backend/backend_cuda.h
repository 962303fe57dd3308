/* SPDX-License-Identifier: MIT */
/*
 * backend_cuda.h: the CUDA backend beyond its op table, and the process-wide CUDA state
 * that the backend and the NCCL communicator share: the selected device and the compute
 * stream. No CUDA type appears here (streams are void *), so backend.c includes it in a
 * plain C build step.
 *
 * One device per process. Whoever comes first selects it: the NCCL communicator (from its
 * node-local MPI rank) or the backend (from the launcher's local-rank variable, else 0).
 * Every op of the backend runs on the one compute stream; the communicator orders its own
 * stream against it with events, so collectives and kernels overlap without racing.
 */
#ifndef TPM_BACKEND_CUDA_H
#define TPM_BACKEND_CUDA_H

#include "backend/backend.h"
#include "base/status.h"

/** The CUDA backend (cuBLAS + kernels/ .cu), for tpm_backend_create("cuda", ...). */
extern const tpm_backend_ops_t tpm_backend_cuda_ops;

/**
 * Create the CUDA backend's private state: select the device (see above), create the
 * cuBLAS handle, the device error word and the reduction buffers. Without a usable device
 * it logs "no CUDA device: <CUDA error string>" and returns TPM_ERR_CUDA. The matmul
 * precision comes from TPMPI_CUDA_MATMUL (fp32 | tf32 | bf16, default tf32; kernels.h).
 * Caller owns *priv_p; free it with tpm_backend_cuda_priv_destroy().
 */
tpm_status_t tpm_backend_cuda_priv_create(void **priv_p);
/** Set the matmul precision ("fp32", "tf32", "bf16") of the backend state @p priv. */
tpm_status_t tpm_backend_cuda_set_math(void *priv, const char *mode);
/** Waits for the stream, then frees everything. No-op on NULL. */
void tpm_backend_cuda_priv_destroy(void *priv);

/**
 * Number of CUDA devices in *n_p (>= 1) or, when there is none or no driver, log
 * "no CUDA device: <cudaGetErrorString>" and return TPM_ERR_CUDA.
 */
tpm_status_t tpm_cuda_device_count(int *n_p);

/**
 * Take a reference on the process's CUDA state: on the first reference select @p device
 * (>= 0), or with -1 the launcher's node-local rank (OMPI_COMM_WORLD_LOCAL_RANK,
 * SLURM_LOCALID, MPI_LOCALRANKID, PMI_LOCAL_RANK) modulo the device count, else device 0;
 * then create the compute stream. Later references get the same device and stream; asking
 * for another device then is an error. *stream_p (a cudaStream_t) is borrowed until the
 * matching tpm_cuda_proc_release(). Not thread-safe: one host thread drives CUDA.
 */
tpm_status_t tpm_cuda_proc_acquire(int device, void **stream_p);
/** Drop a reference; the last one waits for the stream and destroys it. */
void tpm_cuda_proc_release(void);

#endif /* TPM_BACKEND_CUDA_H */
