/* SPDX-License-Identifier: MIT */
/*
 * watch.c: hot reload of a newer checkpoint (watch.h).
 */
#include "serve/watch.h"

#include <string.h>

#include "base/mem.h"
#include "base/timer.h"
#include "ckpt/ckpt.h"

#define WATCH_PERIOD_S 1.0
#define WATCH_NEWER    2 /* rank 0's header value: a newer checkpoint, load it */

typedef enum { W_IDLE = 0, W_LOAD, W_READY } w_state_t;

struct tpm_watcher {
    const tpm_config_t *cfg;
    tpm_comm_t         *comm;
    tpm_tp_model_t     *m;
    tpm_serve_stats_t  *st; /* rank 0 */
    w_state_t           state;
    double              next_look;
    int64_t             step, step_next;
    char                current[TPM_PATH_MAX], next[TPM_PATH_MAX], refused[TPM_PATH_MAX];
};

tpm_status_t tpm_watcher_create(const tpm_config_t *cfg, tpm_comm_t *comm, tpm_tp_model_t *m,
                                const char *current, int64_t step, tpm_serve_stats_t *st,
                                tpm_watcher_t **w_p)
{
    tpm_watcher_t *w;
    tpm_status_t   status;

    TPM_CHECK(tpm_calloc(1, sizeof(*w), (void **)&w));
    w->cfg  = cfg;
    w->comm = comm;
    w->m    = m;
    w->st   = st;
    w->step = step;
    snprintf(w->current, sizeof(w->current), "%s", current);
    status = tpm_tp_back_create(m);
    if (status != TPM_OK) {
        tpm_free(w);
        return status;
    }
    if (st != NULL) {
        st->versioned    = 1;
        st->reloadable   = 1;
        st->weights_step = step;
    }
    w->next_look = tpm_time_now() + WATCH_PERIOD_S;
    *w_p         = w;
    return TPM_OK;
}

void tpm_watcher_destroy(tpm_watcher_t *w)
{
    tpm_free(w);
}

/* rank 0: is there a checkpoint to load? (into w->next) */
static int look(tpm_watcher_t *w)
{
    char   path[TPM_PATH_MAX];
    double now = tpm_time_now();

    if (!w->st->reload_requested && now < w->next_look) {
        return 0;
    }
    w->st->reload_requested = 0;
    w->next_look            = now + WATCH_PERIOD_S;
    if (tpm_ckpt_resolve(w->cfg->ckpt, path, sizeof(path)) != TPM_OK) {
        return 0; /* logged; a directory between two checkpoints is normal */
    }
    if (strcmp(path, w->current) == 0 || strcmp(path, w->refused) == 0) {
        return 0;
    }
    snprintf(w->next, sizeof(w->next), "%s", path);
    return 1;
}

/*
 * Every rank, the same iteration: read rank 0's w->next into the back buffer. Collective;
 * the same result on every rank.
 */
static int load(tpm_watcher_t *w)
{
    tpm_ckpt_t  *ck = NULL;
    tpm_status_t status;
    double       t0 = tpm_time_now();

    if (tpm_comm_bcast(w->comm, w->next, sizeof(w->next), TPM_DT_BYTE, 0) != TPM_OK) {
        tpm_fatal(TPM_ERR_MPI, "watch: broadcasting the checkpoint path failed");
    }
    status = tpm_ckpt_open(w->comm, w->next, &ck);
    if (status == TPM_OK) {
        /* the loader writes the front slices: swap around it (no forward runs meanwhile) */
        tpm_tp_swap(w->m);
        status = tpm_serve_load_model(w->m, ck);
        tpm_tp_swap(w->m);
        w->step_next = tpm_ckpt_meta(ck)->step;
        tpm_ckpt_close(ck);
    }
    if (status != TPM_OK) {
        tpm_info0("error: watch: refusing checkpoint %s (see above); still serving %s (step "
                  "%lld)",
                  w->next, w->current, (long long)w->step);
        snprintf(w->refused, sizeof(w->refused), "%s", w->next);
        w->state = W_IDLE;
        return 0;
    }
    tpm_info0("watch: read %s (step %lld) in %.2f s; swapping it in", w->next,
              (long long)w->step_next, tpm_time_now() - t0);
    w->state = W_READY;
    return 1;
}

static int watch_ready(void *ctx)
{
    tpm_watcher_t *w = ctx;

    switch (w->state) {
    case W_IDLE: return w->comm->rank == 0 && look(w) ? WATCH_NEWER : 0;
    case W_LOAD: return load(w);
    case W_READY: return 1;
    }
    return 0;
}

static void watch_agreed(void *ctx, int32_t root_value)
{
    tpm_watcher_t *w = ctx;

    if (w->state == W_IDLE && root_value == WATCH_NEWER) {
        w->state = W_LOAD; /* every rank reads at the next iteration */
    }
}

static void watch_swap(void *ctx)
{
    tpm_watcher_t *w = ctx;

    tpm_tp_swap(w->m);
    w->state = W_IDLE;
    w->step  = w->step_next;
    snprintf(w->current, sizeof(w->current), "%s", w->next);
    if (w->st != NULL) {
        w->st->weights_step = w->step;
        w->st->last_swap    = tpm_time_now();
    }
    tpm_info0("watch: serving %s (step %lld)", w->current, (long long)w->step);
}

tpm_engine_swap_hook_t tpm_watcher_hook(tpm_watcher_t *w)
{
    return (tpm_engine_swap_hook_t){
        .ctx = w, .ready = watch_ready, .swap = watch_swap, .agreed = watch_agreed};
}
