/* SPDX-License-Identifier: MIT */
/*
 * push.c: the training side of a live weight push (push.h).
 */
#include "train/push.h"

#include <string.h>
#include <time.h>

#include "base/bf16.h"
#include "base/mem.h"
#include "base/timer.h"
#include "comm/comm.h"

struct tpm_pusher {
    tpm_push_link_t    link;
    tpm_zero3_t       *z;    /* borrowed */
    int                rank; /* in the training group = in the world */
    tpm_reshard_plan_t plan;
    size_t             esize;   /* 4 (fp32) or 2 (bf16) */
    unsigned char     *sendbuf; /* (send total * esize) */
    float             *stage;   /* (largest segment) host fp32 staging for a device shard */
    size_t             stage_n;
    tpm_comm_req_t    *req;     /* (n_serve) data sends */
    tpm_comm_req_t    *hreq;    /* (n_serve) header sends (rank 0) */
    tpm_push_hdr_t     hdr;     /* the header in flight (rank 0) */
    tpm_comm_req_t     ctl_req; /* control receive (rank 0) */
    tpm_push_ctl_t     ctl;
    tpm_push_stats_t   stats;
};

static tpm_comm_t *world_of(const tpm_pusher_t *p)
{
    return p->link.world;
}

tpm_status_t tpm_push_hello(const tpm_push_link_t *link, int train_rank, tpm_status_t status,
                            const tpm_model_config_t *mc, const void *tok, size_t tok_len)
{
    tpm_push_hdr_t h;
    tpm_status_t   st = TPM_OK;

    if (train_rank != 0) {
        return TPM_OK;
    }
    memset(&h, 0, sizeof(h));
    h.kind   = TPM_PUSH_HELLO;
    h.status = (int32_t)status;
    if (status == TPM_OK) {
        h.model   = *mc;
        h.tok_len = (int64_t)tok_len;
    }
    for (int j = 0; j < link->n_serve && st == TPM_OK; j++) {
        const int peer = link->n_train + j;

        st = tpm_comm_send(link->world, &h, sizeof(h), TPM_DT_BYTE, peer, TPM_PUSH_TAG_HDR, NULL);
        if (st == TPM_OK && status == TPM_OK && tok_len > 0) {
            st =
                tpm_comm_send(link->world, tok, tok_len, TPM_DT_BYTE, peer, TPM_PUSH_TAG_TOK, NULL);
        }
    }
    return st;
}

static tpm_status_t post_ctl(tpm_pusher_t *p)
{
    return tpm_comm_recv(world_of(p), &p->ctl, sizeof(p->ctl), TPM_DT_BYTE, p->link.n_train,
                         TPM_PUSH_TAG_CTL, &p->ctl_req);
}

tpm_status_t tpm_pusher_create(const tpm_push_link_t *link, tpm_zero3_t *z, tpm_pusher_t **p_p)
{
    tpm_pusher_t *p;
    tpm_status_t  status;
    size_t        total, big = 0;

    TPM_CHECK(tpm_calloc(1, sizeof(*p), (void **)&p));
    p->link  = *link;
    p->z     = z;
    p->rank  = z->comm->rank;
    p->esize = link->bf16 ? sizeof(uint16_t) : sizeof(float);
    TPM_CHECK_GOTO(tpm_reshard_plan_init(&p->plan, &z->cfg, link->n_train, link->n_serve), status,
                   err);
    total = tpm_reshard_send_total(&p->plan, p->rank);
    TPM_CHECK_GOTO(tpm_malloc((total > 0 ? total : 1) * p->esize, (void **)&p->sendbuf), status,
                   err);
    for (size_t s = 0; s < p->plan.n_seg; s++) {
        size_t n = (size_t)p->plan.seg[s].nrows * (size_t)p->plan.seg[s].cols;

        big = n > big ? n : big;
    }
    p->stage_n = big;
    TPM_CHECK_GOTO(tpm_malloc((big > 0 ? big : 1) * sizeof(float), (void **)&p->stage), status,
                   err);
    TPM_CHECK_GOTO(tpm_calloc((size_t)link->n_serve, sizeof(*p->req), (void **)&p->req), status,
                   err);
    TPM_CHECK_GOTO(tpm_calloc((size_t)link->n_serve, sizeof(*p->hreq), (void **)&p->hreq), status,
                   err);
    if (p->rank == 0) {
        TPM_CHECK_GOTO(post_ctl(p), status, err);
    }
    *p_p = p;
    return TPM_OK;

err:
    tpm_pusher_destroy(p);
    return status;
}

void tpm_pusher_destroy(tpm_pusher_t *p)
{
    if (p == NULL) {
        return;
    }
    tpm_reshard_plan_cleanup(&p->plan);
    tpm_free(p->sendbuf);
    tpm_free(p->stage);
    tpm_free(p->req);
    tpm_free(p->hreq);
    tpm_free(p);
}

static tpm_status_t wait_sends(tpm_pusher_t *p)
{
    for (int j = 0; j < p->link.n_serve; j++) {
        TPM_CHECK(tpm_comm_wait(world_of(p), &p->req[j]));
        TPM_CHECK(tpm_comm_wait(world_of(p), &p->hreq[j]));
    }
    return TPM_OK;
}

/* copy the rows of message (rank, j) from the shard into the send buffer at element *pos_p */
static tpm_status_t pack(tpm_pusher_t *p, int j, size_t pos)
{
    tpm_zero3_t *z   = p->z;
    const size_t k   = (size_t)p->rank * (size_t)p->link.n_serve + (size_t)j;
    const int    cpu = z->be->ops == &tpm_backend_cpu_ops;

    for (size_t s = p->plan.first[k]; s < p->plan.first[k + 1]; s++) {
        const tpm_reshard_seg_t  *sg = &p->plan.seg[s];
        const tpm_shard_group_t  *g  = &z->lay.g[sg->g];
        const tpm_shard_tensor_t *st = &g->t[sg->t];
        const size_t              n  = (size_t)sg->nrows * (size_t)sg->cols;
        const int64_t             a0 = st->rows_per_rank * p->rank;
        const float              *src =
            z->param + g->shard_base + st->shard_off + (size_t)(sg->row0 - a0) * (size_t)sg->cols;
        unsigned char *dst = p->sendbuf + (pos + sg->off) * p->esize;

        if (!p->link.bf16 && cpu) {
            memcpy(dst, src, n * sizeof(float));
            continue;
        }
        if (!cpu) {
            TPM_CHECK(z->be->ops->copy(z->be, p->stage, src, n * sizeof(float), TPM_COPY_D2H));
            src = p->stage;
        }
        if (p->link.bf16) {
            uint16_t *d16 = (uint16_t *)(void *)dst;

            for (size_t e = 0; e < n; e++) {
                d16[e] = tpm_bf16_rne(src[e]);
            }
        } else {
            memcpy(dst, src, n * sizeof(float));
        }
    }
    return TPM_OK;
}

tpm_status_t tpm_pusher_start(tpm_pusher_t *p, int64_t step)
{
    const tpm_dtype_t dt  = p->link.bf16 ? TPM_DT_BYTE : TPM_DT_FLOAT;
    size_t            pos = 0;
    double            t0;

    TPM_CHECK(wait_sends(p));
    t0 = tpm_time_now();
    for (int j = 0; j < p->link.n_serve; j++) {
        TPM_CHECK(pack(p, j, pos));
        pos += tpm_reshard_count(&p->plan, p->rank, j);
    }
    p->stats.pack_s += tpm_time_now() - t0;
    if (p->rank == 0) {
        memset(&p->hdr, 0, sizeof(p->hdr));
        p->hdr.kind = TPM_PUSH_WEIGHTS;
        p->hdr.bf16 = p->link.bf16;
        p->hdr.step = step;
        for (int j = 0; j < p->link.n_serve; j++) {
            TPM_CHECK(tpm_comm_send(world_of(p), &p->hdr, sizeof(p->hdr), TPM_DT_BYTE,
                                    p->link.n_train + j, TPM_PUSH_TAG_HDR, &p->hreq[j]));
        }
    }
    pos = 0;
    for (int j = 0; j < p->link.n_serve; j++) {
        const size_t n = tpm_reshard_count(&p->plan, p->rank, j);

        if (n > 0) {
            TPM_CHECK(tpm_comm_send(world_of(p), p->sendbuf + pos * p->esize,
                                    p->link.bf16 ? n * p->esize : n, dt, p->link.n_train + j,
                                    TPM_PUSH_TAG_DATA, &p->req[j]));
        }
        pos += n;
        p->stats.bytes += n * p->esize;
    }
    p->stats.pushes++;
    return TPM_OK;
}

tpm_status_t tpm_pusher_poll(tpm_pusher_t *p, int *request_p, int *stop_p,
                             tpm_status_t *stop_status_p)
{
    *request_p = *stop_p = 0;
    *stop_status_p       = TPM_OK;
    for (int j = 0; j < p->link.n_serve; j++) {
        TPM_CHECK(tpm_comm_test(world_of(p), &p->req[j]));
        TPM_CHECK(tpm_comm_test(world_of(p), &p->hreq[j]));
    }
    if (p->rank != 0) {
        return TPM_OK;
    }
    /* every control message that has arrived: requests, then possibly the stop */
    while (p->ctl_req.active) {
        TPM_CHECK(tpm_comm_test(world_of(p), &p->ctl_req));
        if (p->ctl_req.active) {
            break;
        }
        if (p->ctl.kind == TPM_PUSH_CTL_STOP) {
            *stop_p        = 1;
            *stop_status_p = (tpm_status_t)p->ctl.status;
            break; /* the serving group sends nothing after its stop */
        }
        if (p->ctl.kind == TPM_PUSH_CTL_REQUEST) {
            *request_p = 1;
        }
        TPM_CHECK(post_ctl(p));
    }
    return TPM_OK;
}

tpm_status_t tpm_pusher_finish(tpm_pusher_t *p, int serve_stopped, tpm_status_t status)
{
    tpm_push_hdr_t        bye;
    const struct timespec nap = {0, 10 * 1000 * 1000};
    tpm_comm_req_t        req;
    int32_t               one = 1, *all = NULL;

    TPM_CHECK(wait_sends(p));
    if (p->rank == 0) {
        memset(&bye, 0, sizeof(bye));
        bye.kind   = TPM_PUSH_BYE;
        bye.status = (int32_t)status;
        for (int j = 0; j < p->link.n_serve; j++) {
            TPM_CHECK(tpm_comm_send(world_of(p), &bye, sizeof(bye), TPM_DT_BYTE,
                                    p->link.n_train + j, TPM_PUSH_TAG_HDR, NULL));
        }
        /* the serving group answers the protocol's end with its stop: wait without spinning */
        while (!serve_stopped) {
            int          rq, stop;
            tpm_status_t why;

            TPM_CHECK(tpm_pusher_poll(p, &rq, &stop, &why));
            if (stop) {
                break;
            }
            nanosleep(&nap, NULL);
        }
    }
    /*
     * The other training ranks wait for rank 0 here, sleeping, rather than in MPI_Finalize:
     * the serving group may run for hours, and a rank in MPI_Finalize spins and dies on the
     * SIGTERM that is meant to stop the server (the trainer's handlers are still installed).
     */
    TPM_CHECK(tpm_calloc((size_t)p->z->comm->size, sizeof(int32_t), (void **)&all));
    memset(&req, 0, sizeof(req));
    status = tpm_comm_all_gather(p->z->comm, &one, all, 1, TPM_DT_INT32, &req);
    while (status == TPM_OK && req.active) {
        status = tpm_comm_test(p->z->comm, &req);
        if (status == TPM_OK && req.active) {
            nanosleep(&nap, NULL);
        }
    }
    tpm_free(all);
    return status;
}

const tpm_push_stats_t *tpm_pusher_stats(const tpm_pusher_t *p)
{
    return &p->stats;
}
