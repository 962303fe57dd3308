/* SPDX-License-Identifier: MIT */
/*
 * test_llama_ref.c: the LLaMA model against Hugging Face transformers
 * (tests/fixtures/llama_tiny.bin and qwen_tiny.bin, scripts/gen_llama_fixtures.py): a
 * LlamaForCausalLM with grouped-query attention, an untied head and Llama-3 rope scaling,
 * and a Qwen2ForCausalLM with q/k/v biases and a tied head, both computed in float64.
 * tpmpi's forward and backward on the CPU backend at N = 1 (where the shard layout is the
 * fixture's canonical flat order) must give the logits, the loss and every parameter
 * gradient within 1e-4 relative. A negative control shows that the test sees the RoPE
 * layout: the same weights with q and k rows in Meta's interleaved order do not match.
 * The Hugging Face directories saved from the same models (hf_llama_tiny: fp32, one file;
 * hf_qwen_tiny: bf16, two shards and an index) import to exactly the fixture's parameters
 * (bf16: their rounding), a config.json of another model is refused, and the safetensors
 * reader refuses every malformed size and offset.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "backend/backend.h"
#include "base/bf16.h"
#include "ckpt/hf.h"
#include "ckpt/safetensors.h"
#include "core/model.h"
#include "core/tensor_io.h"
#include "zero3/shard.h"

#ifndef TPM_FIXTURE_DIR
#define TPM_FIXTURE_DIR "tests/fixtures"
#endif

#define FX_MAGIC 20261204

typedef struct {
    int32_t  hdr[16];
    double   hyper[8];
    int32_t *x, *y;
    float   *logits, loss, *params, *grads;
    size_t   P, BT;
} fixture_t;

typedef struct {
    fixture_t          fx;
    tpm_model_config_t mc;
    tpm_shard_layout_t lay;
    tpm_backend_t     *be;
    tpm_acts_t        *acts;
} ref_t;

static void read_exact(FILE *f, void *dst, size_t n, const char *path)
{
    cr_assert_eq(fread(dst, 1, n, f), n, "%s: truncated", path);
}

static void load(ref_t *r, const char *name)
{
    const char *dir = getenv("TPM_FIXTURE_DIR") ? getenv("TPM_FIXTURE_DIR") : TPM_FIXTURE_DIR;
    fixture_t  *fx  = &r->fx;
    char        path[1024];
    FILE       *f;
    int         c;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    read_exact(f, fx->hdr, sizeof(fx->hdr), path);
    read_exact(f, fx->hyper, sizeof(fx->hyper), path);
    cr_assert_eq(fx->hdr[0], FX_MAGIC, "%s: not a LLaMA fixture", path);
    cr_assert_eq(fx->hdr[1], 1, "%s: fixture version %d", path, fx->hdr[1]);
    fx->BT     = (size_t)fx->hdr[10] * (size_t)fx->hdr[11];
    fx->P      = (size_t)fx->hdr[12];
    fx->x      = malloc(fx->BT * 4);
    fx->y      = malloc(fx->BT * 4);
    fx->logits = malloc(fx->BT * (size_t)fx->hdr[8] * 4);
    fx->params = malloc(fx->P * 4);
    fx->grads  = malloc(fx->P * 4);
    cr_assert(fx->x && fx->y && fx->logits && fx->params && fx->grads);
    read_exact(f, fx->x, fx->BT * 4, path);
    read_exact(f, fx->y, fx->BT * 4, path);
    read_exact(f, fx->logits, fx->BT * (size_t)fx->hdr[8] * 4, path);
    read_exact(f, &fx->loss, 4, path);
    read_exact(f, fx->params, fx->P * 4, path);
    read_exact(f, fx->grads, fx->P * 4, path);
    c = fgetc(f);
    cr_assert_eq(c, EOF, "%s: longer than its header says", path);
    fclose(f);

    memset(&r->mc, 0, sizeof(r->mc));
    r->mc.arch                  = TPM_ARCH_LLAMA;
    r->mc.L                     = fx->hdr[2];
    r->mc.C                     = fx->hdr[3];
    r->mc.NH                    = fx->hdr[4];
    r->mc.NKV                   = fx->hdr[5];
    r->mc.F                     = fx->hdr[6];
    r->mc.V                     = fx->hdr[7];
    r->mc.maxT                  = fx->hdr[9];
    r->mc.tied                  = !(fx->hdr[13] & 1);
    r->mc.qkv_bias              = (fx->hdr[13] & 2) != 0;
    r->mc.rope.orig_ctx         = fx->hdr[14];
    r->mc.rms_eps               = (float)fx->hyper[0];
    r->mc.rope_theta            = fx->hyper[1];
    r->mc.rope.factor           = fx->hyper[2];
    r->mc.rope.low_freq_factor  = fx->hyper[3];
    r->mc.rope.high_freq_factor = fx->hyper[4];
    cr_assert_eq(tpm_model_config_finish(&r->mc), TPM_OK);
    cr_assert_eq(r->mc.Vp, fx->hdr[8]);
    cr_assert_eq(tpm_model_num_params(&r->mc), fx->P, "the tensor table has %zu values, the "
                 "fixture %zu", tpm_model_num_params(&r->mc), fx->P);
    cr_assert_eq(tpm_shard_layout_init(&r->lay, &r->mc, 1), TPM_OK);
    cr_assert_eq(r->lay.shard_numel, fx->P);
    cr_assert_eq(tpm_backend_create("cpu", 1, &r->be), TPM_OK);
    cr_assert_eq(tpm_acts_create(r->be, &r->mc, fx->hdr[10], fx->hdr[11], &r->acts), TPM_OK);
}

static void unload(ref_t *r)
{
    tpm_acts_destroy(r->be, r->acts);
    tpm_backend_destroy(r->be);
    tpm_shard_layout_cleanup(&r->lay);
    free(r->fx.x);
    free(r->fx.y);
    free(r->fx.logits);
    free(r->fx.params);
    free(r->fx.grads);
}

static tpm_group_view_t view(const ref_t *r, int g, float *base)
{
    tpm_group_view_t v;

    memset(&v, 0, sizeof(v));
    for (int t = 0; t < r->lay.g[g].n_tensors; t++) {
        v.t[t] = base + r->lay.g[g].shard_base + r->lay.g[g].t[t].full_off;
    }
    return v;
}

/* forward and backward of the whole model at N = 1; gradients added into @p grad */
static float run(ref_t *r, float *param, float *grad)
{
    const tpm_model_config_t *mc  = &r->mc;
    tpm_group_view_t          emb = view(r, mc->L, param), demb = view(r, mc->L, grad);
    float                     loss = -1.0f;

    cr_assert_eq(tpm_model_set_batch(r->be, r->acts, r->fx.x, r->fx.y), TPM_OK);
    cr_assert_eq(tpm_model_embed_fwd(r->be, mc, &emb, r->acts), TPM_OK);
    for (int l = 0; l < mc->L; l++) {
        tpm_group_view_t p = view(r, l, param);
        cr_assert_eq(tpm_model_block_fwd(r->be, mc, l, &p, r->acts), TPM_OK);
    }
    cr_assert_eq(tpm_model_head_fwd_bwd(r->be, mc, &emb, &demb, 1.0f, r->acts, &loss), TPM_OK);
    for (int l = mc->L - 1; l >= 0; l--) {
        tpm_group_view_t p = view(r, l, param), dp = view(r, l, grad);
        cr_assert_eq(tpm_model_block_bwd(r->be, mc, l, &p, &dp, r->acts), TPM_OK);
    }
    cr_assert_eq(tpm_model_embed_bwd(r->be, mc, &demb, r->acts), TPM_OK);
    return loss;
}

/* max |got - want| over a tensor, relative to max |want| (floor 1e-6) */
static double rel_err(const float *got, const float *want, size_t n)
{
    double emax = 0.0, wmax = 1e-6;

    for (size_t i = 0; i < n; i++) {
        cr_assert(isfinite(got[i]), "non-finite value at %zu", i);
        emax = fmax(emax, fabs((double)got[i] - want[i]));
        wmax = fmax(wmax, fabs((double)want[i]));
    }
    return emax / wmax;
}

/*
 * Logits (the forward pass: the logits buffer holds dlogits after the backward, so a
 * forward-only pass gives them), loss, and every tensor's gradient.
 */
static void check_against_transformers(const char *name)
{
    ref_t   r;
    float  *param, *grad, loss, loss_fwd;
    double  e, elog, worst = 0.0;
    size_t  nl;

    load(&r, name);
    nl    = r.fx.BT * (size_t)r.mc.Vp;
    param = malloc(r.fx.P * 4);
    grad  = calloc(r.fx.P, 4);
    cr_assert(param != NULL && grad != NULL);
    memcpy(param, r.fx.params, r.fx.P * 4);
    {
        tpm_group_view_t emb = view(&r, r.mc.L, param);

        cr_assert_eq(tpm_model_set_batch(r.be, r.acts, r.fx.x, r.fx.y), TPM_OK);
        cr_assert_eq(tpm_model_embed_fwd(r.be, &r.mc, &emb, r.acts), TPM_OK);
        for (int l = 0; l < r.mc.L; l++) {
            tpm_group_view_t p = view(&r, l, param);
            cr_assert_eq(tpm_model_block_fwd(r.be, &r.mc, l, &p, r.acts), TPM_OK);
        }
        cr_assert_eq(tpm_model_head_fwd_bwd(r.be, &r.mc, &emb, NULL, 1.0f, r.acts, &loss_fwd),
                     TPM_OK);
    }
    elog = rel_err(r.acts->logits, r.fx.logits, nl);
    cr_expect(elog <= 1e-4, "%s: logits relative error %.3g", name, elog);
    loss = run(&r, param, grad);
    cr_expect(fabs(loss - r.fx.loss) <= 1e-5 * fabs(r.fx.loss), "%s: loss %.7f, transformers %.7f",
              name, loss, r.fx.loss);
    cr_expect_eq(loss, loss_fwd, "the training pass computes the forward pass's loss");
    for (int g = 0; g < tpm_model_n_groups(&r.mc); g++) {
        for (int t = 0; t < r.lay.g[g].n_tensors; t++) {
            const size_t off = r.lay.g[g].shard_base + r.lay.g[g].t[t].full_off;
            const size_t n   = (size_t)r.lay.g[g].t[t].desc.rows * (size_t)r.lay.g[g].t[t].desc.cols;
            char         tn[64];

            cr_assert_eq(tpm_model_tensor_name(&r.mc, g, t, tn, sizeof(tn)), TPM_OK);
            e     = rel_err(grad + off, r.fx.grads + off, n);
            worst = fmax(worst, e);
            cr_expect(e <= 1e-4, "%s: gradient of %s: relative error %.3g", name, tn, e);
        }
    }
    cr_log_info("%s: relative errors: logits %.3g, loss %.3g, worst gradient %.3g", name, elog,
                fabs(loss - r.fx.loss) / fabs(r.fx.loss), worst);
    free(param);
    free(grad);
    unload(&r);
}

TestSuite(llama_ref, .timeout = 60);

Test(llama_ref, llama_gqa_untied_rope_scaling_matches_transformers)
{
    check_against_transformers("llama_tiny.bin");
}

Test(llama_ref, qwen2_qkv_bias_tied_matches_transformers)
{
    check_against_transformers("qwen_tiny.bin");
}

Test(llama_ref, q_and_k_rows_in_meta_interleaved_order_do_not_match)
{
    /*
     * Meta's checkpoints rotate pairs (2i, 2i + 1); Hugging Face permutes each head's q and k
     * rows so that rotate_half pairs (i, i + hs/2) hold them. Undoing that permutation on the
     * fixture's weights must change the logits: the test sees which layout tpmpi uses.
     */
    ref_t  r;
    float *param, *grad, *row;
    int    hs, rep;
    double e;

    load(&r, "llama_tiny.bin");
    hs    = r.mc.C / r.mc.NH;
    rep   = r.mc.NH / r.mc.NKV;
    param = malloc(r.fx.P * 4);
    grad  = calloc(r.fx.P, 4);
    row   = malloc((size_t)hs * (size_t)r.mc.C * 4);
    cr_assert(param != NULL && grad != NULL && row != NULL);
    memcpy(param, r.fx.params, r.fx.P * 4);
    for (int l = 0; l < r.mc.L; l++) {
        float *w = param + r.lay.g[l].shard_base + r.lay.g[l].t[TPM_LB_QKVW].full_off;

        for (int g = 0; g < r.mc.NKV; g++) {
            for (int h = 0; h < rep + 1; h++) { /* the group's q heads, then its k head */
                float *head = w + ((size_t)g * (rep + 2) + (size_t)h) * hs * (size_t)r.mc.C;

                /* HF row i (i < hs/2) came from Meta row 2i, row i + hs/2 from 2i + 1 */
                for (int i = 0; i < hs / 2; i++) {
                    memcpy(row + (size_t)(2 * i) * r.mc.C, head + (size_t)i * r.mc.C,
                           (size_t)r.mc.C * 4);
                    memcpy(row + (size_t)(2 * i + 1) * r.mc.C,
                           head + (size_t)(i + hs / 2) * r.mc.C, (size_t)r.mc.C * 4);
                }
                memcpy(head, row, (size_t)hs * (size_t)r.mc.C * 4);
            }
        }
    }
    {
        tpm_group_view_t emb = view(&r, r.mc.L, param);
        float            loss;

        cr_assert_eq(tpm_model_set_batch(r.be, r.acts, r.fx.x, r.fx.y), TPM_OK);
        cr_assert_eq(tpm_model_embed_fwd(r.be, &r.mc, &emb, r.acts), TPM_OK);
        for (int l = 0; l < r.mc.L; l++) {
            tpm_group_view_t p = view(&r, l, param);
            cr_assert_eq(tpm_model_block_fwd(r.be, &r.mc, l, &p, r.acts), TPM_OK);
        }
        cr_assert_eq(tpm_model_head_fwd_bwd(r.be, &r.mc, &emb, NULL, 1.0f, r.acts, &loss), TPM_OK);
    }
    e = rel_err(r.acts->logits, r.fx.logits, r.fx.BT * (size_t)r.mc.Vp);
    cr_expect(e > 1e-2, "interleaved q/k rows still match (relative error %.3g)", e);
    cr_log_info("q/k rows in Meta's interleaved order: logits relative error %.3g", e);
    free(row);
    free(param);
    free(grad);
    unload(&r);
}

/* ---------------------------------------------------------------------------------------------- */
/* Hugging Face model directories (ckpt/hf.h) and the safetensors reader (ckpt/safetensors.h) */

/* import directory @p sub into a flat parameter vector laid out like the fixture's */
static tpm_status_t import_dir(ref_t *r, const char *sub, const tpm_model_config_t *cfg,
                               float *flat)
{
    const char                *dir = getenv("TPM_FIXTURE_DIR") ? getenv("TPM_FIXTURE_DIR")
                                                               : TPM_FIXTURE_DIR;
    float                     *t[64 * TPM_GROUP_MAX_NT];
    tpm_tensor_io_memory_ctx_t mctx = {.cfg = cfg, .t = t};
    tpm_tensor_io_t            src, dst;
    tpm_hf_t                  *h = NULL;
    char                       path[1024];
    tpm_status_t               st;

    cr_assert(tpm_model_n_groups(cfg) <= 64);
    memset(t, 0, sizeof(t));
    for (int g = 0; g < tpm_model_n_groups(cfg); g++) {
        for (int k = 0; k < r->lay.g[g].n_tensors; k++) {
            t[g * TPM_GROUP_MAX_NT + k] = flat + r->lay.g[g].shard_base + r->lay.g[g].t[k].full_off;
        }
    }
    snprintf(path, sizeof(path), "%s/%s", dir, sub);
    st = tpm_hf_open(path, cfg, &h);
    if (st != TPM_OK) {
        return st;
    }
    src = tpm_hf_tensor_io(h);
    dst = tpm_tensor_io_memory(&mctx);
    st  = tpm_tensor_copy(cfg, NULL, &src, &dst);
    tpm_hf_close(h);
    return st;
}

Test(hf, an_fp32_llama_directory_imports_the_exact_weights)
{
    ref_t  r;
    float *flat;
    size_t bad = 0;

    load(&r, "llama_tiny.bin");
    flat = calloc(r.fx.P, 4);
    cr_assert_not_null(flat);
    cr_assert_eq(import_dir(&r, "hf_llama_tiny", &r.mc, flat), TPM_OK);
    for (size_t i = 0; i < r.fx.P; i++) {
        bad += flat[i] != r.fx.params[i];
    }
    cr_expect_eq(bad, 0, "%zu of %zu values differ from the fixture's parameters", bad, r.fx.P);
    free(flat);
    unload(&r);
}

Test(hf, a_sharded_bf16_qwen2_directory_imports_the_rounded_weights)
{
    ref_t  r;
    float *flat;
    size_t bad = 0;

    load(&r, "qwen_tiny.bin");
    flat = calloc(r.fx.P, 4);
    cr_assert_not_null(flat);
    cr_assert_eq(import_dir(&r, "hf_qwen_tiny", &r.mc, flat), TPM_OK);
    for (size_t i = 0; i < r.fx.P; i++) {
        bad += flat[i] != tpm_bf16_to_float(tpm_bf16_rne(r.fx.params[i]));
    }
    cr_expect_eq(bad, 0, "%zu of %zu values are not the bf16 rounding of the fixture's", bad,
                 r.fx.P);
    free(flat);
    unload(&r);
}

Test(hf, a_config_json_that_describes_another_model_is_refused)
{
    ref_t              r;
    tpm_model_config_t c;
    float             *flat;

    load(&r, "llama_tiny.bin");
    flat = calloc(r.fx.P, 4);
    cr_assert_not_null(flat);
    c   = r.mc;
    c.F = 64;
    cr_expect_eq(import_dir(&r, "hf_llama_tiny", &c, flat), TPM_ERR_INVALID_ARG);
    c      = r.mc;
    c.tied = 1;
    cr_expect_eq(import_dir(&r, "hf_llama_tiny", &c, flat), TPM_ERR_INVALID_ARG);
    c             = r.mc;
    c.rope.factor = 8.0;
    cr_expect_eq(import_dir(&r, "hf_llama_tiny", &c, flat), TPM_ERR_INVALID_ARG);
    cr_expect_eq(import_dir(&r, "no_such_dir", &r.mc, flat), TPM_ERR_NOT_FOUND);
    free(flat);
    unload(&r);
}

/* a safetensors file from a header text and @p ndata data bytes (0x3c each) */
static void write_st(const char *path, const char *header, uint64_t hlen_override, size_t ndata)
{
    FILE    *f    = fopen(path, "wb");
    uint64_t hlen = hlen_override ? hlen_override : strlen(header);

    cr_assert_not_null(f);
    for (int i = 0; i < 8; i++) {
        fputc((int)(hlen >> (8 * i) & 0xff), f);
    }
    fputs(header, f);
    for (size_t i = 0; i < ndata; i++) {
        fputc(0x3c, f);
    }
    fclose(f);
}

Test(safetensors, every_size_and_offset_is_checked)
{
    static const struct {
        const char *header;
        uint64_t    hlen;
        size_t      ndata;
        const char *why;
    } bad[] = {
        {"{}", 1000, 0, "header longer than the file"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 0, 8, "cut JSON"},
        {"[1,2]", 0, 0, "not an object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}", 0, 8,
         "data past the end"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 0, 8,
         "size does not match the shape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 0, 8,
         "begin after end"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 0, 8,
         "negative dimension"},
        {"{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8, "unknown dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         0, 12, "overlapping tensors"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],"
         "\"data_offsets\":[0,8]}}",
         0, 8, "element count overflow"},
        {"{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8, "no dtype"},
    };
    char           path[] = "/tmp/tpm_st_XXXXXX";
    int            fd     = mkstemp(path);
    tpm_st_file_t *f      = NULL;

    cr_assert(fd >= 0);
    close(fd);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_st(path, bad[i].header, bad[i].hlen, bad[i].ndata);
        cr_expect_eq(tpm_st_open(path, &f), TPM_ERR_FORMAT, "accepted: %s", bad[i].why);
        cr_expect_null(f);
    }
    write_st(path, "", 0, 0);
    cr_assert_eq(truncate(path, 5), 0);
    cr_expect_eq(tpm_st_open(path, &f), TPM_ERR_FORMAT, "accepted a 5-byte file");
    unlink(path);
}

Test(safetensors, f32_bf16_and_f16_values_are_read_as_fp32)
{
    /* 1.5 and -2 in each format, then a tensor of an unsupported dtype */
    const char *header = "{\"__metadata__\":{\"format\":\"pt\"},"
                         "\"f\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                         "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[8,12]},"
                         "\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[12,16]},"
                         "\"i\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[16,20]}}";
    const unsigned char data[20] = {0, 0, 0xc0, 0x3f, 0, 0, 0, 0xc0, 0xc0, 0x3f, 0, 0xc0,
                                    0, 0x3e, 0, 0xc0, 1, 0, 0, 0};
    char           path[] = "/tmp/tpm_st_XXXXXX";
    int            fd     = mkstemp(path);
    uint64_t       hlen   = strlen(header);
    tpm_st_file_t *f      = NULL;
    float          v[2];
    const char    *names[3] = {"f", "b", "h"};

    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, &hlen, 8), 8); /* little-endian host */
    cr_assert_eq(write(fd, header, hlen), (ssize_t)hlen);
    cr_assert_eq(write(fd, data, sizeof(data)), (ssize_t)sizeof(data));
    close(fd);
    cr_assert_eq(tpm_st_open(path, &f), TPM_OK);
    cr_expect_eq(f->n, 4);
    for (int k = 0; k < 3; k++) {
        const tpm_st_tensor_t *t = tpm_st_find(f, names[k]);

        cr_assert_not_null(t);
        cr_assert_eq(tpm_st_read(f, t, 0, 2, v), TPM_OK);
        cr_expect(v[0] == 1.5f && v[1] == -2.0f, "%s: %g %g", names[k], v[0], v[1]);
        cr_expect_eq(tpm_st_read(f, t, 1, 2, v), TPM_ERR_INVALID_ARG, "a range past the end");
    }
    cr_expect_eq(tpm_st_read(f, tpm_st_find(f, "i"), 0, 1, v), TPM_ERR_UNSUPPORTED);
    cr_expect_null(tpm_st_find(f, "nope"));
    tpm_st_close(f);
    unlink(path);
}
