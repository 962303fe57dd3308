/* SPDX-License-Identifier: MIT */
/*
 * adamw.cu: fused AdamW on the locally owned shard: fp32 parameters (the master copy)
 * and fp32 moments, updated in place in one pass (read p, g, m, v; write p, m, v). The
 * arithmetic is the CPU backend's, term by term; bias corrections come from the caller.
 */
#include "common.cuh"

__global__ void adamw_kernel(float *param, const float *grad, float *m, float *v, size_t n,
                             float lr, float beta1, float beta2, float eps, float wd, float bc1,
                             float bc2)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float g  = grad[i];
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        const float mh = mi / bc1;
        const float vh = vi / bc2;
        const float p  = param[i];

        m[i]     = mi;
        v[i]     = vi;
        param[i] = p - lr * (mh / (sqrtf(vh) + eps) + wd * p);
    }
}

extern "C" tpm_status_t tpm_cuda_adamw(float *param, const float *grad, float *m, float *v,
                                       size_t n, float lr, float beta1, float beta2, float eps,
                                       float wd, float bc1, float bc2, void *stream)
{
    if (n == 0) {
        return TPM_OK;
    }
    adamw_kernel<<<tpm_ew_blocks(n), TPM_EW_THREADS, 0, (cudaStream_t)stream>>>(
        param, grad, m, v, n, lr, beta1, beta2, eps, wd, bc1, bc2);
    return TPM_LAUNCH_CHECK("adamw_kernel");
}
