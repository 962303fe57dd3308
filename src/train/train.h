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

#endif /* TPM_TRAIN_H */
