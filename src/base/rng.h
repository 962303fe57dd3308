/* SPDX-License-Identifier: MIT */
/*
 * rng.h: counter-based random numbers. A value depends only on (seed, stream,
 * index), never on how many values were drawn before, so every rank can draw
 * exactly the numbers of its own shard and the result is independent of the
 * rank count (parameter init, data order, stochastic rounding).
 */
#ifndef TPM_BASE_RNG_H
#define TPM_BASE_RNG_H

#include <stdint.h>

/** 64-bit mix of (seed, stream, index) (splitmix64 finaliser over a combined key). */
uint64_t tpm_rng_u64(uint64_t seed, uint64_t stream, uint64_t index);
/** Uniform in [0, 1) with 24 random bits. */
float tpm_rng_uniform(uint64_t seed, uint64_t stream, uint64_t index);
/** Standard normal (Box-Muller on two counter draws). */
float tpm_rng_normal(uint64_t seed, uint64_t stream, uint64_t index);

#endif /* TPM_BASE_RNG_H */
