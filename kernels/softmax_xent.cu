/* SPDX-License-Identifier: MIT */
/*
 * softmax_xent.cu: fused softmax + cross-entropy (+ its gradient) over the first V of Vp
 * logit columns, one block per row; the probabilities are never stored. Three passes over
 * the row: max, sum of exp (each thread in double, as the CPU backend accumulates ~5e4
 * terms in double, then a fixed-order block reduction), and, with a gradient, the write of
 * dloss * (softmax - onehot). dlogits may alias logits: the loss's target logit is read
 * before the first barrier and every other element is read and written by the same thread.
 */
#include "common.cuh"

#define XENT_THREADS 512

__global__ void __launch_bounds__(XENT_THREADS)
    xent_kernel(float *losses, float *dlogits, const float *logits, const int32_t *targets, int V,
                int Vp, float dloss, int *err)
{
    __shared__ float  shf[TPM_WARP];
    __shared__ double shd[TPM_WARP];
    const size_t      row = blockIdx.x;
    const float      *l   = logits + row * (size_t)Vp;
    float            *dl  = dlogits != NULL ? dlogits + row * (size_t)Vp : NULL;
    int32_t           tgt = targets[row];
    float             mx = -INFINITY, lt = 0.0f, g;
    double            sum = 0.0;

    if (tgt < -1 || tgt >= V) {
        if (threadIdx.x == 0) {
            atomicOr(err, TPM_CUDA_ERR_TARGET);
        }
        tgt = -1;
    }
    if (tgt < 0) { /* block-uniform: no loss at this position */
        if (threadIdx.x == 0) {
            losses[row] = 0.0f;
        }
        if (dl != NULL) {
            for (int j = threadIdx.x; j < Vp; j += blockDim.x) {
                dl[j] = 0.0f;
            }
        }
        return;
    }
    if (threadIdx.x == 0) {
        lt = l[tgt];
    }
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        mx = fmaxf(mx, l[j]);
    }
    mx = tpm_block_max(mx, shf);
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        sum += (double)expf(l[j] - mx);
    }
    sum = tpm_block_sum<double>(sum, shd); /* ends with a barrier: every read is done */
    if (threadIdx.x == 0) {
        losses[row] = mx + (float)log(sum) - lt;
    }
    if (dl == NULL) {
        return;
    }
    g = dloss / (float)sum;
    for (int j = threadIdx.x; j < Vp; j += blockDim.x) {
        float d = 0.0f;
        if (j < V) {
            d = expf(l[j] - mx) * g;
            if (j == tgt) {
                d -= dloss;
            }
        }
        dl[j] = d;
    }
}

extern "C" tpm_status_t tpm_cuda_xent_fwd_bwd(float *losses, float *dlogits, const float *logits,
                                              const int32_t *targets, int N, int V, int Vp,
                                              float dloss, int *err, void *stream)
{
    if (N <= 0) {
        return TPM_OK;
    }
    xent_kernel<<<(unsigned)N, XENT_THREADS, 0, (cudaStream_t)stream>>>(losses, dlogits, logits,
                                                                        targets, V, Vp, dloss, err);
    return TPM_LAUNCH_CHECK("xent_kernel");
}
