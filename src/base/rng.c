/* SPDX-License-Identifier: MIT */
/* rng.c: counter-based RNG (splitmix64-style mixing). */
#include "base/rng.h"

#include <math.h>

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t tpm_rng_u64(uint64_t seed, uint64_t stream, uint64_t index)
{
    uint64_t k = mix64(seed + 0x9e3779b97f4a7c15ULL);

    k = mix64(k ^ (stream * 0xd1b54a32d192ed03ULL + 0x632be59bd9b4e019ULL));
    return mix64(k ^ (index * 0x9e3779b97f4a7c15ULL + 0x2545f4914f6cdd1dULL));
}

float tpm_rng_uniform(uint64_t seed, uint64_t stream, uint64_t index)
{
    return (float)(tpm_rng_u64(seed, stream, index) >> 40) * (1.0f / 16777216.0f);
}

float tpm_rng_normal(uint64_t seed, uint64_t stream, uint64_t index)
{
    uint64_t r  = tpm_rng_u64(seed, stream, index);
    double   u1 = ((double)(r >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double   u2 = (double)(tpm_rng_u64(seed ^ 0x5851f42d4c957f2dULL, stream, index) >> 11) *
                (1.0 / 9007199254740992.0);

    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
