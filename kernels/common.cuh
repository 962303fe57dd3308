/* SPDX-License-Identifier: MIT */
/*
 * common.cuh: device helpers shared by the kernels/ .cu files: the launch check, warp and
 * block reductions with a fixed combination order (so results do not depend on scheduling),
 * and the deterministic column sum (partial sums per fixed row chunk, then the chunks in
 * order) used for bias, LayerNorm weight and similar gradients instead of atomics.
 * Included only by .cu files; the C side sees kernels.h.
 */
#ifndef TPM_KERNELS_COMMON_CUH
#define TPM_KERNELS_COMMON_CUH

#include <cuda_runtime.h>
#include <float.h>
#include <stdint.h>

#include "kernels.h"

#define TPM_WARP      32
#define TPM_FULL_MASK 0xffffffffu

/*
 * Check the launch that just happened (bad configuration, missing kernel image for this
 * GPU). Asynchronous faults inside the kernel surface at the next synchronising call.
 */
#define TPM_LAUNCH_CHECK(_name) tpm_cuda_status((int)cudaGetLastError(), _name, __FILE__, __LINE__)

/* Threads per block of the elementwise kernels, and the grid cap of their grid-stride loops. */
#define TPM_EW_THREADS    256
#define TPM_EW_MAX_BLOCKS 65535u

static inline unsigned tpm_ew_blocks(size_t n)
{
    size_t b = TPM_CEIL_DIV(n, (size_t)TPM_EW_THREADS);

    return b < TPM_EW_MAX_BLOCKS ? (unsigned)b : TPM_EW_MAX_BLOCKS;
}

/* butterfly reductions: every lane ends with the same value, combined in the same order */
/* bf16 bits of f, round to nearest even, NaN kept quiet (tpm_bf16_rne in base/bf16.h) */
__device__ __forceinline__ uint16_t dev_bf16_rne(float f)
{
    uint32_t u = __float_as_uint(f);

    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((u >> 16) | 0x0040u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* the fp32 value of bf16 bits h (exact) */
__device__ __forceinline__ float dev_bf16_to_float(uint16_t h)
{
    return __uint_as_float((uint32_t)h << 16);
}

__device__ __forceinline__ float tpm_warp_sum(float v)
{
    for (int off = TPM_WARP / 2; off > 0; off /= 2) {
        v += __shfl_xor_sync(TPM_FULL_MASK, v, off);
    }
    return v;
}

__device__ __forceinline__ double tpm_warp_sum_d(double v)
{
    for (int off = TPM_WARP / 2; off > 0; off /= 2) {
        v += __shfl_xor_sync(TPM_FULL_MASK, v, off);
    }
    return v;
}

__device__ __forceinline__ float tpm_warp_max(float v)
{
    for (int off = TPM_WARP / 2; off > 0; off /= 2) {
        v = fmaxf(v, __shfl_xor_sync(TPM_FULL_MASK, v, off));
    }
    return v;
}

/*
 * Block-wide sum / max for blockDim.x a multiple of 32 (<= 1024); every thread gets the
 * result. @p sh is shared scratch of 32 elements. Ends with a barrier, so all reads the
 * threads did before the call are complete when it returns.
 */
template <typename F> __device__ __forceinline__ F tpm_block_sum(F v, F *sh)
{
    const int lane = threadIdx.x % TPM_WARP, warp = threadIdx.x / TPM_WARP;
    const int nw = blockDim.x / TPM_WARP;

    for (int off = TPM_WARP / 2; off > 0; off /= 2) {
        v += __shfl_xor_sync(TPM_FULL_MASK, v, off);
    }
    __syncthreads(); /* sh may still be read by a previous call */
    if (lane == 0) {
        sh[warp] = v;
    }
    __syncthreads();
    v = lane < nw ? sh[lane] : (F)0;
    for (int off = TPM_WARP / 2; off > 0; off /= 2) {
        v += __shfl_xor_sync(TPM_FULL_MASK, v, off);
    }
    return v;
}

__device__ __forceinline__ float tpm_block_max(float v, float *sh)
{
    const int lane = threadIdx.x % TPM_WARP, warp = threadIdx.x / TPM_WARP;
    const int nw = blockDim.x / TPM_WARP;

    v = tpm_warp_max(v);
    __syncthreads();
    if (lane == 0) {
        sh[warp] = v;
    }
    __syncthreads();
    v = lane < nw ? sh[lane] : -INFINITY;
    return tpm_warp_max(v);
}

/* ---- deterministic column sums ---------------------------------------------------------- */

/* Row chunks of a column sum: depends on N only, so the summation order is fixed. */
#define TPM_COLSUM_ROWS   64  /* rows per chunk (at least) */
#define TPM_COLSUM_CHUNKS 256 /* chunks at most */
#define TPM_COLSUM_TX     32  /* columns per block */
#define TPM_COLSUM_TY     8   /* row lanes per block */

static inline int tpm_colsum_nchunks(int N)
{
    int n = TPM_CEIL_DIV(N, TPM_COLSUM_ROWS);

    return n < TPM_COLSUM_CHUNKS ? (n > 0 ? n : 1) : TPM_COLSUM_CHUNKS;
}

/*
 * Partial column sums of NOUT values per (row, column) given by @p f (a functor with
 * __device__ void operator()(int row, int col, float out[NOUT])): partial[k][chunk][col].
 * Grid (ceil(C / 32), nchunks), block (32, 8). Within a chunk thread (x, y) adds rows
 * y, y + 8, ... in order, then the 8 row lanes are added in order: fixed for given N, C.
 */
template <int NOUT, typename Fn>
__global__ void tpm_colsum_partial_kernel(float *partial, int N, int C, int nchunks, Fn f)
{
    __shared__ float sh[NOUT][TPM_COLSUM_TY][TPM_COLSUM_TX];
    const int        col   = blockIdx.x * TPM_COLSUM_TX + threadIdx.x;
    const int        chunk = blockIdx.y;
    const int        rows  = TPM_CEIL_DIV(N, nchunks);
    const int        r0    = chunk * rows;
    const int        r1    = min(N, r0 + rows);
    float            acc[NOUT];

    for (int k = 0; k < NOUT; k++) {
        acc[k] = 0.0f;
    }
    if (col < C) {
        for (int r = r0 + (int)threadIdx.y; r < r1; r += TPM_COLSUM_TY) {
            float v[NOUT];
            f(r, col, v);
            for (int k = 0; k < NOUT; k++) {
                acc[k] += v[k];
            }
        }
    }
    for (int k = 0; k < NOUT; k++) {
        sh[k][threadIdx.y][threadIdx.x] = acc[k];
    }
    __syncthreads();
    if (threadIdx.y == 0 && col < C) {
        for (int k = 0; k < NOUT; k++) {
            float s = 0.0f;
            for (int y = 0; y < TPM_COLSUM_TY; y++) {
                s += sh[k][y][threadIdx.x];
            }
            partial[((size_t)k * nchunks + chunk) * C + col] = s;
        }
    }
}

/* dst[col] += sum over chunks, in chunk order, of partial[chunk][col] (a template only so
 * that translation units that do not use it do not get an unused static kernel) */
template <int UNUSED>
__global__ void tpm_colsum_finish_kernel(float *dst, const float *partial, int C, int nchunks)
{
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    float     s   = 0.0f;

    if (col >= C) {
        return;
    }
    for (int ch = 0; ch < nchunks; ch++) {
        s += partial[(size_t)ch * C + col];
    }
    dst[col] += s;
}

/*
 * Run a column sum of NOUT outputs: dst[k] (C each, NULL to skip) += sum over rows of f.
 * @p scratch holds NOUT * tpm_cuda_colsum_scratch_floats(N, C) floats.
 */
template <int NOUT, typename Fn>
static tpm_status_t tpm_colsum_run(float *const dst[NOUT], int N, int C, Fn f, float *scratch,
                                   cudaStream_t st, const char *name)
{
    const int nchunks = tpm_colsum_nchunks(N);
    dim3      grid(TPM_CEIL_DIV(C, TPM_COLSUM_TX), nchunks), block(TPM_COLSUM_TX, TPM_COLSUM_TY);

    if (N <= 0 || C <= 0) {
        return TPM_OK;
    }
    tpm_colsum_partial_kernel<NOUT><<<grid, block, 0, st>>>(scratch, N, C, nchunks, f);
    TPM_CHECK(TPM_LAUNCH_CHECK(name));
    for (int k = 0; k < NOUT; k++) {
        if (dst[k] == NULL) {
            continue;
        }
        tpm_colsum_finish_kernel<0><<<TPM_CEIL_DIV(C, 256), 256, 0, st>>>(
            dst[k], scratch + (size_t)k * nchunks * C, C, nchunks);
        TPM_CHECK(TPM_LAUNCH_CHECK(name));
    }
    return TPM_OK;
}

#endif /* TPM_KERNELS_COMMON_CUH */
