/* SPDX-License-Identifier: MIT */
/*
 * ckpt_llmc.c: import and export of llm.c model files (layout in ckpt_llmc.h). The conversion
 * is a row permutation for QKV (head-grouped <-> q|k|v blocks), a transpose for the two
 * output projections, and the identity for everything else; the vocabulary padding rule
 * (multiple of 128) is the same on both sides, and padded rows are zero on both sides.
 */
#include "ckpt/ckpt_llmc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/file.h"
#include "base/mem.h"
#include "ckpt/ckpt.h"
#include "zero3/shard.h"

/* llm.c tensor k (file order), found in the architecture table (core/arch.h) */
typedef struct {
    int         block; /* 1: one slice per layer, (L, ...) in llm.c */
    int         tid;   /* tensor index inside its tpmpi group */
    tpm_xform_t kind;  /* llm.c layout: SAME, QKV (q | k | v rows) or TRANSPOSE ((out, in)) */
} llmc_tensor_t;

static llmc_tensor_t llmc_tensor(const tpm_model_config_t *cfg, int k)
{
    const tpm_arch_t *a = tpm_model_arch(cfg);
    llmc_tensor_t     r = {0, -1, TPM_XFORM_SAME};

    for (int t = 0; t < a->n_block; t++) {
        if (a->block[t].llmc_index == k) {
            r = (llmc_tensor_t){1, t, a->block[t].llmc_xform};
        }
    }
    for (int t = 0; t < a->n_emb; t++) {
        if (a->emb[t].llmc_index == k) {
            r = (llmc_tensor_t){0, t, a->emb[t].llmc_xform};
        }
    }
    TPM_ASSERT(r.tid >= 0 && (r.kind == TPM_XFORM_SAME || r.kind == TPM_XFORM_QKV ||
                              r.kind == TPM_XFORM_TRANSPOSE));
    return r;
}

int64_t tpm_llmc_qkv_row(int64_t r, int C, int NH)
{
    const int64_t hs = C / NH;
    const int64_t h = r / (3 * hs), rem = r % (3 * hs);
    const int64_t j = rem / hs, d = rem % hs;

    return j * C + h * hs + d;
}

/* tpmpi descriptor of llm.c tensor @p k (layer 0 for block tensors) */
static tpm_param_desc_t llmc_desc(const tpm_model_config_t *cfg, int k)
{
    tpm_param_desc_t    d[TPM_GROUP_MAX_NT];
    const llmc_tensor_t lt = llmc_tensor(cfg, k);

    tpm_model_group_desc(cfg, lt.block ? 0 : cfg->L, d);
    return d[lt.tid];
}

/* float offset of each llm.c tensor in the file, after the header; file wte has Vp_file rows */
static void llmc_offsets(const tpm_model_config_t *cfg, int Vp_file, size_t *off, size_t *total)
{
    size_t o = 0;

    for (int k = 0; k < TPM_LLMC_N_TENSORS; k++) {
        tpm_param_desc_t d = llmc_desc(cfg, k);
        size_t           n = (size_t)d.rows * (size_t)d.cols;
        if (k == 0) {
            n = (size_t)Vp_file * (size_t)cfg->C;
        }
        off[k] = o;
        o += llmc_tensor(cfg, k).block ? n * (size_t)cfg->L : n;
    }
    *total = o;
}

static tpm_status_t pread_all(int fd, const char *path, void *buf, size_t n, off_t at)
{
    char *p = buf;

    while (n > 0) {
        ssize_t r = pread(fd, p, n, at);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            tpm_log_error("read %s failed: %s", path, r < 0 ? strerror(errno) : "unexpected end");
            return r < 0 ? TPM_ERR_IO : TPM_ERR_FORMAT;
        }
        p += r;
        n -= (size_t)r;
        at += r;
    }
    return TPM_OK;
}

/* the header checked against the model of this run; *Vp_file_p is the file's padded vocab */
static tpm_status_t llmc_check_header(const char *path, const int32_t *h, off_t fsize,
                                      const tpm_model_config_t *cfg, int *Vp_file_p)
{
    static const struct {
        const char *field, *option;
        int         idx;
    } fields[] = {
        {"n_ctx", "--n-ctx", 2},   {"vocab_size", "--vocab-size", 3}, {"n_layer", "--n-layer", 4},
        {"n_head", "--n-head", 5}, {"n_embd", "--n-embd", 6},
    };
    const int    mine[7] = {0, 0, cfg->maxT, cfg->V, cfg->L, cfg->NH, cfg->C};
    tpm_status_t status  = TPM_OK;
    size_t       off[TPM_LLMC_N_TENSORS], total;

    if (h[0] != TPM_LLMC_MAGIC) {
        tpm_log_error("%s is not an llm.c model file (magic %d, expected %d)", path, (int)h[0],
                      TPM_LLMC_MAGIC);
        return TPM_ERR_FORMAT;
    }
    if (h[1] != TPM_LLMC_VERSION_FP32) {
        tpm_log_error("%s: llm.c model file version %d%s; only fp32 files (version %d) can be "
                      "imported",
                      path, (int)h[1], h[1] == TPM_LLMC_VERSION_BF16 ? " (bf16)" : "",
                      TPM_LLMC_VERSION_FP32);
        return TPM_ERR_FORMAT;
    }
    for (int i = 2; i < 8; i++) {
        if (h[i] <= 0) {
            tpm_log_error("%s: header field %d is %d", path, i, (int)h[i]);
            return TPM_ERR_FORMAT;
        }
    }
    if (h[7] < h[3]) {
        tpm_log_error("%s: padded vocabulary %d is smaller than the vocabulary %d", path, (int)h[7],
                      (int)h[3]);
        return TPM_ERR_FORMAT;
    }
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        int idx = fields[i].idx;
        if (h[idx] != mine[idx]) {
            tpm_log_error("llm.c file %s has %s = %d, but this run has %s = %d (%s)", path,
                          fields[i].field, (int)h[idx], fields[i].field, mine[idx],
                          fields[i].option);
            status = TPM_ERR_INVALID_ARG;
        }
    }
    TPM_CHECK(status);
    llmc_offsets(cfg, h[7], off, &total);
    if ((uint64_t)fsize != TPM_LLMC_HEADER_INTS * 4 + (uint64_t)total * 4) {
        tpm_log_error(
            "%s has %lld bytes, the header promises %llu: the file is %s", path, (long long)fsize,
            (unsigned long long)(TPM_LLMC_HEADER_INTS * 4 + (uint64_t)total * 4),
            (uint64_t)fsize < TPM_LLMC_HEADER_INTS * 4 + (uint64_t)total * 4 ? "truncated"
                                                                             : "too long");
        return TPM_ERR_FORMAT;
    }
    *Vp_file_p = h[7];
    return TPM_OK;
}

/* fill rows [row0, row0 + nrows) of tpmpi tensor (k, layer l) into dst from the open file */
static tpm_status_t import_rows(int fd, const char *path, const tpm_model_config_t *cfg, int k,
                                int l, const size_t *off, int64_t row0, int64_t nrows, float *dst,
                                float *tmp)
{
    const tpm_param_desc_t d     = llmc_desc(cfg, k);
    const llmc_tensor_t    lt    = llmc_tensor(cfg, k);
    const int64_t          cols  = d.cols;
    const size_t           slice = (size_t)d.rows * (size_t)d.cols;
    const off_t            base =
        (off_t)TPM_LLMC_HEADER_INTS * 4 + (off_t)(off[k] + (lt.block ? (size_t)l * slice : 0)) * 4;

    if (nrows == 0) {
        return TPM_OK;
    }
    switch (lt.kind) {
    case TPM_XFORM_SAME: {
        /* wte rows from V on are padding: zero whatever the file holds */
        int64_t valid = k == 0 ? (cfg->V > row0 ? cfg->V - row0 : 0) : nrows;
        if (valid > nrows) {
            valid = nrows;
        }
        memset(dst + valid * cols, 0, (size_t)(nrows - valid) * (size_t)cols * sizeof(float));
        return pread_all(fd, path, dst, (size_t)valid * (size_t)cols * sizeof(float),
                         base + (off_t)row0 * cols * 4);
    }
    case TPM_XFORM_QKV:
        for (int64_t r = 0; r < nrows; r++) {
            int64_t src = tpm_llmc_qkv_row(row0 + r, cfg->C, cfg->NH);
            TPM_CHECK(pread_all(fd, path, dst + r * cols, (size_t)cols * sizeof(float),
                                base + (off_t)src * cols * 4));
        }
        return TPM_OK;
    case TPM_XFORM_TRANSPOSE:
        /* tpmpi row i (input i) is column i of llm.c's (out, in) matrix: read the slice */
        TPM_CHECK(pread_all(fd, path, tmp, slice * sizeof(float), base));
        for (int64_t r = 0; r < nrows; r++) {
            for (int64_t o = 0; o < cols; o++) {
                dst[r * cols + o] = tmp[o * d.rows + row0 + r];
            }
        }
        return TPM_OK;
    case TPM_XFORM_QKV_T:
    case TPM_XFORM_QKV_GQA: break; /* not llm.c layouts (llmc_tensor) */
    }
    return TPM_ERR_INTERNAL;
}

/* an open llm.c file as a whole tensor source (core/tensor_io.h) */
typedef struct {
    int                       fd;
    const char               *path;
    const tpm_model_config_t *cfg;
    const size_t             *off; /* (TPM_LLMC_N_TENSORS) */
    float                    *tmp; /* one (4C, C) slice, for the transposes */
} llmc_src_t;

static tpm_status_t llmc_read(void *ctx, int g, int t, int64_t row0, int64_t nrows, float *dst)
{
    const llmc_src_t *s = ctx;

    return import_rows(s->fd, s->path, s->cfg, tpm_model_spec(s->cfg, g, t)->llmc_index,
                       g < s->cfg->L ? g : 0, s->off, row0, nrows, dst, s->tmp);
}

tpm_status_t tpm_ckpt_import_llmc(tpm_zero3_t *z, const char *path)
{
    tpm_comm_t               *c   = z->comm;
    const tpm_model_config_t *cfg = &z->cfg;
    int32_t                   h[TPM_LLMC_HEADER_INTS];
    size_t                    off[TPM_LLMC_N_TENSORS], total;
    float                    *tmp = NULL;
    int                       fd = -1, Vp_file = 0;
    struct stat               st;
    tpm_status_t              status = TPM_OK;

    if (cfg->arch != TPM_ARCH_GPT2) {
        /* the same configuration on every rank: the same answer everywhere */
        tpm_log_error("--init-from=llmc:%s: llm.c files hold GPT-2 models; this run is --arch=%s",
                      path, tpm_arch_id_name(cfg->arch));
        return TPM_ERR_INVALID_ARG;
    }
    tpm_zero3_params_changed(z); /* the shard is about to be overwritten */
    fd = open(path, O_RDONLY);
    if (fd < 0 || fstat(fd, &st) != 0) {
        int err = errno;
        tpm_log_error("cannot open llm.c model file %s: %s", path, strerror(err));
        status = err == ENOENT ? TPM_ERR_NOT_FOUND : TPM_ERR_IO;
    }
    if (status == TPM_OK && st.st_size < (off_t)sizeof(h)) {
        tpm_log_error("%s has %lld bytes, less than an llm.c header: not an llm.c model file", path,
                      (long long)st.st_size);
        status = TPM_ERR_FORMAT;
    }
    if (status == TPM_OK) {
        status = pread_all(fd, path, h, sizeof(h), 0);
    }
    if (status == TPM_OK) {
        status = llmc_check_header(path, h, st.st_size, cfg, &Vp_file);
    }
    if (status == TPM_OK) {
        status = tpm_malloc((size_t)4 * cfg->C * cfg->C * sizeof(float), (void **)&tmp);
    }
    if (status == TPM_OK) {
        /* each rank reads the rows of its shards (the reads are local: no communicator) */
        llmc_src_t            ls  = {fd, path, cfg, off, tmp};
        const tpm_tensor_io_t src = {.ctx = &ls, .read = llmc_read};
        const tpm_tensor_io_t dst = tpm_zero3_tensor_io(z);

        llmc_offsets(cfg, Vp_file, off, &total);
        status = tpm_tensor_copy(cfg, NULL, &src, &dst);
    }
    if (status == TPM_OK) {
        status = z->be->ops->memzero(z->be, z->m, z->lay.shard_numel * sizeof(float));
    }
    if (status == TPM_OK) {
        status = z->be->ops->memzero(z->be, z->v, z->lay.shard_numel * sizeof(float));
    }
    if (fd >= 0) {
        close(fd);
    }
    tpm_free(tmp);
    status = tpm_ckpt_agree(c, status);
    if (status == TPM_OK) {
        tpm_info0("imported llm.c model %s: L=%d C=%d NH=%d V=%d (padded %d in the file) "
                  "maxT=%d; fresh optimizer",
                  path, cfg->L, cfg->C, cfg->NH, cfg->V, (int)h[7], cfg->maxT);
    }
    return status;
}

/* tpmpi tensor (rows, cols) in @p in -> llm.c layout in @p out */
static void export_convert(const tpm_model_config_t *cfg, int k, const tpm_param_desc_t *d,
                           const float *in, float *out)
{
    const int64_t rows = d->rows, cols = d->cols;

    switch (llmc_tensor(cfg, k).kind) {
    case TPM_XFORM_SAME: memcpy(out, in, (size_t)rows * (size_t)cols * sizeof(float)); break;
    case TPM_XFORM_QKV:
        for (int64_t r = 0; r < rows; r++) {
            memcpy(out + tpm_llmc_qkv_row(r, cfg->C, cfg->NH) * cols, in + r * cols,
                   (size_t)cols * sizeof(float));
        }
        break;
    case TPM_XFORM_TRANSPOSE:
        for (int64_t i = 0; i < rows; i++) {
            for (int64_t o = 0; o < cols; o++) {
                out[o * rows + i] = in[i * cols + o];
            }
        }
        break;
    case TPM_XFORM_QKV_T:
    case TPM_XFORM_QKV_GQA: TPM_ASSERT(0); break; /* not llm.c layouts (llmc_tensor) */
    }
}

/*
 * An llm.c file being written, as a tensor sink (core/tensor_io.h): rank 0 holds every row
 * of every tensor, the other ranks none, so the checkpoint source reads each tensor whole on
 * rank 0; each one is converted to llm.c's layout and written at its offset in the file.
 */
typedef struct {
    int                       fd;   /* rank 0; -1 elsewhere */
    const char               *path; /* the temporary name, for messages */
    const tpm_model_config_t *cfg;
    const size_t             *off;    /* (TPM_LLMC_N_TENSORS) float offsets after the header */
    float                    *out;    /* the largest tensor, converted */
    int                       writer; /* this rank writes */
} llmc_sink_t;

static void llmc_sink_rows(void *ctx, int g, int t, int64_t *row0_p, int64_t *nrows_p)
{
    const llmc_sink_t *s = ctx;
    tpm_param_desc_t   d[TPM_GROUP_MAX_NT];

    tpm_model_group_desc(s->cfg, g, d);
    *row0_p  = 0;
    *nrows_p = s->writer ? d[t].rows : 0;
}

static tpm_status_t llmc_write(void *ctx, int g, int t, int64_t row0, int64_t nrows,
                               const float *src)
{
    const llmc_sink_t *s = ctx;
    const int          k = tpm_model_spec(s->cfg, g, t)->llmc_index;
    tpm_param_desc_t   d[TPM_GROUP_MAX_NT];
    size_t             n, at;
    const char        *p;

    (void)row0;
    if (!s->writer || nrows == 0) {
        return TPM_OK;
    }
    tpm_model_group_desc(s->cfg, g, d);
    n  = (size_t)d[t].rows * (size_t)d[t].cols;
    at = (size_t)TPM_LLMC_HEADER_INTS * 4 + (s->off[k] + (g < s->cfg->L ? (size_t)g * n : 0)) * 4;
    export_convert(s->cfg, k, &d[t], src, s->out);
    p = (const char *)s->out;
    for (size_t left = n * sizeof(float); left > 0;) {
        ssize_t w = pwrite(s->fd, p, left, (off_t)at);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            tpm_log_error("write %s failed: %s", s->path, w < 0 ? strerror(errno) : "no progress");
            return TPM_ERR_IO;
        }
        p += w;
        at += (size_t)w;
        left -= (size_t)w;
    }
    return TPM_OK;
}

tpm_status_t tpm_ckpt_export_llmc(tpm_comm_t *comm, const char *ckpt_path, const char *out_path)
{
    tpm_ckpt_t        *ck = NULL;
    tpm_model_config_t cfg;
    char               tmp_path[TPM_PATH_MAX + 8];
    int32_t            h[TPM_LLMC_HEADER_INTS];
    size_t             off[TPM_LLMC_N_TENSORS], total;
    float             *out    = NULL;
    int                fd     = -1;
    tpm_status_t       status = TPM_OK;
    const int          writer = comm->rank == 0;

    TPM_CHECK(tpm_ckpt_open(comm, ckpt_path, &ck));
    cfg = tpm_ckpt_meta(ck)->model;
    if (cfg.arch != TPM_ARCH_GPT2) {
        /* the file's metadata, the same on every rank */
        tpm_log_error("%s: a %s checkpoint; llm.c files hold GPT-2 models only (--format=llmc)",
                      ckpt_path, tpm_arch_id_name(cfg.arch));
        tpm_ckpt_close(ck);
        return TPM_ERR_INVALID_ARG;
    }
    llmc_offsets(&cfg, cfg.Vp, off, &total);
    if (writer) {
        size_t n = (size_t)cfg.Vp * (size_t)cfg.C;
        if (snprintf(tmp_path, sizeof(tmp_path), "%s.tmp", out_path) >= (int)sizeof(tmp_path)) {
            tpm_log_error("output path %s is too long", out_path);
            status = TPM_ERR_INVALID_ARG;
        }
        if (n < (size_t)4 * cfg.C * cfg.C) {
            n = (size_t)4 * cfg.C * cfg.C;
        }
        if ((size_t)cfg.maxT * cfg.C > n) {
            n = (size_t)cfg.maxT * cfg.C;
        }
        if (status == TPM_OK) {
            status = tpm_malloc(n * sizeof(float), (void **)&out);
        }
        if (status == TPM_OK) {
            fd = open(tmp_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd < 0) {
                tpm_log_error("cannot write %s: %s", tmp_path, strerror(errno));
                status = TPM_ERR_IO;
            }
        }
        if (status == TPM_OK) {
            memset(h, 0, sizeof(h));
            h[0] = TPM_LLMC_MAGIC;
            h[1] = TPM_LLMC_VERSION_FP32;
            h[2] = cfg.maxT;
            h[3] = cfg.V;
            h[4] = cfg.L;
            h[5] = cfg.NH;
            h[6] = cfg.C;
            h[7] = cfg.Vp;
            if (pwrite(fd, h, sizeof(h), 0) != (ssize_t)sizeof(h)) {
                tpm_log_error("write %s failed: %s", tmp_path, strerror(errno));
                status = TPM_ERR_IO;
            }
        }
    }
    TPM_CHECK_GOTO(tpm_ckpt_agree(comm, status), status, out);

    {
        /* every tensor, rank 0 reading all of its rows and the others none */
        llmc_sink_t           ls  = {fd, tmp_path, &cfg, off, out, writer};
        const tpm_tensor_io_t src = tpm_ckpt_tensor_io(ck);
        const tpm_tensor_io_t dst = {.ctx = &ls, .rows = llmc_sink_rows, .write = llmc_write};

        TPM_CHECK_GOTO(tpm_tensor_copy(&cfg, comm, &src, &dst), status, out);
    }
    if (writer) {
        if (fsync(fd) != 0) {
            tpm_log_error("write %s failed: %s", tmp_path, strerror(errno));
            status = TPM_ERR_IO;
        }
        if (close(fd) != 0 && status == TPM_OK) {
            tpm_log_error("write %s failed: %s", tmp_path, strerror(errno));
            status = TPM_ERR_IO;
        }
        fd = -1;
        if (status == TPM_OK) {
            /* rename, then fsync of the folder (base/file.h) */
            status = tpm_file_publish(tmp_path, out_path);
        }
        if (status != TPM_OK) {
            unlink(tmp_path);
        }
    }
    status = tpm_ckpt_agree(comm, status);
    if (status == TPM_OK) {
        tpm_info0("exported %s (step %lld) to llm.c model file %s: L=%d C=%d NH=%d V=%d Vp=%d "
                  "maxT=%d, fp32",
                  ckpt_path, (long long)tpm_ckpt_meta(ck)->step, out_path, cfg.L, cfg.C, cfg.NH,
                  cfg.V, cfg.Vp, cfg.maxT);
    }

out:
    if (fd >= 0) {
        close(fd);
        unlink(tmp_path);
    }
    tpm_free(out);
    tpm_ckpt_close(ck);
    return status;
}
