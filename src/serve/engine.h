/* SPDX-License-Identifier: MIT */
/*
 * engine.h: the serving engine, the consumer side of serve.h. Every rank runs the same
 * loop in lockstep on its main thread; rank 0 owns the slot table and the job queue.
 *
 * One iteration (tpm_engine_step):
 *  1. rank 0 drops cancelled jobs, admits queued jobs into free slots, and builds the batch:
 *     one token per decoding slot, then prompt chunks of slots still in prefill, up to
 *     n_batch tokens (continuous batching: sequences join and leave at every iteration);
 *  2. it sends a 4-integer header (token count, logit rows, stop flag) and the descriptor
 *     (token ids, slots, positions, logit rows) to every rank;
 *  3. all ranks run the tensor-parallel forward pass (core/model_tp.h);
 *  4. rank 0 samples the next token of every slot that needs one (core/sampler.h), detects
 *     end-of-text, stop strings, max_tokens and a full context, and calls the job's
 *     callbacks.
 * All decisions are rank 0's and reach the other ranks through the descriptor, so the ranks
 * cannot take different branches; a failure inside the lockstep part is fatal (tpm_fatal).
 * While idle, rank 0 sleeps on the queue for up to 50 ms per step and then sends an empty
 * batch (the step returns, so a caller regains control); the other ranks poll the pending
 * header with a growing sleep (at most 1 ms) instead of spinning in MPI.
 *
 * Callback contract (rank 0, engine thread): on_token is called exactly once for every
 * sampled token, end-of-text included, in order, with the text that became final with it:
 * text held back while it may still turn into a stop string or ends inside a UTF-8
 * sequence comes with a later call, and the last call of a job carries everything left
 * (so the text can be empty, and the end-of-text token's call can carry earlier text). A
 * stop string and whatever follows it are never passed. Then on_done is called once;
 * job->n_generated is the number of on_token calls.
 */
#ifndef TPM_SERVE_ENGINE_H
#define TPM_SERVE_ENGINE_H

#include "backend/backend.h"
#include "base/status.h"
#include "ckpt/ckpt.h"
#include "cli/config.h"
#include "comm/comm.h"
#include "core/model_tp.h"
#include "data/tokenizer.h"
#include "serve/serve.h"

/* prompt tokens per iteration on top of one token per slot: bounds an iteration's time */
#define TPM_ENGINE_PREFILL_CHUNK 128
/* longest stop string the engine accepts (the front-end's limit is the same) */
#define TPM_ENGINE_MAX_STOP_BYTES 256

typedef struct tpm_engine_opts {
    int n_slots;    /* sequence slots (--parallel) */
    int ctx;        /* KV cache positions per slot (<= the model's position table) */
    int max_tokens; /* upper bound of a job's max_tokens (a job's 0 or less means this) */
    int n_batch;    /* tokens per iteration (0: n_slots + TPM_ENGINE_PREFILL_CHUNK) */
    tpm_wdtype_t wdt;     /* matrix weights' serving format (0: fp32) */
    int          kv_bf16; /* KV cache in bf16 (0: fp32) */
} tpm_engine_opts_t;

typedef struct tpm_engine tpm_engine_t;

/**
 * Create the engine: the model slices (zeroed) and the KV cache of this rank, the batch
 * buffers and, on rank 0, the slot table and the sampler. @p tok (rank 0: required, the
 * tokenizer of the model; other ranks: may be NULL) and @p be, @p comm are borrowed. Not
 * collective: callers agree on the status. Caller owns *e_p.
 */
tpm_status_t tpm_engine_create(tpm_backend_t *be, tpm_comm_t *comm, const tpm_model_config_t *cfg,
                               const tpm_engine_opts_t *opts, const tpm_tokenizer_t *tok,
                               tpm_engine_t **e_p);
void         tpm_engine_destroy(tpm_engine_t *e); /* no-op on NULL */

/** The model, to fill its slices (tpm_tp_init_params) or read its memory use. Borrowed. */
tpm_tp_model_t *tpm_engine_model(tpm_engine_t *e);

/**
 * Read this rank's slices of every tensor from the open checkpoint @p ck ("model/<name>")
 * and check that its model configuration is the engine's. Collective over the checkpoint's
 * communicator; every rank returns the same status.
 */
tpm_status_t tpm_engine_load(tpm_engine_t *e, tpm_ckpt_t *ck);

/**
 * The same for a bare model (tests, tools): this rank's rows of every tensor of @p m from
 * @p ck after checking the model configuration. Collective; same status on every rank.
 */
tpm_status_t tpm_serve_load_model(tpm_tp_model_t *m, tpm_ckpt_t *ck);

/**
 * One iteration (see above). Rank 0 passes the queue and the stats (the stop request is
 * stats->stop); other ranks pass NULL for both. When rank 0 has nothing to do it waits up
 * to 50 ms for a job, then runs the step with what it has (possibly nothing). Sets *stop_p
 * on every rank when rank 0 decided to stop; the running jobs have then been finished with
 * TPM_FINISH_CANCELLED. Collective; failures inside are fatal.
 */
tpm_status_t tpm_engine_step(tpm_engine_t *e, tpm_serve_queue_t *q, tpm_serve_stats_t *stats,
                             int *stop_p);

/**
 * Weights that arrive while serving (--mode=trainserve, serve/swap.h). Every iteration each
 * rank calls ready() (local: it may progress transfers) and reports the answer in the
 * iteration's header; when every rank reported 1, every rank calls swap() at the start of
 * the next iteration, before rank 0 plans its batch. With @p recompute, rank 0 then refills
 * the KV caches of the running sequences with the new weights (their tokens so far are fed
 * again as a prompt); otherwise they continue with the cache they have (--swap-policy).
 */
typedef struct tpm_engine_swap_hook {
    void *ctx;
    int (*ready)(void *ctx); /* 1: ready; rank 0 may also pass another small value to all */
    void (*swap)(void *ctx);
    /* (optional) every rank, after each header: rank 0's ready() value of that iteration */
    void (*agreed)(void *ctx, int32_t root_value);
} tpm_engine_swap_hook_t;
/** Install @p hook (copied; NULL removes it). Local, before the loop, on every rank. */
void tpm_engine_set_swap_hook(tpm_engine_t *e, const tpm_engine_swap_hook_t *hook, int recompute);

/** tpm_engine_step until stop. Collective. */
tpm_status_t tpm_engine_run(tpm_engine_t *e, tpm_serve_queue_t *q, tpm_serve_stats_t *stats);

/* ---- queue operations for the engine and the shutdown path (queue.c) --------------------- */

/**
 * Tell the queue how many slots are free: a push is accepted while the queue holds fewer
 * than capacity + free jobs, so --max-queue counts only the jobs that really wait.
 */
void tpm_serve_queue_set_free(tpm_serve_queue_t *q, int n_free);
/** Wait until the queue is not empty, or @p timeout_s seconds; returns its length. */
int tpm_serve_queue_wait(tpm_serve_queue_t *q, double timeout_s);
/** Refuse further pushes (TPM_ERR_OVERFLOW, answered 503) from now on. */
void tpm_serve_queue_close(tpm_serve_queue_t *q);
/** Pop every queued job and finish it with @p finish (on_done); for shutdown. */
void tpm_serve_queue_drain(tpm_serve_queue_t *q, tpm_finish_t finish);

/* ---- serve mode -------------------------------------------------------------------------- */

/**
 * --mode=serve: resolve --ckpt (a file, or a directory's latest), read this rank's slices,
 * print memory per rank and the slot capacity, start the HTTP front-end on rank 0, run the
 * engine until a stop signal (TERM, INT, USR1, USR2), then stop the front-end. Collective; every
 * rank returns the same status for start-up failures.
 */
tpm_status_t tpm_serve_run(const tpm_config_t *cfg, tpm_comm_t *comm);

struct tpm_push_link;
/**
 * The serving group of --mode=trainserve: @p comm is the group, @p link (borrowed) the job's
 * training group. The model and the tokenizer come from the trainer's HELLO, the weights
 * with each push (serve/swap.h), swapped in between two engine iterations; /health answers
 * 503 until the first push. NULL @p link: tpm_serve_run. Collective over @p comm.
 */
tpm_status_t tpm_serve_run_linked(const tpm_config_t *cfg, tpm_comm_t *comm,
                                  const struct tpm_push_link *link);

#endif /* TPM_SERVE_ENGINE_H */
