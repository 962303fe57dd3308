/* SPDX-License-Identifier: MIT */
/*
 * failwrite.c: an LD_PRELOAD shim for tests that makes writes to chosen files fail, the way
 * a full disk or a dying device does, underneath MPI-IO and HDF5 (tests/ckpt_diskfull.sh).
 *
 *   TPM_FAILWRITE_AFTER=K     each process may write K bytes to matching files; the write
 *                             that crosses K is cut short at K, every later one fails
 *   TPM_FAILWRITE_MATCH=S     only files whose path ends in S (default ".h5.tmp"; a suffix,
 *                             so that Open MPI's own side files, such as the shared file
 *                             pointer's "<file>_cid-..." segment, keep working)
 *   TPM_FAILWRITE_ERRNO=E     ENOSPC (default) or EIO
 *
 * Wraps write, writev, pwrite, pwritev, pwritev2 (and the *64 aliases). Unset AFTER: inert.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static long long   fw_limit = -2; /* -2: not read yet, -1: inert */
static long long   fw_done;
static int         fw_errno = ENOSPC;
static const char *fw_match = ".h5.tmp";

static void fw_init(void)
{
    const char *s;

    if (fw_limit != -2) {
        return;
    }
    s        = getenv("TPM_FAILWRITE_AFTER");
    fw_limit = s != NULL && *s != '\0' ? atoll(s) : -1;
    s        = getenv("TPM_FAILWRITE_MATCH");
    if (s != NULL && *s != '\0') {
        fw_match = s;
    }
    s = getenv("TPM_FAILWRITE_ERRNO");
    if (s != NULL && strcmp(s, "EIO") == 0) {
        fw_errno = EIO;
    }
}

/* FW_PASS: not a matching file; FW_FAIL: fail the call; else the bytes it may write */
#define FW_PASS (-3)
#define FW_FAIL (-1)
static ssize_t fw_allow(int fd, size_t len)
{
    char    link[64], path[4096];
    ssize_t n;

    fw_init();
    if (fw_limit < 0) {
        return FW_PASS;
    }
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof(path) - 1);
    if (n <= 0) {
        return FW_PASS;
    }
    path[n] = '\0';
    if ((size_t)n < strlen(fw_match) || strcmp(path + n - strlen(fw_match), fw_match) != 0) {
        return FW_PASS;
    }
    if (fw_done >= fw_limit && len > 0) {
        return FW_FAIL;
    }
    if ((long long)len > fw_limit - fw_done) {
        return (ssize_t)(fw_limit - fw_done);
    }
    return (ssize_t)len;
}

static size_t iov_len(const struct iovec *iov, int cnt)
{
    size_t t = 0;

    for (int i = 0; i < cnt; i++) {
        t += iov[i].iov_len;
    }
    return t;
}

/* the first iovecs covering @p allow bytes (the last one shortened) into @p out */
static int iov_cut(const struct iovec *iov, int cnt, size_t allow, struct iovec *out)
{
    int k = 0;

    for (int i = 0; i < cnt && allow > 0 && k < 64; i++, k++) {
        out[k] = iov[i];
        if (out[k].iov_len > allow) {
            out[k].iov_len = allow;
        }
        allow -= out[k].iov_len;
    }
    return k;
}

typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
typedef ssize_t (*pwritev_fn)(int, const struct iovec *, int, off_t);
typedef ssize_t (*pwritev2_fn)(int, const struct iovec *, int, off_t, int);

#define FW_REAL(_name, _type)                                                                      \
    static _type real = NULL;                                                                      \
    if (real == NULL) {                                                                            \
        real = (_type)dlsym(RTLD_NEXT, _name);                                                     \
    }

static ssize_t fw_count(ssize_t r)
{
    if (r > 0) {
        fw_done += r;
    }
    return r;
}

ssize_t write(int fd, const void *buf, size_t len)
{
    FW_REAL("write", write_fn);
    ssize_t a = fw_allow(fd, len);
    if (a == FW_PASS) {
        return real(fd, buf, len);
    }
    if (a == FW_FAIL) {
        errno = fw_errno;
        return -1;
    }
    return fw_count(real(fd, buf, (size_t)a));
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
    FW_REAL("pwrite", pwrite_fn);
    ssize_t a = fw_allow(fd, len);
    if (a == FW_PASS) {
        return real(fd, buf, len, off);
    }
    if (a == FW_FAIL) {
        errno = fw_errno;
        return -1;
    }
    return fw_count(real(fd, buf, (size_t)a, off));
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off)
{
    return pwrite(fd, buf, len, off);
}

static ssize_t fw_vec(int fd, const struct iovec *iov, int cnt, off_t off, int flags, int kind)
{
    size_t       len = iov_len(iov, cnt);
    ssize_t      a   = fw_allow(fd, len);
    struct iovec cut[64];
    int          k = cnt;

    if (a == FW_FAIL) {
        errno = fw_errno;
        return -1;
    }
    if (a != FW_PASS && (size_t)a < len) {
        k   = iov_cut(iov, cnt, (size_t)a, cut);
        iov = cut;
    }
    ssize_t r;
    if (kind == 0) {
        FW_REAL("writev", writev_fn);
        r = real(fd, iov, k);
    } else if (kind == 1) {
        FW_REAL("pwritev", pwritev_fn);
        r = real(fd, iov, k, off);
    } else {
        FW_REAL("pwritev2", pwritev2_fn);
        r = real(fd, iov, k, off, flags);
    }
    return a == FW_PASS ? r : fw_count(r);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    return fw_vec(fd, iov, cnt, 0, 0, 0);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    return fw_vec(fd, iov, cnt, off, 0, 1);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off)
{
    return fw_vec(fd, iov, cnt, off, 0, 1);
}

ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
    return fw_vec(fd, iov, cnt, off, flags, 2);
}

ssize_t pwritev64v2(int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
    return fw_vec(fd, iov, cnt, off, flags, 2);
}
