/* SPDX-License-Identifier: MIT */
/* metrics.c: JSON-lines metrics file; flushed per line so a crash keeps what was written. */
#include "train/metrics.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>

tpm_status_t tpm_metrics_open(tpm_metrics_t *m, const char *path, int append)
{
    m->f      = NULL;
    m->failed = 0;
    if (path == NULL || path[0] == '\0') {
        return TPM_OK;
    }
    snprintf(m->path, sizeof(m->path), "%s", path);
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

    int bad;

    if (m->f == NULL || m->failed) {
        return;
    }
    va_start(ap, fmt);
    bad = vfprintf(m->f, fmt, ap) < 0;
    va_end(ap);
    bad = fputc('\n', m->f) == EOF || bad;
    if (fflush(m->f) != 0 || bad) {
        tpm_log_error("writing metrics file %s failed: %s (training goes on; the run will end "
                      "with an error)",
                      m->path, strerror(errno));
        m->failed = 1;
    }
}

tpm_status_t tpm_metrics_close(tpm_metrics_t *m)
{
    tpm_status_t status = TPM_OK;

    if (m->f == NULL) {
        return TPM_OK;
    }
    if (fclose(m->f) != 0 && !m->failed) {
        tpm_log_error("writing metrics file %s failed: %s", m->path, strerror(errno));
        m->failed = 1;
    }
    if (m->failed) {
        status = TPM_ERR_IO;
    }
    m->f = NULL;
    return status;
}
