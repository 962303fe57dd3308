/* SPDX-License-Identifier: MIT */
/*
 * twobit.cu: the 2-bit gradient codec on the device, producing the same bytes, residuals
 * and decoded sums as the CPU reference src/backend/backend_twobit.c for every input (the rules
 * are in src/backend/backend_twobit.h).
 *
 * Bit-identity needs the reference's exact operations: every fp32 operation is written
 * with an explicit round-to-nearest intrinsic (__fadd_rn, __fmul_rn, ...), which nvcc
 * never contracts into an FMA; no fast math, no flush to zero (nvcc defaults); and NaN
 * results follow x86's rules instead of CUDA's canonical NaN (add_x86() and friends), so
 * that NaN gradients give the same residual and scale bits. The scale of a block is the
 * reference's 32-lane sum, which is a warp's shuffle-down reduction (encode_scale_kernel);
 * the codes and residuals are independent per value and written one code byte (4 values)
 * per thread (encode_codes_kernel).
 */
#include "common.cuh"

extern "C" {
#include "backend/backend_twobit.h"
}

#define TWOBIT_THREADS 256

/* ---- the reference's scalar helpers, for the device ---------------------------------------- */

__device__ __forceinline__ uint16_t dev_bf16_up(float f)
{
    const uint32_t u = __float_as_uint(f);

    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((u >> 16) | 0x0040u);
    }
    return (uint16_t)((u >> 16) + ((u & 0xffffu) != 0));
}

/*
 * |x| by clearing the sign bit, as x86's fabsf (andps) does: a NaN keeps its payload. PTX
 * leaves the NaN result of abs.f32 unspecified, and the scale's bits depend on it.
 */
__device__ __forceinline__ float abs_bits(float x)
{
    return __uint_as_float(__float_as_uint(x) & 0x7fffffffu);
}

/* src/base/rng.c, tpm_rng_u64 */
__device__ __forceinline__ uint64_t dev_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

__device__ __forceinline__ uint64_t dev_rng_u64(uint64_t seed, uint64_t stream, uint64_t index)
{
    uint64_t k = dev_mix64(seed + 0x9e3779b97f4a7c15ULL);

    k = dev_mix64(k ^ (stream * 0xd1b54a32d192ed03ULL + 0x632be59bd9b4e019ULL));
    return dev_mix64(k ^ (index * 0x9e3779b97f4a7c15ULL + 0x2545f4914f6cdd1dULL));
}

__device__ __forceinline__ float residual_get(int mode, const void *r, size_t i)
{
    if (mode == TPM_TWOBIT_EF_FP32) {
        return ((const float *)r)[i];
    }
    return dev_bf16_to_float(((const uint16_t *)r)[i]);
}

/*
 * x86 NaN results. CUDA's float arithmetic returns the canonical NaN 0x7fffffff, x86 SSE/AVX
 * (the reference's machine) returns the first NaN operand, quieted, else the second, else
 * the "default NaN" 0xffc00000 (inf - inf, 0 * inf). NaN gradients must produce the same
 * residual and scale bits as the reference, so every stored operation goes through these.
 */
__device__ __forceinline__ float x86_nan(float a, float b)
{
    if (isnan(a)) {
        return __uint_as_float(__float_as_uint(a) | 0x00400000u);
    }
    if (isnan(b)) {
        return __uint_as_float(__float_as_uint(b) | 0x00400000u);
    }
    return __uint_as_float(0xffc00000u);
}

__device__ __forceinline__ float add_x86(float a, float b)
{
    const float r = __fadd_rn(a, b);
    return isnan(r) ? x86_nan(a, b) : r;
}

__device__ __forceinline__ float sub_x86(float a, float b)
{
    const float r = __fsub_rn(a, b);
    return isnan(r) ? x86_nan(a, b) : r;
}

__device__ __forceinline__ float mul_x86(float a, float b)
{
    const float r = __fmul_rn(a, b);
    return isnan(r) ? x86_nan(a, b) : r;
}

__device__ __forceinline__ float div_x86(float a, float b)
{
    const float r = __fdiv_rn(a, b);
    return isnan(r) ? x86_nan(a, b) : r;
}

/* x = g + r, the same fp32 add every time it is formed */
__device__ __forceinline__ float form_x(int mode, const float *g, const void *residual, size_t i)
{
    return add_x86(g[i], residual_get(mode, residual, i));
}

/* ---- kernels ------------------------------------------------------------------------------- */

#define TWOBIT_WARPS 8 /* blocks of values per thread block in the scale kernel */

/*
 * One warp per block of values: the scale, little-endian bf16, written into the chunk.
 * Error feedback: the reference's 32-lane sum of |x| (lane l adds values l, l + 32, ... in
 * order, then the lanes fold by halves, lane[l] + lane[l + w] for w = 16 .. 1): exactly a
 * shuffle-down reduction. Stochastic: the reference's sequential max with its NaN rule, by
 * lane 0 (no arithmetic, order only).
 */
__global__ void encode_scale_kernel(int mode, int B, const float *g, size_t n, const void *residual,
                                    size_t nblk, uint8_t *chunk)
{
    const size_t b    = (size_t)blockIdx.x * TWOBIT_WARPS + threadIdx.x / TPM_WARP;
    const int    lane = threadIdx.x % TPM_WARP;
    size_t       i0, m;
    uint16_t     sh;

    if (b >= nblk) {
        return;
    }
    i0 = b * (size_t)B;
    m  = n - i0 < (size_t)B ? n - i0 : (size_t)B;
    if (mode == TPM_TWOBIT_STOCHASTIC) {
        float mx = 0.0f;
        if (lane != 0) {
            return;
        }
        for (size_t i = 0; i < m; i++) {
            const float a = abs_bits(g[i0 + i]);
            if (a > mx || a != a) { /* the reference's NaN rule: the last NaN sticks */
                mx = a;
            }
        }
        sh = dev_bf16_up(mx);
    } else {
        float a = 0.0f;
        for (size_t i = (size_t)lane; i < m; i += TPM_WARP) {
            a = add_x86(a, abs_bits(form_x(mode, g, residual, i0 + i)));
        }
        for (int w = TPM_WARP / 2; w >= 1; w /= 2) {
            a = add_x86(a, __shfl_down_sync(TPM_FULL_MASK, a, w));
        }
        if (lane != 0) {
            return;
        }
        sh = dev_bf16_rne(div_x86(a, (float)B));
    }
    chunk[2 * b]     = (uint8_t)(sh & 0xffu);
    chunk[2 * b + 1] = (uint8_t)(sh >> 8);
}

/*
 * One thread per code byte (4 values); padding values of the last block encode as 0. The
 * reference's branch-free rule: on = |x| > s/2 (ties give 0), code = on * (1 + (x < 0)),
 * c = on * (x < 0 ? -1 : 1) (a signed zero when off), new residual x - c * s.
 */
__global__ void encode_codes_kernel(int mode, int B, const float *g, size_t n, void *residual,
                                    uint64_t key, uint64_t stream, uint64_t index0, size_t nbytes,
                                    const uint8_t *chunk, uint8_t *codes)
{
    const size_t cb = (size_t)B / 4;

    for (size_t q = blockIdx.x * (size_t)blockDim.x + threadIdx.x; q < nbytes;
         q += (size_t)gridDim.x * blockDim.x) {
        const size_t   b    = q / cb;
        const uint16_t sh   = (uint16_t)(chunk[2 * b] | (chunk[2 * b + 1] << 8));
        const float    s    = dev_bf16_to_float(sh);
        const float    t    = __fmul_rn(0.5f, s); /* only compared: its NaN bits do not matter */
        unsigned       byte = 0;

        for (int k = 0; k < 4; k++) {
            const size_t i = b * (size_t)B + (q % cb) * 4 + (size_t)k;
            unsigned     on, neg;

            if (i >= n) {
                break;
            }
            if (mode == TPM_TWOBIT_STOCHASTIC) {
                const double r = (double)(dev_rng_u64(key, stream, index0 + i) >> 40);
                const float  x = g[i];
                on             = __dmul_rn(r, (double)s) < __dmul_rn((double)fabsf(x), 16777216.0);
                neg            = x < 0.0f;
            } else {
                const float x = form_x(mode, g, residual, i);
                float       c, e;
                on  = fabsf(x) > t;
                neg = x < 0.0f;
                c   = __fmul_rn((float)on, neg ? -1.0f : 1.0f); /* exact: 0, -0, 1 or -1 */
                e   = sub_x86(x, mul_x86(c, s));
                if (mode == TPM_TWOBIT_EF_FP32) {
                    ((float *)residual)[i] = e;
                } else {
                    ((uint16_t *)residual)[i] = dev_bf16_rne(e);
                }
            }
            byte |= (on * (1u + neg)) << (2 * k);
        }
        codes[q] = (uint8_t)byte;
    }
}

__global__ void decode_add_kernel(int B, const uint8_t *chunk, size_t n, size_t nblk, float *acc)
{
    const size_t   cb    = (size_t)B / 4;
    const uint8_t *codes = chunk + 2 * nblk;

    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t   b    = i / (size_t)B;
        const size_t   j    = i % (size_t)B;
        const float    s    = dev_bf16_to_float((uint16_t)(chunk[2 * b] | (chunk[2 * b + 1] << 8)));
        const unsigned code = (codes[b * cb + j / 4] >> (2 * (j % 4))) & 3u;
        /* the reference's table: 0b11 is never written and reads as 0 */
        const float c = code == TPM_TWOBIT_CODE_POS   ? 1.0f
                        : code == TPM_TWOBIT_CODE_NEG ? -1.0f
                                                      : 0.0f;

        acc[i] = add_x86(acc[i], mul_x86(c, s));
    }
}

/* ---- launchers ----------------------------------------------------------------------------- */

extern "C" tpm_status_t tpm_cuda_twobit_encode(int mode, int B, const float *g, size_t n,
                                               void *residual, uint64_t key, uint64_t rng_stream,
                                               uint64_t index0, uint8_t *chunk, void *stream)
{
    cudaStream_t st = (cudaStream_t)stream;
    size_t       nblk, used, total, nbytes;

    if (!tpm_twobit_block_ok(B) || (mode != TPM_TWOBIT_STOCHASTIC && residual == NULL && n > 0)) {
        tpm_log_error("cuda twobit: block size %d or residual %p invalid for mode %d", B, residual,
                      mode);
        return TPM_ERR_INVALID_ARG;
    }
    nblk   = tpm_twobit_nblocks(n, B);
    nbytes = nblk * ((size_t)B / 4);
    used   = nblk * 2 + nbytes;
    total  = tpm_twobit_chunk_bytes(n, B);
    if (total > used) {
        TPM_CHECK(TPM_CUDA_CALL(cudaMemsetAsync(chunk + used, 0, total - used, st)));
    }
    if (n == 0) {
        return TPM_OK;
    }
    encode_scale_kernel<<<(unsigned)TPM_CEIL_DIV(nblk, (size_t)TWOBIT_WARPS),
                          TWOBIT_WARPS * TPM_WARP, 0, st>>>(mode, B, g, n, residual, nblk, chunk);
    TPM_CHECK(TPM_LAUNCH_CHECK("encode_scale_kernel"));
    encode_codes_kernel<<<tpm_ew_blocks(nbytes), TWOBIT_THREADS, 0, st>>>(
        mode, B, g, n, residual, key, rng_stream, index0, nbytes, chunk, chunk + 2 * nblk);
    return TPM_LAUNCH_CHECK("encode_codes_kernel");
}

extern "C" tpm_status_t tpm_cuda_twobit_decode_add(int B, const uint8_t *chunk, size_t n,
                                                   float *acc, void *stream)
{
    if (!tpm_twobit_block_ok(B)) {
        tpm_log_error("cuda twobit: block size %d is not a positive multiple of 4", B);
        return TPM_ERR_INVALID_ARG;
    }
    if (n == 0) {
        return TPM_OK;
    }
    decode_add_kernel<<<tpm_ew_blocks(n), TWOBIT_THREADS, 0, (cudaStream_t)stream>>>(
        B, chunk, n, tpm_twobit_nblocks(n, B), acc);
    return TPM_LAUNCH_CHECK("decode_add_kernel");
}
