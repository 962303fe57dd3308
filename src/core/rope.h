/* SPDX-License-Identifier: MIT */
/*
 * rope.h: the rotary-embedding frequencies the backend's rope ops take (backend.h,
 * docs/MODEL.md "LLaMA ops"): plain theta^(-2d/hs), or with Llama-3's frequency scaling,
 * as Hugging Face's "default" and "llama3" rope types compute them. Pure arithmetic.
 */
#ifndef TPM_CORE_ROPE_H
#define TPM_CORE_ROPE_H

#include "base/status.h"

/** Llama-3 scaling ("rope_scaling" of a Hugging Face config.json with rope_type llama3). */
typedef struct tpm_rope_scaling {
    double factor;           /* 0: no scaling */
    double low_freq_factor;  /* wavelengths above orig_ctx / low_freq_factor: divided by factor */
    double high_freq_factor; /* below orig_ctx / high_freq_factor: kept; between: blended */
    int    orig_ctx;         /* original_max_position_embeddings */
} tpm_rope_scaling_t;

/**
 * inv_freq[d] for d < hs / 2: 1 / theta^(2d / hs), scaled as @p sc says (NULL or factor 0:
 * unscaled). TPM_ERR_INVALID_ARG (logged) for an odd or non-positive hs, theta <= 1, or
 * scaling parameters that are not factor >= 1, 0 < low < high, orig_ctx >= 1.
 */
tpm_status_t tpm_rope_inv_freq(int hs, double theta, const tpm_rope_scaling_t *sc, float *inv_freq);

#endif /* TPM_CORE_ROPE_H */
