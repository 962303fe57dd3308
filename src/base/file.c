/* SPDX-License-Identifier: MIT */
/*
 * file.c: durable file replacement (write a temporary, fsync it, rename it over the final
 * name, fsync the directory). The one implementation behind every published file of tpmpi;
 * the order of the calls is tested (tests/durable_writes.sh traces them with strace).
 */
#include "base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

/* longest directory name handled when syncing the parent of a path */
#define FILE_DIR_MAX 4096

static tpm_status_t fd_sync(const char *path, int flags)
{
    int fd = open(path, flags);

    if (fd < 0) {
        tpm_log_error("open %s for fsync failed: %s", path, strerror(errno));
        return TPM_ERR_IO;
    }
    if (fsync(fd) != 0) {
        tpm_log_error("fsync %s failed: %s", path, strerror(errno));
        close(fd);
        return TPM_ERR_IO;
    }
    close(fd);
    return TPM_OK;
}

tpm_status_t tpm_file_sync(const char *path)
{
    return fd_sync(path, O_RDONLY);
}

tpm_status_t tpm_dir_sync(const char *dir)
{
    return fd_sync(dir, O_RDONLY | O_DIRECTORY);
}

tpm_status_t tpm_file_publish(const char *tmp, const char *path)
{
    char        dir[FILE_DIR_MAX];
    const char *slash = strrchr(path, '/');

    if (slash == NULL) {
        snprintf(dir, sizeof(dir), ".");
    } else if (slash == path) {
        snprintf(dir, sizeof(dir), "/");
    } else if ((size_t)(slash - path) < sizeof(dir)) {
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    } else {
        tpm_log_error("directory of %s is too long", path);
        return TPM_ERR_INVALID_ARG;
    }
    if (rename(tmp, path) != 0) {
        tpm_log_error("rename %s to %s failed: %s", tmp, path, strerror(errno));
        return TPM_ERR_IO;
    }
    return tpm_dir_sync(dir);
}

tpm_status_t tpm_file_commit(FILE *f, const char *tmp, const char *path, tpm_status_t write_status)
{
    tpm_status_t status = write_status;

    if (status == TPM_OK && fflush(f) != 0) {
        tpm_log_error("write %s failed: %s", tmp, strerror(errno));
        status = TPM_ERR_IO;
    }
    if (status == TPM_OK && fsync(fileno(f)) != 0) {
        tpm_log_error("fsync %s failed: %s", tmp, strerror(errno));
        status = TPM_ERR_IO;
    }
    if (fclose(f) != 0 && status == TPM_OK) {
        tpm_log_error("close %s failed: %s", tmp, strerror(errno));
        status = TPM_ERR_IO;
    }
    if (status == TPM_OK) {
        status = tpm_file_publish(tmp, path);
    }
    if (status != TPM_OK) {
        /* after a failed directory fsync the rename has happened: nothing left to delete */
        unlink(tmp);
    }
    return status;
}

tpm_status_t tpm_file_create_tmp(const char *path, char *buf, size_t cap, FILE **f_p)
{
    int   n = snprintf(buf, cap, "%s.tmp", path);
    FILE *f;

    if (n < 0 || (size_t)n >= cap) {
        tpm_log_error("path too long: %s", path);
        return TPM_ERR_INVALID_ARG;
    }
    f = fopen(buf, "wb");
    if (f == NULL) {
        tpm_log_error("cannot write %s: %s", buf, strerror(errno));
        return TPM_ERR_IO;
    }
    *f_p = f;
    return TPM_OK;
}
