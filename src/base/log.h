/* SPDX-License-Identifier: MIT */
/*
 * log.h: rank-tagged logging to stderr. Each macro checks the level before
 * evaluating its arguments. tpm_info0() prints on rank 0 only.
 */
#ifndef TPM_BASE_LOG_H
#define TPM_BASE_LOG_H

typedef enum {
    TPM_LOG_ERROR = 0,
    TPM_LOG_WARN  = 1,
    TPM_LOG_INFO  = 2,
    TPM_LOG_DEBUG = 3,
} tpm_log_level_t;

extern tpm_log_level_t tpm_log_level_cur;
extern int             tpm_log_rank;
extern int             tpm_log_lead; /* this process leads its group: tpm_info0 speaks */

/** Set this process's rank for the "[tpmpi rN]" prefix (-1: no rank yet). */
void tpm_log_set_rank(int rank);
/**
 * Make tpm_info0() speak on this process too although its rank is not 0: the first rank of a
 * group of ranks that runs a part of the job on its own (the serving group of trainserve).
 */
void tpm_log_set_lead(int lead);
void tpm_log_set_level(tpm_log_level_t level);
/** Parse "error|warn|info|debug"; returns 0 on success, -1 on an unknown name. */
int tpm_log_level_parse(const char *name, tpm_log_level_t *level_p);

void tpm_log_emit(tpm_log_level_t level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define tpm_log_at(_lvl, ...)                                                                      \
    do {                                                                                           \
        if ((_lvl) <= tpm_log_level_cur) {                                                         \
            tpm_log_emit((_lvl), __FILE__, __LINE__, __VA_ARGS__);                                 \
        }                                                                                          \
    } while (0)

#define tpm_log_error(...) tpm_log_at(TPM_LOG_ERROR, __VA_ARGS__)
#define tpm_log_warn(...)  tpm_log_at(TPM_LOG_WARN, __VA_ARGS__)
#define tpm_log_info(...)  tpm_log_at(TPM_LOG_INFO, __VA_ARGS__)
#define tpm_log_debug(...) tpm_log_at(TPM_LOG_DEBUG, __VA_ARGS__)

/** Info message from rank 0 (or a group's lead) only (or when no rank is known yet). */
#define tpm_info0(...)                                                                             \
    do {                                                                                           \
        if (tpm_log_rank <= 0 || tpm_log_lead) {                                                   \
            tpm_log_info(__VA_ARGS__);                                                             \
        }                                                                                          \
    } while (0)

/** Error message from rank 0 only: a failure every rank agreed on, said once. Unlike
 *  tpm_info0 it is not silenced by --log-level=error. */
#define tpm_error0(...)                                                                            \
    do {                                                                                           \
        if (tpm_log_rank <= 0) {                                                                   \
            tpm_log_error(__VA_ARGS__);                                                            \
        }                                                                                          \
    } while (0)

#endif /* TPM_BASE_LOG_H */
