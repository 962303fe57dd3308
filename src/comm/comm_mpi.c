/* SPDX-License-Identifier: MIT */
/*
 * comm_mpi.c: the comm op table on MPI (host buffers): the reference and the
 * CPU path. Communicator errors return (MPI_ERRORS_RETURN) and are turned into
 * TPM_ERR_MPI with MPI's message, so that the caller can agree and abort.
 *
 * The non-blocking reduce-scatter is not MPI_Ireduce_scatter_block: Open MPI's
 * (coll/libnbc, 4.x and 5.x) reduces the whole vector to rank 0 along a binomial
 * tree and then scatters it, so rank 0 receives and sums log2(N) full vectors
 * and every rank sends the full vector instead of (N-1)/N of it. ZeRO-3 issues
 * one per block and micro-batch. Here it is one MPI_Ialltoall of the chunks into
 * a scratch buffer (each rank sends (N-1)/N of the vector, the bandwidth-optimal
 * volume), and the owner sums its N chunks in rank order 0..N-1 when the
 * request completes (in wait or test): balanced, and the same summation order
 * whatever the MPI library. The blocking reduce-scatter with a caller's scratch
 * buffer does the same with MPI_Alltoall (Open MPI's blocking
 * MPI_Reduce_scatter_block measured 3x slower on ZeRO-3's embedding group at
 * N = 2); without one it stays MPI's.
 */
#include "comm/comm.h"

#include <limits.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "base/mem.h"

/* one non-blocking reduce-scatter in flight: the all-to-all's scratch and what to sum */
#define MPI_RS_SLOTS 4

typedef struct {
    int         used;
    void       *scratch; /* (N * count) received chunks, sender order; kept for reuse */
    size_t      scratch_bytes;
    void       *recv;
    size_t      count;
    tpm_dtype_t dt;
    tpm_redop_t op;
} mpi_rs_slot_t;

typedef struct {
    MPI_Comm      comm;
    mpi_rs_slot_t rs[MPI_RS_SLOTS];
} mpi_priv_t;

/* what a tpm_comm_req_t holds here: the MPI request, and the reduce-scatter slot (-1 none) */
typedef struct {
    MPI_Request mreq;
    int         rs_slot;
} mpi_req_t;

_Static_assert(sizeof(mpi_req_t) <= sizeof(((tpm_comm_req_t *)0)->opaque),
               "mpi_req_t must fit in tpm_comm_req_t");

static tpm_status_t mpi_check(int ret, const char *what)
{
    char msg[MPI_MAX_ERROR_STRING];
    int  len = 0;

    if (ret == MPI_SUCCESS) {
        return TPM_OK;
    }
    MPI_Error_string(ret, msg, &len);
    tpm_log_error("%s failed: %s", what, msg);
    return TPM_ERR_MPI;
}

#define TPM_MPI_CALL(_call) mpi_check((_call), #_call)

static MPI_Comm comm_of(tpm_comm_t *c)
{
    return ((mpi_priv_t *)c->priv)->comm;
}

static MPI_Datatype mpi_dtype(tpm_dtype_t dt)
{
    switch (dt) {
    case TPM_DT_FLOAT: return MPI_FLOAT;
    case TPM_DT_DOUBLE: return MPI_DOUBLE;
    case TPM_DT_INT32: return MPI_INT32_T;
    case TPM_DT_INT64: return MPI_INT64_T;
    default: return MPI_BYTE;
    }
}

static MPI_Op mpi_op(tpm_redop_t op)
{
    switch (op) {
    case TPM_RED_MAX: return MPI_MAX;
    case TPM_RED_MIN: return MPI_MIN;
    default: return MPI_SUM;
    }
}

static mpi_req_t *req_of(tpm_comm_req_t *req)
{
    return (mpi_req_t *)(void *)req->opaque;
}

/* the MPI request of a plain non-blocking collective (no reduce-scatter slot) */
static MPI_Request *req_handle(tpm_comm_req_t *req)
{
    req_of(req)->rs_slot = -1;
    return &req_of(req)->mreq;
}

/* MPI counts are int: large buffers would need derived types; refuse clearly instead */
static tpm_status_t check_count(size_t count, const char *what)
{
    if (count > (size_t)0x7fffffff) {
        tpm_log_error("%s: %zu elements exceed MPI's int count", what, count);
        return TPM_ERR_OVERFLOW;
    }
    return TPM_OK;
}

static tpm_status_t mpi_all_gather(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                   tpm_dtype_t dt, tpm_comm_req_t *req)
{
    MPI_Datatype t = mpi_dtype(dt);

    TPM_CHECK(check_count(count, "all_gather"));
    if (req == NULL) {
        return TPM_MPI_CALL(MPI_Allgather(send, (int)count, t, recv, (int)count, t, comm_of(c)));
    }
    TPM_CHECK(TPM_MPI_CALL(
        MPI_Iallgather(send, (int)count, t, recv, (int)count, t, comm_of(c), req_handle(req))));
    req->active = 1;
    return TPM_OK;
}

/*
 * out[i] = op over j = 0..n-1 of in[j * count + i], j in order: one pass per received chunk.
 * An fp32 sum (the gradients) is the hot path: vectorised, shared by the rank's OpenMP
 * threads; other types and ops are small host-side buffers.
 */
static void rs_sum_f32(const float *in, float *out, size_t count, int n)
{
    memcpy(out, in, count * sizeof(float));
    for (int j = 1; j < n; j++) {
        const float *x = in + (size_t)j * count;
#pragma omp parallel for simd schedule(static) if (count >= 65536)
        for (size_t i = 0; i < count; i++) {
            out[i] += x[i];
        }
    }
}

#define RS_REDUCE(T)                                                                               \
    do {                                                                                           \
        const T *x = in;                                                                           \
        T       *y = out;                                                                          \
        memcpy(y, x, count * sizeof(T));                                                           \
        for (int j = 1; j < n; j++) {                                                              \
            for (size_t i = 0; i < count; i++) {                                                   \
                const T a = y[i], b = x[(size_t)j * count + i];                                    \
                y[i] = op == TPM_RED_SUM   ? a + b                                                 \
                       : op == TPM_RED_MAX ? (b > a ? b : a)                                       \
                                           : (b < a ? b : a);                                      \
            }                                                                                      \
        }                                                                                          \
    } while (0)

static void rs_reduce(const void *in, void *out, size_t count, int n, tpm_dtype_t dt,
                      tpm_redop_t op)
{
    if (dt == TPM_DT_FLOAT && op == TPM_RED_SUM) {
        rs_sum_f32(in, out, count, n);
        return;
    }
    switch (dt) {
    case TPM_DT_FLOAT: RS_REDUCE(float); break;
    case TPM_DT_DOUBLE: RS_REDUCE(double); break;
    case TPM_DT_INT32: RS_REDUCE(int32_t); break;
    case TPM_DT_INT64: RS_REDUCE(int64_t); break;
    default: RS_REDUCE(uint8_t); break;
    }
}

/* the all-to-all of a slot completed: reduce its chunks into recv and free the slot */
static void rs_complete(tpm_comm_t *c, tpm_comm_req_t *req)
{
    mpi_priv_t    *p  = c->priv;
    const int      si = req_of(req)->rs_slot;
    mpi_rs_slot_t *s;

    if (si < 0) {
        return;
    }
    s = &p->rs[si];
    rs_reduce(s->scratch, s->recv, s->count, c->size, s->dt, s->op);
    s->used              = 0;
    req_of(req)->rs_slot = -1;
}

static tpm_status_t mpi_reduce_scatter(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                       tpm_dtype_t dt, tpm_redop_t op, tpm_comm_req_t *req)
{
    mpi_priv_t    *p = c->priv;
    mpi_rs_slot_t *s = NULL;
    size_t         nbytes;
    int            si;

    TPM_CHECK(check_count(count, "reduce_scatter"));
    if (req == NULL) {
        return TPM_MPI_CALL(MPI_Reduce_scatter_block(send, recv, (int)count, mpi_dtype(dt),
                                                     mpi_op(op), comm_of(c)));
    }
    for (si = 0; si < MPI_RS_SLOTS; si++) {
        if (!p->rs[si].used) {
            s = &p->rs[si];
            break;
        }
    }
    if (s == NULL) {
        tpm_log_error("reduce_scatter: more than %d non-blocking reduce-scatters in flight",
                      MPI_RS_SLOTS);
        return TPM_ERR_INTERNAL;
    }
    TPM_CHECK(tpm_mul_size((size_t)c->size * count, tpm_dtype_size(dt), &nbytes));
    if (nbytes > s->scratch_bytes) {
        void *q;
        TPM_CHECK(tpm_malloc(nbytes, &q));
        tpm_free(s->scratch);
        c->stats.scratch_bytes += nbytes - s->scratch_bytes;
        s->scratch       = q;
        s->scratch_bytes = nbytes;
    }
    TPM_CHECK(TPM_MPI_CALL(MPI_Ialltoall(send, (int)count, mpi_dtype(dt), s->scratch, (int)count,
                                         mpi_dtype(dt), comm_of(c), &req_of(req)->mreq)));
    s->used              = 1;
    s->recv              = recv;
    s->count             = count;
    s->dt                = dt;
    s->op                = op;
    req_of(req)->rs_slot = si;
    req->active          = 1;
    return TPM_OK;
}

static tpm_status_t mpi_reduce_scatter_scratch(tpm_comm_t *c, const void *send, void *recv,
                                               size_t count, tpm_dtype_t dt, tpm_redop_t op,
                                               void *scratch)
{
    TPM_CHECK(check_count(count, "reduce_scatter"));
    TPM_CHECK(TPM_MPI_CALL(MPI_Alltoall(send, (int)count, mpi_dtype(dt), scratch, (int)count,
                                        mpi_dtype(dt), comm_of(c))));
    rs_reduce(scratch, recv, count, c->size, dt, op);
    return TPM_OK;
}

static tpm_status_t mpi_all_to_all(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                   tpm_dtype_t dt, tpm_comm_req_t *req)
{
    MPI_Datatype t = mpi_dtype(dt);

    TPM_CHECK(check_count(count, "all_to_all"));
    if (req == NULL) {
        return TPM_MPI_CALL(MPI_Alltoall(send, (int)count, t, recv, (int)count, t, comm_of(c)));
    }
    TPM_CHECK(TPM_MPI_CALL(
        MPI_Ialltoall(send, (int)count, t, recv, (int)count, t, comm_of(c), req_handle(req))));
    req->active = 1;
    return TPM_OK;
}

static tpm_status_t mpi_all_to_allv(tpm_comm_t *c, const void *send, const size_t *send_counts,
                                    const size_t *send_displs, void *recv,
                                    const size_t *recv_counts, const size_t *recv_displs,
                                    tpm_dtype_t dt)
{
    const int    n = c->size;
    int         *ibuf;
    tpm_status_t status;

    TPM_CHECK(tpm_malloc(4 * (size_t)n * sizeof(int), (void **)&ibuf));
    for (int r = 0; r < n; r++) {
        if (send_counts[r] > INT_MAX || send_displs[r] > INT_MAX || recv_counts[r] > INT_MAX ||
            recv_displs[r] > INT_MAX) {
            tpm_log_error("all_to_allv: counts or displacements exceed MPI's int range");
            tpm_free(ibuf);
            return TPM_ERR_OVERFLOW;
        }
        ibuf[r]         = (int)send_counts[r];
        ibuf[n + r]     = (int)send_displs[r];
        ibuf[2 * n + r] = (int)recv_counts[r];
        ibuf[3 * n + r] = (int)recv_displs[r];
    }
    status = TPM_MPI_CALL(MPI_Alltoallv(send, ibuf, ibuf + n, mpi_dtype(dt), recv, ibuf + 2 * n,
                                        ibuf + 3 * n, mpi_dtype(dt), comm_of(c)));
    tpm_free(ibuf);
    return status;
}

static tpm_status_t mpi_all_reduce(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                   tpm_dtype_t dt, tpm_redop_t op)
{
    TPM_CHECK(check_count(count, "all_reduce"));
    return TPM_MPI_CALL(MPI_Allreduce(send == recv ? MPI_IN_PLACE : send, recv, (int)count,
                                      mpi_dtype(dt), mpi_op(op), comm_of(c)));
}

static tpm_status_t mpi_bcast(tpm_comm_t *c, void *buf, size_t count, tpm_dtype_t dt, int root)
{
    TPM_CHECK(check_count(count, "bcast"));
    return TPM_MPI_CALL(MPI_Bcast(buf, (int)count, mpi_dtype(dt), root, comm_of(c)));
}

static tpm_status_t mpi_barrier(tpm_comm_t *c)
{
    return TPM_MPI_CALL(MPI_Barrier(comm_of(c)));
}

static tpm_status_t mpi_wait(tpm_comm_t *c, tpm_comm_req_t *req)
{
    req->active = 0;
    TPM_CHECK(TPM_MPI_CALL(MPI_Wait(&req_of(req)->mreq, MPI_STATUS_IGNORE)));
    rs_complete(c, req);
    return TPM_OK;
}

static tpm_status_t mpi_test(tpm_comm_t *c, tpm_comm_req_t *req, int *done_p)
{
    int flag = 0;

    TPM_CHECK(TPM_MPI_CALL(MPI_Test(&req_of(req)->mreq, &flag, MPI_STATUS_IGNORE)));
    if (flag) {
        req->active = 0;
        rs_complete(c, req);
    }
    *done_p = flag;
    return TPM_OK;
}

static tpm_status_t mpi_send(tpm_comm_t *c, const void *buf, size_t count, tpm_dtype_t dt,
                             int peer, int tag, tpm_comm_req_t *req)
{
    TPM_CHECK(check_count(count, "send"));
    if (req == NULL) {
        return TPM_MPI_CALL(MPI_Send(buf, (int)count, mpi_dtype(dt), peer, tag, comm_of(c)));
    }
    TPM_CHECK(TPM_MPI_CALL(
        MPI_Isend(buf, (int)count, mpi_dtype(dt), peer, tag, comm_of(c), req_handle(req))));
    req->active = 1;
    return TPM_OK;
}

static tpm_status_t mpi_recv(tpm_comm_t *c, void *buf, size_t count, tpm_dtype_t dt, int peer,
                             int tag, tpm_comm_req_t *req)
{
    TPM_CHECK(check_count(count, "recv"));
    if (req == NULL) {
        return TPM_MPI_CALL(
            MPI_Recv(buf, (int)count, mpi_dtype(dt), peer, tag, comm_of(c), MPI_STATUS_IGNORE));
    }
    TPM_CHECK(TPM_MPI_CALL(
        MPI_Irecv(buf, (int)count, mpi_dtype(dt), peer, tag, comm_of(c), req_handle(req))));
    req->active = 1;
    return TPM_OK;
}

static tpm_status_t mpi_wrap(MPI_Comm comm, int debug, tpm_comm_t **comm_p);

static tpm_status_t mpi_split(tpm_comm_t *c, int color, int key, tpm_comm_t **child_p)
{
    MPI_Comm     sub = MPI_COMM_NULL;
    tpm_status_t status;

    TPM_CHECK(TPM_MPI_CALL(MPI_Comm_split(comm_of(c), color < 0 ? MPI_UNDEFINED : color, key,
                                          &sub)));
    if (sub == MPI_COMM_NULL) {
        return TPM_OK; /* TPM_COMM_NO_GROUP */
    }
    status = mpi_wrap(sub, c->debug, child_p);
    if (status != TPM_OK) {
        MPI_Comm_free(&sub);
    }
    return status;
}

static void mpi_destroy(tpm_comm_t *c)
{
    mpi_priv_t *p = c->priv;

    if (p != NULL && p->comm != MPI_COMM_NULL) {
        MPI_Comm_free(&p->comm);
    }
    for (int i = 0; p != NULL && i < MPI_RS_SLOTS; i++) {
        tpm_free(p->rs[i].scratch);
    }
    tpm_free(p);
    tpm_free(c);
}

static const void *mpi_handle(tpm_comm_t *c)
{
    return &((mpi_priv_t *)c->priv)->comm;
}

static const tpm_comm_ops_t comm_mpi_ops = {
    .name                   = "mpi",
    .all_gather             = mpi_all_gather,
    .reduce_scatter         = mpi_reduce_scatter,
    .reduce_scatter_scratch = mpi_reduce_scatter_scratch,
    .all_to_all             = mpi_all_to_all,
    .all_to_allv            = mpi_all_to_allv,
    .all_reduce             = mpi_all_reduce,
    .bcast                  = mpi_bcast,
    .barrier                = mpi_barrier,
    .split                  = mpi_split,
    .send                   = mpi_send,
    .recv                   = mpi_recv,
    .wait                   = mpi_wait,
    .test                   = mpi_test,
    .mpi_handle             = mpi_handle,
    .destroy                = mpi_destroy,
};

/* a tpm_comm_t over @p comm, which it then owns (freed by destroy; not on failure) */
static tpm_status_t mpi_wrap(MPI_Comm comm, int debug, tpm_comm_t **comm_p)
{
    tpm_comm_t  *c;
    mpi_priv_t  *p;
    MPI_Comm     node;
    tpm_status_t status;

    TPM_CHECK(tpm_calloc(1, sizeof(*c), (void **)&c));
    TPM_CHECK_GOTO(tpm_calloc(1, sizeof(*p), (void **)&p), status, err_free_c);
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm, &c->rank);
    MPI_Comm_size(comm, &c->size);
    TPM_CHECK_GOTO(TPM_MPI_CALL(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, c->rank,
                                                    MPI_INFO_NULL, &node)),
                   status, err_free_p);
    MPI_Comm_rank(node, &c->local_rank);
    MPI_Comm_free(&node);
    p->comm  = comm;
    c->ops   = &comm_mpi_ops;
    c->priv  = p;
    c->debug = debug;
    *comm_p  = c;
    return TPM_OK;

err_free_p:
    tpm_free(p);
err_free_c:
    tpm_free(c);
    return status;
}

tpm_status_t tpm_comm_mpi_create(int debug, tpm_comm_t **comm_p)
{
    MPI_Comm     comm;
    tpm_status_t status;

    /* a private duplicate: tpmpi's traffic never matches a user's or a library's */
    TPM_CHECK(TPM_MPI_CALL(MPI_Comm_dup(MPI_COMM_WORLD, &comm)));
    status = mpi_wrap(comm, debug, comm_p);
    if (status != TPM_OK) {
        MPI_Comm_free(&comm);
    }
    return status;
}
