/* SPDX-License-Identifier: MIT */
/*
 * test_ckpt.c: checkpoint files under mpirun (any rank count), driven by tests/ckpt_roundtrip.sh
 * and tests/ckpt_llmc.sh. Modes:
 *   write FILE            fill params, m and v with a known function of (set, tensor, row,
 *                         col) on N ranks and save them
 *   read FILE WROTE_N     load on M ranks: every real row exact, padding zero, metadata intact;
 *                         weights-only load zeroes m and v; tpm_ckpt_read_rows on other splits
 *                         (tiling, everyone-reads-all, partial); bad names and ranges refused
 *   version FILE          a copy with format_version 99 is refused on every rank
 *   set-version IN OUT V  (helper) copy IN to OUT with format_version V, serial HDF5
 *   set-arch IN OUT NAME  (helper) copy IN to OUT with the "arch" attribute NAME ("-": removed,
 *                         as in files written before it was recorded), serial HDF5
 *   reset-optim IN OUT    (helper) copy with the AdamW moments zeroed (checksums valid): the
 *                         negative control of tests/ckpt_reshard.sh
 *   fixture FIX OUT.h5    save the parameters of tests/fixtures/gpt_tiny.bin as a checkpoint
 *   import FIX LLMC.bin   import an llm.c file and compare with the fixture's parameters, exact
 * "write" and "read" take a last argument "staged": the CPU backend then goes by another
 * name, so the checkpoint code copies shards through its host staging buffer, as it does
 * for device memory (the path a GPU backend takes).
 * Rank 0 prints "N passed, N failed"; the exit status is 1 on any failure.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hdf5.h>

#include "backend/backend.h"
#include "base/mem.h"
#include "ckpt/ckpt.h"
#include "ckpt/ckpt_llmc.h"
#include "comm/comm.h"
#include "mpi_check.h"
#include "zero3/zero3.h"

/* the test model: N = 3 does not divide the 4 heads, V = 100 is padded to 128 */
static tpm_model_config_t test_cfg(void)
{
    tpm_model_config_t mc = {.L = 2, .C = 32, .NH = 4, .V = 100, .maxT = 16};

    tpm_model_config_finish(&mc);
    return mc;
}

/* distinct, exactly representable values; padded wte rows are zero as in training */
static float value(int set, int g, int t, int64_t row, int64_t col, const tpm_param_desc_t *d)
{
    if (row >= d->valid_rows) {
        return 0.0f;
    }
    return (float)(set * 1000000 + g * 50000 + t * 3000 + (int)row * 20 + (int)col) / 64.0f;
}

static const char tok_bytes[] = "tokenizer bytes, odd length"; /* 27: a partial last word */

static int               staged;
static tpm_backend_ops_t staged_ops;

static tpm_status_t make_zero3(tpm_comm_t *c, const tpm_model_config_t *mc, tpm_backend_t **be,
                               tpm_zero3_t **z)
{
    TPM_CHECK(tpm_backend_create("cpu", 1, be));
    if (staged) {
        /* same functions, another name: not recognised as host memory */
        staged_ops      = *(*be)->ops;
        staged_ops.name = "cpu-staged";
        (*be)->ops      = &staged_ops;
    }
    return tpm_zero3_create(*be, c, mc, 2, 8, z);
}

/* the staged backend borrows the CPU ops: give them back so that its state is freed */
static void backend_destroy(tpm_backend_t *be)
{
    if (be != NULL && staged) {
        be->ops = &tpm_backend_cpu_ops;
    }
    tpm_backend_destroy(be);
}

static float *set_ptr(tpm_zero3_t *z, int set)
{
    return set == 0 ? z->param : set == 1 ? z->m : z->v;
}

static int mode_write(tpm_comm_t *c, const char *path)
{
    tpm_model_config_t mc = test_cfg();
    tpm_backend_t     *be = NULL;
    tpm_zero3_t       *z  = NULL;
    tpm_ckpt_meta_t    meta;

    mc_check_all(make_zero3(c, &mc, &be, &z) == TPM_OK, "zero3 create");
    for (int set = 0; set < 3; set++) {
        for (int gi = 0; gi < z->lay.n_groups; gi++) {
            const tpm_shard_group_t *g = &z->lay.g[gi];
            for (int t = 0; t < g->n_tensors; t++) {
                const tpm_shard_tensor_t *st  = &g->t[t];
                float                    *dst = set_ptr(z, set) + g->shard_base + st->shard_off;
                int64_t                   row0, nrows;
                tpm_shard_rows(st, c->rank, &row0, &nrows);
                for (int64_t r = 0; r < st->rows_per_rank; r++) {
                    for (int64_t k = 0; k < st->desc.cols; k++) {
                        /* padding rows get garbage: it must never reach the file */
                        dst[r * st->desc.cols + k] =
                            r < nrows ? value(set, gi, t, row0 + r, k, &st->desc) : 12345.0f;
                    }
                }
            }
        }
    }
    memset(&meta, 0, sizeof(meta));
    meta.model         = mc;
    meta.step          = 123;
    meta.tokens_seen   = 456789;
    meta.seed          = 42;
    meta.world_size    = c->size;
    meta.config_json   = "{\"test\":true}";
    meta.tokenizer     = tok_bytes;
    meta.tokenizer_len = sizeof(tok_bytes) - 1;
    meta.batch         = 2;
    meta.grad_accum    = 3;
    meta.seq_len       = 8;
    meta.lr            = 0.25;
    mc_check_all(tpm_ckpt_save(z, path, &meta) == TPM_OK, "save");
    tpm_zero3_destroy(z);
    backend_destroy(be);
    return 0;
}

static int shards_match(tpm_zero3_t *z, int set, int zero)
{
    int ok = 1;

    for (int gi = 0; gi < z->lay.n_groups; gi++) {
        const tpm_shard_group_t *g = &z->lay.g[gi];
        for (int t = 0; t < g->n_tensors; t++) {
            const tpm_shard_tensor_t *st  = &g->t[t];
            const float              *src = set_ptr(z, set) + g->shard_base + st->shard_off;
            int64_t                   row0, nrows;
            tpm_shard_rows(st, z->comm->rank, &row0, &nrows);
            for (int64_t r = 0; r < st->rows_per_rank; r++) {
                for (int64_t k = 0; k < st->desc.cols; k++) {
                    float want =
                        (r < nrows && !zero) ? value(set, gi, t, row0 + r, k, &st->desc) : 0.0f;
                    ok &= src[r * st->desc.cols + k] == want;
                }
            }
        }
    }
    return ok;
}

static int mode_read(tpm_comm_t *c, const char *path, int wrote_n)
{
    tpm_model_config_t     mc = test_cfg();
    tpm_backend_t         *be = NULL;
    tpm_zero3_t           *z  = NULL;
    tpm_ckpt_meta_t        meta;
    tpm_ckpt_t            *ck = NULL;
    const tpm_ckpt_meta_t *cm;
    float                 *buf = NULL;
    int64_t                row0, nrows;
    tpm_param_desc_t       d[TPM_GROUP_MAX_NT];
    int                    ok;
    tpm_status_t           st;

    mc_check_all(make_zero3(c, &mc, &be, &z) == TPM_OK, "zero3 create");
    /* stale values everywhere: the load must overwrite real rows and zero the padding */
    for (size_t i = 0; i < z->lay.shard_numel; i++) {
        z->param[i] = z->m[i] = z->v[i] = -7.0f;
    }
    memset(&meta, 0, sizeof(meta));
    mc_check_all(tpm_ckpt_load(z, path, 1, &meta) == TPM_OK, "load with optimizer state");
    mc_check_all(shards_match(z, 0, 0), "params: every row exact, padding zero");
    mc_check_all(shards_match(z, 1, 0), "adamw m carried over exactly");
    mc_check_all(shards_match(z, 2, 0), "adamw v carried over exactly");
    mc_check_all(meta.step == 123 && meta.tokens_seen == 456789 && meta.seed == 42 &&
                     meta.world_size == wrote_n && meta.batch == 2 && meta.grad_accum == 3 &&
                     meta.seq_len == 8 && meta.lr == 0.25 && meta.model.Vp == 128,
                 "metadata: step, tokens, seed, world size, batch, lr");
    mc_check_all(meta.config_json != NULL && strcmp(meta.config_json, "{\"test\":true}") == 0,
                 "config json");
    mc_check_all(meta.tokenizer_len == sizeof(tok_bytes) - 1 &&
                     memcmp(meta.tokenizer, tok_bytes, meta.tokenizer_len) == 0,
                 "tokenizer bytes");
    tpm_ckpt_meta_cleanup(&meta);

    mc_check_all(tpm_ckpt_load(z, path, 0, NULL) == TPM_OK, "weights-only load");
    mc_check_all(shards_match(z, 0, 0) && shards_match(z, 1, 1) && shards_match(z, 2, 1),
                 "weights-only: params kept, m and v zero");

    {
        tpm_model_config_t other = mc;
        other.C                  = 64;
        tpm_zero3_t *z2          = NULL;
        mc_check_all(tpm_zero3_create(be, c, &other, 2, 8, &z2) == TPM_OK, "zero3 C=64");
        st = tpm_ckpt_load(z2, path, 1, NULL);
        mc_check_all(st == TPM_ERR_INVALID_ARG, "a different n_embd is refused (INVALID_ARG)");
        tpm_zero3_destroy(z2);
    }

    /* serving access: other splits of the same file */
    mc_check_all(tpm_ckpt_open(c, path, &ck) == TPM_OK, "open");
    cm = tpm_ckpt_meta(ck);
    mc_check_all(cm->step == 123 && cm->model.L == 2 && cm->model.C == 32, "open: metadata");
    tpm_model_group_desc(&mc, 0, d);
    tpm_calloc(3 * 32 * 32, sizeof(float), (void **)&buf);
    /* QKV split by whole heads over the ranks: a tiling, checksum verified */
    tpm_split_rows(96, c->size, c->rank, &row0, &nrows);
    st = tpm_ckpt_read_rows(ck, "model/h.1.qkvw", row0, nrows, buf);
    ok = st == TPM_OK;
    for (int64_t r = 0; r < nrows && ok; r++) {
        for (int k = 0; k < 32; k++) {
            ok &= buf[r * 32 + k] == value(0, 1, TPM_B_QKVW, row0 + r, k, &d[TPM_B_QKVW]);
        }
    }
    mc_check_all(ok, "read_rows: a row split of h.1.qkvw");
    /* a vector every rank reads whole (replicated) */
    st = tpm_ckpt_read_rows(ck, "/optim/v/h.0.ln2b", 0, 32, buf);
    ok = st == TPM_OK;
    for (int k = 0; k < 32 && ok; k++) {
        ok &= buf[k] == value(2, 0, TPM_B_LN2B, k, 0, &d[TPM_B_LN2B]);
    }
    mc_check_all(ok, "read_rows: a replicated vector");
    /* only rank 0 reads a few rows: not a tiling, accepted unverified */
    st = tpm_ckpt_read_rows(ck, "model/wte", 3, c->rank == 0 ? 2 : 0, buf);
    mc_check_all(st == TPM_OK && (c->rank != 0 || buf[32] == value(0, 2, 0, 4, 0, &d[0])),
                 "read_rows: partial rows on one rank");
    mc_check_all(tpm_ckpt_read_rows(ck, "model/nope", 0, 0, buf) == TPM_ERR_FORMAT,
                 "read_rows: a missing dataset is refused on every rank");
    mc_check_all(tpm_ckpt_read_rows(ck, "model/wte", c->rank == 0 ? 120 : 0, 10, buf) ==
                     TPM_ERR_INVALID_ARG,
                 "read_rows: rows past the end (one rank) refused on every rank");
    tpm_ckpt_close(ck);
    tpm_free(buf);
    tpm_zero3_destroy(z);
    backend_destroy(be);
    return 0;
}

static int copy_file(const char *src, const char *dst)
{
    FILE  *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    char   b[65536];
    size_t n;
    int    ok = in != NULL && out != NULL;

    while (ok && (n = fread(b, 1, sizeof(b), in)) > 0) {
        ok = fwrite(b, 1, n, out) == n;
    }
    if (in != NULL) {
        fclose(in);
    }
    if (out != NULL) {
        ok &= fclose(out) == 0;
    }
    return ok;
}

/* rank 0, serial HDF5: copy @p in to @p out and rewrite its format_version */
static int set_version(tpm_comm_t *c, const char *in, const char *out, int32_t v)
{
    int ok = 1;

    if (c->rank == 0) {
        hid_t f, a = -1;
        ok = copy_file(in, out);
        f  = ok ? H5Fopen(out, H5F_ACC_RDWR, H5P_DEFAULT) : -1;
        if (f >= 0) {
            a = H5Aopen(f, "format_version", H5P_DEFAULT);
        }
        ok = a >= 0 && H5Awrite(a, H5T_NATIVE_INT32, &v) >= 0;
        if (a >= 0) {
            H5Aclose(a);
        }
        if (f >= 0) {
            H5Fclose(f);
        }
    }
    mc_check_all(ok, "make a copy with another format_version");
    return 0;
}

/* rank 0, serial HDF5: copy @p in to @p out with the arch attribute @p name ("-": removed) */
static int set_arch(tpm_comm_t *c, const char *in, const char *out, const char *name)
{
    int ok = 1;

    if (c->rank == 0) {
        hid_t f, a = -1, t = -1, sp = -1;
        ok = copy_file(in, out);
        f  = ok ? H5Fopen(out, H5F_ACC_RDWR, H5P_DEFAULT) : -1;
        ok = f >= 0 && H5Adelete(f, "arch") >= 0;
        if (ok && strcmp(name, "-") != 0) {
            t  = H5Tcopy(H5T_C_S1);
            ok = t >= 0 && H5Tset_size(t, strlen(name) + 1) >= 0;
            sp = H5Screate(H5S_SCALAR);
            a  = ok ? H5Acreate2(f, "arch", t, sp, H5P_DEFAULT, H5P_DEFAULT) : -1;
            ok = a >= 0 && H5Awrite(a, t, name) >= 0;
        }
        if (a >= 0) {
            H5Aclose(a);
        }
        if (sp >= 0) {
            H5Sclose(sp);
        }
        if (t >= 0) {
            H5Tclose(t);
        }
        if (f >= 0) {
            H5Fclose(f);
        }
    }
    mc_check_all(ok, "make a copy with another arch attribute");
    return 0;
}

/* rank 0, serial HDF5: copy @p in to @p out with data_order set to @p v (0: removed) */
static int set_data_order(tpm_comm_t *c, const char *in, const char *out, int32_t v)
{
    int ok = 1;

    if (c->rank == 0) {
        hid_t f, a = -1;
        ok = copy_file(in, out);
        f  = ok ? H5Fopen(out, H5F_ACC_RDWR, H5P_DEFAULT) : -1;
        ok = f >= 0 && H5Adelete(f, "data_order") >= 0;
        if (ok && v != 0) {
            hid_t sp = H5Screate(H5S_SCALAR);
            a        = H5Acreate2(f, "data_order", H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT);
            ok       = a >= 0 && H5Awrite(a, H5T_NATIVE_INT32, &v) >= 0;
            H5Sclose(sp);
        }
        if (a >= 0) {
            H5Aclose(a);
        }
        if (f >= 0) {
            H5Fclose(f);
        }
    }
    mc_check_all(ok, "make a copy with another data_order");
    return 0;
}

/* copy @p in to @p out with m and v zeroed: a weights-only load, then a save */
static int mode_reset_optim(tpm_comm_t *c, const char *in, const char *out)
{
    tpm_ckpt_t        *ck = NULL;
    tpm_ckpt_meta_t    meta;
    tpm_model_config_t mc;
    tpm_backend_t     *be = NULL;
    tpm_zero3_t       *z  = NULL;

    mc_check_all(tpm_ckpt_open(c, in, &ck) == TPM_OK, "open");
    mc = tpm_ckpt_meta(ck)->model;
    tpm_ckpt_close(ck);
    mc_check_all(make_zero3(c, &mc, &be, &z) == TPM_OK, "zero3 create");
    memset(&meta, 0, sizeof(meta));
    mc_check_all(tpm_ckpt_load(z, in, 0, &meta) == TPM_OK, "weights-only load");
    mc_check_all(tpm_ckpt_save(z, out, &meta) == TPM_OK, "save with zero moments");
    tpm_ckpt_meta_cleanup(&meta);
    tpm_zero3_destroy(z);
    backend_destroy(be);
    return 0;
}

static int mode_version(tpm_comm_t *c, const char *path)
{
    char         copy[1100];
    tpm_ckpt_t  *ck = NULL;
    tpm_status_t st;

    snprintf(copy, sizeof(copy), "%s.v99.h5", path);
    set_version(c, path, copy, 99);
    st = tpm_ckpt_open(c, copy, &ck);
    mc_check_all(st == TPM_ERR_FORMAT && ck == NULL, "format version 99 refused on every rank");
    st = tpm_ckpt_open(c, "/nonexistent/ckpt.h5", &ck);
    mc_check_all(st == TPM_ERR_NOT_FOUND, "a missing file is NOT_FOUND on every rank");
    if (c->rank == 0) {
        remove(copy);
    }
    return 0;
}

static float *read_fixture(const char *path, tpm_model_config_t *mc, size_t *n_p)
{
    int32_t h[16];
    float  *p = NULL;
    FILE   *f = fopen(path, "rb");
    size_t  n;

    if (f == NULL || fread(h, sizeof(h), 1, f) != 1 || h[0] != 20261127) {
        fprintf(stderr, "cannot read fixture %s\n", path);
        exit(1);
    }
    memset(mc, 0, sizeof(*mc));
    mc->L    = h[2];
    mc->C    = h[3];
    mc->NH   = h[4];
    mc->V    = h[5];
    mc->maxT = h[7];
    tpm_model_config_finish(mc);
    n = (size_t)h[10];
    p = malloc(n * sizeof(float));
    /* params at byte 12580 (tests/fixtures/README.md) */
    if (p == NULL || fseek(f, 12580, SEEK_SET) != 0 || fread(p, sizeof(float), n, f) != n) {
        fprintf(stderr, "cannot read fixture params %s\n", path);
        exit(1);
    }
    fclose(f);
    *n_p = n;
    return p;
}

/* the fixture's canonical flat order is the group / tensor order of the shard layout */
static int mode_fixture(tpm_comm_t *c, const char *fix, const char *out, const char *llmc)
{
    tpm_model_config_t mc;
    size_t             n, off = 0;
    float             *flat = read_fixture(fix, &mc, &n);
    tpm_backend_t     *be   = NULL;
    tpm_zero3_t       *z    = NULL;
    int                ok   = 1;

    mc_check_all(make_zero3(c, &mc, &be, &z) == TPM_OK, "zero3 for the fixture");
    if (llmc != NULL) {
        mc_check_all(tpm_ckpt_import_llmc(z, llmc) == TPM_OK, "import the llm.c file");
    }
    for (int gi = 0; gi < z->lay.n_groups; gi++) {
        const tpm_shard_group_t *g = &z->lay.g[gi];
        for (int t = 0; t < g->n_tensors; t++) {
            const tpm_shard_tensor_t *st   = &g->t[t];
            const int64_t             cols = st->desc.cols;
            float                    *dst  = z->param + g->shard_base + st->shard_off;
            int64_t                   row0, nrows;
            tpm_shard_rows(st, c->rank, &row0, &nrows);
            for (int64_t i = 0; i < nrows * cols; i++) {
                if (llmc == NULL) {
                    dst[i] = flat[off + (size_t)(row0 * cols + i)];
                } else {
                    ok &= dst[i] == flat[off + (size_t)(row0 * cols + i)];
                }
            }
            off += (size_t)(st->desc.rows * cols);
        }
    }
    mc_check_all(off == n, "fixture size matches the model");
    if (llmc == NULL) {
        tpm_ckpt_meta_t meta;
        memset(&meta, 0, sizeof(meta));
        meta.model       = mc;
        meta.world_size  = c->size;
        meta.config_json = "{}";
        mc_check_all(tpm_ckpt_save(z, out, &meta) == TPM_OK, "save the fixture as a checkpoint");
    } else {
        mc_check_all(ok, "imported llm.c weights equal the fixture's, bit for bit");
    }
    free(flat);
    tpm_zero3_destroy(z);
    backend_destroy(be);
    return 0;
}

int main(int argc, char **argv)
{
    tpm_comm_t *c = NULL;
    const char *mode;
    int         rc;

    MPI_Init(&argc, &argv);
    tpm_set_abort_hook(mc_abort_hook);
    if (tpm_comm_mpi_create(0, &c) != TPM_OK) {
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    tpm_log_set_rank(c->rank);
    mode   = argc > 2 ? argv[1] : "";
    staged = strcmp(argv[argc - 1], "staged") == 0;
    if (strcmp(mode, "write") == 0) {
        mode_write(c, argv[2]);
    } else if (strcmp(mode, "read") == 0 && argc > 3) {
        mode_read(c, argv[2], atoi(argv[3]));
    } else if (strcmp(mode, "version") == 0) {
        mode_version(c, argv[2]);
    } else if (strcmp(mode, "set-version") == 0 && argc > 4) {
        set_version(c, argv[2], argv[3], (int32_t)atoi(argv[4]));
    } else if (strcmp(mode, "set-data-order") == 0 && argc > 4) {
        set_data_order(c, argv[2], argv[3], (int32_t)atoi(argv[4]));
    } else if (strcmp(mode, "set-arch") == 0 && argc > 4) {
        set_arch(c, argv[2], argv[3], argv[4]);
    } else if (strcmp(mode, "reset-optim") == 0 && argc > 3) {
        mode_reset_optim(c, argv[2], argv[3]);
    } else if (strcmp(mode, "fixture") == 0 && argc > 3) {
        mode_fixture(c, argv[2], argv[3], NULL);
    } else if (strcmp(mode, "import") == 0 && argc > 3) {
        mode_fixture(c, argv[2], NULL, argv[3]);
    } else {
        if (c->rank == 0) {
            fprintf(stderr, "usage: test_ckpt write|read|version|set-version|set-data-order|set-arch|"
                            "reset-optim|fixture|import ARGS\n");
        }
        mc_fail++;
    }
    rc = mc_report("");
    tpm_comm_destroy(c);
    MPI_Finalize();
    return rc;
}
