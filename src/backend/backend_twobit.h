/* SPDX-License-Identifier: MIT */
/*
 * backend_twobit.h: the 2-bit (ternary) gradient codec, CPU reference: pure
 * arithmetic that every backend's twobit ops reproduce and the compressed
 * exchange (compress/) sizes its buffers by. A device kernel (kernels/twobit.cu)
 * must produce the same bytes: the rules below are the specification, restated
 * with examples in docs/COMPRESSION.md. All arithmetic
 * is IEEE-754 binary32 with round-to-nearest-even, no flush-to-zero, no fast
 * math; the only binary64 operation is the exact comparison of the stochastic
 * rule.
 *
 * Chunk. n fp32 values are cut into nblk = ceil(n / B) blocks of B values (B a
 * multiple of 4). The last block is padded with zeros: padding values belong
 * to the block (they count in the scale) and always encode as code 0.
 *
 * Codes. 2 bits per value: 0b00 = 0, 0b01 = +s, 0b10 = -s; 0b11 is never
 * written and decodes as 0. Value j of a block is in byte j / 4 of the block's
 * codes, bits 2(j % 4) .. 2(j % 4) + 1 (value 0 in the two lowest bits).
 *
 * Wire layout of one chunk (tpm_twobit_chunk_bytes() bytes):
 *   nblk scales, each a bf16 (the top 16 bits of a binary32) as a little-endian
 *        uint16, block order;
 *   nblk * B / 4 code bytes, block order;
 *   0 to 3 zero bytes so the size is a multiple of 4 (chunks stay 4-byte aligned
 *        when an all-to-all buffer holds one chunk per rank back to back).
 *
 * Deterministic variant with error feedback (residual r, fp32 or bf16):
 *   x_i = g_i + r_i                     (fp32 add; r read as fp32)
 *   a = 0; for i = 0 .. B-1 in order: a = a + |x_i|   (fp32, sequential; padding adds 0)
 *   s = bf16_rne(a / (float)B)          (fp32 division, then round to nearest even bf16)
 *   t = 0.5f * s
 *   code_i = 0 if !(|x_i| > t) (ties at exactly t give 0), else the sign of x_i
 *   q_i = c_i * s  (c_i in {-1, 0, +1} as float)
 *   r_i = x_i - q_i (fp32 residual), or bf16_rne(x_i - q_i) (bf16 residual)
 * What holds: |x_i - q_i| <= s/2 for every value with |x_i| <= 3s/2; larger
 * values are clipped to s and the excess |x_i| - s stays in the residual.
 *
 * Unbiased stochastic variant (TernGrad-style, no residual):
 *   s = bf16_up(max_i |x_i|)            (round toward +inf, so |x_i| <= s)
 *   k_i = tpm_rng_u64(key, stream, index0 + i) >> 40   (a 24-bit integer)
 *   code_i = sign of x_i if (double)k_i * (double)s < (double)|x_i| * 2^24, else 0
 * Both products are exact in binary64, so P(code_i != 0) = ceil(2^24 |x_i| / s)
 * / 2^24 exactly: E[q_i] = x_i + e with 0 <= e * sign(x_i) < 2^-24 s.
 *
 * Non-finite input makes the block's scale non-finite; decoding multiplies the
 * code by the scale (0 * NaN = NaN), so NaN/Inf gradients reach the owner and
 * the loss as they would without compression.
 */
#ifndef TPM_BACKEND_TWOBIT_H
#define TPM_BACKEND_TWOBIT_H

#include <stddef.h>
#include <stdint.h>

#include "base/bf16.h"
#include "base/status.h"

#define TPM_TWOBIT_CODE_ZERO 0x0u
#define TPM_TWOBIT_CODE_POS  0x1u
#define TPM_TWOBIT_CODE_NEG  0x2u

typedef enum {
    TPM_TWOBIT_EF_FP32 = 0, /* deterministic, fp32 error-feedback residual */
    TPM_TWOBIT_EF_BF16,     /* deterministic, bf16 error-feedback residual */
    TPM_TWOBIT_STOCHASTIC,  /* unbiased stochastic ternary, no residual */
} tpm_twobit_mode_t;

/** Blocks in a chunk of @p n values: ceil(n / B). */
size_t tpm_twobit_nblocks(size_t n, int B);

/** Bytes of one encoded chunk of @p n values (scales, codes, padding to 4). */
size_t tpm_twobit_chunk_bytes(size_t n, int B);

/** 1 if @p B is a usable block size (a positive multiple of 4), else 0. */
int tpm_twobit_block_ok(int B);

/**
 * Encode @p n values @p g into @p chunk (tpm_twobit_chunk_bytes(n, B) bytes,
 * every byte written). @p residual holds n values (float * for EF_FP32,
 * uint16_t * bf16 bits for EF_BF16), is added to g and replaced by the new
 * error; it is ignored (may be NULL) for STOCHASTIC, which draws value i from
 * tpm_rng_u64(@p key, @p stream, @p index0 + i) (ignored by the other modes).
 */
void tpm_twobit_encode(tpm_twobit_mode_t mode, int B, const float *g, size_t n, void *residual,
                       uint64_t key, uint64_t stream, uint64_t index0, uint8_t *chunk);

/**
 * acc[i] = acc[i] + c_i * s_b for the n real values of a chunk (fp32: each
 * decoded value is exact, the add rounds once). Summing the chunks of ranks
 * 0..N-1 in that order into a zeroed buffer is the owner's reduction.
 */
void tpm_twobit_decode_add(int B, const uint8_t *chunk, size_t n, float *acc);

#endif /* TPM_BACKEND_TWOBIT_H */
