/* SPDX-License-Identifier: MIT */
/*
 * comm_nccl.c: the comm op table on NCCL, for --device=cuda (built --with-cuda).
 *
 * Buffers decide the transport, call by call: device memory goes through NCCL, host
 * memory (the scalars of the training loop, agreements, the --debug-collectives records,
 * broadcast strings) through an MPI communicator kept inside. Both transports see the same
 * SPMD call sequence, so every rank takes the same path for the same call.
 *
 * Streams. Every NCCL call runs on one communication stream of high priority, so that a
 * prefetching all-gather or an overlapped reduce-scatter progresses while the backend's
 * kernels run on the compute stream (backend_cuda.h). A collective first makes the
 * communication stream wait for an event recorded on the compute stream (its input is
 * ready); a non-blocking request is an event recorded after it, and tpm_comm_wait() makes
 * the compute stream wait for that event: no host thread blocks, later kernels simply
 * start after the data has arrived. A blocking collective does the same wait at once.
 * Only one stream ever issues NCCL calls, so the order is the same on every rank.
 *
 * Bootstrap: rank 0 creates the unique id, MPI broadcasts it; each rank uses the GPU of
 * its node-local rank, or the only GPU it sees when the launcher gave each rank its own
 * (CUDA_VISIBLE_DEVICES). NCCL cannot put two ranks on one GPU: more ranks than GPUs on a
 * node is refused (or reported by NCCL's init). Failures before the communicator exists
 * are agreed on over MPI, so every rank returns the same status and can exit cleanly.
 */
#include "comm/comm.h"

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>
#include <string.h>

#include "backend/backend_cuda.h"
#include "base/log.h"
#include "base/mem.h"
#include "kernels/kernels.h"

#define NCCL_MAX_REQS  16          /* non-blocking requests in flight (ZeRO-3 uses 2) */
#define NCCL_REQ_MAGIC 0x6e63636cu /* "nccl" */

typedef struct {
    int            used;
    int            is_mpi; /* a host-buffer request: mreq is the MPI request */
    cudaEvent_t    done;   /* recorded on the comm stream after the collective */
    tpm_comm_req_t mreq;
} nccl_slot_t;

typedef struct {
    uint32_t magic;
    int32_t  slot;
} nccl_req_t;

_Static_assert(sizeof(nccl_req_t) <= sizeof(((tpm_comm_req_t *)0)->opaque),
               "nccl_req_t must fit in tpm_comm_req_t");

typedef struct {
    tpm_comm_t  *mpi;       /* host buffers, bootstrap */
    ncclComm_t   nccl;      /* NULL until initialised */
    cudaStream_t stream;    /* communication stream */
    cudaStream_t compute;   /* borrowed: the process's compute stream */
    int          have_proc; /* holds a reference on the process CUDA state */
    cudaEvent_t  ev_ready;  /* compute-stream point the next collective waits for */
    cudaEvent_t  ev_done;   /* end of the last blocking collective */
    nccl_slot_t  slots[NCCL_MAX_REQS];
} nccl_priv_t;

static tpm_status_t nccl_status(ncclResult_t res, const char *call)
{
    if (res == ncclSuccess) {
        return TPM_OK;
    }
    tpm_log_error("%s failed: %s (%s)", call, ncclGetErrorString(res), ncclGetLastError(NULL));
    return TPM_ERR_CUDA;
}

/** Check an NCCL call: logs ncclGetErrorString and ncclGetLastError, returns TPM_ERR_CUDA. */
#define TPM_NCCL_CALL(_call) nccl_status((_call), #_call)

static nccl_priv_t *priv_of(tpm_comm_t *c)
{
    return c->priv;
}

static ncclDataType_t nccl_dtype(tpm_dtype_t dt)
{
    switch (dt) {
    case TPM_DT_FLOAT: return ncclFloat32;
    case TPM_DT_DOUBLE: return ncclFloat64;
    case TPM_DT_INT32: return ncclInt32;
    case TPM_DT_INT64: return ncclInt64;
    default: return ncclUint8;
    }
}

static ncclRedOp_t nccl_op(tpm_redop_t op)
{
    switch (op) {
    case TPM_RED_MAX: return ncclMax;
    case TPM_RED_MIN: return ncclMin;
    default: return ncclSum;
    }
}

/* 1 for device (or managed) memory, 0 for host memory */
static int is_device(const void *p)
{
    struct cudaPointerAttributes a;

    if (p == NULL || cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        (void)cudaGetLastError(); /* an unknown pointer is host memory, not an error */
        return 0;
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

/*
 * Transport of a collective: *dev_p = 1 for NCCL. Empty collectives go to MPI (no pointer
 * to look at); a host/device mix is a caller error.
 */
static tpm_status_t route(const void *send, const void *recv, size_t count, const char *what,
                          int *dev_p)
{
    int ds, dr;

    if (count == 0) {
        *dev_p = 0;
        return TPM_OK;
    }
    ds = is_device(send);
    dr = is_device(recv);
    if (ds != dr) {
        tpm_log_error("nccl comm %s: send buffer is %s memory, receive buffer %s memory", what,
                      ds ? "device" : "host", dr ? "device" : "host");
        return TPM_ERR_INVALID_ARG;
    }
    *dev_p = ds;
    return TPM_OK;
}

/* ---- requests ---------------------------------------------------------------------------- */

static tpm_status_t slot_take(nccl_priv_t *p, int *slot_p)
{
    for (int i = 0; i < NCCL_MAX_REQS; i++) {
        if (!p->slots[i].used) {
            p->slots[i].used   = 1;
            p->slots[i].is_mpi = 0;
            *slot_p            = i;
            return TPM_OK;
        }
    }
    tpm_log_error("nccl comm: more than %d non-blocking collectives in flight", NCCL_MAX_REQS);
    return TPM_ERR_INTERNAL;
}

static void req_set(tpm_comm_req_t *req, int slot)
{
    nccl_req_t r = {NCCL_REQ_MAGIC, slot};

    memcpy(req->opaque, &r, sizeof(r));
    req->active = 1;
}

static tpm_status_t req_slot(nccl_priv_t *p, const tpm_comm_req_t *req, nccl_slot_t **s_p)
{
    nccl_req_t r;

    memcpy(&r, req->opaque, sizeof(r));
    if (r.magic != NCCL_REQ_MAGIC || r.slot < 0 || r.slot >= NCCL_MAX_REQS ||
        !p->slots[r.slot].used) {
        tpm_log_error("nccl comm: request was not issued by this communicator");
        return TPM_ERR_INVALID_ARG;
    }
    *s_p = &p->slots[r.slot];
    return TPM_OK;
}

/* ---- ordering against the compute stream ------------------------------------------------- */

/* the communication stream waits until the compute stream has produced the input */
static tpm_status_t nccl_begin(nccl_priv_t *p)
{
    TPM_CHECK(TPM_CUDA_CALL(cudaEventRecord(p->ev_ready, p->compute)));
    return TPM_CUDA_CALL(cudaStreamWaitEvent(p->stream, p->ev_ready, 0));
}

/* blocking: later compute work waits for the result; non-blocking: an event in req */
static tpm_status_t nccl_end(nccl_priv_t *p, tpm_comm_req_t *req)
{
    int slot;

    if (req == NULL) {
        TPM_CHECK(TPM_CUDA_CALL(cudaEventRecord(p->ev_done, p->stream)));
        return TPM_CUDA_CALL(cudaStreamWaitEvent(p->compute, p->ev_done, 0));
    }
    if (slot_take(p, &slot) != TPM_OK) {
        /* the collective is queued already: keep later compute ordered after it, then fail */
        (void)nccl_end(p, NULL);
        return TPM_ERR_INTERNAL; /* slot_take said why */
    }
    if (TPM_CUDA_CALL(cudaEventRecord(p->slots[slot].done, p->stream)) != TPM_OK) {
        p->slots[slot].used = 0;
        return TPM_ERR_CUDA;
    }
    req_set(req, slot);
    return TPM_OK;
}

/* issue a host-buffer collective on the inner MPI communicator (mreq NULL: blocking) */
typedef tpm_status_t (*mpi_issue_func_t)(nccl_priv_t *p, void *ctx, tpm_comm_req_t *mreq);

/* MPI path of a possibly non-blocking collective: its MPI request lives in a slot */
static tpm_status_t mpi_nb(nccl_priv_t *p, tpm_comm_req_t *req, mpi_issue_func_t issue, void *ctx)
{
    int          slot;
    tpm_status_t status;

    if (req == NULL) {
        return issue(p, ctx, NULL);
    }
    TPM_CHECK(slot_take(p, &slot));
    memset(&p->slots[slot].mreq, 0, sizeof(p->slots[slot].mreq));
    status = issue(p, ctx, &p->slots[slot].mreq);
    if (status != TPM_OK) {
        p->slots[slot].used = 0;
        return status;
    }
    p->slots[slot].is_mpi = 1;
    req_set(req, slot);
    return TPM_OK;
}

/* ---- collectives -------------------------------------------------------------------------- */

typedef struct {
    const void *send;
    void       *recv;
    size_t      count;
    tpm_dtype_t dt;
    tpm_redop_t op;
} coll_args_t;

static tpm_status_t mpi_all_gather_issue(nccl_priv_t *p, void *ctx, tpm_comm_req_t *mreq)
{
    coll_args_t *a = ctx;

    return p->mpi->ops->all_gather(p->mpi, a->send, a->recv, a->count, a->dt, mreq);
}

static tpm_status_t mpi_reduce_scatter_issue(nccl_priv_t *p, void *ctx, tpm_comm_req_t *mreq)
{
    coll_args_t *a = ctx;

    return p->mpi->ops->reduce_scatter(p->mpi, a->send, a->recv, a->count, a->dt, a->op, mreq);
}

static tpm_status_t mpi_all_to_all_issue(nccl_priv_t *p, void *ctx, tpm_comm_req_t *mreq)
{
    coll_args_t *a = ctx;

    return p->mpi->ops->all_to_all(p->mpi, a->send, a->recv, a->count, a->dt, mreq);
}

static tpm_status_t nccl_all_gather(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                    tpm_dtype_t dt, tpm_comm_req_t *req)
{
    nccl_priv_t *p = priv_of(c);
    coll_args_t  a = {send, recv, count, dt, TPM_RED_SUM};
    int          dev;

    TPM_CHECK(route(send, recv, count, "all_gather", &dev));
    if (!dev) {
        return mpi_nb(p, req, mpi_all_gather_issue, &a);
    }
    TPM_CHECK(nccl_begin(p));
    TPM_CHECK(TPM_NCCL_CALL(ncclAllGather(send, recv, count, nccl_dtype(dt), p->nccl, p->stream)));
    return nccl_end(p, req);
}

static tpm_status_t nccl_reduce_scatter(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                        tpm_dtype_t dt, tpm_redop_t op, tpm_comm_req_t *req)
{
    nccl_priv_t *p = priv_of(c);
    coll_args_t  a = {send, recv, count, dt, op};
    int          dev;

    TPM_CHECK(route(send, recv, count, "reduce_scatter", &dev));
    if (!dev) {
        return mpi_nb(p, req, mpi_reduce_scatter_issue, &a);
    }
    TPM_CHECK(nccl_begin(p));
    TPM_CHECK(TPM_NCCL_CALL(
        ncclReduceScatter(send, recv, count, nccl_dtype(dt), nccl_op(op), p->nccl, p->stream)));
    return nccl_end(p, req);
}

/*
 * Per-peer chunks of an all-to-all: with counts NULL every chunk has @p count elements at
 * peer * count (all_to_all), else counts/displacements per peer (all_to_allv), in elements.
 */
typedef struct {
    size_t        count;
    const size_t *send_counts, *send_displs, *recv_counts, *recv_displs;
} chunks_t;

static size_t ck_send_n(const chunks_t *k, int peer)
{
    return k->send_counts != NULL ? k->send_counts[peer] : k->count;
}

static size_t ck_send_off(const chunks_t *k, int peer)
{
    return k->send_displs != NULL ? k->send_displs[peer] : (size_t)peer * k->count;
}

static size_t ck_recv_n(const chunks_t *k, int peer)
{
    return k->recv_counts != NULL ? k->recv_counts[peer] : k->count;
}

static size_t ck_recv_off(const chunks_t *k, int peer)
{
    return k->recv_displs != NULL ? k->recv_displs[peer] : (size_t)peer * k->count;
}

/*
 * The device path of both all-to-alls, on the communication stream: the own chunk is a
 * device copy, the others grouped ncclSend/ncclRecv (empty chunks skipped: the peer skips
 * the matching call). The caller brackets it with nccl_begin/nccl_end.
 */
static tpm_status_t nccl_p2p_exchange(tpm_comm_t *c, const char *s, char *r, tpm_dtype_t dt,
                                      const chunks_t *k)
{
    nccl_priv_t         *p   = priv_of(c);
    const size_t         esz = tpm_dtype_size(dt);
    const ncclDataType_t t   = nccl_dtype(dt);
    const int            me  = c->rank;
    tpm_status_t         status;

    if (ck_send_n(k, me) > 0) {
        TPM_CHECK(TPM_CUDA_CALL(
            cudaMemcpyAsync(r + ck_recv_off(k, me) * esz, s + ck_send_off(k, me) * esz,
                            ck_send_n(k, me) * esz, cudaMemcpyDeviceToDevice, p->stream)));
    }
    TPM_CHECK(TPM_NCCL_CALL(ncclGroupStart()));
    status = TPM_OK;
    for (int peer = 0; peer < c->size && status == TPM_OK; peer++) {
        if (peer == me) {
            continue;
        }
        if (ck_send_n(k, peer) > 0) {
            status = TPM_NCCL_CALL(ncclSend(s + ck_send_off(k, peer) * esz, ck_send_n(k, peer), t,
                                            peer, p->nccl, p->stream));
        }
        if (status == TPM_OK && ck_recv_n(k, peer) > 0) {
            status = TPM_NCCL_CALL(ncclRecv(r + ck_recv_off(k, peer) * esz, ck_recv_n(k, peer), t,
                                            peer, p->nccl, p->stream));
        }
    }
    /* a group that was opened is always closed, even after a failed call inside it */
    if (TPM_NCCL_CALL(ncclGroupEnd()) != TPM_OK) {
        status = TPM_ERR_CUDA;
    }
    return status;
}

static tpm_status_t nccl_all_to_all(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                    tpm_dtype_t dt, tpm_comm_req_t *req)
{
    nccl_priv_t   *p = priv_of(c);
    coll_args_t    a = {send, recv, count, dt, TPM_RED_SUM};
    const chunks_t k = {count, NULL, NULL, NULL, NULL};
    int            dev;

    TPM_CHECK(route(send, recv, count, "all_to_all", &dev));
    if (!dev) {
        return mpi_nb(p, req, mpi_all_to_all_issue, &a);
    }
    TPM_CHECK(nccl_begin(p));
    TPM_CHECK(nccl_p2p_exchange(c, send, recv, dt, &k));
    return nccl_end(p, req);
}

/*
 * Variable chunks, blocking. The path is chosen by the kind of the buffers, not by the counts,
 * so that a rank with nothing to send still takes the same path as the others (a NULL buffer
 * counts as host memory): every rank must pass buffers of the same kind.
 */
static tpm_status_t nccl_all_to_allv(tpm_comm_t *c, const void *send, const size_t *send_counts,
                                     const size_t *send_displs, void *recv,
                                     const size_t *recv_counts, const size_t *recv_displs,
                                     tpm_dtype_t dt)
{
    nccl_priv_t   *p  = priv_of(c);
    const chunks_t k  = {0, send_counts, send_displs, recv_counts, recv_displs};
    const int      ds = send != NULL && is_device(send), dr = recv != NULL && is_device(recv);

    if (send != NULL && recv != NULL && ds != dr) {
        tpm_log_error("nccl comm all_to_allv: send buffer is %s memory, receive buffer %s memory",
                      ds ? "device" : "host", dr ? "device" : "host");
        return TPM_ERR_INVALID_ARG;
    }
    if (!ds && !dr) {
        return p->mpi->ops->all_to_allv(p->mpi, send, send_counts, send_displs, recv, recv_counts,
                                        recv_displs, dt);
    }
    if (recv_counts[c->rank] != send_counts[c->rank]) {
        tpm_log_error("nccl comm all_to_allv: this rank sends itself %zu elements but expects %zu",
                      send_counts[c->rank], recv_counts[c->rank]);
        return TPM_ERR_INVALID_ARG;
    }
    TPM_CHECK(nccl_begin(p));
    TPM_CHECK(nccl_p2p_exchange(c, send, recv, dt, &k));
    return nccl_end(p, NULL);
}

static tpm_status_t nccl_all_reduce(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                    tpm_dtype_t dt, tpm_redop_t op)
{
    nccl_priv_t *p = priv_of(c);
    int          dev;

    TPM_CHECK(route(send, recv, count, "all_reduce", &dev));
    if (!dev) {
        return p->mpi->ops->all_reduce(p->mpi, send, recv, count, dt, op);
    }
    TPM_CHECK(nccl_begin(p));
    TPM_CHECK(TPM_NCCL_CALL(
        ncclAllReduce(send, recv, count, nccl_dtype(dt), nccl_op(op), p->nccl, p->stream)));
    return nccl_end(p, NULL);
}

static tpm_status_t nccl_bcast(tpm_comm_t *c, void *buf, size_t count, tpm_dtype_t dt, int root)
{
    nccl_priv_t *p = priv_of(c);
    int          dev;

    TPM_CHECK(route(buf, buf, count, "bcast", &dev));
    if (!dev) {
        return p->mpi->ops->bcast(p->mpi, buf, count, dt, root);
    }
    TPM_CHECK(nccl_begin(p));
    TPM_CHECK(
        TPM_NCCL_CALL(ncclBroadcast(buf, buf, count, nccl_dtype(dt), root, p->nccl, p->stream)));
    return nccl_end(p, NULL);
}

/* a host-level barrier: device work already queued is not waited for */
static tpm_status_t nccl_barrier(tpm_comm_t *c)
{
    nccl_priv_t *p = priv_of(c);

    return p->mpi->ops->barrier(p->mpi);
}

static tpm_status_t check_async(nccl_priv_t *p)
{
    ncclResult_t async = ncclSuccess;

    TPM_CHECK(TPM_NCCL_CALL(ncclCommGetAsyncError(p->nccl, &async)));
    if (async != ncclSuccess && async != ncclInProgress) {
        return TPM_NCCL_CALL(async);
    }
    return TPM_OK;
}

static tpm_status_t nccl_wait(tpm_comm_t *c, tpm_comm_req_t *req)
{
    nccl_priv_t *p = priv_of(c);
    nccl_slot_t *s;
    tpm_status_t status;

    req->active = 0;
    TPM_CHECK(req_slot(p, req, &s));
    if (s->is_mpi) {
        status = p->mpi->ops->wait(p->mpi, &s->mreq);
    } else {
        /* the compute stream, not the host, waits for the data */
        status = TPM_CUDA_CALL(cudaStreamWaitEvent(p->compute, s->done, 0));
        if (status == TPM_OK) {
            status = check_async(p);
        }
    }
    s->used = 0;
    return status;
}

static tpm_status_t nccl_test(tpm_comm_t *c, tpm_comm_req_t *req, int *done_p)
{
    nccl_priv_t *p = priv_of(c);
    nccl_slot_t *s;
    cudaError_t  err;
    int          done = 0;

    TPM_CHECK(req_slot(p, req, &s));
    if (s->is_mpi) {
        TPM_CHECK(p->mpi->ops->test(p->mpi, &s->mreq, &done));
    } else {
        err = cudaEventQuery(s->done);
        if (err == cudaErrorNotReady) {
            (void)cudaGetLastError();
            TPM_CHECK(check_async(p));
        } else {
            TPM_CHECK(TPM_CUDA_CALL(err));
            done = 1; /* finished: the compute stream need not wait for it */
        }
    }
    if (done) {
        s->used     = 0;
        req->active = 0;
    }
    *done_p = done;
    return TPM_OK;
}

static void nccl_destroy(tpm_comm_t *c)
{
    nccl_priv_t *p = c->priv;

    if (p != NULL) {
        if (p->stream != NULL) {
            (void)TPM_CUDA_CALL(cudaStreamSynchronize(p->stream));
        }
        if (p->nccl != NULL) {
            (void)TPM_NCCL_CALL(ncclCommDestroy(p->nccl));
        }
        for (int i = 0; i < NCCL_MAX_REQS; i++) {
            if (p->slots[i].done != NULL) {
                (void)TPM_CUDA_CALL(cudaEventDestroy(p->slots[i].done));
            }
        }
        if (p->ev_ready != NULL) {
            (void)TPM_CUDA_CALL(cudaEventDestroy(p->ev_ready));
        }
        if (p->ev_done != NULL) {
            (void)TPM_CUDA_CALL(cudaEventDestroy(p->ev_done));
        }
        if (p->stream != NULL) {
            (void)TPM_CUDA_CALL(cudaStreamDestroy(p->stream));
        }
        if (p->have_proc) {
            tpm_cuda_proc_release();
        }
        tpm_comm_destroy(p->mpi);
        tpm_free(p);
    }
    tpm_free(c);
}


/* streams and events of a communicator on the process's GPU (device -1: the current one) */
static tpm_status_t setup_streams(nccl_priv_t *p, int device)
{
    int   lo, hi;
    void *compute;

    TPM_CHECK(tpm_cuda_proc_acquire(device, &compute));
    p->have_proc = 1;
    p->compute   = compute;
    /* collectives get the SMs first when they are ready: they gate the next block */
    TPM_CHECK(TPM_CUDA_CALL(cudaDeviceGetStreamPriorityRange(&lo, &hi)));
    TPM_CHECK(TPM_CUDA_CALL(cudaStreamCreateWithPriority(&p->stream, cudaStreamNonBlocking, hi)));
    TPM_CHECK(TPM_CUDA_CALL(cudaEventCreateWithFlags(&p->ev_ready, cudaEventDisableTiming)));
    TPM_CHECK(TPM_CUDA_CALL(cudaEventCreateWithFlags(&p->ev_done, cudaEventDisableTiming)));
    for (int i = 0; i < NCCL_MAX_REQS; i++) {
        TPM_CHECK(
            TPM_CUDA_CALL(cudaEventCreateWithFlags(&p->slots[i].done, cudaEventDisableTiming)));
    }
    return TPM_OK;
}

/* GPU of this rank (collective over MPI_COMM_WORLD: node-local ranks), then its streams */
static tpm_status_t setup_device(nccl_priv_t *p)
{
    MPI_Comm node;
    int      local_rank, local_size, ndev, device;

    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) !=
        MPI_SUCCESS) {
        tpm_log_error("nccl comm: MPI_Comm_split_type failed");
        return TPM_ERR_MPI;
    }
    MPI_Comm_rank(node, &local_rank);
    MPI_Comm_size(node, &local_size);
    MPI_Comm_free(&node);
    TPM_CHECK(tpm_cuda_device_count(&ndev));
    if (ndev >= local_size) {
        device = local_rank;
    } else if (ndev == 1) {
        /* one visible GPU per rank (srun --gpus-per-task=1): NCCL reports a shared one */
        device = 0;
    } else {
        tpm_log_error("nccl comm: %d ranks on this node but %d GPU(s); NCCL needs one GPU per "
                      "rank",
                      local_size, ndev);
        return TPM_ERR_UNSUPPORTED;
    }
    return setup_streams(p, device);
}

/*
 * A group of c: the inner MPI communicator is split first (host traffic, agreement), then
 * the NCCL one (ncclCommSplit, collective over c); the child runs on the same GPU with its
 * own communication stream. Failures are agreed on over c's MPI communicator.
 */
static tpm_status_t nccl_split(tpm_comm_t *c, int color, int key, tpm_comm_t **child_p)
{
    nccl_priv_t *p     = priv_of(c), *q = NULL;
    tpm_comm_t  *host  = NULL, *k = NULL;
    ncclComm_t   sub   = NULL;
    tpm_status_t status;

    TPM_CHECK(p->mpi->ops->split(p->mpi, color, key, &host));
    status = TPM_NCCL_CALL(
        ncclCommSplit(p->nccl, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &sub, NULL));
    if (status == TPM_OK && host != NULL) {
        status = tpm_calloc(1, sizeof(*k), (void **)&k);
        if (status == TPM_OK) {
            status = tpm_calloc(1, sizeof(*q), (void **)&q);
        }
        if (status == TPM_OK) {
            k->priv = q;
            k->ops  = c->ops;
            q->mpi  = host;
            q->nccl = sub;
            host    = NULL;
            sub     = NULL;
            status  = setup_streams(q, -1);
        }
    }
    status = tpm_comm_agree(p->mpi, status);
    if (status != TPM_OK) {
        if (q != NULL) {
            nccl_destroy(k);
        } else {
            tpm_free(k);
        }
        if (sub != NULL) {
            (void)TPM_NCCL_CALL(ncclCommDestroy(sub));
        }
        tpm_comm_destroy(host);
        return status;
    }
    if (k != NULL) {
        k->rank       = q->mpi->rank;
        k->size       = q->mpi->size;
        k->local_rank = q->mpi->local_rank;
        k->debug      = c->debug;
    }
    *child_p = k;
    return TPM_OK;
}

/*
 * Point-to-point. Device buffers go through ncclSend/ncclRecv on the communication stream
 * (NCCL has no tags: messages between two ranks match in posting order, and a receive that
 * is not yet matched holds back the collectives queued after it on that stream); host
 * buffers through the inner MPI communicator, with tags.
 */
typedef struct {
    void       *buf;
    size_t      count;
    tpm_dtype_t dt;
    int         peer, tag, is_send;
} p2p_args_t;

static tpm_status_t mpi_p2p_issue(nccl_priv_t *p, void *ctx, tpm_comm_req_t *mreq)
{
    p2p_args_t *a = ctx;

    return a->is_send ? p->mpi->ops->send(p->mpi, a->buf, a->count, a->dt, a->peer, a->tag, mreq)
                      : p->mpi->ops->recv(p->mpi, a->buf, a->count, a->dt, a->peer, a->tag, mreq);
}

static tpm_status_t nccl_p2p(tpm_comm_t *c, p2p_args_t *a, tpm_comm_req_t *req)
{
    nccl_priv_t *p = priv_of(c);
    int          dev;

    TPM_CHECK(route(a->buf, a->buf, a->count, a->is_send ? "send" : "recv", &dev));
    if (!dev) {
        return mpi_nb(p, req, mpi_p2p_issue, a);
    }
    TPM_CHECK(nccl_begin(p));
    if (a->is_send) {
        TPM_CHECK(TPM_NCCL_CALL(
            ncclSend(a->buf, a->count, nccl_dtype(a->dt), a->peer, p->nccl, p->stream)));
    } else {
        TPM_CHECK(TPM_NCCL_CALL(
            ncclRecv(a->buf, a->count, nccl_dtype(a->dt), a->peer, p->nccl, p->stream)));
    }
    return nccl_end(p, req);
}

static tpm_status_t nccl_send(tpm_comm_t *c, const void *buf, size_t count, tpm_dtype_t dt,
                              int peer, int tag, tpm_comm_req_t *req)
{
    p2p_args_t a = {(void *)(uintptr_t)buf, count, dt, peer, tag, 1};

    return nccl_p2p(c, &a, req);
}

static tpm_status_t nccl_recv(tpm_comm_t *c, void *buf, size_t count, tpm_dtype_t dt, int peer,
                              int tag, tpm_comm_req_t *req)
{
    p2p_args_t a = {buf, count, dt, peer, tag, 0};

    return nccl_p2p(c, &a, req);
}

/* host buffers go through the MPI communicator underneath: MPI-IO uses it too */
static const void *nccl_mpi_handle(tpm_comm_t *c)
{
    return tpm_comm_mpi_handle(priv_of(c)->mpi);
}

static const tpm_comm_ops_t comm_nccl_ops = {
    .name           = "nccl",
    .all_gather     = nccl_all_gather,
    .reduce_scatter = nccl_reduce_scatter,
    .all_to_all     = nccl_all_to_all,
    .all_to_allv    = nccl_all_to_allv,
    .all_reduce     = nccl_all_reduce,
    .bcast          = nccl_bcast,
    .barrier        = nccl_barrier,
    .split          = nccl_split,
    .send           = nccl_send,
    .recv           = nccl_recv,
    .wait           = nccl_wait,
    .test           = nccl_test,
    .mpi_handle     = nccl_mpi_handle,
    .destroy        = nccl_destroy,
};

tpm_status_t tpm_comm_nccl_create(int debug, tpm_comm_t **comm_p)
{
    tpm_comm_t  *c = NULL;
    nccl_priv_t *p = NULL;
    ncclUniqueId id;
    tpm_status_t status;

    TPM_CHECK(tpm_calloc(1, sizeof(*c), (void **)&c));
    TPM_CHECK_GOTO(tpm_calloc(1, sizeof(*p), (void **)&p), status, err);
    c->priv = p;
    TPM_CHECK_GOTO(tpm_comm_mpi_create(0, &p->mpi), status, err);
    c->ops        = &comm_nccl_ops;
    c->rank       = p->mpi->rank;
    c->size       = p->mpi->size;
    c->local_rank = p->mpi->local_rank;
    c->debug      = debug;

    /* from here on every failure is agreed on: no rank enters NCCL init alone */
    status = setup_device(p);
    memset(&id, 0, sizeof(id));
    if (status == TPM_OK && c->rank == 0) {
        status = TPM_NCCL_CALL(ncclGetUniqueId(&id));
    }
    TPM_CHECK_GOTO(tpm_comm_agree(p->mpi, status), status, err);
    TPM_CHECK_GOTO(p->mpi->ops->bcast(p->mpi, &id, sizeof(id), TPM_DT_BYTE, 0), status, err);
    status = TPM_NCCL_CALL(ncclCommInitRank(&p->nccl, c->size, id, c->rank));
    if (status != TPM_OK) {
        p->nccl = NULL;
    }
    TPM_CHECK_GOTO(tpm_comm_agree(p->mpi, status), status, err);
    tpm_info0("nccl comm: %d rank(s), NCCL %d.%d.%d", c->size, NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH);
    *comm_p = c;
    return TPM_OK;

err:
    if (p == NULL || p->mpi == NULL) {
        tpm_free(p);
        tpm_free(c);
        return status;
    }
    nccl_destroy(c);
    return status;
}
