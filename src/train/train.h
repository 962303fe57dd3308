/* SPDX-License-Identifier: MIT */
/*
 * train.h: --mode=train: data, model, ZeRO-3 engine, the step loop with
 * gradient accumulation, clipping, the LR schedule, evaluation and metrics.
 */
#ifndef TPM_TRAIN_H
#define TPM_TRAIN_H

#include "base/status.h"
#include "cli/config.h"
#include "comm/comm.h"

/** Learning rate at 0-based @p step: linear warm-up, then cosine to min_lr. */
double tpm_train_lr(const tpm_config_t *cfg, int64_t step);

/** Run training. Collective over @p comm; every rank returns the same status. */
tpm_status_t tpm_train_run(const tpm_config_t *cfg, tpm_comm_t *comm);

struct tpm_push_link;
/**
 * The same as the training group of --mode=trainserve: @p comm is the training group, and
 * @p link (borrowed) the job's serving group. After start-up the trainer sends the model to
 * the serving ranks (HELLO, then a first push), pushes every --push-every steps, when
 * POST /admin/push asks and at the end (train/push.h), and stops when the serving group
 * stops. Collective over @p comm; every rank returns the same status.
 */
tpm_status_t tpm_train_run_linked(const tpm_config_t *cfg, tpm_comm_t *comm,
                                  const struct tpm_push_link *link);

#endif /* TPM_TRAIN_H */
