/* SPDX-License-Identifier: MIT */
/* test_shard.c: the shard rule's arithmetic, without MPI. */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "core/model.h"
#include "zero3/shard.h"

static tpm_model_config_t tiny(void)
{
    tpm_model_config_t c = {.L = 2, .C = 32, .NH = 4, .V = 100, .maxT = 16};

    cr_assert_eq(tpm_model_config_finish(&c), TPM_OK);
    return c;
}

TestSuite(shard, .timeout = 10);

Test(shard, one_rank_layout_is_the_canonical_flat_order_without_padding)
{
    tpm_model_config_t c = tiny();
    tpm_shard_layout_t lay;

    cr_assert_eq(tpm_shard_layout_init(&lay, &c, 1), TPM_OK);
    cr_assert_eq(lay.shard_numel, tpm_model_num_params(&c));
    for (int g = 0; g < lay.n_groups; g++) {
        for (int t = 0; t < lay.g[g].n_tensors; t++) {
            cr_assert_eq(lay.g[g].t[t].shard_off, lay.g[g].t[t].full_off);
        }
    }
    tpm_shard_layout_cleanup(&lay);
}

Test(shard, shards_shrink_with_the_rank_count_and_padding_stays_below_one_row_per_tensor)
{
    tpm_model_config_t c = tiny();

    for (int n = 1; n <= 40; n++) {
        tpm_shard_layout_t lay;
        size_t             pad_bound = 0;
        cr_assert_eq(tpm_shard_layout_init(&lay, &c, n), TPM_OK);
        for (int g = 0; g < lay.n_groups; g++) {
            for (int t = 0; t < lay.g[g].n_tensors; t++) {
                pad_bound += (size_t)lay.g[g].t[t].desc.cols;
            }
        }
        cr_assert_geq(lay.shard_numel * n, lay.logical_numel);
        cr_assert_leq(lay.shard_numel * n, lay.logical_numel + pad_bound * n, "n=%d", n);
        tpm_shard_layout_cleanup(&lay);
    }
}

Test(shard, rows_of_all_ranks_cover_each_tensor_exactly_once)
{
    tpm_model_config_t c = tiny();
    int                worlds[] = {1, 2, 3, 4, 5, 8, 32, 200};

    for (size_t k = 0; k < sizeof(worlds) / sizeof(worlds[0]); k++) {
        tpm_shard_layout_t lay;
        cr_assert_eq(tpm_shard_layout_init(&lay, &c, worlds[k]), TPM_OK);
        for (int g = 0; g < lay.n_groups; g++) {
            for (int t = 0; t < lay.g[g].n_tensors; t++) {
                int64_t next = 0;
                for (int r = 0; r < worlds[k]; r++) {
                    int64_t row0, nrows;
                    tpm_shard_rows(&lay.g[g].t[t], r, &row0, &nrows);
                    if (nrows > 0) {
                        cr_assert_eq(row0, next);
                        next += nrows;
                    }
                    cr_assert_leq(nrows, lay.g[g].t[t].rows_per_rank);
                }
                cr_assert_eq(next, lay.g[g].t[t].desc.rows);
            }
        }
        tpm_shard_layout_cleanup(&lay);
    }
}

Test(shard, qkv_blocks_are_whole_heads_when_the_rank_count_divides_the_heads)
{
    tpm_model_config_t c  = tiny(); /* NH = 4, hs = 8: a head is 24 QKV rows */
    const int          hs = c.C / c.NH;

    for (int n = 1; n <= 4; n *= 2) {
        tpm_shard_layout_t lay;
        cr_assert_eq(tpm_shard_layout_init(&lay, &c, n), TPM_OK);
        cr_assert_eq(lay.g[0].t[TPM_B_QKVW].rows_per_rank % (3 * hs), 0);
        cr_assert_eq(lay.g[0].t[TPM_B_QKVW].rows_per_rank / (3 * hs), c.NH / n);
        /* the row-parallel projection splits its input rows by the same heads */
        cr_assert_eq(lay.g[0].t[TPM_B_ATTPROJW].rows_per_rank, (int64_t)hs * c.NH / n);
        tpm_shard_layout_cleanup(&lay);
    }
}

Test(shard, pack_then_unpack_restores_the_full_group)
{
    tpm_model_config_t c = tiny();

    for (int n = 1; n <= 5; n++) {
        tpm_shard_layout_t       lay;
        const tpm_shard_group_t *g;
        float                   *full, *rm, *back;
        cr_assert_eq(tpm_shard_layout_init(&lay, &c, n), TPM_OK);
        g    = &lay.g[0];
        full = malloc(g->full_numel * 4);
        rm   = malloc(g->full_numel * 4);
        back = malloc(g->full_numel * 4);
        for (size_t i = 0; i < g->full_numel; i++) {
            full[i] = (float)i;
        }
        tpm_shard_pack(g, n, full, rm);
        /* rank r's chunk starts with its rows of the first tensor */
        for (int r = 0; r < n; r++) {
            cr_assert_eq(rm[(size_t)r * g->shard_numel],
                         full[g->t[0].full_off + (size_t)r * g->t[0].rows_per_rank]);
        }
        tpm_shard_unpack(g, n, rm, back);
        for (size_t i = 0; i < g->full_numel; i++) {
            cr_assert_eq(back[i], full[i]);
        }
        free(full);
        free(rm);
        free(back);
        tpm_shard_layout_cleanup(&lay);
    }
}

Test(shard, split_rows_gives_empty_ranges_beyond_the_last_row)
{
    int64_t row0, n;

    tpm_split_rows(3, 8, 5, &row0, &n);
    cr_assert_eq(n, 0);
    tpm_split_rows(10, 4, 3, &row0, &n);
    cr_assert_eq(row0, 9);
    cr_assert_eq(n, 1);
}
