/* SPDX-License-Identifier: MIT */
/*
 * eval.h: --mode=eval, a checkpoint measured with the tensor-parallel serving forward
 * (core/model_tp.h) on any rank count (docs/SERVING.md, "Evaluation"):
 *
 *  - loss: the mean next-token loss and the perplexity on a token split over windows keyed
 *    like the training run's validation (TPM_DATA_VAL_SALT, the checkpoint's seed, global
 *    batch and seq_len), so that --eval-batches K reproduces the val_loss that training
 *    reported with the same K;
 *  - --task=FILE: multiple choice from JSONL, scored as lm-evaluation-harness 0.4 does: the
 *    summed log-likelihood of each choice's tokens after the context; acc picks the largest,
 *    acc_norm the largest per character of the choice (lm_eval's len(choice)), acc_bytes
 *    per UTF-8 byte.
 *
 * Rank 0 prints the result as one JSON object on stdout and writes it to --out=FILE when set.
 */
#ifndef TPM_EVAL_EVAL_H
#define TPM_EVAL_EVAL_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "cli/config.h"
#include "comm/comm.h"

/** --mode=eval. Collective; every rank returns the same status. */
tpm_status_t tpm_eval_run(const tpm_config_t *cfg, tpm_comm_t *comm);

/**
 * log p of token @p target under @p logits (the first @p V of a row), in double:
 * logits[target] - log sum exp(logits[0..V)). Pure (unit-tested).
 */
double tpm_eval_logprob(const float *logits, int V, int target);

/**
 * The choice that acc (@p norm 0) or acc_norm / acc_bytes (@p norm 1) picks: the argmax of
 * ll[i], or of ll[i] / len[i] (a length of 0 counts as 1). The first of equal scores wins, as
 * numpy's argmax. Pure (unit-tested).
 */
int tpm_eval_pick(const double *ll, const size_t *len, int n, int norm);

#endif /* TPM_EVAL_EVAL_H */
