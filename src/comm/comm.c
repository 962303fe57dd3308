/* SPDX-License-Identifier: MIT */
/*
 * comm.c: implementation-independent part of the comm layer: byte counters,
 * the --debug-collectives sequence check, and agree-then-branch.
 */
#include "comm/comm.h"

#include <stdio.h>
#include <string.h>

size_t tpm_dtype_size(tpm_dtype_t dt)
{
    static const size_t sizes[TPM_DT_N] = {4, 8, 4, 8, 1};

    return sizes[dt];
}

const char *tpm_coll_kind_name(tpm_coll_kind_t kind)
{
    static const char *names[TPM_COLL_N] = {"all_gather", "reduce_scatter", "all_to_all",
                                            "all_reduce", "bcast",          "barrier",
                                            "split",      "p2p"};

    return names[kind];
}

void tpm_comm_destroy(tpm_comm_t *c)
{
    if (c != NULL) {
        c->ops->destroy(c);
    }
}

/* what one rank reports about the collective it is about to issue */
typedef struct {
    uint64_t seq;
    uint64_t count;
    int32_t  kind;
    int32_t  line;
    char     file[48];
} call_rec_t;

static const char *short_file(const char *file)
{
    const char *s = strstr(file, "src/");

    return s != NULL ? s : file;
}

/*
 * Exchange call records with an all-gather of fixed-size records (itself the
 * first collective every rank reaches, whatever it was about to call), and stop
 * the job naming both call sites when any rank disagrees.
 */
static void debug_check(tpm_comm_t *c, tpm_coll_kind_t kind, size_t count, const char *file,
                        int line)
{
    call_rec_t   me, all[64];
    call_rec_t  *recs = all;
    tpm_status_t status;

    if (!c->debug || c->size == 1) {
        return;
    }
    memset(&me, 0, sizeof(me));
    me.seq   = c->seq;
    me.count = count;
    me.kind  = (int32_t)kind;
    me.line  = line;
    snprintf(me.file, sizeof(me.file), "%s", short_file(file));
    if (c->size > 64) {
        /* keep the check cheap and allocation-free: compare against rank 0 only */
        call_rec_t r0 = me;
        status        = c->ops->bcast(c, &r0, sizeof(r0), TPM_DT_BYTE, 0);
        recs          = &r0;
        if (status == TPM_OK &&
            (r0.seq != me.seq || r0.kind != me.kind || r0.count != me.count)) {
            tpm_fatal(TPM_ERR_INTERNAL,
                      "collective mismatch at #%llu: rank 0 called %s(%llu) at %s:%d, rank %d "
                      "called %s(%llu) at %s:%d",
                      (unsigned long long)me.seq, tpm_coll_kind_name(r0.kind),
                      (unsigned long long)r0.count, r0.file, r0.line, c->rank,
                      tpm_coll_kind_name(kind), (unsigned long long)count, me.file, line);
        }
        return;
    }
    status = c->ops->all_gather(c, &me, recs, sizeof(me), TPM_DT_BYTE, NULL);
    if (status != TPM_OK) {
        tpm_fatal(status, "debug-collectives: record exchange failed");
    }
    for (int r = 0; r < c->size; r++) {
        if (recs[r].seq != me.seq || recs[r].kind != me.kind || recs[r].count != me.count) {
            tpm_fatal(TPM_ERR_INTERNAL,
                      "collective mismatch at #%llu: rank %d called %s(%llu) at %s:%d, rank %d "
                      "called %s(%llu) at %s:%d",
                      (unsigned long long)me.seq, r, tpm_coll_kind_name(recs[r].kind),
                      (unsigned long long)recs[r].count, recs[r].file, recs[r].line, c->rank,
                      tpm_coll_kind_name(kind), (unsigned long long)count, me.file, line);
        }
    }
}

static void account(tpm_comm_t *c, tpm_coll_kind_t kind, size_t count, tpm_dtype_t dt,
                    const char *file, int line)
{
    const double n     = (double)c->size;
    const double bytes = (double)count * (double)tpm_dtype_size(dt);
    double       sent  = 0.0;

    debug_check(c, kind, count, file, line);
    c->seq++;
    c->stats.calls[kind]++;
    if (c->size == 1) {
        return;
    }
    switch (kind) {
    case TPM_COLL_ALLGATHER:
    case TPM_COLL_REDUCE_SCATTER:
    case TPM_COLL_ALLTOALL: sent = bytes * (n - 1.0); break; /* count = per-rank chunk */
    case TPM_COLL_ALLREDUCE: sent = 2.0 * bytes * (n - 1.0) / n; break;
    case TPM_COLL_BCAST: sent = c->rank == c->bcast_root ? bytes : 0.0; break;
    default: break;
    }
    c->stats.bytes[kind] += (uint64_t)sent;
}

tpm_status_t tpm_comm_all_gather_at(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                    tpm_dtype_t dt, tpm_comm_req_t *req, const char *file, int line)
{
    account(c, TPM_COLL_ALLGATHER, count, dt, file, line);
    return c->ops->all_gather(c, send, recv, count, dt, req);
}

tpm_status_t tpm_comm_reduce_scatter_at(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                        tpm_dtype_t dt, tpm_redop_t op, tpm_comm_req_t *req,
                                        const char *file, int line)
{
    account(c, TPM_COLL_REDUCE_SCATTER, count, dt, file, line);
    return c->ops->reduce_scatter(c, send, recv, count, dt, op, req);
}

tpm_status_t tpm_comm_reduce_scatter_scratch_at(tpm_comm_t *c, const void *send, void *recv,
                                                size_t count, tpm_dtype_t dt, tpm_redop_t op,
                                                void *scratch, const char *file, int line)
{
    account(c, TPM_COLL_REDUCE_SCATTER, count, dt, file, line);
    if (c->ops->reduce_scatter_scratch == NULL || scratch == NULL) {
        return c->ops->reduce_scatter(c, send, recv, count, dt, op, NULL);
    }
    return c->ops->reduce_scatter_scratch(c, send, recv, count, dt, op, scratch);
}

tpm_status_t tpm_comm_all_to_all_at(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                    tpm_dtype_t dt, tpm_comm_req_t *req, const char *file, int line)
{
    account(c, TPM_COLL_ALLTOALL, count, dt, file, line);
    return c->ops->all_to_all(c, send, recv, count, dt, req);
}

tpm_status_t tpm_comm_all_to_allv_at(tpm_comm_t *c, const void *send, const size_t *send_counts,
                                     const size_t *send_displs, void *recv,
                                     const size_t *recv_counts, const size_t *recv_displs,
                                     tpm_dtype_t dt, const char *file, int line)
{
    size_t out = 0;

    for (int r = 0; r < c->size; r++) {
        out += r == c->rank ? 0 : send_counts[r];
    }
    /* the debug check compares the kind only: counts legitimately differ per rank */
    debug_check(c, TPM_COLL_ALLTOALL, 0, file, line);
    c->seq++;
    c->stats.calls[TPM_COLL_ALLTOALL]++;
    c->stats.bytes[TPM_COLL_ALLTOALL] += out * tpm_dtype_size(dt);
    return c->ops->all_to_allv(c, send, send_counts, send_displs, recv, recv_counts, recv_displs,
                               dt);
}

tpm_status_t tpm_comm_all_reduce_at(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                    tpm_dtype_t dt, tpm_redop_t op, const char *file, int line)
{
    account(c, TPM_COLL_ALLREDUCE, count, dt, file, line);
    return c->ops->all_reduce(c, send, recv, count, dt, op);
}

tpm_status_t tpm_comm_bcast_at(tpm_comm_t *c, void *buf, size_t count, tpm_dtype_t dt, int root,
                               const char *file, int line)
{
    /* only the root sends; every rank checks the same count */
    c->bcast_root = root;
    account(c, TPM_COLL_BCAST, count, dt, file, line);
    return c->ops->bcast(c, buf, count, dt, root);
}

tpm_status_t tpm_comm_barrier_at(tpm_comm_t *c, const char *file, int line)
{
    account(c, TPM_COLL_BARRIER, 0, TPM_DT_BYTE, file, line);
    return c->ops->barrier(c);
}

tpm_status_t tpm_comm_split_at(tpm_comm_t *c, int color, int key, tpm_comm_t **child_p,
                               const char *file, int line)
{
    *child_p = NULL;
    if (color < 0 && color != TPM_COMM_NO_GROUP) {
        tpm_log_error("comm split: colour %d is negative (TPM_COMM_NO_GROUP for no group)",
                      color);
        return TPM_ERR_INVALID_ARG;
    }
    account(c, TPM_COLL_SPLIT, 0, TPM_DT_BYTE, file, line);
    if (c->ops->split == NULL) {
        tpm_log_error("comm %s: groups (split) are not supported", c->ops->name);
        return TPM_ERR_UNSUPPORTED;
    }
    return c->ops->split(c, color, key, child_p);
}

/* peer and tag checks shared by send and recv; the sent bytes are counted under P2P */
static tpm_status_t p2p_check(tpm_comm_t *c, int peer, int tag, int have_op, const char *what)
{
    if (peer < 0 || peer >= c->size) {
        tpm_log_error("comm %s: peer %d is not a rank of this communicator (size %d)", what,
                      peer, c->size);
        return TPM_ERR_INVALID_ARG;
    }
    if (tag < 0 || tag > 32767) {
        tpm_log_error("comm %s: tag %d outside 0..32767", what, tag);
        return TPM_ERR_INVALID_ARG;
    }
    if (!have_op) {
        tpm_log_error("comm %s: point-to-point is not supported", c->ops->name);
        return TPM_ERR_UNSUPPORTED;
    }
    return TPM_OK;
}

tpm_status_t tpm_comm_send(tpm_comm_t *c, const void *buf, size_t count, tpm_dtype_t dt,
                           int peer, int tag, tpm_comm_req_t *req)
{
    TPM_CHECK(p2p_check(c, peer, tag, c->ops->send != NULL, "send"));
    c->stats.calls[TPM_COLL_P2P]++;
    c->stats.bytes[TPM_COLL_P2P] += (uint64_t)count * tpm_dtype_size(dt);
    return c->ops->send(c, buf, count, dt, peer, tag, req);
}

tpm_status_t tpm_comm_recv(tpm_comm_t *c, void *buf, size_t count, tpm_dtype_t dt, int peer,
                           int tag, tpm_comm_req_t *req)
{
    TPM_CHECK(p2p_check(c, peer, tag, c->ops->recv != NULL, "recv"));
    c->stats.calls[TPM_COLL_P2P]++;
    return c->ops->recv(c, buf, count, dt, peer, tag, req);
}

tpm_status_t tpm_comm_wait(tpm_comm_t *c, tpm_comm_req_t *req)
{
    if (req == NULL || !req->active) {
        return TPM_OK;
    }
    return c->ops->wait(c, req);
}

tpm_status_t tpm_comm_test(tpm_comm_t *c, tpm_comm_req_t *req)
{
    int done;

    if (req == NULL || !req->active) {
        return TPM_OK;
    }
    return c->ops->test(c, req, &done);
}

const void *tpm_comm_mpi_handle(tpm_comm_t *c)
{
    return c != NULL && c->ops->mpi_handle != NULL ? c->ops->mpi_handle(c) : NULL;
}

tpm_status_t tpm_comm_agree(tpm_comm_t *c, tpm_status_t local)
{
    int32_t ok = (local == TPM_OK), all_ok = 0;

    if (tpm_comm_all_reduce(c, &ok, &all_ok, 1, TPM_DT_INT32, TPM_RED_MIN) != TPM_OK) {
        return TPM_ERR_MPI;
    }
    if (all_ok) {
        return TPM_OK;
    }
    if (local == TPM_OK && c->rank == 0) {
        tpm_log_error("stopping: another rank failed (its message is above)");
    }
    return local != TPM_OK ? local : TPM_ERR_REMOTE;
}
