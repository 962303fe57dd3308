/* SPDX-License-Identifier: MIT */
/*
 * elementwise.cu: add, axpy, scale, the bf16 conversions of the working weights (grid-stride
 * loops, memory bound) and the sum of squares used for the global gradient norm. The sum of squares
 * is deterministic: the input is cut into at most 1024 fixed contiguous blocks (the layout depends
 * on n only), each block sums in double in a fixed tree order, and the host adds the block sums in
 * order, as the CPU backend does with its blocks.
 */
#include "common.cuh"

#define SUMSQ_BLOCK   ((size_t)1 << 14) /* elements per block, at least */
#define SUMSQ_NBLOCK  1024
#define SUMSQ_THREADS 256

__global__ void add_kernel(float *out, const float *a, const float *b, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        out[i] = a[i] + b[i];
    }
}

__global__ void axpy_kernel(float *y, float alpha, const float *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        y[i] += alpha * x[i];
    }
}

__global__ void scale_kernel(float *x, float alpha, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        x[i] *= alpha;
    }
}

/* bf16 working weights: round to nearest even (twobit's rule), and back (exact) */
__global__ void to_bf16_kernel(uint16_t *dst, const float *src, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        dst[i] = dev_bf16_rne(src[i]);
    }
}

__global__ void from_bf16_kernel(float *dst, const uint16_t *src, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        dst[i] = dev_bf16_to_float(src[i]);
    }
}

/* block k sums x^2 over [k*bs, min(n, (k+1)*bs)) in double */
__global__ void sumsq_kernel(const float *x, size_t n, size_t bs, double *partial)
{
    __shared__ double sh[TPM_WARP];
    const size_t      i0  = blockIdx.x * bs;
    const size_t      i1  = i0 + bs < n ? i0 + bs : n;
    double            acc = 0.0;

    for (size_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        const double v = (double)x[i];
        acc += v * v;
    }
    acc = tpm_block_sum<double>(acc, sh);
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = acc;
    }
}

extern "C" tpm_status_t tpm_cuda_add(float *out, const float *a, const float *b, size_t n,
                                     void *stream)
{
    if (n == 0) {
        return TPM_OK;
    }
    add_kernel<<<tpm_ew_blocks(n), TPM_EW_THREADS, 0, (cudaStream_t)stream>>>(out, a, b, n);
    return TPM_LAUNCH_CHECK("add_kernel");
}

extern "C" tpm_status_t tpm_cuda_axpy(float *y, float alpha, const float *x, size_t n, void *stream)
{
    if (n == 0) {
        return TPM_OK;
    }
    axpy_kernel<<<tpm_ew_blocks(n), TPM_EW_THREADS, 0, (cudaStream_t)stream>>>(y, alpha, x, n);
    return TPM_LAUNCH_CHECK("axpy_kernel");
}

extern "C" tpm_status_t tpm_cuda_scale(float *x, float alpha, size_t n, void *stream)
{
    if (n == 0) {
        return TPM_OK;
    }
    scale_kernel<<<tpm_ew_blocks(n), TPM_EW_THREADS, 0, (cudaStream_t)stream>>>(x, alpha, n);
    return TPM_LAUNCH_CHECK("scale_kernel");
}

extern "C" tpm_status_t tpm_cuda_to_bf16(uint16_t *dst, const float *src, size_t n, void *stream)
{
    if (n == 0) {
        return TPM_OK;
    }
    to_bf16_kernel<<<tpm_ew_blocks(n), TPM_EW_THREADS, 0, (cudaStream_t)stream>>>(dst, src, n);
    return TPM_LAUNCH_CHECK("to_bf16_kernel");
}

extern "C" tpm_status_t tpm_cuda_from_bf16(float *dst, const uint16_t *src, size_t n, void *stream)
{
    if (n == 0) {
        return TPM_OK;
    }
    from_bf16_kernel<<<tpm_ew_blocks(n), TPM_EW_THREADS, 0, (cudaStream_t)stream>>>(dst, src, n);
    return TPM_LAUNCH_CHECK("from_bf16_kernel");
}

extern "C" size_t tpm_cuda_sumsq_nparts(size_t n)
{
    size_t nblk = TPM_CEIL_DIV(n, SUMSQ_BLOCK);

    return nblk < SUMSQ_NBLOCK ? nblk : SUMSQ_NBLOCK;
}

extern "C" tpm_status_t tpm_cuda_sumsq_partial(const float *x, size_t n, double *partial,
                                               void *stream)
{
    size_t nblk = tpm_cuda_sumsq_nparts(n);

    if (n == 0) {
        return TPM_OK;
    }
    sumsq_kernel<<<(unsigned)nblk, SUMSQ_THREADS, 0, (cudaStream_t)stream>>>(
        x, n, TPM_CEIL_DIV(n, nblk), partial);
    return TPM_LAUNCH_CHECK("sumsq_kernel");
}
