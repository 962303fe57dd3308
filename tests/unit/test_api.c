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

Test(api, the_default_max_tokens_shrinks_to_the_room_left_in_the_context)
{
    tpm_api_completion_t c;
    tpm_api_error_t      err;
    char                 body[512];
    tpm_serve_job_t     *job;

    /* 28 prompt tokens in a 32-token context: 4 left */
    strcpy(body, "{\"prompt\":[");
    for (int i = 0; i < 28; i++) {
        strcat(body, i ? ",5" : "5");
    }
    strcat(body, "]}");
    job = parse(body, &c, &err);
    cr_assert_not_null(job, "%s", err.message);
    cr_assert_eq(job->max_tokens, 4);
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
    /* 30 tokens + max_tokens 5 > 32 */
    strcpy(body, "{\"max_tokens\":5,\"prompt\":[");
    for (int i = 0; i < 30; i++) {
        strcat(body, i ? ",5" : "5");
    }
    strcat(body, "]}");
    expect_bad(body, 400, "prompt");
    /* 33 tokens: more than the context at all */
    strcpy(body, "{\"prompt\":[");
    for (int i = 0; i < 33; i++) {
        strcat(body, i ? ",5" : "5");
    }
    strcat(body, "]}");
    expect_bad(body, 400, "prompt");
}

Test(api, a_prompt_that_fills_the_context_reports_context_length_exceeded)
{
    tpm_api_completion_t c;
    tpm_api_error_t      err;
    char                 body[512];

    strcpy(body, "{\"prompt\":[");
    for (int i = 0; i < 32; i++) {
        strcat(body, i ? ",5" : "5");
    }
    strcat(body, "]}");
    cr_assert_null(parse(body, &c, &err));
    cr_assert_str_eq(err.code, "context_length_exceeded");
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
    expect_bad("{\"prompt\":\"x\",\"echo\":true}", 400, "echo");
    expect_bad("{\"prompt\":\"x\",\"echo\":1}", 400, "echo");
    expect_bad("{\"prompt\":\"x\",\"logprobs\":0}", 400, "logprobs");
    expect_bad("{\"prompt\":\"x\",\"suffix\":\"s\"}", 400, "suffix");
    expect_bad("{\"prompt\":\"x\",\"frequency_penalty\":0.5}", 400, "frequency_penalty");
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":{\"1\":5}}", 400, "logit_bias");
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
    cr_assert_str_eq(json, "{\"content\":\"Hello world \xC3\xA9\"}");
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
    cr_assert_str_eq(json, "{\"content\":\"\xEF\xBF\xBD\"}");
    free(json);
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
