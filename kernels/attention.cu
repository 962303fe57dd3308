/* SPDX-License-Identifier: MIT */
/*
 * attention.cu: causal multi-head attention, flash-style, in fp32 on the CUDA cores, plus
 * the KV-cache variant used for serving.
 *
 * Layout (backend.h): qkv (B, T, 3C) grouped by head: head h's q, k and v are the columns
 * [h*3*hs, h*3*hs + hs), the next hs, the next hs. out (B, T, C) with head h at columns
 * [h*hs, (h+1)*hs). lse (B, NH, T). Nothing of size T*T is ever stored.
 *
 * Forward: a block of 4 warps owns 16 query rows (4 per warp) of one (b, h) and streams the
 * causal key prefix through shared memory in tiles of 32 keys. In a tile each lane owns one
 * key for the dot products (the warp's 4 query rows reuse every K value it loads), then the
 * online softmax rescales the running output, and for the P V product the lanes own head
 * dimensions (hs / 32 per lane, the DPL template parameter) while the tile's probabilities
 * are broadcast with shuffles. K rows are padded to hs + 1 floats so that 32 lanes reading
 * 32 different keys hit 32 different banks.
 *
 * Backward (FlashAttention-2's recomputation, deterministic, no atomics): D = rowsum(dO * O)
 * first, then one kernel for dQ (blocks over query rows, streaming keys, like the forward)
 * and one for dK and dV (blocks over key rows, streaming the queries that see them); every
 * output element is written by exactly one thread, after a fixed-order sum.
 *
 * expf is the accurate one (no fast math); the normalised error against the CPU backend
 * is at the fp32 rounding level (~1e-6), only the summation order differs.
 */
#include "common.cuh"

#define ATT_WARPS        4
#define ATT_RPW          4                     /* rows (queries or keys) per warp */
#define ATT_ROWS         (ATT_WARPS * ATT_RPW) /* rows per block */
#define ATT_TILE         TPM_WARP              /* streamed tile: one key (or query) per lane */
#define ATT_THREADS      (ATT_WARPS * TPM_WARP)
#define ATT_SMEM_DEFAULT 49152 /* dynamic shared memory without opting in */

/* ---- forward ------------------------------------------------------------------------------ */

template <int DPL>
__global__ void __launch_bounds__(ATT_THREADS)
    attn_fwd_kernel(float *out, float *lse, const float *qkv, int T, int C, int NH, int hs,
                    float scale)
{
    extern __shared__ float smem[];
    const int               ldk = hs + 1;
    float                  *sQ  = smem;                /* (ATT_ROWS, hs) */
    float                  *sK  = sQ + ATT_ROWS * hs;  /* (ATT_TILE, hs + 1) */
    float                  *sV  = sK + ATT_TILE * ldk; /* (ATT_TILE, hs) */
    const int               b = blockIdx.x / NH, h = blockIdx.x % NH;
    /* the longest causal rows first: they finish last otherwise */
    const int    i0   = (gridDim.y - 1 - blockIdx.y) * ATT_ROWS;
    const int    warp = threadIdx.x / TPM_WARP, lane = threadIdx.x % TPM_WARP;
    const size_t C3   = 3 * (size_t)C;
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * 3 * hs;
    const int    last = min(i0 + ATT_ROWS, T) - 1; /* last query row of the block */
    float        m[ATT_RPW], l[ATT_RPW], o[ATT_RPW][DPL];

    for (int idx = threadIdx.x; idx < ATT_ROWS * hs; idx += blockDim.x) {
        const int i = i0 + idx / hs;
        sQ[idx]     = i < T ? base[(size_t)i * C3 + idx % hs] : 0.0f;
    }
    for (int r = 0; r < ATT_RPW; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        for (int dd = 0; dd < DPL; dd++) {
            o[r][dd] = 0.0f;
        }
    }

    for (int j0 = 0; j0 <= last; j0 += ATT_TILE) {
        const int jn = min(ATT_TILE, last + 1 - j0); /* keys of this tile any row can see */
        float     s[ATT_RPW], p[ATT_RPW];

        __syncthreads(); /* the previous tile has been consumed */
        for (int idx = threadIdx.x; idx < ATT_TILE * hs; idx += blockDim.x) {
            const int jj = idx / hs, d = idx % hs, j = j0 + jj;
            float     kv = 0.0f, vv = 0.0f;
            if (j < T) {
                kv = base[(size_t)j * C3 + hs + d];
                vv = base[(size_t)j * C3 + 2 * hs + d];
            }
            sK[jj * ldk + d] = kv;
            sV[jj * hs + d]  = vv;
        }
        __syncthreads();

        for (int r = 0; r < ATT_RPW; r++) {
            s[r] = 0.0f;
        }
        for (int d = 0; d < hs; d++) {
            const float kd = sK[lane * ldk + d];
            for (int r = 0; r < ATT_RPW; r++) {
                s[r] += sQ[(warp * ATT_RPW + r) * hs + d] * kd;
            }
        }
        for (int r = 0; r < ATT_RPW; r++) {
            const int   i     = i0 + warp * ATT_RPW + r;
            const int   j     = j0 + lane;
            const bool  valid = i < T && j <= i;
            const float sv    = valid ? scale * s[r] : -INFINITY;
            const float tmax  = tpm_warp_max(sv);
            float       mnew, corr;

            if (tmax == -INFINITY) { /* warp-uniform: no key of this tile for row i */
                p[r] = 0.0f;
                continue;
            }
            mnew = fmaxf(m[r], tmax);
            p[r] = valid ? expf(sv - mnew) : 0.0f;
            corr = expf(m[r] - mnew); /* 0 on the first tile (m = -inf) */
            l[r] = l[r] * corr + tpm_warp_sum(p[r]);
            m[r] = mnew;
            for (int dd = 0; dd < DPL; dd++) {
                o[r][dd] *= corr;
            }
        }
        for (int jj = 0; jj < jn; jj++) {
            float v[DPL];
            for (int dd = 0; dd < DPL; dd++) {
                const int d = lane + dd * TPM_WARP;
                v[dd]       = d < hs ? sV[jj * hs + d] : 0.0f;
            }
            for (int r = 0; r < ATT_RPW; r++) {
                const float pj = __shfl_sync(TPM_FULL_MASK, p[r], jj);
                for (int dd = 0; dd < DPL; dd++) {
                    o[r][dd] += pj * v[dd];
                }
            }
        }
    }

    for (int r = 0; r < ATT_RPW; r++) {
        const int i = i0 + warp * ATT_RPW + r;
        float    *orow;
        if (i >= T) {
            continue;
        }
        orow = out + ((size_t)b * T + i) * C + (size_t)h * hs;
        for (int dd = 0; dd < DPL; dd++) {
            const int d = lane + dd * TPM_WARP;
            if (d < hs) {
                orow[d] = o[r][dd] / l[r];
            }
        }
        if (lane == 0) {
            lse[((size_t)b * NH + h) * T + i] = m[r] + logf(l[r]);
        }
    }
}

/* ---- backward ----------------------------------------------------------------------------- */

/* D[b, h, i] = sum_d dout[b, i, h*hs + d] * out[b, i, h*hs + d]; one warp per row */
__global__ void attn_bwd_d_kernel(float *D, const float *dout, const float *out, int B, int T,
                                  int C, int NH, int hs)
{
    const size_t row  = (size_t)blockIdx.x * (blockDim.x / TPM_WARP) + threadIdx.x / TPM_WARP;
    const int    lane = threadIdx.x % TPM_WARP;
    size_t       bh, i, off;
    float        acc = 0.0f;

    if (row >= (size_t)B * NH * T) {
        return;
    }
    bh  = row / (size_t)T;
    i   = row % (size_t)T;
    off = ((bh / NH) * T + i) * (size_t)C + (bh % NH) * (size_t)hs;
    for (int d = lane; d < hs; d += TPM_WARP) {
        acc += dout[off + d] * out[off + d];
    }
    acc = tpm_warp_sum(acc);
    if (lane == 0) {
        D[row] = acc;
    }
}

/*
 * dQ for 16 query rows per block, streaming the keys 0 .. last row:
 * P = exp(scale q.k - lse), dP = dO.v, dS = P (dP - D), dQ = scale sum_j dS_j k_j.
 */
template <int DPL>
__global__ void __launch_bounds__(ATT_THREADS)
    attn_bwd_dq_kernel(float *dqkv, const float *dout, const float *qkv, const float *lse,
                       const float *D, int T, int C, int NH, int hs, float scale)
{
    extern __shared__ float smem[];
    const int               ldk = hs + 1;
    float                  *sQ  = smem;                /* (ATT_ROWS, hs) */
    float                  *sdO = sQ + ATT_ROWS * hs;  /* (ATT_ROWS, hs) */
    float                  *sK  = sdO + ATT_ROWS * hs; /* (ATT_TILE, hs + 1) */
    float                  *sV  = sK + ATT_TILE * ldk; /* (ATT_TILE, hs + 1) */
    const int               b = blockIdx.x / NH, h = blockIdx.x % NH;
    const int               i0   = (gridDim.y - 1 - blockIdx.y) * ATT_ROWS; /* longest first */
    const int               warp = threadIdx.x / TPM_WARP, lane = threadIdx.x % TPM_WARP;
    const size_t            C3   = 3 * (size_t)C;
    const float            *base = qkv + (size_t)b * T * C3 + (size_t)h * 3 * hs;
    const float            *dob  = dout + (size_t)b * T * C + (size_t)h * hs;
    const float            *lrow = lse + ((size_t)b * NH + h) * T;
    const float            *drow = D + ((size_t)b * NH + h) * T;
    const int               last = min(i0 + ATT_ROWS, T) - 1;
    float                   lse_r[ATT_RPW], d_r[ATT_RPW], dq[ATT_RPW][DPL];

    for (int idx = threadIdx.x; idx < ATT_ROWS * hs; idx += blockDim.x) {
        const int i = i0 + idx / hs, d = idx % hs;
        sQ[idx]  = i < T ? base[(size_t)i * C3 + d] : 0.0f;
        sdO[idx] = i < T ? dob[(size_t)i * C + d] : 0.0f;
    }
    for (int r = 0; r < ATT_RPW; r++) {
        const int i = i0 + warp * ATT_RPW + r;
        lse_r[r]    = i < T ? lrow[i] : 0.0f;
        d_r[r]      = i < T ? drow[i] : 0.0f;
        for (int dd = 0; dd < DPL; dd++) {
            dq[r][dd] = 0.0f;
        }
    }

    for (int j0 = 0; j0 <= last; j0 += ATT_TILE) {
        const int jn = min(ATT_TILE, last + 1 - j0);
        float     s[ATT_RPW], dp[ATT_RPW], ds[ATT_RPW];

        __syncthreads();
        for (int idx = threadIdx.x; idx < ATT_TILE * hs; idx += blockDim.x) {
            const int jj = idx / hs, d = idx % hs, j = j0 + jj;
            float     kv = 0.0f, vv = 0.0f;
            if (j < T) {
                kv = base[(size_t)j * C3 + hs + d];
                vv = base[(size_t)j * C3 + 2 * hs + d];
            }
            sK[jj * ldk + d] = kv;
            sV[jj * ldk + d] = vv;
        }
        __syncthreads();

        for (int r = 0; r < ATT_RPW; r++) {
            s[r]  = 0.0f;
            dp[r] = 0.0f;
        }
        for (int d = 0; d < hs; d++) {
            const float kd = sK[lane * ldk + d], vd = sV[lane * ldk + d];
            for (int r = 0; r < ATT_RPW; r++) {
                s[r] += sQ[(warp * ATT_RPW + r) * hs + d] * kd;
                dp[r] += sdO[(warp * ATT_RPW + r) * hs + d] * vd;
            }
        }
        for (int r = 0; r < ATT_RPW; r++) {
            const int   i     = i0 + warp * ATT_RPW + r;
            const bool  valid = i < T && j0 + lane <= i;
            const float p     = valid ? expf(scale * s[r] - lse_r[r]) : 0.0f;
            ds[r]             = p * (dp[r] - d_r[r]);
        }
        for (int jj = 0; jj < jn; jj++) {
            float k[DPL];
            for (int dd = 0; dd < DPL; dd++) {
                const int d = lane + dd * TPM_WARP;
                k[dd]       = d < hs ? sK[jj * ldk + d] : 0.0f;
            }
            for (int r = 0; r < ATT_RPW; r++) {
                const float dsj = __shfl_sync(TPM_FULL_MASK, ds[r], jj);
                for (int dd = 0; dd < DPL; dd++) {
                    dq[r][dd] += dsj * k[dd];
                }
            }
        }
    }

    for (int r = 0; r < ATT_RPW; r++) {
        const int i = i0 + warp * ATT_RPW + r;
        float    *dqrow;
        if (i >= T) {
            continue;
        }
        dqrow = dqkv + ((size_t)b * T + i) * C3 + (size_t)h * 3 * hs;
        for (int dd = 0; dd < DPL; dd++) {
            const int d = lane + dd * TPM_WARP;
            if (d < hs) {
                dqrow[d] += scale * dq[r][dd];
            }
        }
    }
}

/*
 * dK and dV for 16 key rows per block, streaming the queries that see them (rows >= key):
 * dV_j = sum_i P_ij dO_i, dK_j = scale sum_i dS_ij q_i. Lanes own queries for the dot
 * products and head dimensions for the sums, as in the forward pass with roles swapped.
 */
template <int DPL>
__global__ void __launch_bounds__(ATT_THREADS)
    attn_bwd_dkdv_kernel(float *dqkv, const float *dout, const float *qkv, const float *lse,
                         const float *D, int T, int C, int NH, int hs, float scale)
{
    extern __shared__ float smem[];
    const int               ldq = hs + 1;
    float                  *sK  = smem;                /* (ATT_ROWS, hs) */
    float                  *sV  = sK + ATT_ROWS * hs;  /* (ATT_ROWS, hs) */
    float                  *sQ  = sV + ATT_ROWS * hs;  /* (ATT_TILE, hs + 1) */
    float                  *sdO = sQ + ATT_TILE * ldq; /* (ATT_TILE, hs + 1) */
    const int               b = blockIdx.x / NH, h = blockIdx.x % NH;
    const int               j0   = blockIdx.y * ATT_ROWS; /* early keys have the most queries */
    const int               warp = threadIdx.x / TPM_WARP, lane = threadIdx.x % TPM_WARP;
    const size_t            C3   = 3 * (size_t)C;
    const float            *base = qkv + (size_t)b * T * C3 + (size_t)h * 3 * hs;
    const float            *dob  = dout + (size_t)b * T * C + (size_t)h * hs;
    const float            *lrow = lse + ((size_t)b * NH + h) * T;
    const float            *drow = D + ((size_t)b * NH + h) * T;
    float                   dk[ATT_RPW][DPL], dv[ATT_RPW][DPL];

    for (int idx = threadIdx.x; idx < ATT_ROWS * hs; idx += blockDim.x) {
        const int j = j0 + idx / hs, d = idx % hs;
        sK[idx] = j < T ? base[(size_t)j * C3 + hs + d] : 0.0f;
        sV[idx] = j < T ? base[(size_t)j * C3 + 2 * hs + d] : 0.0f;
    }
    for (int r = 0; r < ATT_RPW; r++) {
        for (int dd = 0; dd < DPL; dd++) {
            dk[r][dd] = 0.0f;
            dv[r][dd] = 0.0f;
        }
    }

    /* the first query tile that can see key j0 */
    for (int q0 = j0 / ATT_TILE * ATT_TILE; q0 < T; q0 += ATT_TILE) {
        const int i  = q0 + lane;
        const int in = min(ATT_TILE, T - q0);
        float     lse_i, d_i, s[ATT_RPW], dp[ATT_RPW], p[ATT_RPW], ds[ATT_RPW];

        __syncthreads();
        for (int idx = threadIdx.x; idx < ATT_TILE * hs; idx += blockDim.x) {
            const int ii = idx / hs, d = idx % hs, iq = q0 + ii;
            sQ[ii * ldq + d]  = iq < T ? base[(size_t)iq * C3 + d] : 0.0f;
            sdO[ii * ldq + d] = iq < T ? dob[(size_t)iq * C + d] : 0.0f;
        }
        __syncthreads();

        lse_i = i < T ? lrow[i] : 0.0f;
        d_i   = i < T ? drow[i] : 0.0f;
        for (int r = 0; r < ATT_RPW; r++) {
            s[r]  = 0.0f;
            dp[r] = 0.0f;
        }
        for (int d = 0; d < hs; d++) {
            const float qd = sQ[lane * ldq + d], od = sdO[lane * ldq + d];
            for (int r = 0; r < ATT_RPW; r++) {
                s[r] += sK[(warp * ATT_RPW + r) * hs + d] * qd;
                dp[r] += sV[(warp * ATT_RPW + r) * hs + d] * od;
            }
        }
        for (int r = 0; r < ATT_RPW; r++) {
            const int  j     = j0 + warp * ATT_RPW + r;
            const bool valid = i < T && j < T && i >= j;
            p[r]             = valid ? expf(scale * s[r] - lse_i) : 0.0f;
            ds[r]            = p[r] * (dp[r] - d_i);
        }
        for (int ii = 0; ii < in; ii++) {
            float q[DPL], od[DPL];
            for (int dd = 0; dd < DPL; dd++) {
                const int d = lane + dd * TPM_WARP;
                q[dd]       = d < hs ? sQ[ii * ldq + d] : 0.0f;
                od[dd]      = d < hs ? sdO[ii * ldq + d] : 0.0f;
            }
            for (int r = 0; r < ATT_RPW; r++) {
                const float pi  = __shfl_sync(TPM_FULL_MASK, p[r], ii);
                const float dsi = __shfl_sync(TPM_FULL_MASK, ds[r], ii);
                for (int dd = 0; dd < DPL; dd++) {
                    dv[r][dd] += pi * od[dd];
                    dk[r][dd] += dsi * q[dd];
                }
            }
        }
    }

    for (int r = 0; r < ATT_RPW; r++) {
        const int j = j0 + warp * ATT_RPW + r;
        float    *row;
        if (j >= T) {
            continue;
        }
        row = dqkv + ((size_t)b * T + j) * C3 + (size_t)h * 3 * hs;
        for (int dd = 0; dd < DPL; dd++) {
            const int d = lane + dd * TPM_WARP;
            if (d < hs) {
                row[hs + d] += scale * dk[r][dd];
                row[2 * hs + d] += dv[r][dd];
            }
        }
    }
}

/* ---- KV cache (serving) ------------------------------------------------------------------- */

/* k and v of token i to row (slot[i], pos[i]) of the caches; a bad slot/position is flagged */
__global__ void kv_store_kernel(float *kcache, float *vcache, const float *qkv, const int32_t *slot,
                                const int32_t *pos, int N, int C, int hs, int ctx, int *err)
{
    const size_t total = (size_t)N * C;

    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const size_t  i = idx / (size_t)C;
        const int     c = (int)(idx % (size_t)C);
        const int32_t s = slot[i], p = pos[i];
        const float  *src;
        size_t        row;

        if (s < 0 || p < 0 || p >= ctx) {
            if (c == 0) {
                atomicOr(err, TPM_CUDA_ERR_KV);
            }
            continue;
        }
        src             = qkv + i * 3 * (size_t)C + (size_t)(c / hs) * 3 * hs + c % hs;
        row             = ((size_t)s * ctx + p) * (size_t)C;
        kcache[row + c] = src[hs];
        vcache[row + c] = src[2 * hs];
    }
}

/*
 * One warp per (token, head): the token's q attends over its slot's rows 0 .. pos. Decode
 * has one query per head, so lanes own head dimensions throughout (coalesced cache reads)
 * and each score is a warp reduction; lane jj keeps the score of key jj of the tile.
 */
template <int DPL>
__global__ void __launch_bounds__(ATT_THREADS)
    kv_attend_kernel(float *out, const float *qkv, const float *kcache, const float *vcache,
                     const int32_t *slot, const int32_t *pos, int N, int C, int NH, int hs, int ctx,
                     float scale)
{
    const size_t gw   = (size_t)blockIdx.x * ATT_WARPS + threadIdx.x / TPM_WARP;
    const int    lane = threadIdx.x % TPM_WARP;
    size_t       i, base;
    int          h, s, p;
    float        q[DPL], o[DPL], m = -INFINITY, l = 0.0f;

    if (gw >= (size_t)N * NH) {
        return;
    }
    i = gw / NH;
    h = (int)(gw % NH);
    s = slot[i];
    p = pos[i];
    if (s < 0 || p < 0 || p >= ctx) {
        return; /* flagged by kv_store_kernel */
    }
    base = (size_t)s * ctx * C + (size_t)h * hs;
    for (int dd = 0; dd < DPL; dd++) {
        const int d = lane + dd * TPM_WARP;
        q[dd]       = d < hs ? qkv[i * 3 * (size_t)C + (size_t)h * 3 * hs + d] : 0.0f;
        o[dd]       = 0.0f;
    }
    for (int j0 = 0; j0 <= p; j0 += TPM_WARP) {
        const int jn   = min(TPM_WARP, p + 1 - j0);
        float     mine = -INFINITY, mnew, corr, pl;

        for (int jj = 0; jj < jn; jj++) {
            const float *kr   = kcache + base + (size_t)(j0 + jj) * C;
            float        part = 0.0f, sc;
            for (int dd = 0; dd < DPL; dd++) {
                const int d = lane + dd * TPM_WARP;
                if (d < hs) {
                    part += q[dd] * kr[d];
                }
            }
            sc = scale * tpm_warp_sum(part);
            if (lane == jj) {
                mine = sc;
            }
        }
        mnew = fmaxf(m, tpm_warp_max(mine));
        pl   = lane < jn ? expf(mine - mnew) : 0.0f;
        corr = expf(m - mnew);
        l    = l * corr + tpm_warp_sum(pl);
        m    = mnew;
        for (int dd = 0; dd < DPL; dd++) {
            o[dd] *= corr;
        }
        for (int jj = 0; jj < jn; jj++) {
            const float *vr = vcache + base + (size_t)(j0 + jj) * C;
            const float  pj = __shfl_sync(TPM_FULL_MASK, pl, jj);
            for (int dd = 0; dd < DPL; dd++) {
                const int d = lane + dd * TPM_WARP;
                if (d < hs) {
                    o[dd] += pj * vr[d];
                }
            }
        }
    }
    for (int dd = 0; dd < DPL; dd++) {
        const int d = lane + dd * TPM_WARP;
        if (d < hs) {
            out[i * (size_t)C + (size_t)h * hs + d] = o[dd] / l;
        }
    }
}

/* ---- launchers ---------------------------------------------------------------------------- */

/* head dimensions per lane, rounded up to a compiled variant: 1, 2, 4 or 8 (0: too large) */
static int attn_dpl(int hs)
{
    const int dpl = TPM_CEIL_DIV(hs, TPM_WARP);

    if (dpl <= 2) {
        return dpl < 1 ? 1 : dpl;
    }
    return dpl <= 4 ? 4 : (dpl <= 8 ? 8 : 0);
}

/* a kernel that needs more than the default 48 KiB of dynamic shared memory must opt in */
static tpm_status_t smem_opt_in(const void *kernel, size_t bytes)
{
    if (bytes <= ATT_SMEM_DEFAULT) {
        return TPM_OK;
    }
    return TPM_CUDA_CALL(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

template <int DPL>
static tpm_status_t attn_fwd_launch(float *out, float *lse, const float *qkv, int B, int T, int C,
                                    int NH, int hs, float scale, cudaStream_t st)
{
    const size_t smem =
        ((size_t)ATT_ROWS * hs + (size_t)ATT_TILE * (hs + 1) + (size_t)ATT_TILE * hs) *
        sizeof(float);
    dim3 grid(B * NH, TPM_CEIL_DIV(T, ATT_ROWS));

    TPM_CHECK(smem_opt_in((const void *)attn_fwd_kernel<DPL>, smem));
    attn_fwd_kernel<DPL><<<grid, ATT_THREADS, smem, st>>>(out, lse, qkv, T, C, NH, hs, scale);
    return TPM_LAUNCH_CHECK("attn_fwd_kernel");
}

template <int DPL>
static tpm_status_t attn_bwd_launch(float *dqkv, const float *dout, const float *qkv,
                                    const float *lse, const float *D, int B, int T, int C, int NH,
                                    int hs, float scale, cudaStream_t st)
{
    const size_t smem =
        (2 * (size_t)ATT_ROWS * hs + 2 * (size_t)ATT_TILE * (hs + 1)) * sizeof(float);
    dim3 grid(B * NH, TPM_CEIL_DIV(T, ATT_ROWS));

    TPM_CHECK(smem_opt_in((const void *)attn_bwd_dq_kernel<DPL>, smem));
    TPM_CHECK(smem_opt_in((const void *)attn_bwd_dkdv_kernel<DPL>, smem));
    attn_bwd_dq_kernel<DPL>
        <<<grid, ATT_THREADS, smem, st>>>(dqkv, dout, qkv, lse, D, T, C, NH, hs, scale);
    TPM_CHECK(TPM_LAUNCH_CHECK("attn_bwd_dq_kernel"));
    attn_bwd_dkdv_kernel<DPL>
        <<<grid, ATT_THREADS, smem, st>>>(dqkv, dout, qkv, lse, D, T, C, NH, hs, scale);
    return TPM_LAUNCH_CHECK("attn_bwd_dkdv_kernel");
}

template <int DPL>
static tpm_status_t kv_attend_launch(float *out, const float *qkv, const float *kcache,
                                     const float *vcache, const int32_t *slot, const int32_t *pos,
                                     int N, int C, int NH, int hs, int ctx, float scale,
                                     cudaStream_t st)
{
    const size_t warps = (size_t)N * NH;

    kv_attend_kernel<DPL><<<(unsigned)TPM_CEIL_DIV(warps, (size_t)ATT_WARPS), ATT_THREADS, 0, st>>>(
        out, qkv, kcache, vcache, slot, pos, N, C, NH, hs, ctx, scale);
    return TPM_LAUNCH_CHECK("kv_attend_kernel");
}

static tpm_status_t head_size(int C, int NH, int *hs_p, int *dpl_p)
{
    const int hs = C / NH;

    *hs_p  = hs;
    *dpl_p = attn_dpl(hs);
    if (*dpl_p == 0) {
        tpm_log_error("cuda attention: head size %d exceeds the kernels' limit of %d", hs,
                      TPM_CUDA_ATTN_MAX_HS);
        return TPM_ERR_UNSUPPORTED;
    }
    return TPM_OK;
}

/* grid (B * NH, T / 16): the y dimension is limited to 65535 blocks */
static tpm_status_t grid_fits(int B, int T, int NH)
{
    if (TPM_CEIL_DIV(T, ATT_ROWS) > 65535 || (long long)B * NH > 0x7fffffffLL) {
        tpm_log_error("cuda attention: B %d x NH %d x T %d exceeds the launch grid", B, NH, T);
        return TPM_ERR_UNSUPPORTED;
    }
    return TPM_OK;
}

#define ATT_DISPATCH(_dpl, _call)                                                                  \
    ((_dpl) == 1 ? _call<1> : (_dpl) == 2 ? _call<2> : (_dpl) == 4 ? _call<4> : _call<8>)

extern "C" tpm_status_t tpm_cuda_attention_fwd(float *out, float *lse, const float *qkv, int B,
                                               int T, int C, int NH, void *stream)
{
    int   hs, dpl;
    float scale;

    if (B <= 0 || T <= 0 || C <= 0) {
        return TPM_OK;
    }
    TPM_CHECK(head_size(C, NH, &hs, &dpl));
    TPM_CHECK(grid_fits(B, T, NH));
    scale = 1.0f / sqrtf((float)hs);
    return ATT_DISPATCH(dpl, attn_fwd_launch)(out, lse, qkv, B, T, C, NH, hs, scale,
                                              (cudaStream_t)stream);
}

extern "C" size_t tpm_cuda_attention_bwd_scratch_floats(int B, int T, int NH)
{
    return B > 0 && T > 0 && NH > 0 ? (size_t)B * (size_t)T * (size_t)NH : 0;
}

extern "C" tpm_status_t tpm_cuda_attention_bwd(float *dqkv, const float *dout, const float *qkv,
                                               const float *out, const float *lse, int B, int T,
                                               int C, int NH, float *scratch, void *stream)
{
    const int    rows_per_blk = 8;
    cudaStream_t st           = (cudaStream_t)stream;
    size_t       rows;
    int          hs, dpl;
    float        scale;

    if (B <= 0 || T <= 0 || C <= 0) {
        return TPM_OK;
    }
    TPM_CHECK(head_size(C, NH, &hs, &dpl));
    TPM_CHECK(grid_fits(B, T, NH));
    scale = 1.0f / sqrtf((float)hs);
    rows  = (size_t)B * NH * T;
    attn_bwd_d_kernel<<<(unsigned)TPM_CEIL_DIV(rows, (size_t)rows_per_blk), rows_per_blk * TPM_WARP,
                        0, st>>>(scratch, dout, out, B, T, C, NH, hs);
    TPM_CHECK(TPM_LAUNCH_CHECK("attn_bwd_d_kernel"));
    return ATT_DISPATCH(dpl, attn_bwd_launch)(dqkv, dout, qkv, lse, scratch, B, T, C, NH, hs, scale,
                                              st);
}

extern "C" tpm_status_t tpm_cuda_attention_kv(float *out, const float *qkv, float *kcache,
                                              float *vcache, const int32_t *slot,
                                              const int32_t *pos, int N, int C, int NH, int ctx,
                                              int *err, void *stream)
{
    cudaStream_t st = (cudaStream_t)stream;
    int          hs, dpl;
    float        scale;

    if (N <= 0 || C <= 0) {
        return TPM_OK;
    }
    TPM_CHECK(head_size(C, NH, &hs, &dpl));
    scale = 1.0f / sqrtf((float)hs);
    /* every k and v is stored first (stream order), so a prompt chunk attends to itself */
    kv_store_kernel<<<tpm_ew_blocks((size_t)N * C), TPM_EW_THREADS, 0, st>>>(
        kcache, vcache, qkv, slot, pos, N, C, hs, ctx, err);
    TPM_CHECK(TPM_LAUNCH_CHECK("kv_store_kernel"));
    return ATT_DISPATCH(dpl, kv_attend_launch)(out, qkv, kcache, vcache, slot, pos, N, C, NH, hs,
                                               ctx, scale, st);
}
