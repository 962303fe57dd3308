/* SPDX-License-Identifier: MIT */
/*
 * log.c: the one place that writes human-readable messages. Lines are built in
 * a buffer and written with one call so that ranks' lines do not interleave.
 */
#include "base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

tpm_log_level_t tpm_log_level_cur = TPM_LOG_INFO;
int             tpm_log_rank      = -1;
int             tpm_log_lead      = 0;

void tpm_log_set_lead(int lead)
{
    tpm_log_lead = lead;
}

void tpm_log_set_rank(int rank)
{
    tpm_log_rank = rank;
}

void tpm_log_set_level(tpm_log_level_t level)
{
    tpm_log_level_cur = level;
}

int tpm_log_level_parse(const char *name, tpm_log_level_t *level_p)
{
    static const char *names[] = {"error", "warn", "info", "debug"};

    for (int i = 0; i < 4; i++) {
        if (strcmp(name, names[i]) == 0) {
            *level_p = (tpm_log_level_t)i;
            return 0;
        }
    }
    return -1;
}

void tpm_log_emit(tpm_log_level_t level, const char *file, int line, const char *fmt, ...)
{
    static const char *tags[] = {"error: ", "warning: ", "", ""};
    char               buf[2048];
    int                n;
    va_list            ap;

    if (tpm_log_rank >= 0) {
        n = snprintf(buf, sizeof(buf), "[tpmpi r%d] %s", tpm_log_rank, tags[level]);
    } else {
        n = snprintf(buf, sizeof(buf), "[tpmpi] %s", tags[level]);
    }
    if (level == TPM_LOG_DEBUG && n < (int)sizeof(buf)) {
        n += snprintf(buf + n, sizeof(buf) - (size_t)n, "%s:%d ", file, line);
    }
    if (n < (int)sizeof(buf)) {
        va_start(ap, fmt);
        n += vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
        va_end(ap);
    }
    if (n >= (int)sizeof(buf) - 1) {
        n = (int)sizeof(buf) - 2;
    }
    buf[n++] = '\n';
    if (write(STDERR_FILENO, buf, (size_t)n) < 0) {
        /* nothing sensible to do when stderr is gone */
    }
}
