/* SPDX-License-Identifier: MIT */
/*
 * test_model_tp.c: the tensor-parallel partition (pure arithmetic) against the shard rule,
 * and the serving forward pass at one rank (through a one-rank stand-in for the comm
 * layer, so no MPI is needed) against the training forward pass. Multi-rank runs are
 * tests/mpi/test_serve_tp.c under mpirun.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "comm/comm.h"
#include "core/model.h"
#include "core/model_tp.h"
#include "zero3/shard.h"

TestSuite(model_tp, .timeout = 60);

static tpm_model_config_t config(int L, int C, int NH, int V, int maxT)
{
    tpm_model_config_t c = {.L = L, .C = C, .NH = NH, .V = V, .maxT = maxT};

    cr_assert_eq(tpm_model_config_finish(&c), TPM_OK);
    return c;
}

Test(model_tp, when_the_ranks_divide_the_heads_every_slice_is_the_training_shard)
{
    const tpm_model_config_t cfgs[] = {config(12, 768, 12, 50257, 1024), config(2, 64, 4, 500, 64)};

    for (size_t k = 0; k < 2; k++) {
        const tpm_model_config_t *c  = &cfgs[k];
        int64_t                   hs = c->C / c->NH;

        for (int M = 1; M <= c->NH; M++) {
            if (c->NH % M != 0) {
                continue;
            }
            for (int r = 0; r < M; r++) {
                tpm_tp_part_t p;
                int64_t       row0, nrows;

                tpm_tp_partition(c, M, r, &p);
                tpm_split_rows(3 * (int64_t)c->C, M, r, &row0, &nrows);
                cr_expect_eq(3 * hs * p.h0, row0, "qkv start, M=%d r=%d", M, r);
                cr_expect_eq(3 * hs * p.nh, nrows, "qkv rows, M=%d r=%d", M, r);
                tpm_split_rows(c->C, M, r, &row0, &nrows);
                cr_expect_eq(hs * p.h0, row0, "attproj start, M=%d r=%d", M, r);
                cr_expect_eq(hs * p.nh, nrows, "attproj rows, M=%d r=%d", M, r);
                tpm_split_rows(4 * (int64_t)c->C, M, r, &row0, &nrows);
                cr_expect(p.f0 == row0 && p.nf == nrows, "fc rows, M=%d r=%d", M, r);
                tpm_split_rows(c->Vp, M, r, &row0, &nrows);
                cr_expect(p.v0 == row0 && p.nv == nrows, "wte rows, M=%d r=%d", M, r);
            }
        }
    }
}

Test(model_tp, other_rank_counts_keep_heads_whole_and_cover_every_row_once)
{
    const tpm_model_config_t c = config(2, 64, 4, 500, 64);

    for (int M = 1; M <= 9; M++) {
        int     h = 0, nmin = c.NH, nmax = 0;
        int64_t f = 0, v = 0;

        for (int r = 0; r < M; r++) {
            tpm_tp_part_t p;

            tpm_tp_partition(&c, M, r, &p);
            cr_expect_eq(p.h0, h, "heads contiguous, M=%d r=%d", M, r);
            cr_expect_eq(p.f0, f, "fc rows contiguous, M=%d r=%d", M, r);
            cr_expect_eq(p.v0, v, "wte rows contiguous, M=%d r=%d", M, r);
            cr_expect(p.nv <= p.v_stride);
            h += p.nh, f += p.nf, v += p.nv;
            nmin = p.nh < nmin ? p.nh : nmin;
            nmax = p.nh > nmax ? p.nh : nmax;
        }
        cr_expect_eq(h, c.NH, "M=%d", M);
        cr_expect_eq(f, 4 * c.C, "M=%d", M);
        cr_expect_eq(v, c.Vp, "M=%d", M);
        cr_expect(nmax - nmin <= 1, "M=%d: heads %d..%d per rank", M, nmin, nmax);
    }
}

/* ---- one rank: the comm layer's collectives are copies ---------------------------------- */

static tpm_status_t one_all_gather(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                   tpm_dtype_t dt, tpm_comm_req_t *req)
{
    (void)c, (void)req;
    memmove(recv, send, count * tpm_dtype_size(dt));
    return TPM_OK;
}

static tpm_status_t one_all_reduce(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                   tpm_dtype_t dt, tpm_redop_t op)
{
    (void)c, (void)op;
    memmove(recv, send, count * tpm_dtype_size(dt));
    return TPM_OK;
}

static const tpm_comm_ops_t one_ops = {
    .name       = "one",
    .all_gather = one_all_gather,
    .all_reduce = one_all_reduce,
};

Test(model_tp, at_one_rank_the_serving_forward_gives_the_training_logits)
{
    const tpm_model_config_t c    = config(2, 48, 3, 300, 40);
    const int                T    = 37;
    tpm_comm_t               comm = {.ops = &one_ops, .rank = 0, .size = 1};
    tpm_backend_t           *be;
    tpm_tp_model_t          *m;
    tpm_acts_t              *a;
    tpm_group_view_t         v[3];
    tpm_param_desc_t         d[TPM_GROUP_MAX_NT];
    int32_t                  tok[40], slot[40], pos[40], rows[40];
    const float             *lg;
    float                    loss;
    double                   emax = 0.0, rmax = 0.0;

    cr_assert_eq(tpm_backend_create("cpu", 1, &be), TPM_OK);
    cr_assert_eq(tpm_tp_create(be, &comm, &c, 2, c.maxT, 40, 40, &m), TPM_OK);
    cr_assert_eq(tpm_tp_init_params(m, 5), TPM_OK);
    /* at one rank every slice is the whole tensor: the training views point at them */
    for (int g = 0; g <= c.L; g++) {
        int nt = tpm_model_group_desc(&c, g, d);

        for (int t = 0; t < nt; t++) {
            cr_assert_eq(tpm_tp_slice(m, g, t)->nrows, d[t].rows);
            v[g].t[t] = tpm_tp_slice(m, g, t)->data;
        }
    }
    for (int i = 0; i < T; i++) {
        tok[i] = (i * 37 + 11) % c.V, slot[i] = 1, pos[i] = i, rows[i] = i;
    }
    cr_assert_eq(tpm_tp_forward(m, T, tok, slot, pos, T, rows, &lg), TPM_OK);
    cr_assert_eq(tpm_acts_create(be, &c, 1, T, &a), TPM_OK);
    cr_assert_eq(tpm_model_set_batch(be, a, tok, NULL), TPM_OK);
    cr_assert_eq(tpm_model_embed_fwd(be, &c, &v[c.L], a), TPM_OK);
    for (int l = 0; l < c.L; l++) {
        cr_assert_eq(tpm_model_block_fwd(be, &c, l, &v[l], a), TPM_OK);
    }
    cr_assert_eq(tpm_model_head_fwd_bwd(be, &c, &v[c.L], NULL, 0.0f, a, &loss), TPM_OK);
    for (int i = 0; i < T; i++) {
        for (int j = 0; j < c.V; j++) {
            double ref = a->logits[(size_t)i * c.Vp + j], got = lg[(size_t)i * c.Vp + j];

            cr_assert(isfinite(got));
            emax = fmax(emax, fabs(got - ref));
            rmax = fmax(rmax, fabs(ref));
        }
    }
    cr_expect(emax <= 1e-5 * rmax, "normalised logit error %.3g", emax / rmax);
    /* the forward pass rejects what the model cannot hold */
    tok[0] = c.V;
    cr_expect_eq(tpm_tp_forward(m, 1, tok, slot, pos, 1, rows, &lg), TPM_ERR_INVALID_ARG);
    tok[0] = 0, pos[0] = c.maxT;
    cr_expect_eq(tpm_tp_forward(m, 1, tok, slot, pos, 1, rows, &lg), TPM_ERR_INVALID_ARG);
    pos[0] = 0, slot[0] = 2;
    cr_expect_eq(tpm_tp_forward(m, 1, tok, slot, pos, 1, rows, &lg), TPM_ERR_INVALID_ARG);
    tpm_acts_destroy(be, a);
    tpm_tp_destroy(m);
    tpm_backend_destroy(be);
}

/* normalised max difference of the first V logits of n rows */
static double logit_err(const float *got, const float *ref, int n, const tpm_model_config_t *c)
{
    double emax = 0.0, rmax = 0.0;

    for (int i = 0; i < n; i++) {
        for (int j = 0; j < c->V; j++) {
            const double g = got[(size_t)i * c->Vp + j], r = ref[(size_t)i * c->Vp + j];
            cr_assert(isfinite(g));
            emax = fmax(emax, fabs(g - r));
            rmax = fmax(rmax, fabs(r));
        }
    }
    return emax / rmax;
}

/*
 * Serving formats: a bf16 / int8 model computes what an fp32 model holding its widened
 * weights computes (exactly the same products for bf16; for int8 the decode path also
 * quantizes the activations), holds far fewer weight bytes, and stays close to the fp32
 * model it was made from.
 */
Test(model_tp, serving_formats_compute_the_widened_model)
{
    const tpm_model_config_t c    = config(2, 64, 4, 300, 40);
    const int                T    = 37; /* a prefill of more than 16 rows, then one decode */
    tpm_comm_t               comm = {.ops = &one_ops, .rank = 0, .size = 1};
    tpm_backend_t           *be;
    int32_t                  tok[40], slot[40], pos[40], rows[40];
    float                   *base_lg, *base_dec;

    cr_assert_eq(tpm_backend_create("cpu", 1, &be), TPM_OK);
    for (int i = 0; i <= T; i++) {
        tok[i] = (i * 37 + 11) % c.V, slot[i] = 1, pos[i] = i, rows[i] = i;
    }
    base_lg  = malloc((size_t)T * c.Vp * sizeof(float));
    base_dec = malloc((size_t)c.Vp * sizeof(float));
    for (int dt = TPM_WDT_F32; dt < TPM_WDT_N; dt++) {
        tpm_tp_model_t       *q, *r;
        const float          *lg;
        float                *qlg  = malloc((size_t)T * c.Vp * sizeof(float));
        float                *qdec = malloc((size_t)c.Vp * sizeof(float));
        tpm_tensor_io_t       src, dst;
        const char           *name = tpm_wdtype_name((tpm_wdtype_t)dt);

        cr_assert_eq(tpm_tp_create(be, &comm, &c, 2, c.maxT, 40, 40, &q), TPM_OK);
        cr_assert_eq(tpm_tp_set_weight_dtype(q, (tpm_wdtype_t)dt), TPM_OK);
        cr_assert_eq(tpm_tp_init_params(q, 5), TPM_OK);
        cr_assert_eq(tpm_tp_forward(q, T, tok, slot, pos, T, rows, &lg), TPM_OK);
        memcpy(qlg, lg, (size_t)T * c.Vp * sizeof(float));
        cr_assert_eq(tpm_tp_forward(q, 1, tok + T, slot + T, pos + T, 1, rows, &lg), TPM_OK);
        memcpy(qdec, lg, (size_t)c.Vp * sizeof(float));
        if (dt == TPM_WDT_F32) {
            memcpy(base_lg, qlg, (size_t)T * c.Vp * sizeof(float));
            memcpy(base_dec, qdec, (size_t)c.Vp * sizeof(float));
        }

        /* an fp32 model with the widened weights (read back through the tensor interface) */
        cr_assert_eq(tpm_tp_create(be, &comm, &c, 2, c.maxT, 40, 40, &r), TPM_OK);
        src = tpm_tp_tensor_io(q);
        src.rows = NULL; /* both ends hold whole tensors at one rank */
        dst = tpm_tp_tensor_io(r);
        cr_assert_eq(tpm_tensor_copy(&c, NULL, &src, &dst), TPM_OK);
        cr_assert_eq(tpm_tp_forward(r, T, tok, slot, pos, T, rows, &lg), TPM_OK);
        cr_expect(logit_err(qlg, lg, T, &c) <= 1e-5, "%s prefill vs the widened model: %.3g",
                  name, logit_err(qlg, lg, T, &c));
        cr_assert_eq(tpm_tp_forward(r, 1, tok + T, slot + T, pos + T, 1, rows, &lg), TPM_OK);
        cr_expect(logit_err(qdec, lg, 1, &c) <= (dt == TPM_WDT_Q8 ? 2e-2 : 1e-5),
                  "%s decode vs the widened model: %.3g", name, logit_err(qdec, lg, 1, &c));

        /* memory, and closeness to the fp32 model */
        cr_expect(q->mem.weight_bytes <= r->mem.weight_bytes *
                                             (dt == TPM_WDT_F32 ? 1.0 : dt == TPM_WDT_BF16 ? 0.6 : 0.36),
                  "%s: %zu weight bytes against %zu in fp32", name, q->mem.weight_bytes,
                  r->mem.weight_bytes);
        cr_expect(logit_err(qlg, base_lg, T, &c) <= (dt == TPM_WDT_Q8 ? 2e-2 : 1e-2),
                  "%s prefill vs fp32: %.3g", name, logit_err(qlg, base_lg, T, &c));
        cr_expect(logit_err(qdec, base_dec, 1, &c) <= (dt == TPM_WDT_Q8 ? 2e-2 : 1e-2),
                  "%s decode vs fp32: %.3g", name, logit_err(qdec, base_dec, 1, &c));
        /* the format is set once, before loading */
        cr_expect_eq(tpm_tp_set_weight_dtype(q, dt == TPM_WDT_Q8 ? TPM_WDT_BF16 : TPM_WDT_Q8),
                     dt == TPM_WDT_F32 ? TPM_OK : TPM_ERR_INVALID_ARG);
        tpm_tp_destroy(q);
        tpm_tp_destroy(r);
        free(qlg);
        free(qdec);
    }
    free(base_lg);
    free(base_dec);
    tpm_backend_destroy(be);
}

/* LLaMA: the split unit is a KV group; when M divides NKV the slices are the training shards */
Test(model_tp, llama_splits_by_whole_kv_groups_and_matches_the_shard_rule_when_m_divides_nkv)
{
    tpm_model_config_t c = {.L = 2, .C = 96, .NH = 12, .V = 500, .maxT = 64,
                            .arch = TPM_ARCH_LLAMA, .NKV = 4, .F = 200, .rms_eps = 1e-5f,
                            .rope_theta = 1e4};
    const int64_t      hs = 8, rep = 3, grp = (rep + 2) * hs;

    cr_assert_eq(tpm_model_config_finish(&c), TPM_OK);
    for (int M = 1; M <= 9; M++) {
        int     kv = 0, h = 0;
        int64_t f = 0;

        for (int r = 0; r < M; r++) {
            tpm_tp_part_t p;
            int64_t       row0, nrows;

            tpm_tp_partition(&c, M, r, &p);
            cr_expect_eq(p.kv0, kv, "KV groups contiguous, M=%d r=%d", M, r);
            cr_expect(p.h0 == rep * p.kv0 && p.nh == rep * p.nkv, "query heads of the groups");
            cr_expect_eq(p.f0, f, "MLP rows contiguous, M=%d r=%d", M, r);
            kv += p.nkv, h += p.nh, f += p.nf;
            if (c.NKV % M == 0) {
                tpm_split_rows(tpm_model_qkv_rows(&c), M, r, &row0, &nrows);
                cr_expect(grp * p.kv0 == row0 && grp * p.nkv == nrows, "qkv rows, M=%d r=%d", M,
                          r);
                tpm_split_rows(c.C, M, r, &row0, &nrows);
                cr_expect(hs * p.h0 == row0 && hs * p.nh == nrows, "ow rows, M=%d r=%d", M, r);
            }
            tpm_split_rows(c.F, M, r, &row0, &nrows);
            cr_expect(p.f0 == row0 && p.nf == nrows, "MLP rows follow the row rule on F");
        }
        cr_expect(kv == c.NKV && h == c.NH && f == c.F, "M=%d covers every row once", M);
    }
}
