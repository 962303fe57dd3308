/* SPDX-License-Identifier: MIT */
/*
 * safetensors.c: the checked safetensors reader (safetensors.h).
 */
#include "ckpt/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/backend_cpu_quant.h"
#include "base/bf16.h"
#include "base/log.h"
#include "base/mem.h"

static const struct {
    const char    *name;
    tpm_st_dtype_t dtype;
    int            esize;
} st_dtypes[] = {
    {"F32", TPM_ST_F32, 4},    {"BF16", TPM_ST_BF16, 2}, {"F16", TPM_ST_F16, 2},
    {"F64", TPM_ST_OTHER, 8},  {"I64", TPM_ST_OTHER, 8}, {"I32", TPM_ST_OTHER, 4},
    {"I16", TPM_ST_OTHER, 2},  {"I8", TPM_ST_OTHER, 1},  {"U8", TPM_ST_OTHER, 1},
    {"BOOL", TPM_ST_OTHER, 1}, {"U16", TPM_ST_OTHER, 2}, {"U32", TPM_ST_OTHER, 4},
    {"U64", TPM_ST_OTHER, 8},  {"F8_E4M3", TPM_ST_OTHER, 1}, {"F8_E5M2", TPM_ST_OTHER, 1},
};

static tpm_status_t pread_full(int fd, void *buf, size_t n, uint64_t at, const char *path)
{
    char *p = buf;

    while (n > 0) {
        ssize_t r = pread(fd, p, n, (off_t)at);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            tpm_log_error("%s: read of %zu bytes at %llu failed: %s", path, n,
                          (unsigned long long)at, r < 0 ? strerror(errno) : "unexpected end");
            return TPM_ERR_IO;
        }
        p += r, n -= (size_t)r, at += (uint64_t)r;
    }
    return TPM_OK;
}

/* one header entry: name -> {"dtype", "shape", "data_offsets"} */
static tpm_status_t parse_entry(const tpm_st_file_t *f, const char *name, json_t *v,
                                uint64_t data_size, tpm_st_tensor_t *t)
{
    json_t     *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape");
    json_t     *of = json_object_get(v, "data_offsets");
    const char *ds;
    uint64_t    nbytes;
    size_t      k;

    if (!json_is_object(v) || !json_is_string(dt) || !json_is_array(sh) || !json_is_array(of) ||
        json_array_size(of) != 2) {
        tpm_log_error("%s: tensor '%s': an entry needs \"dtype\" (string), \"shape\" (array) "
                      "and \"data_offsets\" ([begin, end])",
                      f->path, name);
        return TPM_ERR_FORMAT;
    }
    ds       = json_string_value(dt);
    t->dtype = (tpm_st_dtype_t)-1;
    for (k = 0; k < sizeof(st_dtypes) / sizeof(st_dtypes[0]); k++) {
        if (strcmp(ds, st_dtypes[k].name) == 0) {
            t->dtype = st_dtypes[k].dtype;
            t->esize = st_dtypes[k].esize;
            snprintf(t->dtype_name, sizeof(t->dtype_name), "%s", ds);
        }
    }
    if ((int)t->dtype < 0) {
        tpm_log_error("%s: tensor '%s': unknown dtype '%.16s'", f->path, name, ds);
        return TPM_ERR_FORMAT;
    }
    if (json_array_size(sh) > TPM_ST_MAX_DIM) {
        tpm_log_error("%s: tensor '%s': %zu dimensions (at most %d)", f->path, name,
                      json_array_size(sh), TPM_ST_MAX_DIM);
        return TPM_ERR_FORMAT;
    }
    t->ndim  = (int)json_array_size(sh);
    t->numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        json_t *x = json_array_get(sh, (size_t)d);

        if (!json_is_integer(x) || json_integer_value(x) < 0 ||
            json_integer_value(x) > ((int64_t)1 << 40)) {
            tpm_log_error("%s: tensor '%s': dimension %d is not an integer in [0, 2^40]",
                          f->path, name, d);
            return TPM_ERR_FORMAT;
        }
        t->shape[d] = (int64_t)json_integer_value(x);
        if (t->shape[d] > 0 && t->numel > ((int64_t)1 << 50) / t->shape[d]) {
            tpm_log_error("%s: tensor '%s': the element count overflows", f->path, name);
            return TPM_ERR_FORMAT;
        }
        t->numel *= t->shape[d];
    }
    for (int i = 0; i < 2; i++) {
        json_t *x = json_array_get(of, (size_t)i);

        if (!json_is_integer(x) || json_integer_value(x) < 0) {
            tpm_log_error("%s: tensor '%s': data_offsets[%d] is not a non-negative integer",
                          f->path, name, i);
            return TPM_ERR_FORMAT;
        }
    }
    t->begin = (uint64_t)json_integer_value(json_array_get(of, 0));
    t->end   = (uint64_t)json_integer_value(json_array_get(of, 1));
    nbytes   = (uint64_t)t->numel * (uint64_t)t->esize;
    if (t->begin > t->end || t->end > data_size) {
        tpm_log_error("%s: tensor '%s': data_offsets [%llu, %llu) are outside the %llu data "
                      "bytes of the file",
                      f->path, name, (unsigned long long)t->begin, (unsigned long long)t->end,
                      (unsigned long long)data_size);
        return TPM_ERR_FORMAT;
    }
    if (t->end - t->begin != nbytes) {
        tpm_log_error("%s: tensor '%s': %llu data bytes for %lld %s elements (%llu bytes)",
                      f->path, name, (unsigned long long)(t->end - t->begin),
                      (long long)t->numel, t->dtype_name, (unsigned long long)nbytes);
        return TPM_ERR_FORMAT;
    }
    return TPM_OK;
}

static int by_begin(const void *a, const void *b)
{
    const tpm_st_tensor_t *x = a, *y = b;

    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

static tpm_status_t parse_header(tpm_st_file_t *f, const char *text, size_t n)
{
    json_error_t jerr;
    json_t      *root = json_loadb(text, n, JSON_REJECT_DUPLICATES, &jerr);
    const char  *key;
    json_t      *v;
    uint64_t     data_size = f->size - f->data_off;
    tpm_status_t status    = TPM_OK;
    int          i         = 0;

    if (root == NULL || !json_is_object(root)) {
        tpm_log_error("%s: the header is not a JSON object (%s, line %d)", f->path,
                      root == NULL ? jerr.text : "another JSON value", jerr.line);
        json_decref(root);
        return TPM_ERR_FORMAT;
    }
    f->n = (int)json_object_size(root) - (json_object_get(root, "__metadata__") != NULL);
    status = tpm_calloc(f->n > 0 ? (size_t)f->n : 1, sizeof(*f->t), (void **)&f->t);
    json_object_foreach(root, key, v)
    {
        if (status != TPM_OK) {
            break;
        }
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(v)) {
                tpm_log_error("%s: \"__metadata__\" is not an object", f->path);
                status = TPM_ERR_FORMAT;
            }
            continue;
        }
        status = parse_entry(f, key, v, data_size, &f->t[i]);
        if (status == TPM_OK) {
            f->t[i].name = strdup(key);
            status       = f->t[i].name != NULL ? TPM_OK : TPM_ERR_NO_MEMORY;
        }
        i++;
    }
    json_decref(root);
    if (status != TPM_OK) {
        return status;
    }
    /* no two tensors share a byte */
    {
        tpm_st_tensor_t *s;

        TPM_CHECK(tpm_malloc((size_t)(f->n > 0 ? f->n : 1) * sizeof(*s), (void **)&s));
        memcpy(s, f->t, (size_t)f->n * sizeof(*s));
        qsort(s, (size_t)f->n, sizeof(*s), by_begin);
        for (int k = 1; k < f->n; k++) {
            if (s[k].begin < s[k - 1].end) {
                tpm_log_error("%s: tensors '%s' and '%s' overlap in the data", f->path,
                              s[k - 1].name, s[k].name);
                status = TPM_ERR_FORMAT;
                break;
            }
        }
        tpm_free(s);
    }
    return status;
}

tpm_status_t tpm_st_open(const char *path, tpm_st_file_t **f_p)
{
    tpm_st_file_t *f;
    struct stat    st;
    unsigned char  len8[8];
    uint64_t       hlen = 0;
    char          *text = NULL;
    tpm_status_t   status;

    *f_p = NULL;
    TPM_CHECK(tpm_calloc(1, sizeof(*f), (void **)&f));
    f->fd   = open(path, O_RDONLY | O_CLOEXEC);
    f->path = strdup(path);
    if (f->path == NULL) {
        tpm_st_close(f);
        return TPM_ERR_NO_MEMORY;
    }
    if (f->fd < 0 || fstat(f->fd, &st) != 0) {
        tpm_log_error("%s: %s", path, strerror(errno));
        tpm_st_close(f);
        return TPM_ERR_IO;
    }
    f->size = (uint64_t)st.st_size;
    if (f->size < 8) {
        tpm_log_error("%s: %llu bytes: too short for a safetensors file", path,
                      (unsigned long long)f->size);
        tpm_st_close(f);
        return TPM_ERR_FORMAT;
    }
    status = pread_full(f->fd, len8, 8, 0, path);
    for (int i = 7; i >= 0 && status == TPM_OK; i--) {
        hlen = hlen << 8 | len8[i];
    }
    if (status == TPM_OK && (hlen < 2 || hlen > TPM_ST_MAX_HEADER || hlen > f->size - 8)) {
        tpm_log_error("%s: header length %llu does not fit the file (%llu bytes, at most %u)",
                      path, (unsigned long long)hlen, (unsigned long long)f->size,
                      TPM_ST_MAX_HEADER);
        status = TPM_ERR_FORMAT;
    }
    if (status == TPM_OK) {
        f->data_off = 8 + hlen;
        status      = tpm_malloc((size_t)hlen, (void **)&text);
    }
    if (status == TPM_OK) {
        status = pread_full(f->fd, text, (size_t)hlen, 8, path);
    }
    if (status == TPM_OK) {
        status = parse_header(f, text, (size_t)hlen);
    }
    tpm_free(text);
    if (status != TPM_OK) {
        tpm_st_close(f);
        return status;
    }
    *f_p = f;
    return TPM_OK;
}

void tpm_st_close(tpm_st_file_t *f)
{
    if (f == NULL) {
        return;
    }
    if (f->fd >= 0) {
        close(f->fd);
    }
    for (int i = 0; f->t != NULL && i < f->n; i++) {
        free(f->t[i].name);
    }
    tpm_free(f->t);
    free(f->path);
    tpm_free(f);
}

const tpm_st_tensor_t *tpm_st_find(const tpm_st_file_t *f, const char *name)
{
    for (int i = 0; i < f->n; i++) {
        if (f->t[i].name != NULL && strcmp(f->t[i].name, name) == 0) {
            return &f->t[i];
        }
    }
    return NULL;
}

tpm_status_t tpm_st_read(const tpm_st_file_t *f, const tpm_st_tensor_t *t, int64_t first,
                         int64_t n, float *dst)
{
    const uint64_t at = f->data_off + t->begin + (uint64_t)first * (uint64_t)t->esize;
    uint16_t      *h;
    tpm_status_t   status;

    if (first < 0 || n < 0 || first > t->numel || n > t->numel - first) {
        tpm_log_error("%s: tensor '%s': elements [%lld, %lld) outside its %lld", f->path,
                      t->name, (long long)first, (long long)(first + n), (long long)t->numel);
        return TPM_ERR_INVALID_ARG;
    }
    if (n == 0) {
        return TPM_OK;
    }
    switch (t->dtype) {
    case TPM_ST_F32: return pread_full(f->fd, dst, (size_t)n * 4, at, f->path);
    case TPM_ST_BF16:
    case TPM_ST_F16:
        /* the 2-byte codes land in the upper half of dst, then widen front to back */
        h      = (uint16_t *)(void *)dst + n;
        status = pread_full(f->fd, h, (size_t)n * 2, at, f->path);
        for (int64_t i = 0; status == TPM_OK && i < n; i++) {
            dst[i] = t->dtype == TPM_ST_BF16 ? tpm_bf16_to_float(h[i]) : tpm_fp16_to_float(h[i]);
        }
        return status;
    case TPM_ST_OTHER: break;
    }
    tpm_log_error("%s: tensor '%s' is %s; tpmpi reads F32, BF16 and F16", f->path, t->name,
                  t->dtype_name);
    return TPM_ERR_UNSUPPORTED;
}
