/* SPDX-License-Identifier: MIT */
/*
 * hf.c: Hugging Face LLaMA-family model directories as a tensor source (hf.h).
 */
#include "ckpt/hf.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/file.h"
#include "base/log.h"
#include "base/mem.h"
#include "ckpt/ckpt.h"
#include "ckpt/safetensors.h"

#define HF_MAX_FILES 256

struct tpm_hf {
    const tpm_model_config_t *cfg;
    char                      dir[1024];
    int                       n_files;
    tpm_st_file_t            *files[HF_MAX_FILES];
    float                    *tmp; /* one row of the widest tensor */
};

/* the tensor called @p name in any of the files; NULL (logged) when none has it */
static const tpm_st_tensor_t *hf_find(const tpm_hf_t *h, const char *name, tpm_st_file_t **f_p)
{
    for (int i = 0; i < h->n_files; i++) {
        const tpm_st_tensor_t *t = tpm_st_find(h->files[i], name);
        if (t != NULL) {
            *f_p = h->files[i];
            return t;
        }
    }
    tpm_log_error("%s: no tensor '%s' in the model's safetensors files", h->dir, name);
    return NULL;
}

/* ---- config.json --------------------------------------------------------------------------- */

static int cfg_int(json_t *root, const char *key, int def)
{
    json_t *v = json_object_get(root, key);
    return json_is_integer(v) ? (int)json_integer_value(v) : def;
}

static double cfg_num(json_t *root, const char *key, double def)
{
    json_t *v = json_object_get(root, key);
    return json_is_number(v) ? json_number_value(v) : def;
}

/* a number of the rope parameters: "rope_parameters" (transformers 5), else "rope_scaling"
 * and the top level (transformers 4, most published files) */
static double rope_num(json_t *root, const char *key, double def)
{
    json_t *rp = json_object_get(root, "rope_parameters");
    json_t *rs = json_object_get(root, "rope_scaling");

    if (json_is_object(rp) && json_is_number(json_object_get(rp, key))) {
        return json_number_value(json_object_get(rp, key));
    }
    if (json_is_object(rs) && json_is_number(json_object_get(rs, key))) {
        return json_number_value(json_object_get(rs, key));
    }
    return cfg_num(root, key, def);
}

static const char *rope_type(json_t *root)
{
    json_t *rp = json_object_get(root, "rope_parameters");
    json_t *rs = json_object_get(root, "rope_scaling");
    json_t *t  = NULL;

    if (json_is_object(rp)) {
        t = json_object_get(rp, "rope_type");
    }
    if (t == NULL && json_is_object(rs)) {
        t = json_object_get(rs, "rope_type");
        if (t == NULL) {
            t = json_object_get(rs, "type");
        }
    }
    return json_is_string(t) ? json_string_value(t) : "default";
}

/* config.json against the run's configuration: every difference named with its option */
static tpm_status_t check_config(const char *path, json_t *root, const tpm_model_config_t *c)
{
    const char  *mt  = json_string_value(json_object_get(root, "model_type"));
    const char  *act = json_string_value(json_object_get(root, "hidden_act"));
    const char  *rt  = rope_type(root);
    tpm_status_t st  = TPM_OK;
    int          bias, tied, nkv, scaled;

    if (mt == NULL || (strcmp(mt, "llama") != 0 && strcmp(mt, "qwen2") != 0 &&
                       strcmp(mt, "mistral") != 0)) {
        tpm_log_error("%s: model_type '%s'; tpmpi imports llama, qwen2 and mistral", path,
                      mt != NULL ? mt : "(none)");
        return TPM_ERR_INVALID_ARG;
    }
    if (act != NULL && strcmp(act, "silu") != 0) {
        tpm_log_error("%s: hidden_act '%s'; the LLaMA block uses silu", path, act);
        st = TPM_ERR_INVALID_ARG;
    }
    if (strcmp(rt, "default") != 0 && strcmp(rt, "llama3") != 0) {
        tpm_log_error("%s: rope_type '%s'; tpmpi computes default and llama3", path, rt);
        st = TPM_ERR_INVALID_ARG;
    }
    if (json_is_true(json_object_get(root, "use_sliding_window"))) {
        tpm_log_error("%s: use_sliding_window is set; tpmpi attends over the whole context", path);
        st = TPM_ERR_INVALID_ARG;
    }
    if (strcmp(mt, "mistral") == 0 && json_is_integer(json_object_get(root, "sliding_window")) &&
        json_integer_value(json_object_get(root, "sliding_window")) < c->maxT) {
        tpm_log_error("%s: sliding_window %lld is shorter than --n-ctx %d", path,
                      (long long)json_integer_value(json_object_get(root, "sliding_window")),
                      c->maxT);
        st = TPM_ERR_INVALID_ARG;
    }
    bias   = strcmp(mt, "qwen2") == 0 ? 1 : json_is_true(json_object_get(root, "attention_bias"));
    tied   = json_is_true(json_object_get(root, "tie_word_embeddings"));
    nkv    = cfg_int(root, "num_key_value_heads", cfg_int(root, "num_attention_heads", -1));
    scaled = strcmp(rt, "llama3") == 0;
    {
        const struct {
            const char *key, *opt;
            int         file, run;
        } f[] = {
            {"num_hidden_layers", "--n-layer", cfg_int(root, "num_hidden_layers", -1), c->L},
            {"hidden_size", "--n-embd", cfg_int(root, "hidden_size", -1), c->C},
            {"num_attention_heads", "--n-head", cfg_int(root, "num_attention_heads", -1), c->NH},
            {"num_key_value_heads", "--n-kv-head", nkv, c->NKV},
            {"intermediate_size", "--intermediate-size", cfg_int(root, "intermediate_size", -1),
             c->F},
            {"vocab_size", "--vocab-size", cfg_int(root, "vocab_size", -1), c->V},
            {"head_dim", "--n-embd / --n-head", cfg_int(root, "head_dim", c->C / c->NH),
             c->C / c->NH},
            {"tie_word_embeddings", "--tie-embeddings", tied, c->tied},
            {"attention_bias (qwen2: always)", "--qkv-bias", bias, c->qkv_bias},
            {"rope_type llama3", "--rope-scaling-factor (0: none)", scaled, c->rope.factor > 0},
        };

        for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
            if (f[i].file != f[i].run) {
                tpm_log_error("%s: %s is %d, this run has %d (%s)", path, f[i].key, f[i].file,
                              f[i].run, f[i].opt);
                st = TPM_ERR_INVALID_ARG;
            }
        }
    }
    {
        const struct {
            const char *key, *opt;
            double      file, run;
        } f[] = {
            {"rms_norm_eps", "--rms-eps", cfg_num(root, "rms_norm_eps", -1), c->rms_eps},
            {"rope_theta", "--rope-theta", rope_num(root, "rope_theta", 10000.0), c->rope_theta},
            {"factor", "--rope-scaling-factor", scaled ? rope_num(root, "factor", -1) : 0,
             c->rope.factor},
            {"low_freq_factor", "--rope-low-freq-factor",
             scaled ? rope_num(root, "low_freq_factor", -1) : 0,
             scaled ? c->rope.low_freq_factor : 0},
            {"high_freq_factor", "--rope-high-freq-factor",
             scaled ? rope_num(root, "high_freq_factor", -1) : 0,
             scaled ? c->rope.high_freq_factor : 0},
            {"original_max_position_embeddings", "--rope-orig-ctx",
             scaled ? rope_num(root, "original_max_position_embeddings", -1) : 0,
             scaled ? c->rope.orig_ctx : 0},
        };

        for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
            /* the run's eps is a float: compare at float precision */
            if (fabs(f[i].file - f[i].run) > 1e-6 * fabs(f[i].file)) {
                tpm_log_error("%s: %s is %g, this run has %g (%s)", path, f[i].key, f[i].file,
                              f[i].run, f[i].opt);
                st = TPM_ERR_INVALID_ARG;
            }
        }
    }
    return st;
}

/* ---- files ------------------------------------------------------------------------------------ */

static tpm_status_t open_file(tpm_hf_t *h, const char *name)
{
    char path[1100];

    for (int i = 0; i < h->n_files; i++) {
        if (strcmp(strrchr(h->files[i]->path, '/') + 1, name) == 0) {
            return TPM_OK; /* already open */
        }
    }
    if (strchr(name, '/') != NULL || name[0] == '.' || h->n_files == HF_MAX_FILES) {
        tpm_log_error("%s: weight file '%s' is not a plain file name of the directory (or more "
                      "than %d files)",
                      h->dir, name, HF_MAX_FILES);
        return TPM_ERR_FORMAT;
    }
    snprintf(path, sizeof(path), "%s/%s", h->dir, name);
    TPM_CHECK(tpm_st_open(path, &h->files[h->n_files]));
    h->n_files++;
    return TPM_OK;
}

static tpm_status_t open_files(tpm_hf_t *h)
{
    char         path[1100];
    json_error_t jerr;
    json_t      *idx, *map, *v;
    const char  *key;
    struct stat  st;
    tpm_status_t status = TPM_OK;

    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", h->dir);
    if (stat(path, &st) != 0) {
        return open_file(h, "model.safetensors");
    }
    idx = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    map = idx != NULL ? json_object_get(idx, "weight_map") : NULL;
    if (!json_is_object(map)) {
        tpm_log_error("%s: %s", path, idx == NULL ? jerr.text : "no \"weight_map\" object");
        json_decref(idx);
        return TPM_ERR_FORMAT;
    }
    json_object_foreach(map, key, v)
    {
        if (!json_is_string(v)) {
            tpm_log_error("%s: weight_map[\"%s\"] is not a file name", path, key);
            status = TPM_ERR_FORMAT;
        } else if (status == TPM_OK) {
            status = open_file(h, json_string_value(v));
        }
    }
    json_decref(idx);
    return status;
}

/* the expected file shape of tensor @p name: 1-D (a) or 2-D (a, b) */
static tpm_status_t check_shape(tpm_hf_t *h, const char *name, int ndim, int64_t a, int64_t b)
{
    tpm_st_file_t         *f;
    const tpm_st_tensor_t *t = hf_find(h, name, &f);

    if (t == NULL) {
        return TPM_ERR_FORMAT;
    }
    if (t->ndim != ndim || t->shape[0] != a || (ndim == 2 && t->shape[1] != b)) {
        tpm_log_error("%s: tensor '%s' has shape (%lld%s%lld), the model needs (%lld%s%lld)",
                      f->path, name, (long long)t->shape[0], t->ndim > 1 ? ", " : "",
                      t->ndim > 1 ? (long long)t->shape[1] : 0LL, (long long)a,
                      ndim > 1 ? ", " : "", ndim > 1 ? (long long)b : 0LL);
        return TPM_ERR_FORMAT;
    }
    return TPM_OK;
}

/* the Hugging Face name of tensor (g, t), with q_proj replaced by @p proj ("k", "v") */
static void hf_name(const tpm_model_config_t *cfg, int g, int t, char proj, char *buf, size_t cap)
{
    const tpm_tensor_spec_t *s = tpm_model_spec(cfg, g, t);
    const char              *d = strstr(s->hf, "%d");
    char                    *p;

    /* the table's names hold at most one "%d", the layer */
    if (d == NULL) {
        snprintf(buf, cap, "%s", s->hf);
    } else {
        snprintf(buf, cap, "%.*s%d%s", (int)(d - s->hf), s->hf, g, d + 2);
    }
    if (proj != 'q' && (p = strstr(buf, "q_proj")) != NULL) {
        p[0] = proj;
    }
}

/* every tensor the table needs is in the files with its shape */
static tpm_status_t check_tensors(tpm_hf_t *h)
{
    const tpm_model_config_t *c = h->cfg;
    const int64_t             hs = c->C / c->NH;
    tpm_param_desc_t          d[TPM_GROUP_MAX_NT];
    char                      name[256];
    tpm_status_t              status = TPM_OK;

    for (int g = 0; g < tpm_model_n_groups(c); g++) {
        int nt = tpm_model_group_desc(c, g, d);

        for (int t = 0; t < nt; t++) {
            const tpm_tensor_spec_t *s  = d[t].spec;
            const int                nd = d[t].cols == 1 && s->cols == TPM_DIM_1 ? 1 : 2;
            tpm_status_t             st = TPM_OK;

            hf_name(c, g, t, 'q', name, sizeof(name));
            switch (s->hf_xform) {
            case TPM_XFORM_SAME: st = check_shape(h, name, nd, d[t].valid_rows, d[t].cols); break;
            case TPM_XFORM_TRANSPOSE: st = check_shape(h, name, 2, d[t].cols, d[t].rows); break;
            case TPM_XFORM_QKV_GQA:
                st = check_shape(h, name, nd, c->NH * hs, c->C);
                for (int k = 0; k < 2 && st == TPM_OK; k++) {
                    hf_name(c, g, t, k == 0 ? 'k' : 'v', name, sizeof(name));
                    st = check_shape(h, name, nd, c->NKV * hs, c->C);
                }
                break;
            case TPM_XFORM_QKV:
            case TPM_XFORM_QKV_T:
                tpm_log_error("%s: the %s layout of %s is not imported", h->dir, "GPT-2", name);
                st = TPM_ERR_UNSUPPORTED;
                break;
            }
            status = status == TPM_OK ? st : status;
        }
    }
    return status;
}

tpm_status_t tpm_hf_open(const char *dir, const tpm_model_config_t *cfg, tpm_hf_t **h_p)
{
    tpm_hf_t    *h;
    char         path[1100];
    json_error_t jerr;
    json_t      *root;
    tpm_status_t status;
    int64_t      wide = cfg->C > cfg->F ? cfg->C : cfg->F;

    *h_p = NULL;
    if (cfg->arch != TPM_ARCH_LLAMA) {
        tpm_log_error("--init-from=hf:%s: this tpmpi imports LLaMA-family models (--arch=llama); "
                      "GPT2LMHeadModel is not imported yet",
                      dir);
        return TPM_ERR_UNSUPPORTED;
    }
    TPM_CHECK(tpm_calloc(1, sizeof(*h), (void **)&h));
    h->cfg = cfg;
    snprintf(h->dir, sizeof(h->dir), "%s", dir);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL || !json_is_object(root)) {
        tpm_log_error("%s: %s", path, root == NULL ? jerr.text : "not a JSON object");
        json_decref(root);
        tpm_hf_close(h);
        return errno == ENOENT && root == NULL ? TPM_ERR_NOT_FOUND : TPM_ERR_FORMAT;
    }
    status = check_config(path, root, cfg);
    json_decref(root);
    if (status == TPM_OK) {
        status = open_files(h);
    }
    if (status == TPM_OK) {
        status = check_tensors(h);
    }
    if (status == TPM_OK) {
        status = tpm_malloc((size_t)wide * 2 * sizeof(float), (void **)&h->tmp);
    }
    if (status != TPM_OK) {
        tpm_hf_close(h);
        return status;
    }
    *h_p = h;
    return TPM_OK;
}

void tpm_hf_close(tpm_hf_t *h)
{
    if (h == NULL) {
        return;
    }
    for (int i = 0; i < h->n_files; i++) {
        tpm_st_close(h->files[i]);
    }
    tpm_free(h->tmp);
    tpm_free(h);
}

/* ---- the source ------------------------------------------------------------------------------- */

static tpm_status_t hf_read(void *ctx, int g, int t, int64_t row0, int64_t nrows, float *dst)
{
    tpm_hf_t                 *h = ctx;
    const tpm_model_config_t *c = h->cfg;
    const tpm_tensor_spec_t  *s = tpm_model_spec(c, g, t);
    tpm_param_desc_t          d[TPM_GROUP_MAX_NT];
    const int64_t             hs = c->C / c->NH, rep = c->NH / c->NKV, grp = (rep + 2) * hs;
    int64_t                   cols, in;
    tpm_st_file_t            *f[3];
    const tpm_st_tensor_t    *ft[3];
    char                      name[256];

    tpm_model_group_desc(c, g, d);
    cols = d[t].cols;
    hf_name(c, g, t, 'q', name, sizeof(name));
    ft[0] = hf_find(h, name, &f[0]);
    if (ft[0] == NULL) {
        return TPM_ERR_FORMAT;
    }
    switch (s->hf_xform) {
    case TPM_XFORM_SAME: {
        /* rows from valid_rows on (vocabulary padding) are zero */
        int64_t valid = d[t].valid_rows - row0;

        valid = valid < 0 ? 0 : valid > nrows ? nrows : valid;
        memset(dst + valid * cols, 0, (size_t)(nrows - valid) * (size_t)cols * sizeof(float));
        return tpm_st_read(f[0], ft[0], row0 * cols, valid * cols, dst);
    }
    case TPM_XFORM_TRANSPOSE:
        /* tpmpi row i (input i) is column i of the file's (out, in) matrix */
        in = d[t].rows;
        for (int64_t o = 0; o < cols; o++) {
            TPM_CHECK(tpm_st_read(f[0], ft[0], o * in + row0, nrows, h->tmp));
            for (int64_t r = 0; r < nrows; r++) {
                dst[r * cols + o] = h->tmp[r];
            }
        }
        return TPM_OK;
    case TPM_XFORM_QKV_GQA:
        for (int k = 1; k < 3; k++) {
            hf_name(c, g, t, k == 1 ? 'k' : 'v', name, sizeof(name));
            ft[k] = hf_find(h, name, &f[k]);
            if (ft[k] == NULL) {
                return TPM_ERR_FORMAT;
            }
        }
        for (int64_t r = 0; r < nrows; r++) {
            const int64_t R = row0 + r, gi = R / grp, j = R % grp;
            const int     k = j < rep * hs ? 0 : j < rep * hs + hs ? 1 : 2;
            const int64_t src =
                k == 0 ? gi * rep * hs + j : k == 1 ? gi * hs + (j - rep * hs) : gi * hs + (j - rep * hs - hs);

            TPM_CHECK(tpm_st_read(f[k], ft[k], src * cols, cols, dst + r * cols));
        }
        return TPM_OK;
    case TPM_XFORM_QKV:
    case TPM_XFORM_QKV_T: break;
    }
    return TPM_ERR_UNSUPPORTED;
}

tpm_tensor_io_t tpm_hf_tensor_io(tpm_hf_t *h)
{
    return (tpm_tensor_io_t){.ctx = h, .read = hf_read};
}

tpm_status_t tpm_ckpt_import_hf(tpm_zero3_t *z, const char *dir)
{
    tpm_hf_t    *h      = NULL;
    tpm_status_t status = tpm_hf_open(dir, &z->cfg, &h);

    /* every rank read the same files: agree before anyone touches its shard */
    status = tpm_ckpt_agree(z->comm, status);
    if (status == TPM_OK) {
        const tpm_tensor_io_t src = tpm_hf_tensor_io(h), dst = tpm_zero3_tensor_io(z);

        tpm_zero3_params_changed(z); /* the shard is about to be overwritten */
        status = tpm_tensor_copy(&z->cfg, NULL, &src, &dst);
        if (status == TPM_OK) {
            status = z->be->ops->memzero(z->be, z->m, z->lay.shard_numel * sizeof(float));
        }
        if (status == TPM_OK) {
            status = z->be->ops->memzero(z->be, z->v, z->lay.shard_numel * sizeof(float));
        }
        status = tpm_ckpt_agree(z->comm, status);
    }
    tpm_hf_close(h);
    if (status == TPM_OK) {
        tpm_info0("imported Hugging Face model %s: L=%d C=%d NH=%d NKV=%d F=%d V=%d; fresh "
                  "optimizer",
                  dir, z->cfg.L, z->cfg.C, z->cfg.NH, z->cfg.NKV, z->cfg.F, z->cfg.V);
    }
    return status;
}

/* ---- export (--mode=export --format=hf) -------------------------------------------------------- */

/* one tensor of the output file */
typedef struct {
    char     name[160];
    int      ndim;
    int64_t  shape[2];
    uint64_t begin, end;
} hf_out_t;

typedef struct {
    const tpm_model_config_t *cfg;
    int                       writer; /* rank 0 */
    int                       fd;
    const char               *path; /* the temporary name */
    uint64_t                  data_off;
    hf_out_t                 *out;   /* every output tensor */
    int                      *first; /* (g * TPM_GROUP_MAX_NT + t) -> its first output tensor */
    float                    *buf;   /* the largest tensor, converted */
} hf_sink_t;

/* the output tensors of table tensor (g, t) from index *n on; returns how many (1 or 3) */
static int plan_tensor(const tpm_model_config_t *c, int g, int t, const tpm_param_desc_t *d,
                       hf_out_t *o)
{
    const tpm_tensor_spec_t *s  = d->spec;
    const int                nd = s->cols == TPM_DIM_1 ? 1 : 2;
    const int64_t            hs = c->C / c->NH;

    switch (s->hf_xform) {
    case TPM_XFORM_QKV_GQA:
        for (int k = 0; k < 3; k++) {
            hf_name(c, g, t, "qkv"[k], o[k].name, sizeof(o[k].name));
            o[k].ndim     = nd;
            o[k].shape[0] = (k == 0 ? c->NH : c->NKV) * hs;
            o[k].shape[1] = d->cols;
        }
        return 3;
    case TPM_XFORM_TRANSPOSE:
        hf_name(c, g, t, 'q', o->name, sizeof(o->name));
        o->ndim     = 2;
        o->shape[0] = d->cols;
        o->shape[1] = d->rows;
        return 1;
    default:
        hf_name(c, g, t, 'q', o->name, sizeof(o->name));
        o->ndim     = nd;
        o->shape[0] = d->valid_rows;
        o->shape[1] = d->cols;
        return 1;
    }
}

static void hf_sink_rows(void *ctx, int g, int t, int64_t *row0_p, int64_t *nrows_p)
{
    const hf_sink_t *s = ctx;
    tpm_param_desc_t d[TPM_GROUP_MAX_NT];

    tpm_model_group_desc(s->cfg, g, d);
    *row0_p  = 0;
    *nrows_p = s->writer ? d[t].rows : 0;
}

static tpm_status_t pwrite_full(int fd, const void *buf, size_t n, uint64_t at, const char *path)
{
    const char *p = buf;

    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, (off_t)at);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            tpm_log_error("write %s failed: %s", path, w < 0 ? strerror(errno) : "no progress");
            return TPM_ERR_IO;
        }
        p += w, n -= (size_t)w, at += (uint64_t)w;
    }
    return TPM_OK;
}

/* tensor (g, t) whole (rank 0): convert to Hugging Face's layout and write its pieces */
static tpm_status_t hf_write(void *ctx, int g, int t, int64_t row0, int64_t nrows,
                             const float *src)
{
    const hf_sink_t          *s = ctx;
    const tpm_model_config_t *c = s->cfg;
    tpm_param_desc_t          d[TPM_GROUP_MAX_NT];
    const hf_out_t           *o = &s->out[s->first[g * TPM_GROUP_MAX_NT + t]];
    const int64_t             hs = c->C / c->NH, rep = c->NH / c->NKV, grp = (rep + 2) * hs;
    int64_t                   rows, cols;

    (void)row0;
    if (!s->writer || nrows == 0) {
        return TPM_OK;
    }
    tpm_model_group_desc(c, g, d);
    rows = d[t].rows;
    cols = d[t].cols;
    switch (d[t].spec->hf_xform) {
    case TPM_XFORM_QKV_GQA:
        /* q, k, v one after the other in the buffer, in the order of the output tensors */
        for (int64_t R = 0; R < rows; R++) {
            const int64_t gi = R / grp, j = R % grp;
            const int64_t dstrow = j < rep * hs        ? gi * rep * hs + j
                                   : j < rep * hs + hs ? c->NH * hs + gi * hs + (j - rep * hs)
                                                       : (c->NH + c->NKV) * hs + gi * hs +
                                                             (j - rep * hs - hs);
            memcpy(s->buf + dstrow * cols, src + R * cols, (size_t)cols * sizeof(float));
        }
        for (int k = 0; k < 3; k++) {
            const int64_t r0 = k == 0 ? 0 : (c->NH + (k - 1) * c->NKV) * hs;
            TPM_CHECK(pwrite_full(s->fd, s->buf + r0 * cols, (size_t)(o[k].end - o[k].begin),
                                  s->data_off + o[k].begin, s->path));
        }
        return TPM_OK;
    case TPM_XFORM_TRANSPOSE:
        for (int64_t i = 0; i < rows; i++) {
            for (int64_t j = 0; j < cols; j++) {
                s->buf[j * rows + i] = src[i * cols + j];
            }
        }
        return pwrite_full(s->fd, s->buf, (size_t)(o->end - o->begin), s->data_off + o->begin,
                           s->path);
    default:
        /* the first valid_rows rows: the vocabulary padding is not exported */
        return pwrite_full(s->fd, src, (size_t)(o->end - o->begin), s->data_off + o->begin,
                           s->path);
    }
}

/* config.json of the model (transformers 4 keys, which transformers 5 reads too) */
static json_t *export_config(const tpm_model_config_t *c)
{
    json_t *j = json_object();

    json_object_set_new(j, "architectures",
                        json_pack("[s]", c->qkv_bias ? "Qwen2ForCausalLM" : "LlamaForCausalLM"));
    json_object_set_new(j, "model_type", json_string(c->qkv_bias ? "qwen2" : "llama"));
    json_object_set_new(j, "hidden_act", json_string("silu"));
    json_object_set_new(j, "hidden_size", json_integer(c->C));
    json_object_set_new(j, "intermediate_size", json_integer(c->F));
    json_object_set_new(j, "num_hidden_layers", json_integer(c->L));
    json_object_set_new(j, "num_attention_heads", json_integer(c->NH));
    json_object_set_new(j, "num_key_value_heads", json_integer(c->NKV));
    json_object_set_new(j, "head_dim", json_integer(c->C / c->NH));
    json_object_set_new(j, "vocab_size", json_integer(c->V));
    json_object_set_new(j, "max_position_embeddings", json_integer(c->maxT));
    json_object_set_new(j, "rms_norm_eps", json_real((double)c->rms_eps));
    json_object_set_new(j, "rope_theta", json_real(c->rope_theta));
    if (c->rope.factor > 0) {
        json_object_set_new(j, "rope_scaling",
                            json_pack("{s:s, s:f, s:f, s:f, s:i}", "rope_type", "llama3", "factor",
                                      c->rope.factor, "low_freq_factor", c->rope.low_freq_factor,
                                      "high_freq_factor", c->rope.high_freq_factor,
                                      "original_max_position_embeddings", c->rope.orig_ctx));
    } else {
        json_object_set_new(j, "rope_scaling", json_null());
    }
    json_object_set_new(j, "tie_word_embeddings", json_boolean(c->tied));
    if (!c->qkv_bias) {
        json_object_set_new(j, "attention_bias", json_false());
        json_object_set_new(j, "mlp_bias", json_false());
    } else {
        json_object_set_new(j, "use_sliding_window", json_false());
    }
    json_object_set_new(j, "torch_dtype", json_string("float32"));
    json_object_set_new(j, "attention_dropout", json_real(0.0));
    json_object_set_new(j, "initializer_range", json_real(0.02));
    return j;
}

/* rank 0: the output tensors, the header, the temporary file with its header written */
static tpm_status_t export_begin(hf_sink_t *s, const char *dir, char *tmp, size_t cap)
{
    const tpm_model_config_t *c  = s->cfg;
    const int                 NG = tpm_model_n_groups(c);
    tpm_param_desc_t          d[TPM_GROUP_MAX_NT];
    json_t                   *hdr = json_object();
    char                     *text = NULL;
    size_t                    n = 0, hlen, pad;
    uint64_t                  off = 0, biggest = 0;
    unsigned char             len8[8];
    tpm_status_t              status = TPM_OK;

    json_object_set_new(hdr, "__metadata__", json_pack("{s:s}", "format", "pt"));
    for (int g = 0; g < NG; g++) {
        int nt = tpm_model_group_desc(c, g, d);

        for (int t = 0; t < nt; t++) {
            int k = plan_tensor(c, g, t, &d[t], &s->out[n]);

            s->first[g * TPM_GROUP_MAX_NT + t] = (int)n;
            for (int i = 0; i < k; i++, n++) {
                hf_out_t     *o     = &s->out[n];
                const int64_t numel = o->shape[0] * (o->ndim > 1 ? o->shape[1] : 1);

                o->begin = off;
                o->end   = off + (uint64_t)numel * 4;
                off      = o->end;
                json_object_set_new(hdr, o->name,
                                    o->ndim > 1 ? json_pack("{s:s, s:[I,I], s:[I,I]}", "dtype",
                                                            "F32", "shape", (json_int_t)o->shape[0],
                                                            (json_int_t)o->shape[1], "data_offsets",
                                                            (json_int_t)o->begin,
                                                            (json_int_t)o->end)
                                                : json_pack("{s:s, s:[I], s:[I,I]}", "dtype",
                                                            "F32", "shape", (json_int_t)o->shape[0],
                                                            "data_offsets", (json_int_t)o->begin,
                                                            (json_int_t)o->end));
            }
            if ((uint64_t)d[t].rows * (uint64_t)d[t].cols > biggest) {
                biggest = (uint64_t)d[t].rows * (uint64_t)d[t].cols;
            }
        }
    }
    text = json_dumps(hdr, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(hdr);
    if (text == NULL) {
        return TPM_ERR_NO_MEMORY;
    }
    /* pad the header with spaces so that the data starts 8-byte aligned */
    hlen = strlen(text);
    pad  = (8 - (8 + hlen) % 8) % 8;
    for (int i = 0; i < 8; i++) {
        len8[i] = (unsigned char)((uint64_t)(hlen + pad) >> (8 * i));
    }
    s->data_off = 8 + hlen + pad;
    status      = tpm_malloc((size_t)biggest * sizeof(float), (void **)&s->buf);
    if (status == TPM_OK && (size_t)snprintf(tmp, cap, "%s/model.safetensors.tmp", dir) >= cap) {
        tpm_log_error("output directory %s: path too long", dir);
        status = TPM_ERR_INVALID_ARG;
    }
    if (status == TPM_OK && mkdir(dir, 0755) != 0 && errno != EEXIST) {
        tpm_log_error("cannot create %s: %s", dir, strerror(errno));
        status = TPM_ERR_IO;
    }
    if (status == TPM_OK) {
        s->fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (s->fd < 0) {
            tpm_log_error("cannot write %s: %s", tmp, strerror(errno));
            status = TPM_ERR_IO;
        }
    }
    if (status == TPM_OK) {
        status = pwrite_full(s->fd, len8, 8, 0, tmp);
    }
    if (status == TPM_OK) {
        status = pwrite_full(s->fd, text, hlen, 8, tmp);
    }
    if (status == TPM_OK && pad > 0) {
        status = pwrite_full(s->fd, "        ", pad, 8 + hlen, tmp);
    }
    free(text);
    return status;
}

tpm_status_t tpm_ckpt_export_hf(tpm_comm_t *comm, const char *ckpt_path, const char *dir)
{
    tpm_ckpt_t        *ck = NULL;
    tpm_model_config_t cfg;
    hf_sink_t          s;
    char               tmp[1100], final[1100];
    tpm_status_t       status = TPM_OK;

    TPM_CHECK(tpm_ckpt_open(comm, ckpt_path, &ck));
    cfg = tpm_ckpt_meta(ck)->model;
    if (cfg.arch != TPM_ARCH_LLAMA) {
        /* the file's metadata: the same answer on every rank */
        tpm_log_error("%s: a %s checkpoint; --format=hf exports LLaMA-family models only", ckpt_path,
                      tpm_arch_id_name(cfg.arch));
        tpm_ckpt_close(ck);
        return TPM_ERR_UNSUPPORTED;
    }
    memset(&s, 0, sizeof(s));
    s.cfg    = &cfg;
    s.writer = comm->rank == 0;
    s.fd     = -1;
    s.path   = tmp;
    status   = tpm_calloc((size_t)tpm_model_n_groups(&cfg) * (TPM_GROUP_MAX_NT + 2),
                          sizeof(*s.out), (void **)&s.out);
    if (status == TPM_OK) {
        status = tpm_calloc((size_t)tpm_model_n_groups(&cfg) * TPM_GROUP_MAX_NT, sizeof(int),
                            (void **)&s.first);
    }
    if (status == TPM_OK && s.writer) {
        status = export_begin(&s, dir, tmp, sizeof(tmp));
    }
    status = tpm_ckpt_agree(comm, status);
    if (status == TPM_OK) {
        /* every tensor, rank 0 reading all of its rows and the others none */
        const tpm_tensor_io_t src = tpm_ckpt_tensor_io(ck);
        const tpm_tensor_io_t dst = {.ctx = &s, .rows = hf_sink_rows, .write = hf_write};

        status = tpm_tensor_copy(&cfg, comm, &src, &dst);
    }
    if (s.writer && s.fd >= 0) {
        if (status == TPM_OK && fsync(s.fd) != 0) {
            tpm_log_error("write %s failed: %s", tmp, strerror(errno));
            status = TPM_ERR_IO;
        }
        if (close(s.fd) != 0 && status == TPM_OK) {
            tpm_log_error("write %s failed: %s", tmp, strerror(errno));
            status = TPM_ERR_IO;
        }
        snprintf(final, sizeof(final), "%s/model.safetensors", dir);
        if (status == TPM_OK) {
            /* durable: fsync'ed above, renamed, the directory fsync'ed (base/file.h) */
            status = tpm_file_publish(tmp, final);
        }
        if (status != TPM_OK) {
            unlink(tmp);
        }
    }
    if (status == TPM_OK && s.writer) {
        json_t *j = export_config(&cfg);
        FILE   *cf = NULL;

        snprintf(final, sizeof(final), "%s/config.json", dir);
        status = j != NULL ? tpm_file_create_tmp(final, tmp, sizeof(tmp), &cf) : TPM_ERR_NO_MEMORY;
        if (status == TPM_OK) {
            const int w = json_dumpf(j, cf, JSON_INDENT(2) | JSON_PRESERVE_ORDER);

            if (w != 0) {
                tpm_log_error("cannot write %s", tmp);
            }
            status = tpm_file_commit(cf, tmp, final, w == 0 ? TPM_OK : TPM_ERR_IO);
        }
        json_decref(j);
    }
    status = tpm_ckpt_agree(comm, status);
    if (status == TPM_OK) {
        tpm_info0("exported %s (step %lld) as a Hugging Face %s model to %s (fp32)", ckpt_path,
                  (long long)tpm_ckpt_meta(ck)->step,
                  cfg.qkv_bias ? "Qwen2ForCausalLM" : "LlamaForCausalLM", dir);
    }
    tpm_free(s.buf);
    tpm_free(s.out);
    tpm_free(s.first);
    tpm_ckpt_close(ck);
    return status;
}
