/* SPDX-License-Identifier: MIT */
/*
 * api.c: OpenAI-compatible request parsing and response building for the HTTP front-end
 * (see api.h). Everything here works on byte buffers, so the request-to-job path is a
 * pure function that Criterion tests and libFuzzer drive directly.
 *
 * Hard limits on untrusted input (the redis habit): the body size is bounded by the caller
 * (--max-body-bytes); here every field is type-checked, every count is checked before it
 * sizes an allocation, and token ids are checked against the vocabulary before they reach
 * the engine. Bad requests never log here (the fuzzer would drown in messages): the caller
 * logs the tpm_api_error_t once at warn level.
 */
#include "serve/api.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/mem.h"

/* ---- errors ------------------------------------------------------------------------------ */

void tpm_api_error_set(tpm_api_error_t *err, int http_status, const char *type, const char *code,
                       const char *param, const char *fmt, ...)
{
    va_list ap;

    err->http_status = http_status;
    err->type        = type;
    err->code        = code;
    snprintf(err->param, sizeof(err->param), "%s", param != NULL ? param : "");
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
}

static void api_bad(tpm_api_error_t *err, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* the common case: 400 invalid_request_error about one parameter */
static void api_bad(tpm_api_error_t *err, const char *param, const char *fmt, ...)
{
    va_list ap;

    err->http_status = 400;
    err->type        = "invalid_request_error";
    err->code        = NULL;
    snprintf(err->param, sizeof(err->param), "%s", param != NULL ? param : "");
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
}

static void api_oom(tpm_api_error_t *err)
{
    tpm_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
}

/* jansson string from any bytes: invalid UTF-8 (a truncated message, a URL) is repaired */
static json_t *api_json_string(const char *s, size_t n)
{
    char   *fixed = NULL;
    size_t  n_fixed;
    json_t *j;

    if (tpm_api_utf8_repair(s, n, &fixed, &n_fixed) != TPM_OK) {
        return NULL;
    }
    j = json_stringn(fixed, n_fixed);
    free(fixed);
    return j;
}

/* serialize and take ownership of @p root (decref'd in every case) */
static tpm_status_t api_dump(json_t *root, char **json_p, size_t *n_p)
{
    char *s;

    if (root == NULL) {
        return TPM_ERR_NO_MEMORY;
    }
    /* 10 significant digits: "12.345", not "12.345000000000001" */
    s = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(10));
    json_decref(root);
    if (s == NULL) {
        return TPM_ERR_NO_MEMORY;
    }
    *json_p = s;
    if (n_p != NULL) {
        *n_p = strlen(s);
    }
    return TPM_OK;
}

/* set key to a new value; remembers an allocation failure in *ok */
static void api_set(json_t *obj, const char *key, json_t *val, int *ok)
{
    if (val == NULL || json_object_set_new(obj, key, val) != 0) {
        *ok = 0;
    }
}

tpm_status_t tpm_api_error_json(const tpm_api_error_t *err, char **json_p, size_t *n_p)
{
    json_t *root = json_object(), *e = json_object();
    int     ok = root != NULL && e != NULL;

    if (!ok) {
        json_decref(root);
        json_decref(e);
        return TPM_ERR_NO_MEMORY;
    }
    api_set(root, "error", e, &ok);
    api_set(e, "message", api_json_string(err->message, strlen(err->message)), &ok);
    api_set(e, "type", json_string(err->type != NULL ? err->type : "invalid_request_error"), &ok);
    api_set(e, "param",
            err->param[0] != '\0' ? api_json_string(err->param, strlen(err->param)) : json_null(),
            &ok);
    api_set(e, "code", err->code != NULL ? json_string(err->code) : json_null(), &ok);
    if (!ok) {
        json_decref(root);
        return TPM_ERR_NO_MEMORY;
    }
    return api_dump(root, json_p, n_p);
}

/* ---- request parsing --------------------------------------------------------------------- */

/* a member that is present and not null, else NULL */
static json_t *api_field(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);

    return (v == NULL || json_is_null(v)) ? NULL : v;
}

/* parse the body as one JSON object; 400 with jansson's position on bad JSON */
static json_t *api_load_object(const char *body, size_t n, tpm_api_error_t *err)
{
    json_error_t jerr;
    json_t      *root;

    /* NUL inside strings is legal JSON and the tokenizer takes any bytes */
    root = json_loadb(body, n, JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        if (json_error_code(&jerr) == json_error_out_of_memory) {
            api_oom(err);
        } else {
            api_bad(err, NULL, "invalid JSON body: %s (line %d, column %d)", jerr.text, jerr.line,
                    jerr.column);
        }
        return NULL;
    }
    if (!json_is_object(root)) {
        api_bad(err, NULL, "the request body must be a JSON object");
        json_decref(root);
        return NULL;
    }
    return root;
}

/* "model", when given, is a string naming the served model (404 otherwise, as OpenAI's) */
static int api_model_check(json_t *root, const tpm_api_limits_t *lim, tpm_api_error_t *err)
{
    json_t *v = api_field(root, "model");

    if (v != NULL && !json_is_string(v)) {
        api_bad(err, "model", "'model' must be a string");
        return 0;
    }
    if (v != NULL && lim->model != NULL && strcmp(json_string_value(v), lim->model) != 0) {
        tpm_api_error_set(err, 404, "invalid_request_error", "model_not_found", "model",
                          "the model '%.128s' does not exist; this server serves '%.128s'",
                          json_string_value(v), lim->model);
        return 0;
    }
    return 1;
}

/* numeric field (integer or real) in [lo, hi]; absent/null leaves *v_p */
static int api_get_number(json_t *root, const char *key, double lo, double hi, double *v_p,
                          tpm_api_error_t *err)
{
    json_t *v = api_field(root, key);
    double  x;

    if (v == NULL) {
        return 1;
    }
    if (!json_is_number(v)) {
        api_bad(err, key, "'%s' must be a number", key);
        return 0;
    }
    x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi) {
        api_bad(err, key, "'%s' must be between %g and %g, got %g", key, lo, hi, x);
        return 0;
    }
    *v_p = x;
    return 1;
}

/* integer field in [lo, hi]; *present_p (optional) says whether it was given */
static int api_get_int(json_t *root, const char *key, json_int_t lo, json_int_t hi, json_int_t *v_p,
                       int *present_p, tpm_api_error_t *err)
{
    json_t    *v = api_field(root, key);
    json_int_t x;

    if (present_p != NULL) {
        *present_p = v != NULL;
    }
    if (v == NULL) {
        return 1;
    }
    if (!json_is_integer(v)) {
        api_bad(err, key, "'%s' must be an integer", key);
        return 0;
    }
    x = json_integer_value(v);
    if (x < lo || x > hi) {
        api_bad(err, key, "'%s' must be between %lld and %lld, got %lld", key, (long long)lo,
                (long long)hi, (long long)x);
        return 0;
    }
    *v_p = x;
    return 1;
}

/* boolean field; absent/null leaves *v_p */
static int api_get_bool(json_t *root, const char *key, int *v_p, tpm_api_error_t *err)
{
    json_t *v = api_field(root, key);

    if (v == NULL) {
        return 1;
    }
    if (!json_is_boolean(v)) {
        api_bad(err, key, "'%s' must be true or false", key);
        return 0;
    }
    *v_p = json_is_true(v);
    return 1;
}

/* "stream_options": an object whose "include_usage" (a boolean) asks for a usage chunk */
static int api_stream_options(json_t *root, int *include_usage_p, tpm_api_error_t *err)
{
    json_t *v = api_field(root, "stream_options");

    if (v == NULL) {
        return 1;
    }
    if (!json_is_object(v)) {
        api_bad(err, "stream_options", "'stream_options' must be an object");
        return 0;
    }
    if (!api_get_bool(v, "include_usage", include_usage_p, err)) {
        snprintf(err->param, sizeof(err->param), "stream_options.include_usage");
        return 0;
    }
    return 1;
}

/* OpenAI parameters we do not implement: refuse them rather than silently ignoring them */
static int api_check_unsupported(json_t *root, tpm_api_error_t *err)
{
    json_int_t k    = 1;
    int        echo = 0;
    json_t    *v;

    if (!api_get_int(root, "n", 1, 1, &k, NULL, err)) {
        api_bad(err, "n", "'n' must be 1: this server returns one completion per request");
        return 0;
    }
    if (!api_get_int(root, "best_of", 1, 1, &k, NULL, err)) {
        api_bad(err, "best_of",
                "'best_of' must be 1: this server returns one completion per "
                "request");
        return 0;
    }
    if (!api_get_bool(root, "echo", &echo, err)) {
        return 0;
    }
    if (!api_get_int(root, "logprobs", 0, 20, &k, NULL, err)) {
        return 0;
    }
    v = api_field(root, "suffix");
    if (v != NULL && !(json_is_string(v) && json_string_length(v) == 0)) {
        api_bad(err, "suffix", "'suffix' is not supported");
        return 0;
    }
    return 1;
}

/* token ids from a JSON array of integers, each in [0, V); at most max_n of them */
static int api_token_array(json_t *arr, int V, size_t max_n, const char *param, int32_t **ids_p,
                           int *n_p, tpm_api_error_t *err)
{
    size_t   n = json_array_size(arr);
    int32_t *ids;

    if (n > max_n) {
        api_bad(err, param, "'%s' has %zu tokens, more than the limit of %zu", param, n, max_n);
        return 0;
    }
    if (tpm_malloc((n > 0 ? n : 1) * sizeof(*ids), (void **)&ids) != TPM_OK) {
        api_oom(err);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(arr, i);

        if (!json_is_integer(v)) {
            api_bad(err, param, "'%s' must be a list of integer token ids (element %zu is not)",
                    param, i);
            tpm_free(ids);
            return 0;
        }
        if (json_integer_value(v) < 0 || json_integer_value(v) >= V) {
            api_bad(err, param,
                    "token id %lld at position %zu of '%s' is outside the "
                    "vocabulary [0, %d)",
                    (long long)json_integer_value(v), i, param, V);
            tpm_free(ids);
            return 0;
        }
        ids[i] = (int32_t)json_integer_value(v);
    }
    *ids_p = ids;
    *n_p   = (int)n;
    return 1;
}

/* encode a JSON string (any bytes) */
static int api_encode(const tpm_tokenizer_t *tok, json_t *s, int32_t **ids_p, size_t *n_p,
                      tpm_api_error_t *err)
{
    size_t   len = json_string_length(s), n_ids = 0;
    int32_t *ids;

    /* byte-level BPE: never more ids than bytes, so one pass with cap = len suffices */
    if (tpm_malloc((len > 0 ? len : 1) * sizeof(*ids), (void **)&ids) != TPM_OK) {
        api_oom(err);
        return 0;
    }
    if (tpm_tokenizer_encode(tok, json_string_value(s), len, ids, len, &n_ids) != TPM_OK) {
        tpm_api_error_set(err, 500, "server_error", NULL, NULL, "the prompt could not be encoded");
        tpm_free(ids);
        return 0;
    }
    *ids_p = ids;
    *n_p   = n_ids;
    return 1;
}

/* a growable byte buffer for rendered prompts */
typedef struct {
    char  *s;
    size_t n, cap;
} api_text_buf_t;

static int api_buf_add(api_text_buf_t *b, const char *s, size_t n, tpm_api_error_t *err)
{
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap > 0 ? b->cap : 256;
        char  *p;

        while (c < b->n + n + 1) {
            c *= 2;
        }
        p = realloc(b->s, c);
        if (p == NULL) {
            api_oom(err);
            return 0;
        }
        b->s   = p;
        b->cap = c;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
    return 1;
}

/* "prompt": a string, a list of token ids, or a list holding exactly one of those */
static int api_prompt(json_t *root, const tpm_api_limits_t *lim, const tpm_tokenizer_t *tok,
                      tpm_serve_job_t *job, tpm_api_error_t *err)
{
    json_t *p = api_field(root, "prompt");
    size_t  n = 0;

    if (p == NULL) {
        api_bad(err, "prompt", "'prompt' is required");
        return 0;
    }
    if (json_is_array(p) && json_array_size(p) > 0 && !json_is_integer(json_array_get(p, 0))) {
        if (json_array_size(p) > 1) {
            api_bad(err, "prompt",
                    "'prompt' holds %zu prompts; this server takes one prompt per "
                    "request",
                    json_array_size(p));
            return 0;
        }
        p = json_array_get(p, 0);
        if (!json_is_string(p) && !json_is_array(p)) {
            api_bad(err, "prompt",
                    "'prompt' must be a string, a list of token ids, or a list "
                    "with one of them");
            return 0;
        }
        if (json_is_array(p) && json_array_size(p) > 0 && !json_is_integer(json_array_get(p, 0))) {
            api_bad(err, "prompt", "'prompt' must be a list of integer token ids");
            return 0;
        }
    }
    if (json_is_string(p)) {
        if (!api_encode(tok, p, &job->prompt, &n, err)) {
            return 0;
        }
    } else if (json_is_array(p)) {
        int n_int = 0;

        if (json_array_size(p) == 0) {
            api_bad(err, "prompt", "'prompt' must not be an empty list");
            return 0;
        }
        if (json_array_size(p) > (size_t)lim->n_ctx) {
            api_bad(err, "prompt",
                    "the prompt has %zu tokens, more than this model's context of %d tokens",
                    json_array_size(p), lim->n_ctx);
            err->code = "context_length_exceeded";
            return 0;
        }
        if (!api_token_array(p, lim->vocab, (size_t)lim->n_ctx, "prompt", &job->prompt, &n_int,
                             err)) {
            return 0;
        }
        n = (size_t)n_int;
    } else {
        api_bad(err, "prompt",
                "'prompt' must be a string, a list of token ids, or a list with "
                "one of them");
        return 0;
    }
    if (n == 0) {
        /* an empty prompt starts a new document, as in training: the end-of-text token */
        job->prompt[0] = tpm_tokenizer_eot(tok);
        n              = 1;
    }
    if (n > (size_t)lim->n_ctx) {
        api_bad(err, "prompt",
                "the prompt has %zu tokens, more than this model's context of %d tokens", n,
                lim->n_ctx);
        err->code = "context_length_exceeded";
        return 0;
    }
    job->n_prompt = (int)n;
    return 1;
}

/*
 * The context rule: a prompt of p tokens (1 <= p <= n_ctx) may generate up to n_ctx - p + 1
 * tokens. Every generated token but the last is fed back and takes a KV cache row; the last
 * one only needs the logits of the row before it, so a prompt that fills the context still
 * gets its next token. The engine stops at the same point (TPM_FINISH_LENGTH).
 */
static int api_max_tokens(json_t *root, const char *key, const tpm_api_limits_t *lim,
                          tpm_serve_job_t *job, tpm_api_error_t *err)
{
    json_int_t mt      = 0;
    int        present = 0;
    int        room    = lim->n_ctx - job->n_prompt + 1; /* >= 1: api_prompt checked p */
    int        hi      = room < lim->max_tokens ? room : lim->max_tokens;

    if (!api_get_int(root, key, LLONG_MIN, LLONG_MAX, &mt, &present, err)) {
        return 0;
    }
    if (!present) {
        mt = TPM_API_DEFAULT_MAX_TOKENS < hi ? TPM_API_DEFAULT_MAX_TOKENS : hi;
    }
    if (mt < 1 || mt > lim->max_tokens) {
        api_bad(err, key, "'%s' must be from 1 to %d (this server's --max-tokens), got %lld", key,
                lim->max_tokens, (long long)mt);
        return 0;
    }
    if (mt > room) {
        api_bad(err, "prompt",
                "this model's context is %d tokens: a prompt of %d tokens leaves room for at "
                "most %d new tokens (n_ctx - prompt + 1: the last token needs no room), "
                "however you requested %s %lld; reduce the prompt or %s",
                lim->n_ctx, job->n_prompt, room, key, (long long)mt, key);
        err->code = "context_length_exceeded";
        return 0;
    }
    job->max_tokens = (int)mt;
    return 1;
}

static int api_stop(json_t *root, tpm_serve_job_t *job, tpm_api_error_t *err)
{
    json_t *v = api_field(root, "stop"), *list[TPM_SERVE_MAX_STOP];
    size_t  n = 0;

    if (v == NULL) {
        return 1;
    }
    if (json_is_string(v)) {
        list[0] = v;
        n       = 1;
    } else if (json_is_array(v)) {
        if (json_array_size(v) > TPM_SERVE_MAX_STOP) {
            api_bad(err, "stop", "'stop' has %zu strings; at most %d are allowed",
                    json_array_size(v), TPM_SERVE_MAX_STOP);
            return 0;
        }
        n = json_array_size(v);
        for (size_t i = 0; i < n; i++) {
            list[i] = json_array_get(v, i);
        }
    } else {
        api_bad(err, "stop", "'stop' must be a string or a list of strings");
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        size_t len;

        if (!json_is_string(list[i])) {
            api_bad(err, "stop", "'stop' must be a string or a list of strings");
            return 0;
        }
        len = json_string_length(list[i]);
        if (len == 0 || len > TPM_API_MAX_STOP_BYTES) {
            api_bad(err, "stop", "each stop string must have 1 to %d bytes, got %zu",
                    TPM_API_MAX_STOP_BYTES, len);
            return 0;
        }
        if (memchr(json_string_value(list[i]), '\0', len) != NULL) {
            api_bad(err, "stop", "stop strings must not contain NUL characters");
            return 0;
        }
        if (tpm_malloc(len + 1, (void **)&job->stop[i]) != TPM_OK) {
            api_oom(err);
            return 0;
        }
        memcpy(job->stop[i], json_string_value(list[i]), len + 1);
    }
    return 1;
}

/* presence_penalty, frequency_penalty in [-2, 2]; logit_bias {"token id": bias in [-100, 100]} */
static int api_penalties(json_t *root, const tpm_api_limits_t *lim, tpm_serve_job_t *job,
                         tpm_api_error_t *err)
{
    double      pres = 0.0, freq = 0.0;
    json_t     *v = api_field(root, "logit_bias"), *val;
    const char *key;
    int         i = 0;

    if (!api_get_number(root, "presence_penalty", -2.0, 2.0, &pres, err) ||
        !api_get_number(root, "frequency_penalty", -2.0, 2.0, &freq, err)) {
        return 0;
    }
    job->presence_penalty  = (float)pres;
    job->frequency_penalty = (float)freq;
    if (v == NULL) {
        return 1;
    }
    if (!json_is_object(v) || json_object_size(v) > TPM_API_MAX_LOGIT_BIAS) {
        api_bad(err, "logit_bias", "'logit_bias' must be an object of at most %d token ids",
                TPM_API_MAX_LOGIT_BIAS);
        return 0;
    }
    if (json_object_size(v) == 0) {
        return 1;
    }
    if (tpm_malloc(json_object_size(v) * sizeof(int32_t), (void **)&job->bias_ids) != TPM_OK ||
        tpm_malloc(json_object_size(v) * sizeof(float), (void **)&job->bias_val) != TPM_OK) {
        api_oom(err);
        return 0;
    }
    json_object_foreach(v, key, val)
    {
        char *endp;
        long  id;

        errno = 0;
        id    = strtol(key, &endp, 10);
        if (errno != 0 || endp == key || *endp != '\0' || id < 0 || id >= lim->vocab) {
            api_bad(err, "logit_bias",
                    "'logit_bias' keys must be token ids from 0 to %d, got '%.32s'", lim->vocab - 1,
                    key);
            return 0;
        }
        if (!json_is_number(val) || json_number_value(val) < -100.0 ||
            json_number_value(val) > 100.0) {
            api_bad(err, "logit_bias", "'logit_bias' values must be numbers from -100 to 100");
            return 0;
        }
        job->bias_ids[i] = (int32_t)id;
        job->bias_val[i] = (float)json_number_value(val);
        job->n_bias      = ++i;
    }
    return 1;
}

static int api_sampling(json_t *root, const tpm_api_limits_t *lim, uint64_t default_seed,
                        tpm_serve_job_t *job, tpm_api_error_t *err)
{
    double     temperature = 1.0, top_p = 1.0;
    json_int_t top_k = 0, seed = 0;
    int        has_seed = 0;

    if (!api_get_number(root, "temperature", 0.0, 2.0, &temperature, err) ||
        !api_get_number(root, "top_p", 0.0, 1.0, &top_p, err) ||
        !api_get_int(root, "top_k", -1, INT32_MAX, &top_k, NULL, err) ||
        !api_get_int(root, "seed", INT64_MIN, INT64_MAX, &seed, &has_seed, err)) {
        return 0;
    }
    if (top_p <= 0.0) {
        api_bad(err, "top_p", "'top_p' must be greater than 0");
        return 0;
    }
    job->temperature = (float)temperature;
    job->top_p       = (float)top_p;
    /* -1 (vLLM) and 0 both mean off; more than V is the same as off */
    job->top_k = (top_k <= 0 || top_k >= lim->vocab) ? 0 : (int)top_k;
    job->seed  = has_seed ? (uint64_t)seed : default_seed;
    return api_penalties(root, lim, job, err);
}

void tpm_api_job_free(tpm_serve_job_t *job)
{
    if (job == NULL) {
        return;
    }
    tpm_free(job->prompt);
    tpm_free(job->bias_ids);
    tpm_free(job->bias_val);
    for (int i = 0; i < TPM_SERVE_MAX_STOP; i++) {
        tpm_free(job->stop[i]);
    }
    tpm_free(job);
}

tpm_status_t tpm_api_completion_parse(const char *body, size_t n, const tpm_api_limits_t *lim,
                                      const tpm_tokenizer_t *tok, uint64_t default_seed,
                                      tpm_api_completion_t *req_p, tpm_api_error_t *err)
{
    json_t          *root, *v;
    tpm_serve_job_t *job    = NULL;
    int              stream = 0, include_usage = 0;

    req_p->echo = 0;
    root        = api_load_object(body, n, err);
    if (root == NULL) {
        return err->http_status == 500 ? TPM_ERR_NO_MEMORY : TPM_ERR_INVALID_ARG;
    }
    if (!api_model_check(root, lim, err)) {
        goto err_bad;
    }
    if (!api_check_unsupported(root, err)) {
        goto err_bad;
    }
    if (tpm_calloc(1, sizeof(*job), (void **)&job) != TPM_OK) {
        api_oom(err);
        goto err_bad;
    }
    if (!api_prompt(root, lim, tok, job, err) ||
        !api_max_tokens(root, "max_tokens", lim, job, err) ||
        !api_sampling(root, lim, default_seed, job, err) || !api_stop(root, job, err) ||
        !api_get_bool(root, "stream", &stream, err) ||
        !api_get_bool(root, "echo", &req_p->echo, err)) {
        goto err_bad;
    }
    v = api_field(root, "logprobs");
    if (v != NULL) {
        job->logprobs     = 1;
        job->top_logprobs = (int)json_integer_value(v); /* 0..20: api_check_unsupported */
        job->echo         = req_p->echo;
    }
    if (stream && (job->logprobs || req_p->echo)) {
        api_bad(err, job->logprobs ? "logprobs" : "echo", "'%s' is not supported with 'stream' yet",
                job->logprobs ? "logprobs" : "echo");
        goto err_bad;
    }
    if (!api_stream_options(root, &include_usage, err)) {
        goto err_bad;
    }
    json_decref(root);
    req_p->job           = job;
    req_p->stream        = stream;
    req_p->include_usage = stream && include_usage;
    req_p->chat          = 0;
    return TPM_OK;

err_bad:
    tpm_api_job_free(job);
    json_decref(root);
    return err->http_status == 500 ? TPM_ERR_NO_MEMORY : TPM_ERR_INVALID_ARG;
}

/* ---- chat completions ---------------------------------------------------------------------- */

void tpm_api_fanout_free(tpm_api_fanout_t *f)
{
    if (f == NULL) {
        return;
    }
    for (int i = 0; i < f->n_sub; i++) {
        free(f->bodies[i]);
    }
    free(f->bodies);
    free(f->lens);
    memset(f, 0, sizeof(*f));
}

tpm_status_t tpm_api_fanout(const char *body, size_t n, int chat, tpm_api_fanout_t *f,
                            tpm_api_error_t *err)
{
    json_t    *root = api_load_object(body, n, err), *prompt, *seed;
    json_int_t nn = 1, bo = 1;
    int        has_bo = 0, stream = 0, multi_prompt = 0, ok = 1;
    size_t     n_prompts = 1;

    memset(f, 0, sizeof(*f));
    if (root == NULL) {
        return err->http_status == 500 ? TPM_ERR_NO_MEMORY : TPM_ERR_INVALID_ARG;
    }
    prompt = api_field(root, "prompt");
    if (!chat && prompt != NULL && json_is_array(prompt) && json_array_size(prompt) > 1 &&
        !json_is_integer(json_array_get(prompt, 0))) {
        multi_prompt = 1;
        n_prompts    = json_array_size(prompt);
    }
    if (!api_get_int(root, "n", 1, TPM_API_MAX_CHOICES, &nn, NULL, err) ||
        (!chat && !api_get_int(root, "best_of", 1, TPM_API_MAX_CHOICES, &bo, &has_bo, err)) ||
        !api_get_bool(root, "stream", &stream, err)) {
        json_decref(root);
        return TPM_ERR_INVALID_ARG;
    }
    if (!has_bo) {
        bo = nn;
    }
    if (bo < nn) {
        api_bad(err, "best_of", "'best_of' (%lld) must be at least 'n' (%lld)", (long long)bo,
                (long long)nn);
        json_decref(root);
        return TPM_ERR_INVALID_ARG;
    }
    if (n_prompts * (size_t)bo > TPM_API_MAX_CHOICES) {
        api_bad(err, multi_prompt ? "prompt" : "best_of",
                "%zu prompt(s) x %lld candidate(s) is more than the %d completions one request "
                "may ask for",
                n_prompts, (long long)bo, TPM_API_MAX_CHOICES);
        json_decref(root);
        return TPM_ERR_INVALID_ARG;
    }
    if (n_prompts == 1 && bo == 1) {
        json_decref(root); /* one completion: the single-job path parses the body itself */
        return TPM_OK;
    }
    if (stream) {
        api_bad(err, "stream",
                "streaming is available for one completion per request: not with n > 1, "
                "best_of > 1 or several prompts");
        json_decref(root);
        return TPM_ERR_INVALID_ARG;
    }
    seed         = api_field(root, "seed");
    f->n_prompts = (int)n_prompts;
    f->n         = (int)nn;
    f->best_of   = (int)bo;
    f->bodies    = calloc(n_prompts * (size_t)bo, sizeof(char *));
    f->lens      = calloc(n_prompts * (size_t)bo, sizeof(size_t));
    ok           = f->bodies != NULL && f->lens != NULL;
    for (size_t i = 0; ok && i < n_prompts; i++) {
        for (json_int_t j = 0; ok && j < bo; j++) {
            json_t *sub = json_deep_copy(root);

            ok = sub != NULL;
            if (ok) {
                json_object_del(sub, "n");
                json_object_del(sub, "best_of");
                if (multi_prompt) {
                    ok = json_object_set(sub, "prompt", json_array_get(prompt, i)) == 0;
                }
                /* candidates of one prompt must differ: a given seed moves by the candidate */
                if (ok && seed != NULL && json_is_integer(seed)) {
                    ok = json_object_set_new(sub, "seed",
                                             json_integer(json_integer_value(seed) + j)) == 0;
                }
            }
            if (ok) {
                char *text = json_dumps(sub, JSON_COMPACT);

                ok = text != NULL;
                if (ok) {
                    f->bodies[f->n_sub] = text;
                    f->lens[f->n_sub]   = strlen(text);
                    f->n_sub++;
                }
            }
            json_decref(sub);
        }
    }
    json_decref(root);
    if (!ok) {
        tpm_api_fanout_free(f);
        api_oom(err);
        return TPM_ERR_NO_MEMORY;
    }
    return TPM_OK;
}

tpm_status_t tpm_api_choices_merge(const char *const *jsons, const size_t *lens, int n,
                                   int64_t prompt_tokens, int64_t completion_tokens, char **json_p,
                                   size_t *n_p)
{
    json_t *out = NULL, *choices = json_array(), *usage = json_object();
    int     ok = choices != NULL && usage != NULL && n > 0;

    for (int i = 0; ok && i < n; i++) {
        json_t *one = json_loadb(jsons[i], lens[i], 0, NULL);
        json_t *ch  = one != NULL ? json_array_get(json_object_get(one, "choices"), 0) : NULL;

        ok = ch != NULL && json_object_set_new(ch, "index", json_integer(i)) == 0 &&
             json_array_append(choices, ch) == 0;
        if (ok && out == NULL) {
            out = one; /* id, object, created, model and timings of the first */
            one = NULL;
        }
        json_decref(one);
    }
    api_set(usage, "prompt_tokens", json_integer((json_int_t)prompt_tokens), &ok);
    api_set(usage, "completion_tokens", json_integer((json_int_t)completion_tokens), &ok);
    api_set(usage, "total_tokens", json_integer((json_int_t)(prompt_tokens + completion_tokens)),
            &ok);
    if (ok) {
        api_set(out, "choices", choices, &ok);
        api_set(out, "usage", usage, &ok);
        choices = usage = NULL;
    }
    json_decref(choices);
    json_decref(usage);
    if (!ok) {
        json_decref(out);
        return TPM_ERR_NO_MEMORY;
    }
    return api_dump(out, json_p, n_p);
}

/* the chat templates: how a list of messages becomes one prompt (docs/SERVING.md) */
static const struct {
    const char *name;
    const char *bos;        /* once, at the start */
    const char *role_pre;   /* before the role's name ... */
    const char *role_post;  /* ... and after it */
    const char *turn_close; /* after each message's content; also the stop string */
    const char *turn_after; /* after turn_close */
    int         trim;       /* strip the content's leading and trailing white space */
} api_chat_templates[] = {
    [TPM_CHAT_CHATML] = {"chatml", "", "<|im_start|>", "\n", "<|im_end|>", "\n", 0},
    [TPM_CHAT_LLAMA3] = {"llama3", "<|begin_of_text|>", "<|start_header_id|>",
                         "<|end_header_id|>\n\n", "<|eot_id|>", "", 1},
};

const char *tpm_api_chat_template_name(tpm_chat_template_t t)
{
    return (unsigned)t < sizeof(api_chat_templates) / sizeof(api_chat_templates[0])
               ? api_chat_templates[t].name
               : NULL;
}

int tpm_api_chat_template_parse(const char *name, tpm_chat_template_t *t_p)
{
    for (size_t i = 0; i < sizeof(api_chat_templates) / sizeof(api_chat_templates[0]); i++) {
        if (strcmp(name, api_chat_templates[i].name) == 0) {
            *t_p = (tpm_chat_template_t)i;
            return 1;
        }
    }
    return 0;
}

/* a message's content: a string, or a list of {"type": "text", "text": ...} parts (joined) */
static int api_chat_content(json_t *m, size_t k, int allow_null, api_text_buf_t *out,
                            tpm_api_error_t *err)
{
    json_t *c = api_field(m, "content");

    if (c == NULL && allow_null) {
        return 1;
    }
    if (c != NULL && json_is_string(c)) {
        return api_buf_add(out, json_string_value(c), json_string_length(c), err);
    }
    if (c != NULL && json_is_array(c)) {
        for (size_t i = 0; i < json_array_size(c); i++) {
            json_t *part = json_array_get(c, i), *type = json_object_get(part, "type"),
                   *text = json_object_get(part, "text");

            if (!json_is_object(part) || !json_is_string(type) ||
                strcmp(json_string_value(type), "text") != 0 || !json_is_string(text)) {
                api_bad(err, "messages",
                        "messages[%zu].content[%zu]: only {\"type\": \"text\", \"text\": ...} "
                        "parts are supported",
                        k, i);
                return 0;
            }
            if (!api_buf_add(out, json_string_value(text), json_string_length(text), err)) {
                return 0;
            }
        }
        return 1;
    }
    api_bad(err, "messages", "messages[%zu].content must be a string or a list of text parts", k);
    return 0;
}

static int api_chat_open_turn(tpm_chat_template_t t, const char *role, api_text_buf_t *out,
                              tpm_api_error_t *err)
{
    return api_buf_add(out, api_chat_templates[t].role_pre, strlen(api_chat_templates[t].role_pre),
                       err) &&
           api_buf_add(out, role, strlen(role), err) &&
           api_buf_add(out, api_chat_templates[t].role_post,
                       strlen(api_chat_templates[t].role_post), err);
}

/* render "messages" with the template into one string (caller frees out->s) */
static int api_chat_render(json_t *root, tpm_chat_template_t t, api_text_buf_t *out,
                           tpm_api_error_t *err)
{
    static const char *roles[] = {"system", "developer", "user", "assistant"};
    json_t            *msgs    = api_field(root, "messages");

    if (msgs == NULL) {
        api_bad(err, "messages", "'messages' is required");
        return 0;
    }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        api_bad(err, "messages", "'messages' must be a non-empty list of messages");
        return 0;
    }
    if (!api_buf_add(out, api_chat_templates[t].bos, strlen(api_chat_templates[t].bos), err)) {
        return 0;
    }
    for (size_t k = 0; k < json_array_size(msgs); k++) {
        json_t     *m    = json_array_get(msgs, k), *role;
        const char *name = NULL;
        size_t      c0;

        role = json_is_object(m) ? json_object_get(m, "role") : NULL;
        if (!json_is_string(role)) {
            api_bad(err, "messages", "messages[%zu] must be an object with a string 'role'", k);
            return 0;
        }
        for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++) {
            if (strcmp(json_string_value(role), roles[i]) == 0) {
                name = roles[i];
            }
        }
        if (name == NULL) {
            api_bad(err, "messages",
                    "messages[%zu].role '%.32s' is not supported (system, developer, user, "
                    "assistant)",
                    k, json_string_value(role));
            return 0;
        }
        if (strcmp(name, "developer") == 0) {
            name = "system"; /* OpenAI's newer name for the system message */
        }
        if (api_field(m, "tool_calls") != NULL) {
            api_bad(err, "messages", "messages[%zu]: tool calls are not supported", k);
            return 0;
        }
        if (!api_chat_open_turn(t, name, out, err)) {
            return 0;
        }
        c0 = out->n;
        if (!api_chat_content(m, k, strcmp(name, "assistant") == 0, out, err)) {
            return 0;
        }
        if (api_chat_templates[t].trim) {
            size_t a = c0, b = out->n;

            while (a < b && isspace((unsigned char)out->s[a])) {
                a++;
            }
            while (b > a && isspace((unsigned char)out->s[b - 1])) {
                b--;
            }
            memmove(out->s + c0, out->s + a, b - a);
            out->n = c0 + (b - a);
        }
        if (!api_buf_add(out, api_chat_templates[t].turn_close,
                         strlen(api_chat_templates[t].turn_close), err) ||
            !api_buf_add(out, api_chat_templates[t].turn_after,
                         strlen(api_chat_templates[t].turn_after), err)) {
            return 0;
        }
    }
    /* the generation prompt: the assistant's turn is open */
    return api_chat_open_turn(t, "assistant", out, err);
}

/* what stays refused in a chat request (400) */
static int api_chat_check_unsupported(json_t *root, tpm_api_error_t *err)
{
    static const char *refused[] = {"tools", "tool_choice", "functions", "function_call",
                                    "audio", "modalities",  "prediction"};
    json_int_t         k = 1, top = 0;
    int                lp = 0;
    json_t            *v;

    if (!api_get_int(root, "n", 1, 1, &k, NULL, err)) {
        api_bad(err, "n", "'n' must be 1: this server returns one choice per request");
        return 0;
    }
    if (!api_get_bool(root, "logprobs", &lp, err) ||
        !api_get_int(root, "top_logprobs", 0, 20, &top, NULL, err)) {
        return 0;
    }
    if (!lp && api_field(root, "top_logprobs") != NULL) {
        api_bad(err, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
        return 0;
    }
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        if (api_field(root, refused[i]) != NULL) {
            api_bad(err, refused[i], "'%s' is not supported", refused[i]);
            return 0;
        }
    }
    v = api_field(root, "response_format");
    if (v != NULL) {
        json_t *type = json_object_get(v, "type");

        if (!json_is_string(type) || strcmp(json_string_value(type), "text") != 0) {
            api_bad(err, "response_format",
                    "only 'response_format': {\"type\": \"text\"} is "
                    "supported");
            return 0;
        }
    }
    return 1;
}

tpm_status_t tpm_api_chat_parse(const char *body, size_t n, const tpm_api_limits_t *lim,
                                const tpm_tokenizer_t *tok, uint64_t default_seed,
                                tpm_api_completion_t *req_p, tpm_api_error_t *err)
{
    json_t          *root, *v, *text = NULL;
    tpm_serve_job_t *job    = NULL;
    int              stream = 0, include_usage = 0, slot = -1;
    api_text_buf_t   prompt = {NULL, 0, 0};
    size_t           n_ids  = 0;
    const char      *close  = api_chat_templates[lim->chat_template].turn_close;

    root = api_load_object(body, n, err);
    if (root == NULL) {
        return err->http_status == 500 ? TPM_ERR_NO_MEMORY : TPM_ERR_INVALID_ARG;
    }
    if (!api_model_check(root, lim, err)) {
        goto err_bad;
    }
    if (!api_chat_check_unsupported(root, err)) {
        goto err_bad;
    }
    if (tpm_calloc(1, sizeof(*job), (void **)&job) != TPM_OK) {
        api_oom(err);
        goto err_bad;
    }
    if (!api_chat_render(root, lim->chat_template, &prompt, err)) {
        goto err_bad;
    }
    text = json_stringn(prompt.s, prompt.n);
    if (text == NULL) {
        api_bad(err, "messages", "message contents must be valid UTF-8");
        goto err_bad;
    }
    if (!api_encode(tok, text, &job->prompt, &n_ids, err)) {
        goto err_bad;
    }
    if (n_ids > (size_t)lim->n_ctx) {
        api_bad(err, "messages",
                "the messages take %zu tokens with the chat template, more than this model's "
                "context of %d tokens",
                n_ids, lim->n_ctx);
        err->code = "context_length_exceeded";
        goto err_bad;
    }
    job->n_prompt = (int)n_ids;
    v             = api_field(root, "logprobs");
    if (v != NULL && json_is_true(v)) {
        job->logprobs     = 1;
        v                 = api_field(root, "top_logprobs");
        job->top_logprobs = v != NULL ? (int)json_integer_value(v) : 0;
    }
    /* max_completion_tokens is the current name; max_tokens the deprecated one */
    if (!api_max_tokens(root,
                        api_field(root, "max_completion_tokens") != NULL ? "max_completion_tokens"
                                                                         : "max_tokens",
                        lim, job, err) ||
        !api_sampling(root, lim, default_seed, job, err) || !api_stop(root, job, err) ||
        !api_get_bool(root, "stream", &stream, err)) {
        goto err_bad;
    }
    /* the end-of-turn marker ends the answer, as a stop string */
    for (int i = TPM_SERVE_MAX_STOP - 1; i >= 0; i--) {
        if (job->stop[i] == NULL) {
            slot = i;
        }
    }
    if (slot < 0) {
        api_bad(err, "stop",
                "at most %d stop strings in a chat request (the template's end of turn is one)",
                TPM_SERVE_MAX_STOP - 1);
        goto err_bad;
    }
    if (tpm_malloc(strlen(close) + 1, (void **)&job->stop[slot]) != TPM_OK) {
        api_oom(err);
        goto err_bad;
    }
    memcpy(job->stop[slot], close, strlen(close) + 1);
    if (stream && job->logprobs) {
        api_bad(err, "logprobs", "'logprobs' is not supported with 'stream' yet");
        goto err_bad;
    }
    if (!api_stream_options(root, &include_usage, err)) {
        goto err_bad;
    }
    json_decref(text);
    free(prompt.s);
    json_decref(root);
    req_p->job           = job;
    req_p->stream        = stream;
    req_p->include_usage = stream && include_usage;
    req_p->chat          = 1;
    req_p->echo          = 0;
    return TPM_OK;

err_bad:
    json_decref(text);
    free(prompt.s);
    tpm_api_job_free(job);
    json_decref(root);
    return err->http_status == 500 ? TPM_ERR_NO_MEMORY : TPM_ERR_INVALID_ARG;
}

/* ---- embeddings --------------------------------------------------------------------------- */

tpm_status_t tpm_api_embeddings_parse(const char *body, size_t n, const tpm_api_limits_t *lim,
                                      const tpm_tokenizer_t *tok, tpm_serve_job_t **job_p,
                                      tpm_api_error_t *err)
{
    json_t          *root, *v;
    tpm_serve_job_t *job = NULL;

    root = api_load_object(body, n, err);
    if (root == NULL) {
        return err->http_status == 500 ? TPM_ERR_NO_MEMORY : TPM_ERR_INVALID_ARG;
    }
    if (!api_model_check(root, lim, err)) {
        goto err_bad;
    }
    v = api_field(root, "encoding_format");
    if (v != NULL && !(json_is_string(v) && strcmp(json_string_value(v), "float") == 0)) {
        api_bad(err, "encoding_format", "only 'encoding_format': 'float' is supported");
        goto err_bad;
    }
    if (api_field(root, "dimensions") != NULL) {
        api_bad(err, "dimensions", "'dimensions' is not supported (the model's width is used)");
        goto err_bad;
    }
    v = api_field(root, "input");
    if (v == NULL) {
        api_bad(err, "input", "'input' is required");
        goto err_bad;
    }
    if (json_is_array(v) && json_array_size(v) > 1 && !json_is_integer(json_array_get(v, 0))) {
        api_bad(err, "input", "'input' may hold one text or one list of token ids per request");
        goto err_bad;
    }
    /* the prompt rules of completions (one string or one token list, at most n_ctx) */
    if (json_object_set(root, "prompt", v) != 0 || tpm_calloc(1, sizeof(*job), (void **)&job)) {
        api_oom(err);
        goto err_bad;
    }
    if (!api_prompt(root, lim, tok, job, err)) {
        if (strcmp(err->param, "prompt") == 0) {
            snprintf(err->param, sizeof(err->param), "input");
        }
        goto err_bad;
    }
    job->embed      = 1;
    job->max_tokens = 1;
    json_decref(root);
    *job_p = job;
    return TPM_OK;

err_bad:
    tpm_api_job_free(job);
    json_decref(root);
    return err->http_status == 500 ? TPM_ERR_NO_MEMORY : TPM_ERR_INVALID_ARG;
}

tpm_status_t tpm_api_embeddings_json(const char *model, const float *vec, int C, int prompt_tokens,
                                     char **json_p, size_t *n_p)
{
    json_t *root = json_object(), *data = json_array(), *item = json_object(), *emb = json_array(),
           *u = json_object();
    int ok    = root != NULL && data != NULL && item != NULL && emb != NULL && u != NULL;

    for (int c = 0; ok && c < C; c++) {
        ok = json_array_append_new(emb, json_real(vec[c])) == 0;
    }
    api_set(item, "object", json_string("embedding"), &ok);
    api_set(item, "index", json_integer(0), &ok);
    api_set(item, "embedding", emb, &ok);
    if (ok && json_array_append_new(data, item) != 0) {
        ok = 0;
    }
    api_set(u, "prompt_tokens", json_integer(prompt_tokens), &ok);
    api_set(u, "total_tokens", json_integer(prompt_tokens), &ok);
    api_set(root, "object", json_string("list"), &ok);
    api_set(root, "data", data, &ok);
    api_set(root, "model", api_json_string(model, strlen(model)), &ok);
    api_set(root, "usage", u, &ok);
    if (!ok) {
        json_decref(root);
        return TPM_ERR_NO_MEMORY;
    }
    return api_dump(root, json_p, n_p);
}

/* ---- responses --------------------------------------------------------------------------- */

static double api_round3(double x)
{
    return isfinite(x) ? round(x * 1000.0) / 1000.0 : 0.0;
}

static json_t *api_usage(const tpm_api_result_t *r, int *ok)
{
    json_t *u = json_object();

    if (u == NULL) {
        *ok = 0;
        return NULL;
    }
    api_set(u, "prompt_tokens", json_integer(r->prompt_tokens), ok);
    api_set(u, "completion_tokens", json_integer(r->completion_tokens), ok);
    api_set(u, "total_tokens", json_integer((json_int_t)r->prompt_tokens + r->completion_tokens),
            ok);
    return u;
}

/* llama.cpp-style per-request timings; the decode rate excludes the first token, whose time
 * belongs to the prompt (it is sampled from the prefill's logits) */
static json_t *api_timings(const tpm_api_result_t *r, int *ok)
{
    json_t *t     = json_object();
    int     n_dec = r->completion_tokens - 1;

    if (t == NULL) {
        *ok = 0;
        return NULL;
    }
    api_set(t, "prompt_n", json_integer(r->prompt_tokens), ok);
    api_set(t, "prompt_ms", json_real(api_round3(r->prompt_ms)), ok);
    api_set(t, "prompt_per_second",
            json_real(r->prompt_ms > 0 ? api_round3(r->prompt_tokens * 1e3 / r->prompt_ms) : 0.0),
            ok);
    api_set(t, "predicted_n", json_integer(r->completion_tokens), ok);
    api_set(t, "predicted_ms", json_real(api_round3(r->predicted_ms)), ok);
    api_set(t, "predicted_per_token_ms",
            json_real(n_dec > 0 ? api_round3(r->predicted_ms / n_dec) : 0.0), ok);
    api_set(t, "predicted_per_second",
            json_real(n_dec > 0 && r->predicted_ms > 0 ? api_round3(n_dec * 1e3 / r->predicted_ms)
                                                       : 0.0),
            ok);
    api_set(t, "ttft_ms", json_real(api_round3(r->ttft_ms)), ok);
    return t;
}

/* a token's text for logprobs (repaired to UTF-8), and its byte length */
static json_t *api_token_string(const tpm_tokenizer_t *tok, int32_t id, size_t *len_p)
{
    size_t      len = 0;
    const char *b   = tpm_tokenizer_token_bytes(tok, id, &len);

    *len_p = b != NULL ? len : 0;
    return api_json_string(b != NULL ? b : "", b != NULL ? len : 0);
}

static json_t *api_token_bytes(const tpm_tokenizer_t *tok, int32_t id, int *ok)
{
    size_t               len = 0;
    const unsigned char *b   = (const unsigned char *)tpm_tokenizer_token_bytes(tok, id, &len);
    json_t              *a   = json_array();

    if (a == NULL) {
        *ok = 0;
        return NULL;
    }
    for (size_t i = 0; b != NULL && i < len; i++) {
        if (json_array_append_new(a, json_integer(b[i])) != 0) {
            *ok = 0;
        }
    }
    return a;
}

/* completions: {"tokens", "token_logprobs", "top_logprobs", "text_offset"} */
static json_t *api_logprobs_completion(const tpm_api_result_t *r, int *ok)
{
    json_t *o = json_object(), *toks = json_array(), *lps = json_array(), *tops = json_array(),
           *offs = json_array();
    size_t off   = 0;

    if (o == NULL || toks == NULL || lps == NULL || tops == NULL || offs == NULL) {
        *ok = 0;
    }
    for (int i = 0; *ok && i < r->n_lp; i++) {
        const tpm_api_logprob_t *e = &r->lp[i];
        size_t                   len;
        json_t                  *top;

        json_array_append_new(toks, api_token_string(r->tok, e->token, &len));
        json_array_append_new(lps, e->has ? json_real(e->logprob) : json_null());
        json_array_append_new(offs, json_integer((json_int_t)off));
        off += len;
        if (!e->has) {
            json_array_append_new(tops, json_null());
            continue;
        }
        top = json_object();
        for (int k = 0; top != NULL && k < e->n_top; k++) {
            size_t  l2;
            json_t *key = api_token_string(r->tok, e->top_ids[k], &l2);

            if (key == NULL ||
                json_object_set_new(top, json_string_value(key), json_real(e->top_lp[k])) != 0) {
                *ok = 0;
            }
            json_decref(key);
        }
        if (top == NULL || json_array_append_new(tops, top) != 0) {
            *ok = 0;
        }
    }
    api_set(o, "tokens", toks, ok);
    api_set(o, "token_logprobs", lps, ok);
    api_set(o, "top_logprobs", tops, ok);
    api_set(o, "text_offset", offs, ok);
    return o;
}

/* chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}], "refusal": null} */
static json_t *api_logprobs_chat(const tpm_api_result_t *r, int *ok)
{
    json_t *o = json_object(), *content = json_array();

    if (o == NULL || content == NULL) {
        *ok = 0;
    }
    for (int i = 0; *ok && i < r->n_lp; i++) {
        const tpm_api_logprob_t *e = &r->lp[i];
        json_t                  *c = json_object(), *tops = json_array();
        size_t                   len;

        if (c == NULL || tops == NULL) {
            *ok = 0;
            json_decref(c);
            json_decref(tops);
            break;
        }
        api_set(c, "token", api_token_string(r->tok, e->token, &len), ok);
        api_set(c, "logprob", json_real(e->logprob), ok);
        api_set(c, "bytes", api_token_bytes(r->tok, e->token, ok), ok);
        for (int k = 0; k < e->n_top; k++) {
            json_t *t = json_object();

            api_set(t, "token", api_token_string(r->tok, e->top_ids[k], &len), ok);
            api_set(t, "logprob", json_real(e->top_lp[k]), ok);
            api_set(t, "bytes", api_token_bytes(r->tok, e->top_ids[k], ok), ok);
            if (t == NULL || json_array_append_new(tops, t) != 0) {
                *ok = 0;
            }
        }
        api_set(c, "top_logprobs", tops, ok);
        if (json_array_append_new(content, c) != 0) {
            *ok = 0;
        }
    }
    api_set(o, "content", content, ok);
    api_set(o, "refusal", json_null(), ok);
    return o;
}

tpm_status_t tpm_api_completion_json(const tpm_api_result_t *r, tpm_api_json_kind_t kind,
                                     char **json_p, size_t *n_p)
{
    json_t *root = json_object(), *choices = json_array(), *c = NULL;
    int     ok = root != NULL && choices != NULL;

    if (!ok) {
        json_decref(root);
        json_decref(choices);
        return TPM_ERR_NO_MEMORY;
    }
    api_set(root, "id", json_string(r->id), &ok);
    api_set(root, "object",
            json_string(!r->chat ? "text_completion"
                                 : (kind == TPM_API_JSON_FULL ? "chat.completion"
                                                              : "chat.completion.chunk")),
            &ok);
    api_set(root, "created", json_integer(r->created), &ok);
    api_set(root, "model", api_json_string(r->model, strlen(r->model)), &ok);
    if (r->trainserve) {
        char fp[40];

        snprintf(fp, sizeof(fp), "tpmpi-step-%lld", (long long)r->weights_step);
        api_set(root, "system_fingerprint", json_string(fp), &ok);
    }
    api_set(root, "choices", choices, &ok);
    if (kind != TPM_API_JSON_USAGE) {
        c = json_object();
        if (c == NULL || json_array_append_new(choices, c) != 0) {
            ok = 0;
        } else {
            json_t *text = api_json_string(r->text != NULL ? r->text : "", r->text_len);

            if (!r->chat) {
                api_set(c, "text", text, &ok);
            } else {
                /* chat: the answer is a message; a stream sends deltas of it, the role in
                 * the first one, nothing in the one with the finish_reason */
                json_t *m = json_object();

                if (m == NULL) {
                    ok = 0;
                    json_decref(text);
                } else {
                    if (kind == TPM_API_JSON_FULL || r->first) {
                        api_set(m, "role", json_string("assistant"), &ok);
                    }
                    if (kind == TPM_API_JSON_FULL || r->text_len > 0 || r->first ||
                        r->finish_reason == NULL) {
                        api_set(m, "content", text, &ok);
                    } else {
                        json_decref(text);
                    }
                    api_set(c, kind == TPM_API_JSON_FULL ? "message" : "delta", m, &ok);
                }
            }
            api_set(c, "index", json_integer(0), &ok);
            if (r->lp != NULL && r->tok != NULL) {
                api_set(c, "logprobs",
                        r->chat ? api_logprobs_chat(r, &ok) : api_logprobs_completion(r, &ok), &ok);
            } else {
                api_set(c, "logprobs", json_null(), &ok);
            }
            api_set(c, "finish_reason",
                    r->finish_reason != NULL ? json_string(r->finish_reason) : json_null(), &ok);
        }
    }
    if (kind != TPM_API_JSON_CHUNK) {
        api_set(root, "usage", api_usage(r, &ok), &ok);
    }
    if (kind == TPM_API_JSON_FULL || (kind == TPM_API_JSON_CHUNK && r->finish_reason != NULL)) {
        api_set(root, "timings", api_timings(r, &ok), &ok);
    }
    if (!ok) {
        json_decref(root);
        return TPM_ERR_NO_MEMORY;
    }
    return api_dump(root, json_p, n_p);
}

static json_t *api_model_object(const char *model, int n_ctx, int64_t created, int64_t weights_step,
                                int *ok)
{
    json_t *m = json_object();

    if (m == NULL) {
        *ok = 0;
        return NULL;
    }
    api_set(m, "id", api_json_string(model, strlen(model)), ok);
    api_set(m, "object", json_string("model"), ok);
    api_set(m, "created", json_integer(created), ok);
    api_set(m, "owned_by", json_string("tpmpi"), ok);
    api_set(m, "max_model_len", json_integer(n_ctx), ok);
    if (weights_step >= 0) {
        api_set(m, "weights_step", json_integer(weights_step), ok);
    }
    return m;
}

tpm_status_t tpm_api_models_json(const char *model, int n_ctx, int64_t created, int one,
                                 int64_t weights_step, char **json_p, size_t *n_p)
{
    json_t *root, *data;
    int     ok = 1;

    if (one) {
        root = api_model_object(model, n_ctx, created, weights_step, &ok);
        if (!ok) {
            json_decref(root);
            return TPM_ERR_NO_MEMORY;
        }
        return api_dump(root, json_p, n_p);
    }
    root = json_object();
    data = json_array();
    if (root == NULL || data == NULL) {
        json_decref(root);
        json_decref(data);
        return TPM_ERR_NO_MEMORY;
    }
    api_set(root, "object", json_string("list"), &ok);
    api_set(root, "data", data, &ok);
    if (ok && json_array_append_new(
                  data, api_model_object(model, n_ctx, created, weights_step, &ok)) != 0) {
        ok = 0;
    }
    if (!ok) {
        json_decref(root);
        return TPM_ERR_NO_MEMORY;
    }
    return api_dump(root, json_p, n_p);
}

tpm_status_t tpm_api_tokenizer_info_json(const tpm_tokenizer_t *tok, int n_ctx, char **json_p,
                                         size_t *n_p)
{
    json_t *root = json_object();
    int     ok   = root != NULL;

    /* the end-of-text token has no text form: encoding "<|endoftext|>" gives its bytes */
    api_set(root, "eos_token", json_null(), &ok);
    api_set(root, "bos_token", json_null(), &ok);
    api_set(root, "pad_token", json_null(), &ok);
    api_set(root, "eos_token_id", json_integer(tpm_tokenizer_eot(tok)), &ok);
    api_set(root, "vocab_size", json_integer(tpm_tokenizer_vocab_size(tok)), &ok);
    api_set(root, "model_max_length", json_integer(n_ctx), &ok);
    api_set(root, "tokenizer_class", json_string("tpmpi byte-level BPE"), &ok);
    if (!ok) {
        json_decref(root);
        return TPM_ERR_NO_MEMORY;
    }
    return api_dump(root, json_p, n_p);
}

tpm_status_t tpm_api_tokenize(const char *body, size_t n, const tpm_tokenizer_t *tok, char **json_p,
                              size_t *n_p, tpm_api_error_t *err)
{
    json_t      *root = api_load_object(body, n, err), *content, *out = NULL, *arr = NULL;
    int32_t     *ids         = NULL;
    size_t       n_ids       = 0;
    int          with_pieces = 0, ok = 1;
    tpm_status_t status;

    if (root == NULL) {
        return err->http_status == 500 ? TPM_ERR_NO_MEMORY : TPM_ERR_INVALID_ARG;
    }
    content = api_field(root, "content");
    if (content == NULL) {
        content = api_field(root, "prompt"); /* vLLM's name (lm-evaluation-harness sends it) */
    }
    if (content == NULL || !json_is_string(content)) {
        api_bad(err, "content", "'content' (or 'prompt') must be a string");
        json_decref(root);
        return TPM_ERR_INVALID_ARG;
    }
    if (!api_get_bool(root, "with_pieces", &with_pieces, err) ||
        !api_encode(tok, content, &ids, &n_ids, err)) {
        json_decref(root);
        return err->http_status == 500 ? TPM_ERR_NO_MEMORY : TPM_ERR_INVALID_ARG;
    }
    json_decref(root);
    out = json_object();
    arr = json_array();
    ok  = out != NULL && arr != NULL;
    for (size_t i = 0; ok && i < n_ids; i++) {
        json_t *item;

        if (with_pieces) {
            size_t      len;
            const char *bytes = tpm_tokenizer_token_bytes(tok, ids[i], &len);

            item = json_object();
            if (item != NULL) {
                api_set(item, "id", json_integer(ids[i]), &ok);
                api_set(item, "piece",
                        api_json_string(bytes != NULL ? bytes : "", bytes != NULL ? len : 0), &ok);
            }
        } else {
            item = json_integer(ids[i]);
        }
        if (item == NULL || json_array_append_new(arr, item) != 0) {
            ok = 0;
        }
    }
    tpm_free(ids);
    if (ok) {
        api_set(out, "tokens", arr, &ok);
        arr = NULL;
    }
    json_decref(arr);
    if (!ok) {
        json_decref(out);
        api_oom(err);
        return TPM_ERR_NO_MEMORY;
    }
    status = api_dump(out, json_p, n_p);
    if (status != TPM_OK) {
        api_oom(err);
    }
    return status;
}

tpm_status_t tpm_api_detokenize(const char *body, size_t n, const tpm_tokenizer_t *tok,
                                char **json_p, size_t *n_p, tpm_api_error_t *err)
{
    json_t      *root  = api_load_object(body, n, err), *tokens, *out;
    int32_t     *ids   = NULL;
    int          n_ids = 0, ok = 1;
    size_t       n_text = 0;
    char        *text   = NULL;
    tpm_status_t status;

    if (root == NULL) {
        return err->http_status == 500 ? TPM_ERR_NO_MEMORY : TPM_ERR_INVALID_ARG;
    }
    tokens = api_field(root, "tokens");
    if (tokens == NULL || !json_is_array(tokens)) {
        api_bad(err, "tokens", "'tokens' must be a list of integer token ids");
        json_decref(root);
        return TPM_ERR_INVALID_ARG;
    }
    /* the body limit already bounds the count; INT32_MAX keeps it an int */
    if (!api_token_array(tokens, tpm_tokenizer_vocab_size(tok), INT32_MAX, "tokens", &ids, &n_ids,
                         err)) {
        json_decref(root);
        return err->http_status == 500 ? TPM_ERR_NO_MEMORY : TPM_ERR_INVALID_ARG;
    }
    json_decref(root);
    /* ids were range-checked, so decode cannot fail except for the size query */
    (void)tpm_tokenizer_decode(tok, ids, (size_t)n_ids, NULL, 0, &n_text);
    if (tpm_malloc(n_text + 1, (void **)&text) != TPM_OK ||
        tpm_tokenizer_decode(tok, ids, (size_t)n_ids, text, n_text, &n_text) != TPM_OK) {
        tpm_free(ids);
        tpm_free(text);
        api_oom(err);
        return TPM_ERR_NO_MEMORY;
    }
    tpm_free(ids);
    out = json_object();
    if (out != NULL) {
        api_set(out, "content", api_json_string(text, n_text), &ok);
        api_set(out, "prompt", api_json_string(text, n_text), &ok); /* vLLM's name */
    }
    tpm_free(text);
    if (out == NULL || !ok) {
        json_decref(out);
        api_oom(err);
        return TPM_ERR_NO_MEMORY;
    }
    status = api_dump(out, json_p, n_p);
    if (status != TPM_OK) {
        api_oom(err);
    }
    return status;
}

/* ---- text helpers ------------------------------------------------------------------------ */

/*
 * Length of the well-formed UTF-8 sequence at s[0..n) (Unicode table 3-7: no overlong forms,
 * no surrogates, nothing above U+10FFFF), or 0 if it is ill-formed. *incomplete_p is set
 * when the bytes so far are a valid start that the end of the buffer cut short.
 */
static size_t utf8_seq(const unsigned char *s, size_t n, int *incomplete_p)
{
    unsigned c = s[0], lo = 0x80, hi = 0xBF;
    size_t   len;

    *incomplete_p = 0;
    if (c < 0x80) {
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c == 0xE0) {
        len = 3;
        lo  = 0xA0;
    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
        len = 3;
    } else if (c == 0xED) {
        len = 3;
        hi  = 0x9F;
    } else if (c == 0xF0) {
        len = 4;
        lo  = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3) {
        len = 4;
    } else if (c == 0xF4) {
        len = 4;
        hi  = 0x8F;
    } else {
        return 0;
    }
    for (size_t k = 1; k < len; k++) {
        unsigned b;

        if (k >= n) {
            *incomplete_p = 1;
            return 0;
        }
        b = s[k];
        if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) {
            return 0;
        }
    }
    return len;
}

size_t tpm_api_utf8_complete_len(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t               i = 0;

    while (i < n) {
        int    incomplete;
        size_t len = utf8_seq(u + i, n - i, &incomplete);

        if (incomplete) {
            return i;
        }
        i += len > 0 ? len : 1;
    }
    return n;
}

tpm_status_t tpm_api_utf8_repair(const char *s, size_t n, char **out_p, size_t *n_out_p)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t               cap, o = 0;
    char                *out;

    /* worst case: every byte becomes the 3-byte U+FFFD */
    if (n > (SIZE_MAX - 1) / 3) {
        return TPM_ERR_OVERFLOW;
    }
    cap = 3 * n + 1;
    out = malloc(cap);
    if (out == NULL) {
        return TPM_ERR_NO_MEMORY;
    }
    for (size_t i = 0; i < n;) {
        int    incomplete;
        size_t len = utf8_seq(u + i, n - i, &incomplete);

        if (len > 0) {
            memcpy(out + o, u + i, len);
            o += len;
            i += len;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o]   = '\0';
    *out_p   = out;
    *n_out_p = o;
    return TPM_OK;
}

size_t tpm_api_stop_scan(const char *text, size_t n, char *const *stop, size_t from, size_t *safe_p)
{
    size_t best = SIZE_MAX, hold = 0;

    for (int k = 0; k < TPM_SERVE_MAX_STOP && stop[k] != NULL; k++) {
        size_t len = strlen(stop[k]);

        if (len == 0) {
            continue;
        }
        if (from < n && n - from >= len) {
            const char *hit = memmem(text + from, n - from, stop[k], len);

            if (hit != NULL && (size_t)(hit - text) < best) {
                best = (size_t)(hit - text);
            }
        }
        for (size_t j = (len - 1 < n ? len - 1 : n); j > hold; j--) {
            if (memcmp(text + n - j, stop[k], j) == 0) {
                hold = j;
                break;
            }
        }
    }
    if (safe_p != NULL) {
        *safe_p = best != SIZE_MAX ? best : n - hold;
    }
    return best;
}

/* ---- /metrics ---------------------------------------------------------------------------- */

static const double ttft_bounds[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25, 0.5,
                                     0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
static const double itl_bounds[]  = {0.001, 0.0025, 0.005, 0.01,  0.015, 0.02, 0.025,
                                     0.03,  0.04,   0.05,  0.075, 0.1,   0.15, 0.2,
                                     0.3,   0.4,    0.5,   0.75,  1.0,   2.5};
static const double e2e_bounds[]  = {0.01, 0.025, 0.05, 0.1,  0.25, 0.5,  1.0,   2.5,   5.0,  10.0,
                                     15.0, 20.0,  30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0};
static const int    metric_codes[TPM_API_N_CODES - 1] = {200, 400, 401, 404, 405, 408,
                                                         413, 429, 499, 500, 503};

#define N_OF(_a) ((int)(sizeof(_a) / sizeof((_a)[0])))

void tpm_api_metrics_init(tpm_api_metrics_t *m)
{
    memset(m, 0, sizeof(*m));
    m->ttft.bounds   = ttft_bounds;
    m->ttft.n_bounds = N_OF(ttft_bounds);
    m->itl.bounds    = itl_bounds;
    m->itl.n_bounds  = N_OF(itl_bounds);
    m->e2e.bounds    = e2e_bounds;
    m->e2e.n_bounds  = N_OF(e2e_bounds);
}

void tpm_api_hist_observe(tpm_api_hist_t *hist, double v)
{
    int b = 0;

    if (!isfinite(v)) {
        return;
    }
    while (b < hist->n_bounds && v > hist->bounds[b]) {
        b++;
    }
    hist->counts[b]++;
    hist->count++;
    hist->sum += v;
}

void tpm_api_metrics_count(tpm_api_metrics_t *m, int http_status)
{
    for (int i = 0; i < TPM_API_N_CODES - 1; i++) {
        if (metric_codes[i] == http_status) {
            m->http_requests[i]++;
            return;
        }
    }
    m->http_requests[TPM_API_N_CODES - 1]++;
}

/* a growable text buffer for the exposition format */
typedef struct {
    char  *s;
    size_t n, cap;
    int    failed;
} api_text_t;

static void api_text_printf(api_text_t *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void api_text_printf(api_text_t *t, const char *fmt, ...)
{
    va_list ap;
    int     need;

    if (t->failed) {
        return;
    }
    for (;;) {
        va_start(ap, fmt);
        need = vsnprintf(t->s + t->n, t->cap - t->n, fmt, ap);
        va_end(ap);
        if (need < 0) {
            t->failed = 1;
            return;
        }
        if ((size_t)need < t->cap - t->n) {
            t->n += (size_t)need;
            return;
        }
        {
            size_t cap = 2 * t->cap + (size_t)need + 1;
            char  *s   = realloc(t->s, cap);

            if (s == NULL) {
                t->failed = 1;
                return;
            }
            t->s   = s;
            t->cap = cap;
        }
    }
}

static void api_text_head(api_text_t *t, const char *name, const char *type, const char *help)
{
    api_text_printf(t, "# HELP tpmpi:%s %s\n# TYPE tpmpi:%s %s\n", name, help, name, type);
}

static void api_text_hist(api_text_t *t, const char *name, const char *help,
                          const tpm_api_hist_t *h)
{
    uint64_t cum = 0;

    api_text_head(t, name, "histogram", help);
    for (int b = 0; b < h->n_bounds; b++) {
        cum += h->counts[b];
        api_text_printf(t, "tpmpi:%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[b],
                        (unsigned long long)cum);
    }
    api_text_printf(t, "tpmpi:%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)h->count);
    api_text_printf(t, "tpmpi:%s_sum %.9g\ntpmpi:%s_count %llu\n", name, h->sum, name,
                    (unsigned long long)h->count);
}

tpm_status_t tpm_api_metrics_text(const tpm_api_metrics_t *m, const tpm_api_gauges_t *g,
                                  char **text_p, size_t *n_p)
{
    static const char *reasons[4] = {"length", "stop", "cancelled", "error"};
    api_text_t         t          = {NULL, 0, 0, 0};

    t.cap = 8192;
    t.s   = malloc(t.cap);
    if (t.s == NULL) {
        return TPM_ERR_NO_MEMORY;
    }
    t.s[0] = '\0';
    api_text_head(&t, "http_requests_total", "counter", "HTTP requests answered, by status code.");
    for (int i = 0; i < TPM_API_N_CODES; i++) {
        if (i < TPM_API_N_CODES - 1) {
            api_text_printf(&t, "tpmpi:http_requests_total{code=\"%d\"} %llu\n", metric_codes[i],
                            (unsigned long long)m->http_requests[i]);
        } else {
            api_text_printf(&t, "tpmpi:http_requests_total{code=\"other\"} %llu\n",
                            (unsigned long long)m->http_requests[i]);
        }
    }
    api_text_head(&t, "request_finished_total", "counter",
                  "Completion requests finished, by finish reason.");
    for (int i = 0; i < 4; i++) {
        api_text_printf(&t, "tpmpi:request_finished_total{finished_reason=\"%s\"} %llu\n",
                        reasons[i], (unsigned long long)m->finished[i]);
    }
    api_text_head(&t, "prompt_tokens_total", "counter", "Prompt tokens processed by the engine.");
    api_text_printf(&t, "tpmpi:prompt_tokens_total %llu\n", (unsigned long long)g->prompt_tokens);
    api_text_head(&t, "generation_tokens_total", "counter", "Tokens generated by the engine.");
    api_text_printf(&t, "tpmpi:generation_tokens_total %llu\n",
                    (unsigned long long)g->generated_tokens);
    api_text_head(&t, "num_requests_running", "gauge", "Sequences in the running batch.");
    api_text_printf(&t, "tpmpi:num_requests_running %d\n", g->running);
    api_text_head(&t, "num_requests_waiting", "gauge", "Requests waiting in the queue.");
    api_text_printf(&t, "tpmpi:num_requests_waiting %d\n", g->waiting);
    api_text_head(&t, "num_slots", "gauge", "Sequence slots (--parallel).");
    api_text_printf(&t, "tpmpi:num_slots %d\n", g->slots);
    api_text_head(&t, "ready", "gauge", "1 when the weights are loaded and requests are served.");
    api_text_printf(&t, "tpmpi:ready %d\n", g->ready ? 1 : 0);
    if (g->trainserve) {
        api_text_head(&t, "weights_step", "gauge",
                      "Optimizer step of the weights served (-1: none pushed yet).");
        api_text_printf(&t, "tpmpi:weights_step %lld\n", (long long)g->weights_step);
        api_text_head(&t, "weight_pushes_total", "counter",
                      "Weight pushes from the training group swapped in.");
        api_text_printf(&t, "tpmpi:weight_pushes_total %llu\n", (unsigned long long)g->pushes);
        api_text_head(&t, "weight_push_bytes_total", "counter",
                      "Weight bytes received by serving rank 0 in swapped-in pushes.");
        api_text_printf(&t, "tpmpi:weight_push_bytes_total %llu\n",
                        (unsigned long long)g->push_bytes);
        api_text_head(&t, "weight_push_latency_seconds", "histogram",
                      "Time from a push's header reaching serving rank 0 to the swap.");
        for (int b = 0; b < g->n_push_buckets && b < TPM_SERVE_PUSH_BUCKETS; b++) {
            if (isfinite(g->push_bounds[b])) { /* the +Inf bucket is the count, below */
                api_text_printf(&t, "tpmpi:weight_push_latency_seconds_bucket{le=\"%g\"} %llu\n",
                                g->push_bounds[b], (unsigned long long)g->push_le[b]);
            }
        }
        api_text_printf(&t, "tpmpi:weight_push_latency_seconds_bucket{le=\"+Inf\"} %llu\n",
                        (unsigned long long)g->pushes);
        api_text_printf(&t, "tpmpi:weight_push_latency_seconds_sum %.9g\n", g->push_seconds);
        api_text_printf(&t, "tpmpi:weight_push_latency_seconds_count %llu\n",
                        (unsigned long long)g->pushes);
        api_text_head(&t, "seconds_since_last_swap", "gauge",
                      "Seconds since the last weight swap (-1: none yet).");
        api_text_printf(&t, "tpmpi:seconds_since_last_swap %.3f\n", g->since_swap);
    }
    api_text_hist(&t, "time_to_first_token_seconds",
                  "Time from request arrival to the first generated token.", &m->ttft);
    api_text_hist(&t, "inter_token_latency_seconds",
                  "Time between two consecutive tokens of a request.", &m->itl);
    api_text_hist(&t, "e2e_request_latency_seconds", "Time from request arrival to the last token.",
                  &m->e2e);
    if (t.failed) {
        free(t.s);
        return TPM_ERR_NO_MEMORY;
    }
    *text_p = t.s;
    *n_p    = t.n;
    return TPM_OK;
}
