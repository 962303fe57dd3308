/* SPDX-License-Identifier: MIT */
/*
 * watch.h: hot reload for --mode=serve --ckpt=DIR --watch (docs/SERVING.md "Hot reload").
 * Rank 0 looks at DIR's latest pointer once a second (and at once on POST /admin/reload);
 * when it names a checkpoint other than the one served (and not one refused before), rank 0
 * says so in the engine's iteration header, and at the next iteration every rank reads its
 * slices of that checkpoint into the model's back buffer (collective; the engine waits for
 * the read) and reports ready; the swap follows at the next iteration on every rank, through
 * the same hook as a trainserve push (engine.h). A checkpoint that cannot be opened, is
 * corrupted (checksums) or holds another model is refused with a logged error, and the
 * server keeps serving the old weights.
 */
#ifndef TPM_SERVE_WATCH_H
#define TPM_SERVE_WATCH_H

#include "base/status.h"
#include "cli/config.h"
#include "comm/comm.h"
#include "core/model_tp.h"
#include "serve/engine.h"
#include "serve/serve.h"

typedef struct tpm_watcher tpm_watcher_t;

/**
 * Watch cfg->ckpt (a directory) for @p m, which serves @p current (the resolved path) after
 * @p step optimizer steps; @p st: rank 0's stats, NULL elsewhere. Allocates the back buffer.
 * Local; the caller agrees on the status. Caller owns *w_p.
 */
tpm_status_t tpm_watcher_create(const tpm_config_t *cfg, tpm_comm_t *comm, tpm_tp_model_t *m,
                                const char *current, int64_t step, tpm_serve_stats_t *st,
                                tpm_watcher_t **w_p);
void         tpm_watcher_destroy(tpm_watcher_t *w); /* no-op on NULL */

/** The engine hook of @p w (engine.h, tpm_engine_set_swap_hook). */
tpm_engine_swap_hook_t tpm_watcher_hook(tpm_watcher_t *w);

#endif /* TPM_SERVE_WATCH_H */
