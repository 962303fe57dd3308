/* SPDX-License-Identifier: MIT */
/*
 * common.cu: the CUDA error conversion behind TPM_CUDA_CALL and TPM_LAUNCH_CHECK, and the
 * scratch size of the deterministic column sums (common.cuh).
 */
#include "common.cuh"

extern "C" tpm_status_t tpm_cuda_status(int err, const char *call, const char *file, int line)
{
    if (err == (int)cudaSuccess) {
        return TPM_OK;
    }
    /* the error is reported here, once: reset the runtime's last-error state */
    (void)cudaGetLastError();
    /* tpm_log_error() would name this file: report the caller's file and line instead */
    if (TPM_LOG_ERROR <= tpm_log_level_cur) {
        tpm_log_emit(TPM_LOG_ERROR, file, line, "%s failed: %s", call,
                     cudaGetErrorString((cudaError_t)err));
    }
    return TPM_ERR_CUDA;
}

extern "C" size_t tpm_cuda_colsum_scratch_floats(int N, int C)
{
    if (N <= 0 || C <= 0) {
        return 0;
    }
    return (size_t)tpm_colsum_nchunks(N) * (size_t)C;
}
