/* SPDX-License-Identifier: MIT */
/*
 * gelu.cu: GELU, tanh approximation (GPT-2), forward and backward. Same formulation as the
 * CPU backend: gelu(x) = x * s with s = 1 / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3)
 * (1 + tanh(u) = 2 sigmoid(2u): one exp, no cancellation). expf is the accurate one (no fast
 * math), so the only difference from the CPU is its ~1 ulp exp and FMA contraction.
 */
#include "common.cuh"

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_A 0.044715f

__global__ void gelu_fwd_kernel(float *out, const float *inp, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float x = inp[i];
        const float u = GELU_K * (x + GELU_A * x * x * x);

        out[i] = x / (1.0f + expf(-2.0f * u));
    }
}

__global__ void gelu_bwd_kernel(float *dinp, const float *inp, const float *dout, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float x  = inp[i];
        const float x2 = x * x;
        const float u  = GELU_K * (x + GELU_A * x2 * x);
        const float du = GELU_K * (1.0f + 3.0f * GELU_A * x2);
        const float s  = 1.0f / (1.0f + expf(-2.0f * u));

        dinp[i] += dout[i] * (s + 2.0f * x * s * (1.0f - s) * du);
    }
}

extern "C" tpm_status_t tpm_cuda_gelu_fwd(float *out, const float *inp, size_t n, void *stream)
{
    if (n == 0) {
        return TPM_OK;
    }
    gelu_fwd_kernel<<<tpm_ew_blocks(n), TPM_EW_THREADS, 0, (cudaStream_t)stream>>>(out, inp, n);
    return TPM_LAUNCH_CHECK("gelu_fwd_kernel");
}

extern "C" tpm_status_t tpm_cuda_gelu_bwd(float *dinp, const float *inp, const float *dout,
                                          size_t n, void *stream)
{
    if (n == 0) {
        return TPM_OK;
    }
    gelu_bwd_kernel<<<tpm_ew_blocks(n), TPM_EW_THREADS, 0, (cudaStream_t)stream>>>(dinp, inp, dout,
                                                                                   n);
    return TPM_LAUNCH_CHECK("gelu_bwd_kernel");
}
