/* SPDX-License-Identifier: MIT */
/*
 * backend_cpu.h: the parts of the CPU backend that backend.c and the benchmarks
 * need beyond the op table: its private state (per-thread scratch buffers for
 * attention, grown on first use) and a description of the BLAS library in use.
 */
#ifndef TPM_BACKEND_CPU_H
#define TPM_BACKEND_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "base/status.h"

/**
 * Create the CPU backend's private state (empty scratch; buffers are grown by the
 * first op that needs them and reused afterwards). Caller owns *priv_p and frees it
 * with tpm_backend_cpu_priv_destroy(). A backend, like a CUDA stream, is used by one
 * thread at a time: the scratch is not protected against concurrent calls.
 */
tpm_status_t tpm_backend_cpu_priv_create(void **priv_p);
/** No-op on NULL. */
void tpm_backend_cpu_priv_destroy(void *priv);

/**
 * "<openblas_get_config()> core=<openblas_get_corename()>", for benchmark logs.
 * Static storage, overwritten by the next call (not thread-safe); never NULL.
 */
const char *tpm_backend_blas_info(void);

/*
 * The LLaMA-family ops of the CPU op table (backend_cpu_llama.c; contracts in backend.h).
 */
tpm_status_t tpm_cpu_rmsnorm_fwd(tpm_backend_t *be, float *out, float *rstd, const float *inp,
                                 const float *w, int N, int C, float eps);
tpm_status_t tpm_cpu_rmsnorm_bwd(tpm_backend_t *be, float *dinp, float *dw, const float *dout,
                                 const float *inp, const float *w, const float *rstd, int N, int C);
tpm_status_t tpm_cpu_rope_fwd(tpm_backend_t *be, float *qkv, const int32_t *pos,
                              const float *inv_freq, int N, int NH, int NKV, int hs);
tpm_status_t tpm_cpu_rope_bwd(tpm_backend_t *be, float *dqkv, const int32_t *pos,
                              const float *inv_freq, int N, int NH, int NKV, int hs);
tpm_status_t tpm_cpu_swiglu_fwd(tpm_backend_t *be, float *out, const float *gate, const float *up,
                                size_t n);
tpm_status_t tpm_cpu_swiglu_bwd(tpm_backend_t *be, float *dgate, float *dup, const float *dout,
                                const float *gate, const float *up, size_t n);
tpm_status_t tpm_cpu_attention_gqa_fwd(tpm_backend_t *be, float *out, float *lse, const float *qkv,
                                       int B, int T, int NH, int NKV, int hs);
tpm_status_t tpm_cpu_attention_gqa_bwd(tpm_backend_t *be, float *dqkv, const float *dout,
                                       const float *qkv, const float *out, const float *lse, int B,
                                       int T, int NH, int NKV, int hs);
tpm_status_t tpm_cpu_attention_gqa_kv(tpm_backend_t *be, float *out, const float *qkv,
                                      float *kcache, float *vcache, const int32_t *slot,
                                      const int32_t *pos, int N, int NH, int NKV, int hs, int ctx);

#endif /* TPM_BACKEND_CPU_H */
