/* SPDX-License-Identifier: MIT */
/*
 * layernorm.cu: LayerNorm over the C channels of each of N rows, forward and backward.
 * One warp per row (rows are short: C = 768 is 24 values per lane); the mean and the
 * variance are two passes as on the CPU (the variance of centred values does not cancel),
 * with 1 / sqrtf (not rsqrtf) for the CPU's rounding. dw and db are deterministic column
 * sums (common.cuh), not atomics.
 */
#include "common.cuh"

#define LN_EPS          1e-5f
#define LN_ROWS_PER_BLK 8 /* warps per block */

__global__ void layernorm_fwd_kernel(float *out, float *mean, float *rstd, const float *inp,
                                     const float *w, const float *b, int N, int C)
{
    const int    lane = threadIdx.x % TPM_WARP;
    const int    row  = blockIdx.x * LN_ROWS_PER_BLK + threadIdx.x / TPM_WARP;
    const float *x;
    float       *o;
    float        sum = 0.0f, var = 0.0f, m, s;

    if (row >= N) {
        return;
    }
    x = inp + (size_t)row * C;
    o = out + (size_t)row * C;
    for (int c = lane; c < C; c += TPM_WARP) {
        sum += x[c];
    }
    m = tpm_warp_sum(sum) / (float)C;
    for (int c = lane; c < C; c += TPM_WARP) {
        const float d = x[c] - m;
        var += d * d;
    }
    s = 1.0f / sqrtf(tpm_warp_sum(var) / (float)C + LN_EPS);
    for (int c = lane; c < C; c += TPM_WARP) {
        o[c] = (x[c] - m) * s * w[c] + b[c];
    }
    if (lane == 0) {
        if (mean != NULL) {
            mean[row] = m;
        }
        if (rstd != NULL) {
            rstd[row] = s;
        }
    }
}

/* dinp += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dout * w */
__global__ void layernorm_bwd_dinp_kernel(float *dinp, const float *dout, const float *inp,
                                          const float *w, const float *mean, const float *rstd,
                                          int N, int C)
{
    const int    lane = threadIdx.x % TPM_WARP;
    const int    row  = blockIdx.x * LN_ROWS_PER_BLK + threadIdx.x / TPM_WARP;
    const float *x, *d;
    float       *dx;
    float        m, s, sum_g = 0.0f, sum_gx = 0.0f;

    if (row >= N) {
        return;
    }
    x  = inp + (size_t)row * C;
    d  = dout + (size_t)row * C;
    dx = dinp + (size_t)row * C;
    m  = mean[row];
    s  = rstd[row];
    for (int c = lane; c < C; c += TPM_WARP) {
        const float g = d[c] * w[c];
        sum_g += g;
        sum_gx += g * (x[c] - m) * s;
    }
    sum_g  = tpm_warp_sum(sum_g) / (float)C;
    sum_gx = tpm_warp_sum(sum_gx) / (float)C;
    for (int c = lane; c < C; c += TPM_WARP) {
        const float xhat = (x[c] - m) * s;
        dx[c] += s * (d[c] * w[c] - sum_g - xhat * sum_gx);
    }
}

/* (dw, db) terms of one element: dout * xhat and dout */
struct ln_dwdb_fn {
    const float *dout, *inp, *mean, *rstd;
    int          C;

    __device__ void operator()(int r, int c, float v[2]) const
    {
        const size_t i = (size_t)r * C + c;
        const float  d = dout[i];

        v[0] = d * ((inp[i] - mean[r]) * rstd[r]);
        v[1] = d;
    }
};

extern "C" tpm_status_t tpm_cuda_layernorm_fwd(float *out, float *mean, float *rstd,
                                               const float *inp, const float *w, const float *b,
                                               int N, int C, void *stream)
{
    if (N <= 0 || C <= 0) {
        return TPM_OK;
    }
    layernorm_fwd_kernel<<<TPM_CEIL_DIV(N, LN_ROWS_PER_BLK), LN_ROWS_PER_BLK * TPM_WARP, 0,
                           (cudaStream_t)stream>>>(out, mean, rstd, inp, w, b, N, C);
    return TPM_LAUNCH_CHECK("layernorm_fwd_kernel");
}

extern "C" tpm_status_t tpm_cuda_layernorm_bwd(float *dinp, float *dw, float *db, const float *dout,
                                               const float *inp, const float *w, const float *mean,
                                               const float *rstd, int N, int C, float *scratch,
                                               void *stream)
{
    cudaStream_t st = (cudaStream_t)stream;

    if (N <= 0 || C <= 0) {
        return TPM_OK;
    }
    if (dinp != NULL) {
        layernorm_bwd_dinp_kernel<<<TPM_CEIL_DIV(N, LN_ROWS_PER_BLK), LN_ROWS_PER_BLK * TPM_WARP, 0,
                                    st>>>(dinp, dout, inp, w, mean, rstd, N, C);
        TPM_CHECK(TPM_LAUNCH_CHECK("layernorm_bwd_dinp_kernel"));
    }
    if (dw != NULL || db != NULL) {
        float *const dst[2] = {dw, db};
        ln_dwdb_fn   f      = {dout, inp, mean, rstd, C};

        TPM_CHECK(tpm_colsum_run<2>(dst, N, C, f, scratch, st, "layernorm_bwd_dwdb"));
    }
    return TPM_OK;
}
