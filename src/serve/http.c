/* SPDX-License-Identifier: MIT */
/*
 * http.c: the OpenAI-compatible HTTP front-end on rank 0 (libmicrohttpd, one thread per
 * connection). Each request is read into a bounded buffer, turned into a job by api.c,
 * pushed to the engine's queue (serve.h) and answered when the engine reports through the
 * job's callbacks: a non-streaming request waits in its handler; a streaming one returns
 * a callback response whose reader sends one server-sent event per token.
 *
 * Threads: MHD runs one thread per connection; the engine thread calls on_token/on_done.
 * They meet in a per-request context (mutex + condition variable) that is reference
 * counted: the MHD connection, the engine (from submit to on_done) and a streaming
 * response each hold one reference, so a client that goes away never frees a job the
 * engine still uses, and an engine that finishes late never touches freed memory. The
 * server object itself is reference counted by its requests for the same reason.
 *
 * Waiting threads wake every HTTP_WAIT_S to notice a client that disconnected (the peer's
 * FIN shows as POLLRDHUP on the socket), which cancels the job (job->cancel = 1), and to
 * notice tpm_http_stop(), which cancels every job and ends every stream.
 *
 * Metrics are counted before the client can see its answer (a client that reads /metrics
 * right after it must find its own request): the finish reason before the waiter is woken,
 * the status before the response is queued or the stream's last event is handed out.
 * A client that goes away before its answer is complete counts as status 499 (nginx's
 * "client closed request"), streaming or not. Lock order: a request's mu, then the
 * server's mu (never the other way).
 */
#include "serve/http.h"

#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "base/timer.h"
#include "serve/api.h"
#include "serve/http_gate.h"

#define HTTP_WAIT_S 0.1 /* wake-up period of a waiting thread */
#ifndef HTTP_IDLE_TIMEOUT_S
#define HTTP_IDLE_TIMEOUT_S 120 /* an idle connection (slow headers or body) is closed */
#endif
#define HTTP_MAX_CONN     4096        /* upper bound of the connection (= thread) limit */
#define HTTP_DISCARD_MAX  (64u << 20) /* over-limit body bytes read (and dropped) before 413 */
#define HTTP_STOP_GRACE_S 3.0         /* tpm_http_stop waits this long for open answers to end */

typedef enum {
    ROUTE_NONE = 0,
    ROUTE_COMPLETIONS,
    ROUTE_CHAT,
    ROUTE_EMBEDDINGS,
    ROUTE_MODELS,
    ROUTE_MODEL, /* /v1/models/{id} */
    ROUTE_HEALTH,
    ROUTE_METRICS,
    ROUTE_TOKENIZE,
    ROUTE_DETOKENIZE,
    ROUTE_ADMIN_PUSH,
    ROUTE_ADMIN_RELOAD,
    ROUTE_TOKENIZER_INFO,
} http_route_t;

static const struct {
    const char  *path;
    http_route_t route;
    int          post; /* 1: POST with a JSON body; 0: GET (and HEAD) */
} http_routes[] = {
    {"/v1/completions", ROUTE_COMPLETIONS, 1},
    {"/v1/chat/completions", ROUTE_CHAT, 1},
    {"/v1/embeddings", ROUTE_EMBEDDINGS, 1},
    {"/v1/models", ROUTE_MODELS, 0},
    {"/health", ROUTE_HEALTH, 0},
    {"/v1/health", ROUTE_HEALTH, 0},
    {"/metrics", ROUTE_METRICS, 0},
    {"/tokenize", ROUTE_TOKENIZE, 1},
    {"/detokenize", ROUTE_DETOKENIZE, 1},
    {"/admin/push", ROUTE_ADMIN_PUSH, 1},
    {"/admin/reload", ROUTE_ADMIN_RELOAD, 1},
    {"/tokenizer_info", ROUTE_TOKENIZER_INFO, 0},
};

#define N_ROUTES      (sizeof(http_routes) / sizeof(http_routes[0]))
#define MODELS_PREFIX "/v1/models/"

typedef struct http_req http_req_t;

struct tpm_http {
    struct MHD_Daemon     *daemon;
    tpm_http_gate_t       *gate; /* the listening socket: hands well-formed connections over */
    tpm_serve_queue_t     *q;
    tpm_serve_stats_t     *stats;
    const tpm_tokenizer_t *tok;
    tpm_api_limits_t       lim;
    char                   model[256];
    char                   api_key[256];
    size_t                 api_key_len;
    size_t                 max_body;
    int                    slots;
    int64_t                created;
    int                    stopping; /* __atomic: set once by tpm_http_stop */

    pthread_mutex_t   mu;        /* guards everything below */
    int               refs;      /* 1 for the owner + 1 per live request context */
    int               in_flight; /* requests between their first call and http_completed */
    uint64_t          n_requests;
    tpm_api_metrics_t metrics;
    http_req_t       *active; /* requests whose job the engine holds */
};

struct http_req {
    tpm_http_t            *h;
    struct MHD_Connection *conn;
    http_route_t           route;
    char                   method[16];
    char                   url[256]; /* for log lines; truncated */
    int                    fd;
    double                 t_arrival;
    int                    responded; /* a response is queued: ignore further upload data */
    int                    too_big;   /* the body crossed max_body: read on, drop, answer 413 */
    size_t                 n_dropped;

    char  *body; /* request body, at most h->max_body bytes */
    size_t n_body, cap_body;

    /* completion state, set by the MHD thread before submit */
    tpm_serve_job_t *job;
    int              stream, include_usage, chat, echo;
    char             id[48];
    int64_t          created;
    double           t_submit;

    /* shared with the engine thread: under mu */
    pthread_mutex_t    mu;
    pthread_cond_t     cv;
    int                refs;
    char              *gen; /* generated bytes (cut at a stop string) */
    size_t             n_gen, cap_gen;
    int                n_tokens;
    int                done;           /* on_done was called */
    int                stop_hit;       /* a stop string ended the text: final, job cancelled */
    int                failed;         /* out of memory while collecting tokens */
    int                finish_counted; /* request_finished_total has this request (engine thread) */
    tpm_finish_t       finish;
    double             t_first, t_last;
    tpm_api_logprob_t *lps; /* log-probabilities, in token order (echoed prompt first) */
    float             *emb; /* an embedding job's vector (n_emb floats) */
    int                n_emb;
    int                n_lps, cap_lps;
    int                lp_hidden; /* logprobs only for best_of's ranking: not in the answer */

    /* stream writer state (the connection's thread only) */
    size_t sent;      /* bytes of gen already sent */
    int    role_sent; /* chat: the first delta (with the role) went out */
    char  *out;       /* pending SSE bytes */
    size_t n_out, off_out, cap_out;
    int    end;
    double t_write;
    int    stream_open;    /* the 200 headers of a stream are queued (connection thread) */
    int    status_counted; /* http_requests_total has this request (connection thread) */

    http_req_t *prev, *next; /* h->active */
};

/* ---- small helpers ------------------------------------------------------------------------ */

static int http_stopping(tpm_http_t *h)
{
    return __atomic_load_n(&h->stopping, __ATOMIC_ACQUIRE);
}

/* the server is going down: tpm_http_stop ran, or the engine got SIGTERM (stats->stop) and
 * is cancelling its jobs before it stops the front-end */
static int http_closing(tpm_http_t *h)
{
    return http_stopping(h) || h->stats->stop;
}

/* timed wait on r->cv for HTTP_WAIT_S (CLOCK_MONOTONIC condition variable) */
static void http_wait(http_req_t *r)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += (long)(HTTP_WAIT_S * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&r->cv, &r->mu, &ts);
}

/* the client closed its end (FIN or reset): nobody will read the answer */
static int http_peer_gone(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLRDHUP, .revents = 0};

    if (fd < 0) {
        return 0;
    }
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

static uint64_t http_mix(uint64_t x)
{
    /* splitmix64 finalizer: distinct request counters give unrelated ids and seeds */
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static void http_free_server(tpm_http_t *h)
{
    pthread_mutex_destroy(&h->mu);
    free(h);
}

static void http_unref_server(tpm_http_t *h)
{
    int last;

    pthread_mutex_lock(&h->mu);
    last = --h->refs == 0;
    pthread_mutex_unlock(&h->mu);
    if (last) {
        http_free_server(h);
    }
}

static http_req_t *http_req_new(tpm_http_t *h, struct MHD_Connection *conn)
{
    http_req_t                     *r = calloc(1, sizeof(*r));
    pthread_condattr_t              attr;
    const union MHD_ConnectionInfo *ci;

    if (r == NULL) {
        tpm_log_error("http: out of memory for a request context");
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &attr);
    pthread_condattr_destroy(&attr);
    r->h         = h;
    r->conn      = conn;
    r->refs      = 1; /* the MHD connection's, dropped in http_completed */
    r->t_arrival = tpm_time_now();
    ci           = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    r->fd        = ci != NULL ? (int)ci->connect_fd : -1;
    pthread_mutex_lock(&h->mu);
    h->refs++;
    h->in_flight++;
    h->n_requests++;
    pthread_mutex_unlock(&h->mu);
    return r;
}

static void http_req_unref(http_req_t *r)
{
    int last;

    pthread_mutex_lock(&r->mu);
    last = --r->refs == 0;
    pthread_mutex_unlock(&r->mu);
    if (!last) {
        return;
    }
    tpm_api_job_free(r->job);
    free(r->body);
    free(r->gen);
    free(r->out);
    free(r->lps);
    free(r->emb);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    http_unref_server(r->h);
    free(r);
}

static void http_active_remove(tpm_http_t *h, http_req_t *r)
{
    pthread_mutex_lock(&h->mu);
    if (r->prev != NULL) {
        r->prev->next = r->next;
    } else if (h->active == r) {
        h->active = r->next;
    }
    if (r->next != NULL) {
        r->next->prev = r->prev;
    }
    r->prev = r->next = NULL;
    pthread_mutex_unlock(&h->mu);
}

/*
 * Append @p n bytes to the growable buffer (*buf, *len, *cap), doubling from at least 256
 * bytes and never beyond @p max: 1 done, 0 the result would exceed max, -1 out of memory.
 */
static int buf_append(char **buf, size_t *len, size_t *cap, const char *s, size_t n, size_t max)
{
    if (n > max || *len > max - n) {
        return 0;
    }
    if (*len + n > *cap) {
        size_t c = *cap > 0 ? *cap : 256;
        char  *b;

        while (c < *len + n) {
            c = c > max / 2 ? max : 2 * c;
        }
        b = realloc(*buf, c);
        if (b == NULL) {
            return -1;
        }
        *buf = b;
        *cap = c;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    return 1;
}

/* count the request in http_requests_total once, by @p status (connection thread) */
static void http_count_status(http_req_t *r, int status)
{
    if (r->status_counted) {
        return;
    }
    r->status_counted = 1;
    pthread_mutex_lock(&r->h->mu);
    tpm_api_metrics_count(&r->h->metrics, status);
    pthread_mutex_unlock(&r->h->mu);
}

/* ---- engine callbacks (engine thread) ------------------------------------------------------ */

/*
 * Count the request in request_finished_total (and its latency) once, under r->mu and
 * before the flag that releases the client is set (engine thread).
 */
static void http_count_finish(http_req_t *r, tpm_finish_t reason, double t_end)
{
    tpm_http_t *h = r->h;

    if (r->finish_counted) {
        return;
    }
    r->finish_counted = 1;
    pthread_mutex_lock(&h->mu);
    if ((int)reason >= 0 && (int)reason < 4) {
        h->metrics.finished[reason]++;
    }
    if (reason == TPM_FINISH_STOP || reason == TPM_FINISH_LENGTH) {
        tpm_api_hist_observe(&h->metrics.e2e, t_end - r->t_arrival);
    }
    pthread_mutex_unlock(&h->mu);
}

static int http_gen_append(http_req_t *r, const char *text, size_t len)
{
    return buf_append(&r->gen, &r->n_gen, &r->cap_gen, text, len, SIZE_MAX) == 1;
}

static void http_on_token(tpm_serve_job_t *job, int32_t token, const char *text, size_t text_len)
{
    http_req_t *r   = job->user;
    tpm_http_t *h   = r->h;
    double      now = tpm_time_now(), ttft = -1.0, gap = -1.0;

    (void)token;
    pthread_mutex_lock(&r->mu);
    if (r->done || r->stop_hit || r->failed) {
        /* tokens the engine made before it saw job->cancel: not part of the answer */
        pthread_mutex_unlock(&r->mu);
        return;
    }
    if (text_len > 0 && text != NULL) {
        size_t old = r->n_gen;

        if (!http_gen_append(r, text, text_len)) {
            http_count_finish(r, TPM_FINISH_ERROR, now);
            r->failed   = 1;
            job->cancel = 1;
        } else if (job->stop[0] != NULL) {
            /* a new match must end in the new bytes, so start a stop string's length back */
            size_t from = old > TPM_API_MAX_STOP_BYTES ? old - TPM_API_MAX_STOP_BYTES : 0;
            size_t at   = tpm_api_stop_scan(r->gen, r->n_gen, job->stop, from, NULL);

            if (at != SIZE_MAX) {
                http_count_finish(r, TPM_FINISH_STOP, now);
                r->n_gen    = at;
                r->stop_hit = 1;
                job->cancel = 1;
            }
        }
    }
    if (!r->failed) {
        r->n_tokens++;
        if (r->n_tokens == 1) {
            r->t_first = now;
            ttft       = now - r->t_arrival;
        } else {
            gap = now - r->t_last;
        }
        r->t_last = now;
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);

    if (ttft >= 0.0 || gap >= 0.0) {
        pthread_mutex_lock(&h->mu);
        if (ttft >= 0.0) {
            tpm_api_hist_observe(&h->metrics.ttft, ttft);
        } else {
            tpm_api_hist_observe(&h->metrics.itl, gap);
        }
        pthread_mutex_unlock(&h->mu);
    }
}

/* append one entry to r->lps (under r->mu, or before the engine has the job) */
static int http_lp_append(http_req_t *r, const tpm_api_logprob_t *e)
{
    if (r->n_lps == r->cap_lps) {
        int                c = r->cap_lps > 0 ? 2 * r->cap_lps : 32;
        tpm_api_logprob_t *p = realloc(r->lps, (size_t)c * sizeof(*p));

        if (p == NULL) {
            return 0;
        }
        r->lps     = p;
        r->cap_lps = c;
    }
    r->lps[r->n_lps++] = *e;
    return 1;
}

static void http_on_logprob(tpm_serve_job_t *job, int index, int32_t token, float logprob,
                            int n_top, const int32_t *top_ids, const float *top_lp)
{
    http_req_t       *r = job->user;
    tpm_api_logprob_t e;

    (void)index; /* the engine reports in order: the position is the entry's */
    memset(&e, 0, sizeof(e));
    e.token   = token;
    e.logprob = logprob;
    e.has     = 1;
    e.n_top   = n_top < 20 ? n_top : 20;
    memcpy(e.top_ids, top_ids, (size_t)e.n_top * sizeof(int32_t));
    memcpy(e.top_lp, top_lp, (size_t)e.n_top * sizeof(float));
    pthread_mutex_lock(&r->mu);
    if (!r->done && !r->stop_hit && !r->failed && !http_lp_append(r, &e)) {
        http_count_finish(r, TPM_FINISH_ERROR, tpm_time_now());
        r->failed   = 1;
        job->cancel = 1;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
}

static void http_on_embedding(tpm_serve_job_t *job, const float *vec, int C)
{
    http_req_t *r = job->user;

    pthread_mutex_lock(&r->mu);
    r->emb = malloc((size_t)C * sizeof(float));
    if (r->emb != NULL) {
        memcpy(r->emb, vec, (size_t)C * sizeof(float));
        r->n_emb = C;
    }
    pthread_mutex_unlock(&r->mu);
}

static void http_on_done(tpm_serve_job_t *job, tpm_finish_t finish)
{
    http_req_t  *r   = job->user;
    double       now = tpm_time_now();
    tpm_finish_t reason;

    pthread_mutex_lock(&r->mu);
    reason = r->stop_hit ? TPM_FINISH_STOP : (r->failed ? TPM_FINISH_ERROR : finish);
    http_count_finish(r, reason, r->n_tokens > 0 ? r->t_last : now);
    r->done   = 1;
    r->finish = finish;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);

    http_active_remove(r->h, r);
    http_req_unref(r); /* the engine's reference */
}

/* ---- responses ----------------------------------------------------------------------------- */

static enum MHD_Result http_queue(http_req_t *r, int status, char *body, size_t n,
                                  const char *ctype, enum MHD_ResponseMemoryMode mode,
                                  const char *allow)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, body, mode);
    enum MHD_Result      ret;

    if (resp == NULL) {
        if (mode == MHD_RESPMEM_MUST_FREE) {
            free(body);
        }
        tpm_log_error("http: cannot create a response");
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (allow != NULL) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    }
    if (status == 401) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    }
    if (status == 503) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    }
    http_count_status(r, status);
    ret = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->responded = 1;
    tpm_log_debug("http: %s %.200s %d %.1f ms", r->method, r->url, status,
                  (tpm_time_now() - r->t_arrival) * 1e3);
    return ret;
}

static enum MHD_Result http_json(http_req_t *r, int status, char *json, size_t n)
{
    return http_queue(r, status, json, n, "application/json", MHD_RESPMEM_MUST_FREE, NULL);
}

/* answer an error in OpenAI's shape; logged once here (error for a server fault, warn for a
 * bad request and for 503, which is load or shutdown rather than a fault) */
static enum MHD_Result http_error(http_req_t *r, const tpm_api_error_t *err, const char *allow)
{
    char  *json = NULL;
    size_t n    = 0;

    if (err->http_status >= 500 && err->http_status != 503) {
        tpm_log_error("http: %s %.200s: %d %s", r->method, r->url, err->http_status, err->message);
    } else {
        tpm_log_warn("http: %s %.200s: %d %s", r->method, r->url, err->http_status, err->message);
    }
    if (tpm_api_error_json(err, &json, &n) != TPM_OK) {
        static char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                            "\"param\":null,\"code\":null}}";

        return http_queue(r, 500, oom, sizeof(oom) - 1, "application/json", MHD_RESPMEM_PERSISTENT,
                          NULL);
    }
    return http_queue(r, err->http_status, json, n, "application/json", MHD_RESPMEM_MUST_FREE,
                      allow);
}

static enum MHD_Result http_fail(http_req_t *r, int status, const char *type, const char *code,
                                 const char *param, const char *allow, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

static enum MHD_Result http_fail(http_req_t *r, int status, const char *type, const char *code,
                                 const char *param, const char *allow, const char *fmt, ...)
{
    tpm_api_error_t err;
    va_list         ap;

    tpm_api_error_set(&err, status, type, code, param, "%s", "");
    va_start(ap, fmt);
    vsnprintf(err.message, sizeof(err.message), fmt, ap);
    va_end(ap);
    return http_error(r, &err, allow);
}

static enum MHD_Result http_oom(http_req_t *r)
{
    return http_fail(r, 500, "server_error", NULL, NULL, NULL, "out of memory");
}

/* ---- completions --------------------------------------------------------------------------- */

/* the answer of a finished request, built under r->mu by the caller */
static void http_result(http_req_t *r, tpm_api_result_t *res, const char *text, size_t n_text,
                        const char *finish_reason)
{
    double t_first = r->n_tokens > 0 ? r->t_first : r->t_arrival;
    double t_last  = r->n_tokens > 0 ? r->t_last : t_first;

    memset(res, 0, sizeof(*res));
    res->id                = r->id;
    res->model             = r->h->model;
    res->created           = r->created;
    res->text              = text;
    res->text_len          = n_text;
    res->finish_reason     = finish_reason;
    res->prompt_tokens     = r->job->n_prompt;
    res->completion_tokens = r->n_tokens;
    res->ttft_ms           = r->n_tokens > 0 ? (t_first - r->t_arrival) * 1e3 : 0.0;
    res->trainserve        = r->h->stats->versioned;
    res->weights_step      = r->h->stats->weights_step;
    res->prompt_ms         = r->n_tokens > 0 ? (t_first - r->t_submit) * 1e3 : 0.0;
    res->predicted_ms      = (t_last - t_first) * 1e3;
    res->chat              = r->chat;
}

/* how a finished job ends: a finish_reason, or an error (status > 0) */
static const char *http_finish_reason(http_req_t *r, tpm_api_error_t *err)
{
    if (r->stop_hit) {
        return "stop";
    }
    if (r->failed) {
        tpm_api_error_set(err, 500, "server_error", NULL, NULL,
                          "out of memory while collecting the completion");
        return NULL;
    }
    switch (r->finish) {
    case TPM_FINISH_LENGTH: return "length";
    case TPM_FINISH_STOP: return "stop";
    case TPM_FINISH_CANCELLED:
        if (http_closing(r->h)) {
            tpm_api_error_set(err, 503, "server_error", "shutting_down", NULL,
                              "the server is shutting down");
        } else {
            tpm_api_error_set(err, 503, "server_error", "cancelled", NULL,
                              "the request was cancelled by the server");
        }
        return NULL;
    case TPM_FINISH_ERROR: break;
    }
    tpm_api_error_set(err, 500, "server_error", "engine_error", NULL,
                      "the engine failed while generating this completion");
    return NULL;
}

/* the prompt's text followed by the generated text (caller frees *out_p) */
static int http_echo_text(http_req_t *r, char **out_p, size_t *n_p)
{
    const tpm_tokenizer_t *tok = r->h->tok;
    size_t                 cap = r->n_gen + 1, n = 0;
    char                  *out;

    for (int i = 0; i < r->job->n_prompt; i++) {
        size_t len = 0;

        if (tpm_tokenizer_token_bytes(tok, r->job->prompt[i], &len) != NULL) {
            cap += len;
        }
    }
    out = malloc(cap);
    if (out == NULL || tpm_tokenizer_decode(tok, r->job->prompt, (size_t)r->job->n_prompt, out, cap,
                                            &n) != TPM_OK) {
        free(out);
        return 0;
    }
    memcpy(out + n, r->gen, r->n_gen);
    *out_p = out;
    *n_p   = n + r->n_gen;
    return 1;
}

/* the non-streaming answer of a finished completion with @p reason (under r->mu) */
static tpm_status_t http_full_json(http_req_t *r, const char *reason, char **json_p, size_t *n_p)
{
    tpm_api_result_t res;
    char            *echo_text = NULL;
    size_t           n_echo    = 0;
    tpm_status_t     status;

    if (r->echo) {
        /* the answer's text starts with the prompt's */
        if (!http_echo_text(r, &echo_text, &n_echo)) {
            return TPM_ERR_NO_MEMORY;
        }
        http_result(r, &res, echo_text, n_echo, reason);
    } else {
        http_result(r, &res, r->gen, r->n_gen, reason);
    }
    if (r->job->logprobs && !r->lp_hidden) {
        static const tpm_api_logprob_t none; /* lp must not be NULL: "logprobs": {...} */

        res.lp   = r->lps != NULL ? r->lps : &none;
        res.n_lp = r->n_lps;
        res.tok  = r->h->tok;
    }
    status = tpm_api_completion_json(&res, TPM_API_JSON_FULL, json_p, n_p);
    free(echo_text);
    return status;
}

static enum MHD_Result http_completion_wait(http_req_t *r)
{
    tpm_api_error_t err;
    const char     *reason;
    char           *json = NULL;
    size_t          n    = 0;
    tpm_status_t    status;

    pthread_mutex_lock(&r->mu);
    while (!r->done && !r->stop_hit && !r->failed) {
        if (http_stopping(r->h)) {
            r->job->cancel = 1;
            pthread_mutex_unlock(&r->mu);
            return http_fail(r, 503, "server_error", "shutting_down", NULL, NULL,
                             "the server is shutting down");
        }
        http_wait(r);
        if (!r->done && !r->stop_hit && http_peer_gone(r->fd)) {
            r->job->cancel = 1;
            pthread_mutex_unlock(&r->mu);
            tpm_log_info("http: %s: client went away after %d tokens; cancelled", r->id,
                         r->n_tokens);
            http_count_status(r, 499); /* nginx's "client closed request" */
            return MHD_NO;
        }
    }
    reason = http_finish_reason(r, &err);
    if (reason == NULL) {
        pthread_mutex_unlock(&r->mu);
        return http_error(r, &err, NULL);
    }
    if (r->job->embed) {
        status = r->emb != NULL ? tpm_api_embeddings_json(r->h->model, r->emb, r->n_emb,
                                                          r->job->n_prompt, &json, &n)
                                : TPM_ERR_NO_MEMORY;
        pthread_mutex_unlock(&r->mu);
        if (status != TPM_OK) {
            return http_oom(r);
        }
        return http_json(r, 200, json, n);
    }
    status = http_full_json(r, reason, &json, &n);
    pthread_mutex_unlock(&r->mu);
    if (status != TPM_OK) {
        return http_oom(r);
    }
    return http_json(r, 200, json, n);
}

/* append to the pending SSE bytes */
static int http_out(http_req_t *r, const char *s, size_t n)
{
    return buf_append(&r->out, &r->n_out, &r->cap_out, s, n, SIZE_MAX) == 1;
}

/* one "data: JSON\n\n" event; takes ownership of json */
static int http_out_event(http_req_t *r, char *json, size_t n)
{
    int ok =
        json != NULL && http_out(r, "data: ", 6) && http_out(r, json, n) && http_out(r, "\n\n", 2);

    free(json);
    return ok;
}

static int http_out_error(http_req_t *r, const tpm_api_error_t *err)
{
    char  *json = NULL;
    size_t n    = 0;

    tpm_log_warn("http: %s: stream ends with %d %s", r->id, err->http_status, err->message);
    if (tpm_api_error_json(err, &json, &n) != TPM_OK) {
        return 0;
    }
    return http_out_event(r, json, n);
}

/*
 * Wait for something to send and format it as SSE into r->out: new text (held back while
 * it could be the start of a stop string or of a split UTF-8 character), the final chunk
 * with finish_reason and timings, the usage chunk, and [DONE]. Returns 0 when the stream
 * must be dropped (the client went away, or out of memory).
 */
static int http_sse_fill(http_req_t *r)
{
    tpm_http_t      *h = r->h;
    tpm_api_result_t res;
    tpm_api_error_t  err;
    char            *json = NULL, *text = NULL;
    size_t           n = 0, end = 0, n_text;
    int              finished = 0, stopping = 0, ok = 1;
    const char      *reason = NULL;

    pthread_mutex_lock(&r->mu);
    for (;;) {
        finished = r->done || r->stop_hit || r->failed;
        if (finished) {
            end = r->n_gen;
        } else {
            size_t safe = r->n_gen;

            if (r->job->stop[0] != NULL) {
                (void)tpm_api_stop_scan(r->gen, r->n_gen, r->job->stop, r->n_gen, &safe);
            }
            end = safe > r->sent
                      ? r->sent + tpm_api_utf8_complete_len(r->gen + r->sent, safe - r->sent)
                      : r->sent;
        }
        stopping = http_stopping(h);
        if (finished || end > r->sent || stopping) {
            break;
        }
        if (tpm_time_now() - r->t_write >= TPM_API_SSE_KEEPALIVE_S) {
            /* a comment line: keeps proxies and client timeouts from closing a long wait */
            pthread_mutex_unlock(&r->mu);
            r->t_write = tpm_time_now();
            return http_out(r, ": keep-alive\n\n", 14);
        }
        http_wait(r);
        if (!r->done && !r->stop_hit && http_peer_gone(r->fd)) {
            r->job->cancel = 1;
            pthread_mutex_unlock(&r->mu);
            tpm_log_info("http: %s: client went away after %d tokens; cancelled", r->id,
                         r->n_tokens);
            http_count_status(r, 499);
            return 0;
        }
    }
    if (!finished && stopping) {
        r->job->cancel = 1;
    }
    n_text = end - r->sent;
    if (n_text > 0) {
        text = malloc(n_text);
        if (text == NULL) {
            pthread_mutex_unlock(&r->mu);
            return 0;
        }
        memcpy(text, r->gen + r->sent, n_text);
        r->sent = end;
    }
    if (finished) {
        reason = http_finish_reason(r, &err);
    }
    http_result(r, &res, text, n_text, NULL);
    pthread_mutex_unlock(&r->mu);

    if (n_text > 0) {
        res.first    = !r->role_sent;
        r->role_sent = 1;
        ok           = tpm_api_completion_json(&res, TPM_API_JSON_CHUNK, &json, &n) == TPM_OK &&
             http_out_event(r, json, n);
    }
    free(text);
    res.text     = "";
    res.text_len = 0;
    if (ok && finished && reason != NULL) {
        res.first         = !r->role_sent;
        r->role_sent      = 1;
        res.finish_reason = reason;
        ok = tpm_api_completion_json(&res, TPM_API_JSON_CHUNK, &json, &n) == TPM_OK &&
             http_out_event(r, json, n);
        if (ok && r->include_usage) {
            ok = tpm_api_completion_json(&res, TPM_API_JSON_USAGE, &json, &n) == TPM_OK &&
                 http_out_event(r, json, n);
        }
    } else if (ok && finished) {
        ok = http_out_error(r, &err);
    } else if (ok && stopping) {
        tpm_api_error_set(&err, 503, "server_error", "shutting_down", NULL,
                          "the server is shutting down");
        ok = http_out_error(r, &err);
    }
    if (ok && (finished || stopping)) {
        /* the stream's status is known now, before its last bytes go out: 200 for a normal
         * end, else the status the same request without streaming would have got */
        http_count_status(r, finished && reason != NULL ? 200 : err.http_status);
        ok     = http_out(r, "data: [DONE]\n\n", 14);
        r->end = 1;
    }
    return ok;
}

static ssize_t http_sse_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    http_req_t *r = cls;

    (void)pos;
    for (;;) {
        if (r->off_out < r->n_out) {
            size_t n = r->n_out - r->off_out < max ? r->n_out - r->off_out : max;

            memcpy(buf, r->out + r->off_out, n);
            r->off_out += n;
            r->t_write = tpm_time_now();
            return (ssize_t)n;
        }
        if (r->end) {
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        r->n_out = r->off_out = 0;
        if (!http_sse_fill(r)) {
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
}

static void http_sse_free(void *cls)
{
    http_req_unref(cls); /* the streaming response's reference */
}

static enum MHD_Result http_completion_stream(http_req_t *r)
{
    struct MHD_Response *resp;
    enum MHD_Result      ret;

    resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, http_sse_reader, r,
                                             http_sse_free);
    if (resp == NULL) {
        pthread_mutex_lock(&r->mu);
        r->job->cancel = 1;
        pthread_mutex_unlock(&r->mu);
        return http_oom(r);
    }
    pthread_mutex_lock(&r->mu);
    r->refs++;
    pthread_mutex_unlock(&r->mu);
    r->t_write = tpm_time_now();
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    ret            = MHD_queue_response(r->conn, MHD_HTTP_OK, resp);
    r->responded   = 1;
    r->stream_open = 1; /* counted when it ends (http_sse_fill, http_completed) */
    MHD_destroy_response(resp);
    return ret;
}

/*
 * Hand the parsed job @p c to the engine as request @p r's: callbacks, the id, the engine's
 * reference and a place in the active list, then the queue. 1 when queued; 0 with @p err set
 * (the job stays r's and is freed with it).
 */
static int http_submit(http_req_t *r, const tpm_api_completion_t *c, uint64_t seq,
                       tpm_api_error_t *err)
{
    tpm_http_t  *h = r->h;
    tpm_status_t status;

    r->job           = c->job;
    r->stream        = c->stream;
    r->include_usage = c->include_usage;
    r->chat          = c->chat;
    r->echo          = c->echo;
    r->created       = (int64_t)time(NULL);
    snprintf(r->id, sizeof(r->id), "%s-%016" PRIx64 "%08" PRIx32,
             r->chat ? "chatcmpl" : (r->route == ROUTE_EMBEDDINGS ? "emb" : "cmpl"), http_mix(seq),
             (uint32_t)seq);
    r->job->user     = r;
    r->job->on_token = http_on_token;
    r->job->on_done  = http_on_done;
    if (r->job->embed) {
        r->job->on_embedding = http_on_embedding;
    }
    if (r->job->logprobs) {
        r->job->on_logprob = http_on_logprob;
        if (r->job->echo) {
            /* the first prompt token has no log-probability: null in the answer */
            tpm_api_logprob_t first;

            memset(&first, 0, sizeof(first));
            first.token = r->job->prompt[0];
            if (!http_lp_append(r, &first)) {
                tpm_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
                return 0;
            }
        }
    }
    r->t_submit = r->job->t_submit = tpm_time_now();

    if (http_closing(h)) {
        tpm_api_error_set(err, 503, "server_error", "shutting_down", NULL,
                          "the server is shutting down");
        return 0;
    }
    /* the engine's reference and a place in the active list, before the engine can see it */
    pthread_mutex_lock(&r->mu);
    r->refs++;
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_lock(&h->mu);
    r->next = h->active;
    if (h->active != NULL) {
        h->active->prev = r;
    }
    h->active = r;
    pthread_mutex_unlock(&h->mu);
    status = tpm_serve_queue_push(h->q, r->job);
    if (status != TPM_OK) {
        http_active_remove(h, r);
        pthread_mutex_lock(&r->mu);
        r->refs--; /* never reached the engine; the connection still holds one */
        pthread_mutex_unlock(&r->mu);
        if (status == TPM_ERR_OVERFLOW && http_closing(h)) {
            tpm_api_error_set(err, 503, "server_error", "shutting_down", NULL,
                              "the server is shutting down");
        } else if (status == TPM_ERR_OVERFLOW) {
            tpm_api_error_set(err, 503, "server_error", "queue_full", NULL,
                              "the server is busy: %d requests are already waiting "
                              "(--max-queue); retry later",
                              tpm_serve_queue_len(h->q));
        } else {
            tpm_api_error_set(err, 500, "server_error", NULL, NULL,
                              "the request could not be queued: %s", tpm_status_str(status));
        }
        return 0;
    }
    tpm_log_debug("http: %s queued: %d prompt tokens, max_tokens %d%s", r->id, r->job->n_prompt,
                  r->job->max_tokens, r->stream ? ", streaming" : "");
    if (http_stopping(h)) {
        r->job->cancel = 1; /* tpm_http_stop may have passed the active list already */
    }
    return 1;
}

/* ---- several completions in one request (n, best_of, a list of prompts) ------------------- */

/* a sub-request of @p parent: its own job and answer state, owned by the parent (one ref) */
static http_req_t *http_sub_new(http_req_t *parent)
{
    tpm_http_t *h = parent->h;
    http_req_t *c = http_req_new(h, parent->conn);

    if (c == NULL) {
        return NULL;
    }
    pthread_mutex_lock(&h->mu);
    h->in_flight--; /* the connection is the parent's: counted once */
    h->n_requests--;
    pthread_mutex_unlock(&h->mu);
    c->route     = parent->route;
    c->t_arrival = parent->t_arrival;
    return c;
}

/* sum of the generated tokens' log-probabilities (best_of's ranking; under c->mu) */
static double http_gen_logprob(const http_req_t *c)
{
    int    skip = c->job->echo ? c->job->n_prompt : 0;
    double s    = 0.0;

    for (int i = skip; i < c->n_lps; i++) {
        s += c->lps[i].has ? (double)c->lps[i].logprob : 0.0;
    }
    return s;
}

/* wait until sub-request @p c has finished; 0: stopped or the client left (all cancelled) */
static int http_sub_wait(http_req_t *r, http_req_t **subs, int n_sub, http_req_t *c, int *gone_p)
{
    pthread_mutex_lock(&c->mu);
    while (!c->done && !c->stop_hit && !c->failed) {
        int stop = http_stopping(r->h), gone = !stop && http_peer_gone(r->fd);

        if (stop || gone) {
            pthread_mutex_unlock(&c->mu);
            for (int k = 0; k < n_sub; k++) {
                pthread_mutex_lock(&subs[k]->mu);
                subs[k]->job->cancel = 1;
                pthread_mutex_unlock(&subs[k]->mu);
            }
            *gone_p = gone;
            return 0;
        }
        http_wait(c);
    }
    pthread_mutex_unlock(&c->mu);
    return 1;
}

static enum MHD_Result http_completions_multi(http_req_t *r, const tpm_api_fanout_t *f,
                                              uint64_t seq)
{
    tpm_http_t     *h      = r->h;
    http_req_t    **subs   = calloc((size_t)f->n_sub, sizeof(*subs));
    double         *score  = calloc((size_t)f->n_sub, sizeof(double));
    char          **texts  = calloc((size_t)f->n_sub, sizeof(char *));
    size_t         *lens   = calloc((size_t)f->n_sub, sizeof(size_t));
    char           *json   = NULL;
    size_t          n_json = 0;
    tpm_api_error_t err;
    int             n_made = 0, n_out = 0, failed = 0, gone = 0, oom = 0;
    int64_t         prompt_tokens = 0, completion_tokens = 0;

    memset(&err, 0, sizeof(err));
    if (subs == NULL || score == NULL || texts == NULL || lens == NULL) {
        free(subs);
        free(score);
        free(texts);
        free(lens);
        return http_oom(r);
    }
    /* parse and queue every candidate; the first failure ends the request */
    for (int k = 0; k < f->n_sub && !failed; k++) {
        tpm_api_completion_t c;
        tpm_status_t         st;
        uint64_t             sseq = http_mix(seq + (uint64_t)k);

        subs[k] = http_sub_new(r);
        if (subs[k] == NULL) {
            tpm_api_error_set(&err, 500, "server_error", NULL, NULL, "out of memory");
            failed = 1;
            break;
        }
        n_made++;
        if (r->route == ROUTE_CHAT) {
            st = tpm_api_chat_parse(f->bodies[k], f->lens[k], &h->lim, h->tok, sseq, &c, &err);
        } else {
            st =
                tpm_api_completion_parse(f->bodies[k], f->lens[k], &h->lim, h->tok, sseq, &c, &err);
        }
        if (st != TPM_OK) {
            failed = 1;
            break;
        }
        if (f->best_of > f->n && !c.job->logprobs) {
            /* the ranking needs each candidate's log-probability, the answer does not */
            c.job->logprobs     = 1;
            c.job->top_logprobs = 0;
            subs[k]->lp_hidden  = 1;
        }
        if (!http_submit(subs[k], &c, sseq, &err)) {
            failed = 1;
        }
    }
    for (int k = 0; k < n_made && failed; k++) {
        if (subs[k]->job != NULL) {
            subs[k]->job->cancel = 1;
        }
    }
    /* wait for all, then collect the answers */
    for (int k = 0; k < n_made && !failed; k++) {
        if (!http_sub_wait(r, subs, n_made, subs[k], &gone)) {
            failed = 1;
            if (!gone) {
                tpm_api_error_set(&err, 503, "server_error", "shutting_down", NULL,
                                  "the server is shutting down");
            }
        }
    }
    for (int i = 0; !failed && !oom && i < f->n_prompts; i++) {
        int order[TPM_API_MAX_CHOICES];

        /* best_of: the n candidates with the largest sum of log-probabilities, best first;
         * otherwise the n samples in order */
        for (int j = 0; j < f->best_of; j++) {
            int k = i * f->best_of + j, at = j;

            pthread_mutex_lock(&subs[k]->mu);
            score[k] = http_gen_logprob(subs[k]);
            pthread_mutex_unlock(&subs[k]->mu);
            if (f->best_of > f->n) {
                while (at > 0 && score[i * f->best_of + order[at - 1]] < score[k]) {
                    order[at] = order[at - 1];
                    at--;
                }
            }
            order[at] = j;
        }
        for (int j = 0; !failed && !oom && j < f->best_of; j++) {
            http_req_t *c = subs[i * f->best_of + order[j]];
            const char *reason;

            pthread_mutex_lock(&c->mu);
            reason = http_finish_reason(c, &err);
            if (reason == NULL) {
                failed = 1;
            } else if (j < f->n) {
                oom = http_full_json(c, reason, &texts[n_out], &lens[n_out]) != TPM_OK;
                n_out += !oom;
            }
            completion_tokens += c->n_tokens; /* every candidate was generated */
            if (j == 0) {
                prompt_tokens += c->job->n_prompt;
            }
            pthread_mutex_unlock(&c->mu);
        }
    }
    if (!failed && !oom) {
        oom = tpm_api_choices_merge((const char *const *)texts, lens, n_out, prompt_tokens,
                                    completion_tokens, &json, &n_json) != TPM_OK;
    }
    for (int k = 0; k < n_made; k++) {
        http_req_unref(subs[k]);
    }
    for (int k = 0; k < n_out; k++) {
        free(texts[k]);
    }
    free(subs);
    free(score);
    free(texts);
    free(lens);
    if (gone) {
        tpm_log_info("http: client went away during a request for %d completions; cancelled",
                     f->n_sub);
        http_count_status(r, 499);
        return MHD_NO;
    }
    if (failed) {
        return http_error(r, &err, NULL);
    }
    if (oom) {
        return http_oom(r);
    }
    return http_json(r, 200, json, n_json);
}

static enum MHD_Result http_completions(http_req_t *r)
{
    tpm_http_t          *h = r->h;
    tpm_api_completion_t c;
    tpm_api_error_t      err;
    tpm_status_t         status;
    uint64_t             seq;

    if (!h->stats->ready) {
        return http_fail(r, 503, "server_error", "model_loading", NULL, NULL,
                         "the model is still loading; retry when GET /health answers 200");
    }
    pthread_mutex_lock(&h->mu);
    seq = h->n_requests;
    pthread_mutex_unlock(&h->mu);
    seq = http_mix(seq ^ ((uint64_t)(r->t_arrival * 1e9) << 20));
    if (r->route != ROUTE_EMBEDDINGS) {
        tpm_api_fanout_t f;
        enum MHD_Result  ret;

        if (tpm_api_fanout(r->body != NULL ? r->body : "", r->n_body, r->route == ROUTE_CHAT, &f,
                           &err) != TPM_OK) {
            return http_error(r, &err, NULL);
        }
        if (f.n_sub > 0) {
            ret = http_completions_multi(r, &f, seq);
            tpm_api_fanout_free(&f);
            return ret;
        }
    }
    if (r->route == ROUTE_CHAT) {
        status = tpm_api_chat_parse(r->body != NULL ? r->body : "", r->n_body, &h->lim, h->tok, seq,
                                    &c, &err);
    } else if (r->route == ROUTE_EMBEDDINGS) {
        memset(&c, 0, sizeof(c));
        status = tpm_api_embeddings_parse(r->body != NULL ? r->body : "", r->n_body, &h->lim,
                                          h->tok, &c.job, &err);
    } else {
        status = tpm_api_completion_parse(r->body != NULL ? r->body : "", r->n_body, &h->lim,
                                          h->tok, seq, &c, &err);
    }
    if (status != TPM_OK) {
        return http_error(r, &err, NULL);
    }
    if (!http_submit(r, &c, seq, &err)) {
        return http_error(r, &err, NULL);
    }
    return r->stream ? http_completion_stream(r) : http_completion_wait(r);
}

/* ---- other endpoints ----------------------------------------------------------------------- */

static enum MHD_Result http_health(http_req_t *r)
{
    static char ok[]      = "{\"status\":\"ok\"}";
    static char loading[] = "{\"status\":\"loading\"}";
    static char closing[] = "{\"status\":\"shutting down\"}";

    if (http_closing(r->h)) {
        return http_queue(r, 503, closing, sizeof(closing) - 1, "application/json",
                          MHD_RESPMEM_PERSISTENT, NULL);
    }
    if (!r->h->stats->ready) {
        return http_queue(r, 503, loading, sizeof(loading) - 1, "application/json",
                          MHD_RESPMEM_PERSISTENT, NULL);
    }
    return http_queue(r, 200, ok, sizeof(ok) - 1, "application/json", MHD_RESPMEM_PERSISTENT, NULL);
}

static enum MHD_Result http_metrics(http_req_t *r)
{
    tpm_http_t       *h = r->h;
    tpm_api_metrics_t m;
    tpm_api_gauges_t  g;
    char             *text = NULL;
    size_t            n    = 0;

    /* this request counts itself as a 200 before it is answered */
    pthread_mutex_lock(&h->mu);
    tpm_api_metrics_count(&h->metrics, 200);
    m = h->metrics;
    h->metrics.http_requests[0]--;
    pthread_mutex_unlock(&h->mu);
    g.running          = h->stats->running;
    g.waiting          = tpm_serve_queue_len(h->q);
    g.slots            = h->slots;
    g.ready            = h->stats->ready;
    g.prompt_tokens    = h->stats->prompt_tokens;
    g.generated_tokens = h->stats->generated_tokens;
    g.trainserve       = h->stats->versioned;
    g.weights_step     = h->stats->weights_step;
    g.pushes           = h->stats->pushes;
    g.push_bytes       = h->stats->push_bytes;
    g.push_seconds     = h->stats->push_seconds;
    g.push_bounds      = tpm_serve_push_bounds;
    g.n_push_buckets   = TPM_SERVE_PUSH_BUCKETS;
    for (int b = 0; b < TPM_SERVE_PUSH_BUCKETS; b++) {
        g.push_le[b] = h->stats->push_le[b];
    }
    g.since_swap = h->stats->last_swap > 0 ? tpm_time_now() - h->stats->last_swap : -1.0;
    if (tpm_api_metrics_text(&m, &g, &text, &n) != TPM_OK) {
        return http_oom(r);
    }
    return http_queue(r, 200, text, n, "text/plain; version=0.0.4; charset=utf-8",
                      MHD_RESPMEM_MUST_FREE, NULL);
}

static enum MHD_Result http_models(http_req_t *r, const char *id)
{
    tpm_http_t *h    = r->h;
    char       *json = NULL;
    size_t      n    = 0;

    if (id != NULL && strcmp(id, h->model) != 0) {
        return http_fail(r, 404, "invalid_request_error", "model_not_found", "model", NULL,
                         "the model '%.128s' does not exist; this server serves '%.128s'", id,
                         h->model);
    }
    if (tpm_api_models_json(h->model, h->lim.n_ctx, h->created, id != NULL,
                            h->stats->versioned ? h->stats->weights_step : -1, &json,
                            &n) != TPM_OK) {
        return http_oom(r);
    }
    return http_json(r, 200, json, n);
}

/*
 * POST /admin/push and /admin/reload: set the request flag the engine thread polls and answer
 * 202 with the weights step served now. Admin endpoints need --api-key (checked like every
 * route; without a key configured they are refused with 403), and a server that can do it.
 */
static enum MHD_Result http_admin_request(http_req_t *r, const char *what, int available,
                                          const char *code, const char *needs,
                                          volatile int *flag_p, const char *object)
{
    tpm_http_t *h = r->h;
    char       *json;
    int         n;

    if (h->api_key_len == 0) {
        return http_fail(r, 403, "invalid_request_error", "admin_disabled", NULL, NULL,
                         "POST %s needs the server to run with --api-key", what);
    }
    if (!available) {
        return http_fail(r, 400, "invalid_request_error", code, NULL, NULL, "POST %s needs %s",
                         what, needs);
    }
    *flag_p = 1;
    json    = malloc(128);
    if (json == NULL) {
        return http_oom(r);
    }
    n = snprintf(json, 128, "{\"object\":\"%s\",\"status\":\"requested\",\"weights_step\":%lld}",
                 object, (long long)h->stats->weights_step);
    return http_json(r, 202, json, (size_t)n);
}

/* POST /admin/push (trainserve): the trainer pushes at its next step boundary (serve/swap.c) */
static enum MHD_Result http_admin_push(http_req_t *r)
{
    tpm_serve_stats_t *st = r->h->stats;

    return http_admin_request(r, "/admin/push", st->trainserve, "push_unavailable",
                              "--mode=trainserve (this server serves a checkpoint)",
                              &st->push_requested, "push_request");
}

/* POST /admin/reload (serve --watch): look for a newer checkpoint now (serve/watch.c) */
static enum MHD_Result http_admin_reload(http_req_t *r)
{
    tpm_serve_stats_t *st = r->h->stats;

    return http_admin_request(r, "/admin/reload", st->reloadable, "reload_unavailable",
                              "--mode=serve --ckpt=DIR --watch", &st->reload_requested,
                              "reload_request");
}

static enum MHD_Result http_tokenizer_info(http_req_t *r)
{
    char  *json = NULL;
    size_t n    = 0;

    if (tpm_api_tokenizer_info_json(r->h->tok, r->h->lim.n_ctx, &json, &n) != TPM_OK) {
        return http_oom(r);
    }
    return http_json(r, 200, json, n);
}

static enum MHD_Result http_tokens(http_req_t *r)
{
    tpm_api_error_t err;
    char           *json = NULL;
    size_t          n    = 0;
    const char     *body = r->body != NULL ? r->body : "";
    tpm_status_t    status;

    if (r->route == ROUTE_TOKENIZE) {
        status = tpm_api_tokenize(body, r->n_body, r->h->tok, &json, &n, &err);
    } else {
        status = tpm_api_detokenize(body, r->n_body, r->h->tok, &json, &n, &err);
    }
    if (status != TPM_OK) {
        return http_error(r, &err, NULL);
    }
    return http_json(r, 200, json, n);
}

/* ---- request entry --------------------------------------------------------------------------- */

/* constant-time "Authorization: Bearer KEY" check, so response timing does not leak the key */
static int http_authorized(tpm_http_t *h, struct MHD_Connection *conn)
{
    const char   *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    size_t        n;
    unsigned char diff = 0;

    if (h->api_key_len == 0) {
        return 1;
    }
    if (v == NULL || strncasecmp(v, "Bearer ", 7) != 0) {
        return 0;
    }
    v += 7;
    while (*v == ' ') {
        v++;
    }
    n = strlen(v);
    for (size_t i = 0; i < h->api_key_len; i++) {
        diff |= (unsigned char)(h->api_key[i] ^ (i < n ? v[i] : 0));
    }
    return diff == 0 && n == h->api_key_len;
}

/* first call of a request: route, method, key and announced size are checked before the body */
static enum MHD_Result http_begin(http_req_t *r, const char *url, const char *method)
{
    tpm_http_t *h       = r->h;
    int         is_get  = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    int         is_post = strcmp(method, "POST") == 0;
    int         post    = 0;
    const char *cl;

    r->route = ROUTE_NONE;
    for (size_t i = 0; i < N_ROUTES; i++) {
        if (strcmp(url, http_routes[i].path) == 0) {
            r->route = http_routes[i].route;
            post     = http_routes[i].post;
        }
    }
    if (r->route == ROUTE_NONE && strncmp(url, MODELS_PREFIX, strlen(MODELS_PREFIX)) == 0 &&
        url[strlen(MODELS_PREFIX)] != '\0') {
        r->route = ROUTE_MODEL;
    }
    if (r->route == ROUTE_NONE) {
        return http_fail(r, 404, "invalid_request_error", "unknown_url", NULL, NULL,
                         "unknown URL: %.16s %.200s", method, url);
    }
    if ((post && !is_post) || (!post && !is_get)) {
        return http_fail(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                         post ? "POST" : "GET, HEAD",
                         "method %.16s is not allowed for %.200s "
                         "(use %s)",
                         method, url, post ? "POST" : "GET");
    }
    if (r->route != ROUTE_HEALTH && !http_authorized(h, r->conn)) {
        return http_fail(r, 401, "invalid_request_error", "invalid_api_key", NULL, NULL,
                         "a valid API key is required: send 'Authorization: Bearer KEY'");
    }
    cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl != NULL) {
        char              *endp;
        unsigned long long len;

        errno = 0;
        len   = strtoull(cl, &endp, 10);
        if (errno == 0 && endp != cl && len > h->max_body) {
            return http_fail(r, 413, "invalid_request_error", "request_too_large", NULL, NULL,
                             "the request body has %llu bytes, more than the limit of %zu "
                             "bytes (--max-body-bytes)",
                             len, h->max_body);
        }
    }
    /* answer on a later call: a response queued before the request is fully read makes
     * libmicrohttpd close the connection instead of keeping it alive */
    return MHD_YES;
}

static int http_body_append(http_req_t *r, const char *data, size_t n)
{
    return buf_append(&r->body, &r->n_body, &r->cap_body, data, n, r->h->max_body);
}

static enum MHD_Result http_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                    const char *method, const char *version,
                                    const char *upload_data, size_t *upload_data_size,
                                    void **con_cls)
{
    tpm_http_t *h = cls;
    http_req_t *r = *con_cls;

    (void)version;
    if (r == NULL) {
        r = http_req_new(h, conn);
        if (r == NULL) {
            return MHD_NO;
        }
        *con_cls = r;
        snprintf(r->method, sizeof(r->method), "%s", method);
        snprintf(r->url, sizeof(r->url), "%s", url);
        return http_begin(r, url, method);
    }
    if (r->responded) {
        *upload_data_size = 0; /* answered early (413, 401, ...): drop the rest */
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        int ok = r->too_big ? 0 : http_body_append(r, upload_data, *upload_data_size);

        if (ok == 0) {
            /* A body without Content-Length (chunked) crossed the limit. Read the rest and
             * drop it, then answer: a reply sent while the client is still sending is lost
             * to the TCP reset that closing an unread socket causes. Give up past a bound. */
            r->too_big = 1;
            r->n_dropped += *upload_data_size;
            *upload_data_size = 0;
            return r->n_dropped > HTTP_DISCARD_MAX ? MHD_NO : MHD_YES;
        }
        *upload_data_size = 0;
        return ok > 0 ? MHD_YES : http_oom(r);
    }
    if (r->too_big) {
        return http_fail(r, 413, "invalid_request_error", "request_too_large", NULL, NULL,
                         "the request body is larger than the limit of %zu bytes "
                         "(--max-body-bytes)",
                         h->max_body);
    }
    switch (r->route) {
    case ROUTE_COMPLETIONS:
    case ROUTE_CHAT:
    case ROUTE_EMBEDDINGS: return http_completions(r);
    case ROUTE_TOKENIZE:
    case ROUTE_DETOKENIZE: return http_tokens(r);
    case ROUTE_TOKENIZER_INFO: return http_tokenizer_info(r);
    case ROUTE_MODELS: return http_models(r, NULL);
    case ROUTE_MODEL: return http_models(r, r->url + strlen(MODELS_PREFIX));
    case ROUTE_HEALTH: return http_health(r);
    case ROUTE_METRICS: return http_metrics(r);
    case ROUTE_ADMIN_PUSH: return http_admin_push(r);
    case ROUTE_ADMIN_RELOAD: return http_admin_reload(r);
    case ROUTE_NONE: break;
    }
    return MHD_NO;
}

static void http_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                           enum MHD_RequestTerminationCode toe)
{
    http_req_t *r = *con_cls;

    (void)cls;
    (void)conn;
    if (r == NULL) {
        return;
    }
    *con_cls = NULL;
    pthread_mutex_lock(&r->mu);
    if (r->job != NULL && !r->done && !r->stop_hit) {
        /* the connection is over (client gone, timeout, shutdown): stop generating */
        r->job->cancel = 1;
    }
    pthread_mutex_unlock(&r->mu);
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
        tpm_log_debug("http: %s %.200s ended early (code %d)", r->method, r->url, (int)toe);
    }
    if (r->stream_open) {
        http_count_status(r, 499); /* a stream that ended without its [DONE]: client gone */
    }
    pthread_mutex_lock(&r->h->mu);
    r->h->in_flight--;
    pthread_mutex_unlock(&r->h->mu);
    http_req_unref(r);
}

static void http_mhd_log(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void http_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char   msg[512];
    size_t n;

    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) {
        msg[--n] = '\0';
    }
    tpm_log_debug("http: libmicrohttpd: %s", msg);
}

/* ---- start / stop -------------------------------------------------------------------------- */

/* the gate answered a malformed or late request head itself (gate thread) */
static void http_gate_count(void *arg, int http_status)
{
    tpm_http_t *h = arg;

    pthread_mutex_lock(&h->mu);
    tpm_api_metrics_count(&h->metrics, http_status);
    pthread_mutex_unlock(&h->mu);
}

tpm_status_t tpm_http_start(const tpm_config_t *cfg, tpm_serve_queue_t *q, tpm_serve_stats_t *stats,
                            const tpm_tokenizer_t *tok, const tpm_http_model_info_t *info,
                            tpm_http_t **h_p)
{
    struct addrinfo hints, *ai = NULL;
    char            port[16];
    tpm_http_t     *h;
    unsigned        flags, limit;
    int             ret;
    unsigned        port_bound = 0;
    long            conn_limit;

    if (cfg == NULL || q == NULL || stats == NULL || tok == NULL || info == NULL ||
        info->name == NULL || info->n_ctx < 2 || info->vocab < 1 || h_p == NULL) {
        tpm_log_error("http: tpm_http_start needs a config, queue, stats, tokenizer and model "
                      "info with n_ctx >= 2 and vocab >= 1");
        return TPM_ERR_INVALID_ARG;
    }
    h = calloc(1, sizeof(*h));
    if (h == NULL) {
        tpm_log_error("http: out of memory");
        return TPM_ERR_NO_MEMORY;
    }
    pthread_mutex_init(&h->mu, NULL);
    h->refs  = 1;
    h->q     = q;
    h->stats = stats;
    h->tok   = tok;
    snprintf(h->model, sizeof(h->model), "%s", info->name);
    snprintf(h->api_key, sizeof(h->api_key), "%s", cfg->api_key);
    h->api_key_len    = strlen(h->api_key);
    h->max_body       = cfg->max_body_bytes > 0 ? (size_t)cfg->max_body_bytes : 1048576;
    h->slots          = cfg->parallel;
    h->created        = (int64_t)time(NULL);
    h->lim.model      = h->model;
    h->lim.n_ctx      = info->n_ctx;
    h->lim.vocab      = info->vocab;
    h->lim.max_tokens = cfg->max_tokens > 0 ? cfg->max_tokens : 1024;
    if (!tpm_api_chat_template_parse(cfg->chat_template, &h->lim.chat_template)) {
        h->lim.chat_template = TPM_CHAT_CHATML; /* the option table allows only known names */
    }
    tpm_api_metrics_init(&h->metrics);

    memset(&hints, 0, sizeof(hints));
    hints.ai_family   = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags    = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(port, sizeof(port), "%d", cfg->port);
    ret = getaddrinfo(cfg->host[0] != '\0' ? cfg->host : NULL, port, &hints, &ai);
    if (ret != 0) {
        tpm_log_error("http: cannot resolve --host=%s: %s", cfg->host, gai_strerror(ret));
        http_free_server(h);
        return TPM_ERR_INVALID_ARG;
    }
    /* one thread per connection: waiting and streaming handlers may block on the engine */
    flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
            MHD_USE_ITC | MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET;
    if (ai->ai_family == AF_INET6) {
        flags |= MHD_USE_IPv6;
    }
    /* every slot and queue place may hold a connection, plus room for health/metrics probes;
     * beyond the limit new connections are refused, which bounds the thread count */
    conn_limit = (long)cfg->parallel + (long)cfg->max_queue + 64;
    limit      = (unsigned)(conn_limit < HTTP_MAX_CONN ? conn_limit : HTTP_MAX_CONN);
    /* the logger first, so that messages about the other options reach it */
    h->daemon =
        MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, http_handler, h,
                         MHD_OPTION_EXTERNAL_LOGGER, http_mhd_log, h, MHD_OPTION_CONNECTION_LIMIT,
                         limit, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_IDLE_TIMEOUT_S,
                         MHD_OPTION_NOTIFY_COMPLETED, http_completed, h, MHD_OPTION_END);
    if (h->daemon == NULL) {
        tpm_log_error("http: cannot start libmicrohttpd: %s", strerror(errno));
        freeaddrinfo(ai);
        http_free_server(h);
        return TPM_ERR_IO;
    }
    if (tpm_http_gate_start(ai, h->daemon, http_gate_count, h, &port_bound, &h->gate) != TPM_OK) {
        tpm_log_error("http: cannot listen on %s:%d", cfg->host, cfg->port);
        freeaddrinfo(ai);
        MHD_stop_daemon(h->daemon);
        http_free_server(h);
        return TPM_ERR_IO;
    }
    freeaddrinfo(ai);
    tpm_log_info("http: listening on %s:%u: model '%s', context %d tokens, %d slots, queue %d, "
                 "max_tokens %d, body limit %zu bytes, API key %s",
                 cfg->host, port_bound, h->model, h->lim.n_ctx, h->slots, cfg->max_queue,
                 h->lim.max_tokens, h->max_body, h->api_key_len > 0 ? "required" : "not required");
    *h_p = h;
    return TPM_OK;
}

void tpm_http_stop(tpm_http_t *h)
{
    tpm_serve_job_t *job;
    int              n_drained = 0, n_held = 0, n_open = 0;
    double           t0 = tpm_time_now();

    if (h == NULL) {
        return;
    }
    /* stop accepting first, so nothing new starts while the open requests are ended */
    tpm_http_gate_stop(h->gate);
    h->gate = NULL;
    __atomic_store_n(&h->stopping, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&h->mu);
    for (http_req_t *r = h->active; r != NULL; r = r->next) {
        r->job->cancel = 1;
        n_held++;
    }
    pthread_mutex_unlock(&h->mu);
    /* waiting handlers and stream readers see `stopping` within HTTP_WAIT_S and end their
     * answers (503, or a final error event and [DONE]); let those bytes go out before
     * MHD_stop_daemon shuts every socket down and joins the connection threads */
    for (;;) {
        pthread_mutex_lock(&h->mu);
        n_open = h->in_flight;
        pthread_mutex_unlock(&h->mu);
        if (n_open == 0 || tpm_time_now() - t0 > HTTP_STOP_GRACE_S) {
            break;
        }
        nanosleep(&(struct timespec){.tv_sec = 0, .tv_nsec = 10000000L}, NULL);
    }
    if (n_open > 0) {
        tpm_log_warn("http: %d requests still open after %.0f s; closing them", n_open,
                     HTTP_STOP_GRACE_S);
    }
    MHD_stop_daemon(h->daemon);
    h->daemon = NULL;
    /* jobs the engine never took: finish them here; a job the engine holds finishes with
     * its on_done, which drops the last references (the request's, then the server's) */
    while ((job = tpm_serve_queue_pop(h->q)) != NULL) {
        if (job->on_done == http_on_done) {
            job->on_done(job, TPM_FINISH_CANCELLED);
            n_drained++;
        }
    }
    tpm_log_info("http: stopped (%d requests were running or queued, %d taken back from the "
                 "queue)",
                 n_held, n_drained);
    http_unref_server(h);
}
