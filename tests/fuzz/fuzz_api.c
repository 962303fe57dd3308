/* SPDX-License-Identifier: MIT */
/*
 * fuzz_api.c: libFuzzer target over the HTTP front-end's request path (serve/api.c): the
 * first byte picks an endpoint (completion parse, tokenize, detokenize, text helpers), the
 * rest is the untrusted body. Besides the sanitizers' checks it asserts the contract the
 * engine relies on for every accepted request (prompt ids inside the vocabulary, prompt +
 * max_tokens inside the context, sane sampling values, stop strings within limits) and that
 * every answer, including errors, is JSON that parses. Built and run by tests/fuzz_api.sh
 * with clang -fsanitize=fuzzer,address,undefined; see tests/fuzz/README.md.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "serve/api.h"

#define FUZZ_N_CTX      64
#define FUZZ_MAX_TOKENS 32

static tpm_tokenizer_t *fuzz_tok;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(_cond)                                                                          \
    do {                                                                                           \
        if (!(_cond)) {                                                                            \
            fprintf(stderr, "fuzz_api: check failed: %s (line %d)\n", #_cond, __LINE__);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char *docs[]  = {"The quick brown fox jumps over the lazy dog. ",
                                  "{\"prompt\": \"Hello world\", \"max_tokens\": 16}"};
    size_t             lens[2] = {strlen(docs[0]), strlen(docs[1])};

    (void)argc;
    (void)argv;
    tpm_log_set_level(TPM_LOG_ERROR);
    if (tpm_tokenizer_train(docs, lens, 2, 320, &fuzz_tok) != TPM_OK) {
        abort();
    }
    return 0;
}

/* the text must be one JSON document that jansson parses back */
static void fuzz_check_json(char *json, size_t n)
{
    json_error_t jerr;
    json_t      *root;

    FUZZ_CHECK(json != NULL && strlen(json) == n);
    root = json_loadb(json, n, JSON_ALLOW_NUL, &jerr);
    FUZZ_CHECK(root != NULL);
    json_decref(root);
    free(json);
}

static void fuzz_check_error(const tpm_api_error_t *err)
{
    char  *json = NULL;
    size_t n    = 0;

    FUZZ_CHECK(err->http_status == 400 || err->http_status == 404 || err->http_status == 500);
    FUZZ_CHECK(err->message[0] != '\0' && err->type != NULL);
    FUZZ_CHECK(tpm_api_error_json(err, &json, &n) == TPM_OK);
    fuzz_check_json(json, n);
}

static void fuzz_completion(const char *body, size_t n)
{
    const tpm_api_limits_t lim = {.model      = "m",
                                  .n_ctx      = FUZZ_N_CTX,
                                  .vocab      = tpm_tokenizer_vocab_size(fuzz_tok),
                                  .max_tokens = FUZZ_MAX_TOKENS};
    tpm_api_completion_t   c;
    tpm_api_error_t        err;
    tpm_serve_job_t       *job;
    tpm_api_result_t       r;
    char                  *text = NULL, *json = NULL;
    size_t                 n_text = 0, n_json = 0, safe = 0, at;
    tpm_api_fanout_t       f;

    /* several completions: every candidate body is a request of its own */
    if (tpm_api_fanout(body, n, 0, &f, &err) != TPM_OK) {
        fuzz_check_error(&err);
    } else {
        FUZZ_CHECK(f.n_sub == 0 || (f.n_sub == f.n_prompts * f.best_of && f.n >= 1 &&
                                    f.n <= f.best_of && f.n_sub <= TPM_API_MAX_CHOICES));
        for (int k = 0; k < f.n_sub; k++) {
            if (tpm_api_completion_parse(f.bodies[k], f.lens[k], &lim, fuzz_tok, 1, &c, &err) ==
                TPM_OK) {
                tpm_api_job_free(c.job);
            } else {
                fuzz_check_error(&err);
            }
        }
        tpm_api_fanout_free(&f);
    }
    if (tpm_api_completion_parse(body, n, &lim, fuzz_tok, 1, &c, &err) != TPM_OK) {
        fuzz_check_error(&err);
        return;
    }
    job = c.job;
    FUZZ_CHECK(job->n_prompt >= 1 && job->n_prompt <= lim.n_ctx);
    FUZZ_CHECK(job->max_tokens >= 1 && job->max_tokens <= lim.max_tokens);
    FUZZ_CHECK(job->n_prompt + job->max_tokens <= lim.n_ctx + 1); /* the context rule */
    for (int i = 0; i < job->n_prompt; i++) {
        FUZZ_CHECK(job->prompt[i] >= 0 && job->prompt[i] < lim.vocab);
    }
    FUZZ_CHECK(job->temperature >= 0.0f && job->temperature <= 2.0f);
    FUZZ_CHECK(job->top_p > 0.0f && job->top_p <= 1.0f);
    FUZZ_CHECK(job->top_k >= 0 && job->top_k < lim.vocab);
    for (int k = 0; k < TPM_SERVE_MAX_STOP && job->stop[k] != NULL; k++) {
        size_t len = strlen(job->stop[k]);

        FUZZ_CHECK(len >= 1 && len <= TPM_API_MAX_STOP_BYTES);
    }
    FUZZ_CHECK(c.include_usage == 0 || c.stream == 1);

    /* answer with the prompt's own bytes as the "generated" text: arbitrary bytes */
    (void)tpm_tokenizer_decode(fuzz_tok, job->prompt, (size_t)job->n_prompt, NULL, 0, &n_text);
    text = malloc(n_text + 1);
    FUZZ_CHECK(text != NULL);
    FUZZ_CHECK(tpm_tokenizer_decode(fuzz_tok, job->prompt, (size_t)job->n_prompt, text, n_text,
                                    &n_text) == TPM_OK);
    at = tpm_api_stop_scan(text, n_text, job->stop, 0, &safe);
    FUZZ_CHECK(safe <= n_text);
    if (at != SIZE_MAX) {
        FUZZ_CHECK(at == safe && at < n_text);
    }
    FUZZ_CHECK(tpm_api_utf8_complete_len(text, safe) <= safe);
    memset(&r, 0, sizeof(r));
    r.id                = "cmpl-x";
    r.model             = "m";
    r.text              = text;
    r.text_len          = at != SIZE_MAX ? at : n_text;
    r.finish_reason     = "stop";
    r.prompt_tokens     = job->n_prompt;
    r.completion_tokens = job->max_tokens;
    r.predicted_ms      = 1.0;
    for (int kind = TPM_API_JSON_FULL; kind <= TPM_API_JSON_USAGE; kind++) {
        FUZZ_CHECK(tpm_api_completion_json(&r, (tpm_api_json_kind_t)kind, &json, &n_json) ==
                   TPM_OK);
        fuzz_check_json(json, n_json);
    }
    free(text);
    tpm_api_job_free(job);
}

static void fuzz_tokens(const char *body, size_t n, int detok)
{
    tpm_api_error_t err;
    char           *json   = NULL;
    size_t          n_json = 0;
    tpm_status_t    status;

    status = detok ? tpm_api_detokenize(body, n, fuzz_tok, &json, &n_json, &err)
                   : tpm_api_tokenize(body, n, fuzz_tok, &json, &n_json, &err);
    if (status != TPM_OK) {
        fuzz_check_error(&err);
        return;
    }
    fuzz_check_json(json, n_json);
}

static void fuzz_text(const char *s, size_t n)
{
    char   *out   = NULL;
    size_t  n_out = 0, k = tpm_api_utf8_complete_len(s, n);
    json_t *j;

    FUZZ_CHECK(k <= n && n - k <= 3);
    FUZZ_CHECK(tpm_api_utf8_repair(s, n, &out, &n_out) == TPM_OK);
    FUZZ_CHECK(n_out >= n && n_out <= 3 * n);
    j = json_stringn(out, n_out); /* jansson rejects invalid UTF-8: the repair must satisfy it */
    FUZZ_CHECK(j != NULL);
    json_decref(j);
    free(out);
}

/* chat and embeddings requests: refused in OpenAI's shape, or a job within the limits */
static void fuzz_chat_embeddings(const char *body, size_t n)
{
    const tpm_api_limits_t lim = {.model         = "m",
                                  .n_ctx         = FUZZ_N_CTX,
                                  .vocab         = tpm_tokenizer_vocab_size(fuzz_tok),
                                  .max_tokens    = FUZZ_MAX_TOKENS,
                                  .chat_template = (tpm_chat_template_t)(n % 2)};
    tpm_api_completion_t   c;
    tpm_api_error_t        err;
    tpm_serve_job_t       *job = NULL;

    if (tpm_api_chat_parse(body, n, &lim, fuzz_tok, 1, &c, &err) != TPM_OK) {
        fuzz_check_error(&err);
    } else {
        job = c.job;
        FUZZ_CHECK(c.chat == 1 && job->n_prompt >= 1 && job->n_prompt <= lim.n_ctx);
        FUZZ_CHECK(job->n_prompt + job->max_tokens <= lim.n_ctx + 1);
        FUZZ_CHECK(job->top_logprobs >= 0 && job->top_logprobs <= 20);
        FUZZ_CHECK(job->n_bias >= 0 && job->n_bias <= TPM_API_MAX_LOGIT_BIAS);
        for (int i = 0; i < job->n_bias; i++) {
            FUZZ_CHECK(job->bias_ids[i] >= 0 && job->bias_ids[i] < lim.vocab);
        }
        tpm_api_job_free(job);
    }
    if (tpm_api_embeddings_parse(body, n, &lim, fuzz_tok, &job, &err) != TPM_OK) {
        fuzz_check_error(&err);
    } else {
        FUZZ_CHECK(job->embed == 1 && job->n_prompt >= 1 && job->n_prompt <= lim.n_ctx);
        tpm_api_job_free(job);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body;
    size_t      n;

    if (size == 0) {
        return 0;
    }
    body = (const char *)data + 1;
    n    = size - 1;
    switch (data[0] % 6) {
    case 0:
    case 1: fuzz_completion(body, n); break;
    case 5: fuzz_chat_embeddings(body, n); break;
    case 2: fuzz_tokens(body, n, 0); break;
    case 3: fuzz_tokens(body, n, 1); break;
    default: fuzz_text(body, n); break;
    }
    return 0;
}
