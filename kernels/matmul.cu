/* SPDX-License-Identifier: MIT */
/*
 * matmul.cu: the linear layers on cuBLAS (cublasGemmEx on fp32 tensors), the bias add of
 * the forward pass and the deterministic bias gradient (a column sum, common.cuh).
 *
 * Row-major tpmpi tensors are column-major transposes for cuBLAS: a row-major (R, K) matrix
 * is a column-major (K, R) one with leading dimension K. Each product below is written as
 * the column-major product of those transposes (out^T = W^T-ish x inp^T), so no data moves.
 *
 * Precision (tpm_cuda_math_t): the tensors are fp32 and cuBLAS accumulates in fp32 in every
 * mode; TF32 (default) or BF16 only round the tensor-core inputs. Expected normalised error
 * against the fp32 CPU result, for K-term products of O(1) random values: FP32 ~1e-6,
 * TF32 ~1e-3 (2^-11 relative per input), BF16 ~5e-3 (2^-8 per input).
 */
#include <cublas_v2.h>

#include "common.cuh"

#define MATMUL_BIAS_THREADS 256

static tpm_status_t cublas_status(cublasStatus_t st, const char *call, const char *file, int line)
{
    if (st == CUBLAS_STATUS_SUCCESS) {
        return TPM_OK;
    }
    if (TPM_LOG_ERROR <= tpm_log_level_cur) {
        tpm_log_emit(TPM_LOG_ERROR, file, line, "%s failed: %s", call, cublasGetStatusString(st));
    }
    return TPM_ERR_CUDA;
}

/** Check a cuBLAS call (cublasStatus_t): logs cublasGetStatusString, returns TPM_ERR_CUDA. */
#define TPM_CUBLAS_CALL(_call) cublas_status((_call), #_call, __FILE__, __LINE__)

extern "C" const char *tpm_cuda_math_name(tpm_cuda_math_t math)
{
    switch (math) {
    case TPM_CUDA_MATH_FP32: return "fp32";
    case TPM_CUDA_MATH_TF32: return "tf32";
    case TPM_CUDA_MATH_BF16: return "bf16";
    }
    return "?";
}

static cublasComputeType_t compute_type(tpm_cuda_math_t math)
{
    switch (math) {
    case TPM_CUDA_MATH_TF32: return CUBLAS_COMPUTE_32F_FAST_TF32;
    case TPM_CUDA_MATH_BF16: return CUBLAS_COMPUTE_32F_FAST_16BF;
    default: return CUBLAS_COMPUTE_32F;
    }
}

extern "C" tpm_status_t tpm_cuda_blas_create(void *stream, void **blas_p)
{
    cublasHandle_t h;

    TPM_CHECK(TPM_CUBLAS_CALL(cublasCreate(&h)));
    if (TPM_CUBLAS_CALL(cublasSetStream(h, (cudaStream_t)stream)) != TPM_OK) {
        cublasDestroy(h);
        return TPM_ERR_CUDA;
    }
    *blas_p = h;
    return TPM_OK;
}

extern "C" void tpm_cuda_blas_destroy(void *blas)
{
    if (blas != NULL) {
        cublasDestroy((cublasHandle_t)blas);
    }
}

/* C (m, n) = alpha op(A) op(B) + beta C, all column-major fp32 */
static tpm_status_t gemm(void *blas, tpm_cuda_math_t math, cublasOperation_t ta,
                         cublasOperation_t tb, int m, int n, int k, const float *A, int lda,
                         const float *B, int ldb, float beta, float *C, int ldc)
{
    const float alpha = 1.0f;

    return TPM_CUBLAS_CALL(cublasGemmEx((cublasHandle_t)blas, ta, tb, m, n, k, &alpha, A,
                                        CUDA_R_32F, lda, B, CUDA_R_32F, ldb, &beta, C, CUDA_R_32F,
                                        ldc, compute_type(math), CUBLAS_GEMM_DEFAULT));
}

__global__ void bias_add_kernel(float *out, const float *bias, size_t total, int OC)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        out[i] += bias[i % (size_t)OC];
    }
}

struct colsum_fn {
    const float *src;
    int          ld;

    __device__ void operator()(int r, int c, float v[1]) const
    {
        v[0] = src[(size_t)r * ld + c];
    }
};

extern "C" tpm_status_t tpm_cuda_matmul_fwd(void *blas, tpm_cuda_math_t math, float *out,
                                            const float *inp, const float *w, const float *bias,
                                            int N, int IC, int OC, int w_trans, void *stream)
{
    cudaStream_t st = (cudaStream_t)stream;

    if (N <= 0 || OC <= 0) {
        return TPM_OK;
    }
    if (IC <= 0) {
        TPM_CHECK(
            TPM_CUDA_CALL(cudaMemsetAsync(out, 0, (size_t)N * (size_t)OC * sizeof(float), st)));
    } else if (w_trans) {
        /* out^T (OC, N) = w_cm (OC, IC) inp^T (IC, N); w (IC, OC) row-major is w_cm */
        TPM_CHECK(
            gemm(blas, math, CUBLAS_OP_N, CUBLAS_OP_N, OC, N, IC, w, OC, inp, IC, 0.0f, out, OC));
    } else {
        /* w (OC, IC) row-major is column-major (IC, OC): transpose it */
        TPM_CHECK(
            gemm(blas, math, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC, w, IC, inp, IC, 0.0f, out, OC));
    }
    if (bias != NULL) {
        const size_t total = (size_t)N * (size_t)OC;

        bias_add_kernel<<<tpm_ew_blocks(total), MATMUL_BIAS_THREADS, 0, st>>>(out, bias, total, OC);
        TPM_CHECK(TPM_LAUNCH_CHECK("bias_add_kernel"));
    }
    return TPM_OK;
}

extern "C" tpm_status_t tpm_cuda_matmul_bwd(void *blas, tpm_cuda_math_t math, float *dinp,
                                            float *dw, float *dbias, const float *dout,
                                            const float *inp, const float *w, int N, int IC, int OC,
                                            int w_trans, float *scratch, void *stream)
{
    if (N <= 0 || OC <= 0) {
        return TPM_OK; /* every gradient is an empty sum */
    }
    if (dinp != NULL && IC > 0) {
        if (w_trans) {
            /* dinp = dout w^T with w (IC, OC): dinp^T (IC, N) = w_cm^T (IC, OC) dout^T */
            TPM_CHECK(gemm(blas, math, CUBLAS_OP_T, CUBLAS_OP_N, IC, N, OC, w, OC, dout, OC, 1.0f,
                           dinp, IC));
        } else {
            /* dinp = dout w with w (OC, IC): dinp^T = w_cm (IC, OC) dout^T */
            TPM_CHECK(gemm(blas, math, CUBLAS_OP_N, CUBLAS_OP_N, IC, N, OC, w, IC, dout, OC, 1.0f,
                           dinp, IC));
        }
    }
    if (dw != NULL && IC > 0) {
        if (w_trans) {
            /* dw (IC, OC) += inp^T dout: dw^T (OC, IC) = dout^T (OC, N) inp (N, IC) */
            TPM_CHECK(gemm(blas, math, CUBLAS_OP_N, CUBLAS_OP_T, OC, IC, N, dout, OC, inp, IC, 1.0f,
                           dw, OC));
        } else {
            /* dw (OC, IC) += dout^T inp: dw^T (IC, OC) = inp^T (IC, N) dout (N, OC) */
            TPM_CHECK(gemm(blas, math, CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, N, inp, IC, dout, OC, 1.0f,
                           dw, IC));
        }
    }
    if (dbias != NULL) {
        float *const dst[1] = {dbias};
        colsum_fn    f      = {dout, OC};

        TPM_CHECK(tpm_colsum_run<1>(dst, N, OC, f, scratch, (cudaStream_t)stream, "matmul_dbias"));
    }
    return TPM_OK;
}
