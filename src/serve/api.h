/* SPDX-License-Identifier: MIT */
/*
 * api.h: the OpenAI-compatible request and response layer of the HTTP front-end, as pure
 * functions over byte buffers (no sockets, no threads, no logging of request errors), so
 * that the request-to-job path can be unit-tested and fuzzed (tests/fuzz/fuzz_api.c).
 * JSON in and out goes through jansson; request bodies are untrusted: every size, count and
 * range is checked, and a bad request becomes a tpm_api_error_t (HTTP status + OpenAI error
 * fields) instead of an abort. Also here: UTF-8 repair for byte-level token text,
 * stop-string scanning and the Prometheus text of /metrics (histograms and counters).
 */
#ifndef TPM_SERVE_API_H
#define TPM_SERVE_API_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "data/tokenizer.h"
#include "serve/serve.h"

#define TPM_API_DEFAULT_MAX_TOKENS 16   /* OpenAI's default when max_tokens is absent */
#define TPM_API_MAX_STOP_BYTES     256  /* longest stop string accepted */
#define TPM_API_MAX_LOGIT_BIAS     1024 /* most logit_bias entries in a request */
#define TPM_API_SSE_KEEPALIVE_S    15.0 /* comment line sent on an idle stream */

/** Limits a completion request is checked against. */
/** The chat templates (docs/SERVING.md, POST /v1/chat/completions). */
typedef enum {
    TPM_CHAT_CHATML = 0, /* <|im_start|>role\ncontent<|im_end|>\n ... (the default) */
    TPM_CHAT_LLAMA3,     /* <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\n ... */
} tpm_chat_template_t;

/** The template's name ("chatml", "llama3"), or NULL for an unknown value. */
const char *tpm_api_chat_template_name(tpm_chat_template_t t);
/** Parse a template name: 1 and *t_p set, or 0 for an unknown name. */
int tpm_api_chat_template_parse(const char *name, tpm_chat_template_t *t_p);

typedef struct tpm_api_limits {
    const char         *model;         /* model id: a request naming another one is answered 404 */
    int                 n_ctx;         /* tokens per slot: prompt + max_tokens must fit */
    int                 vocab;         /* V: prompt token ids must be < V */
    int                 max_tokens;    /* --max-tokens: upper bound of a request's max_tokens */
    tpm_chat_template_t chat_template; /* how /v1/chat/completions renders messages */
} tpm_api_limits_t;

/** An error answer in OpenAI's shape {"error":{"message","type","param","code"}}. */
typedef struct tpm_api_error {
    int         http_status; /* 400, 401, 404, 405, 413, 500, 503 */
    const char *type;        /* static: "invalid_request_error", "server_error", ... */
    const char *code;        /* static or NULL (JSON null) */
    char        param[64];   /* "" = JSON null */
    char        message[384];
} tpm_api_error_t;

/** Fill @p err (status, type, code, param or NULL, printf-style message). */
void tpm_api_error_set(tpm_api_error_t *err, int http_status, const char *type, const char *code,
                       const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/**
 * Serialize @p err. Caller owns *json_p (free() it; jansson allocates with malloc).
 * TPM_ERR_NO_MEMORY when jansson cannot allocate.
 */
tpm_status_t tpm_api_error_json(const tpm_api_error_t *err, char **json_p, size_t *n_p);

/** A parsed POST /v1/completions request. */
typedef struct tpm_api_completion {
    tpm_serve_job_t *job;           /* caller owns: free with tpm_api_job_free() */
    int              stream;        /* "stream": true */
    int              include_usage; /* "stream_options": {"include_usage": true} */
    int              chat;          /* 1: a chat completion (answered as chat.completion) */
    int              echo;          /* "echo": true: the answer's text starts with the prompt */
} tpm_api_completion_t;

/**
 * Parse and validate a completion request body of @p n bytes (not NUL-terminated) into a
 * job: prompt token ids (a string is encoded with @p tok; an empty prompt becomes the
 * end-of-text token, the start of a document), max_tokens (default min(16, room left in
 * the context)), temperature, top_p, top_k, seed (@p default_seed when absent) and stop
 * strings. Callbacks and user are left NULL. On a bad request returns TPM_ERR_INVALID_ARG
 * and fills @p err (status 400, or 404 for an unknown model); TPM_ERR_NO_MEMORY (err: 500).
 * Pure: no I/O, no logging of request errors, thread-safe for a shared read-only @p tok.
 */
tpm_status_t tpm_api_completion_parse(const char *body, size_t n, const tpm_api_limits_t *lim,
                                      const tpm_tokenizer_t *tok, uint64_t default_seed,
                                      tpm_api_completion_t *req_p, tpm_api_error_t *err);

/**
 * Parse a POST /v1/chat/completions body: "messages" (roles system, developer = system,
 * user, assistant; content a string or a list of text parts) rendered with
 * lim->chat_template, with the generation prompt for the assistant's turn, then encoded;
 * max_completion_tokens (or max_tokens), temperature, top_p, top_k, seed, stop (at most 3:
 * the template's end-of-turn marker is added as a stop string), stream and stream_options
 * as for completions. What stays refused (n > 1: the front-end splits such a request with
 * tpm_api_fanout first; tools, a response_format other than text) is 400. Sets
 * req_p->chat. Otherwise as tpm_api_completion_parse.
 */
tpm_status_t tpm_api_chat_parse(const char *body, size_t n, const tpm_api_limits_t *lim,
                                const tpm_tokenizer_t *tok, uint64_t default_seed,
                                tpm_api_completion_t *req_p, tpm_api_error_t *err);

/**
 * Parse a POST /v1/embeddings body: "input" (one string or one list of token ids, with the
 * prompt rules of completions), "model", "encoding_format" ("float" only); "dimensions" is
 * refused. The job has embed set. Caller owns *job_p (tpm_api_job_free). Pure.
 */
tpm_status_t tpm_api_embeddings_parse(const char *body, size_t n, const tpm_api_limits_t *lim,
                                      const tpm_tokenizer_t *tok, tpm_serve_job_t **job_p,
                                      tpm_api_error_t *err);

/** {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding"}], ...}. */
tpm_status_t tpm_api_embeddings_json(const char *model, const float *vec, int C, int prompt_tokens,
                                     char **json_p, size_t *n_p);

/** Most completions (prompts x best_of) one request may ask for. */
#define TPM_API_MAX_CHOICES 16

/**
 * A request for several completions (completions: "n", "best_of", a list of prompts; chat:
 * "n"), split into n_prompts x best_of single-completion bodies, prompt-major: body
 * i * best_of + j is prompt i's candidate j, without "n" and "best_of", with "seed" + j when
 * a seed was given (the caller gives each body its own default seed otherwise). n_sub is 0
 * when the request asks for one completion (parse the original body). Refused (400): n or
 * best_of outside [1, TPM_API_MAX_CHOICES], best_of < n, more than TPM_API_MAX_CHOICES in
 * all, and "stream" with more than one completion. Pure; free with tpm_api_fanout_free.
 */
typedef struct tpm_api_fanout {
    int     n_sub, n_prompts, n, best_of;
    char  **bodies; /* (n_sub) malloc'd JSON texts */
    size_t *lens;
} tpm_api_fanout_t;

tpm_status_t tpm_api_fanout(const char *body, size_t n, int chat, tpm_api_fanout_t *f,
                            tpm_api_error_t *err);
void         tpm_api_fanout_free(tpm_api_fanout_t *f); /* NULL ok */

/**
 * One answer from @p n single-completion answers (tpm_api_completion_json FULL texts), in
 * order: the first's id, object, created, model and timings; every one's choice, re-indexed
 * 0..n-1; usage from the given counts. Pure; caller owns *json_p (free()).
 */
tpm_status_t tpm_api_choices_merge(const char *const *jsons, const size_t *lens, int n,
                                   int64_t prompt_tokens, int64_t completion_tokens, char **json_p,
                                   size_t *n_p);

/** Free a job made by tpm_api_completion_parse (prompt, stop strings, the job). NULL ok. */
void tpm_api_job_free(tpm_serve_job_t *job);

/** One token's log-probability for the answer (has = 0: JSON null, the echoed first token). */
typedef struct tpm_api_logprob {
    int32_t token;
    float   logprob;
    int     has;
    int     n_top;
    int32_t top_ids[20];
    float   top_lp[20];
} tpm_api_logprob_t;

/** Timings and counts of one finished (or finishing) completion, for the response JSON. */
typedef struct tpm_api_result {
    const char *id;      /* "cmpl-..." */
    const char *model;   /* model id */
    int64_t     created; /* Unix seconds */
    const char *text;    /* generated bytes (any bytes: repaired to UTF-8 here) */
    size_t      text_len;
    const char *finish_reason; /* "stop", "length", or NULL (JSON null: stream chunk) */
    int         prompt_tokens;
    int         completion_tokens;
    double      ttft_ms;      /* request arrival -> first token */
    double      prompt_ms;    /* submit -> first token (queue wait + prefill) */
    double      predicted_ms; /* first token -> last token */
    int         chat;         /* a chat completion: "message" / "delta" instead of "text" */
    int         first;        /* chat stream: the first chunk (carries the role) */
    /* log-probabilities (optional: lp NULL means "logprobs": null) */
    const tpm_api_logprob_t *lp;
    int                      n_lp;
    const tpm_tokenizer_t   *tok; /* token strings; needed with lp */
    int         trainserve;   /* 1: "system_fingerprint" is "tpmpi-step-<weights_step>" */
    int64_t     weights_step; /* optimizer step of the weights that answered */
} tpm_api_result_t;

/**
 * Build the JSON of a completion. @p kind: TPM_API_JSON_FULL is the non-streaming answer
 * (choices, usage, timings); TPM_API_JSON_CHUNK a stream chunk (choices with text and
 * finish_reason, and timings when finish_reason is set); TPM_API_JSON_USAGE the final
 * usage-only stream chunk ("choices": []). Caller owns *json_p (free()).
 */
typedef enum {
    TPM_API_JSON_FULL = 0,
    TPM_API_JSON_CHUNK,
    TPM_API_JSON_USAGE,
} tpm_api_json_kind_t;

tpm_status_t tpm_api_completion_json(const tpm_api_result_t *r, tpm_api_json_kind_t kind,
                                     char **json_p, size_t *n_p);

/**
 * GET /v1/models (when @p one is 0) or GET /v1/models/{id} (one model object). With
 * @p weights_step >= 0 (trainserve) the model object carries "weights_step".
 */
tpm_status_t tpm_api_models_json(const char *model, int n_ctx, int64_t created, int one,
                                 int64_t weights_step, char **json_p, size_t *n_p);

/**
 * GET /tokenizer_info (vLLM's, what lm-evaluation-harness's remote tokenizer reads):
 * eos/bos/pad token texts (null: the end-of-text token has no text form), eos_token_id,
 * vocab_size, model_max_length.
 */
tpm_status_t tpm_api_tokenizer_info_json(const tpm_tokenizer_t *tok, int n_ctx, char **json_p,
                                         size_t *n_p);

/**
 * POST /tokenize: {"content": "..."} (or vLLM's "prompt") -> {"tokens": [...]}. POST
 * /detokenize: {"tokens": [...]} -> {"content": "...", "prompt": "..."} (invalid UTF-8
 * repaired). Bad requests:
 * TPM_ERR_INVALID_ARG with @p err filled. Caller owns *json_p (free()). Pure.
 */
tpm_status_t tpm_api_tokenize(const char *body, size_t n, const tpm_tokenizer_t *tok, char **json_p,
                              size_t *n_p, tpm_api_error_t *err);
tpm_status_t tpm_api_detokenize(const char *body, size_t n, const tpm_tokenizer_t *tok,
                                char **json_p, size_t *n_p, tpm_api_error_t *err);

/* ---- text helpers ------------------------------------------------------------------------ */

/**
 * Length of the longest prefix of @p s that does not end inside an incomplete UTF-8
 * sequence (one that more bytes could still complete). A stream sends only this prefix
 * and keeps the tail for the next token, so a character split over two tokens is sent
 * whole.
 */
size_t tpm_api_utf8_complete_len(const char *s, size_t n);

/**
 * Copy @p s with every byte that is not part of a valid UTF-8 sequence (overlong forms,
 * surrogates and code points above U+10FFFF included) replaced by U+FFFD. Caller owns
 * *out_p (free()); it is NUL-terminated, *n_out_p excludes the NUL.
 */
tpm_status_t tpm_api_utf8_repair(const char *s, size_t n, char **out_p, size_t *n_out_p);

/**
 * Find the earliest stop string in @p text[0..n), looking only at matches that start at or
 * after @p from. Returns the match offset, or SIZE_MAX when there is none. *safe_p (optional)
 * is how much of the text may be sent now: n minus the longest tail that is a proper
 * prefix of a stop string (a stop string could still complete there).
 */
size_t tpm_api_stop_scan(const char *text, size_t n, char *const *stop, size_t from,
                         size_t *safe_p);

/* ---- /metrics ---------------------------------------------------------------------------- */

#define TPM_API_HIST_MAX 24

/** A Prometheus histogram with fixed upper bounds (seconds); +Inf is implicit. */
typedef struct tpm_api_hist {
    int           n_bounds;
    const double *bounds;                   /* ascending, static */
    uint64_t      counts[TPM_API_HIST_MAX]; /* per bucket (not cumulative); last = +Inf */
    uint64_t      count;
    double        sum;
} tpm_api_hist_t;

/**
 * HTTP status codes counted one by one (200 400 401 404 405 408 413 429 499 500 503);
 * anything else goes to "other". 499 is a client that went away before its answer was
 * complete (docs/METRICS.md).
 */
#define TPM_API_N_CODES 12

typedef struct tpm_api_metrics {
    uint64_t       http_requests[TPM_API_N_CODES]; /* by status, see tpm_api_metrics_count */
    uint64_t       finished[4];                    /* completions by tpm_finish_t */
    tpm_api_hist_t ttft; /* time to first token: request arrival -> first token */
    tpm_api_hist_t itl;  /* inter-token latency: every gap between two tokens of a request */
    tpm_api_hist_t e2e;  /* end-to-end request latency: arrival -> last token */
} tpm_api_metrics_t;

/** Live values read from the engine's counters when /metrics is scraped. */
typedef struct tpm_api_gauges {
    int      running, waiting, slots, ready;
    uint64_t prompt_tokens, generated_tokens;
    /* live weight push (trainserve only: the push metrics are printed when set) */
    int           trainserve;
    int64_t       weights_step;
    uint64_t      pushes, push_bytes;
    double        push_seconds;
    const double *push_bounds; /* (n_push_buckets) upper bounds, the last +Inf */
    uint64_t      push_le[TPM_SERVE_PUSH_BUCKETS]; /* cumulative counts per bound */
    int           n_push_buckets;                  /* at most TPM_SERVE_PUSH_BUCKETS */
    double        since_swap;                      /* seconds since the last swap, < 0: none yet */
} tpm_api_gauges_t;

void tpm_api_metrics_init(tpm_api_metrics_t *m);
void tpm_api_hist_observe(tpm_api_hist_t *hist, double v);
/** Count one answered HTTP request with status @p http_status. */
void tpm_api_metrics_count(tpm_api_metrics_t *m, int http_status);
/** Prometheus text exposition format 0.0.4, names prefixed "tpmpi:". Caller frees. */
tpm_status_t tpm_api_metrics_text(const tpm_api_metrics_t *m, const tpm_api_gauges_t *g,
                                  char **text_p, size_t *n_p);

#endif /* TPM_SERVE_API_H */
