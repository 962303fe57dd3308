/* SPDX-License-Identifier: MIT */
/*
 * push.h: the training side of a live weight push (--mode=trainserve, docs/DESIGN.md "Live
 * weight push"). Every training rank copies the rows the resharding plan (core/reshard.h)
 * sends from its ZeRO-3 parameter shard into its own send buffer (fp32, or bf16 with
 * --push-dtype=bf16) and posts one non-blocking send per serving rank that needs any of
 * them; training goes on updating the shard while the sends drain, and the next push first
 * waits for them. Training rank 0 also speaks the protocol's small messages: HELLO (model
 * and tokenizer, or a start-up failure), a WEIGHTS header per push, BYE at the end; it keeps
 * one receive posted for the serving group's control messages (POST /admin/push, stop).
 */
#ifndef TPM_TRAIN_PUSH_H
#define TPM_TRAIN_PUSH_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "core/reshard.h"
#include "zero3/zero3.h"

typedef struct tpm_pusher tpm_pusher_t;

/** Push counters (this rank). */
typedef struct tpm_push_stats {
    uint64_t pushes;
    uint64_t bytes;  /* payload bytes this rank sent */
    double   pack_s; /* time copying the shard into the send buffer */
} tpm_push_stats_t;

/**
 * Training rank 0 sends HELLO to every serving rank: @p status (the trainer's start-up
 * result; anything but TPM_OK ends the protocol), and with TPM_OK the model @p mc and the
 * tokenizer bytes. Other training ranks: no-op. Blocking (small messages).
 */
tpm_status_t tpm_push_hello(const tpm_push_link_t *link, int train_rank, tpm_status_t status,
                            const tpm_model_config_t *mc, const void *tok, size_t tok_len);

/** The plan, the send buffer and the control receive (rank 0). Local. Caller owns *p_p. */
tpm_status_t tpm_pusher_create(const tpm_push_link_t *link, tpm_zero3_t *z, tpm_pusher_t **p_p);
void         tpm_pusher_destroy(tpm_pusher_t *p); /* no-op on NULL; frees only */

/**
 * Start push of the weights after @p step optimizer steps: wait for the previous push's
 * sends, pack, send the header (rank 0) and the data. Every training rank calls it at the
 * same step. Not collective inside the training group.
 */
tpm_status_t tpm_pusher_start(tpm_pusher_t *p, int64_t step);

/**
 * Once per step: let the sends progress and (rank 0) look at the control channel. Sets
 * *request_p when POST /admin/push asked for a push, *stop_p when the serving group stops,
 * with its status in *stop_status_p. Local; the caller agrees on the flags in its group.
 */
tpm_status_t tpm_pusher_poll(tpm_pusher_t *p, int *request_p, int *stop_p,
                             tpm_status_t *stop_status_p);

/**
 * End of training: wait for the sends, rank 0 sends BYE with @p status (TPM_OK: the serving
 * group keeps serving the last weights; an error: it stops too) and then waits (sleeping
 * between polls) until the serving group says it stops, so that no message is left
 * unmatched. @p serve_stopped: the serving group already said so.
 */
tpm_status_t tpm_pusher_finish(tpm_pusher_t *p, int serve_stopped, tpm_status_t status);

const tpm_push_stats_t *tpm_pusher_stats(const tpm_pusher_t *p);

#endif /* TPM_TRAIN_PUSH_H */
