/* SPDX-License-Identifier: MIT */
/*
 * ckpt.c: checkpoints as one parallel-HDF5 file (layout and attributes: docs/CHECKPOINT.md).
 *
 * Every rank opens the file through MPI-IO (collective metadata reads and writes) and moves
 * only its own rows of each logical tensor with collective transfers; no rank holds a whole
 * tensor. A dataset's checksum is the sum of its row hashes, so a file written on N ranks
 * verifies on M. Each collective HDF5 step is followed by an agreement: a failure on every
 * rank is returned on every rank (they close the file together); a failure on some ranks
 * only means the ranks left HDF5's collective sequence at different points, where a
 * collective close could hang, so the job is stopped instead (tpm_fatal, MPI_Abort).
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include "ckpt/ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <inttypes.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "base/file.h"
#include "base/mem.h"
#include "base/timer.h"
#include "data/loader.h"
#include "zero3/shard.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "tpm_ckpt_row_hash reads 32-bit words in host order: little-endian hosts only"
#endif

#define CK_NAME_MAX 80
#define CK_ERR_MAX  400

/* the three sets of tensors a checkpoint holds, in file order */
enum { CK_SET_MODEL = 0, CK_SET_M, CK_SET_V, CK_N_SETS };
static const char *const ck_set_group[CK_N_SETS] = {"model", "optim/m", "optim/v"};

/* describes the dataset being worked on, for messages (single-threaded use) */
static char ck_ctx[TPM_PATH_MAX + CK_NAME_MAX];
/* reading: an HDF5 failure means a damaged file (TPM_ERR_FORMAT), writing: TPM_ERR_HDF5 */
static int ck_reading;

struct tpm_ckpt {
    tpm_comm_t     *comm;
    hid_t           file;
    hid_t           dxpl;
    char            path[TPM_PATH_MAX];
    tpm_ckpt_meta_t meta;
    int64_t        *ranges; /* (2 * comm->size) row ranges gathered by read_rows */
    int64_t        *limbs;  /* (4) checksum all-reduce scratch */
};

/* ---------------------------------------------------------------------------------------------- */
/* row hash */

#define CK_K1 0x9E3779B97F4A7C15ULL
#define CK_K2 0xC2B2AE3D27D4EB4FULL
#define CK_K3 0x165667B19E3779F9ULL

static inline uint64_t rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static inline uint64_t fmix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ULL;
    h ^= h >> 33;
    return h;
}

static inline uint64_t lane_step(uint64_t lane, uint32_t w)
{
    return rotl64(lane ^ ((uint64_t)w * CK_K2), 31) * CK_K1;
}

uint64_t tpm_ckpt_row_hash(uint64_t row, const void *data, size_t nbytes)
{
    const unsigned char *p  = data;
    const size_t         nw = nbytes / 4;
    uint64_t             l[4];
    size_t               i;

    for (int j = 0; j < 4; j++) {
        l[j] = (row + 1) * CK_K1 + (uint64_t)j * CK_K3;
    }
    /* four independent lanes: the multiply chains overlap, ~10 GB/s on one core */
    for (i = 0; i + 4 <= nw; i += 4) {
        uint32_t w[4];
        memcpy(w, p + 4 * i, sizeof(w));
        l[0] = lane_step(l[0], w[0]);
        l[1] = lane_step(l[1], w[1]);
        l[2] = lane_step(l[2], w[2]);
        l[3] = lane_step(l[3], w[3]);
    }
    for (; i < nw; i++) {
        uint32_t w;
        memcpy(&w, p + 4 * i, sizeof(w));
        l[i & 3] = lane_step(l[i & 3], w);
    }
    if (nbytes % 4 != 0) {
        uint32_t w = 0;
        for (size_t b = 0; b < nbytes % 4; b++) {
            w |= (uint32_t)p[4 * nw + b] << (8 * b);
        }
        l[nw & 3] = lane_step(l[nw & 3], w);
    }
    return fmix64(rotl64(l[0], 1) + rotl64(l[1], 7) + rotl64(l[2], 12) + rotl64(l[3], 18) +
                  (uint64_t)nbytes);
}

/* sum of the row hashes of nrows rows of cols floats starting at global row row0 */
static uint64_t rows_hash(const float *buf, int64_t row0, int64_t nrows, int64_t cols)
{
    uint64_t s = 0;

    for (int64_t r = 0; r < nrows; r++) {
        s += tpm_ckpt_row_hash((uint64_t)(row0 + r), buf + r * cols, (size_t)cols * sizeof(float));
    }
    return s;
}

/*
 * Sum @p n 64-bit values over ranks modulo 2^64. MPI has no unsigned type in tpm_comm, and a
 * signed 64-bit sum may overflow: split each value into four 16-bit limbs, whose sums over
 * fewer than 2^47 ranks fit an int64, then carry them back together. @p limbs is (4n).
 */
static tpm_status_t sum_u64(tpm_comm_t *c, const uint64_t *local, uint64_t *total, size_t n,
                            int64_t *limbs)
{
    for (size_t i = 0; i < n; i++) {
        for (int k = 0; k < 4; k++) {
            limbs[4 * i + k] = (int64_t)((local[i] >> (16 * k)) & 0xFFFF);
        }
    }
    TPM_CHECK(tpm_comm_all_reduce(c, limbs, limbs, 4 * n, TPM_DT_INT64, TPM_RED_SUM));
    for (size_t i = 0; i < n; i++) {
        uint64_t t = 0;
        for (int k = 0; k < 4; k++) {
            t += (uint64_t)limbs[4 * i + k] << (16 * k);
        }
        total[i] = t;
    }
    return TPM_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* HDF5 errors and agreement */

typedef struct {
    char desc[CK_ERR_MAX];
    int  found;
} h5_reason_t;

static herr_t h5_walk_cb(unsigned n, const H5E_error2_t *e, void *data)
{
    h5_reason_t *r = data;

    (void)n;
    /* walking upward: the first entry is the innermost, most specific one */
    if (!r->found && e->desc != NULL && e->desc[0] != '\0') {
        char minor[128] = "";
        H5Eget_msg(e->min_num, NULL, minor, sizeof(minor));
        snprintf(r->desc, sizeof(r->desc), "%s%s%s%s", e->desc, minor[0] ? " (" : "", minor,
                 minor[0] ? ")" : "");
        r->found = 1;
    }
    return 0;
}

/* the innermost message on HDF5's error stack, then clear the stack */
static void h5_reason(char *buf, size_t cap)
{
    h5_reason_t r;

    memset(&r, 0, sizeof(r));
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, h5_walk_cb, &r);
    H5Eclear2(H5E_DEFAULT);
    snprintf(buf, cap, "%s", r.found ? r.desc : "no detail from the HDF5 library");
}

static tpm_status_t ck_h5_check(int64_t ret, const char *call)
{
    char        why[CK_ERR_MAX];
    const char *fn = strstr(call, "H5");
    int         fn_len;

    if (ret >= 0) {
        return TPM_OK;
    }
    h5_reason(why, sizeof(why));
    /* name the HDF5 function only ("H5Dopen2"), not the whole stringified call */
    fn     = fn != NULL ? fn : call;
    fn_len = (int)strcspn(fn, "(");
    if (ck_reading) {
        tpm_log_error("%s: the file is damaged or unreadable: %s (%.*s)", ck_ctx, why, fn_len, fn);
        return TPM_ERR_FORMAT;
    }
    tpm_log_error("%s: %.*s failed: %s", ck_ctx, fn_len, fn, why);
    return TPM_ERR_HDF5;
}

/** One conversion for HDF5 results (negative herr_t / hid_t / htri_t): log and map. */
#define TPM_H5_CALL(_expr) ck_h5_check((int64_t)(_expr), #_expr)

/* HDF5 prints its whole error stack by default; tpmpi reports one line per error instead */
static void h5_quiet(void)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

/*
 * Agree after a collective HDF5 step. All ranks failed: every rank returns the same (lowest)
 * code. Some ranks failed: they are at different points of HDF5's collective sequence, and
 * closing the file (collective) could hang, so the job stops.
 */
static tpm_status_t ck_agree(tpm_comm_t *c, tpm_status_t local)
{
    int32_t v[3] = {local == TPM_OK, local != TPM_OK, -(int32_t)local}, r[3];

    if (tpm_comm_all_reduce(c, v, r, 3, TPM_DT_INT32, TPM_RED_MAX) != TPM_OK) {
        tpm_fatal(TPM_ERR_MPI, "%s: agreement all-reduce failed", ck_ctx);
    }
    if (!r[1]) {
        return TPM_OK;
    }
    if (r[0]) {
        tpm_fatal(local != TPM_OK ? local : TPM_ERR_REMOTE,
                  "%s: failed on some ranks only (messages above); ranks can no longer close "
                  "the file together, stopping the job",
                  ck_ctx);
    }
    return (tpm_status_t)(-r[2]);
}

/*
 * ck_agree for a step that also carries the status of the previous collective data transfer
 * (@p io). A transfer that failed on some ranks only does not put the ranks out of step:
 * every rank has returned from the same H5Dwrite/H5Dread, whose collective parts all ran (a
 * failing pwritev inside MPI-IO is reported after the exchange). So @p io failures are agreed
 * on as a failure of every rank; only a mixed @p local outcome stops the job.
 */
static tpm_status_t ck_agree_io(tpm_comm_t *c, tpm_status_t local, tpm_status_t io)
{
    int32_t v[4] = {local == TPM_OK, local != TPM_OK, -(int32_t)local, -(int32_t)io}, r[4];

    if (tpm_comm_all_reduce(c, v, r, 4, TPM_DT_INT32, TPM_RED_MAX) != TPM_OK) {
        tpm_fatal(TPM_ERR_MPI, "%s: agreement all-reduce failed", ck_ctx);
    }
    if (r[1] && r[0]) {
        tpm_fatal(local != TPM_OK ? local : TPM_ERR_REMOTE,
                  "%s: failed on some ranks only (messages above); ranks can no longer close "
                  "the file together, stopping the job",
                  ck_ctx);
    }
    if (r[1]) {
        return (tpm_status_t)(-r[2]);
    }
    return (tpm_status_t)(-r[3]);
}

tpm_status_t tpm_ckpt_agree(tpm_comm_t *c, tpm_status_t local)
{
    int32_t v = -(int32_t)local, r = 0;

    TPM_CHECK(tpm_comm_all_reduce(c, &v, &r, 1, TPM_DT_INT32, TPM_RED_MAX));
    return (tpm_status_t)(-r);
}

static void set_ctx(const char *what, const char *path, const char *name)
{
    /* a long path is cut short: the message stays useful */
    if (snprintf(ck_ctx, sizeof(ck_ctx), "%s %s%s%s", what, path, name ? " " : "",
                 name ? name : "") < 0) {
        ck_ctx[0] = '\0';
    }
}

/*
 * HDF5 needs an MPI communicator: the one the comm layer runs @p c over (the world, or a
 * group of a --mode=trainserve job). *mpi_p is NULL when c has none.
 */
static tpm_status_t check_world(tpm_comm_t *c, const MPI_Comm **mpi_p)
{
    const MPI_Comm *mpi  = tpm_comm_mpi_handle(c);
    int             size = 0, rank = 0;

    *mpi_p = NULL;
    if (mpi == NULL) {
        tpm_log_error("checkpoint I/O needs an MPI communicator; the %s communicator has none",
                      c->ops->name);
        return TPM_ERR_UNSUPPORTED;
    }
    MPI_Comm_size(*mpi, &size);
    MPI_Comm_rank(*mpi, &rank);
    if (size != c->size || rank != c->rank) {
        tpm_log_error("checkpoint I/O: the MPI communicator has %d ranks, the communicator "
                      "given %d",
                      size, c->size);
        return TPM_ERR_UNSUPPORTED;
    }
    *mpi_p = mpi;
    return TPM_OK;
}

static tpm_status_t make_fapl(MPI_Comm mpi, hid_t *fapl_p)
{
    hid_t        fapl;
    tpm_status_t status;

    TPM_CHECK(TPM_H5_CALL(fapl = H5Pcreate(H5P_FILE_ACCESS)));
    /* MPI-IO with collective metadata: rank 0 reads metadata and broadcasts it */
    TPM_CHECK_GOTO(TPM_H5_CALL(H5Pset_fapl_mpio(fapl, mpi, MPI_INFO_NULL)), status, err);
    TPM_CHECK_GOTO(TPM_H5_CALL(H5Pset_all_coll_metadata_ops(fapl, 1)), status, err);
    TPM_CHECK_GOTO(TPM_H5_CALL(H5Pset_coll_metadata_write(fapl, 1)), status, err);
    /* 1.8 object headers carry checksums, so a damaged header is detected, not misread */
    TPM_CHECK_GOTO(TPM_H5_CALL(H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST)),
                   status, err);
    *fapl_p = fapl;
    return TPM_OK;

err:
    H5Pclose(fapl);
    return status;
}

static tpm_status_t make_dxpl(hid_t *dxpl_p)
{
    hid_t        dxpl;
    tpm_status_t status;

    TPM_CHECK(TPM_H5_CALL(dxpl = H5Pcreate(H5P_DATASET_XFER)));
    status = TPM_H5_CALL(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE));
    if (status != TPM_OK) {
        H5Pclose(dxpl);
        return status;
    }
    *dxpl_p = dxpl;
    return TPM_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/*
 * Attributes (scalars and fixed-length strings). The *_local functions make HDF5 calls that
 * every rank makes alike (collective metadata) but do not agree; the others agree at the end.
 */

static tpm_status_t attr_write_local(hid_t obj, const char *name, hid_t ftype, hid_t mtype,
                                     const void *val)
{
    hid_t        sp = -1, a = -1;
    tpm_status_t status;

    status = TPM_H5_CALL(sp = H5Screate(H5S_SCALAR));
    if (status == TPM_OK) {
        status = TPM_H5_CALL(a = H5Acreate2(obj, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT));
    }
    if (status == TPM_OK) {
        status = TPM_H5_CALL(H5Awrite(a, mtype, val));
    }
    if (a >= 0) {
        H5Aclose(a);
    }
    if (sp >= 0) {
        H5Sclose(sp);
    }
    return status;
}

static tpm_status_t attr_write(tpm_comm_t *c, hid_t obj, const char *name, hid_t ftype, hid_t mtype,
                               const void *val)
{
    return ck_agree(c, attr_write_local(obj, name, ftype, mtype, val));
}

static tpm_status_t attr_write_str(tpm_comm_t *c, hid_t obj, const char *name, const char *s)
{
    hid_t        t = -1;
    tpm_status_t status;

    status = TPM_H5_CALL(t = H5Tcopy(H5T_C_S1));
    if (status == TPM_OK) {
        status = TPM_H5_CALL(H5Tset_size(t, strlen(s) + 1));
    }
    if (status == TPM_OK) {
        status = TPM_H5_CALL(H5Tset_strpad(t, H5T_STR_NULLTERM));
    }
    status = ck_agree(c, status);
    if (status == TPM_OK) {
        status = attr_write(c, obj, name, t, t, s);
    }
    if (t >= 0) {
        H5Tclose(t);
    }
    return status;
}

static tpm_status_t attr_open(hid_t obj, const char *name, hid_t *a_p)
{
    htri_t ex;

    TPM_CHECK(TPM_H5_CALL(ex = H5Aexists(obj, name)));
    if (!ex) {
        tpm_log_error("%s: no attribute '%s' (not a tpmpi checkpoint, or damaged)", ck_ctx, name);
        return TPM_ERR_FORMAT;
    }
    return TPM_H5_CALL(*a_p = H5Aopen(obj, name, H5P_DEFAULT));
}

/* read a numeric scalar attribute converted to @p mtype */
static tpm_status_t attr_read_local(hid_t obj, const char *name, hid_t mtype, void *val)
{
    hid_t        a = -1, t = -1;
    tpm_status_t status;

    status = attr_open(obj, name, &a);
    if (status == TPM_OK) {
        status = TPM_H5_CALL(t = H5Aget_type(a));
    }
    if (status == TPM_OK) {
        H5T_class_t cls = H5Tget_class(t);
        if (cls != H5T_INTEGER && cls != H5T_FLOAT) {
            tpm_log_error("%s: attribute '%s' is not a number", ck_ctx, name);
            status = TPM_ERR_FORMAT;
        }
    }
    if (status == TPM_OK) {
        status = TPM_H5_CALL(H5Aread(a, mtype, val));
    }
    if (t >= 0) {
        H5Tclose(t);
    }
    if (a >= 0) {
        H5Aclose(a);
    }
    return status;
}

static tpm_status_t attr_read(tpm_comm_t *c, hid_t obj, const char *name, hid_t mtype, void *val)
{
    return ck_agree(c, attr_read_local(obj, name, mtype, val));
}

/* read a string attribute (fixed or variable length); caller owns *s_p (tpm_free) */
static tpm_status_t attr_read_str(tpm_comm_t *c, hid_t obj, const char *name, char **s_p)
{
    hid_t        a = -1, t = -1, mt = -1;
    char        *s = NULL;
    tpm_status_t status;

    status = attr_open(obj, name, &a);
    if (status == TPM_OK) {
        status = TPM_H5_CALL(t = H5Aget_type(a));
    }
    if (status == TPM_OK && H5Tget_class(t) != H5T_STRING) {
        tpm_log_error("%s: attribute '%s' is not a string", ck_ctx, name);
        status = TPM_ERR_FORMAT;
    }
    if (status == TPM_OK && H5Tis_variable_str(t) > 0) {
        char *v = NULL;
        status  = TPM_H5_CALL(mt = H5Tcopy(H5T_C_S1));
        if (status == TPM_OK) {
            status = TPM_H5_CALL(H5Tset_size(mt, H5T_VARIABLE));
        }
        if (status == TPM_OK) {
            status = TPM_H5_CALL(H5Aread(a, mt, &v));
        }
        if (status == TPM_OK) {
            size_t n = v != NULL ? strlen(v) : 0;
            status   = tpm_malloc(n + 1, (void **)&s);
            if (status == TPM_OK) {
                memcpy(s, v != NULL ? v : "", n + 1);
            }
            H5free_memory(v);
        }
    } else if (status == TPM_OK) {
        size_t n = H5Tget_size(t);
        status   = TPM_H5_CALL(mt = H5Tcopy(H5T_C_S1));
        if (status == TPM_OK) {
            status = TPM_H5_CALL(H5Tset_size(mt, n));
        }
        if (status == TPM_OK) {
            status = tpm_calloc(n + 1, 1, (void **)&s);
        }
        if (status == TPM_OK) {
            status = TPM_H5_CALL(H5Aread(a, mt, s));
        }
    }
    if (mt >= 0) {
        H5Tclose(mt);
    }
    if (t >= 0) {
        H5Tclose(t);
    }
    if (a >= 0) {
        H5Aclose(a);
    }
    status = ck_agree(c, status);
    if (status != TPM_OK) {
        tpm_free(s);
        return status;
    }
    *s_p = s;
    return TPM_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* datasets */

/* "/<set>/<tensor name>" of tensor t of group g (the name comes from the model's table) */
static void ds_name(const tpm_model_config_t *cfg, int set, int g, int t, char *buf, size_t cap)
{
    int          n = snprintf(buf, cap, "/%s/", ck_set_group[set]);
    tpm_status_t status;

    TPM_ASSERT(n > 0 && (size_t)n < cap);
    /* the names are short and fixed (h.<layer>.<at most 15 chars>): they always fit */
    status = tpm_model_tensor_name(cfg, g, t, buf + n, cap - (size_t)n);
    TPM_ASSERT(status == TPM_OK);
}

/* contiguous, unfiltered, allocated at creation, never filled: the rows are written once */
static tpm_status_t ds_create_local(hid_t file, const char *name, hid_t ftype, int64_t rows,
                                    int64_t cols, hid_t *ds_p)
{
    hsize_t      dims[2] = {(hsize_t)rows, (hsize_t)cols};
    hid_t        sp = -1, dcpl = -1, lcpl = -1, ds = -1;
    tpm_status_t status;

    status = TPM_H5_CALL(sp = H5Screate_simple(cols > 1 ? 2 : 1, dims, NULL));
    if (status == TPM_OK) {
        status = TPM_H5_CALL(dcpl = H5Pcreate(H5P_DATASET_CREATE));
    }
    if (status == TPM_OK) {
        status = TPM_H5_CALL(H5Pset_layout(dcpl, H5D_CONTIGUOUS));
    }
    if (status == TPM_OK) {
        status = TPM_H5_CALL(H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY));
    }
    if (status == TPM_OK) {
        /* the default would write every byte twice: fill values first, then the rows */
        status = TPM_H5_CALL(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER));
    }
    if (status == TPM_OK) {
        status = TPM_H5_CALL(lcpl = H5Pcreate(H5P_LINK_CREATE));
    }
    if (status == TPM_OK) {
        status = TPM_H5_CALL(H5Pset_create_intermediate_group(lcpl, 1));
    }
    if (status == TPM_OK) {
        status = TPM_H5_CALL(ds = H5Dcreate2(file, name, ftype, sp, lcpl, dcpl, H5P_DEFAULT));
    }
    if (lcpl >= 0) {
        H5Pclose(lcpl);
    }
    if (dcpl >= 0) {
        H5Pclose(dcpl);
    }
    if (sp >= 0) {
        H5Sclose(sp);
    }
    *ds_p = ds; /* -1 on failure */
    return status;
}

static tpm_status_t ds_create(tpm_comm_t *c, hid_t file, const char *name, hid_t ftype,
                              int64_t rows, int64_t cols, hid_t *ds_p)
{
    tpm_status_t status = ck_agree(c, ds_create_local(file, name, ftype, rows, cols, ds_p));

    if (status != TPM_OK && *ds_p >= 0) {
        H5Dclose(*ds_p);
        *ds_p = -1;
    }
    return status;
}

/* does @p name (absolute, "/model/wte") exist? checks each path component */
static tpm_status_t link_exists(hid_t file, const char *name, int *exists_p)
{
    char   part[CK_NAME_MAX];
    htri_t ex = 1;

    for (const char *p = strchr(name + 1, '/');; p = strchr(p + 1, '/')) {
        size_t n = p != NULL ? (size_t)(p - name) : strlen(name);
        if (n >= sizeof(part)) {
            ex = 0;
            break;
        }
        memcpy(part, name, n);
        part[n] = '\0';
        TPM_CHECK(TPM_H5_CALL(ex = H5Lexists(file, part, H5P_DEFAULT)));
        if (!ex || p == NULL) {
            break;
        }
    }
    *exists_p = ex > 0;
    return TPM_OK;
}

/*
 * Open dataset @p name and check its type class and shape: a matrix is (rows, cols), a
 * vector (cols == 1) is (rows); rows < 0 accepts any shape and returns it. *ds_p is -1 on
 * failure.
 */
static tpm_status_t ds_open_local(hid_t file, const char *name, H5T_class_t cls, int64_t *rows_p,
                                  int64_t *cols_p, hid_t *ds_p)
{
    hid_t        ds = -1, sp = -1, t = -1;
    hsize_t      dims[2] = {0, 1};
    int          exists = 0, nd = 0;
    tpm_status_t status;

    status = link_exists(file, name, &exists);
    if (status == TPM_OK && !exists) {
        tpm_log_error("%s: no dataset %s (written for another model, or damaged)", ck_ctx, name);
        status = TPM_ERR_FORMAT;
    }
    if (status == TPM_OK) {
        status = TPM_H5_CALL(ds = H5Dopen2(file, name, H5P_DEFAULT));
    }
    if (status == TPM_OK) {
        status = TPM_H5_CALL(sp = H5Dget_space(ds));
    }
    if (status == TPM_OK) {
        status = TPM_H5_CALL(nd = H5Sget_simple_extent_ndims(sp));
    }
    if (status == TPM_OK && (nd < 1 || nd > 2)) {
        tpm_log_error("%s: dataset %s has %d dimensions (1 or 2 expected)", ck_ctx, name, nd);
        status = TPM_ERR_FORMAT;
    }
    if (status == TPM_OK) {
        status = TPM_H5_CALL(H5Sget_simple_extent_dims(sp, dims, NULL));
    }
    if (status == TPM_OK) {
        status = TPM_H5_CALL(t = H5Dget_type(ds));
    }
    if (status == TPM_OK && H5Tget_class(t) != cls) {
        tpm_log_error("%s: dataset %s has the wrong element type", ck_ctx, name);
        status = TPM_ERR_FORMAT;
    }
    if (status == TPM_OK && *rows_p >= 0) {
        int want_nd = *cols_p > 1 ? 2 : 1;
        if (nd != want_nd || (int64_t)dims[0] != *rows_p ||
            (nd == 2 && (int64_t)dims[1] != *cols_p)) {
            char got[64], want[64];
            snprintf(got, sizeof(got), nd == 2 ? "(%llu, %llu)" : "(%llu)",
                     (unsigned long long)dims[0], (unsigned long long)dims[1]);
            snprintf(want, sizeof(want), want_nd == 2 ? "(%lld, %lld)" : "(%lld)",
                     (long long)*rows_p, (long long)*cols_p);
            tpm_log_error("%s: dataset %s has shape %s, the model needs %s", ck_ctx, name, got,
                          want);
            status = TPM_ERR_FORMAT;
        }
    }
    if (t >= 0) {
        H5Tclose(t);
    }
    if (sp >= 0) {
        H5Sclose(sp);
    }
    if (status != TPM_OK) {
        if (ds >= 0) {
            H5Dclose(ds);
        }
        *ds_p = -1;
        return status;
    }
    *rows_p = (int64_t)dims[0];
    *cols_p = nd == 2 ? (int64_t)dims[1] : 1;
    *ds_p   = ds;
    return TPM_OK;
}

static tpm_status_t ds_open(tpm_comm_t *c, hid_t file, const char *name, H5T_class_t cls,
                            int64_t *rows_p, int64_t *cols_p, hid_t *ds_p)
{
    tpm_status_t status = ck_agree(c, ds_open_local(file, name, cls, rows_p, cols_p, ds_p));

    if (status != TPM_OK && *ds_p >= 0) {
        H5Dclose(*ds_p);
        *ds_p = -1;
    }
    return status;
}

/* a row transfer being set up: file and memory selections */
typedef struct {
    hid_t fsp, msp;
    void *buf;
} ck_sel_t;

static void sel_close(ck_sel_t *sel)
{
    if (sel->msp >= 0) {
        H5Sclose(sel->msp);
    }
    if (sel->fsp >= 0) {
        H5Sclose(sel->fsp);
    }
    sel->fsp = sel->msp = -1;
}

/* select rows [row0, row0 + nrows) of cols elements; a rank with no rows selects nothing */
static tpm_status_t sel_rows(hid_t ds, int64_t row0, int64_t nrows, int64_t cols, void *buf,
                             ck_sel_t *sel)
{
    static float dummy;
    hsize_t      start[2] = {(hsize_t)row0, 0}, count[2] = {(hsize_t)nrows, (hsize_t)cols};
    hsize_t      n = (hsize_t)(nrows * cols), one = 1;
    tpm_status_t status;

    sel->fsp = sel->msp = -1;
    sel->buf            = buf;
    status              = ds < 0 ? TPM_ERR_INVALID_ARG : TPM_H5_CALL(sel->fsp = H5Dget_space(ds));
    if (status == TPM_OK && nrows > 0) {
        status =
            TPM_H5_CALL(H5Sselect_hyperslab(sel->fsp, H5S_SELECT_SET, start, NULL, count, NULL));
        if (status == TPM_OK) {
            status = TPM_H5_CALL(sel->msp = H5Screate_simple(1, &n, NULL));
        }
    } else if (status == TPM_OK) {
        sel->buf = &dummy; /* some MPI-IO layers dislike NULL even for empty transfers */
        status   = TPM_H5_CALL(H5Sselect_none(sel->fsp));
        if (status == TPM_OK) {
            status = TPM_H5_CALL(sel->msp = H5Screate_simple(1, &one, NULL));
        }
        if (status == TPM_OK) {
            status = TPM_H5_CALL(H5Sselect_none(sel->msp));
        }
    }
    return status;
}

/*
 * The collective transfer. Every rank must have agreed that its selection is ready: a rank
 * that skipped the call would leave the others waiting inside MPI-IO.
 */
static tpm_status_t sel_transfer(hid_t ds, hid_t dxpl, int writing, hid_t mtype,
                                 const ck_sel_t *sel)
{
    tpm_status_t status;

    status = writing ? TPM_H5_CALL(H5Dwrite(ds, mtype, sel->msp, sel->fsp, dxpl, sel->buf))
                     : TPM_H5_CALL(H5Dread(ds, mtype, sel->msp, sel->fsp, dxpl, sel->buf));
    if (status == TPM_OK && tpm_log_level_cur >= TPM_LOG_DEBUG) {
        H5D_mpio_actual_io_mode_t mode;
        if (H5Pget_mpio_actual_io_mode(dxpl, &mode) >= 0 && mode == H5D_MPIO_NO_COLLECTIVE) {
            uint32_t local_cause = 0, global_cause = 0;
            H5Pget_mpio_no_collective_cause(dxpl, &local_cause, &global_cause);
            tpm_log_debug("%s: HDF5 fell back to independent I/O (cause 0x%x)", ck_ctx,
                          (unsigned)global_cause);
        }
    }
    return status;
}

/* select, agree, transfer, agree: for the few transfers outside the per-tensor loops */
static tpm_status_t ds_rows_io(tpm_comm_t *c, hid_t ds, hid_t dxpl, int writing, hid_t mtype,
                               int64_t row0, int64_t nrows, int64_t cols, void *buf)
{
    ck_sel_t     sel;
    tpm_status_t status = ck_agree(c, sel_rows(ds, row0, nrows, cols, buf, &sel));

    if (status == TPM_OK) {
        status = ck_agree(c, sel_transfer(ds, dxpl, writing, mtype, &sel));
    }
    sel_close(&sel);
    return status;
}

/* ---------------------------------------------------------------------------------------------- */
/* metadata */

void tpm_ckpt_meta_cleanup(tpm_ckpt_meta_t *meta)
{
    if (meta == NULL) {
        return;
    }
    tpm_free((void *)meta->config_json);
    tpm_free((void *)meta->tokenizer);
    meta->config_json   = NULL;
    meta->tokenizer     = NULL;
    meta->tokenizer_len = 0;
}

/* the LLaMA configuration attributes (docs/CHECKPOINT.md): int32 then float64 ones */
static const char *const llama_i32_names[] = {"n_kv_head", "intermediate_size", "tie_embeddings",
                                              "qkv_bias", "rope_orig_ctx"};
static const char *const llama_f64_names[] = {"rms_eps", "rope_theta", "rope_scaling_factor",
                                              "rope_low_freq_factor", "rope_high_freq_factor"};

/* "arch", and for LLaMA its configuration; GPT-2 has no other field */
static tpm_status_t meta_write_arch(tpm_comm_t *c, hid_t file, const tpm_model_config_t *mc)
{
    const char *name = tpm_arch_id_name(mc->arch);

    TPM_ASSERT(name != NULL);
    TPM_CHECK(attr_write_str(c, file, "arch", name));
    if (mc->arch == TPM_ARCH_LLAMA) {
        const int32_t i32[] = {mc->NKV, mc->F, mc->tied, mc->qkv_bias, mc->rope.orig_ctx};
        const double  f64[] = {mc->rms_eps, mc->rope_theta, mc->rope.factor,
                               mc->rope.low_freq_factor, mc->rope.high_freq_factor};

        for (size_t i = 0; i < sizeof(i32) / sizeof(i32[0]); i++) {
            TPM_CHECK(attr_write(c, file, llama_i32_names[i], H5T_STD_I32LE, H5T_NATIVE_INT32,
                                 &i32[i]));
        }
        for (size_t i = 0; i < sizeof(f64) / sizeof(f64[0]); i++) {
            TPM_CHECK(attr_write(c, file, llama_f64_names[i], H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE,
                                 &f64[i]));
        }
    }
    return TPM_OK;
}

/* the architecture: files written before it was recorded hold GPT-2 models */
static tpm_status_t meta_read_arch(tpm_comm_t *c, hid_t file, tpm_model_config_t *mc)
{
    htri_t ex   = 0;
    char  *name = NULL;
    int    id;

    TPM_CHECK(ck_agree(c, TPM_H5_CALL(ex = H5Aexists(file, "arch"))));
    if (ex <= 0) {
        mc->arch = TPM_ARCH_GPT2;
        return TPM_OK;
    }
    TPM_CHECK(attr_read_str(c, file, "arch", &name));
    id = tpm_arch_id_parse(name);
    if (id < 0) {
        tpm_log_error("%s: model architecture '%s' is unknown to this tpmpi (it knows gpt2 and "
                      "llama; written by a newer tpmpi?)",
                      ck_ctx, name);
        tpm_free(name);
        return TPM_ERR_FORMAT;
    }
    tpm_free(name);
    mc->arch = id;
    if (id == TPM_ARCH_LLAMA) {
        int32_t i32[5];
        double  f64[5];

        for (size_t i = 0; i < 5; i++) {
            TPM_CHECK(attr_read(c, file, llama_i32_names[i], H5T_NATIVE_INT32, &i32[i]));
            TPM_CHECK(attr_read(c, file, llama_f64_names[i], H5T_NATIVE_DOUBLE, &f64[i]));
        }
        mc->NKV                   = i32[0];
        mc->F                     = i32[1];
        mc->tied                  = i32[2];
        mc->qkv_bias              = i32[3];
        mc->rope.orig_ctx         = i32[4];
        mc->rms_eps               = (float)f64[0];
        mc->rope_theta            = f64[1];
        mc->rope.factor           = f64[2];
        mc->rope.low_freq_factor  = f64[3];
        mc->rope.high_freq_factor = f64[4];
    }
    return TPM_OK;
}

static tpm_status_t meta_write(tpm_comm_t *c, hid_t file, hid_t dxpl, const tpm_ckpt_meta_t *m)
{
    const tpm_model_config_t *mc      = &m->model;
    const int32_t             version = TPM_CKPT_VERSION;
    const int32_t             i32[]   = {mc->L,    mc->NH,        mc->C,    mc->V,         mc->Vp,
                                         mc->maxT, m->world_size, m->batch, m->grad_accum, m->seq_len};
    static const char *const  i32_names[] = {
         "n_layer", "n_head",     "n_embd", "vocab_size", "padded_vocab_size",
         "n_ctx",   "world_size", "batch",  "grad_accum", "seq_len"};
    const int64_t            i64[]       = {m->step, m->tokens_seen, m->step};
    static const char *const i64_names[] = {"step", "tokens_seen", "data_position"};

    TPM_CHECK(attr_write_str(c, file, "format", TPM_CKPT_FORMAT));
    TPM_CHECK(attr_write(c, file, "format_version", H5T_STD_I32LE, H5T_NATIVE_INT32, &version));
    TPM_CHECK(attr_write_str(c, file, "created_by", "tpmpi " PACKAGE_VERSION));
    for (size_t i = 0; i < sizeof(i32) / sizeof(i32[0]); i++) {
        TPM_CHECK(attr_write(c, file, i32_names[i], H5T_STD_I32LE, H5T_NATIVE_INT32, &i32[i]));
    }
    for (size_t i = 0; i < sizeof(i64) / sizeof(i64[0]); i++) {
        TPM_CHECK(attr_write(c, file, i64_names[i], H5T_STD_I64LE, H5T_NATIVE_INT64, &i64[i]));
    }
    TPM_CHECK(attr_write(c, file, "seed", H5T_STD_U64LE, H5T_NATIVE_UINT64, &m->seed));
    TPM_CHECK(attr_write(c, file, "lr", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &m->lr));
    TPM_CHECK(meta_write_arch(c, file, mc));
    {
        const int32_t order = m->data_order > 0 ? m->data_order : 1;
        TPM_CHECK(attr_write(c, file, "data_order", H5T_STD_I32LE, H5T_NATIVE_INT32, &order));
    }
    TPM_CHECK(attr_write_str(c, file, "rng",
                             "counter-based: every random draw is a function of (seed, stream, "
                             "index), the streams derived from the step; ranks keep no other RNG "
                             "state"));
    TPM_CHECK(attr_write_str(c, file, "shard_rule",
                             "rows: with N ranks, rank i owns rows [i*r, min((i+1)*r, rows)) of "
                             "every tensor, r = ceil(rows/N); vectors are (n, 1)"));
    TPM_CHECK(attr_write_str(c, file, "checksum_algorithm", "tpm-rowhash64-v1"));
    TPM_CHECK(attr_write_str(c, file, "config_json", m->config_json ? m->config_json : "{}"));
    if (m->tokenizer != NULL && m->tokenizer_len > 0) {
        hid_t        ds;
        tpm_status_t status;
        uint64_t     local = 0, sum = 0;
        int64_t      limbs[4];
        int64_t      n = c->rank == 0 ? (int64_t)m->tokenizer_len : 0;

        TPM_CHECK(
            ds_create(c, file, "/tokenizer", H5T_STD_U8LE, (int64_t)m->tokenizer_len, 1, &ds));
        status = ds_rows_io(c, ds, dxpl, 1, H5T_NATIVE_UINT8, 0, n, 1, (void *)m->tokenizer);
        if (status == TPM_OK && c->rank == 0) {
            local = tpm_ckpt_row_hash(0, m->tokenizer, m->tokenizer_len);
        }
        if (status == TPM_OK) {
            status = sum_u64(c, &local, &sum, 1, limbs);
            if (status != TPM_OK) {
                tpm_fatal(status, "%s: checksum all-reduce failed", ck_ctx);
            }
            status = attr_write(c, ds, "checksum", H5T_STD_U64LE, H5T_NATIVE_UINT64, &sum);
        }
        H5Dclose(ds);
        TPM_CHECK(status);
    }
    return TPM_OK;
}

static tpm_status_t meta_read(tpm_comm_t *c, hid_t file, hid_t dxpl, tpm_ckpt_meta_t *m)
{
    int32_t                  i32[10];
    static const char *const i32_names[] = {
        "n_layer", "n_head",     "n_embd", "vocab_size", "padded_vocab_size",
        "n_ctx",   "world_size", "batch",  "grad_accum", "seq_len"};
    char        *format = NULL, *json = NULL;
    int32_t      version = 0;
    tpm_status_t status;
    int          has_tok = 0;

    memset(m, 0, sizeof(*m));
    TPM_CHECK(attr_read_str(c, file, "format", &format));
    if (strcmp(format, TPM_CKPT_FORMAT) != 0) {
        tpm_log_error("%s: not a tpmpi checkpoint (format '%s', expected '%s')", ck_ctx, format,
                      TPM_CKPT_FORMAT);
        tpm_free(format);
        return TPM_ERR_FORMAT;
    }
    tpm_free(format);
    TPM_CHECK(attr_read(c, file, "format_version", H5T_NATIVE_INT32, &version));
    if (version != TPM_CKPT_VERSION) {
        tpm_log_error("%s: checkpoint format version %d, this tpmpi reads version %d%s", ck_ctx,
                      (int)version, TPM_CKPT_VERSION,
                      version > TPM_CKPT_VERSION ? " (written by a newer tpmpi: upgrade)" : "");
        return TPM_ERR_FORMAT;
    }
    for (size_t i = 0; i < sizeof(i32) / sizeof(i32[0]); i++) {
        TPM_CHECK(attr_read(c, file, i32_names[i], H5T_NATIVE_INT32, &i32[i]));
    }
    m->model.L    = i32[0];
    m->model.NH   = i32[1];
    m->model.C    = i32[2];
    m->model.V    = i32[3];
    m->model.Vp   = i32[4];
    m->model.maxT = i32[5];
    m->world_size = i32[6];
    m->batch      = i32[7];
    m->grad_accum = i32[8];
    m->seq_len    = i32[9];
    TPM_CHECK(attr_read(c, file, "step", H5T_NATIVE_INT64, &m->step));
    TPM_CHECK(attr_read(c, file, "tokens_seen", H5T_NATIVE_INT64, &m->tokens_seen));
    if (m->step < 0 || m->tokens_seen < 0) {
        /* every rank read the same attributes: the same verdict everywhere */
        tpm_log_error("%s: step %lld, tokens_seen %lld: negative counts, the file is damaged or "
                      "was not written by tpmpi",
                      ck_ctx, (long long)m->step, (long long)m->tokens_seen);
        return TPM_ERR_FORMAT;
    }
    TPM_CHECK(attr_read(c, file, "seed", H5T_NATIVE_UINT64, &m->seed));
    TPM_CHECK(attr_read(c, file, "lr", H5T_NATIVE_DOUBLE, &m->lr));
    TPM_CHECK(meta_read_arch(c, file, &m->model));
    {
        /* absent in files written before the data order was recorded: those used order 1 */
        htri_t  ex    = 0;
        int32_t order = 1;

        TPM_CHECK(ck_agree(c, TPM_H5_CALL(ex = H5Aexists(file, "data_order"))));
        if (ex > 0) {
            TPM_CHECK(attr_read(c, file, "data_order", H5T_NATIVE_INT32, &order));
        }
        if (order < 1 || order > TPM_DATA_ORDER) {
            tpm_log_error("%s: data_order %d; this tpmpi knows data orders 1 to %d%s", ck_ctx,
                          (int)order, TPM_DATA_ORDER,
                          order > TPM_DATA_ORDER ? " (written by a newer tpmpi: upgrade)" : "");
            return TPM_ERR_FORMAT;
        }
        m->data_order = order;
    }
    {
        /* the stored shape must be one tpmpi can build: heads divide C, Vp matches V */
        tpm_model_config_t chk = m->model;
        status                 = tpm_model_config_finish(&chk);
        if (status == TPM_OK && chk.Vp != m->model.Vp) {
            tpm_log_error("%s: padded_vocab_size %d does not match vocab_size %d", ck_ctx,
                          m->model.Vp, m->model.V);
            status = TPM_ERR_FORMAT;
        } else if (status != TPM_OK) {
            tpm_log_error("%s: the model shape in the file is invalid", ck_ctx);
            status = TPM_ERR_FORMAT;
        }
        TPM_CHECK(status);
        m->model = chk; /* with the derived fields (GPT-2: NKV = NH, F = 4C) */
    }
    TPM_CHECK(attr_read_str(c, file, "config_json", &json));
    m->config_json = json;

    status = link_exists(file, "/tokenizer", &has_tok);
    TPM_CHECK_GOTO(ck_agree(c, status), status, err);
    if (has_tok) {
        int64_t  rows = -1, cols = 1;
        hid_t    ds   = -1;
        uint64_t want = 0, sum = 0;
        int64_t  limbs[4];
        void    *buf = NULL;

        TPM_CHECK_GOTO(ds_open(c, file, "/tokenizer", H5T_INTEGER, &rows, &cols, &ds), status, err);
        status = attr_read(c, ds, "checksum", H5T_NATIVE_UINT64, &want);
        if (status == TPM_OK) {
            status = tpm_ckpt_agree(c, tpm_malloc((size_t)rows + 1, &buf));
        }
        if (status == TPM_OK) {
            /* small: every rank reads all of it (each needs the whole tokenizer) */
            status = ds_rows_io(c, ds, dxpl, 0, H5T_NATIVE_UINT8, 0, rows, 1, buf);
        }
        H5Dclose(ds);
        if (status == TPM_OK) {
            uint64_t local = c->rank == 0 ? tpm_ckpt_row_hash(0, buf, (size_t)rows) : 0;
            status         = sum_u64(c, &local, &sum, 1, limbs);
            if (status == TPM_OK && sum != want) {
                tpm_log_error("%s: the tokenizer fails its checksum (stored %016" PRIx64
                              ", computed %016" PRIx64 "): the file is corrupted",
                              ck_ctx, want, sum);
                status = TPM_ERR_FORMAT;
            }
        }
        if (status != TPM_OK) {
            tpm_free(buf);
            goto err;
        }
        m->tokenizer     = buf;
        m->tokenizer_len = (size_t)rows;
    }
    return TPM_OK;

err:
    tpm_ckpt_meta_cleanup(m);
    return status;
}

/* ---------------------------------------------------------------------------------------------- */
/* open / close */

static tpm_status_t ck_file_check(const char *path)
{
    struct stat st;

    if (stat(path, &st) != 0) {
        tpm_log_error("checkpoint %s: %s", path, strerror(errno));
        return errno == ENOENT ? TPM_ERR_NOT_FOUND : TPM_ERR_IO;
    }
    if (!S_ISREG(st.st_mode)) {
        tpm_log_error("checkpoint %s is not a regular file", path);
        return TPM_ERR_INVALID_ARG;
    }
    return TPM_OK;
}

static void ck_free(tpm_ckpt_t *ck)
{
    tpm_ckpt_meta_cleanup(&ck->meta);
    tpm_free(ck->ranges);
    tpm_free(ck->limbs);
    tpm_free(ck);
}

tpm_status_t tpm_ckpt_open(tpm_comm_t *comm, const char *path, tpm_ckpt_t **ck_p)
{
    tpm_ckpt_t     *ck   = NULL;
    hid_t           fapl = -1;
    const MPI_Comm *mpi  = NULL;
    tpm_status_t    status;

    h5_quiet();
    ck_reading = 1;
    set_ctx("checkpoint", path, NULL);
    status = check_world(comm, &mpi);
    if (status == TPM_OK) {
        status = ck_file_check(path);
    }
    if (status == TPM_OK && strlen(path) >= sizeof(ck->path)) {
        tpm_log_error("checkpoint path %s is too long", path);
        status = TPM_ERR_INVALID_ARG;
    }
    if (status == TPM_OK) {
        status = tpm_calloc(1, sizeof(*ck), (void **)&ck);
    }
    if (status == TPM_OK) {
        ck->file = ck->dxpl = -1;
        ck->comm            = comm;
        snprintf(ck->path, sizeof(ck->path), "%s", path);
        status = tpm_calloc(2 * (size_t)comm->size, sizeof(int64_t), (void **)&ck->ranges);
    }
    if (status == TPM_OK) {
        status = tpm_calloc(4, sizeof(int64_t), (void **)&ck->limbs);
    }
    if (status == TPM_OK) {
        status = make_fapl(*mpi, &fapl);
    }
    if (status == TPM_OK) {
        status = make_dxpl(&ck->dxpl);
    }
    status = tpm_ckpt_agree(comm, status);
    if (status != TPM_OK) {
        goto err;
    }

    ck->file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    if (ck->file < 0) {
        char why[CK_ERR_MAX];
        h5_reason(why, sizeof(why));
        tpm_log_error("cannot open checkpoint %s: %s (the file is truncated, damaged or not "
                      "HDF5)",
                      path, why);
        status = TPM_ERR_FORMAT;
    }
    H5Pclose(fapl);
    fapl = -1;
    TPM_CHECK_GOTO(ck_agree(comm, status), status, err);
    TPM_CHECK_GOTO(meta_read(comm, ck->file, ck->dxpl, &ck->meta), status, err_close);
    *ck_p = ck;
    return TPM_OK;

err_close:
    H5Fclose(ck->file);
    ck->file = -1;
err:
    if (fapl >= 0) {
        H5Pclose(fapl);
    }
    if (ck != NULL) {
        if (ck->dxpl >= 0) {
            H5Pclose(ck->dxpl);
        }
        ck_free(ck);
    }
    return status;
}

const tpm_ckpt_meta_t *tpm_ckpt_meta(const tpm_ckpt_t *ck)
{
    return &ck->meta;
}

void tpm_ckpt_close(tpm_ckpt_t *ck)
{
    if (ck == NULL) {
        return;
    }
    set_ctx("closing checkpoint", ck->path, NULL);
    if (ck->file >= 0 && H5Fclose(ck->file) < 0) {
        char why[CK_ERR_MAX];
        h5_reason(why, sizeof(why));
        tpm_log_warn("closing checkpoint %s: %s", ck->path, why);
    }
    if (ck->dxpl >= 0) {
        H5Pclose(ck->dxpl);
    }
    ck_free(ck);
}

/* ---------------------------------------------------------------------------------------------- */
/* rows for serving */

static int cmp_range(const void *a, const void *b)
{
    const int64_t *x = a, *y = b;

    return (x[0] > y[0]) - (x[0] < y[0]);
}

static tpm_status_t ck_io_read(void *ctx, int g, int t, int64_t row0, int64_t nrows, float *dst)
{
    tpm_ckpt_t *ck = ctx;
    char        name[CK_NAME_MAX];

    ds_name(&tpm_ckpt_meta(ck)->model, 0, g, t, name, sizeof(name));
    return tpm_ckpt_read_rows(ck, name, row0, nrows, dst);
}

tpm_tensor_io_t tpm_ckpt_tensor_io(tpm_ckpt_t *ck)
{
    return (tpm_tensor_io_t){.ctx = ck, .read = ck_io_read};
}

tpm_status_t tpm_ckpt_read_rows(tpm_ckpt_t *ck, const char *name, int64_t row0, int64_t nrows,
                                float *buf)
{
    tpm_comm_t  *c = ck->comm;
    char         full[CK_NAME_MAX];
    int64_t      rows = -1, cols = 1, mine[2] = {row0, nrows};
    hid_t        ds   = -1;
    uint64_t     want = 0, got = 0, local;
    tpm_status_t status    = TPM_OK;
    int          partition = 1, all_full = 1;
    int64_t      next = 0;

    if (snprintf(full, sizeof(full), "%s%s", name[0] == '/' ? "" : "/", name) >=
        (int)sizeof(full)) {
        tpm_log_error("dataset name %s is too long", name);
        status = TPM_ERR_INVALID_ARG;
    }
    set_ctx("checkpoint", ck->path, full);
    ck_reading = 1;
    TPM_CHECK(tpm_ckpt_agree(c, status));
    TPM_CHECK(ds_open(c, ck->file, full, H5T_FLOAT, &rows, &cols, &ds));
    if (row0 < 0 || nrows < 0 || row0 > rows - nrows) {
        tpm_log_error("%s: rows [%lld, %lld) are outside its %lld rows", ck_ctx, (long long)row0,
                      (long long)(row0 + nrows), (long long)rows);
        status = TPM_ERR_INVALID_ARG;
    }
    status = tpm_ckpt_agree(c, status);
    if (status == TPM_OK) {
        status = attr_read(c, ds, "checksum", H5T_NATIVE_UINT64, &want);
    }
    if (status == TPM_OK) {
        status = ds_rows_io(c, ds, ck->dxpl, 0, H5T_NATIVE_FLOAT, row0, nrows, cols, buf);
    }
    H5Dclose(ds);
    TPM_CHECK(status);

    /*
     * Verify when the ranks' rows tile the dataset (one sum of hashes) or when every rank read
     * all of it (each checks alone); other selections are not checked.
     */
    TPM_CHECK(tpm_comm_all_gather(c, mine, ck->ranges, 2, TPM_DT_INT64, NULL));
    qsort(ck->ranges, (size_t)c->size, 2 * sizeof(int64_t), cmp_range);
    for (int i = 0; i < c->size; i++) {
        const int64_t *r = ck->ranges + 2 * i;
        if (r[1] > 0) {
            partition &= r[0] == next;
            next = r[1] > 0 ? r[0] + r[1] : next;
        }
        all_full &= r[0] == 0 && r[1] == rows;
    }
    partition &= next == rows;
    local = rows_hash(buf, row0, nrows, cols);
    if (partition && !all_full) {
        TPM_CHECK(sum_u64(c, &local, &got, 1, ck->limbs));
    } else if (all_full) {
        got = local;
    } else {
        tpm_log_debug("%s: rows read are not a partition: checksum not verified", ck_ctx);
        return TPM_OK;
    }
    if (got != want) {
        tpm_log_error("%s fails its checksum (stored %016" PRIx64 ", computed %016" PRIx64
                      "): the file is corrupted",
                      ck_ctx, want, got);
        status = TPM_ERR_FORMAT;
    }
    return tpm_ckpt_agree(c, status);
}

/* ---------------------------------------------------------------------------------------------- */
/* ZeRO-3 shards */

static size_t max_group_shard(const tpm_shard_layout_t *lay)
{
    size_t m = 0;

    for (int g = 0; g < lay->n_groups; g++) {
        if (lay->g[g].shard_numel > m) {
            m = lay->g[g].shard_numel;
        }
    }
    return m;
}

static size_t n_tensors(const tpm_shard_layout_t *lay)
{
    size_t n = 0;

    for (int g = 0; g < lay->n_groups; g++) {
        n += (size_t)lay->g[g].n_tensors;
    }
    return n;
}

/* the CPU backend's buffers are host memory: read and write them in place, no staging copy */
static int host_shards(const tpm_zero3_t *z)
{
    return strcmp(z->be->ops->name, "cpu") == 0;
}

static float *set_base(tpm_zero3_t *z, int set)
{
    return set == CK_SET_MODEL ? z->param : set == CK_SET_M ? z->m : z->v;
}

/* test hook (docs/CHECKPOINT.md): widen the window in which a checkpoint is half written */
static long test_delay_ms(void)
{
    const char *s = getenv("TPMPI_CKPT_TEST_DELAY_MS");
    char       *end;
    long        v;

    if (s == NULL || *s == '\0') {
        return 0;
    }
    errno = 0;
    v     = strtol(s, &end, 10);
    return (errno == 0 && *end == '\0' && v > 0 && v < 600000) ? v : 0;
}

/* test hook (docs/CHECKPOINT.md): skip the free-space probe, to reach the write-error paths */
static int test_env_set(const char *name)
{
    const char *s = getenv(name);

    return s != NULL && strcmp(s, "1") == 0;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/*
 * Bytes the file will take: the tensors, the tokenizer, and a generous allowance for HDF5's
 * metadata (object headers, attributes, the group B-trees: well under 2 KiB per dataset
 * here, plus the configuration string).
 */
static uint64_t expected_bytes(const tpm_zero3_t *z, const tpm_ckpt_meta_t *meta, size_t n_ds)
{
    uint64_t b = (uint64_t)CK_N_SETS * z->lay.logical_numel * sizeof(float);

    b += meta->tokenizer_len + (meta->config_json ? 2 * strlen(meta->config_json) : 0);
    return b + (1u << 20) + 4096 * (uint64_t)n_ds;
}

/*
 * Rank 0, before any HDF5 call: is there room for the whole file? A full disk found in the
 * middle of HDF5's collective writes cannot be recovered from cleanly (the ranks may fail at
 * different points), so it is found here instead, where the ranks can simply agree on it.
 * fallocate reserves the blocks for real (quotas included) and is released at once; file
 * systems without it are not probed (the write path still checks every step).
 */
static tpm_status_t space_probe(const char *tmp, uint64_t need)
{
    int          fd     = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    tpm_status_t status = TPM_OK;

    if (fd < 0) {
        tpm_log_error("cannot create %s: %s", tmp, strerror(errno));
        return TPM_ERR_IO;
    }
    if (fallocate(fd, 0, 0, (off_t)need) != 0) {
        int err = errno;
        if (err == ENOSPC || err == EDQUOT) {
            struct statvfs vfs;
            double         avail = -1.0;
            if (fstatvfs(fd, &vfs) == 0) {
                avail = (double)vfs.f_bavail * (double)vfs.f_frsize / 1048576.0;
            }
            tpm_log_error("no room for checkpoint %s: it needs about %.1f MiB, the file system "
                          "has %.1f MiB free (%s)",
                          tmp, (double)need / 1048576.0, avail, strerror(err));
            status = TPM_ERR_IO;
        } else if (err != EOPNOTSUPP && err != ENOSYS) {
            tpm_log_error("fallocate %s failed: %s", tmp, strerror(err));
            status = TPM_ERR_IO;
        }
    }
    if (ftruncate(fd, 0) != 0 && status == TPM_OK) {
        tpm_log_error("truncate %s failed: %s", tmp, strerror(errno));
        status = TPM_ERR_IO;
    }
    close(fd);
    if (status != TPM_OK) {
        unlink(tmp);
    }
    return status;
}

/*
 * A failed write inside HDF5's collective sequence (a data transfer, the metadata flush, the
 * close) cannot be agreed on: the ranks it did not strike may already wait in the next
 * collective of HDF5 1.10 (measured here: after an I/O error, one rank in MPI_File_set_size,
 * another in the metadata barrier, forever; and a failed H5Fclose leaves a half-destroyed
 * file ID that HDF5 frees again at MPI_Finalize, a segfault). So the rank that sees such a
 * failure stops the job at once (MPI_Abort ends every rank); the previous checkpoint and
 * "latest" are untouched, and the next run deletes the temporary. A full disk is found before
 * any of this by space_probe, where the ranks can agree and training goes on.
 */
static void write_failed(tpm_status_t status, const char *tmp) __attribute__((noreturn));

static void write_failed(tpm_status_t status, const char *tmp)
{
    tpm_fatal(status,
              "%s: I/O error inside HDF5's collective write (above); HDF5 cannot recover from it "
              "on the other ranks, so the job stops; %s is left behind and the previous "
              "checkpoint, if any, is intact",
              ck_ctx, tmp);
}

static void close_written(hid_t file, const char *tmp)
{
    tpm_status_t status = TPM_H5_CALL(H5Fclose(file));

    if (status != TPM_OK) {
        write_failed(status, tmp);
    }
}


/*
 * The rows of group @p g of set @p set in host memory: the shard itself on a host backend
 * (@p stage NULL), else a copy into @p stage (device shards).
 */
static tpm_status_t group_host_rows(tpm_zero3_t *z, int set, const tpm_shard_group_t *g,
                                    float *stage, const float **src_p)
{
    const float *src = set_base(z, set) + g->shard_base;

    *src_p = src;
    if (stage == NULL) {
        return TPM_OK;
    }
    *src_p = stage;
    return z->be->ops->copy(z->be, stage, src, g->shard_numel * sizeof(float), TPM_COPY_D2H);
}

/*
 * Read the closed temporary back and compare every dataset with what was written: the sums
 * of the row hashes computed from memory (@p want, n_ds of them, summed over ranks) and the
 * stored checksum attributes. MPI-IO does not always report a failed write (at N >= 3 Open
 * MPI's aggregators may print "fbtl_pwritev failed" and return success), so a lost write is
 * found here, before the file gets its final name. Each rank reads the rows it wrote, in
 * chunks of at most CK_VERIFY_CHUNK bytes. Collective.
 */
#define CK_VERIFY_CHUNK (4u << 20)

static tpm_status_t verify_written(tpm_zero3_t *z, const char *tmp, const uint64_t *want,
                                   size_t n_ds, const tpm_ckpt_meta_t *meta)
{
    tpm_comm_t  *c   = z->comm;
    tpm_ckpt_t  *ck  = NULL;
    uint64_t    *got = NULL, *stored = NULL;
    int64_t     *limbs = NULL;
    float       *buf   = NULL;
    size_t       d     = 0;
    tpm_status_t status, pending = TPM_OK;

    status = tpm_ckpt_open(c, tmp, &ck);
    if (status != TPM_OK) {
        tpm_log_error("checkpoint %s: the file just written does not read back (above): a "
                      "write was lost; the file is not used",
                      tmp);
        return TPM_ERR_IO;
    }
    set_ctx("verifying checkpoint", tmp, NULL);
    status = tpm_calloc(n_ds + 1, sizeof(uint64_t), (void **)&got);
    if (status == TPM_OK) {
        status = tpm_calloc(n_ds + 1, sizeof(uint64_t), (void **)&stored);
    }
    if (status == TPM_OK) {
        status = tpm_calloc(4 * (n_ds + 1), sizeof(int64_t), (void **)&limbs);
    }
    if (status == TPM_OK) {
        status = tpm_malloc(CK_VERIFY_CHUNK, (void **)&buf);
    }
    TPM_CHECK_GOTO(tpm_ckpt_agree(c, status), status, out);

    for (int set = 0; set < CK_N_SETS; set++) {
        for (int gi = 0; gi < z->lay.n_groups; gi++) {
            const tpm_shard_group_t *g = &z->lay.g[gi];
            for (int t = 0; t < g->n_tensors; t++, d++) {
                const tpm_shard_tensor_t *st   = &g->t[t];
                const int64_t             cols = st->desc.cols;
                const int64_t per  = (int64_t)(CK_VERIFY_CHUNK / ((size_t)cols * sizeof(float)));
                int64_t       rows = st->desc.rows, fcols = cols, row0, nrows;
                char          name[CK_NAME_MAX];
                hid_t         ds;
                tpm_status_t  local;

                ds_name(&z->cfg, set, gi, t, name, sizeof(name));
                set_ctx("verifying checkpoint", tmp, name);
                tpm_shard_rows(st, c->rank, &row0, &nrows);
                local = ds_open_local(ck->file, name, H5T_FLOAT, &rows, &fcols, &ds);
                if (local == TPM_OK) {
                    local = attr_read_local(ds, "checksum", H5T_NATIVE_UINT64, &stored[d]);
                }
                status = ck_agree_io(c, local, pending);
                /* the same number of collective reads on every rank: rows_per_rank is global */
                for (int64_t k = 0;
                     status == TPM_OK && k<st->rows_per_rank; k += per> 0 ? per : 1) {
                    int64_t  n = nrows - k;
                    ck_sel_t sel;
                    n      = n < 0 ? 0 : n > per ? per : n;
                    local  = sel_rows(ds, row0 + k, n, cols, buf, &sel);
                    status = ck_agree_io(c, local, pending);
                    if (status == TPM_OK) {
                        pending = sel_transfer(ds, ck->dxpl, 0, H5T_NATIVE_FLOAT, &sel);
                        if (pending == TPM_OK) {
                            got[d] += rows_hash(buf, row0 + k, n, cols);
                        }
                    }
                    sel_close(&sel);
                }
                if (ds >= 0) {
                    H5Dclose(ds);
                }
                TPM_CHECK_GOTO(status, status, out);
            }
        }
    }
    TPM_CHECK_GOTO(ck_agree_io(c, TPM_OK, pending), status, out);
    set_ctx("verifying checkpoint", tmp, "(checksums)");
    status = sum_u64(c, got, got, n_ds, limbs);
    TPM_CHECK_GOTO(tpm_ckpt_agree(c, status), status, out);
    d = 0;
    for (int set = 0; set < CK_N_SETS; set++) {
        for (int gi = 0; gi < z->lay.n_groups; gi++) {
            for (int t = 0; t < z->lay.g[gi].n_tensors; t++, d++) {
                char name[CK_NAME_MAX];
                if (got[d] == want[d] && stored[d] == want[d]) {
                    continue;
                }
                ds_name(&z->cfg, set, gi, t, name, sizeof(name));
                tpm_log_error("checkpoint %s: dataset %s reads back differently from what was "
                              "written (written %016" PRIx64 ", read %016" PRIx64
                              ", stored %016" PRIx64 "): a write was lost; the file is not used",
                              tmp, name, want[d], got[d], stored[d]);
                status = TPM_ERR_IO;
            }
        }
    }
    if (status == TPM_OK && meta->tokenizer != NULL && meta->tokenizer_len > 0) {
        /* the tokenizer: rank 0 reads it whole, the others take part with no rows */
        hid_t   ds;
        int64_t rows = (int64_t)meta->tokenizer_len, cols = 1;
        int64_t n  = c->rank == 0 ? rows : 0;
        void   *tb = NULL;

        set_ctx("verifying checkpoint", tmp, "/tokenizer");
        status = tpm_ckpt_agree(c, tpm_malloc(meta->tokenizer_len, &tb));
        if (status != TPM_OK) {
            tpm_free(tb);
            goto out;
        }
        status = ds_open(c, ck->file, "/tokenizer", H5T_INTEGER, &rows, &cols, &ds);
        if (status == TPM_OK) {
            status = ds_rows_io(c, ds, ck->dxpl, 0, H5T_NATIVE_UINT8, 0, n, 1, tb);
            H5Dclose(ds);
        }
        if (status == TPM_OK && c->rank == 0 &&
            (tpm_ckpt_row_hash(0, tb, meta->tokenizer_len) !=
             tpm_ckpt_row_hash(0, meta->tokenizer, meta->tokenizer_len))) {
            tpm_log_error("checkpoint %s: the tokenizer reads back differently from what was "
                          "written: a write was lost; the file is not used",
                          tmp);
            status = TPM_ERR_IO;
        }
        tpm_free(tb);
    }
    status = tpm_ckpt_agree(c, status);

out:
    if (status == TPM_ERR_FORMAT) {
        status = TPM_ERR_IO; /* what was just written does not read back: an I/O failure */
    }
    tpm_free(buf);
    tpm_free(limbs);
    tpm_free(stored);
    tpm_free(got);
    tpm_ckpt_close(ck);
    return status;
}

tpm_status_t tpm_ckpt_save(tpm_zero3_t *z, const char *path, const tpm_ckpt_meta_t *meta)
{
    tpm_comm_t     *c     = z->comm;
    const size_t    n_t   = n_tensors(&z->lay);
    const size_t    n_ds  = CK_N_SETS * n_t;
    const long      delay = test_delay_ms();
    const int       host  = host_shards(z);
    char            tmp[TPM_PATH_MAX + 8];
    hid_t           fapl = -1, file = -1, dxpl = -1, *ds = NULL;
    uint64_t       *sums  = NULL;
    int64_t        *limbs = NULL;
    float          *stage = NULL;
    size_t          d = 0, n_open = 0;
    const MPI_Comm *mpi    = NULL;
    tpm_status_t    status = TPM_OK;
    double          t0 = tpm_time_now(), bytes;

    h5_quiet();
    ck_reading = 0;
    set_ctx("writing checkpoint", path, NULL);
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
        tpm_log_error("checkpoint path %s is too long", path);
        status = TPM_ERR_INVALID_ARG;
    }
    if (status == TPM_OK) {
        status = check_world(c, &mpi);
    }
    if (status == TPM_OK) {
        status = tpm_calloc(n_ds, sizeof(hid_t), (void **)&ds);
    }
    if (status == TPM_OK) {
        status = tpm_calloc(n_ds, sizeof(uint64_t), (void **)&sums);
    }
    if (status == TPM_OK) {
        status = tpm_calloc(4 * n_ds, sizeof(int64_t), (void **)&limbs);
    }
    if (status == TPM_OK && !host) {
        status = tpm_malloc(max_group_shard(&z->lay) * sizeof(float), (void **)&stage);
    }
    if (status == TPM_OK) {
        status = make_fapl(*mpi, &fapl);
    }
    if (status == TPM_OK) {
        status = make_dxpl(&dxpl);
    }
    /* a temporary left by a crash: start afresh rather than overwrite in place */
    if (status == TPM_OK && c->rank == 0 && unlink(tmp) != 0 && errno != ENOENT) {
        tpm_log_error("cannot remove the stale %s: %s", tmp, strerror(errno));
        status = TPM_ERR_IO;
    }
    if (status == TPM_OK && c->rank == 0 && !test_env_set("TPMPI_CKPT_TEST_NO_PROBE")) {
        status = space_probe(tmp, expected_bytes(z, meta, n_ds));
    }
    TPM_CHECK_GOTO(tpm_ckpt_agree(c, status), status, out);

    status = TPM_H5_CALL(file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl));
    TPM_CHECK_GOTO(ck_agree(c, status), status, out);
    set_ctx("writing checkpoint", tmp, NULL);
    status = meta_write(c, file, dxpl, meta); /* agreed; includes the tokenizer's rows */
    if (status != TPM_OK) {
        write_failed(status, tmp);
    }

    /*
     * Three passes, so that every metadata write is over before the bulk of the bytes goes
     * out. A failed data write (a full disk, a failing device) then leaves HDF5's metadata
     * cache clean, and the collective close has nothing to flush that could fail on some
     * ranks only, which is where HDF5 1.10 deadlocks.
     * Pass 1: the checksums, from memory (they are what the file must hold).
     */
    for (int set = 0; set < CK_N_SETS; set++) {
        for (int gi = 0; gi < z->lay.n_groups; gi++) {
            const tpm_shard_group_t *g = &z->lay.g[gi];
            const float             *src;

            status = group_host_rows(z, set, g, host ? NULL : stage, &src);
            TPM_CHECK_GOTO(tpm_ckpt_agree(c, status), status, out_close);
            for (int t = 0; t < g->n_tensors; t++, d++) {
                const tpm_shard_tensor_t *st = &g->t[t];
                int64_t                   row0, nrows;
                tpm_shard_rows(st, c->rank, &row0, &nrows);
                sums[d] = rows_hash(src + st->shard_off, row0, nrows, st->desc.cols);
            }
        }
    }
    set_ctx("writing checkpoint", tmp, "(checksums)");
    status = sum_u64(c, sums, sums, n_ds, limbs);
    if (status != TPM_OK) {
        tpm_fatal(status, "%s: checksum all-reduce failed", ck_ctx);
    }

    /* pass 2: every dataset with its checksum attribute, then one collective metadata flush */
    d = 0;
    for (int set = 0; set < CK_N_SETS; set++) {
        for (int gi = 0; gi < z->lay.n_groups; gi++) {
            const tpm_shard_group_t *g = &z->lay.g[gi];
            for (int t = 0; t < g->n_tensors; t++, d++) {
                const tpm_shard_tensor_t *st = &g->t[t];
                char                      name[CK_NAME_MAX];
                tpm_status_t              local;

                ds_name(&z->cfg, set, gi, t, name, sizeof(name));
                set_ctx("writing checkpoint", tmp, name);
                local = ds_create_local(file, name, H5T_IEEE_F32LE, st->desc.rows, st->desc.cols,
                                        &ds[d]);
                if (ds[d] >= 0) {
                    n_open = d + 1;
                }
                if (local == TPM_OK) {
                    local = attr_write_local(ds[d], "checksum", H5T_STD_U64LE, H5T_NATIVE_UINT64,
                                             &sums[d]);
                }
                TPM_CHECK_GOTO(ck_agree(c, local), status, out_close);
            }
        }
    }
    set_ctx("writing checkpoint", tmp, "(metadata flush)");
    status = TPM_H5_CALL(H5Fflush(file, H5F_SCOPE_GLOBAL));
    if (status != TPM_OK) {
        write_failed(status, tmp);
    }

    /* pass 3: the rows, one collective transfer per dataset */
    d = 0;
    for (int set = 0; set < CK_N_SETS; set++) {
        for (int gi = 0; gi < z->lay.n_groups; gi++) {
            const tpm_shard_group_t *g = &z->lay.g[gi];
            const float             *src;

            status = group_host_rows(z, set, g, host ? NULL : stage, &src);
            TPM_CHECK_GOTO(tpm_ckpt_agree(c, status), status, out_close);
            for (int t = 0; t < g->n_tensors; t++, d++) {
                const tpm_shard_tensor_t *st = &g->t[t];
                char                      name[CK_NAME_MAX];
                int64_t                   row0, nrows;
                ck_sel_t                  sel;

                ds_name(&z->cfg, set, gi, t, name, sizeof(name));
                set_ctx("writing checkpoint", tmp, name);
                tpm_shard_rows(st, c->rank, &row0, &nrows);
                /*
                 * One agreement per dataset: it covers the selection and the previous
                 * transfer, so nobody enters a transfer alone.
                 */
                status = ck_agree(c, sel_rows(ds[d], row0, nrows, st->desc.cols,
                                              (void *)(src + st->shard_off), &sel));
                if (status == TPM_OK) {
                    status = sel_transfer(ds[d], dxpl, 1, H5T_NATIVE_FLOAT, &sel);
                    if (status != TPM_OK) {
                        write_failed(status, tmp);
                    }
                }
                sel_close(&sel);
                TPM_CHECK_GOTO(status, status, out_close);
                if (delay > 0) {
                    sleep_ms(delay);
                }
            }
        }
    }

out_close:
    for (size_t i = 0; i < n_open; i++) {
        if (ds[i] >= 0) {
            H5Dclose(ds[i]);
        }
    }
    close_written(file, tmp); /* collective; does not return on failure */
    if (status == TPM_OK) {
        /* every rank flushes what it wrote (on parallel file systems each client caches) */
        set_ctx("writing checkpoint", tmp, "(fsync)");
        status = tpm_ckpt_agree(c, tpm_file_sync(tmp));
    }
    if (status == TPM_OK) {
        /* read back and compare before the file gets its final name */
        status = verify_written(z, tmp, sums, n_ds, meta);
    }
    if (status == TPM_OK && c->rank == 0) {
        status = tpm_file_publish(tmp, path);
    }
    status = tpm_ckpt_agree(c, status);
    if (status != TPM_OK && c->rank == 0) {
        unlink(tmp); /* the previous checkpoint and "latest" are untouched */
    }
out:
    if (status != TPM_OK) {
        /* on every rank: each one's log says what happened to the checkpoint */
        tpm_log_error("checkpoint %s was not written (the reason is above, on rank 0 or on the "
                      "rank that failed); the previous checkpoint, if any, is untouched",
                      path);
    }
    if (dxpl >= 0) {
        H5Pclose(dxpl);
    }
    if (fapl >= 0) {
        H5Pclose(fapl);
    }
    tpm_free(stage);
    tpm_free(limbs);
    tpm_free(sums);
    tpm_free(ds);
    if (status == TPM_OK) {
        double dt = tpm_time_now() - t0;
        bytes     = (double)CK_N_SETS * (double)z->lay.logical_numel * sizeof(float);
        tpm_info0("checkpoint %s: step %lld, %.1f MiB written in %.2f s (%.0f MiB/s)", path,
                  (long long)meta->step, bytes / 1048576.0, dt, bytes / 1048576.0 / dt);
    }
    return status;
}

static tpm_status_t check_model(const char *path, const tpm_model_config_t *f,
                                const tpm_model_config_t *m)
{
    static const struct {
        const char *field, *option;
        size_t      off;
    } fields[] = {
        {"n_layer", "--n-layer", offsetof(tpm_model_config_t, L)},
        {"n_head", "--n-head", offsetof(tpm_model_config_t, NH)},
        {"n_embd", "--n-embd", offsetof(tpm_model_config_t, C)},
        {"vocab_size", "--vocab-size or the data's tokenizer", offsetof(tpm_model_config_t, V)},
        {"n_ctx", "--n-ctx", offsetof(tpm_model_config_t, maxT)},
    };
    static const struct {
        const char *field, *option;
        size_t      off;
    } llama[] = {
        {"n_kv_head", "--n-kv-head", offsetof(tpm_model_config_t, NKV)},
        {"intermediate_size", "--intermediate-size", offsetof(tpm_model_config_t, F)},
        {"tie_embeddings", "--tie-embeddings", offsetof(tpm_model_config_t, tied)},
        {"qkv_bias", "--qkv-bias", offsetof(tpm_model_config_t, qkv_bias)},
        {"rope_orig_ctx", "--rope-orig-ctx", offsetof(tpm_model_config_t, rope.orig_ctx)},
    };
    tpm_status_t status = TPM_OK;

    if (f->arch != m->arch) {
        tpm_log_error("checkpoint %s holds a %s model, but this run is --arch=%s", path,
                      tpm_arch_id_name(f->arch), tpm_arch_id_name(m->arch));
        return TPM_ERR_INVALID_ARG;
    }
    if (f->arch == TPM_ARCH_LLAMA) {
        for (size_t i = 0; i < sizeof(llama) / sizeof(llama[0]); i++) {
            int a = *(const int *)(const void *)((const char *)f + llama[i].off);
            int b = *(const int *)(const void *)((const char *)m + llama[i].off);
            if (a != b) {
                tpm_log_error("checkpoint %s was written for %s = %d, but this run has %s = %d "
                              "(%s)",
                              path, llama[i].field, a, llama[i].field, b, llama[i].option);
                status = TPM_ERR_INVALID_ARG;
            }
        }
        if (f->rms_eps != m->rms_eps || f->rope_theta != m->rope_theta ||
            f->rope.factor != m->rope.factor || f->rope.low_freq_factor != m->rope.low_freq_factor ||
            f->rope.high_freq_factor != m->rope.high_freq_factor) {
            tpm_log_error("checkpoint %s was written for rms_eps %g, rope theta %g, scaling "
                          "(%g, %g, %g), but this run has %g, %g, (%g, %g, %g) (--rms-eps, "
                          "--rope-*)",
                          path, (double)f->rms_eps, f->rope_theta, f->rope.factor,
                          f->rope.low_freq_factor, f->rope.high_freq_factor, (double)m->rms_eps,
                          m->rope_theta, m->rope.factor, m->rope.low_freq_factor,
                          m->rope.high_freq_factor);
            status = TPM_ERR_INVALID_ARG;
        }
    }
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        int a = *(const int *)(const void *)((const char *)f + fields[i].off);
        int b = *(const int *)(const void *)((const char *)m + fields[i].off);
        if (a != b) {
            tpm_log_error("checkpoint %s was written for %s = %d, but this run has %s = %d (%s)",
                          path, fields[i].field, a, fields[i].field, b, fields[i].option);
            status = TPM_ERR_INVALID_ARG;
        }
    }
    return status;
}

tpm_status_t tpm_ckpt_load(tpm_zero3_t *z, const char *path, int with_optim,
                           tpm_ckpt_meta_t *meta_p)
{
    tpm_comm_t  *c      = z->comm;
    const size_t n_t    = n_tensors(&z->lay);
    const int    n_sets = with_optim ? CK_N_SETS : 1;
    const size_t n_ds   = (size_t)n_sets * n_t;
    const int    host   = host_shards(z);
    tpm_ckpt_t  *ck     = NULL;
    uint64_t    *want = NULL, *got = NULL;
    int64_t     *limbs  = NULL;
    float       *stage  = NULL;
    size_t       d      = 0;
    tpm_status_t status = TPM_OK, pending = TPM_OK;
    double       t0 = tpm_time_now();

    tpm_zero3_params_changed(z); /* the shard is about to be overwritten */
    TPM_CHECK(tpm_ckpt_open(c, path, &ck));
    set_ctx("checkpoint", path, NULL);
    ck_reading = 1;
    status     = check_model(path, &ck->meta.model, &z->cfg);
    TPM_CHECK_GOTO(tpm_ckpt_agree(c, status), status, out);

    status = tpm_calloc(n_ds, sizeof(uint64_t), (void **)&want);
    if (status == TPM_OK) {
        status = tpm_calloc(n_ds, sizeof(uint64_t), (void **)&got);
    }
    if (status == TPM_OK) {
        status = tpm_calloc(4 * n_ds, sizeof(int64_t), (void **)&limbs);
    }
    if (status == TPM_OK && !host) {
        status = tpm_malloc(max_group_shard(&z->lay) * sizeof(float), (void **)&stage);
    }
    TPM_CHECK_GOTO(tpm_ckpt_agree(c, status), status, out);

    for (int set = 0; set < n_sets; set++) {
        for (int gi = 0; gi < z->lay.n_groups; gi++) {
            const tpm_shard_group_t *g   = &z->lay.g[gi];
            float                   *dst = host ? set_base(z, set) + g->shard_base : stage;

            for (int t = 0; t < g->n_tensors; t++, d++) {
                const tpm_shard_tensor_t *st   = &g->t[t];
                const int64_t             cols = st->desc.cols;
                char                      name[CK_NAME_MAX];
                int64_t                   row0, nrows, rows = st->desc.rows, fcols = cols;
                float                    *rbuf = dst + st->shard_off;
                hid_t                     ds;
                ck_sel_t                  sel = {-1, -1, NULL};
                tpm_status_t              local;

                ds_name(&z->cfg, set, gi, t, name, sizeof(name));
                set_ctx("checkpoint", path, name);
                tpm_shard_rows(st, c->rank, &row0, &nrows);
                /* open, checksum attribute, selection: one agreement before the transfer */
                local = ds_open_local(ck->file, name, H5T_FLOAT, &rows, &fcols, &ds);
                if (local == TPM_OK) {
                    local = attr_read_local(ds, "checksum", H5T_NATIVE_UINT64, &want[d]);
                }
                if (local == TPM_OK) {
                    local = sel_rows(ds, row0, nrows, cols, rbuf, &sel);
                }
                status = ck_agree(c, pending != TPM_OK ? pending : local);
                if (status == TPM_OK) {
                    /* a failed read is agreed on with the next dataset (or after the loop) */
                    pending = sel_transfer(ds, ck->dxpl, 0, H5T_NATIVE_FLOAT, &sel);
                }
                sel_close(&sel);
                if (ds >= 0) {
                    H5Dclose(ds);
                }
                TPM_CHECK_GOTO(status, status, out);
                got[d] = rows_hash(rbuf, row0, nrows, cols);
                /* padding rows of the shard stay zero whatever was there before */
                memset(rbuf + nrows * cols, 0,
                       (size_t)(st->rows_per_rank - nrows) * (size_t)cols * sizeof(float));
            }
            if (!host) {
                status = z->be->ops->copy(z->be, set_base(z, set) + g->shard_base, stage,
                                          g->shard_numel * sizeof(float), TPM_COPY_H2D);
                TPM_CHECK_GOTO(tpm_ckpt_agree(c, status), status, out);
            }
        }
    }
    TPM_CHECK_GOTO(ck_agree(c, pending), status, out);
    set_ctx("checkpoint", path, "(checksums)");
    status = sum_u64(c, got, got, n_ds, limbs);
    TPM_CHECK_GOTO(tpm_ckpt_agree(c, status), status, out);
    d = 0;
    for (int set = 0; set < n_sets; set++) {
        for (int gi = 0; gi < z->lay.n_groups; gi++) {
            for (int t = 0; t < z->lay.g[gi].n_tensors; t++, d++) {
                char name[CK_NAME_MAX];
                if (got[d] == want[d]) {
                    continue;
                }
                ds_name(&z->cfg, set, gi, t, name, sizeof(name));
                tpm_log_error("checkpoint %s: dataset %s fails its checksum (stored %016" PRIx64
                              ", computed %016" PRIx64 "): the file is corrupted",
                              path, name, want[d], got[d]);
                status = TPM_ERR_FORMAT;
            }
        }
    }
    TPM_CHECK_GOTO(status, status, out);
    if (!with_optim) {
        status = z->be->ops->memzero(z->be, z->m, z->lay.shard_numel * sizeof(float));
        if (status == TPM_OK) {
            status = z->be->ops->memzero(z->be, z->v, z->lay.shard_numel * sizeof(float));
        }
        TPM_CHECK_GOTO(tpm_ckpt_agree(c, status), status, out);
    }
    {
        double dt    = tpm_time_now() - t0;
        double bytes = (double)n_sets * (double)z->lay.logical_numel * sizeof(float);
        tpm_info0("checkpoint %s: step %lld, %.1f MiB read and verified in %.2f s (%.0f MiB/s)%s",
                  path, (long long)ck->meta.step, bytes / 1048576.0, dt, bytes / 1048576.0 / dt,
                  with_optim ? "" : ", weights only");
    }
    if (meta_p != NULL) {
        *meta_p = ck->meta; /* ownership of the strings moves to the caller */
        memset(&ck->meta, 0, sizeof(ck->meta));
    }

out:
    tpm_free(stage);
    tpm_free(limbs);
    tpm_free(got);
    tpm_free(want);
    tpm_ckpt_close(ck);
    return status;
}
