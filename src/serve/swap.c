/* SPDX-License-Identifier: MIT */
/*
 * swap.c: the serving side of a live weight push (swap.h).
 */
#include "serve/swap.h"

#include <math.h>
#include <string.h>
#include <time.h>

#include "base/bf16.h"
#include "base/mem.h"
#include "base/timer.h"
#include "comm/comm.h"

const double tpm_serve_push_bounds[TPM_SERVE_PUSH_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1,
                                                              0.25,  0.5,  1.0,   2.5,  INFINITY};

/*
 * Rows unpacked into the back buffer per engine iteration: a large push is unpacked over
 * several iterations, so that no iteration stalls for the whole copy.
 */
#define SWAP_UNPACK_BUDGET ((size_t)16 << 20)

typedef enum { SW_IDLE = 0, SW_RECEIVING, SW_UNPACKING, SW_READY, SW_DONE } sw_state_t;

struct tpm_swapper {
    tpm_push_link_t    link;
    int                rank; /* in the serving group */
    tpm_tp_model_t    *m;    /* borrowed */
    tpm_serve_stats_t *st;   /* rank 0, borrowed; NULL elsewhere */
    tpm_reshard_plan_t plan;
    unsigned char     *recvbuf; /* (recv total * 4): fp32, or bf16 in the first half */
    float             *stage;   /* (largest segment) fp32 widening of bf16 values */
    size_t            *pos;     /* (n_train) element offset of message i in recvbuf */
    tpm_comm_req_t     hdr_req;
    tpm_push_hdr_t     hdr;
    tpm_comm_req_t    *req; /* (n_train) */
    sw_state_t         state;
    int                bye;
    tpm_status_t       bye_status;
    int64_t            step_back;    /* the step of the weights in the back buffer */
    int64_t            weights_step; /* served now */
    double             t_hdr;        /* the header arrived */
    uint64_t           bytes_back;
    size_t             budget; /* bytes unpacked per engine iteration */
    int                un_i;   /* unpacking cursor: training rank, */
    size_t             un_q;   /* segment of the plan, */
    int64_t            un_r;   /* and rows of it done */
};

static tpm_comm_t *world_of(const tpm_swapper_t *s)
{
    return s->link.world;
}

static void nap(void)
{
    const struct timespec ts = {0, 2 * 1000 * 1000};

    nanosleep(&ts, NULL);
}

/* wait for a request while sleeping between polls (MPI_Wait spins a core) */
static tpm_status_t wait_sleeping(tpm_comm_t *c, tpm_comm_req_t *req)
{
    while (req->active) {
        TPM_CHECK(tpm_comm_test(c, req));
        if (req->active) {
            nap();
        }
    }
    return TPM_OK;
}

tpm_status_t tpm_push_recv_hello(const tpm_push_link_t *link, int serve_rank,
                                 tpm_model_config_t *mc_p, void **tok_p, size_t *tok_len_p)
{
    tpm_push_hdr_t h;
    tpm_comm_req_t req;
    void          *tok = NULL;

    (void)serve_rank;
    *tok_p     = NULL;
    *tok_len_p = 0;
    memset(&req, 0, sizeof(req));
    TPM_CHECK(tpm_comm_recv(link->world, &h, sizeof(h), TPM_DT_BYTE, 0, TPM_PUSH_TAG_HDR, &req));
    TPM_CHECK(wait_sleeping(link->world, &req));
    if (h.kind != TPM_PUSH_HELLO) {
        tpm_log_error("trainserve: expected the trainer's HELLO, got message kind %d", h.kind);
        return TPM_ERR_INTERNAL;
    }
    if (h.status != TPM_OK) {
        return (tpm_status_t)h.status;
    }
    if (h.tok_len <= 0 || h.tok_len > ((int64_t)1 << 31)) {
        tpm_log_error("trainserve: the trainer sent a tokenizer of %lld bytes",
                      (long long)h.tok_len);
        return TPM_ERR_FORMAT;
    }
    TPM_CHECK(tpm_malloc((size_t)h.tok_len, &tok));
    if (tpm_comm_recv(link->world, tok, (size_t)h.tok_len, TPM_DT_BYTE, 0, TPM_PUSH_TAG_TOK,
                      &req) != TPM_OK ||
        wait_sleeping(link->world, &req) != TPM_OK) {
        tpm_free(tok);
        return TPM_ERR_MPI;
    }
    *mc_p      = h.model;
    *tok_p     = tok;
    *tok_len_p = (size_t)h.tok_len;
    return TPM_OK;
}

static tpm_status_t post_hdr(tpm_swapper_t *s)
{
    return tpm_comm_recv(world_of(s), &s->hdr, sizeof(s->hdr), TPM_DT_BYTE, 0, TPM_PUSH_TAG_HDR,
                         &s->hdr_req);
}

tpm_status_t tpm_swapper_create(const tpm_push_link_t *link, int serve_rank, tpm_tp_model_t *m,
                                tpm_serve_stats_t *st, tpm_swapper_t **s_p)
{
    tpm_swapper_t *s;
    tpm_status_t   status;
    size_t         total, big = 0, pos = 0;

    TPM_CHECK(tpm_calloc(1, sizeof(*s), (void **)&s));
    s->link         = *link;
    s->rank         = serve_rank;
    s->m            = m;
    s->st           = st;
    s->weights_step = -1;
    s->budget       = SWAP_UNPACK_BUDGET;
    TPM_CHECK_GOTO(tpm_reshard_plan_init(&s->plan, &m->cfg, link->n_train, link->n_serve), status,
                   err);
    TPM_CHECK_GOTO(tpm_tp_back_create(m), status, err);
    total = tpm_reshard_recv_total(&s->plan, serve_rank);
    TPM_CHECK_GOTO(tpm_malloc((total > 0 ? total : 1) * sizeof(float), (void **)&s->recvbuf),
                   status, err);
    for (size_t k = 0; k < s->plan.n_seg; k++) {
        size_t n = (size_t)s->plan.seg[k].nrows * (size_t)s->plan.seg[k].cols;

        big = n > big ? n : big;
    }
    TPM_CHECK_GOTO(tpm_malloc((big > 0 ? big : 1) * sizeof(float), (void **)&s->stage), status,
                   err);
    TPM_CHECK_GOTO(tpm_calloc((size_t)link->n_train, sizeof(size_t), (void **)&s->pos), status,
                   err);
    TPM_CHECK_GOTO(tpm_calloc((size_t)link->n_train, sizeof(*s->req), (void **)&s->req), status,
                   err);
    for (int i = 0; i < link->n_train; i++) {
        s->pos[i] = pos;
        pos += tpm_reshard_count(&s->plan, i, serve_rank);
    }
    TPM_CHECK_GOTO(post_hdr(s), status, err);
    if (st != NULL) {
        st->trainserve   = 1;
        st->versioned    = 1;
        st->weights_step = -1;
    }
    *s_p = s;
    return TPM_OK;

err:
    tpm_swapper_destroy(s);
    return status;
}

void tpm_swapper_destroy(tpm_swapper_t *s)
{
    if (s == NULL) {
        return;
    }
    tpm_reshard_plan_cleanup(&s->plan);
    tpm_free(s->recvbuf);
    tpm_free(s->stage);
    tpm_free(s->pos);
    tpm_free(s->req);
    tpm_free(s);
}

/* a WEIGHTS header arrived: post the data receives */
static tpm_status_t start_receive(tpm_swapper_t *s)
{
    const size_t esize = s->hdr.bf16 ? sizeof(uint16_t) : sizeof(float);

    s->t_hdr      = tpm_time_now();
    s->step_back  = s->hdr.step;
    s->bytes_back = 0;
    for (int i = 0; i < s->link.n_train; i++) {
        const size_t n = tpm_reshard_count(&s->plan, i, s->rank);

        if (n == 0) {
            continue;
        }
        TPM_CHECK(tpm_comm_recv(world_of(s), s->recvbuf + s->pos[i] * esize, n * esize, TPM_DT_BYTE,
                                i, TPM_PUSH_TAG_DATA, &s->req[i]));
        s->bytes_back += n * esize;
    }
    s->state = SW_RECEIVING;
    return TPM_OK;
}

/*
 * Every message is in: rows into the back buffer, from the cursor on, until about
 * s->budget bytes are copied; *done_p when the last row is in.
 */
static tpm_status_t unpack(tpm_swapper_t *s, int *done_p)
{
    tpm_backend_t *be    = s->m->be;
    const size_t   esize = s->hdr.bf16 ? sizeof(uint16_t) : sizeof(float);
    size_t         moved = 0;

    *done_p = 0;
    for (; s->un_i < s->link.n_train; s->un_i++) {
        const size_t k = (size_t)s->un_i * (size_t)s->link.n_serve + (size_t)s->rank;

        if (s->un_q < s->plan.first[k]) {
            s->un_q = s->plan.first[k];
        }
        for (; s->un_q < s->plan.first[k + 1]; s->un_q++, s->un_r = 0) {
            const tpm_reshard_seg_t *sg  = &s->plan.seg[s->un_q];
            tpm_tp_slice_t          *dst = tpm_tp_back_slice(s->m, sg->g, sg->t);
            const size_t             row = (size_t)sg->cols * sizeof(float);

            /* whole rows, at least one, until the budget is spent (a big slice takes turns) */
            while (s->un_r < sg->nrows) {
                int64_t              nr = sg->nrows - s->un_r;
                size_t               n;
                const unsigned char *src;
                const float         *f;

                if (moved >= s->budget) {
                    return TPM_OK; /* the rest at the next iteration */
                }
                if ((size_t)nr * row > s->budget - moved) {
                    nr = (int64_t)((s->budget - moved) / row);
                    nr = nr > 0 ? nr : 1;
                }
                n   = (size_t)nr * (size_t)sg->cols;
                src = s->recvbuf +
                      (s->pos[s->un_i] + sg->off + (size_t)s->un_r * (size_t)sg->cols) * esize;
                f = (const float *)(const void *)src;
                if (s->hdr.bf16) {
                    const uint16_t *h = (const uint16_t *)(const void *)src;

                    for (size_t e = 0; e < n; e++) {
                        s->stage[e] = tpm_bf16_to_float(h[e]);
                    }
                    f = s->stage;
                }
                TPM_CHECK(be->ops->copy(
                    be, dst->data + (size_t)(sg->row0 + s->un_r - dst->row0) * (size_t)sg->cols, f,
                    n * sizeof(float), TPM_COPY_H2D));
                moved += n * sizeof(float);
                s->un_r += nr;
            }
        }
    }
    *done_p = 1;
    return TPM_OK;
}

/* one look at the transfers; returns the state reached */
static tpm_status_t progress(tpm_swapper_t *s)
{
    if (s->state == SW_IDLE && s->hdr_req.active) {
        TPM_CHECK(tpm_comm_test(world_of(s), &s->hdr_req));
        if (!s->hdr_req.active) {
            if (s->hdr.kind == TPM_PUSH_WEIGHTS) {
                TPM_CHECK(start_receive(s));
            } else if (s->hdr.kind == TPM_PUSH_BYE) {
                s->bye        = 1;
                s->bye_status = (tpm_status_t)s->hdr.status;
                s->state      = SW_DONE;
            } else {
                tpm_log_error("trainserve: unexpected message kind %d from the trainer",
                              s->hdr.kind);
                return TPM_ERR_INTERNAL;
            }
        }
    }
    if (s->state == SW_RECEIVING) {
        int all = 1;

        for (int i = 0; i < s->link.n_train; i++) {
            TPM_CHECK(tpm_comm_test(world_of(s), &s->req[i]));
            all = all && !s->req[i].active;
        }
        if (all) {
            s->un_i  = 0;
            s->un_q  = 0;
            s->un_r  = 0;
            s->state = SW_UNPACKING;
        }
    }
    if (s->state == SW_UNPACKING) {
        int done;

        TPM_CHECK(unpack(s, &done));
        if (done) {
            s->state = SW_READY;
        }
    }
    return TPM_OK;
}

int tpm_swapper_ready(void *swapper)
{
    tpm_swapper_t *s      = swapper;
    tpm_status_t   status = progress(s);

    if (status != TPM_OK) {
        tpm_fatal(status, "trainserve: receiving pushed weights failed");
    }
    if (s->st != NULL && s->bye && s->bye_status != TPM_OK) {
        s->st->stop = 1; /* the trainer failed: the job ends */
    }
    if (s->st != NULL && s->st->push_requested && !s->bye) {
        tpm_push_ctl_t ctl = {TPM_PUSH_CTL_REQUEST, 0};

        s->st->push_requested = 0;
        status =
            tpm_comm_send(world_of(s), &ctl, sizeof(ctl), TPM_DT_BYTE, 0, TPM_PUSH_TAG_CTL, NULL);
        if (status != TPM_OK) {
            tpm_fatal(status, "trainserve: forwarding a push request to the trainer failed");
        }
    }
    return s->state == SW_READY;
}

void tpm_swapper_swap(void *swapper)
{
    tpm_swapper_t *s   = swapper;
    double         now = tpm_time_now(), lat = now - s->t_hdr;
    tpm_status_t   status;

    TPM_ASSERT(s->state == SW_READY);
    tpm_tp_swap(s->m);
    s->weights_step = s->step_back;
    s->state        = SW_IDLE;
    if (s->st != NULL) {
        s->st->weights_step = s->weights_step;
        s->st->pushes++;
        s->st->push_bytes += s->bytes_back;
        s->st->push_seconds += lat;
        for (int b = 0; b < TPM_SERVE_PUSH_BUCKETS; b++) {
            if (lat <= tpm_serve_push_bounds[b]) {
                s->st->push_le[b]++;
            }
        }
        s->st->last_swap = now;
        s->st->ready     = 1;
    }
    tpm_log_debug("trainserve: swapped in the weights of step %lld (%.1f ms after the header)",
                  (long long)s->weights_step, lat * 1e3);
    status = post_hdr(s);
    if (status != TPM_OK) {
        tpm_fatal(status, "trainserve: posting the next push's receive failed");
    }
}

tpm_status_t tpm_swapper_drain(tpm_swapper_t *s, tpm_status_t status)
{
    if (s->rank == 0) {
        tpm_push_ctl_t ctl = {TPM_PUSH_CTL_STOP, (int32_t)status};

        TPM_CHECK(
            tpm_comm_send(world_of(s), &ctl, sizeof(ctl), TPM_DT_BYTE, 0, TPM_PUSH_TAG_CTL, NULL));
    }
    while (!s->bye) {
        TPM_CHECK(progress(s));
        if (s->state == SW_READY || s->state == SW_UNPACKING) {
            s->state = SW_IDLE; /* not served: the group is going away */
            TPM_CHECK(post_hdr(s));
            continue;
        }
        if (!s->bye) {
            nap();
        }
    }
    return TPM_OK;
}

void tpm_swapper_set_unpack_budget(tpm_swapper_t *s, size_t bytes)
{
    s->budget = bytes > 0 ? bytes : 1;
}

int tpm_swapper_bye(const tpm_swapper_t *s)
{
    return s->bye;
}

tpm_status_t tpm_swapper_bye_status(const tpm_swapper_t *s)
{
    return s->bye_status;
}

int64_t tpm_swapper_weights_step(const tpm_swapper_t *s)
{
    return s->weights_step;
}
