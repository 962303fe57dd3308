/* SPDX-License-Identifier: MIT */
/*
 * encoder.cu: token + position embedding, forward and backward.
 *
 * The backward pass has no atomics. dwpe: one thread per (t, c) adds the B rows of position
 * t in batch order. dwte: repeated tokens hit the same row, so one block per position bt
 * first checks (a warp ballot over the earlier tokens) whether bt is the first position
 * holding its token; only that block writes the row, adding the rows of every position with
 * the token in position order. Both orders are the CPU backend's, so the results match it
 * bit for bit. The duplicate scan costs O(N^2 / 32) warp steps per warp, a few microseconds
 * at N = B*T = 8192.
 */
#include "common.cuh"

#define ENC_BWD_THREADS 128

__global__ void encoder_fwd_kernel(float *out, const int32_t *tokens, const float *wte,
                                   const float *wpe, size_t N, int T, int C, int *err)
{
    const size_t total = N * (size_t)C;

    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t  bt  = i / (size_t)C;
        const size_t  c   = i % (size_t)C;
        const int32_t tok = tokens[bt];

        if (tok < 0) {
            if (c == 0) {
                atomicOr(err, TPM_CUDA_ERR_TOKEN);
            }
            continue;
        }
        out[i] = wte[(size_t)tok * C + c] + wpe[(bt % (size_t)T) * C + c];
    }
}

/* dwpe[t, c] += sum over b, in order, of dout[b*T + t, c] */
__global__ void encoder_bwd_wpe_kernel(float *dwpe, const float *dout, int B, int T, int C)
{
    const size_t total = (size_t)T * (size_t)C;

    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t t   = i / (size_t)C;
        const size_t c   = i % (size_t)C;
        float        acc = dwpe[i];

        for (int b = 0; b < B; b++) {
            acc += dout[((size_t)b * T + t) * C + c];
        }
        dwpe[i] = acc;
    }
}

/* one block per position bt; every warp scans the tokens itself (no shared state) */
__global__ void encoder_bwd_wte_kernel(float *dwte, const float *dout, const int32_t *tokens, int N,
                                       int C, int *err)
{
    const int     bt   = blockIdx.x;
    const int     lane = threadIdx.x % TPM_WARP;
    const int32_t tok  = tokens[bt];
    float        *row;

    if (tok < 0) {
        if (threadIdx.x == 0) {
            atomicOr(err, TPM_CUDA_ERR_TOKEN);
        }
        return;
    }
    /* an earlier position with the same token owns the row: the result is block-uniform */
    for (int j0 = 0; j0 < bt; j0 += TPM_WARP) {
        const int j = j0 + lane;
        if (__any_sync(TPM_FULL_MASK, j < bt && tokens[j] == tok)) {
            return;
        }
    }
    row = dwte + (size_t)tok * C;
    for (int j0 = bt; j0 < N; j0 += TPM_WARP) {
        const int j    = j0 + lane;
        unsigned  mask = __ballot_sync(TPM_FULL_MASK, j < N && tokens[j] == tok);

        /* matches in ascending position order; each thread owns its columns */
        while (mask != 0) {
            const int    jj = __ffs(mask) - 1;
            const float *d  = dout + (size_t)(j0 + jj) * C;

            mask &= mask - 1;
            for (int c = threadIdx.x; c < C; c += blockDim.x) {
                row[c] += d[c];
            }
        }
    }
}

extern "C" tpm_status_t tpm_cuda_encoder_fwd(float *out, const int32_t *tokens, const float *wte,
                                             const float *wpe, int B, int T, int C, int *err,
                                             void *stream)
{
    const size_t N = (size_t)B * (size_t)T;

    if (N == 0 || C <= 0) {
        return TPM_OK;
    }
    encoder_fwd_kernel<<<tpm_ew_blocks(N * (size_t)C), TPM_EW_THREADS, 0, (cudaStream_t)stream>>>(
        out, tokens, wte, wpe, N, T, C, err);
    return TPM_LAUNCH_CHECK("encoder_fwd_kernel");
}

extern "C" tpm_status_t tpm_cuda_encoder_bwd(float *dwte, float *dwpe, const float *dout,
                                             const int32_t *tokens, int B, int T, int C, int *err,
                                             void *stream)
{
    const size_t N  = (size_t)B * (size_t)T;
    cudaStream_t st = (cudaStream_t)stream;

    if (N == 0 || C <= 0) {
        return TPM_OK;
    }
    if (dwte != NULL) {
        encoder_bwd_wte_kernel<<<(unsigned)N, ENC_BWD_THREADS, 0, st>>>(dwte, dout, tokens, (int)N,
                                                                        C, err);
        TPM_CHECK(TPM_LAUNCH_CHECK("encoder_bwd_wte_kernel"));
    }
    if (dwpe != NULL) {
        encoder_bwd_wpe_kernel<<<tpm_ew_blocks((size_t)T * (size_t)C), TPM_EW_THREADS, 0, st>>>(
            dwpe, dout, B, T, C);
        TPM_CHECK(TPM_LAUNCH_CHECK("encoder_bwd_wpe_kernel"));
    }
    return TPM_OK;
}
