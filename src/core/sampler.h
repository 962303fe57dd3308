/* SPDX-License-Identifier: MIT */
/*
 * sampler.h: next-token choice from a row of logits (serve, and later eval):
 * greedy, or temperature + top-k + top-p (nucleus) sampling with the counter RNG.
 *
 * Order of the filters, as in Hugging Face's generate(): the logits are divided by the
 * temperature, then the top_k largest are kept, then the smallest prefix of those (sorted
 * by probability) whose probability mass reaches top_p; the token is drawn from what is
 * left, renormalised. The draw for generation step `step` of a request is
 * tpm_rng_uniform(seed, TPM_SAMPLER_STREAM, step): it depends on nothing else, so a
 * request with a fixed seed gives the same text on any rank count and in any batch
 * (up to fp32 rounding of the logits themselves).
 */
#ifndef TPM_CORE_SAMPLER_H
#define TPM_CORE_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

#define TPM_SAMPLER_STREAM 0x73616d706c65ull /* "sample": RNG stream of token draws */

typedef struct tpm_sampler_params {
    float    temperature; /* <= 0: greedy (argmax, lowest id on ties) */
    int      top_k;       /* <= 0 or >= V: off */
    float    top_p;       /* >= 1: off; (0, 1): nucleus mass */
    uint64_t seed;
} tpm_sampler_params_t;

/** Scratch for one vocabulary size, allocated once (no allocation per token). */
typedef struct tpm_sampler {
    int      V;
    float   *val; /* (V) candidate logits / weights */
    int32_t *idx; /* (V) candidate ids */
} tpm_sampler_t;

/** Allocate scratch for vocabularies of @p V tokens. Caller owns *s_p. */
tpm_status_t tpm_sampler_create(int V, tpm_sampler_t **s_p);
void         tpm_sampler_destroy(tpm_sampler_t *s); /* no-op on NULL */

/**
 * Choose the token that follows @p logits (the first s->V columns; NaN counts as -inf) at
 * generation step @p step (0 for the first generated token). Never fails: parameters out
 * of range fall back to their "off" value. Not thread-safe (the scratch is shared).
 */
int32_t tpm_sampler_sample(tpm_sampler_t *s, const float *logits, const tpm_sampler_params_t *p,
                           uint64_t step);

#define TPM_LOGPROBS_MAX_TOP 20 /* largest top-k of tpm_logprobs */

/**
 * Log-probabilities of the full distribution softmax(@p logits[0..V)) (the model's own
 * distribution: no temperature, top_k or top_p): the log-probability of @p token in *lp_p,
 * and the @p k (0..TPM_LOGPROBS_MAX_TOP) most likely tokens in @p top_ids / @p top_lp,
 * most likely first, lowest id first on ties. The log-sum-exp is accumulated in double
 * after subtracting the maximum; NaN logits count as -inf. Pure and thread-safe.
 */
void tpm_logprobs(const float *logits, int V, int32_t token, int k, float *lp_p, int32_t *top_ids,
                  float *top_lp);

/**
 * OpenAI's logit adjustments, in place on @p logits[0..V), before sampling: each of the
 * @p n_bias pairs adds @p bias_val[i] to token @p bias_ids[i] (ids outside [0, V) are
 * skipped); then a token that occurs c > 0 times in @p gen[0..n_gen) (the tokens generated
 * so far) loses c * @p frequency + @p presence. @p counts is scratch of V zeros, left zero.
 */
void tpm_sampler_adjust(float *logits, int V, const int32_t *bias_ids, const float *bias_val,
                        int n_bias, const int32_t *gen, int n_gen, float presence, float frequency,
                        int32_t *counts);

#endif /* TPM_CORE_SAMPLER_H */
