/* SPDX-License-Identifier: MIT */
/*
 * serve.h: the contract between the HTTP front-end (rank 0 threads) and the
 * tensor-parallel engine (every rank's main thread, in lockstep).
 *
 * The front-end turns an HTTP request into a tpm_serve_job_t (token ids and
 * sampling parameters) and submits it to the queue; the engine loop takes jobs
 * from the queue at every iteration (continuous batching), broadcasts a small
 * batch descriptor to all ranks, runs one forward pass, samples on rank 0, and
 * reports each new token and the end of each job through the job's callbacks,
 * which the front-end uses to answer or stream. Ownership: the front-end owns a
 * job; after submit the engine borrows it until it has called on_done exactly
 * once; the front-end frees it after on_done (or after a failed submit).
 */
#ifndef TPM_SERVE_H
#define TPM_SERVE_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

#define TPM_SERVE_MAX_STOP 4
#define TPM_SERVE_PUSH_BUCKETS 10

typedef enum {
    TPM_FINISH_LENGTH = 0, /* max_tokens reached (or the context is full) */
    TPM_FINISH_STOP,       /* end-of-text token or a stop string */
    TPM_FINISH_CANCELLED,  /* client went away / cancelled */
    TPM_FINISH_ERROR,      /* engine failure */
} tpm_finish_t;

typedef struct tpm_serve_job tpm_serve_job_t;

struct tpm_serve_job {
    /* input, set by the front-end before submit */
    int32_t *prompt; /* (n_prompt) token ids, owned by the job */
    int      n_prompt;
    int      max_tokens;
    float    temperature; /* 0 = greedy */
    int      top_k;       /* 0 = off */
    float    top_p;       /* 1 = off */
    uint64_t seed;
    char    *stop[TPM_SERVE_MAX_STOP]; /* stop strings (NULL-terminated list), owned by the job */
    int      logprobs;     /* 1: report each generated token's log-probability (on_logprob) */
    int      top_logprobs; /* and this many most likely alternatives (0..20) */
    int      echo;         /* with logprobs: also the prompt's tokens 1..n_prompt-1 */
    int      embed;        /* an embedding job: no generation; on_embedding, then on_done (STOP) */
    float    presence_penalty, frequency_penalty; /* over the tokens generated so far */
    int      n_bias;   /* logit_bias entries: bias_val[i] added to token bias_ids[i] */
    int32_t *bias_ids; /* (n_bias), owned by the job */
    float   *bias_val; /* (n_bias), owned by the job */

    /* called by the engine thread (rank 0); must be quick and must not block */
    void (*on_token)(tpm_serve_job_t *job, int32_t token, const char *text, size_t text_len);
    void (*on_done)(tpm_serve_job_t *job, tpm_finish_t finish);
    /* (optional; needed when logprobs is set) the log-probability under the model's own
     * distribution of the token at @p index of prompt + generated tokens (index >= 1: the
     * prompt's from 1 with echo, then n_prompt + k for the k-th generated token, which is
     * reported before its on_token), with @p n_top alternatives, most likely first.
     * The arrays are borrowed for the call. */
    void (*on_logprob)(tpm_serve_job_t *job, int index, int32_t token, float logprob, int n_top,
                       const int32_t *top_ids, const float *top_lp);
    /* (needed when embed is set) the prompt's embedding: the mean over its tokens of the
     * final layer norm's output (what the output head reads), L2-normalised; @p vec (C
     * floats) is borrowed for the call */
    void (*on_embedding)(tpm_serve_job_t *job, const float *vec, int C);
    void *user; /* front-end state */

    /* set by the front-end at any time (e.g. client disconnect): the engine drops the job */
    volatile int cancel;

    /* engine results, valid in on_done */
    int    n_generated;
    double t_submit, t_first_token, t_done; /* tpm_time_now() stamps */
};

typedef struct tpm_serve_queue tpm_serve_queue_t;

/** A bounded, thread-safe FIFO of jobs (capacity = --max-queue waiting jobs). */
tpm_status_t tpm_serve_queue_create(int capacity, tpm_serve_queue_t **q_p);
void         tpm_serve_queue_destroy(tpm_serve_queue_t *q); /* no-op on NULL */
/** TPM_ERR_OVERFLOW when full (the front-end answers 503), TPM_OK otherwise. */
tpm_status_t tpm_serve_queue_push(tpm_serve_queue_t *q, tpm_serve_job_t *job);
/** Non-blocking pop; NULL when empty. */
tpm_serve_job_t *tpm_serve_queue_pop(tpm_serve_queue_t *q);
int              tpm_serve_queue_len(tpm_serve_queue_t *q);

/** Live counters the engine keeps for /metrics (read by the front-end without locks). */
typedef struct tpm_serve_stats {
    volatile int      running; /* sequences in the batch */
    volatile int      waiting; /* jobs in the queue */
    volatile uint64_t prompt_tokens;
    volatile uint64_t generated_tokens;
    volatile int      ready; /* weights loaded: /health answers 200 */
    volatile int      stop;  /* set on SIGTERM: the engine loop finishes and all ranks exit */

    /* live weight push (--mode=trainserve; docs/METRICS.md): written by the engine thread */
    volatile int      trainserve;   /* 1: the weights come from a training group */
    volatile int64_t  weights_step; /* optimizer step of the weights served (-1: checkpoint) */
    volatile uint64_t pushes;       /* pushes swapped in */
    volatile uint64_t push_bytes;   /* payload bytes received (this rank, rank 0) */
    volatile double   last_swap;    /* tpm_time_now() of the last swap (0: none) */
    volatile double   push_seconds; /* sum of push latencies (header to swap) */
    volatile uint64_t push_le[TPM_SERVE_PUSH_BUCKETS]; /* latency histogram, cumulative */
    volatile int      push_requested; /* POST /admin/push: the engine forwards it to the trainer */
    volatile int      versioned;      /* weights_step is reported (trainserve, serve --watch) */
    volatile int      reloadable;     /* serve --watch: POST /admin/reload is accepted */
    volatile int      reload_requested; /* POST /admin/reload: look for a newer checkpoint now */
} tpm_serve_stats_t;

/** Upper bounds of the push latency histogram buckets in seconds (the last is +Inf). */
extern const double tpm_serve_push_bounds[TPM_SERVE_PUSH_BUCKETS];

#endif /* TPM_SERVE_H */
