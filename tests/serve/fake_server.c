/* SPDX-License-Identifier: MIT */
/*
 * fake_server.c: the HTTP front-end (serve/http.c) over a fake engine, for the HTTP tests
 * (tests/serve_http.sh, tests/openai_client.sh) and for load-generator checks without a
 * model. The fake engine is a thread that behaves like the real one as seen through
 * serve.h: it takes jobs from the queue into --parallel slots, and every FAKE_STEP_MS
 * milliseconds emits one token per running job through on_token, then on_done at
 * max_tokens (length), at end-of-text (stop) or when job->cancel is set (cancelled). The
 * tokens spell FAKE_TEXT over and over, so answers are known in advance.
 *
 * Options are tpmpi's own (--host, --port, --api-key, --parallel, --ctx-size, --max-tokens,
 * --max-queue, --max-body-bytes, --log-level). Environment knobs:
 *   FAKE_STEP_MS=5        engine iteration time
 *   FAKE_READY_MS=0       /health answers 503 "loading" for this long after start
 * Prompts that contain "EOT" end with the end-of-text token after 3 tokens; prompts that
 * contain "FAIL" end with an engine error after 1 token. SIGTERM/SIGINT stop the server
 * gracefully (tpm_http_stop, then the engine); exit status 0.
 */
#include "serve/http.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "base/mem.h"
#include "base/timer.h"

#define FAKE_TEXT      "The quick brown fox jumps over the lazy dog. "
#define FAKE_MAX_SLOTS 64

static volatile sig_atomic_t fake_quit;

typedef struct {
    tpm_serve_queue_t     *q;
    tpm_serve_stats_t     *stats;
    const tpm_tokenizer_t *tok;
    int                    slots;
    int                    step_ms;
    int32_t               *text_ids; /* FAKE_TEXT encoded */
    size_t                 n_text_ids;
    volatile int           quit;
} fake_engine_t;

typedef struct {
    tpm_serve_job_t *job;
    int              n;         /* tokens emitted */
    int              eot_after; /* 0 = never */
    int              fail_after;
} fake_slot_t;

static void fake_on_signal(int sig)
{
    (void)sig;
    fake_quit = 1;
}

static void fake_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int fake_prompt_has(const fake_engine_t *e, const tpm_serve_job_t *job, const char *word)
{
    size_t n = 0;
    char  *text;
    int    found;

    /* a size query: TPM_ERR_OVERFLOW is the expected answer */
    (void)tpm_tokenizer_decode(e->tok, job->prompt, (size_t)job->n_prompt, NULL, 0, &n);
    if (n == 0) {
        return 0;
    }
    text = calloc(1, n + 1);
    if (text == NULL) {
        return 0;
    }
    tpm_tokenizer_decode(e->tok, job->prompt, (size_t)job->n_prompt, text, n, &n);
    found = memmem(text, n, word, strlen(word)) != NULL;
    free(text);
    return found;
}

static void fake_finish(fake_engine_t *e, fake_slot_t *s, tpm_finish_t finish)
{
    tpm_serve_job_t *job = s->job;

    if (finish == TPM_FINISH_CANCELLED) {
        tpm_log_info("fake engine: job cancelled after %d tokens", s->n);
    }
    job->n_generated = s->n;
    job->t_done      = tpm_time_now();
    s->job           = NULL;
    e->stats->running--;
    job->on_done(job, finish);
}

static void *fake_engine_main(void *arg)
{
    fake_engine_t *e = arg;
    fake_slot_t    slot[FAKE_MAX_SLOTS];

    memset(slot, 0, sizeof(slot));
    while (!e->quit) {
        int busy = 0;

        /* admit queued jobs into free slots */
        for (int i = 0; i < e->slots; i++) {
            if (slot[i].job == NULL) {
                tpm_serve_job_t *job = tpm_serve_queue_pop(e->q);

                if (job == NULL) {
                    break;
                }
                memset(&slot[i], 0, sizeof(slot[i]));
                slot[i].job        = job;
                slot[i].eot_after  = fake_prompt_has(e, job, "EOT") ? 3 : 0;
                slot[i].fail_after = fake_prompt_has(e, job, "FAIL") ? 1 : 0;
                e->stats->running++;
                e->stats->prompt_tokens += (uint64_t)job->n_prompt;
            }
        }
        e->stats->waiting = tpm_serve_queue_len(e->q);
        for (int i = 0; i < e->slots; i++) {
            fake_slot_t     *s = &slot[i];
            tpm_serve_job_t *job;
            int32_t          id;
            const char      *text;
            size_t           len = 0;

            if (s->job == NULL) {
                continue;
            }
            busy = 1;
            job  = s->job;
            if (job->cancel) {
                fake_finish(e, s, TPM_FINISH_CANCELLED);
                continue;
            }
            if (s->fail_after > 0 && s->n >= s->fail_after) {
                fake_finish(e, s, TPM_FINISH_ERROR);
                continue;
            }
            if (s->eot_after > 0 && s->n == s->eot_after) {
                id   = tpm_tokenizer_eot(e->tok);
                text = NULL;
            } else {
                id   = e->text_ids[(size_t)s->n % e->n_text_ids];
                text = tpm_tokenizer_token_bytes(e->tok, id, &len);
            }
            if (s->n == 0) {
                job->t_first_token = tpm_time_now();
            }
            s->n++;
            e->stats->generated_tokens++;
            job->on_token(job, id, text, len);
            if (id == tpm_tokenizer_eot(e->tok)) {
                fake_finish(e, s, TPM_FINISH_STOP);
            } else if (s->n >= job->max_tokens) {
                fake_finish(e, s, TPM_FINISH_LENGTH);
            }
        }
        fake_sleep_ms(busy ? e->step_ms : 1);
    }
    for (int i = 0; i < e->slots; i++) {
        if (slot[i].job != NULL) {
            fake_finish(e, &slot[i], TPM_FINISH_CANCELLED);
        }
    }
    return NULL;
}

static int fake_env_int(const char *name, int def)
{
    const char *v = getenv(name);
    char       *end;
    long        x;

    if (v == NULL || *v == '\0') {
        return def;
    }
    errno = 0;
    x     = strtol(v, &end, 10);
    if (errno != 0 || *end != '\0' || x < 0 || x > 1000000) {
        fprintf(stderr, "fake_server: bad %s=%s\n", name, v);
        exit(2);
    }
    return (int)x;
}

static tpm_tokenizer_t *fake_tokenizer(void)
{
    static const char *docs[] = {
        FAKE_TEXT FAKE_TEXT,
        "A journey of a thousand miles begins with a single step.\n",
        "To be, or not to be, that is the question.\n",
        "It was the best of times, it was the worst of times.\n",
    };
    size_t           lens[4];
    tpm_tokenizer_t *tok = NULL;

    for (int i = 0; i < 4; i++) {
        lens[i] = strlen(docs[i]);
    }
    if (tpm_tokenizer_train(docs, lens, 4, 300, &tok) != TPM_OK) {
        return NULL;
    }
    return tok;
}

int main(int argc, char **argv)
{
    tpm_config_t          cfg;
    tpm_serve_stats_t     stats;
    tpm_serve_queue_t    *q   = NULL;
    tpm_tokenizer_t      *tok = NULL;
    tpm_http_t           *h   = NULL;
    tpm_http_model_info_t info;
    fake_engine_t         e;
    pthread_t             engine;
    struct sigaction      sa;
    int                   exit_now = 0, ready_ms;
    double                t0;
    tpm_log_level_t       level;

    tpm_config_defaults(&cfg);
    if (tpm_config_parse(&cfg, argc, argv, stdout, &exit_now) != TPM_OK) {
        return 2;
    }
    if (exit_now) {
        return 0;
    }
    if (tpm_log_level_parse(cfg.log_level, &level) == 0) {
        tpm_log_set_level(level);
    }
    if (cfg.parallel > FAKE_MAX_SLOTS) {
        fprintf(stderr, "fake_server: at most %d slots\n", FAKE_MAX_SLOTS);
        return 2;
    }
    tok = fake_tokenizer();
    if (tok == NULL || tpm_serve_queue_create(cfg.max_queue, &q) != TPM_OK) {
        return 1;
    }
    memset(&stats, 0, sizeof(stats));
    memset(&e, 0, sizeof(e));
    e.q          = q;
    e.stats      = &stats;
    e.tok        = tok;
    e.slots      = cfg.parallel;
    e.step_ms    = fake_env_int("FAKE_STEP_MS", 5);
    ready_ms     = fake_env_int("FAKE_READY_MS", 0);
    e.n_text_ids = strlen(FAKE_TEXT);
    e.text_ids   = calloc(e.n_text_ids, sizeof(*e.text_ids));
    if (e.text_ids == NULL || tpm_tokenizer_encode(tok, FAKE_TEXT, strlen(FAKE_TEXT), e.text_ids,
                                                   e.n_text_ids, &e.n_text_ids) != TPM_OK) {
        return 1;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = fake_on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    info.name  = "fake";
    info.n_ctx = cfg.ctx_size > 0 ? cfg.ctx_size : 256;
    info.vocab = tpm_tokenizer_vocab_size(tok);
    if (tpm_http_start(&cfg, q, &stats, tok, &info, &h) != TPM_OK) {
        return 1;
    }
    if (pthread_create(&engine, NULL, fake_engine_main, &e) != 0) {
        return 1;
    }
    t0 = tpm_time_now();
    while (!fake_quit) {
        if (!stats.ready && (tpm_time_now() - t0) * 1e3 >= ready_ms) {
            stats.ready = 1;
            tpm_log_info("fake engine: ready");
        }
        fake_sleep_ms(10);
    }
    tpm_log_info("fake_server: stopping");
    /* the front-end first: it cancels the open requests and ends their streams while the
     * engine still runs to finish them */
    tpm_http_stop(h);
    e.quit = 1;
    pthread_join(engine, NULL);
    tpm_serve_queue_destroy(q);
    tpm_tokenizer_destroy(tok);
    free(e.text_ids);
    tpm_log_info("fake_server: stopped");
    return 0;
}
