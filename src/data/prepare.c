/* SPDX-License-Identifier: MIT */
/*
 * prepare.c: text files -> tokenizer.bin + train_000.bin + val_000.bin, and the
 * built-in corpus cache (Debian's fortunes, prepared once per user).
 *
 * Everything is held in memory: the corpus is read whole, the tokenizer is
 * trained on every document, then each document is encoded and followed by the
 * end-of-text token. The split is a fixed hash of the document index, so the
 * same inputs always give the same files (docs/DATA.md).
 */
#include "data/prepare.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/file.h"
#include "base/mem.h"
#include "base/rng.h"
#include "base/timer.h"
#include "data/loader.h"
#include "data/tokenizer.h"

#define PREP_PATH_MAX        4096
#define PREP_SPLIT_SEED      0x73706c6974ULL /* "split" */
#define PREP_BUILTIN_VALFR   0.05
#define PREP_MAX_SHARD_VOCAB 65536 /* ids are stored as uint16 */

/* ------------------------------------------------------------------------------------------ */
/* corpus                                                                                     */

typedef struct {
    char       **bufs; /* (n_bufs) file contents, owned */
    size_t       n_bufs;
    const char **docs; /* (n_docs) borrowed views into bufs */
    size_t      *lens;
    size_t       n_docs, cap_docs;
    size_t       n_bytes;
} corpus_t;

static void corpus_cleanup(corpus_t *c)
{
    for (size_t i = 0; i < c->n_bufs; i++) {
        tpm_free(c->bufs[i]);
    }
    tpm_free(c->bufs);
    tpm_free(c->docs);
    tpm_free(c->lens);
    memset(c, 0, sizeof(*c));
}

static tpm_status_t corpus_add(corpus_t *c, const char *s, size_t n)
{
    size_t i;

    /* whitespace-only pieces (blank lines around a '%') are not documents */
    for (i = 0; i < n; i++) {
        if (s[i] != ' ' && s[i] != '\n' && s[i] != '\t' && s[i] != '\r') {
            break;
        }
    }
    if (i == n) {
        return TPM_OK;
    }
    if (c->n_docs == c->cap_docs) {
        size_t       ncap = c->cap_docs ? 2 * c->cap_docs : 1024;
        const char **nd;
        size_t      *nl;

        TPM_CHECK(tpm_calloc(ncap, sizeof(*nd), (void **)&nd));
        if (tpm_calloc(ncap, sizeof(*nl), (void **)&nl) != TPM_OK) {
            tpm_free(nd);
            return TPM_ERR_NO_MEMORY;
        }
        if (c->n_docs > 0) {
            memcpy(nd, c->docs, c->n_docs * sizeof(*nd));
            memcpy(nl, c->lens, c->n_docs * sizeof(*nl));
        }
        tpm_free(c->docs);
        tpm_free(c->lens);
        c->docs     = nd;
        c->lens     = nl;
        c->cap_docs = ncap;
    }
    c->docs[c->n_docs] = s;
    c->lens[c->n_docs] = n;
    c->n_docs++;
    c->n_bytes += n;
    return TPM_OK;
}

/* A line holding exactly "%" (a CR before the newline is tolerated). */
static int is_sep_line(const char *s, size_t len)
{
    return (len == 1 && s[0] == '%') || (len == 2 && s[0] == '%' && s[1] == '\r');
}

/*
 * Fortune-format files (any line is a lone '%') give one document per piece
 * between separators, each keeping its final newline; other files are one
 * document.
 */
static tpm_status_t corpus_split(corpus_t *c, const char *s, size_t n, int *fortune_p)
{
    size_t doc     = 0;
    int    fortune = 0;

    for (size_t ls = 0; ls < n && !fortune;) {
        const char *nl = memchr(s + ls, '\n', n - ls);
        size_t      le = nl ? (size_t)(nl - s) : n;

        fortune = is_sep_line(s + ls, le - ls);
        ls      = le + 1;
    }
    *fortune_p = fortune;
    if (!fortune) {
        return corpus_add(c, s, n);
    }
    for (size_t ls = 0; ls < n;) {
        const char *nl = memchr(s + ls, '\n', n - ls);
        size_t      le = nl ? (size_t)(nl - s) : n;

        if (is_sep_line(s + ls, le - ls)) {
            TPM_CHECK(corpus_add(c, s + doc, ls - doc));
            doc = le + 1 < n ? le + 1 : n;
        }
        ls = le + 1;
    }
    if (doc < n) {
        TPM_CHECK(corpus_add(c, s + doc, n - doc));
    }
    return TPM_OK;
}

static tpm_status_t read_file(const char *path, char **buf_p, size_t *n_p)
{
    struct stat  st;
    tpm_status_t status = TPM_OK;
    char        *buf;
    size_t       n, got = 0;
    int          fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;

        tpm_log_error("input file %s: %s", path, strerror(err));
        return err == ENOENT || err == ENOTDIR ? TPM_ERR_NOT_FOUND : TPM_ERR_IO;
    }
    if (fstat(fd, &st) != 0) {
        tpm_log_error("stat %s failed: %s", path, strerror(errno));
        close(fd);
        return TPM_ERR_IO;
    }
    if (!S_ISREG(st.st_mode)) {
        tpm_log_error("input %s is not a regular file (give text files, not folders)", path);
        close(fd);
        return TPM_ERR_INVALID_ARG;
    }
    n      = (size_t)st.st_size;
    status = tpm_malloc(n ? n : 1, (void **)&buf);
    if (status != TPM_OK) {
        close(fd);
        return status;
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);

        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            tpm_log_error("read %s failed: %s", path, r < 0 ? strerror(errno) : "file shrank");
            status = TPM_ERR_IO;
            break;
        }
        got += (size_t)r;
    }
    close(fd);
    if (status != TPM_OK) {
        tpm_free(buf);
        return status;
    }
    *buf_p = buf;
    *n_p   = n;
    return TPM_OK;
}

static tpm_status_t corpus_read(corpus_t *c, const char *const *inputs, int n_inputs)
{
    int n_fortune = 0;

    TPM_CHECK(tpm_calloc((size_t)n_inputs, sizeof(*c->bufs), (void **)&c->bufs));
    for (int i = 0; i < n_inputs; i++) {
        size_t n;
        int    fortune;

        TPM_CHECK(read_file(inputs[i], &c->bufs[i], &n));
        c->n_bufs++;
        TPM_CHECK(corpus_split(c, c->bufs[i], n, &fortune));
        n_fortune += fortune;
    }
    tpm_log_debug("prepare: %d inputs (%d in fortune format), %zu documents, %zu bytes", n_inputs,
                  n_fortune, c->n_docs, c->n_bytes);
    return TPM_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* files and folders                                                                          */

static tpm_status_t mkdir_p(const char *path)
{
    char   buf[PREP_PATH_MAX];
    size_t n = strlen(path);

    if (n == 0 || n >= sizeof(buf)) {
        tpm_log_error("bad output folder name '%s'", path);
        return TPM_ERR_INVALID_ARG;
    }
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        struct stat st;

        if (buf[i] != '/' && buf[i] != '\0') {
            continue;
        }
        buf[i] = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST) {
            tpm_log_error("mkdir %s failed: %s", buf, strerror(errno));
            return TPM_ERR_IO;
        }
        if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) {
            tpm_log_error("%s exists and is not a folder", buf);
            return TPM_ERR_IO;
        }
        buf[i] = i < n ? '/' : '\0';
    }
    return TPM_OK;
}

static tpm_status_t path_join(char *buf, size_t cap, const char *dir, const char *name)
{
    int ret = snprintf(buf, cap, "%s/%s", dir, name);

    if (ret < 0 || (size_t)ret >= cap) {
        tpm_log_error("path too long: %s/%s", dir, name);
        return TPM_ERR_INVALID_ARG;
    }
    return TPM_OK;
}

static int file_is_regular(const char *dir, const char *name)
{
    char        path[PREP_PATH_MAX];
    struct stat st;

    return path_join(path, sizeof(path), dir, name) == TPM_OK && stat(path, &st) == 0 &&
           S_ISREG(st.st_mode);
}

/* Remove a folder holding only plain files (our own temporary build folder). */
static void remove_flat_dir(const char *dir)
{
    DIR           *d = opendir(dir);
    struct dirent *e;
    char           path[PREP_PATH_MAX];

    if (d == NULL) {
        return;
    }
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
            continue;
        }
        if (path_join(path, sizeof(path), dir, e->d_name) == TPM_OK) {
            unlink(path);
        }
    }
    closedir(d);
    rmdir(dir);
}

/* Other shards in out_dir would be read with ours: say so. */
static void warn_foreign_shards(const char *dir, int wrote_val)
{
    DIR           *d = opendir(dir);
    struct dirent *e;

    if (d == NULL) {
        return;
    }
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);

        if (len < 4 || strcmp(e->d_name + len - 4, ".bin") != 0 ||
            strcmp(e->d_name, "train_000.bin") == 0 ||
            (wrote_val && strcmp(e->d_name, "val_000.bin") == 0)) {
            continue;
        }
        if (strstr(e->d_name, "train") != NULL || strstr(e->d_name, "val") != NULL) {
            tpm_log_warn("%s/%s is not from this prepare run but will be read with its shards", dir,
                         e->d_name);
        }
    }
    closedir(d);
}

/* ------------------------------------------------------------------------------------------ */
/* prepare                                                                                    */

static int doc_is_val(size_t idx, double val_fraction)
{
    uint64_t h = tpm_rng_u64(PREP_SPLIT_SEED, 0, (uint64_t)idx);

    return (double)(h >> 11) * (1.0 / 9007199254740992.0) < val_fraction;
}

/* Which documents go to val; with >= 2 documents both splits get at least one. */
static void choose_val(size_t n_docs, double val_fraction, unsigned char *is_val)
{
    size_t n_val = 0;

    if (n_docs < 2) {
        is_val[0] = 0; /* a lone document is split by tokens instead (tpm_prepare_run) */
        return;
    }
    for (size_t i = 0; i < n_docs; i++) {
        is_val[i] = (unsigned char)doc_is_val(i, val_fraction);
        n_val += is_val[i];
    }
    if (val_fraction <= 0.0) {
        return;
    }
    /* Fix an empty side with the document whose hash is nearest to the boundary. */
    if (n_val == 0 || n_val == n_docs) {
        size_t   best   = 0;
        uint64_t best_h = 0;

        for (size_t i = 0; i < n_docs; i++) {
            uint64_t h = tpm_rng_u64(PREP_SPLIT_SEED, 0, (uint64_t)i);

            if (i == 0 || (n_val == 0 ? h < best_h : h > best_h)) {
                best   = i;
                best_h = h;
            }
        }
        is_val[best] = n_val == 0;
    }
}

static tpm_status_t encode_docs(const tpm_tokenizer_t *tok, const corpus_t *c,
                                const unsigned char *is_val, uint16_t *train, size_t *n_train_p,
                                uint16_t *val, size_t *n_val_p)
{
    size_t   longest = 1, n_train = 0, n_val = 0;
    int32_t *ids;
    uint16_t eot = (uint16_t)tpm_tokenizer_eot(tok);

    for (size_t i = 0; i < c->n_docs; i++) {
        longest = c->lens[i] > longest ? c->lens[i] : longest;
    }
    TPM_CHECK(tpm_calloc(longest, sizeof(*ids), (void **)&ids)); /* ids <= bytes */
    for (size_t i = 0; i < c->n_docs; i++) {
        uint16_t    *dst = is_val[i] ? val : train;
        size_t      *pos = is_val[i] ? &n_val : &n_train;
        size_t       k;
        tpm_status_t status = tpm_tokenizer_encode(tok, c->docs[i], c->lens[i], ids, longest, &k);

        if (status != TPM_OK) {
            tpm_free(ids);
            return status;
        }
        for (size_t j = 0; j < k; j++) {
            dst[*pos + j] = (uint16_t)ids[j];
        }
        dst[*pos + k] = eot;
        *pos += k + 1;
    }
    tpm_free(ids);
    *n_train_p = n_train;
    *n_val_p   = n_val;
    return TPM_OK;
}

tpm_status_t tpm_prepare_run(const char *const *inputs, int n_inputs, const char *out_dir,
                             int vocab_size, double val_fraction)
{
    tpm_status_t     status;
    corpus_t         c;
    tpm_tokenizer_t *tok    = NULL;
    unsigned char   *is_val = NULL;
    uint16_t        *train = NULL, *val = NULL;
    size_t           n_train = 0, n_val = 0, n_val_docs = 0, cap;
    char             path[PREP_PATH_MAX];
    double           t0 = tpm_time_now(), t_read, t1;

    memset(&c, 0, sizeof(c));
    if (inputs == NULL || n_inputs <= 0) {
        tpm_log_error("prepare: no input files given");
        return TPM_ERR_INVALID_ARG;
    }
    if (out_dir == NULL || out_dir[0] == '\0') {
        tpm_log_error("prepare: no output folder given");
        return TPM_ERR_INVALID_ARG;
    }
    if (vocab_size < 258 || vocab_size > PREP_MAX_SHARD_VOCAB) {
        tpm_log_error("prepare: vocabulary size %d is out of range [258, %d] (token shards "
                      "store ids as uint16)",
                      vocab_size, PREP_MAX_SHARD_VOCAB);
        return TPM_ERR_INVALID_ARG;
    }
    if (!(val_fraction >= 0.0 && val_fraction < 1.0)) {
        tpm_log_error("prepare: validation fraction %g is out of range [0, 1)", val_fraction);
        return TPM_ERR_INVALID_ARG;
    }
    TPM_CHECK_GOTO(corpus_read(&c, inputs, n_inputs), status, out);
    if (c.n_docs == 0) {
        tpm_log_error("prepare: the %d input file%s hold%s no text", n_inputs,
                      n_inputs == 1 ? "" : "s", n_inputs == 1 ? "s" : "");
        status = TPM_ERR_INVALID_ARG;
        goto out;
    }
    tpm_info0("prepare: %zu documents, %zu bytes from %d file%s; training a %d-token BPE "
              "tokenizer",
              c.n_docs, c.n_bytes, n_inputs, n_inputs == 1 ? "" : "s", vocab_size);
    t_read = tpm_time_now();
    TPM_CHECK_GOTO(tpm_tokenizer_train(c.docs, c.lens, c.n_docs, vocab_size, &tok), status, out);
    t1 = tpm_time_now();

    TPM_CHECK_GOTO(tpm_calloc(c.n_docs, 1, (void **)&is_val), status, out);
    choose_val(c.n_docs, val_fraction, is_val);
    /* every document needs at most one id per byte plus its end-of-text */
    cap = c.n_bytes + c.n_docs;
    TPM_CHECK_GOTO(tpm_malloc(cap * sizeof(*train), (void **)&train), status, out);
    TPM_CHECK_GOTO(tpm_malloc(cap * sizeof(*val), (void **)&val), status, out);
    TPM_CHECK_GOTO(encode_docs(tok, &c, is_val, train, &n_train, val, &n_val), status, out);
    for (size_t i = 0; i < c.n_docs; i++) {
        n_val_docs += is_val[i];
    }
    if (c.n_docs == 1 && val_fraction > 0.0 && n_train >= 2) {
        /* one document cannot be split by document: give val its last tokens instead */
        size_t k = (size_t)(val_fraction * (double)n_train + 0.5);

        k = k < 1 ? 1 : k > n_train - 1 ? n_train - 1 : k;
        memcpy(val, train + n_train - k, k * sizeof(*val));
        n_val = k;
        n_train -= k;
    }

    TPM_CHECK_GOTO(mkdir_p(out_dir), status, out);
    TPM_CHECK_GOTO(path_join(path, sizeof(path), out_dir, "tokenizer.bin"), status, out);
    TPM_CHECK_GOTO(tpm_tokenizer_save(tok, path), status, out);
    TPM_CHECK_GOTO(path_join(path, sizeof(path), out_dir, "train_000.bin"), status, out);
    TPM_CHECK_GOTO(tpm_tokens_write_shard(path, train, n_train), status, out);
    TPM_CHECK_GOTO(path_join(path, sizeof(path), out_dir, "val_000.bin"), status, out);
    if (n_val > 0) {
        TPM_CHECK_GOTO(tpm_tokens_write_shard(path, val, n_val), status, out);
    } else if (unlink(path) != 0 && errno != ENOENT) {
        /* an old val split would otherwise be read as if it came from these inputs */
        tpm_log_error("remove stale %s failed: %s", path, strerror(errno));
        status = TPM_ERR_IO;
        goto out;
    }
    warn_foreign_shards(out_dir, n_val > 0);
    tpm_info0("prepare: vocabulary %d (tokenizer %.2f s); train %zu tokens (%zu documents), val "
              "%zu tokens (%zu documents), %.2f bytes/token; wrote %s in %.2f s",
              tpm_tokenizer_vocab_size(tok), t1 - t_read, n_train, c.n_docs - n_val_docs, n_val,
              n_val_docs, (double)c.n_bytes / (double)(n_train + n_val), out_dir,
              tpm_time_now() - t0);
    if (n_val == 0) {
        tpm_info0("prepare: no val split (validation fraction %g)", val_fraction);
    }
    status = TPM_OK;
out:
    tpm_free(val);
    tpm_free(train);
    tpm_free(is_val);
    tpm_tokenizer_destroy(tok);
    corpus_cleanup(&c);
    return status;
}

/* ------------------------------------------------------------------------------------------ */
/* built-in corpus                                                                            */

tpm_status_t tpm_prepare_builtin_dir(char *buf, size_t cap)
{
    const char *env = getenv("TPMPI_CACHE");
    const char *mid = "";
    int         ret;

    if (env == NULL || env[0] == '\0') {
        env = getenv("XDG_CACHE_HOME");
        mid = "/tpmpi";
        if (env == NULL || env[0] != '/') { /* XDG: relative values are ignored */
            env = getenv("HOME");
            mid = "/.cache/tpmpi";
        }
    }
    if (env == NULL || env[0] == '\0') {
        tpm_log_error("no place for the built-in corpus cache: set TPMPI_CACHE or HOME");
        return TPM_ERR_INVALID_ARG;
    }
    ret = snprintf(buf, cap, "%s%s/fortunes-v%d", env, mid, TPM_BUILTIN_VOCAB);
    if (ret < 0 || (size_t)ret >= cap) {
        tpm_log_error("built-in corpus cache path is too long (%d bytes, room for %zu): %s%s", ret,
                      cap, env, mid);
        return TPM_ERR_INVALID_ARG;
    }
    return TPM_OK;
}

static int cache_complete(const char *dir)
{
    return file_is_regular(dir, "tokenizer.bin") && file_is_regular(dir, "train_000.bin") &&
           file_is_regular(dir, "val_000.bin");
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);

    return n >= k && strcmp(s + n - k, suf) == 0;
}

/*
 * The fortune text files: plain files in TPM_FORTUNES_DIR, sorted, without the
 * strfile indexes (*.dat), the UTF-8 twins some versions ship (*.u8), links
 * (other names for files already listed) and subfolders (off/ is offensive).
 */
static tpm_status_t list_fortunes(char ***paths_p, int *n_p)
{
    DIR           *d;
    struct dirent *e;
    char         **paths = NULL;
    int            n = 0, cap = 0;
    tpm_status_t   status = TPM_OK;

    d = opendir(TPM_FORTUNES_DIR);
    if (d == NULL) {
        tpm_log_error("the built-in corpus needs %s (%s): install Debian's fortunes package "
                      "(scripts/install-deps)",
                      TPM_FORTUNES_DIR, strerror(errno));
        return TPM_ERR_NOT_FOUND;
    }
    while ((e = readdir(d)) != NULL) {
        char        path[PREP_PATH_MAX];
        struct stat st;

        if (e->d_name[0] == '.' || has_suffix(e->d_name, ".dat") || has_suffix(e->d_name, ".u8") ||
            path_join(path, sizeof(path), TPM_FORTUNES_DIR, e->d_name) != TPM_OK ||
            lstat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
            continue;
        }
        if (n == cap) {
            char **np;
            int    ncap = cap ? 2 * cap : 64;

            TPM_CHECK_GOTO(tpm_calloc((size_t)ncap, sizeof(*np), (void **)&np), status, out);
            if (n > 0) {
                memcpy(np, paths, (size_t)n * sizeof(*np));
            }
            tpm_free(paths);
            paths = np;
            cap   = ncap;
        }
        TPM_CHECK_GOTO(tpm_malloc(strlen(path) + 1, (void **)&paths[n]), status, out);
        memcpy(paths[n], path, strlen(path) + 1);
        n++;
    }
    if (n == 0) {
        tpm_log_error("%s holds no fortune files: install Debian's fortunes package "
                      "(scripts/install-deps)",
                      TPM_FORTUNES_DIR);
        status = TPM_ERR_NOT_FOUND;
        goto out;
    }
    qsort(paths, (size_t)n, sizeof(*paths), cmp_str);
out:
    closedir(d);
    if (status != TPM_OK) {
        for (int i = 0; i < n; i++) {
            tpm_free(paths[i]);
        }
        tpm_free(paths);
        return status;
    }
    *paths_p = paths;
    *n_p     = n;
    return TPM_OK;
}

static tpm_status_t copy_out(const char *dir, char *buf, size_t cap)
{
    size_t n = strlen(dir);

    if (n >= cap) {
        tpm_log_error("built-in corpus path %s does not fit a %zu-byte buffer", dir, cap);
        return TPM_ERR_INVALID_ARG;
    }
    memcpy(buf, dir, n + 1);
    return TPM_OK;
}

tpm_status_t tpm_prepare_builtin(char *buf, size_t cap)
{
    char         dir[PREP_PATH_MAX], tmp[PREP_PATH_MAX + 32], parent[PREP_PATH_MAX];
    char       **paths = NULL;
    char        *slash;
    int          n = 0, ret;
    tpm_status_t status;

    TPM_CHECK(tpm_prepare_builtin_dir(dir, sizeof(dir)));
    if (cache_complete(dir)) {
        return copy_out(dir, buf, cap);
    }
    TPM_CHECK(list_fortunes(&paths, &n));
    memcpy(parent, dir, strlen(dir) + 1);
    slash = strrchr(parent, '/');
    if (slash != NULL && slash != parent) {
        *slash = '\0';
        TPM_CHECK_GOTO(mkdir_p(parent), status, out);
    } else {
        snprintf(parent, sizeof(parent), "%s", slash == NULL ? "." : "/");
    }
    ret = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", dir, (long)getpid());
    if (ret < 0 || (size_t)ret >= sizeof(tmp)) {
        tpm_log_error("built-in corpus cache path is too long: %s", dir);
        status = TPM_ERR_INVALID_ARG;
        goto out;
    }
    remove_flat_dir(tmp); /* left over by an earlier process with our pid */
    tpm_info0("preparing built-in corpus (Debian fortunes, %d files) into %s", n, dir);
    status =
        tpm_prepare_run((const char *const *)paths, n, tmp, TPM_BUILTIN_VOCAB, PREP_BUILTIN_VALFR);
    if (status != TPM_OK) {
        remove_flat_dir(tmp);
        goto out;
    }
    /*
     * rename() is atomic: readers see either no cache folder or a complete one. Its files
     * were fsync'ed as they were written (tpm_file_commit); the folder's entries and then the
     * rename itself are made durable here.
     */
    status = tpm_dir_sync(tmp);
    if (status != TPM_OK) {
        remove_flat_dir(tmp);
        goto out;
    }
    if (rename(tmp, dir) != 0) {
        int err = errno;

        remove_flat_dir(tmp);
        if ((err == EEXIST || err == ENOTEMPTY) && cache_complete(dir)) {
            tpm_info0("another process prepared %s first: using it", dir);
        } else {
            tpm_log_error("rename %s to %s failed: %s%s", tmp, dir, strerror(err),
                          err == EEXIST || err == ENOTEMPTY
                              ? " (the folder exists but is incomplete: remove it)"
                              : "");
            status = TPM_ERR_IO;
            goto out;
        }
    }
    status = tpm_dir_sync(parent);
    if (status == TPM_OK) {
        status = copy_out(dir, buf, cap);
    }
out:
    for (int i = 0; i < n; i++) {
        tpm_free(paths[i]);
    }
    tpm_free(paths);
    return status;
}
