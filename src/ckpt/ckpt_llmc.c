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

typedef enum {
    LLMC_SAME = 0,  /* same (rows, cols) layout */
    LLMC_QKV,       /* rows permuted: tpmpi head-grouped, llm.c q|k|v */
    LLMC_TRANSPOSE, /* tpmpi [in, out], llm.c (out, in) */
} llmc_kind_t;

typedef struct {
    const char *name;
    int         block; /* 1: one slice per layer, (L, ...) in llm.c */
    int         tid;   /* tensor index inside its tpmpi group */
    llmc_kind_t kind;
} llmc_tensor_t;

/* llm.c's 16 tensors, in file order */
static const llmc_tensor_t llmc_tensors[TPM_LLMC_N_TENSORS] = {
    {"wte", 0, TPM_E_WTE, LLMC_SAME},
    {"wpe", 0, TPM_E_WPE, LLMC_SAME},
    {"ln1w", 1, TPM_B_LN1W, LLMC_SAME},
    {"ln1b", 1, TPM_B_LN1B, LLMC_SAME},
    {"qkvw", 1, TPM_B_QKVW, LLMC_QKV},
    {"qkvb", 1, TPM_B_QKVB, LLMC_QKV},
    {"attprojw", 1, TPM_B_ATTPROJW, LLMC_TRANSPOSE},
    {"attprojb", 1, TPM_B_ATTPROJB, LLMC_SAME},
    {"ln2w", 1, TPM_B_LN2W, LLMC_SAME},
    {"ln2b", 1, TPM_B_LN2B, LLMC_SAME},
    {"fcw", 1, TPM_B_FCW, LLMC_SAME},
    {"fcb", 1, TPM_B_FCB, LLMC_SAME},
    {"fcprojw", 1, TPM_B_FCPROJW, LLMC_TRANSPOSE},
    {"fcprojb", 1, TPM_B_FCPROJB, LLMC_SAME},
    {"lnfw", 0, TPM_E_LNFW, LLMC_SAME},
    {"lnfb", 0, TPM_E_LNFB, LLMC_SAME},
};

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
    tpm_param_desc_t d[TPM_GROUP_MAX_NT];

    tpm_model_group_desc(cfg, llmc_tensors[k].block ? 0 : cfg->L, d);
    return d[llmc_tensors[k].tid];
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
        o += llmc_tensors[k].block ? n * (size_t)cfg->L : n;
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
    const int64_t          cols  = d.cols;
    const size_t           slice = (size_t)d.rows * (size_t)d.cols;
    const off_t            base  = (off_t)TPM_LLMC_HEADER_INTS * 4 +
                       (off_t)(off[k] + (llmc_tensors[k].block ? (size_t)l * slice : 0)) * 4;

    if (nrows == 0) {
        return TPM_OK;
    }
    switch (llmc_tensors[k].kind) {
    case LLMC_SAME: {
        /* wte rows from V on are padding: zero whatever the file holds */
        int64_t valid = k == 0 ? (cfg->V > row0 ? cfg->V - row0 : 0) : nrows;
        if (valid > nrows) {
            valid = nrows;
        }
        memset(dst + valid * cols, 0, (size_t)(nrows - valid) * (size_t)cols * sizeof(float));
        return pread_all(fd, path, dst, (size_t)valid * (size_t)cols * sizeof(float),
                         base + (off_t)row0 * cols * 4);
    }
    case LLMC_QKV:
        for (int64_t r = 0; r < nrows; r++) {
            int64_t src = tpm_llmc_qkv_row(row0 + r, cfg->C, cfg->NH);
            TPM_CHECK(pread_all(fd, path, dst + r * cols, (size_t)cols * sizeof(float),
                                base + (off_t)src * cols * 4));
        }
        return TPM_OK;
    case LLMC_TRANSPOSE:
        /* tpmpi row i (input i) is column i of llm.c's (out, in) matrix: read the slice */
        TPM_CHECK(pread_all(fd, path, tmp, slice * sizeof(float), base));
        for (int64_t r = 0; r < nrows; r++) {
            for (int64_t o = 0; o < cols; o++) {
                dst[r * cols + o] = tmp[o * d.rows + row0 + r];
            }
        }
        return TPM_OK;
    }
    return TPM_ERR_INTERNAL;
}

tpm_status_t tpm_ckpt_import_llmc(tpm_zero3_t *z, const char *path)
{
    tpm_comm_t               *c   = z->comm;
    const tpm_model_config_t *cfg = &z->cfg;
    int32_t                   h[TPM_LLMC_HEADER_INTS];
    size_t                    off[TPM_LLMC_N_TENSORS], total, stage_n = 0;
    float                    *stage = NULL, *tmp = NULL;
    int                       fd = -1, Vp_file = 0;
    struct stat               st;
    tpm_status_t              status = TPM_OK;

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
        for (int g = 0; g < z->lay.n_groups; g++) {
            stage_n = z->lay.g[g].shard_numel > stage_n ? z->lay.g[g].shard_numel : stage_n;
        }
        status = tpm_malloc(stage_n * sizeof(float), (void **)&stage);
    }
    if (status == TPM_OK) {
        status = tpm_malloc((size_t)4 * cfg->C * cfg->C * sizeof(float), (void **)&tmp);
    }
    if (status == TPM_OK) {
        llmc_offsets(cfg, Vp_file, off, &total);
        for (int gi = 0; gi < z->lay.n_groups && status == TPM_OK; gi++) {
            const tpm_shard_group_t *g = &z->lay.g[gi];
            memset(stage, 0, g->shard_numel * sizeof(float));
            for (int k = 0; k < TPM_LLMC_N_TENSORS && status == TPM_OK; k++) {
                const tpm_shard_tensor_t *st_t;
                int64_t                   row0, nrows;
                if (llmc_tensors[k].block != (gi < cfg->L)) {
                    continue;
                }
                st_t = &g->t[llmc_tensors[k].tid];
                tpm_shard_rows(st_t, c->rank, &row0, &nrows);
                status = import_rows(fd, path, cfg, k, gi < cfg->L ? gi : 0, off, row0, nrows,
                                     stage + st_t->shard_off, tmp);
            }
            if (status == TPM_OK) {
                status = z->be->ops->copy(z->be, z->param + g->shard_base, stage,
                                          g->shard_numel * sizeof(float), TPM_COPY_H2D);
            }
        }
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
    tpm_free(stage);
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

    switch (llmc_tensors[k].kind) {
    case LLMC_SAME: memcpy(out, in, (size_t)rows * (size_t)cols * sizeof(float)); break;
    case LLMC_QKV:
        for (int64_t r = 0; r < rows; r++) {
            memcpy(out + tpm_llmc_qkv_row(r, cfg->C, cfg->NH) * cols, in + r * cols,
                   (size_t)cols * sizeof(float));
        }
        break;
    case LLMC_TRANSPOSE:
        for (int64_t i = 0; i < rows; i++) {
            for (int64_t o = 0; o < cols; o++) {
                out[o * rows + i] = in[i * cols + o];
            }
        }
        break;
    }
}

tpm_status_t tpm_ckpt_export_llmc(tpm_comm_t *comm, const char *ckpt_path, const char *out_path)
{
    tpm_ckpt_t        *ck = NULL;
    tpm_model_config_t cfg;
    char               tmp_path[TPM_PATH_MAX + 8];
    int32_t            h[TPM_LLMC_HEADER_INTS];
    float             *in = NULL, *out = NULL;
    FILE              *f      = NULL;
    tpm_status_t       status = TPM_OK, wstatus = TPM_OK;
    const int          writer = comm->rank == 0;

    TPM_CHECK(tpm_ckpt_open(comm, ckpt_path, &ck));
    cfg = tpm_ckpt_meta(ck)->model;
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
            status = tpm_malloc(n * sizeof(float), (void **)&in);
        }
        if (status == TPM_OK) {
            status = tpm_malloc(n * sizeof(float), (void **)&out);
        }
        if (status == TPM_OK) {
            f = fopen(tmp_path, "wb");
            if (f == NULL) {
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
            if (fwrite(h, sizeof(h), 1, f) != 1) {
                tpm_log_error("write %s failed: %s", tmp_path, strerror(errno));
                status = TPM_ERR_IO;
            }
        }
    }
    TPM_CHECK_GOTO(tpm_ckpt_agree(comm, status), status, out);

    /* one tensor at a time: rank 0 reads all its rows, the others none */
    for (int k = 0; k < TPM_LLMC_N_TENSORS; k++) {
        const tpm_param_desc_t d  = llmc_desc(&cfg, k);
        const int              nl = llmc_tensors[k].block ? cfg.L : 1;
        for (int l = 0; l < nl; l++) {
            char name[64];
            if (llmc_tensors[k].block) {
                snprintf(name, sizeof(name), "model/h.%d.%s", l, llmc_tensors[k].name);
            } else {
                snprintf(name, sizeof(name), "model/%s", llmc_tensors[k].name);
            }
            TPM_CHECK_GOTO(tpm_ckpt_read_rows(ck, name, 0, writer ? d.rows : 0, in), status, out);
            if (writer && wstatus == TPM_OK) {
                size_t n = (size_t)d.rows * (size_t)d.cols;
                export_convert(&cfg, k, &d, in, out);
                if (fwrite(out, sizeof(float), n, f) != n) {
                    tpm_log_error("write %s failed: %s", tmp_path, strerror(errno));
                    wstatus = TPM_ERR_IO;
                }
            }
        }
    }
    if (f != NULL) {
        /* fsync, rename, fsync of the folder; deletes the temporary on any failure */
        wstatus = tpm_file_commit(f, tmp_path, out_path, wstatus);
        f       = NULL;
    }
    status = tpm_ckpt_agree(comm, wstatus);
    if (status == TPM_OK) {
        tpm_info0("exported %s (step %lld) to llm.c model file %s: L=%d C=%d NH=%d V=%d Vp=%d "
                  "maxT=%d, fp32",
                  ckpt_path, (long long)tpm_ckpt_meta(ck)->step, out_path, cfg.L, cfg.C, cfg.NH,
                  cfg.V, cfg.Vp, cfg.maxT);
    }

out:
    if (f != NULL) {
        fclose(f);
        unlink(tmp_path);
    }
    tpm_free(out);
    tpm_free(in);
    tpm_ckpt_close(ck);
    return status;
}
