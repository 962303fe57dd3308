/* SPDX-License-Identifier: MIT */
/*
 * kernels.h: the C interface of the CUDA kernels (kernels/ .cu files), one launcher per op.
 *
 * Plain C: no CUDA type appears here (streams and the cuBLAS handle are void *), so
 * backend_cuda.c and comm_nccl.c include it without caring how the kernels are written.
 * Every launcher queues its work on @p stream and returns without waiting; it handles
 * empty sizes itself (nothing is launched), computes its grid with TPM_CEIL_DIV and checks
 * the launch (cudaGetLastError right after <<<>>>), returning TPM_ERR_CUDA with the kernel's
 * name logged. Arguments are not re-validated: the backend checks shapes first.
 *
 * Notation (llm.c's): B batch, T sequence length, C channels, NH heads, hs = C / NH,
 * N = B*T rows, V vocabulary, Vp padded vocabulary. Pointers are device memory unless
 * stated; semantics are those of the op table in src/backend/backend.h (bwd ops add).
 *
 * Data errors that only the device can see (a negative token id, a target outside
 * [-1, V), a KV-cache slot or position out of range) are not fatal inside a kernel: the
 * offending row is skipped and a TPM_CUDA_ERR_* bit is OR-ed into the device word @p err,
 * which the backend reads at its next synchronisation point.
 */
#ifndef TPM_KERNELS_H
#define TPM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* inside extern "C": the .cu files call the C logging and status functions */
#include "base/status.h"

#define TPM_CEIL_DIV(_a, _b) (((_a) + (_b)-1) / (_b))

/* bits of the device error word */
#define TPM_CUDA_ERR_TOKEN  1 /* encoder: a token id is negative */
#define TPM_CUDA_ERR_TARGET 2 /* cross-entropy: a target is outside [-1, V) */
#define TPM_CUDA_ERR_KV     4 /* attention_kv: a slot or position is outside the cache */

/**
 * Convert a cudaError_t (passed as int) into a status: TPM_OK for cudaSuccess, else log
 * "<call> failed: <cudaGetErrorString>" at file:line, clear the runtime's last-error state
 * (cudaGetLastError) so that the next check does not report it again, and return
 * TPM_ERR_CUDA. Errors that corrupt the context (sticky) stay; every later call fails too.
 */
tpm_status_t tpm_cuda_status(int err, const char *call, const char *file, int line);

/** Check a CUDA runtime call: status = TPM_CUDA_CALL(cudaMemsetAsync(...)); */
#define TPM_CUDA_CALL(_call) tpm_cuda_status((int)(_call), #_call, __FILE__, __LINE__)

/* ---- matmul (matmul.cu): cuBLAS, fp32 tensors ------------------------------------------ */

/**
 * Precision of the cuBLAS products. All tensors stay fp32 in memory and every product
 * accumulates in fp32; what changes is the tensor-core input format:
 *   FP32: plain SGEMM (CUBLAS_COMPUTE_32F), the CPU's numerics up to summation order;
 *   TF32: inputs rounded to TF32 (10-bit mantissa) (CUBLAS_COMPUTE_32F_FAST_TF32), default;
 *   BF16: inputs rounded to bf16 (7-bit mantissa) (CUBLAS_COMPUTE_32F_FAST_16BF), opt-in.
 */
typedef enum {
    TPM_CUDA_MATH_FP32 = 0,
    TPM_CUDA_MATH_TF32 = 1,
    TPM_CUDA_MATH_BF16 = 2,
} tpm_cuda_math_t;

/** Name of a math mode ("fp32", "tf32", "bf16"). */
const char *tpm_cuda_math_name(tpm_cuda_math_t math);

/** Create a cuBLAS handle bound to @p stream on the current device. Caller owns *blas_p. */
tpm_status_t tpm_cuda_blas_create(void *stream, void **blas_p);
/** No-op on NULL. */
void tpm_cuda_blas_destroy(void *blas);

/** out (N,OC) = inp (N,IC) x W + bias; W is (OC,IC) (w_trans 0) or (IC,OC) (w_trans 1). */
tpm_status_t tpm_cuda_matmul_fwd(void *blas, tpm_cuda_math_t math, float *out, const float *inp,
                                 const float *w, const float *bias, int N, int IC, int OC,
                                 int w_trans, void *stream);

/**
 * dinp += dout W^T-ish, dw += ..., dbias += colsum(dout) (each may be NULL). @p scratch
 * holds tpm_cuda_colsum_scratch_floats(N, OC) floats when dbias is not NULL.
 */
tpm_status_t tpm_cuda_matmul_bwd(void *blas, tpm_cuda_math_t math, float *dinp, float *dw,
                                 float *dbias, const float *dout, const float *inp, const float *w,
                                 int N, int IC, int OC, int w_trans, float *scratch, void *stream);

/**
 * Floats of scratch a deterministic column sum over N rows of C columns needs (partial
 * sums per fixed row chunk, added in chunk order: the result depends on N and C only).
 */
size_t tpm_cuda_colsum_scratch_floats(int N, int C);

/* ---- encoder (encoder.cu) --------------------------------------------------------------- */

/** out (B,T,C) = wte[tokens] + wpe[t]; a negative token sets TPM_CUDA_ERR_TOKEN. */
tpm_status_t tpm_cuda_encoder_fwd(float *out, const int32_t *tokens, const float *wte,
                                  const float *wpe, int B, int T, int C, int *err, void *stream);

/**
 * dwte[tokens] += dout, dwpe[t] += dout (either may be NULL). No atomics: every dwte row
 * is owned by the first position holding its token, which adds the rows of all positions
 * with that token in position order, as the CPU backend does.
 */
tpm_status_t tpm_cuda_encoder_bwd(float *dwte, float *dwpe, const float *dout,
                                  const int32_t *tokens, int B, int T, int C, int *err,
                                  void *stream);

/* ---- layernorm (layernorm.cu) ------------------------------------------------------------ */

/** out (N,C) = (inp - mean) * rstd * w + b; mean, rstd (N) may be NULL; eps 1e-5. */
tpm_status_t tpm_cuda_layernorm_fwd(float *out, float *mean, float *rstd, const float *inp,
                                    const float *w, const float *b, int N, int C, void *stream);

/**
 * dinp += ..., dw += ..., db += ... (each may be NULL). @p scratch holds
 * 2 * tpm_cuda_colsum_scratch_floats(N, C) floats when dw or db is not NULL.
 */
tpm_status_t tpm_cuda_layernorm_bwd(float *dinp, float *dw, float *db, const float *dout,
                                    const float *inp, const float *w, const float *mean,
                                    const float *rstd, int N, int C, float *scratch, void *stream);

/* ---- attention (attention.cu) ------------------------------------------------------------ */

/** Largest head size hs = C / NH the attention kernels take. */
#define TPM_CUDA_ATTN_MAX_HS 256

/**
 * Causal attention, flash-style: each block streams key/value tiles through shared memory
 * with an online softmax; out (B,T,C), lse (B,NH,T); nothing of size T*T is stored.
 */
tpm_status_t tpm_cuda_attention_fwd(float *out, float *lse, const float *qkv, int B, int T, int C,
                                    int NH, void *stream);

/** Floats of scratch attention_bwd needs: D = rowsum(dout * out), (B, NH, T). */
size_t tpm_cuda_attention_bwd_scratch_floats(int B, int T, int NH);

/** dqkv (B,T,3C) += gradient; probabilities recomputed from qkv and lse. Deterministic. */
tpm_status_t tpm_cuda_attention_bwd(float *dqkv, const float *dout, const float *qkv,
                                    const float *out, const float *lse, int B, int T, int C, int NH,
                                    float *scratch, void *stream);

/**
 * Attention with a KV cache (serving), see backend.h: k and v of every token go to
 * kcache/vcache (n_slots, ctx, C) at (slot[i], pos[i]), then token i attends over its
 * slot's rows [0, pos[i]]. slot and pos are device arrays; a negative slot or a position
 * outside [0, ctx) skips the token and sets TPM_CUDA_ERR_KV.
 */
tpm_status_t tpm_cuda_attention_kv(float *out, const float *qkv, float *kcache, float *vcache,
                                   const int32_t *slot, const int32_t *pos, int N, int C, int NH,
                                   int ctx, int *err, void *stream);

/* ---- GELU (gelu.cu) ---------------------------------------------------------------------- */

tpm_status_t tpm_cuda_gelu_fwd(float *out, const float *inp, size_t n, void *stream);
/** dinp += dout * gelu'(inp) */
tpm_status_t tpm_cuda_gelu_bwd(float *dinp, const float *inp, const float *dout, size_t n,
                               void *stream);

/* ---- elementwise and reductions (elementwise.cu) ----------------------------------------- */

/** out = a + b (out may alias a or b) */
tpm_status_t tpm_cuda_add(float *out, const float *a, const float *b, size_t n, void *stream);
/** y += alpha * x */
tpm_status_t tpm_cuda_axpy(float *y, float alpha, const float *x, size_t n, void *stream);
/** x *= alpha */
tpm_status_t tpm_cuda_scale(float *x, float alpha, size_t n, void *stream);

/** dst[i] = bf16 bits of src[i], round to nearest even, NaN kept quiet (backend.h to_bf16) */
tpm_status_t tpm_cuda_to_bf16(uint16_t *dst, const float *src, size_t n, void *stream);
/** dst[i] = fp32 value of the bf16 bits src[i] */
tpm_status_t tpm_cuda_from_bf16(float *dst, const uint16_t *src, size_t n, void *stream);

/** Number of partial sums tpm_cuda_sumsq_partial() writes for @p n values (<= 1024). */
size_t tpm_cuda_sumsq_nparts(size_t n);
/**
 * partial[k] (double, device) = sum of x^2 over the k-th of tpm_cuda_sumsq_nparts(n) fixed
 * contiguous blocks; the caller adds the partials in order (deterministic for a given n).
 */
tpm_status_t tpm_cuda_sumsq_partial(const float *x, size_t n, double *partial, void *stream);

/* ---- softmax + cross-entropy (softmax_xent.cu) ------------------------------------------- */

/**
 * Fused softmax + cross-entropy over the first V of Vp logit columns (backend.h):
 * losses (N); dlogits (N,Vp) or NULL, may alias logits. A target outside [-1, V) is
 * treated as -1 (loss 0, zero gradient) and sets TPM_CUDA_ERR_TARGET.
 */
tpm_status_t tpm_cuda_xent_fwd_bwd(float *losses, float *dlogits, const float *logits,
                                   const int32_t *targets, int N, int V, int Vp, float dloss,
                                   int *err, void *stream);

/* ---- AdamW (adamw.cu) -------------------------------------------------------------------- */

/**
 * AdamW in place; bc1 = 1 - beta1^t and bc2 = 1 - beta2^t are computed once by the caller
 * (in fp32, as the CPU backend does).
 */
tpm_status_t tpm_cuda_adamw(float *param, const float *grad, float *m, float *v, size_t n, float lr,
                            float beta1, float beta2, float eps, float wd, float bc1, float bc2,
                            void *stream);

/* ---- 2-bit codec (twobit.cu): bit-identical to src/backend/backend_twobit.c ----------- */

/**
 * tpm_twobit_encode() on the device: @p mode is a tpm_twobit_mode_t, @p g (n) and
 * @p residual (n fp32 or bf16 values, NULL for the stochastic mode) device arrays, @p chunk
 * tpm_twobit_chunk_bytes(n, B) device bytes, every one written. Same bytes and residual
 * as the CPU reference for any input (NaN included).
 */
tpm_status_t tpm_cuda_twobit_encode(int mode, int B, const float *g, size_t n, void *residual,
                                    uint64_t key, uint64_t rng_stream, uint64_t index0,
                                    uint8_t *chunk, void *stream);

/** tpm_twobit_decode_add() on the device: acc[i] += c_i * s (same fp32 result). */
tpm_status_t tpm_cuda_twobit_decode_add(int B, const uint8_t *chunk, size_t n, float *acc,
                                        void *stream);

#ifdef __cplusplus
}
#endif

#endif /* TPM_KERNELS_H */
