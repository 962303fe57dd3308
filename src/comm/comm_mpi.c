/* SPDX-License-Identifier: MIT */
/*
 * comm_mpi.c: the comm op table on MPI (host buffers): the reference and the
 * CPU path. Communicator errors return (MPI_ERRORS_RETURN) and are turned into
 * TPM_ERR_MPI with MPI's message, so that the caller can agree and abort.
 */
#include "comm/comm.h"

#include <limits.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "base/mem.h"

typedef struct {
    MPI_Comm comm;
} mpi_priv_t;

_Static_assert(sizeof(MPI_Request) <= sizeof(((tpm_comm_req_t *)0)->opaque),
               "MPI_Request must fit in tpm_comm_req_t");

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

static MPI_Request *req_handle(tpm_comm_req_t *req)
{
    return (MPI_Request *)(void *)req->opaque;
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

static tpm_status_t mpi_reduce_scatter(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                       tpm_dtype_t dt, tpm_redop_t op, tpm_comm_req_t *req)
{
    TPM_CHECK(check_count(count, "reduce_scatter"));
    if (req == NULL) {
        return TPM_MPI_CALL(MPI_Reduce_scatter_block(send, recv, (int)count, mpi_dtype(dt),
                                                     mpi_op(op), comm_of(c)));
    }
    TPM_CHECK(TPM_MPI_CALL(MPI_Ireduce_scatter_block(send, recv, (int)count, mpi_dtype(dt),
                                                     mpi_op(op), comm_of(c), req_handle(req))));
    req->active = 1;
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
    (void)c;
    req->active = 0;
    return TPM_MPI_CALL(MPI_Wait(req_handle(req), MPI_STATUS_IGNORE));
}

static tpm_status_t mpi_test(tpm_comm_t *c, tpm_comm_req_t *req, int *done_p)
{
    int flag = 0;

    (void)c;
    TPM_CHECK(TPM_MPI_CALL(MPI_Test(req_handle(req), &flag, MPI_STATUS_IGNORE)));
    if (flag) {
        req->active = 0;
    }
    *done_p = flag;
    return TPM_OK;
}

static void mpi_destroy(tpm_comm_t *c)
{
    mpi_priv_t *p = c->priv;

    if (p != NULL && p->comm != MPI_COMM_NULL) {
        MPI_Comm_free(&p->comm);
    }
    tpm_free(p);
    tpm_free(c);
}

static const tpm_comm_ops_t comm_mpi_ops = {
    .name           = "mpi",
    .all_gather     = mpi_all_gather,
    .reduce_scatter = mpi_reduce_scatter,
    .all_to_all     = mpi_all_to_all,
    .all_to_allv    = mpi_all_to_allv,
    .all_reduce     = mpi_all_reduce,
    .bcast          = mpi_bcast,
    .barrier        = mpi_barrier,
    .wait           = mpi_wait,
    .test           = mpi_test,
    .destroy        = mpi_destroy,
};

tpm_status_t tpm_comm_mpi_create(int debug, tpm_comm_t **comm_p)
{
    tpm_comm_t  *c;
    mpi_priv_t  *p;
    MPI_Comm     node;
    tpm_status_t status;

    TPM_CHECK(tpm_calloc(1, sizeof(*c), (void **)&c));
    TPM_CHECK_GOTO(tpm_calloc(1, sizeof(*p), (void **)&p), status, err_free_c);
    /* a private duplicate: tpmpi's traffic never matches a user's or a library's */
    TPM_CHECK_GOTO(TPM_MPI_CALL(MPI_Comm_dup(MPI_COMM_WORLD, &p->comm)), status, err_free_p);
    MPI_Comm_set_errhandler(p->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(p->comm, &c->rank);
    MPI_Comm_size(p->comm, &c->size);
    TPM_CHECK_GOTO(TPM_MPI_CALL(MPI_Comm_split_type(p->comm, MPI_COMM_TYPE_SHARED, c->rank,
                                                    MPI_INFO_NULL, &node)),
                   status, err_free_comm);
    MPI_Comm_rank(node, &c->local_rank);
    MPI_Comm_free(&node);
    c->ops   = &comm_mpi_ops;
    c->priv  = p;
    c->debug = debug;
    *comm_p  = c;
    return TPM_OK;

err_free_comm:
    MPI_Comm_free(&p->comm);
err_free_p:
    tpm_free(p);
err_free_c:
    tpm_free(c);
    return status;
}
