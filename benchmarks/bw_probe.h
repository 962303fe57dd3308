/* SPDX-License-Identifier: MIT */
/*
 * bw_probe.h: the streaming-read probe of the serving benchmarks (bench_qgemv.c,
 * bench_serve.c), header-only. One pass over a float buffer with four independent vector
 * sums, so that the loads and not the add latency set the pace; AVX-512 where the CPU has
 * it, else AVX2, else plain C (the project builds with portable flags, so the vector bodies
 * carry target attributes). The OpenMP threads of the calling rank split the buffer.
 */
#ifndef TPM_BENCH_BW_PROBE_H
#define TPM_BENCH_BW_PROBE_H

#include <omp.h>
#include <stddef.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

__attribute__((target("avx512f"))) static inline float bw_sum_avx512(const float *p, size_t n)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;

    for (size_t i = 0; i + 64 <= n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_loadu_ps(p + i));
        a1 = _mm512_add_ps(a1, _mm512_loadu_ps(p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_loadu_ps(p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_loadu_ps(p + i + 48));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

__attribute__((target("avx2"))) static inline float bw_sum_avx2(const float *p, size_t n)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    float  t[8], s = 0.0f;

    for (size_t i = 0; i + 32 <= n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
    }
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (int i = 0; i < 8; i++) {
        s += t[i];
    }
    return s;
}
#endif

/* the sum of p[0 .. n) rounded down to a multiple of 64 floats */
static inline float bw_sum(const float *p, size_t n)
{
    float s = 0.0f;

#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx512f")) {
        return bw_sum_avx512(p, n);
    }
    if (__builtin_cpu_supports("avx2")) {
        return bw_sum_avx2(p, n);
    }
#endif
    for (size_t i = 0; i < n / 64 * 64; i++) {
        s += p[i];
    }
    return s;
}

/* one pass over buf (n floats) with the OpenMP threads; returns the sum (keep it alive) */
static inline double bw_pass(const float *buf, size_t n)
{
    double s = 0.0;

    n = n / 4096 * 4096;
#pragma omp parallel reduction(+ : s)
    {
        const size_t nt = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
        const size_t per = n / 4096 / nt * 4096, lo = id * per;
        const size_t hi  = id + 1 == nt ? n : lo + per;
        s += bw_sum(buf + lo, hi - lo);
    }
    return s;
}

#endif /* TPM_BENCH_BW_PROBE_H */
