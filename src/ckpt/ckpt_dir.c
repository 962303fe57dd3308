/* SPDX-License-Identifier: MIT */
/*
 * ckpt_dir.c: checkpoint directories: DIR/ckpt_<step 8 digits>.h5 files, the DIR/latest
 * pointer (a one-line text file naming the newest complete checkpoint) and keep-K pruning.
 * Plain POSIX on one rank; the callers broadcast or agree on the results. A checkpoint is
 * complete once renamed from its .tmp name, and "latest" is only moved after that, itself by
 * write-temporary, fsync, rename: a crash at any point leaves a usable previous checkpoint.
 */
#include "ckpt/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/file.h"
#include "base/mem.h"

#define CKPT_LATEST "latest"

tpm_status_t tpm_ckpt_path(const char *dir, int64_t step, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "%s/ckpt_%08lld.h5", dir, (long long)step);

    if (n < 0 || (size_t)n >= cap) {
        tpm_log_error("checkpoint directory name %s is too long", dir);
        return TPM_ERR_OVERFLOW;
    }
    return TPM_OK;
}

/* step of a complete checkpoint file name "ckpt_<digits>.h5", else -1 */
static int64_t ckpt_step_of(const char *name)
{
    const char *p    = name + 5;
    int64_t     step = 0;

    if (strncmp(name, "ckpt_", 5) != 0 || *p < '0' || *p > '9') {
        return -1;
    }
    for (; *p >= '0' && *p <= '9'; p++) {
        if (step > (INT64_MAX - 9) / 10) {
            return -1;
        }
        step = step * 10 + (*p - '0');
    }
    return strcmp(p, ".h5") == 0 ? step : -1;
}

static int is_stale_tmp(const char *name)
{
    size_t n = strlen(name);

    return strncmp(name, "ckpt_", 5) == 0 && n > 4 && strcmp(name + n - 4, ".tmp") == 0;
}

static int is_regular(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* the file name DIR/latest holds (one line), checked to be a bare name inside DIR */
static tpm_status_t read_latest(const char *dir, char *name, size_t cap)
{
    char  path[TPM_PATH_MAX + 16];
    FILE *f;
    char *nl;

    snprintf(path, sizeof(path), "%s/%s", dir, CKPT_LATEST);
    f = fopen(path, "r");
    if (f == NULL) {
        return errno == ENOENT ? TPM_ERR_NOT_FOUND : TPM_ERR_IO;
    }
    if (fgets(name, (int)cap, f) == NULL) {
        name[0] = '\0';
    }
    fclose(f);
    nl = strchr(name, '\n');
    if (nl != NULL) {
        *nl = '\0';
    }
    if (name[0] == '\0' || strchr(name, '/') != NULL || strcmp(name, "..") == 0) {
        tpm_log_warn("%s does not hold a checkpoint file name: ignored", path);
        return TPM_ERR_FORMAT;
    }
    return TPM_OK;
}

tpm_status_t tpm_ckpt_find_latest(const char *dir, char *buf, size_t cap)
{
    char           name[256], path[TPM_PATH_MAX + 272];
    DIR           *dp;
    struct dirent *e;
    int64_t        best = -1;

    if (read_latest(dir, name, sizeof(name)) == TPM_OK) {
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        if (is_regular(path)) {
            if (strlen(path) >= cap) {
                tpm_log_error("checkpoint path %s is too long", path);
                return TPM_ERR_OVERFLOW;
            }
            snprintf(buf, cap, "%s", path);
            return TPM_OK;
        }
        tpm_log_warn("%s/%s names %s, which does not exist: looking for the newest checkpoint "
                     "file instead",
                     dir, CKPT_LATEST, name);
    }
    dp = opendir(dir);
    if (dp == NULL) {
        return TPM_ERR_NOT_FOUND;
    }
    while ((e = readdir(dp)) != NULL) {
        int64_t s = ckpt_step_of(e->d_name);
        if (s > best) {
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
            if (is_regular(path)) {
                best = s;
                snprintf(name, sizeof(name), "%s", e->d_name);
            }
        }
    }
    closedir(dp);
    if (best < 0) {
        return TPM_ERR_NOT_FOUND;
    }
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (strlen(path) >= cap) {
        tpm_log_error("checkpoint path %s is too long", path);
        return TPM_ERR_OVERFLOW;
    }
    snprintf(buf, cap, "%s", path);
    return TPM_OK;
}

tpm_status_t tpm_ckpt_resolve(const char *path_or_dir, char *buf, size_t cap)
{
    struct stat  st;
    tpm_status_t status;

    if (stat(path_or_dir, &st) != 0) {
        tpm_log_error("checkpoint %s: %s", path_or_dir, strerror(errno));
        return TPM_ERR_NOT_FOUND;
    }
    if (S_ISDIR(st.st_mode)) {
        status = tpm_ckpt_find_latest(path_or_dir, buf, cap);
        if (status == TPM_ERR_NOT_FOUND) {
            tpm_log_error("no checkpoint in %s (no '%s' pointer and no ckpt_*.h5 file)",
                          path_or_dir, CKPT_LATEST);
        }
        return status;
    }
    if (strlen(path_or_dir) >= cap) {
        tpm_log_error("checkpoint path %s is too long", path_or_dir);
        return TPM_ERR_OVERFLOW;
    }
    snprintf(buf, cap, "%s", path_or_dir);
    return TPM_OK;
}

/* DIR/latest by temporary, fsync, rename, fsync of DIR (tpm_file_commit) */
static tpm_status_t write_latest(const char *dir, const char *name)
{
    char         tmp[TPM_PATH_MAX + 16], dst[TPM_PATH_MAX + 16];
    FILE        *f;
    tpm_status_t status = TPM_OK;

    if (snprintf(dst, sizeof(dst), "%s/%s", dir, CKPT_LATEST) >= (int)sizeof(dst)) {
        tpm_log_error("checkpoint directory name %s is too long", dir);
        return TPM_ERR_OVERFLOW;
    }
    TPM_CHECK(tpm_file_create_tmp(dst, tmp, sizeof(tmp), &f));
    if (fprintf(f, "%s\n", name) < 0) {
        tpm_log_error("cannot write %s: %s", tmp, strerror(errno));
        status = TPM_ERR_IO;
    }
    return tpm_file_commit(f, tmp, dst, status);
}

static int cmp_step_desc(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

    return (x < y) - (x > y);
}

/* delete all but the newest @p keep checkpoints (never @p current) and stale temporaries */
static tpm_status_t prune(const char *dir, const char *current, int keep)
{
    DIR           *dp;
    struct dirent *e;
    int64_t       *steps = NULL, cur = ckpt_step_of(current), cutoff = -1;
    size_t         n = 0, cap = 0;
    char           path[TPM_PATH_MAX + 272];
    tpm_status_t   status = TPM_OK;

    /* pass 1: the steps present, to find the oldest step that is kept */
    dp = opendir(dir);
    if (dp == NULL) {
        tpm_log_error("open %s failed: %s", dir, strerror(errno));
        return TPM_ERR_IO;
    }
    while ((e = readdir(dp)) != NULL) {
        int64_t s = ckpt_step_of(e->d_name);
        if (s < 0) {
            continue;
        }
        if (n == cap) {
            int64_t *grown;
            cap    = cap ? 2 * cap : 64;
            status = tpm_malloc(cap * sizeof(int64_t), (void **)&grown);
            if (status != TPM_OK) {
                break;
            }
            if (n > 0) {
                memcpy(grown, steps, n * sizeof(int64_t));
            }
            tpm_free(steps);
            steps = grown;
        }
        steps[n++] = s;
    }
    closedir(dp);
    if (status != TPM_OK) {
        tpm_free(steps);
        return status;
    }
    if (n > (size_t)keep) {
        qsort(steps, n, sizeof(int64_t), cmp_step_desc);
        cutoff = steps[keep - 1];
    }
    tpm_free(steps);

    /* pass 2: delete */
    dp = opendir(dir);
    if (dp == NULL) {
        tpm_log_error("open %s failed: %s", dir, strerror(errno));
        return TPM_ERR_IO;
    }
    while ((e = readdir(dp)) != NULL) {
        int64_t s   = ckpt_step_of(e->d_name);
        int     del = (s >= 0 && cutoff >= 0 && s < cutoff && s != cur) || is_stale_tmp(e->d_name);
        if (!del) {
            continue;
        }
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (unlink(path) != 0) {
            tpm_log_warn("cannot delete old checkpoint %s: %s", path, strerror(errno));
        } else {
            tpm_log_debug("deleted %s", path);
        }
    }
    closedir(dp);
    return TPM_OK;
}

tpm_status_t tpm_ckpt_commit(const char *dir, const char *path, int keep)
{
    const char *slash = strrchr(path, '/');
    const char *name  = slash != NULL ? slash + 1 : path;

    if (keep < 1) {
        keep = 1;
    }
    TPM_CHECK(write_latest(dir, name));
    return prune(dir, name, keep);
}
