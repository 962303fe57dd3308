/* SPDX-License-Identifier: MIT */
/* metrics.c: JSON-lines metrics file; flushed per line so a crash keeps what was written. */
#include "train/metrics.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>

tpm_status_t tpm_metrics_open(tpm_metrics_t *m, const char *path, int append)
{
    m->f = NULL;
    if (path == NULL || path[0] == '\0') {
        return TPM_OK;
    }
    m->f = fopen(path, append ? "a" : "w");
    if (m->f == NULL) {
        tpm_log_error("cannot open metrics file %s: %s", path, strerror(errno));
        return TPM_ERR_IO;
    }
    return TPM_OK;
}

void tpm_metrics_line(tpm_metrics_t *m, const char *fmt, ...)
{
    va_list ap;

    if (m->f == NULL) {
        return;
    }
    va_start(ap, fmt);
    vfprintf(m->f, fmt, ap);
    va_end(ap);
    fputc('\n', m->f);
    fflush(m->f);
}

void tpm_metrics_close(tpm_metrics_t *m)
{
    if (m->f != NULL) {
        fclose(m->f);
        m->f = NULL;
    }
}
