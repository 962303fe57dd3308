/* SPDX-License-Identifier: MIT */
/*
 * reshard.c: the resharding plan of a weight push (reshard.h).
 */
#include "core/reshard.h"

#include <string.h>

#include "base/mem.h"
#include "core/arch.h"
#include "core/model_tp.h"

/* walk every (tensor, i, j) intersection; with p->seg set, record them */
static void walk(tpm_reshard_plan_t *p, const tpm_model_config_t *cfg, size_t *n_seg_p)
{
    const int        NG = tpm_model_n_groups(cfg), S = p->n_serve;
    tpm_param_desc_t d[TPM_GROUP_MAX_NT];
    tpm_tp_part_t    part;
    size_t           n = 0;

    for (int i = 0; i < p->n_train; i++) {
        for (int j = 0; j < S; j++) {
            const size_t k   = (size_t)i * (size_t)S + (size_t)j;
            size_t       off = 0;

            tpm_tp_partition(cfg, S, j, &part);
            if (p->seg != NULL) {
                p->first[k] = n;
            }
            for (int g = 0; g < NG; g++) {
                const int nt = tpm_model_group_desc(cfg, g, d);

                for (int t = 0; t < nt; t++) {
                    int64_t a0, an, b0, bn, lo, hi;

                    tpm_split_rows(d[t].rows, p->n_train, i, &a0, &an);
                    tpm_tp_rows(cfg, &part, &d[t], &b0, &bn);
                    lo = a0 > b0 ? a0 : b0;
                    hi = a0 + an < b0 + bn ? a0 + an : b0 + bn;
                    if (hi <= lo) {
                        continue;
                    }
                    if (p->seg != NULL) {
                        p->seg[n] = (tpm_reshard_seg_t){.g     = g,
                                                        .t     = t,
                                                        .row0  = lo,
                                                        .nrows = hi - lo,
                                                        .cols  = d[t].cols,
                                                        .off   = off};
                    }
                    off += (size_t)(hi - lo) * (size_t)d[t].cols;
                    n++;
                }
            }
            p->count[k] = off;
        }
    }
    if (p->seg != NULL) {
        p->first[(size_t)p->n_train * (size_t)S] = n;
    }
    *n_seg_p = n;
}

tpm_status_t tpm_reshard_plan_init(tpm_reshard_plan_t *p, const tpm_model_config_t *cfg,
                                   int n_train, int n_serve)
{
    size_t       pairs, n_seg = 0, again = 0;
    tpm_status_t status;

    memset(p, 0, sizeof(*p));
    if (n_train < 1 || n_serve < 1) {
        tpm_log_error("resharding plan: %d training and %d serving ranks (each must be >= 1)",
                      n_train, n_serve);
        return TPM_ERR_INVALID_ARG;
    }
    p->n_train = n_train;
    p->n_serve = n_serve;
    pairs      = (size_t)n_train * (size_t)n_serve;
    TPM_CHECK_GOTO(tpm_calloc(pairs, sizeof(size_t), (void **)&p->count), status, err);
    TPM_CHECK_GOTO(tpm_calloc(pairs + 1, sizeof(size_t), (void **)&p->first), status, err);
    walk(p, cfg, &n_seg); /* count */
    TPM_CHECK_GOTO(tpm_calloc(n_seg > 0 ? n_seg : 1, sizeof(*p->seg), (void **)&p->seg), status,
                   err);
    walk(p, cfg, &again); /* fill */
    TPM_ASSERT(again == n_seg);
    p->n_seg = n_seg;
    return TPM_OK;

err:
    tpm_reshard_plan_cleanup(p);
    return status;
}

void tpm_reshard_plan_cleanup(tpm_reshard_plan_t *p)
{
    tpm_free(p->count);
    tpm_free(p->first);
    tpm_free(p->seg);
    memset(p, 0, sizeof(*p));
}

size_t tpm_reshard_send_total(const tpm_reshard_plan_t *p, int i)
{
    size_t n = 0;

    for (int j = 0; j < p->n_serve; j++) {
        n += tpm_reshard_count(p, i, j);
    }
    return n;
}

size_t tpm_reshard_recv_total(const tpm_reshard_plan_t *p, int j)
{
    size_t n = 0;

    for (int i = 0; i < p->n_train; i++) {
        n += tpm_reshard_count(p, i, j);
    }
    return n;
}
