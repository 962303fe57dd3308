/* SPDX-License-Identifier: MIT */
/*
 * backend.h: the op table every device implements (CPU now, CUDA later).
 *
 * All math is fp32 on buffers that belong to the backend's device (pointers
 * from ops->alloc). The model (src/core) calls only these ops, never BLAS or
 * CUDA directly. Conventions, as in llm.c:
 *   B batch, T sequence length, C channels, NH heads, hs = C / NH head size,
 *   N = B*T rows of activations, V vocabulary, Vp padded vocabulary.
 * Every *_bwd op ADDS (+=) into its gradient outputs; the caller zeroes them.
 * Dispatchers are the static inline tpm_be_*() wrappers below.
 *
 * Attention layout. qkv is (B, T, 3C) grouped by head: for head h the columns
 * [h*3*hs, h*3*hs + hs) are q, the next hs are k, the next hs are v. This is the
 * row order of the QKV weight (ARCHITECTURE.md §3), so a tensor-parallel rank
 * that owns heads [h0, h1) holds a contiguous slice of it.
 */
#ifndef TPM_BACKEND_H
#define TPM_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

typedef enum {
    TPM_COPY_H2D = 0,
    TPM_COPY_D2H = 1,
    TPM_COPY_D2D = 2,
} tpm_copy_kind_t;

typedef struct tpm_backend tpm_backend_t;

struct tpm_qmat; /* backend_cpu_quant.h */

typedef struct tpm_backend_ops {
    const char *name;

    /* memory */
    tpm_status_t (*alloc)(tpm_backend_t *be, size_t nbytes, void **ptr_p);
    void (*free)(tpm_backend_t *be, void *ptr); /* no-op on NULL */
    tpm_status_t (*memzero)(tpm_backend_t *be, void *ptr, size_t nbytes);
    tpm_status_t (*copy)(tpm_backend_t *be, void *dst, const void *src, size_t nbytes,
                         tpm_copy_kind_t kind);
    tpm_status_t (*sync)(tpm_backend_t *be);

    /* out (B,T,C) = wte[tokens] + wpe[t]; tokens (B,T) in [0, Vp); CPU: wpe NULL adds nothing */
    tpm_status_t (*encoder_fwd)(tpm_backend_t *be, float *out, const int32_t *tokens,
                                const float *wte, const float *wpe, int B, int T, int C);
    /* dwte[tokens] += dout, dwpe[t] += dout (deterministic: no atomics; either may be NULL) */
    tpm_status_t (*encoder_bwd)(tpm_backend_t *be, float *dwte, float *dwpe, const float *dout,
                                const int32_t *tokens, int B, int T, int C);

    /* out (N,C) = (inp - mean) * rstd * w + b; mean, rstd (N) saved for backward; eps 1e-5 */
    tpm_status_t (*layernorm_fwd)(tpm_backend_t *be, float *out, float *mean, float *rstd,
                                  const float *inp, const float *w, const float *b, int N, int C);
    tpm_status_t (*layernorm_bwd)(tpm_backend_t *be, float *dinp, float *dw, float *db,
                                  const float *dout, const float *inp, const float *w,
                                  const float *mean, const float *rstd, int N, int C);

    /*
     * out (N,OC) = inp (N,IC) x W + bias (bias may be NULL).
     * w_trans = 0: w is (OC, IC) row-major, out = inp @ w^T (column-parallel storage);
     * w_trans = 1: w is (IC, OC) row-major, out = inp @ w   (row-parallel, stored transposed).
     * out is overwritten.
     */
    tpm_status_t (*matmul_fwd)(tpm_backend_t *be, float *out, const float *inp, const float *w,
                               const float *bias, int N, int IC, int OC, int w_trans);
    /*
     * (optional: NULL where the backend has no such kernels) out (N, rows) = inp (N, cols)
     * W^T + bias for a serving weight matrix in fp32, bf16 or int8 (backend_cpu_quant.h:
     * formats, kernels, numerics). Host memory.
     */
    tpm_status_t (*matmul_fwd_q)(tpm_backend_t *be, float *out, const float *inp,
                                 const struct tpm_qmat *w, const float *bias, int N);
    /* dinp += dout @ W^T-ish, dw += ..., dbias += colsum(dout); any of dinp/dw/dbias may be NULL */
    tpm_status_t (*matmul_bwd)(tpm_backend_t *be, float *dinp, float *dw, float *dbias,
                               const float *dout, const float *inp, const float *w, int N, int IC,
                               int OC, int w_trans);

    /*
     * Causal multi-head attention, softmax scale 1/sqrt(hs).
     * out (B,T,C) (head h at columns [h*hs, (h+1)*hs)), lse (B,NH,T) log-sum-exp of each
     * score row, kept for the backward pass. Memory-efficient: no (B,NH,T,T) tensor is kept.
     */
    tpm_status_t (*attention_fwd)(tpm_backend_t *be, float *out, float *lse, const float *qkv,
                                  int B, int T, int C, int NH);
    /* dqkv (B,T,3C) += gradient, recomputing probabilities from qkv and lse */
    tpm_status_t (*attention_bwd)(tpm_backend_t *be, float *dqkv, const float *dout,
                                  const float *qkv, const float *out, const float *lse, int B,
                                  int T, int C, int NH);

    /* GELU, tanh approximation (GPT-2) */
    tpm_status_t (*gelu_fwd)(tpm_backend_t *be, float *out, const float *inp, size_t n);
    tpm_status_t (*gelu_bwd)(tpm_backend_t *be, float *dinp, const float *inp, const float *dout,
                             size_t n);

    /* out = a + b (out may alias a) */
    tpm_status_t (*add)(tpm_backend_t *be, float *out, const float *a, const float *b, size_t n);
    /* y += alpha * x */
    tpm_status_t (*axpy)(tpm_backend_t *be, float *y, float alpha, const float *x, size_t n);
    /* x *= alpha */
    tpm_status_t (*scale)(tpm_backend_t *be, float *x, float alpha, size_t n);
    /* *sumsq_p = sum x^2, accumulated in double (host scalar out) */
    tpm_status_t (*sumsq)(tpm_backend_t *be, const float *x, size_t n, double *sumsq_p);

    /*
     * Fused softmax + cross-entropy over the first V of Vp logit columns.
     * logits (N, Vp); targets (N) in [0, V), or -1 for "no loss at this position".
     * losses (N): -log softmax(logits)[target] (0 where target is -1).
     * If dlogits is not NULL: dlogits (N, Vp) = dloss * (softmax - onehot) for columns < V,
     * 0 for padded columns and ignored rows; dlogits may alias logits (in place).
     */
    tpm_status_t (*xent_fwd_bwd)(tpm_backend_t *be, float *losses, float *dlogits,
                                 const float *logits, const int32_t *targets, int N, int V,
                                 int Vp, float dloss);

    /*
     * Attention with a KV cache (serving: prefill and decode in one op).
     * qkv (N, 3C) head-grouped as above, for N tokens of possibly different sequences;
     * token i belongs to cache slot slot[i] at position pos[i] (0-based, < ctx).
     * kcache, vcache: (n_slots, ctx, C), head h at columns [h*hs, (h+1)*hs).
     * First the k and v of every token are written to their cache rows; then each
     * token's q attends causally over its slot's rows [0, pos[i]] (so a prompt
     * given in one call attends to itself). out (N, C). Tokens of one slot must
     * have distinct positions. C and NH are the local (tensor-parallel) sizes.
     */
    tpm_status_t (*attention_kv)(tpm_backend_t *be, float *out, const float *qkv, float *kcache,
                                 float *vcache, const int32_t *slot, const int32_t *pos, int N,
                                 int C, int NH, int ctx);
    /*
     * (optional: NULL where the backend has none) attention_kv with bf16 caches (round to
     * nearest even when written, widened to fp32 when read; scores, softmax and sums fp32).
     */
    tpm_status_t (*attention_kv16)(tpm_backend_t *be, float *out, const float *qkv,
                                   uint16_t *kcache, uint16_t *vcache, const int32_t *slot,
                                   const int32_t *pos, int N, int C, int NH, int ctx);

    /*
     * AdamW on n elements, in place on param, m, v. t is the 1-based step for bias
     * correction. Decoupled decay: param -= lr * (mhat / (sqrt(vhat) + eps) + wd * param).
     */
    tpm_status_t (*adamw)(tpm_backend_t *be, float *param, const float *grad, float *m, float *v,
                          size_t n, float lr, float beta1, float beta2, float eps, float wd, int t);

    /*
     * bf16 working weights (--precision=bf16). dst[i] = bf16 bits of src[i], rounded to
     * nearest even, NaN kept a quiet NaN (tpm_bf16_rne() in base/bf16.h).
     */
    tpm_status_t (*to_bf16)(tpm_backend_t *be, uint16_t *dst, const float *src, size_t n);
    /* dst[i] = the fp32 value of bf16 bits src[i] (exact) */
    tpm_status_t (*from_bf16)(tpm_backend_t *be, float *dst, const uint16_t *src, size_t n);

    /*
     * The 2-bit gradient codec on the backend's memory: tpm_twobit_encode() and
     * tpm_twobit_decode_add() of backend/backend_twobit.h, with the same bytes, residuals and sums
     * on every backend. mode is a tpm_twobit_mode_t; g, residual, chunk, acc are device
     * buffers.
     */
    tpm_status_t (*twobit_encode)(tpm_backend_t *be, int mode, int B, const float *g, size_t n,
                                  void *residual, uint64_t key, uint64_t stream, uint64_t index0,
                                  uint8_t *chunk);
    tpm_status_t (*twobit_decode_add)(tpm_backend_t *be, int B, const uint8_t *chunk, size_t n,
                                      float *acc);

    /*
     * LLaMA-family ops (issue 14; docs/MODEL.md "LLaMA ops"). Additions: the GPT-2 ops above
     * are unchanged. The CUDA backend has typed stubs (TPM_ERR_UNSUPPORTED) until kernels
     * have run on a GPU.
     *
     * Grouped-query layout of a qkv row (NH query heads, NKV key/value heads, rep = NH / NKV,
     * hs head size): for each KV group g = 0..NKV-1, the q of heads g rep .. g rep + rep - 1,
     * then k_g, then v_g, hs values each ((NH + 2 NKV) hs per token). A tensor-parallel rank
     * owning whole KV groups owns contiguous rows; with NKV = NH this is GPT-2's head-grouped
     * [q | k | v] order. The attention output is (N, NH hs), head h at columns [h hs, (h+1) hs).
     */
    /* out (N,C) = inp * rstd * w with rstd (N) = 1 / sqrt(mean(inp^2) + eps), saved */
    tpm_status_t (*rmsnorm_fwd)(tpm_backend_t *be, float *out, float *rstd, const float *inp,
                                const float *w, int N, int C, float eps);
    /* dinp += d/d inp, dw += d/d w (either may be NULL) */
    tpm_status_t (*rmsnorm_bwd)(tpm_backend_t *be, float *dinp, float *dw, const float *dout,
                                const float *inp, const float *w, const float *rstd, int N, int C);
    /*
     * Rotary position embedding, in place on the q and k parts of qkv (N, (NH + 2 NKV) hs),
     * Hugging Face's rotate_half convention: with a = pos[i] * inv_freq[d] (fp32) for
     * d < hs / 2, (x[d], x[d + hs/2]) becomes (x[d] cos a - x[d + hs/2] sin a,
     * x[d + hs/2] cos a + x[d] sin a). inv_freq (hs / 2) and pos (N) are device arrays.
     * rope_bwd applies the inverse rotation (the transpose) to a gradient in place.
     */
    tpm_status_t (*rope_fwd)(tpm_backend_t *be, float *qkv, const int32_t *pos,
                             const float *inv_freq, int N, int NH, int NKV, int hs);
    tpm_status_t (*rope_bwd)(tpm_backend_t *be, float *dqkv, const int32_t *pos,
                             const float *inv_freq, int N, int NH, int NKV, int hs);
    /* out = silu(gate) * up, n values; backward: dgate +=, dup += (either may be NULL) */
    tpm_status_t (*swiglu_fwd)(tpm_backend_t *be, float *out, const float *gate, const float *up,
                               size_t n);
    tpm_status_t (*swiglu_bwd)(tpm_backend_t *be, float *dgate, float *dup, const float *dout,
                               const float *gate, const float *up, size_t n);
    /*
     * Causal grouped-query attention over whole sequences (training), scale 1/sqrt(hs):
     * qkv (B,T,(NH + 2 NKV) hs) in the layout above, out (B,T,NH hs), lse (B,NH,T) saved.
     * The backward adds into dqkv, recomputing the probabilities from qkv and lse.
     */
    tpm_status_t (*attention_gqa_fwd)(tpm_backend_t *be, float *out, float *lse, const float *qkv,
                                      int B, int T, int NH, int NKV, int hs);
    tpm_status_t (*attention_gqa_bwd)(tpm_backend_t *be, float *dqkv, const float *dout,
                                      const float *qkv, const float *out, const float *lse, int B,
                                      int T, int NH, int NKV, int hs);
    /*
     * Grouped-query attention with a KV cache sized by KV heads (serving): as attention_kv,
     * with kcache, vcache (n_slots, ctx, NKV hs), KV group g at columns [g hs, (g+1) hs).
     * NH and NKV are the local (tensor-parallel) counts.
     */
    tpm_status_t (*attention_gqa_kv)(tpm_backend_t *be, float *out, const float *qkv, float *kcache,
                                     float *vcache, const int32_t *slot, const int32_t *pos, int N,
                                     int NH, int NKV, int hs, int ctx);
} tpm_backend_ops_t;

struct tpm_backend {
    const tpm_backend_ops_t *ops;
    int                      n_threads; /* CPU: OpenMP/OpenBLAS threads */
    void                    *priv;      /* implementation state (optional) */
};

/** The CPU backend (OpenBLAS sgemm + OpenMP); the numerical reference. */
extern const tpm_backend_ops_t tpm_backend_cpu_ops;

/**
 * Create the backend called @p name ("cpu"; "cuda" when built with it), using
 * @p n_threads threads (0: leave the runtime default). Caller owns *be_p.
 */
tpm_status_t tpm_backend_create(const char *name, int n_threads, tpm_backend_t **be_p);
/** No-op on NULL. */
void tpm_backend_destroy(tpm_backend_t *be);

/**
 * Matmul input precision of a device backend (--cuda-matmul): "fp32", "tf32", "bf16", or
 * "auto" to keep the backend's default (CUDA: TPMPI_CUDA_MATMUL, else tf32). Accumulation is
 * fp32 in every mode. The CPU backend always multiplies in fp32 and ignores it.
 */
tpm_status_t tpm_backend_set_matmul(tpm_backend_t *be, const char *mode);

#endif /* TPM_BACKEND_H */
