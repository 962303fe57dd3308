/* SPDX-License-Identifier: MIT */
/*
 * loader.c: llm.c token shards (read, write) and deterministic batch sampling.
 *
 * A split is every regular file in the data directory whose name contains the
 * split name and ends in ".bin", read in strcmp order into one token stream.
 * Headers are decoded byte by byte (little-endian, as llm.c writes them) and
 * every size is checked against the file before anything is read.
 */
#include "data/loader.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h> /* qsort */
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/file.h"
#include "base/mem.h"
#include "base/rng.h"

#define SHARD_MAGIC        20240520
#define SHARD_VERSION      1
#define SHARD_HEADER_INTS  256
#define SHARD_HEADER_BYTES (SHARD_HEADER_INTS * 4)

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static int host_is_little_endian(void)
{
    const uint16_t one = 1;

    return *(const unsigned char *)&one == 1;
}

static void swap_u16(uint16_t *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        t[i] = (uint16_t)(t[i] << 8 | t[i] >> 8);
    }
}

static tpm_status_t read_full(int fd, void *buf, size_t n, const char *path)
{
    size_t got = 0;

    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);

        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            tpm_log_error("read %s failed: %s", path, strerror(errno));
            return TPM_ERR_IO;
        }
        if (r == 0) {
            tpm_log_error("read %s failed: file ended after %zu of %zu bytes", path, got, n);
            return TPM_ERR_FORMAT;
        }
        got += (size_t)r;
    }
    return TPM_OK;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        tpm_free(names[i]);
    }
    tpm_free(names);
}

/* *out_p = a + b + c as a new string (caller frees with tpm_free). */
static tpm_status_t str_cat3(const char *a, const char *b, const char *c, char **out_p)
{
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    char  *s;

    TPM_CHECK(tpm_malloc(la + lb + lc + 1, (void **)&s));
    memcpy(s, a, la);
    memcpy(s + la, b, lb);
    memcpy(s + la + lb, c, lc + 1);
    *out_p = s;
    return TPM_OK;
}

/* Sorted list of DIR/NAME paths of the split's shards (caller frees with free_names). */
static tpm_status_t list_shards(const char *dir, const char *split, char ***names_p, size_t *n_p)
{
    tpm_status_t   status = TPM_OK;
    DIR           *d;
    struct dirent *e;
    char         **names = NULL;
    size_t         n = 0, cap = 0;

    d = opendir(dir);
    if (d == NULL) {
        tpm_log_error("data directory %s: %s", dir, strerror(errno));
        return errno == ENOENT || errno == ENOTDIR ? TPM_ERR_NOT_FOUND : TPM_ERR_IO;
    }
    while ((e = readdir(d)) != NULL) {
        size_t      len = strlen(e->d_name);
        struct stat st;
        char       *path;

        if (len < 4 || strcmp(e->d_name + len - 4, ".bin") != 0 ||
            strstr(e->d_name, split) == NULL) {
            continue;
        }
        TPM_CHECK_GOTO(str_cat3(dir, "/", e->d_name, &path), status, out);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
            tpm_free(path); /* a dangling link or a folder is not a shard */
            continue;
        }
        if (n == cap) {
            size_t ncap = cap ? 2 * cap : 16;
            char **nn;

            status = tpm_calloc(ncap, sizeof(*nn), (void **)&nn);
            if (status != TPM_OK) {
                tpm_free(path);
                goto out;
            }
            if (n > 0) {
                memcpy(nn, names, n * sizeof(*nn));
            }
            tpm_free(names);
            names = nn;
            cap   = ncap;
        }
        names[n++] = path;
    }
    if (n > 1) {
        qsort(names, n, sizeof(*names), cmp_str);
    }
out:
    closedir(d);
    if (status != TPM_OK) {
        free_names(names, n);
        return status;
    }
    *names_p = names;
    *n_p     = n;
    return TPM_OK;
}

/* Open a shard and check its header against its size; *ntok_p is the token count. */
static tpm_status_t shard_open(const char *path, int *fd_p, size_t *ntok_p)
{
    unsigned char h[SHARD_HEADER_BYTES];
    struct stat   st;
    uint32_t      magic, version, ntok;
    uint64_t      want;
    tpm_status_t  status;
    int           fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        tpm_log_error("open %s failed: %s", path, strerror(errno));
        return errno == ENOENT ? TPM_ERR_NOT_FOUND : TPM_ERR_IO;
    }
    if (fstat(fd, &st) != 0) {
        tpm_log_error("stat %s failed: %s", path, strerror(errno));
        close(fd);
        return TPM_ERR_IO;
    }
    if (st.st_size < SHARD_HEADER_BYTES) {
        tpm_log_error("%s: truncated token shard: %lld bytes, the header alone is %d", path,
                      (long long)st.st_size, SHARD_HEADER_BYTES);
        close(fd);
        return TPM_ERR_FORMAT;
    }
    status = read_full(fd, h, sizeof(h), path);
    if (status != TPM_OK) {
        close(fd);
        return status;
    }
    magic   = get_u32(h);
    version = get_u32(h + 4);
    ntok    = get_u32(h + 8);
    if (magic != SHARD_MAGIC || version != SHARD_VERSION) {
        tpm_log_error("%s: not an llm.c token shard (magic %u version %u, expected %d version "
                      "%d)",
                      path, magic, version, SHARD_MAGIC, SHARD_VERSION);
        close(fd);
        return TPM_ERR_FORMAT;
    }
    want = SHARD_HEADER_BYTES + 2 * (uint64_t)ntok;
    if ((uint64_t)st.st_size != want) {
        tpm_log_error("%s: token shard is %lld bytes, expected %llu for %u tokens (%s)", path,
                      (long long)st.st_size, (unsigned long long)want, ntok,
                      (uint64_t)st.st_size < want ? "truncated" : "trailing bytes");
        close(fd);
        return TPM_ERR_FORMAT;
    }
    *fd_p   = fd;
    *ntok_p = ntok;
    return TPM_OK;
}

tpm_status_t tpm_tokens_load(const char *dir, const char *split, tpm_tokens_t *toks)
{
    tpm_status_t status;
    char       **names;
    size_t       n_names, total = 0, pos = 0;
    uint16_t    *tok    = NULL;
    int          max_id = -1;

    if (dir == NULL || split == NULL || split[0] == '\0') {
        tpm_log_error("tokens: data directory and split name are required");
        return TPM_ERR_INVALID_ARG;
    }
    TPM_CHECK(list_shards(dir, split, &names, &n_names));
    if (n_names == 0) {
        /* a missing val split is normal: the caller decides whether this is an error */
        if (strcmp(split, "train") == 0) {
            tpm_log_error("%s: no %s shard (*%s*.bin) in this directory", dir, split, split);
        } else {
            tpm_log_debug("%s: no %s shard (*%s*.bin) in this directory", dir, split, split);
        }
        free_names(names, n_names);
        return TPM_ERR_NOT_FOUND;
    }
    /* Headers first: a bad shard fails before the big allocation. */
    for (size_t i = 0; i < n_names; i++) {
        size_t ntok;
        int    fd;

        TPM_CHECK_GOTO(shard_open(names[i], &fd, &ntok), status, out);
        close(fd);
        if (total > SIZE_MAX / 2 - ntok) {
            tpm_log_error("%s: split %s is too large for this machine", dir, split);
            status = TPM_ERR_OVERFLOW;
            goto out;
        }
        total += ntok;
    }
    if (total == 0) {
        tpm_log_error("%s: the %s split holds no tokens (%zu empty shard%s)", dir, split, n_names,
                      n_names == 1 ? "" : "s");
        status = TPM_ERR_FORMAT;
        goto out;
    }
    TPM_CHECK_GOTO(tpm_malloc(total * sizeof(*tok), (void **)&tok), status, out);
    for (size_t i = 0; i < n_names; i++) {
        size_t ntok;
        int    fd;

        /* Re-checked: the file may have changed since the first pass. */
        TPM_CHECK_GOTO(shard_open(names[i], &fd, &ntok), status, out);
        if (ntok > total - pos) {
            tpm_log_error("%s: grew while being read", names[i]);
            close(fd);
            status = TPM_ERR_FORMAT;
            goto out;
        }
        status = read_full(fd, tok + pos, ntok * sizeof(*tok), names[i]);
        close(fd);
        if (status != TPM_OK) {
            goto out;
        }
        pos += ntok;
    }
    if (pos != total) {
        tpm_log_error("%s: the %s shards shrank while being read", dir, split);
        status = TPM_ERR_FORMAT;
        goto out;
    }
    if (!host_is_little_endian()) {
        swap_u16(tok, total);
    }
    for (size_t i = 0; i < total; i++) {
        if (tok[i] > max_id) {
            max_id = tok[i];
        }
    }
    tpm_log_debug("%s: %s split, %zu shard(s), %zu tokens, largest id %d", dir, split, n_names,
                  total, max_id);
    toks->tok    = tok;
    toks->n      = total;
    toks->max_id = max_id;
    tok          = NULL;
    status       = TPM_OK;
out:
    tpm_free(tok);
    free_names(names, n_names);
    return status;
}

void tpm_tokens_cleanup(tpm_tokens_t *toks)
{
    if (toks == NULL) {
        return;
    }
    tpm_free(toks->tok);
    toks->tok    = NULL;
    toks->n      = 0;
    toks->max_id = -1;
}

tpm_status_t tpm_tokens_write_shard(const char *path, const uint16_t *tok, size_t n)
{
    unsigned char h[SHARD_HEADER_BYTES];
    unsigned char buf[8192];
    tpm_status_t  status = TPM_OK;
    char         *tmp;
    FILE         *f;

    if (n > INT32_MAX) {
        /* llm.c reads the count as int32 */
        tpm_log_error("%s: %zu tokens do not fit one shard (at most %d)", path, n, INT32_MAX);
        return TPM_ERR_INVALID_ARG;
    }
    if (n > 0 && tok == NULL) {
        tpm_log_error("%s: %zu tokens from a NULL buffer", path, n);
        return TPM_ERR_INVALID_ARG;
    }
    TPM_CHECK(str_cat3(path, ".tmp", "", &tmp));
    memset(h, 0, sizeof(h));
    put_u32(h, SHARD_MAGIC);
    put_u32(h + 4, SHARD_VERSION);
    put_u32(h + 8, (uint32_t)n);
    /* temporary, fsync, rename, fsync of the folder: a reader never sees a torn shard */
    f = fopen(tmp, "wb");
    if (f == NULL) {
        tpm_log_error("open %s failed: %s", tmp, strerror(errno));
        tpm_free(tmp);
        return TPM_ERR_IO;
    }
    if (fwrite(h, 1, sizeof(h), f) != sizeof(h)) {
        status = TPM_ERR_IO;
    }
    for (size_t i = 0; i < n && status == TPM_OK;) {
        size_t k = 0;

        for (; i < n && k + 2 <= sizeof(buf); i++, k += 2) {
            buf[k]     = (unsigned char)tok[i];
            buf[k + 1] = (unsigned char)(tok[i] >> 8);
        }
        if (fwrite(buf, 1, k, f) != k) {
            status = TPM_ERR_IO;
        }
    }
    if (status != TPM_OK) {
        tpm_log_error("write %s failed: %s", tmp, strerror(errno));
    }
    status = tpm_file_commit(f, tmp, path, status);
    tpm_free(tmp);
    return status;
}

/* salt of data order 2: its windows are not the ones order 1 or parameter init draw */
#define DATA_ORDER_SAMPLE_SALT 0x73616d706c65ULL /* "sample" */

tpm_data_key_t tpm_data_key(int order, uint64_t seed, int64_t s, int a, int A, int r, int N, int B)
{
    tpm_data_key_t k;

    if (order == TPM_DATA_ORDER_MICROBATCH) {
        k.seed   = seed;
        k.stream = ((uint64_t)s * (uint64_t)A + (uint64_t)a) * (uint64_t)N + (uint64_t)r;
        k.first  = 0;
    } else {
        /* Megatron-style: micro-step a of the step holds samples [a*N*B, (a+1)*N*B), rank r
         * the r-th B of them */
        k.seed   = seed ^ DATA_ORDER_SAMPLE_SALT;
        k.stream = (uint64_t)s;
        k.first  = ((uint64_t)a * (uint64_t)N + (uint64_t)r) * (uint64_t)B;
    }
    return k;
}

/*
 * Row b starts at tpm_rng_u64(seed, stream, first + b) mod (n - T), so any
 * rank can draw any row of any batch without drawing the others first.
 */
tpm_status_t tpm_tokens_batch(const tpm_tokens_t *toks, uint64_t seed, uint64_t stream,
                              uint64_t first, int B, int T, int32_t *x, int32_t *y)
{
    size_t range;

    if (B <= 0 || T <= 0) {
        tpm_log_error("tokens: batch shape B=%d T=%d must be positive", B, T);
        return TPM_ERR_INVALID_ARG;
    }
    if (toks == NULL || toks->tok == NULL || toks->n < (size_t)T + 1) {
        tpm_log_error("tokens: the split holds %zu tokens, a window of T+1 = %lld needs more",
                      toks != NULL ? toks->n : 0, (long long)T + 1);
        return TPM_ERR_INVALID_ARG;
    }
    range = toks->n - (size_t)T; /* valid starts: 0 .. n-T-1, so y's last token exists */
    for (int b = 0; b < B; b++) {
        size_t          off = (size_t)(tpm_rng_u64(seed, stream, first + (uint64_t)b) % range);
        const uint16_t *src = toks->tok + off;
        int32_t        *xb  = x + (size_t)b * (size_t)T;
        int32_t        *yb  = y + (size_t)b * (size_t)T;

        for (int t = 0; t < T; t++) {
            xb[t] = src[t];
            yb[t] = src[t + 1];
        }
    }
    return TPM_OK;
}
