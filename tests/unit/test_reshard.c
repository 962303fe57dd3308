/* SPDX-License-Identifier: MIT */
/*
 * test_reshard.c: the resharding plan of a weight push (core/reshard.h), pure arithmetic:
 * for every pair of group sizes 1..4 x 1..4 (heads 4 and 6, so some serving sizes do not
 * divide them), every row of every tensor reaches every serving rank that needs it exactly
 * once, from the training rank that owns it, and nothing else is sent; packing a simulated
 * training shard by the plan and unpacking it on the serving side gives each serving slice
 * the logical values.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "core/arch.h"
#include "core/model.h"
#include "core/model_tp.h"
#include "core/reshard.h"

TestSuite(reshard, .timeout = 60);

static tpm_model_config_t config(int L, int C, int NH, int V, int maxT)
{
    tpm_model_config_t c = {.L = L, .C = C, .NH = NH, .V = V, .maxT = maxT};

    cr_assert_eq(tpm_model_config_finish(&c), TPM_OK);
    return c;
}

/* the logical value of (g, t, row, col): distinct enough to catch a misplaced row */
static float value(int g, int t, int64_t row, int64_t col)
{
    return (float)(g * 1000003 + t * 10007 + row * 131 + col % 131) * 0.5f;
}

static void check_pair(const tpm_model_config_t *cfg, int NT, int NS)
{
    const int          NG = tpm_model_n_groups(cfg);
    tpm_reshard_plan_t p;
    tpm_param_desc_t   d[TPM_GROUP_MAX_NT];

    cr_assert_eq(tpm_reshard_plan_init(&p, cfg, NT, NS), TPM_OK);
    for (int j = 0; j < NS; j++) {
        tpm_tp_part_t part;

        tpm_tp_partition(cfg, NS, j, &part);
        for (int g = 0; g < NG; g++) {
            const int nt = tpm_model_group_desc(cfg, g, d);

            for (int t = 0; t < nt; t++) {
                int64_t b0, bn;
                int    *seen = calloc((size_t)d[t].rows, sizeof(int));
                float  *slice;

                tpm_tp_rows(cfg, &part, &d[t], &b0, &bn);
                slice = calloc((size_t)(bn > 0 ? bn : 1) * (size_t)d[t].cols, sizeof(float));
                cr_assert(seen != NULL && slice != NULL);
                for (int i = 0; i < NT; i++) {
                    const size_t k   = (size_t)i * (size_t)NS + (size_t)j;
                    size_t       off = 0;
                    int64_t      a0, an;
                    float       *msg = calloc(tpm_reshard_count(&p, i, j) + 1, sizeof(float));

                    cr_assert(msg != NULL);
                    tpm_split_rows(d[t].rows, NT, i, &a0, &an);
                    /* pack as the trainer does: from rank i's shard, rows relative to a0 */
                    for (size_t s = p.first[k]; s < p.first[k + 1]; s++) {
                        const tpm_reshard_seg_t *sg = &p.seg[s];

                        cr_assert_eq(sg->off, off, "segments are packed contiguously");
                        off += (size_t)sg->nrows * (size_t)sg->cols;
                        if (sg->g != g || sg->t != t) {
                            continue;
                        }
                        cr_assert(sg->row0 >= a0 && sg->row0 + sg->nrows <= a0 + an,
                                  "rows come from their owner");
                        cr_assert(sg->row0 >= b0 && sg->row0 + sg->nrows <= b0 + bn,
                                  "rows go where they are needed");
                        for (int64_t r = 0; r < sg->nrows; r++) {
                            for (int64_t c = 0; c < sg->cols; c++) {
                                msg[sg->off + (size_t)(r * sg->cols + c)] =
                                    value(g, t, sg->row0 + r, c);
                            }
                        }
                    }
                    cr_assert_eq(off, tpm_reshard_count(&p, i, j));
                    /* unpack as the server does */
                    for (size_t s = p.first[k]; s < p.first[k + 1]; s++) {
                        const tpm_reshard_seg_t *sg = &p.seg[s];

                        if (sg->g != g || sg->t != t) {
                            continue;
                        }
                        for (int64_t r = 0; r < sg->nrows; r++) {
                            seen[sg->row0 + r]++;
                        }
                        memcpy(slice + (size_t)((sg->row0 - b0) * sg->cols), msg + sg->off,
                               (size_t)(sg->nrows * sg->cols) * sizeof(float));
                    }
                    free(msg);
                }
                for (int64_t r = 0; r < d[t].rows; r++) {
                    cr_assert_eq(seen[r], r >= b0 && r < b0 + bn ? 1 : 0,
                                 "%d->%d ranks, serving rank %d, tensor %s of group %d, row "
                                 "%lld delivered %d times",
                                 NT, NS, j, d[t].name, g, (long long)r, seen[r]);
                }
                for (int64_t r = 0; r < bn; r++) {
                    for (int64_t c = 0; c < d[t].cols; c++) {
                        cr_assert_eq(slice[r * d[t].cols + c], value(g, t, b0 + r, c));
                    }
                }
                free(slice);
                free(seen);
            }
        }
    }
    cr_assert_eq(p.first[(size_t)NT * (size_t)NS], p.n_seg);
    tpm_reshard_plan_cleanup(&p);
}

Test(reshard, every_needed_row_arrives_exactly_once_at_every_pair_of_group_sizes)
{
    const tpm_model_config_t cfgs[] = {config(2, 64, 4, 300, 32), config(1, 48, 6, 131, 16)};

    for (size_t k = 0; k < sizeof(cfgs) / sizeof(cfgs[0]); k++) {
        for (int NT = 1; NT <= 4; NT++) {
            for (int NS = 1; NS <= 4; NS++) {
                check_pair(&cfgs[k], NT, NS);
            }
        }
    }
}

Test(reshard, totals_match_the_slices_and_the_shards)
{
    const tpm_model_config_t cfg = config(2, 64, 4, 300, 32);
    tpm_reshard_plan_t       p;
    tpm_param_desc_t         d[TPM_GROUP_MAX_NT];

    cr_assert_eq(tpm_reshard_plan_init(&p, &cfg, 3, 2), TPM_OK);
    for (int j = 0; j < 2; j++) {
        tpm_tp_part_t part;
        size_t        need = 0;

        tpm_tp_partition(&cfg, 2, j, &part);
        for (int g = 0; g < tpm_model_n_groups(&cfg); g++) {
            const int nt = tpm_model_group_desc(&cfg, g, d);

            for (int t = 0; t < nt; t++) {
                int64_t b0, bn;

                tpm_tp_rows(&cfg, &part, &d[t], &b0, &bn);
                need += (size_t)bn * (size_t)d[t].cols;
            }
        }
        cr_assert_eq(tpm_reshard_recv_total(&p, j), need);
    }
    tpm_reshard_plan_cleanup(&p);
    cr_assert_eq(tpm_reshard_plan_init(&p, &cfg, 0, 2), TPM_ERR_INVALID_ARG);
}
