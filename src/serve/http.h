/* SPDX-License-Identifier: MIT */
/*
 * http.h: the OpenAI-compatible HTTP front-end, run on rank 0 only
 * (libmicrohttpd threads + jansson). It validates requests, tokenizes prompts,
 * submits jobs to the engine's queue (serve.h) and answers or streams (SSE).
 * Endpoints: POST /v1/completions, GET /v1/models, GET /health, GET /metrics,
 * POST /tokenize, POST /detokenize. Errors use OpenAI's JSON error shape.
 */
#ifndef TPM_SERVE_HTTP_H
#define TPM_SERVE_HTTP_H

#include "base/status.h"
#include "cli/config.h"
#include "data/tokenizer.h"
#include "serve/serve.h"

typedef struct tpm_http tpm_http_t;

/** What the front-end needs to know about the loaded model. */
typedef struct tpm_http_model_info {
    const char *name;   /* model id reported by /v1/models */
    int         n_ctx;  /* tokens per slot: prompt + max_tokens must fit */
    int         vocab;  /* V */
} tpm_http_model_info_t;

/**
 * Start listening on cfg->host:cfg->port (limits, API key from cfg). @p q, @p stats and
 * @p tok are borrowed and must outlive the server. Caller owns *h_p.
 */
tpm_status_t tpm_http_start(const tpm_config_t *cfg, tpm_serve_queue_t *q,
                            tpm_serve_stats_t *stats, const tpm_tokenizer_t *tok,
                            const tpm_http_model_info_t *info, tpm_http_t **h_p);
/** Stop accepting, cancel and close open streams, free. No-op on NULL. */
void tpm_http_stop(tpm_http_t *h);

#endif /* TPM_SERVE_HTTP_H */
