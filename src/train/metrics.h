/* SPDX-License-Identifier: MIT */
/*
 * metrics.h: the machine-readable run record (JSON lines), written by rank 0
 * only, separate from the human log. Each line is one JSON object with a
 * "type": "step", "eval" or "summary". Fields: docs/METRICS.md.
 */
#ifndef TPM_TRAIN_METRICS_H
#define TPM_TRAIN_METRICS_H

#include <stdio.h>

#include "base/status.h"

typedef struct tpm_metrics {
    FILE *f;          /* NULL: metrics off */
    int   failed;     /* a write failed (reported once, then at close) */
    char  path[4096]; /* for messages */
} tpm_metrics_t;

/**
 * Open @p path, truncating it, or appending when @p append (a resumed run keeps the
 * records of the run it continues); an empty path turns metrics off.
 */
tpm_status_t tpm_metrics_open(tpm_metrics_t *m, const char *path, int append);
/**
 * Write one line (a complete JSON object, built by the caller) and flush it. A failed write
 * (a full disk) is logged once; later lines are dropped and tpm_metrics_close reports it.
 */
void tpm_metrics_line(tpm_metrics_t *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** Close; TPM_ERR_IO when any write, the flush or the close failed. No-op when off. */
tpm_status_t tpm_metrics_close(tpm_metrics_t *m);

#endif /* TPM_TRAIN_METRICS_H */
