/* SPDX-License-Identifier: MIT */
/*
 * comm.h: collectives behind one op table (MPI now, NCCL with the CUDA backend).
 *
 * Every call is collective over the communicator: all ranks must make the same
 * calls in the same order. The tpm_comm_*() macros pass the call site so that
 * --debug-collectives can report where two ranks diverged instead of hanging:
 * before each collective the ranks exchange (sequence number, kind, count, call
 * site) and stop with both call sites on a mismatch.
 *
 * Byte counters: for each collective kind the bytes this rank puts on the wire
 * under a bandwidth-optimal algorithm (ring / pairwise): all-gather and
 * reduce-scatter (N-1)/N of the full buffer, all-to-all (N-1) chunks,
 * all-reduce 2(N-1)/N, broadcast the buffer on the root. Nothing at N = 1.
 * Point-to-point sends count their buffer under TPM_COLL_P2P (at any N).
 *
 * Groups. tpm_comm_split() cuts a communicator into disjoint groups (MPI_Comm_split's
 * colour and key), each a communicator of the same implementation with its own ranks,
 * sequence numbers and counters: a training group and a serving group of one job each
 * run their collectives on their own. Transfers between groups are point-to-point on a
 * communicator that holds both (the parent): tpm_comm_send()/tpm_comm_recv() are
 * non-blocking, matched by (peer, tag) in posting order, and completed by
 * tpm_comm_wait()/tpm_comm_test() like a non-blocking collective. They are not
 * collective: they do not advance the sequence number that --debug-collectives checks.
 */
#ifndef TPM_COMM_H
#define TPM_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

typedef enum {
    TPM_DT_FLOAT = 0,
    TPM_DT_DOUBLE,
    TPM_DT_INT32,
    TPM_DT_INT64,
    TPM_DT_BYTE,
    TPM_DT_N
} tpm_dtype_t;

typedef enum {
    TPM_RED_SUM = 0,
    TPM_RED_MAX,
    TPM_RED_MIN,
    TPM_RED_N
} tpm_redop_t;

typedef enum {
    TPM_COLL_ALLGATHER = 0,
    TPM_COLL_REDUCE_SCATTER,
    TPM_COLL_ALLTOALL,
    TPM_COLL_ALLREDUCE,
    TPM_COLL_BCAST,
    TPM_COLL_BARRIER,
    TPM_COLL_SPLIT,
    TPM_COLL_P2P, /* point-to-point: not a collective; counted, not sequence-checked */
    TPM_COLL_N
} tpm_coll_kind_t;

typedef struct tpm_comm_stats {
    uint64_t calls[TPM_COLL_N];
    uint64_t bytes[TPM_COLL_N]; /* bytes sent by this rank (see above) */
    size_t   scratch_bytes;     /* host memory the implementation keeps for collectives */
} tpm_comm_stats_t;

/** A non-blocking collective in flight; opaque storage for the implementation's handle. */
typedef struct tpm_comm_req {
    _Alignas(8) unsigned char opaque[32]; /* aligned: implementations keep handles in it */
    int           active;
} tpm_comm_req_t;

typedef struct tpm_comm tpm_comm_t;

typedef struct tpm_comm_ops {
    const char *name;
    /* recv (size*count) = concatenation of every rank's send (count); req NULL = blocking */
    tpm_status_t (*all_gather)(tpm_comm_t *c, const void *send, void *recv, size_t count,
                               tpm_dtype_t dt, tpm_comm_req_t *req);
    /* recv (count) = op over ranks of send[rank*count ...]; send is (size*count) */
    tpm_status_t (*reduce_scatter)(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                   tpm_dtype_t dt, tpm_redop_t op, tpm_comm_req_t *req);
    /*
     * Optional: the same, blocking, with a caller's scratch buffer of size*count elements
     * (same kind of memory as send) that the implementation may overwrite. NULL: the
     * dispatcher uses reduce_scatter.
     */
    tpm_status_t (*reduce_scatter_scratch)(tpm_comm_t *c, const void *send, void *recv,
                                           size_t count, tpm_dtype_t dt, tpm_redop_t op,
                                           void *scratch);
    /* chunk i of send (count each) goes to rank i; chunk j of recv came from rank j */
    tpm_status_t (*all_to_all)(tpm_comm_t *c, const void *send, void *recv, size_t count,
                               tpm_dtype_t dt, tpm_comm_req_t *req);
    /* variable chunks: counts/displs per rank, in elements (blocking) */
    tpm_status_t (*all_to_allv)(tpm_comm_t *c, const void *send, const size_t *send_counts,
                                const size_t *send_displs, void *recv, const size_t *recv_counts,
                                const size_t *recv_displs, tpm_dtype_t dt);
    /* send == recv allowed (in place) */
    tpm_status_t (*all_reduce)(tpm_comm_t *c, const void *send, void *recv, size_t count,
                               tpm_dtype_t dt, tpm_redop_t op);
    tpm_status_t (*bcast)(tpm_comm_t *c, void *buf, size_t count, tpm_dtype_t dt, int root);
    tpm_status_t (*barrier)(tpm_comm_t *c);
    /*
     * Collective: ranks of one colour (>= 0) form *child_p, ordered by key then rank;
     * colour TPM_COMM_NO_GROUP gives *child_p = NULL. NULL op: not supported.
     */
    tpm_status_t (*split)(tpm_comm_t *c, int color, int key, tpm_comm_t **child_p);
    /* point-to-point to/from rank peer of c (req NULL = blocking); NULL op: not supported */
    tpm_status_t (*send)(tpm_comm_t *c, const void *buf, size_t count, tpm_dtype_t dt, int peer,
                         int tag, tpm_comm_req_t *req);
    tpm_status_t (*recv)(tpm_comm_t *c, void *buf, size_t count, tpm_dtype_t dt, int peer,
                         int tag, tpm_comm_req_t *req);
    tpm_status_t (*wait)(tpm_comm_t *c, tpm_comm_req_t *req);
    /* *done_p = 1 when finished (then the request is released); drives progress */
    tpm_status_t (*test)(tpm_comm_t *c, tpm_comm_req_t *req, int *done_p);
    /* (optional) the address of the MPI_Comm this communicator runs over (for MPI-IO) */
    const void *(*mpi_handle)(tpm_comm_t *c);
    void (*destroy)(tpm_comm_t *c);
} tpm_comm_ops_t;

struct tpm_comm {
    const tpm_comm_ops_t *ops;
    int                   rank;
    int                   size;
    int                   local_rank; /* rank among the ranks of this node */
    int                   debug;      /* --debug-collectives */
    uint64_t              seq;        /* collectives issued so far */
    int                   bcast_root; /* root of the broadcast being accounted */
    tpm_comm_stats_t      stats;
    void                 *priv;
};

/**
 * Create the MPI communicator over MPI_COMM_WORLD (MPI must be initialised).
 * Errors return (MPI_ERRORS_RETURN) instead of aborting. Caller owns *comm_p.
 */
tpm_status_t tpm_comm_mpi_create(int debug, tpm_comm_t **comm_p);
/**
 * Create the NCCL communicator over MPI_COMM_WORLD, for --device=cuda (MPI must be
 * initialised): device buffers go through NCCL on its own stream, host buffers through MPI
 * (comm_nccl.c). Collective; a failure (no GPU, more ranks than GPUs on a node, NCCL
 * init) is agreed on, so every rank returns the same status. Without CUDA (build) it
 * returns TPM_ERR_UNSUPPORTED with a message. Caller owns *comm_p.
 */
tpm_status_t tpm_comm_nccl_create(int debug, tpm_comm_t **comm_p);
void tpm_comm_destroy(tpm_comm_t *c); /* no-op on NULL */

size_t tpm_dtype_size(tpm_dtype_t dt);
const char *tpm_coll_kind_name(tpm_coll_kind_t kind);

/**
 * The MPI communicator behind @p c, as the address of an MPI_Comm (borrowed, valid while c
 * lives), or NULL when c has none. Only for libraries that need MPI themselves (parallel
 * HDF5's MPI-IO in ckpt/ckpt.c); everything else goes through the ops above, so that no
 * code outside comm includes mpi.h for its communication.
 */
const void *tpm_comm_mpi_handle(tpm_comm_t *c);

/** Colour of a rank that joins no group in tpm_comm_split(). */
#define TPM_COMM_NO_GROUP (-1)

/**
 * Split @p c into groups (collective over c): every rank passes its colour (>= 0, or
 * TPM_COMM_NO_GROUP) and key; the ranks of one colour get a new communicator of the same
 * implementation, ranked by (key, rank in c), with --debug-collectives as c. Caller owns
 * *child_p (NULL for TPM_COMM_NO_GROUP).
 */
tpm_status_t tpm_comm_split_at(tpm_comm_t *c, int color, int key, tpm_comm_t **child_p,
                               const char *file, int line);
/**
 * Non-blocking point-to-point (req NULL: blocking): @p count elements to / from rank @p peer
 * of @p c with tag @p tag (0..32767). Messages between two ranks with the same tag arrive
 * in the order they were sent. The buffer must stay valid until the request completes.
 */
tpm_status_t tpm_comm_send(tpm_comm_t *c, const void *buf, size_t count, tpm_dtype_t dt,
                           int peer, int tag, tpm_comm_req_t *req);
tpm_status_t tpm_comm_recv(tpm_comm_t *c, void *buf, size_t count, tpm_dtype_t dt, int peer,
                           int tag, tpm_comm_req_t *req);

/* Dispatchers with call-site tracking (the functions are the implementation). */
tpm_status_t tpm_comm_all_gather_at(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                    tpm_dtype_t dt, tpm_comm_req_t *req, const char *file,
                                    int line);
tpm_status_t tpm_comm_reduce_scatter_at(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                        tpm_dtype_t dt, tpm_redop_t op, tpm_comm_req_t *req,
                                        const char *file, int line);
/** Blocking reduce-scatter that may use @p scratch (size*count elements, the caller's). */
tpm_status_t tpm_comm_reduce_scatter_scratch_at(tpm_comm_t *c, const void *send, void *recv,
                                                size_t count, tpm_dtype_t dt, tpm_redop_t op,
                                                void *scratch, const char *file, int line);
tpm_status_t tpm_comm_all_to_all_at(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                    tpm_dtype_t dt, tpm_comm_req_t *req, const char *file,
                                    int line);
tpm_status_t tpm_comm_all_to_allv_at(tpm_comm_t *c, const void *send, const size_t *send_counts,
                                     const size_t *send_displs, void *recv,
                                     const size_t *recv_counts, const size_t *recv_displs,
                                     tpm_dtype_t dt, const char *file, int line);
tpm_status_t tpm_comm_all_reduce_at(tpm_comm_t *c, const void *send, void *recv, size_t count,
                                    tpm_dtype_t dt, tpm_redop_t op, const char *file, int line);
tpm_status_t tpm_comm_bcast_at(tpm_comm_t *c, void *buf, size_t count, tpm_dtype_t dt, int root,
                               const char *file, int line);
tpm_status_t tpm_comm_barrier_at(tpm_comm_t *c, const char *file, int line);
/** Wait for @p req; a no-op on an inactive request. */
tpm_status_t tpm_comm_wait(tpm_comm_t *c, tpm_comm_req_t *req);
/** Poll @p req (no-op when inactive); lets MPI progress a non-blocking collective. */
tpm_status_t tpm_comm_test(tpm_comm_t *c, tpm_comm_req_t *req);

/**
 * Agree-then-branch: every rank passes its local status; returns TPM_OK on all
 * ranks only if every rank passed TPM_OK, else TPM_ERR_REMOTE (or the local
 * error on the failing rank). Collective.
 */
tpm_status_t tpm_comm_agree(tpm_comm_t *c, tpm_status_t local);

#define tpm_comm_all_gather(_c, _s, _r, _n, _dt, _req)                                             \
    tpm_comm_all_gather_at((_c), (_s), (_r), (_n), (_dt), (_req), __FILE__, __LINE__)
#define tpm_comm_reduce_scatter(_c, _s, _r, _n, _dt, _op, _req)                                    \
    tpm_comm_reduce_scatter_at((_c), (_s), (_r), (_n), (_dt), (_op), (_req), __FILE__, __LINE__)
#define tpm_comm_reduce_scatter_scratch(_c, _s, _r, _n, _dt, _op, _scr)                           \
    tpm_comm_reduce_scatter_scratch_at((_c), (_s), (_r), (_n), (_dt), (_op), (_scr), __FILE__,     \
                                       __LINE__)
#define tpm_comm_all_to_all(_c, _s, _r, _n, _dt, _req)                                             \
    tpm_comm_all_to_all_at((_c), (_s), (_r), (_n), (_dt), (_req), __FILE__, __LINE__)
#define tpm_comm_all_to_allv(_c, _s, _sc, _sd, _r, _rc, _rd, _dt)                                  \
    tpm_comm_all_to_allv_at((_c), (_s), (_sc), (_sd), (_r), (_rc), (_rd), (_dt), __FILE__,         \
                            __LINE__)
#define tpm_comm_all_reduce(_c, _s, _r, _n, _dt, _op)                                              \
    tpm_comm_all_reduce_at((_c), (_s), (_r), (_n), (_dt), (_op), __FILE__, __LINE__)
#define tpm_comm_bcast(_c, _b, _n, _dt, _root)                                                     \
    tpm_comm_bcast_at((_c), (_b), (_n), (_dt), (_root), __FILE__, __LINE__)
#define tpm_comm_barrier(_c) tpm_comm_barrier_at((_c), __FILE__, __LINE__)
#define tpm_comm_split(_c, _color, _key, _child)                                                   \
    tpm_comm_split_at((_c), (_color), (_key), (_child), __FILE__, __LINE__)

#endif /* TPM_COMM_H */
