/* SPDX-License-Identifier: MIT */
/*
 * swap.h: the serving side of a live weight push (--mode=trainserve, docs/SERVING.md "Live
 * weight push"). Each serving rank keeps one receive posted for the trainer's header; when
 * a WEIGHTS header arrives it posts one non-blocking receive per training rank that sends it
 * anything (the resharding plan, core/reshard.h) into its receive buffer, and the engine goes
 * on decoding on the front weights. Once every receive has completed the rank unpacks the
 * rows into the model's back buffer, at most 16 MiB per engine iteration (so a large push
 * does not stall one iteration for the whole copy), and reports itself ready in the
 * engine's per-iteration
 * header; when every serving rank is ready, all of them swap the two buffers at the start of
 * the same iteration (engine.h, tpm_engine_set_swap_hook).
 */
#ifndef TPM_SERVE_SWAP_H
#define TPM_SERVE_SWAP_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "core/model_tp.h"
#include "core/reshard.h"
#include "serve/serve.h"

typedef struct tpm_swapper tpm_swapper_t;

/**
 * Wait (sleeping between polls) for the trainer's HELLO on serving rank @p serve_rank: its
 * start-up status (returned; anything but TPM_OK means the trainer failed and the protocol
 * is over), the model in *mc_p and the tokenizer bytes in *tok_p (caller frees, tpm_free).
 */
tpm_status_t tpm_push_recv_hello(const tpm_push_link_t *link, int serve_rank,
                                 tpm_model_config_t *mc_p, void **tok_p, size_t *tok_len_p);

/**
 * The plan, the receive buffer and @p m's back buffer; posts the header receive. @p st: rank
 * 0's stats (the weights step and the push counters go there), NULL elsewhere. Local.
 */
tpm_status_t tpm_swapper_create(const tpm_push_link_t *link, int serve_rank, tpm_tp_model_t *m,
                                tpm_serve_stats_t *st, tpm_swapper_t **s_p);
void         tpm_swapper_destroy(tpm_swapper_t *s); /* no-op on NULL; frees only */

/**
 * Progress the transfers (every iteration, every rank); returns 1 when this rank's back
 * buffer holds a complete push that is not swapped in yet. A failed transfer is fatal.
 */
int tpm_swapper_ready(void *swapper);
/** Swap the buffers (every rank at the same iteration, after all were ready). */
void tpm_swapper_swap(void *swapper);

/**
 * At exit: serving rank 0 tells the trainer that the serving group stops (@p status: why),
 * then every rank keeps receiving (and discarding) pushes until the trainer's BYE, so that no
 * message is left unmatched. Sleeps between polls.
 */
tpm_status_t tpm_swapper_drain(tpm_swapper_t *s, tpm_status_t status);

/** Bytes unpacked per engine iteration (default 16 MiB; tests make it small). Local. */
void tpm_swapper_set_unpack_budget(tpm_swapper_t *s, size_t bytes);

/** The trainer said BYE with this status (TPM_OK: keep serving the last weights). */
int          tpm_swapper_bye(const tpm_swapper_t *s);
tpm_status_t tpm_swapper_bye_status(const tpm_swapper_t *s);

/** The optimizer step of the weights served now (-1 before the first swap). */
int64_t tpm_swapper_weights_step(const tpm_swapper_t *s);

#endif /* TPM_SERVE_SWAP_H */
