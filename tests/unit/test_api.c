/* SPDX-License-Identifier: MIT */
/*
 * test_api.c: the pure parts of the HTTP front-end (serve/api.c): completion requests to
 * jobs (prompt forms, defaults, limits, unsupported parameters, bad JSON), error and
 * response JSON, tokenize/detokenize, UTF-8 repair and completion, stop-string scanning,
 * and the Prometheus text of /metrics.
 */
#include <criterion/criterion.h>
#include <math.h>

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "serve/api.h"
#include "serve/http_gate.h"

static tpm_tokenizer_t *tok;

static void setup(void)
{
    static const char *docs[]  = {"The quick brown fox jumps over the lazy dog. ",
                                  "Hello world, hello there. "};
    size_t             lens[2] = {strlen(docs[0]), strlen(docs[1])};

    cr_assert_eq(tpm_tokenizer_train(docs, lens, 2, 300, &tok), TPM_OK);
}

static void teardown(void)
{
    tpm_tokenizer_destroy(tok);
    tok = NULL;
}

TestSuite(api, .init = setup, .fini = teardown, .timeout = 30);

static const tpm_api_limits_t lim = {.model = "m", .n_ctx = 32, .vocab = 300, .max_tokens = 20};

/* parse @p body; on success returns the job (caller frees), else NULL with *err filled */
static tpm_serve_job_t *parse(const char *body, tpm_api_completion_t *c, tpm_api_error_t *err)
{
    tpm_status_t status = tpm_api_completion_parse(body, strlen(body), &lim, tok, 77, c, err);

    return status == TPM_OK ? c->job : NULL;
}

/* the request must be refused with @p status and @p param ("" = null) */
static void expect_bad(const char *body, int status, const char *param)
{
    tpm_api_completion_t c;
    tpm_api_error_t      err;
    tpm_serve_job_t     *job = parse(body, &c, &err);

    cr_assert_null(job, "accepted: %s", body);
    cr_assert_eq(err.http_status, status, "%s: status %d, want %d (%s)", body, err.http_status,
                 status, err.message);
    cr_assert_str_eq(err.param, param, "%s: param '%s', want '%s'", body, err.param, param);
    cr_assert_gt(strlen(err.message), 0);
}

Test(api, a_string_prompt_is_encoded_and_defaults_apply)
{
    tpm_api_completion_t c;
    tpm_api_error_t      err;
    tpm_serve_job_t     *job = parse("{\"prompt\":\"Hello world\"}", &c, &err);
    int32_t              ids[64];
    size_t               n;

    cr_assert_not_null(job, "%s", err.message);
    cr_assert_eq(tpm_tokenizer_encode(tok, "Hello world", 11, ids, 64, &n), TPM_OK);
    cr_assert_eq(job->n_prompt, (int)n);
    cr_assert_arr_eq(job->prompt, ids, n * sizeof(int32_t));
    cr_assert_eq(job->max_tokens, TPM_API_DEFAULT_MAX_TOKENS);
    cr_assert_float_eq(job->temperature, 1.0f, 1e-6);
    cr_assert_float_eq(job->top_p, 1.0f, 1e-6);
    cr_assert_eq(job->top_k, 0);
    cr_assert_eq(job->seed, 77u);
    cr_assert_null(job->stop[0]);
    cr_assert_eq(c.stream, 0);
    cr_assert_null(job->on_token);
    tpm_api_job_free(job);
}

Test(api, token_list_prompts_in_every_form_are_accepted)
{
    const char *bodies[] = {"{\"prompt\":[1,2,299]}", "{\"prompt\":[[1,2,299]]}"};

    for (size_t i = 0; i < 2; i++) {
        tpm_api_completion_t c;
        tpm_api_error_t      err;
        tpm_serve_job_t     *job = parse(bodies[i], &c, &err);

        cr_assert_not_null(job, "%s: %s", bodies[i], err.message);
        cr_assert_eq(job->n_prompt, 3);
        cr_assert_eq(job->prompt[2], 299);
        tpm_api_job_free(job);
    }
}

Test(api, an_empty_prompt_becomes_the_end_of_text_token)
{
    tpm_api_completion_t c;
    tpm_api_error_t      err;
    tpm_serve_job_t     *job = parse("{\"prompt\":[\"\"]}", &c, &err);

    cr_assert_not_null(job, "%s", err.message);
    cr_assert_eq(job->n_prompt, 1);
    cr_assert_eq(job->prompt[0], tpm_tokenizer_eot(tok));
    tpm_api_job_free(job);
}

Test(api, sampling_parameters_and_stop_strings_reach_the_job)
{
    tpm_api_completion_t c;
    tpm_api_error_t      err;
    tpm_serve_job_t     *job =
        parse("{\"model\":\"m\",\"prompt\":\"x\",\"max_tokens\":5,\"temperature\":0,\"top_p\":0.5,"
              "\"top_k\":40,\"seed\":-1,\"stop\":[\"a\",\"bc\"],\"stream\":true,"
              "\"stream_options\":{\"include_usage\":true},\"n\":1,\"echo\":false,"
              "\"logprobs\":null,\"user\":\"u\",\"presence_penalty\":0}",
              &c, &err);

    cr_assert_not_null(job, "%s", err.message);
    cr_assert_eq(job->max_tokens, 5);
    cr_assert_float_eq(job->temperature, 0.0f, 1e-9);
    cr_assert_float_eq(job->top_p, 0.5f, 1e-6);
    cr_assert_eq(job->top_k, 40);
    cr_assert_eq(job->seed, UINT64_MAX);
    cr_assert_str_eq(job->stop[0], "a");
    cr_assert_str_eq(job->stop[1], "bc");
    cr_assert_null(job->stop[2]);
    cr_assert_eq(c.stream, 1);
    cr_assert_eq(c.include_usage, 1);
    tpm_api_job_free(job);
}

/* a body {"max_tokens": MT (when >= 0), "prompt": [5, 5, ... n times]} */
static void ids_body(char *body, int n, int mt)
{
    body[0] = '\0';
    if (mt >= 0) {
        sprintf(body, "{\"max_tokens\":%d,\"prompt\":[", mt);
    } else {
        strcpy(body, "{\"prompt\":[");
    }
    for (int i = 0; i < n; i++) {
        strcat(body, i ? ",5" : "5");
    }
    strcat(body, "]}");
}

Test(api, the_default_max_tokens_shrinks_to_the_room_left_in_the_context)
{
    tpm_api_completion_t c;
    tpm_api_error_t      err;
    char                 body[512];
    tpm_serve_job_t     *job;

    /* 28 prompt tokens in a 32-token context: room for 32 - 28 + 1 = 5 */
    ids_body(body, 28, -1);
    job = parse(body, &c, &err);
    cr_assert_not_null(job, "%s", err.message);
    cr_assert_eq(job->max_tokens, 5);
    tpm_api_job_free(job);
}

Test(api, requests_over_the_limits_are_refused_with_400)
{
    char body[512];

    expect_bad("{\"prompt\":\"x\",\"max_tokens\":21}", 400, "max_tokens");
    expect_bad("{\"prompt\":\"x\",\"max_tokens\":0}", 400, "max_tokens");
    expect_bad("{\"prompt\":\"x\",\"max_tokens\":-3}", 400, "max_tokens");
    expect_bad("{\"prompt\":\"x\",\"max_tokens\":1e3}", 400, "max_tokens");
    expect_bad("{\"prompt\":[300]}", 400, "prompt");
    expect_bad("{\"prompt\":[-1]}", 400, "prompt");
    expect_bad("{\"prompt\":[1, 2.5]}", 400, "prompt");
    /* 30 tokens + max_tokens 4 > 32 + 1 */
    ids_body(body, 30, 4);
    expect_bad(body, 400, "prompt");
    /* 33 tokens: more than the context at all */
    ids_body(body, 33, -1);
    expect_bad(body, 400, "prompt");
}

Test(api, max_tokens_out_of_range_names_the_real_range)
{
    tpm_api_completion_t c;
    tpm_api_error_t      err;

    cr_assert_null(parse("{\"prompt\":\"x\",\"max_tokens\":1000000000000}", &c, &err));
    cr_assert_str_eq(err.param, "max_tokens");
    cr_assert_not_null(strstr(err.message, "from 1 to 20"), "%s", err.message);
    cr_assert_not_null(strstr(err.message, "1000000000000"), "%s", err.message);
    cr_assert_null(strstr(err.message, "2147483647"), "%s", err.message);
    cr_assert_null(parse("{\"prompt\":\"x\",\"max_tokens\":-2147483649}", &c, &err));
    cr_assert_not_null(strstr(err.message, "from 1 to 20"), "%s", err.message);
}

/* the boundary: p + max_tokens <= n_ctx + 1, and the message says the same numbers */
Test(api, the_context_boundary_is_n_ctx_minus_prompt_plus_one)
{
    tpm_api_completion_t c;
    tpm_api_error_t      err;
    char                 body[512];
    tpm_serve_job_t     *job;

    /* 30 + 3 = 33 = n_ctx + 1: accepted */
    ids_body(body, 30, 3);
    job = parse(body, &c, &err);
    cr_assert_not_null(job, "%s", err.message);
    cr_assert_eq(job->max_tokens, 3);
    tpm_api_job_free(job);
    /* a prompt that fills the context still gets one token, also by default */
    ids_body(body, 32, 1);
    job = parse(body, &c, &err);
    cr_assert_not_null(job, "%s", err.message);
    tpm_api_job_free(job);
    ids_body(body, 32, -1);
    job = parse(body, &c, &err);
    cr_assert_not_null(job, "%s", err.message);
    cr_assert_eq(job->max_tokens, 1);
    tpm_api_job_free(job);
    /* one more is refused, with the numbers of the rule */
    ids_body(body, 32, 2);
    cr_assert_null(parse(body, &c, &err));
    cr_assert_str_eq(err.code, "context_length_exceeded");
    cr_assert_not_null(strstr(err.message, "context is 32 tokens"), "%s", err.message);
    cr_assert_not_null(strstr(err.message, "prompt of 32 tokens"), "%s", err.message);
    cr_assert_not_null(strstr(err.message, "at most 1 new tokens"), "%s", err.message);
    cr_assert_not_null(strstr(err.message, "max_tokens 2"), "%s", err.message);
    ids_body(body, 30, 4);
    cr_assert_null(parse(body, &c, &err));
    cr_assert_not_null(strstr(err.message, "at most 3 new tokens"), "%s", err.message);
    /* a prompt longer than the context */
    ids_body(body, 33, 1);
    cr_assert_null(parse(body, &c, &err));
    cr_assert_str_eq(err.code, "context_length_exceeded");
    cr_assert_not_null(strstr(err.message, "33 tokens"), "%s", err.message);
    cr_assert_not_null(strstr(err.message, "context of 32 tokens"), "%s", err.message);
}

Test(api, unsupported_and_malformed_parameters_are_refused)
{
    expect_bad("", 400, "");
    expect_bad("{", 400, "");
    expect_bad("[]", 400, "");
    expect_bad("\"prompt\"", 400, "");
    expect_bad("{\"prompt\":\"x\"} trailing", 400, "");
    expect_bad("{\"prompt\":\"x\",\"prompt\":\"y\"}", 400, "");
    expect_bad("{}", 400, "prompt");
    expect_bad("{\"prompt\":null}", 400, "prompt");
    expect_bad("{\"prompt\":{}}", 400, "prompt");
    expect_bad("{\"prompt\":[]}", 400, "prompt");
    expect_bad("{\"prompt\":[\"a\",\"b\"]}", 400, "prompt");
    expect_bad("{\"prompt\":[[1],[2]]}", 400, "prompt");
    expect_bad("{\"prompt\":[[\"a\"]]}", 400, "prompt");
    expect_bad("{\"prompt\":[{}]}", 400, "prompt");
    expect_bad("{\"prompt\":\"x\",\"n\":2}", 400, "n");
    expect_bad("{\"prompt\":\"x\",\"n\":\"1\"}", 400, "n");
    expect_bad("{\"prompt\":\"x\",\"best_of\":2}", 400, "best_of");
    expect_bad("{\"prompt\":\"x\",\"echo\":true,\"stream\":true}", 400, "echo");
    expect_bad("{\"prompt\":\"x\",\"echo\":1}", 400, "echo");
    expect_bad("{\"prompt\":\"x\",\"logprobs\":21}", 400, "logprobs");
    expect_bad("{\"prompt\":\"x\",\"logprobs\":-1}", 400, "logprobs");
    expect_bad("{\"prompt\":\"x\",\"logprobs\":true}", 400, "logprobs");
    expect_bad("{\"prompt\":\"x\",\"logprobs\":2,\"stream\":true}", 400, "logprobs");
    expect_bad("{\"prompt\":\"x\",\"suffix\":\"s\"}", 400, "suffix");
    expect_bad("{\"prompt\":\"x\",\"frequency_penalty\":2.5}", 400, "frequency_penalty");
    expect_bad("{\"prompt\":\"x\",\"presence_penalty\":\"1\"}", 400, "presence_penalty");
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":{\"abc\":5}}", 400, "logit_bias");
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":{\"-1\":5}}", 400, "logit_bias");
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":{\"300\":5}}", 400, "logit_bias");
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":{\"1\":101}}", 400, "logit_bias");
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":{\"1\":\"5\"}}", 400, "logit_bias");
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":[1]}", 400, "logit_bias");
    expect_bad("{\"prompt\":\"x\",\"temperature\":2.5}", 400, "temperature");
    expect_bad("{\"prompt\":\"x\",\"temperature\":\"hot\"}", 400, "temperature");
    expect_bad("{\"prompt\":\"x\",\"top_p\":0}", 400, "top_p");
    expect_bad("{\"prompt\":\"x\",\"top_p\":1.5}", 400, "top_p");
    expect_bad("{\"prompt\":\"x\",\"top_k\":-2}", 400, "top_k");
    expect_bad("{\"prompt\":\"x\",\"seed\":1.5}", 400, "seed");
    expect_bad("{\"prompt\":\"x\",\"stop\":5}", 400, "stop");
    expect_bad("{\"prompt\":\"x\",\"stop\":[\"\"]}", 400, "stop");
    expect_bad("{\"prompt\":\"x\",\"stop\":[\"a\",1]}", 400, "stop");
    expect_bad("{\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 400, "stop");
    expect_bad("{\"prompt\":\"x\",\"stop\":\"a\\u0000b\"}", 400, "stop");
    expect_bad("{\"prompt\":\"x\",\"stream\":1}", 400, "stream");
    expect_bad("{\"prompt\":\"x\",\"stream_options\":[]}", 400, "stream_options");
    expect_bad("{\"prompt\":\"x\",\"model\":3}", 400, "model");
    expect_bad("{\"prompt\":\"x\",\"model\":\"other\"}", 404, "model");
}

Test(api, a_too_long_stop_string_is_refused)
{
    char body[1024];

    strcpy(body, "{\"prompt\":\"x\",\"stop\":\"");
    memset(body + strlen(body), 'a', TPM_API_MAX_STOP_BYTES + 1);
    body[22 + TPM_API_MAX_STOP_BYTES + 1] = '\0';
    strcat(body, "\"}");
    expect_bad(body, 400, "stop");
}

Test(api, the_error_json_has_openai_shape)
{
    tpm_api_error_t err;
    char           *json;
    size_t          n;
    json_t         *root, *e;

    tpm_api_error_set(&err, 400, "invalid_request_error", NULL, "max_tokens", "bad %d\xff", 3);
    cr_assert_eq(tpm_api_error_json(&err, &json, &n), TPM_OK);
    cr_assert_eq(strlen(json), n);
    root = json_loads(json, 0, NULL);
    cr_assert_not_null(root, "%s", json);
    e = json_object_get(root, "error");
    cr_assert_eq(json_object_size(root), 1);
    cr_assert_eq(json_object_size(e), 4);
    cr_assert_str_eq(json_string_value(json_object_get(e, "message")), "bad 3\xEF\xBF\xBD");
    cr_assert_str_eq(json_string_value(json_object_get(e, "type")), "invalid_request_error");
    cr_assert_str_eq(json_string_value(json_object_get(e, "param")), "max_tokens");
    cr_assert(json_is_null(json_object_get(e, "code")));
    json_decref(root);
    free(json);
}

Test(api, completion_json_kinds_carry_the_right_fields)
{
    tpm_api_result_t r = {.id                = "cmpl-1",
                          .model             = "m",
                          .created           = 5,
                          .text              = "hi\xE2\x82",
                          .text_len          = 4,
                          .finish_reason     = "length",
                          .prompt_tokens     = 3,
                          .completion_tokens = 4,
                          .ttft_ms           = 1.5,
                          .prompt_ms         = 1.0,
                          .predicted_ms      = 30.0};
    char            *json;
    json_t          *root, *c;

    cr_assert_eq(tpm_api_completion_json(&r, TPM_API_JSON_FULL, &json, NULL), TPM_OK);
    root = json_loads(json, 0, NULL);
    cr_assert_not_null(root);
    c = json_array_get(json_object_get(root, "choices"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(root, "object")), "text_completion");
    cr_assert_str_eq(json_string_value(json_object_get(c, "text")), "hi\xEF\xBF\xBD\xEF\xBF\xBD");
    cr_assert_str_eq(json_string_value(json_object_get(c, "finish_reason")), "length");
    cr_assert_eq(
        json_integer_value(json_object_get(json_object_get(root, "usage"), "total_tokens")), 7);
    cr_assert_float_eq(json_number_value(json_object_get(json_object_get(root, "timings"),
                                                         "predicted_per_second")),
                       100.0, 1e-9); /* 3 decode tokens in 30 ms */
    json_decref(root);
    free(json);

    r.finish_reason = NULL;
    cr_assert_eq(tpm_api_completion_json(&r, TPM_API_JSON_CHUNK, &json, NULL), TPM_OK);
    root = json_loads(json, 0, NULL);
    c    = json_array_get(json_object_get(root, "choices"), 0);
    cr_assert(json_is_null(json_object_get(c, "finish_reason")));
    cr_assert_null(json_object_get(root, "usage"));
    cr_assert_null(json_object_get(root, "timings"));
    json_decref(root);
    free(json);

    cr_assert_eq(tpm_api_completion_json(&r, TPM_API_JSON_USAGE, &json, NULL), TPM_OK);
    root = json_loads(json, 0, NULL);
    cr_assert_eq(json_array_size(json_object_get(root, "choices")), 0);
    cr_assert_not_null(json_object_get(root, "usage"));
    json_decref(root);
    free(json);
}

Test(api, tokenize_and_detokenize_round_trip)
{
    tpm_api_error_t err;
    char           *json, *body;
    size_t          n;
    json_t         *root;

    const char *in = "{\"content\":\"Hello world \\u00e9\"}";
    char       *ids;

    cr_assert_eq(tpm_api_tokenize(in, strlen(in), tok, &json, &n, &err), TPM_OK);
    root = json_loads(json, 0, NULL);
    ids  = json_dumps(json_object_get(root, "tokens"), JSON_COMPACT);
    body = malloc(strlen(ids) + 16);
    sprintf(body, "{\"tokens\":%s}", ids);
    free(ids);
    json_decref(root);
    free(json);
    cr_assert_eq(tpm_api_detokenize(body, strlen(body), tok, &json, &n, &err), TPM_OK);
    cr_assert_str_eq(json, "{\"content\":\"Hello world \xC3\xA9\",\"prompt\":\"Hello world "
                           "\xC3\xA9\"}");
    free(json);
    free(body);

    cr_assert_eq(tpm_api_detokenize("{\"tokens\":[300]}", 16, tok, &json, &n, &err),
                 TPM_ERR_INVALID_ARG);
    cr_assert_eq(err.http_status, 400);
    cr_assert_eq(tpm_api_tokenize("{\"content\":5}", 13, tok, &json, &n, &err),
                 TPM_ERR_INVALID_ARG);
    cr_assert_str_eq(err.param, "content");
    /* a single byte token that is not UTF-8 by itself comes back repaired */
    cr_assert_eq(tpm_api_detokenize("{\"tokens\":[255]}", 16, tok, &json, &n, &err), TPM_OK);
    cr_assert_str_eq(json, "{\"content\":\"\xEF\xBF\xBD\",\"prompt\":\"\xEF\xBF\xBD\"}");
    free(json);
}

/* vLLM's names, which lm-evaluation-harness's remote tokenizer uses */
Test(api, tokenize_takes_prompt_and_tokenizer_info_names_the_end_of_text_id)
{
    tpm_api_error_t err;
    char           *a, *b;
    size_t          n;
    json_t         *root;
    const char     *c = "{\"content\":\"Hello world\"}";
    const char     *p = "{\"prompt\":\"Hello world\",\"add_special_tokens\":false}";

    cr_assert_eq(tpm_api_tokenize(c, strlen(c), tok, &a, &n, &err), TPM_OK);
    cr_assert_eq(tpm_api_tokenize(p, strlen(p), tok, &b, &n, &err), TPM_OK);
    cr_assert_str_eq(a, b);
    free(a);
    free(b);
    cr_assert_eq(tpm_api_tokenize("{}", 2, tok, &a, &n, &err), TPM_ERR_INVALID_ARG);
    cr_assert_eq(err.http_status, 400);

    cr_assert_eq(tpm_api_tokenizer_info_json(tok, 64, &a, &n), TPM_OK);
    root = json_loads(a, 0, NULL);
    cr_assert_not_null(root);
    cr_assert(json_is_null(json_object_get(root, "eos_token")), "%s", a);
    cr_assert_eq(json_integer_value(json_object_get(root, "eos_token_id")), tpm_tokenizer_eot(tok));
    cr_assert_eq(json_integer_value(json_object_get(root, "vocab_size")),
                 tpm_tokenizer_vocab_size(tok));
    cr_assert_eq(json_integer_value(json_object_get(root, "model_max_length")), 64);
    json_decref(root);
    free(a);
}

Test(api, utf8_repair_replaces_each_invalid_byte)
{
    struct {
        const char *in, *out;
    } cases[] = {
        {"plain", "plain"},
        {"\xC3\xA9", "\xC3\xA9"},                                                 /* e-acute */
        {"\xF0\x9F\x98\x80", "\xF0\x9F\x98\x80"},                                 /* emoji */
        {"\xC0\xAF", "\xEF\xBF\xBD\xEF\xBF\xBD"},                                 /* overlong '/' */
        {"\xED\xA0\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},                 /* surrogate */
        {"\xF4\x90\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* > U+10FFFF */
        {"a\xE2\x82", "a\xEF\xBF\xBD\xEF\xBF\xBD"},                               /* cut short */
        {"\x80x", "\xEF\xBF\xBDx"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char  *out;
        size_t n;

        cr_assert_eq(tpm_api_utf8_repair(cases[i].in, strlen(cases[i].in), &out, &n), TPM_OK);
        cr_assert_str_eq(out, cases[i].out, "case %zu", i);
        cr_assert_eq(n, strlen(cases[i].out));
        free(out);
    }
}

Test(api, utf8_complete_len_holds_back_only_a_valid_unfinished_tail)
{
    cr_assert_eq(tpm_api_utf8_complete_len("abc", 3), 3);
    cr_assert_eq(tpm_api_utf8_complete_len("ab\xE2\x82", 4), 2);
    cr_assert_eq(tpm_api_utf8_complete_len("ab\xE2\x82\xAC", 5), 5);
    cr_assert_eq(tpm_api_utf8_complete_len("\xF0\x9F\x98", 3), 0);
    cr_assert_eq(tpm_api_utf8_complete_len("ab\xFF", 3), 3);     /* invalid: sent (repaired) */
    cr_assert_eq(tpm_api_utf8_complete_len("ab\xE2\x41", 4), 4); /* broken: nothing to wait for */
    cr_assert_eq(tpm_api_utf8_complete_len("", 0), 0);
}

Test(api, stop_scan_finds_the_earliest_match_and_holds_back_prefixes)
{
    char  *stop[TPM_SERVE_MAX_STOP] = {"fox", "ick", NULL, NULL};
    size_t safe;

    cr_assert_eq(tpm_api_stop_scan("The quick brown fox", 19, stop, 0, &safe), 6);
    cr_assert_eq(safe, 6);
    cr_assert_eq(tpm_api_stop_scan("The quick brown fox", 19, stop, 8, &safe), 16);
    cr_assert_eq(tpm_api_stop_scan("brown f", 7, stop, 0, &safe), SIZE_MAX);
    cr_assert_eq(safe, 6); /* "f" could start "fox" */
    cr_assert_eq(tpm_api_stop_scan("brown fo", 8, stop, 0, &safe), SIZE_MAX);
    cr_assert_eq(safe, 6);
    cr_assert_eq(tpm_api_stop_scan("brown", 5, stop, 0, &safe), SIZE_MAX);
    cr_assert_eq(safe, 5);
    cr_assert_eq(tpm_api_stop_scan("", 0, stop, 0, &safe), SIZE_MAX);
    cr_assert_eq(safe, 0);
}

Test(api, stop_scan_uses_all_four_slots_without_a_terminator)
{
    char  *stop[TPM_SERVE_MAX_STOP] = {"a", "b", "c", "d"};
    size_t safe;

    cr_assert_eq(tpm_api_stop_scan("xxd", 3, stop, 0, &safe), 2);
}

Test(api, histograms_are_cumulative_in_the_metrics_text)
{
    tpm_api_metrics_t m;
    tpm_api_gauges_t  g = {.running          = 2,
                           .waiting          = 1,
                           .slots            = 4,
                           .ready            = 1,
                           .prompt_tokens    = 10,
                           .generated_tokens = 20};
    char             *text;
    size_t            n;

    tpm_api_metrics_init(&m);
    tpm_api_hist_observe(&m.ttft, 0.0005);
    tpm_api_hist_observe(&m.ttft, 0.003);
    tpm_api_hist_observe(&m.ttft, 1000.0);
    tpm_api_metrics_count(&m, 200);
    tpm_api_metrics_count(&m, 200);
    tpm_api_metrics_count(&m, 418);
    tpm_api_metrics_count(&m, 499);
    m.finished[TPM_FINISH_CANCELLED] = 3;
    cr_assert_eq(tpm_api_metrics_text(&m, &g, &text, &n), TPM_OK);
    cr_assert_eq(strlen(text), n);
    cr_assert_not_null(strstr(text, "tpmpi:time_to_first_token_seconds_bucket{le=\"0.001\"} 1\n"));
    cr_assert_not_null(strstr(text, "tpmpi:time_to_first_token_seconds_bucket{le=\"0.005\"} 2\n"));
    cr_assert_not_null(strstr(text, "tpmpi:time_to_first_token_seconds_bucket{le=\"80\"} 2\n"));
    cr_assert_not_null(strstr(text, "tpmpi:time_to_first_token_seconds_bucket{le=\"+Inf\"} 3\n"));
    cr_assert_not_null(strstr(text, "tpmpi:time_to_first_token_seconds_count 3\n"));
    cr_assert_not_null(strstr(text, "tpmpi:http_requests_total{code=\"200\"} 2\n"));
    cr_assert_not_null(strstr(text, "tpmpi:http_requests_total{code=\"other\"} 1\n"));
    cr_assert_not_null(strstr(text, "tpmpi:http_requests_total{code=\"499\"} 1\n"));
    cr_assert_not_null(
        strstr(text, "tpmpi:request_finished_total{finished_reason=\"cancelled\"} 3\n"));
    cr_assert_not_null(strstr(text, "tpmpi:num_requests_running 2\n"));
    cr_assert_not_null(strstr(text, "tpmpi:generation_tokens_total 20\n"));
    cr_assert_not_null(strstr(text, "# TYPE tpmpi:inter_token_latency_seconds histogram\n"));
    free(text);
}

Test(api, models_json_lists_the_model)
{
    char   *json;
    json_t *root;

    cr_assert_eq(tpm_api_models_json("gpt", 64, 9, 0, -1, &json, NULL), TPM_OK);
    root = json_loads(json, 0, NULL);
    cr_assert_str_eq(
        json_string_value(json_object_get(json_array_get(json_object_get(root, "data"), 0), "id")),
        "gpt");
    json_decref(root);
    free(json);
}

/* ---- the request-head check of the listening gate (src/serve/http_gate.c) ---------------- */

static int head(const char *s, size_t n, int *status_p)
{
    char msg[256];

    *status_p = 0;
    return tpm_http_head_check(s, n, status_p, msg, sizeof(msg));
}

Test(api, the_gate_accepts_well_formed_heads_and_waits_for_incomplete_ones)
{
    static const char *ok[] = {
        "GET /health HTTP/1.1\r\n\r\n",
        "\r\nPOST /v1/completions HTTP/1.0\r\nHost: a\r\nContent-Length: 12\r\n\r\n{}",
        "GET /x HTTP/1.1\nHost: a\n\n",
        "GET / HTTP/1.1\r\nX-A:\r\nX-B: tab\there \xc3\xa9\r\nContent-Length:  7 \r\n"
        "content-length: 7\r\n\r\n",
    };
    int status;

    for (size_t k = 0; k < sizeof(ok) / sizeof(ok[0]); k++) {
        size_t n = strlen(ok[k]);

        cr_assert_eq(head(ok[k], n, &status), 1, "%s", ok[k]);
        /* every proper prefix (up to the head's end) is "wait for more" */
        for (size_t m = 0; m + 1 < n && strncmp(ok[k] + m, "\r\n\r\n", 4) != 0 &&
                           strncmp(ok[k] + m, "\n\n", 2) != 0;
             m++) {
            cr_assert_eq(head(ok[k], m, &status), 0, "prefix %zu of %s", m, ok[k]);
        }
    }
}

Test(api, the_gate_refuses_malformed_heads_at_once)
{
    static const struct {
        const char *s;
        size_t      n;
        int         status;
    } bad[] = {
        {"\x00\x01\x02 garbage", 12, 400},
        {"\x00", 1, 400},
        {"GARBAGE\r\n\r\n", 11, 400},
        {"GET / HTTP/1.1 extra\r\n\r\n", 24, 400},
        {"GET  / HTTP/1.1\r\n\r\n", 19, 400},
        {"GET /\x01 HTTP/1.1\r\n\r\n", 19, 400},
        {"GET / HTTP/2.0\r\n\r\n", 18, 505},
        {"GET / HTTP/1.2\r\n\r\n", 18, 505},
        {"GET / FTP/1.1\r\n\r\n", 17, 400},
        {"GET / HTTP/1.1\r\n folded\r\n\r\n", 27, 400},
        {"GET / HTTP/1.1\r\nNo Colon\r\n\r\n", 28, 400},
        {"GET / HTTP/1.1\r\nA: b\x01\r\n\r\n", 24, 400},
        {"GET / HTTP/1.1\r\nContent-Length: 12x\r\n\r\n", 39, 400},
        {"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 38, 400},
        {"GET / HTTP/1.1\r\nContent-Length:\r\n\r\n", 35, 400},
        {"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 56, 400},
        {"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 56, 400},
        {"GET / HTTP/1.1\r\nContent-Length: 9999999999999999999\r\n\r\n", 55, 400},
    };
    int status;

    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        cr_assert_eq(head(bad[k].s, bad[k].n, &status), -1, "case %zu", k);
        cr_assert_eq(status, bad[k].status, "case %zu: status %d", k, status);
    }
}

Test(api, an_oversize_head_is_431)
{
    size_t n   = TPM_HTTP_HEAD_MAX + 1;
    char  *buf = malloc(n);
    int    status;

    cr_assert_not_null(buf);
    memset(buf, 'a', n);
    memcpy(buf, "GET / HTTP/1.1\r\nX-Big: ", 23);
    cr_assert_eq(head(buf, TPM_HTTP_HEAD_MAX, &status), 0);
    cr_assert_eq(head(buf, n, &status), -1);
    cr_assert_eq(status, 431);
    free(buf);
}

/* ---- chat completions ------------------------------------------------------------------- */

static tpm_serve_job_t *chat(const char *body, tpm_chat_template_t t, tpm_api_completion_t *c,
                             tpm_api_error_t *err)
{
    tpm_api_limits_t l = lim;

    l.n_ctx         = 512;
    l.chat_template = t;
    return tpm_api_chat_parse(body, strlen(body), &l, tok, 5, c, err) == TPM_OK ? c->job : NULL;
}

/* the job's prompt must be the encoding of @p text */
static void expect_prompt(const tpm_serve_job_t *job, const char *text)
{
    int32_t ids[512];
    size_t  n = 0;

    cr_assert_eq(tpm_tokenizer_encode(tok, text, strlen(text), ids, 512, &n), TPM_OK);
    cr_assert_eq((size_t)job->n_prompt, n, "%d tokens, want %zu for %s", job->n_prompt, n, text);
    cr_assert_eq(memcmp(job->prompt, ids, n * sizeof(int32_t)), 0, "prompt is not %s", text);
}

Test(api, chat_messages_are_rendered_with_chatml)
{
    tpm_api_completion_t c;
    tpm_api_error_t      err;
    tpm_serve_job_t     *job;

    job = chat("{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
               "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hi \"},"
               "{\"type\":\"text\",\"text\":\"there\"}]},"
               "{\"role\":\"assistant\",\"content\":\"Hello.\"},"
               "{\"role\":\"developer\",\"content\":\"x\"}],"
               "\"max_completion_tokens\":7,\"stop\":\"!\",\"stream\":true}",
               TPM_CHAT_CHATML, &c, &err);
    cr_assert_not_null(job, "%s", err.message);
    expect_prompt(job, "<|im_start|>system\nBe brief.<|im_end|>\n"
                       "<|im_start|>user\nHi there<|im_end|>\n"
                       "<|im_start|>assistant\nHello.<|im_end|>\n"
                       "<|im_start|>system\nx<|im_end|>\n"
                       "<|im_start|>assistant\n");
    cr_assert_eq(c.chat, 1);
    cr_assert_eq(c.stream, 1);
    cr_assert_eq(job->max_tokens, 7);
    cr_assert_str_eq(job->stop[0], "!");
    cr_assert_str_eq(job->stop[1], "<|im_end|>");
    cr_assert_null(job->stop[2]);
    tpm_api_job_free(job);
}

Test(api, chat_messages_are_rendered_with_llama3_and_trimmed)
{
    tpm_api_completion_t c;
    tpm_api_error_t      err;
    tpm_serve_job_t     *job;

    job = chat("{\"messages\":[{\"role\":\"user\",\"content\":\"  Hi\\n\"}],\"max_tokens\":3}",
               TPM_CHAT_LLAMA3, &c, &err);
    cr_assert_not_null(job, "%s", err.message);
    expect_prompt(job, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                       "<|start_header_id|>assistant<|end_header_id|>\n\n");
    cr_assert_eq(job->max_tokens, 3);
    cr_assert_str_eq(job->stop[0], "<|eot_id|>");
    tpm_api_job_free(job);
    cr_assert_str_eq(tpm_api_chat_template_name(TPM_CHAT_LLAMA3), "llama3");
    cr_assert_str_eq(tpm_api_chat_template_name(TPM_CHAT_CHATML), "chatml");
}

Test(api, bad_chat_requests_are_refused_with_400)
{
    static const struct {
        const char *body, *param;
    } bad[] = {
        {"{}", "messages"},
        {"{\"messages\":[]}", "messages"},
        {"{\"messages\":\"hi\"}", "messages"},
        {"{\"messages\":[{\"content\":\"x\"}]}", "messages"},
        {"{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "messages"},
        {"{\"messages\":[{\"role\":\"user\"}]}", "messages"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", "messages"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":2}", "n"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true,"
         "\"stream\":true}",
         "logprobs"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":2}",
         "top_logprobs"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true,"
         "\"top_logprobs\":21}",
         "top_logprobs"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[]}", "tools"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_completion_tokens\":0}",
         "max_completion_tokens"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"a\",\"b\",\"c\",\"d\"]"
         "}",
         "stop"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
         "\"response_format\":{\"type\":\"json_object\"}}",
         "response_format"},
    };
    tpm_api_completion_t c;
    tpm_api_error_t      err;

    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        cr_assert_null(chat(bad[k].body, TPM_CHAT_CHATML, &c, &err), "accepted %s", bad[k].body);
        cr_assert_eq(err.http_status, 400, "%s", bad[k].body);
        cr_assert_str_eq(err.param, bad[k].param, "%s: param %s", bad[k].body, err.param);
    }
    /* accepted as defaults: logprobs false, text response_format, an assistant without content */
    cr_assert_not_null(chat("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":"
                            "\"assistant\",\"content\":null}],\"logprobs\":false,"
                            "\"response_format\":{\"type\":\"text\"}}",
                            TPM_CHAT_CHATML, &c, &err),
                       "%s", err.message);
    tpm_api_job_free(c.job);
}

Test(api, chat_json_has_a_message_and_stream_deltas)
{
    tpm_api_result_t r    = {.id                = "chatcmpl-1",
                             .model             = "m",
                             .created           = 1,
                             .text              = "Hi",
                             .text_len          = 2,
                             .finish_reason     = "stop",
                             .prompt_tokens     = 3,
                             .completion_tokens = 2,
                             .chat              = 1};
    char            *json = NULL;
    size_t           n;
    json_t          *d, *ch;

    cr_assert_eq(tpm_api_completion_json(&r, TPM_API_JSON_FULL, &json, &n), TPM_OK);
    d = json_loads(json, 0, NULL);
    free(json);
    cr_assert_str_eq(json_string_value(json_object_get(d, "object")), "chat.completion");
    ch = json_array_get(json_object_get(d, "choices"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(ch, "message"), "role")),
                     "assistant");
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(ch, "message"), "content")),
                     "Hi");
    cr_assert_null(json_object_get(ch, "text"));
    json_decref(d);

    r.finish_reason = NULL;
    r.first         = 1;
    cr_assert_eq(tpm_api_completion_json(&r, TPM_API_JSON_CHUNK, &json, &n), TPM_OK);
    d = json_loads(json, 0, NULL);
    free(json);
    cr_assert_str_eq(json_string_value(json_object_get(d, "object")), "chat.completion.chunk");
    ch = json_object_get(json_array_get(json_object_get(d, "choices"), 0), "delta");
    cr_assert_str_eq(json_string_value(json_object_get(ch, "role")), "assistant");
    cr_assert_str_eq(json_string_value(json_object_get(ch, "content")), "Hi");
    json_decref(d);

    r.first         = 0;
    r.text_len      = 0;
    r.finish_reason = "length";
    cr_assert_eq(tpm_api_completion_json(&r, TPM_API_JSON_CHUNK, &json, &n), TPM_OK);
    d = json_loads(json, 0, NULL);
    free(json);
    ch = json_array_get(json_object_get(d, "choices"), 0);
    cr_assert_eq(json_object_size(json_object_get(ch, "delta")), 0, "the last delta is empty");
    cr_assert_str_eq(json_string_value(json_object_get(ch, "finish_reason")), "length");
    json_decref(d);
}

Test(api, logprobs_and_echo_reach_the_job)
{
    tpm_api_completion_t c;
    tpm_api_error_t      err;
    tpm_serve_job_t     *job;

    job = parse("{\"prompt\":\"x\",\"logprobs\":3,\"echo\":true,\"max_tokens\":1}", &c, &err);
    cr_assert_not_null(job, "%s", err.message);
    cr_assert_eq(job->logprobs, 1);
    cr_assert_eq(job->top_logprobs, 3);
    cr_assert_eq(job->echo, 1);
    cr_assert_eq(c.echo, 1);
    tpm_api_job_free(job);
    job = parse("{\"prompt\":\"x\",\"echo\":true}", &c, &err); /* echo alone: text only */
    cr_assert_not_null(job, "%s", err.message);
    cr_assert_eq(job->logprobs, 0);
    cr_assert_eq(c.echo, 1);
    tpm_api_job_free(job);
    job = chat("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true,"
               "\"top_logprobs\":4}",
               TPM_CHAT_CHATML, &c, &err);
    cr_assert_not_null(job, "%s", err.message);
    cr_assert_eq(job->logprobs, 1);
    cr_assert_eq(job->top_logprobs, 4);
    cr_assert_eq(job->echo, 0);
    tpm_api_job_free(job);
}

Test(api, logprobs_json_in_both_shapes)
{
    tpm_api_logprob_t lp[2] = {{.token = 'a', .has = 0},
                               {.token   = 'b',
                                .logprob = -0.5f,
                                .has     = 1,
                                .n_top   = 2,
                                .top_ids = {'b', 'c'},
                                .top_lp  = {-0.5f, -1.5f}}};
    tpm_api_result_t  r     = {.id            = "x",
                               .model         = "m",
                               .text          = "ab",
                               .text_len      = 2,
                               .finish_reason = "length",
                               .lp            = lp,
                               .n_lp          = 2,
                               .tok           = tok};
    char             *json  = NULL;
    size_t            n;
    json_t           *d, *l;

    cr_assert_eq(tpm_api_completion_json(&r, TPM_API_JSON_FULL, &json, &n), TPM_OK);
    d = json_loads(json, 0, NULL);
    free(json);
    l = json_object_get(json_array_get(json_object_get(d, "choices"), 0), "logprobs");
    cr_assert_eq(json_array_size(json_object_get(l, "tokens")), 2);
    cr_assert(json_is_null(json_array_get(json_object_get(l, "token_logprobs"), 0)));
    cr_assert(json_real_value(json_array_get(json_object_get(l, "token_logprobs"), 1)) == -0.5);
    cr_assert(json_is_null(json_array_get(json_object_get(l, "top_logprobs"), 0)));
    cr_assert_eq(json_object_size(json_array_get(json_object_get(l, "top_logprobs"), 1)), 2);
    cr_assert_eq(json_integer_value(json_array_get(json_object_get(l, "text_offset"), 1)), 1);
    json_decref(d);

    r.chat = 1;
    r.lp   = lp + 1;
    r.n_lp = 1;
    cr_assert_eq(tpm_api_completion_json(&r, TPM_API_JSON_FULL, &json, &n), TPM_OK);
    d = json_loads(json, 0, NULL);
    free(json);
    l = json_object_get(json_array_get(json_object_get(d, "choices"), 0), "logprobs");
    l = json_array_get(json_object_get(l, "content"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(l, "token")), "b");
    cr_assert_eq(json_integer_value(json_array_get(json_object_get(l, "bytes"), 0)), 'b');
    cr_assert_eq(json_array_size(json_object_get(l, "top_logprobs")), 2);
    json_decref(d);
}

Test(api, penalties_and_logit_bias_reach_the_job)
{
    tpm_api_completion_t c;
    tpm_api_error_t      err;
    tpm_serve_job_t     *job;

    job = parse("{\"prompt\":\"x\",\"presence_penalty\":0.5,\"frequency_penalty\":-1,"
                "\"logit_bias\":{\"7\":-100,\"299\":2.5}}",
                &c, &err);
    cr_assert_not_null(job, "%s", err.message);
    cr_assert_eq(job->presence_penalty, 0.5f);
    cr_assert_eq(job->frequency_penalty, -1.0f);
    cr_assert_eq(job->n_bias, 2);
    cr_assert(job->bias_ids[0] + job->bias_ids[1] == 306);
    cr_assert(job->bias_val[0] + job->bias_val[1] == -97.5f);
    tpm_api_job_free(job);
    job = chat("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
               "\"frequency_penalty\":1,\"logit_bias\":{\"3\":1}}",
               TPM_CHAT_CHATML, &c, &err);
    cr_assert_not_null(job, "%s", err.message);
    cr_assert_eq(job->frequency_penalty, 1.0f);
    cr_assert_eq(job->n_bias, 1);
    tpm_api_job_free(job);
}

Test(api, embeddings_requests_are_parsed_and_answered)
{
    tpm_api_error_t  err;
    tpm_serve_job_t *job      = NULL;
    const char      *ok[]     = {"{\"input\":\"hello\"}", "{\"input\":[\"hello\"]}",
                                 "{\"input\":[104,101],\"encoding_format\":\"float\",\"model\":\"m\"}",
                                 "{\"input\":[[104,101]]}"};
    const char      *bad[][2] = {{"{}", "input"},
                                 {"{\"input\":[\"a\",\"b\"]}", "input"},
                                 {"{\"input\":12}", "input"},
                                 {"{\"input\":[300]}", "input"},
                                 {"{\"input\":\"a\",\"encoding_format\":\"base64\"}", "encoding_format"},
                                 {"{\"input\":\"a\",\"dimensions\":8}", "dimensions"}};
    float            v[3]     = {0.5f, -0.25f, 1.0f};
    char            *json     = NULL;
    size_t           n;
    json_t          *d;

    for (size_t k = 0; k < sizeof(ok) / sizeof(ok[0]); k++) {
        cr_assert_eq(tpm_api_embeddings_parse(ok[k], strlen(ok[k]), &lim, tok, &job, &err), TPM_OK,
                     "%s: %s", ok[k], err.message);
        cr_assert_eq(job->embed, 1);
        cr_assert_gt(job->n_prompt, 0);
        tpm_api_job_free(job);
    }
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        cr_assert_neq(tpm_api_embeddings_parse(bad[k][0], strlen(bad[k][0]), &lim, tok, &job, &err),
                      TPM_OK, "accepted %s", bad[k][0]);
        cr_assert_str_eq(err.param, bad[k][1], "%s: param %s", bad[k][0], err.param);
    }
    cr_assert_eq(tpm_api_embeddings_json("m", v, 3, 2, &json, &n), TPM_OK);
    d = json_loads(json, 0, NULL);
    free(json);
    cr_assert_str_eq(json_string_value(json_object_get(d, "object")), "list");
    cr_assert_eq(json_array_size(
                     json_object_get(json_array_get(json_object_get(d, "data"), 0), "embedding")),
                 3);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(d, "usage"), "prompt_tokens")),
                 2);
    json_decref(d);
}

Test(api, trainserve_answers_carry_the_weights_step)
{
    static const double bounds[3] = {0.01, 0.1, INFINITY};
    tpm_api_result_t    r = {.id = "cmpl-2", .model = "m", .text = "", .finish_reason = "stop"};
    tpm_api_metrics_t   m;
    tpm_api_gauges_t    g = {.trainserve     = 1,
                             .weights_step   = 40,
                             .pushes         = 3,
                             .push_bytes     = 1000,
                             .push_seconds   = 0.15,
                             .push_bounds    = bounds,
                             .push_le        = {1, 2, 3},
                             .n_push_buckets = 3,
                             .since_swap     = 2.5};
    char               *json, *text;
    json_t             *root;
    size_t              n;

    cr_assert_eq(tpm_api_completion_json(&r, TPM_API_JSON_FULL, &json, NULL), TPM_OK);
    root = json_loads(json, 0, NULL);
    cr_assert_null(json_object_get(root, "system_fingerprint"), "not without trainserve");
    json_decref(root);
    free(json);
    r.trainserve   = 1;
    r.weights_step = 12;
    cr_assert_eq(tpm_api_completion_json(&r, TPM_API_JSON_CHUNK, &json, NULL), TPM_OK);
    root = json_loads(json, 0, NULL);
    cr_assert_str_eq(json_string_value(json_object_get(root, "system_fingerprint")),
                     "tpmpi-step-12");
    json_decref(root);
    free(json);

    cr_assert_eq(tpm_api_models_json("gpt", 64, 9, 1, 12, &json, NULL), TPM_OK);
    root = json_loads(json, 0, NULL);
    cr_assert_eq(json_integer_value(json_object_get(root, "weights_step")), 12);
    json_decref(root);
    free(json);

    tpm_api_metrics_init(&m);
    cr_assert_eq(tpm_api_metrics_text(&m, &g, &text, &n), TPM_OK);
    cr_assert_not_null(strstr(text, "tpmpi:weights_step 40\n"));
    cr_assert_not_null(strstr(text, "tpmpi:weight_pushes_total 3\n"));
    cr_assert_not_null(strstr(text, "tpmpi:weight_push_bytes_total 1000\n"));
    cr_assert_not_null(strstr(text, "tpmpi:weight_push_latency_seconds_bucket{le=\"0.1\"} 2\n"));
    cr_assert_not_null(strstr(text, "tpmpi:weight_push_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
    cr_assert_not_null(strstr(text, "tpmpi:seconds_since_last_swap 2.500\n"));
    free(text);
    g.trainserve = 0;
    cr_assert_eq(tpm_api_metrics_text(&m, &g, &text, &n), TPM_OK);
    cr_assert_null(strstr(text, "weights_step"));
    free(text);
}

/* several completions in one request: the bodies of the candidates, prompt-major */
Test(api, fanout_splits_prompts_and_candidates)
{
    tpm_api_fanout_t f;
    tpm_api_error_t  err;
    const char      *b1 = "{\"prompt\":\"x\"}";
    const char      *b2 = "{\"prompt\":[\"a\",[1,2]],\"n\":2,\"best_of\":3,\"seed\":7}";
    json_t          *o;

    cr_assert_eq(tpm_api_fanout(b1, strlen(b1), 0, &f, &err), TPM_OK);
    cr_assert_eq(f.n_sub, 0, "one completion: the single path");
    tpm_api_fanout_free(&f);

    cr_assert_eq(tpm_api_fanout(b2, strlen(b2), 0, &f, &err), TPM_OK);
    cr_assert_eq(f.n_sub, 6);
    cr_assert_eq(f.n_prompts, 2);
    cr_assert_eq(f.n, 2);
    cr_assert_eq(f.best_of, 3);
    for (int k = 0; k < 6; k++) {
        o = json_loadb(f.bodies[k], f.lens[k], 0, NULL);
        cr_assert_not_null(o);
        cr_assert_null(json_object_get(o, "n"));
        cr_assert_null(json_object_get(o, "best_of"));
        cr_assert_eq(json_integer_value(json_object_get(o, "seed")), 7 + k % 3, "%s", f.bodies[k]);
        if (k < 3) {
            cr_assert_str_eq(json_string_value(json_object_get(o, "prompt")), "a");
        } else {
            cr_assert_eq(json_array_size(json_object_get(o, "prompt")), 2);
        }
        json_decref(o);
    }
    tpm_api_fanout_free(&f);

    /* chat: n only; best_of is left to the chat parser */
    b1 = "{\"messages\":[],\"n\":3}";
    cr_assert_eq(tpm_api_fanout(b1, strlen(b1), 1, &f, &err), TPM_OK);
    cr_assert_eq(f.n_sub, 3);
    tpm_api_fanout_free(&f);
}

Test(api, fanout_refuses_what_stays_refused)
{
    static const struct {
        const char *body, *param;
    } bad[] = {
        {"{\"prompt\":\"x\",\"n\":0}", "n"},
        {"{\"prompt\":\"x\",\"n\":17}", "n"},
        {"{\"prompt\":\"x\",\"n\":\"2\"}", "n"},
        {"{\"prompt\":\"x\",\"n\":3,\"best_of\":2}", "best_of"},
        {"{\"prompt\":\"x\",\"n\":2,\"stream\":true}", "stream"},
        {"{\"prompt\":[\"x\",\"y\"],\"stream\":true}", "stream"},
        {"{\"prompt\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\"],\"n\":3}", "prompt"},
        {"{\"prompt\":\"x\",\"best_of\":17}", "best_of"},
    };
    tpm_api_fanout_t f;
    tpm_api_error_t  err;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_eq(tpm_api_fanout(bad[i].body, strlen(bad[i].body), 0, &f, &err),
                     TPM_ERR_INVALID_ARG, "accepted: %s", bad[i].body);
        cr_assert_eq(err.http_status, 400);
        cr_assert_str_eq(err.param, bad[i].param, "%s", bad[i].body);
        cr_assert_eq(f.n_sub, 0);
    }
}

Test(api, choices_merge_reindexes_and_sums_usage)
{
    const char *a =
        "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"text\":\"A\","
        "\"index\":0}],\"usage\":{\"prompt_tokens\":3}}";
    const char *b =
        "{\"id\":\"cmpl-2\",\"object\":\"text_completion\",\"choices\":[{\"text\":\"B\","
        "\"index\":0}],\"usage\":{\"prompt_tokens\":3}}";
    const char *in[2]   = {a, b};
    size_t      lens[2] = {strlen(a), strlen(b)}, n;
    char       *json;
    json_t     *o, *ch;

    cr_assert_eq(tpm_api_choices_merge(in, lens, 2, 3, 9, &json, &n), TPM_OK);
    o  = json_loads(json, 0, NULL);
    ch = json_object_get(o, "choices");
    cr_assert_str_eq(json_string_value(json_object_get(o, "id")), "cmpl-1");
    cr_assert_eq(json_array_size(ch), 2);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(ch, 1), "text")), "B");
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(ch, 1), "index")), 1);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(o, "usage"), "total_tokens")),
                 12);
    json_decref(o);
    free(json);
}
