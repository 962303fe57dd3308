/* SPDX-License-Identifier: MIT */
/*
 * backend_cuda.c: the CUDA backend: the op table of backend.h on device memory, built
 * when configured --with-cuda. Every op is queued on one compute stream and returns
 * without waiting, except those that hand data to the host (copy to or from the host,
 * sumsq, sync), which wait for the stream. The math is in kernels/ (launchers in
 * kernels/kernels.h); this file checks arguments the way the CPU backend does, owns the
 * device buffers the kernels need (cuBLAS handle, reduction scratch, the device error
 * word) and the process-wide device and stream shared with the NCCL communicator.
 *
 * Numerics against the CPU backend (the reference): matmuls use TF32 tensor cores by
 * default (TPMPI_CUDA_MATMUL=fp32 for plain SGEMM, bf16 for bf16 inputs; fp32
 * accumulation always), everything else is fp32 with the CPU's formulas and different
 * summation orders. Every reduction has a fixed order: results are the same run to run.
 *
 * Errors only the device can detect (bad token ids, targets, cache slots) set a bit in a
 * device word that is read, reported and cleared at the next synchronisation point.
 */
#include "backend/backend_cuda.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"
#include "backend/backend_twobit.h"
#include "kernels/kernels.h"

#define CUDA_SUMSQ_MAX_PARTS 1024
#define CUDA_MIN_ALLOC       256 /* bytes: cudaMalloc of 0 would return NULL */

typedef struct {
    cudaStream_t    stream;  /* compute stream (borrowed from the process state) */
    void           *blas;    /* cuBLAS handle on stream */
    tpm_cuda_math_t math;    /* matmul precision */
    int             device;  /* CUDA device index */
    int            *err_d;   /* device error word (TPM_CUDA_ERR_* bits) */
    double         *parts_d; /* (CUDA_SUMSQ_MAX_PARTS) sumsq partial sums */
    float          *scratch; /* reduction scratch, grown on first use */
    size_t          scratch_floats;
    double          parts_h[CUDA_SUMSQ_MAX_PARTS];
} cuda_priv_t;

#define CUDA_REQUIRE(_cond)                                                                        \
    do {                                                                                           \
        if (!(_cond)) {                                                                            \
            tpm_log_error("cuda backend %s: invalid argument: %s", __func__, #_cond);              \
            return TPM_ERR_INVALID_ARG;                                                            \
        }                                                                                          \
    } while (0)

static cuda_priv_t *priv_of(tpm_backend_t *be)
{
    return be->priv;
}

/* ------------------------------------------------------------------------------------------ */
/* process-wide device and stream                                                             */
/* ------------------------------------------------------------------------------------------ */

static struct {
    int          refs;
    int          device;
    cudaStream_t stream;
} cuda_proc = {0, -1, NULL};

tpm_status_t tpm_cuda_device_count(int *n_p)
{
    int         n   = 0;
    cudaError_t err = cudaGetDeviceCount(&n);

    if (err == cudaSuccess && n < 1) {
        err = cudaErrorNoDevice;
    }
    if (err != cudaSuccess) {
        (void)cudaGetLastError(); /* reported here; do not let it resurface later */
        tpm_log_error("no CUDA device: %s", cudaGetErrorString(err));
        return TPM_ERR_CUDA;
    }
    *n_p = n;
    return TPM_OK;
}

/* node-local rank from the launcher's environment, -1 if none is set */
static int env_local_rank(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID",
                                       "MPI_LOCALRANKID", "PMI_LOCAL_RANK"};

    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        const char *v = getenv(vars[i]);
        char       *end;
        long        r;

        if (v == NULL || *v == '\0') {
            continue;
        }
        r = strtol(v, &end, 10);
        if (*end == '\0' && r >= 0 && r < 1 << 20) {
            return (int)r;
        }
    }
    return -1;
}

tpm_status_t tpm_cuda_proc_acquire(int device, void **stream_p)
{
    int          ndev, lr;
    cudaStream_t st;

    if (cuda_proc.refs > 0) {
        if (device >= 0 && device != cuda_proc.device) {
            tpm_log_error("cuda: device %d is in use by this process; cannot switch to device %d",
                          cuda_proc.device, device);
            return TPM_ERR_INVALID_ARG;
        }
        cuda_proc.refs++;
        *stream_p = cuda_proc.stream;
        return TPM_OK;
    }
    TPM_CHECK(tpm_cuda_device_count(&ndev));
    if (device >= ndev) {
        tpm_log_error("cuda: device %d requested, %d device(s) visible", device, ndev);
        return TPM_ERR_INVALID_ARG;
    }
    if (device < 0) {
        lr     = env_local_rank();
        device = lr >= 0 ? lr % ndev : 0;
    }
    TPM_CHECK(TPM_CUDA_CALL(cudaSetDevice(device)));
    /* non-blocking: no implicit synchronisation with the legacy default stream */
    TPM_CHECK(TPM_CUDA_CALL(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking)));
    cuda_proc.refs   = 1;
    cuda_proc.device = device;
    cuda_proc.stream = st;
    *stream_p        = st;
    return TPM_OK;
}

void tpm_cuda_proc_release(void)
{
    if (cuda_proc.refs <= 0) {
        return;
    }
    if (--cuda_proc.refs == 0) {
        (void)TPM_CUDA_CALL(cudaStreamSynchronize(cuda_proc.stream));
        (void)TPM_CUDA_CALL(cudaStreamDestroy(cuda_proc.stream));
        cuda_proc.stream = NULL;
        cuda_proc.device = -1;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* private state                                                                              */
/* ------------------------------------------------------------------------------------------ */

static tpm_status_t math_from_name(const char *v, tpm_cuda_math_t *math_p)
{
    if (v == NULL || *v == '\0' || strcmp(v, "auto") == 0 || strcmp(v, "tf32") == 0) {
        *math_p = TPM_CUDA_MATH_TF32;
    } else if (strcmp(v, "fp32") == 0) {
        *math_p = TPM_CUDA_MATH_FP32;
    } else if (strcmp(v, "bf16") == 0) {
        *math_p = TPM_CUDA_MATH_BF16;
    } else {
        tpm_log_error("CUDA matmul precision '%s': expected auto, fp32, tf32 or bf16", v);
        return TPM_ERR_INVALID_ARG;
    }
    return TPM_OK;
}

/* the default before --cuda-matmul is applied: TPMPI_CUDA_MATMUL, else tf32 */
static tpm_status_t parse_math(tpm_cuda_math_t *math_p)
{
    return math_from_name(getenv("TPMPI_CUDA_MATMUL"), math_p);
}

tpm_status_t tpm_backend_cuda_set_math(void *priv, const char *mode)
{
    cuda_priv_t    *cp = priv;
    tpm_cuda_math_t m;

    TPM_CHECK(math_from_name(mode, &m));
    if (m != cp->math) {
        tpm_log_debug("cuda: matmul precision %s", tpm_cuda_math_name(m));
    }
    cp->math = m;
    return TPM_OK;
}

static void dev_free(void *p)
{
    if (p != NULL) {
        (void)TPM_CUDA_CALL(cudaFree(p));
    }
}

void tpm_backend_cuda_priv_destroy(void *priv)
{
    cuda_priv_t *cp = priv;

    if (cp == NULL) {
        return;
    }
    if (cp->stream != NULL) {
        (void)TPM_CUDA_CALL(cudaStreamSynchronize(cp->stream));
    }
    tpm_cuda_blas_destroy(cp->blas);
    dev_free(cp->scratch);
    dev_free(cp->parts_d);
    dev_free(cp->err_d);
    if (cp->stream != NULL) {
        tpm_cuda_proc_release();
    }
    tpm_free(cp);
}

tpm_status_t tpm_backend_cuda_priv_create(void **priv_p)
{
    cuda_priv_t          *cp;
    void                 *p, *stream;
    struct cudaDeviceProp prop;
    tpm_status_t          status;

    TPM_CHECK(tpm_calloc(1, sizeof(*cp), &p));
    cp = p;
    TPM_CHECK_GOTO(parse_math(&cp->math), status, err);
    TPM_CHECK_GOTO(tpm_cuda_proc_acquire(-1, &stream), status, err);
    cp->stream = stream;
    cp->device = cuda_proc.device;
    TPM_CHECK_GOTO(tpm_cuda_blas_create(cp->stream, &cp->blas), status, err);
    TPM_CHECK_GOTO(TPM_CUDA_CALL(cudaMalloc((void **)&cp->err_d, sizeof(int))), status, err);
    TPM_CHECK_GOTO(TPM_CUDA_CALL(cudaMemsetAsync(cp->err_d, 0, sizeof(int), cp->stream)), status,
                   err);
    TPM_CHECK_GOTO(
        TPM_CUDA_CALL(cudaMalloc((void **)&cp->parts_d, CUDA_SUMSQ_MAX_PARTS * sizeof(double))),
        status, err);
    TPM_CHECK_GOTO(TPM_CUDA_CALL(cudaGetDeviceProperties(&prop, cp->device)), status, err);
    tpm_info0("cuda backend: device %d (%s, sm_%d%d, %d SMs, %.1f GiB), matmul %s", cp->device,
              prop.name, prop.major, prop.minor, prop.multiProcessorCount,
              (double)prop.totalGlobalMem / 1073741824.0, tpm_cuda_math_name(cp->math));
    *priv_p = cp;
    return TPM_OK;

err:
    tpm_backend_cuda_priv_destroy(cp);
    return status;
}

/* Scratch of at least @p nfloats floats, valid until the next op (ops run in stream order). */
static tpm_status_t get_scratch(cuda_priv_t *cp, size_t nfloats, float **p_p)
{
    size_t nbytes;

    if (nfloats > cp->scratch_floats) {
        if (tpm_mul_size(nfloats, sizeof(float), &nbytes) != TPM_OK) {
            tpm_log_error("cuda backend: scratch of %zu floats overflows", nfloats);
            return TPM_ERR_OVERFLOW;
        }
        /* cudaFree waits for the device, so the old buffer is no longer in use */
        dev_free(cp->scratch);
        cp->scratch        = NULL;
        cp->scratch_floats = 0;
        TPM_CHECK(TPM_CUDA_CALL(cudaMalloc((void **)&cp->scratch, nbytes)));
        cp->scratch_floats = nfloats;
        tpm_log_debug("cuda backend scratch grown to %zu bytes", nbytes);
    }
    *p_p = cp->scratch;
    return TPM_OK;
}

/*
 * After the stream has been synchronised: report and clear the errors the kernels flagged
 * since the last check.
 */
static tpm_status_t check_device_errors(cuda_priv_t *cp)
{
    int flags = 0;

    TPM_CHECK(TPM_CUDA_CALL(
        cudaMemcpyAsync(&flags, cp->err_d, sizeof(int), cudaMemcpyDeviceToHost, cp->stream)));
    TPM_CHECK(TPM_CUDA_CALL(cudaStreamSynchronize(cp->stream)));
    if (flags == 0) {
        return TPM_OK;
    }
    TPM_CHECK(TPM_CUDA_CALL(cudaMemsetAsync(cp->err_d, 0, sizeof(int), cp->stream)));
    if (flags & TPM_CUDA_ERR_TOKEN) {
        tpm_log_error("cuda backend: a token id is negative (encoder)");
    }
    if (flags & TPM_CUDA_ERR_TARGET) {
        tpm_log_error("cuda backend: a target is outside [-1, V) (cross-entropy)");
    }
    if (flags & TPM_CUDA_ERR_KV) {
        tpm_log_error("cuda backend: a token's cache slot or position is outside the cache "
                      "(attention_kv)");
    }
    return TPM_ERR_INVALID_ARG;
}

/* ------------------------------------------------------------------------------------------ */
/* memory                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static tpm_status_t cuda_alloc(tpm_backend_t *be, size_t nbytes, void **ptr_p)
{
    void       *p = NULL;
    cudaError_t err;

    (void)be;
    CUDA_REQUIRE(ptr_p != NULL);
    err = cudaMalloc(&p, nbytes < CUDA_MIN_ALLOC ? CUDA_MIN_ALLOC : nbytes);
    if (err == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        tpm_log_error("cuda backend: allocation of %zu bytes failed: %s", nbytes,
                      cudaGetErrorString(err));
        return TPM_ERR_NO_MEMORY;
    }
    TPM_CHECK(TPM_CUDA_CALL(err));
    *ptr_p = p;
    return TPM_OK;
}

static void cuda_free(tpm_backend_t *be, void *ptr)
{
    (void)be;
    dev_free(ptr);
}

static tpm_status_t cuda_memzero(tpm_backend_t *be, void *ptr, size_t nbytes)
{
    if (nbytes == 0) {
        return TPM_OK;
    }
    CUDA_REQUIRE(ptr != NULL);
    return TPM_CUDA_CALL(cudaMemsetAsync(ptr, 0, nbytes, priv_of(be)->stream));
}

static tpm_status_t cuda_copy(tpm_backend_t *be, void *dst, const void *src, size_t nbytes,
                              tpm_copy_kind_t kind)
{
    cuda_priv_t *cp = priv_of(be);

    CUDA_REQUIRE(kind == TPM_COPY_H2D || kind == TPM_COPY_D2H || kind == TPM_COPY_D2D);
    if (nbytes == 0 || dst == src) {
        return TPM_OK;
    }
    CUDA_REQUIRE(dst != NULL && src != NULL);
    /* cudaMemcpyDefault: unified addressing tells host from device whatever the caller says */
    TPM_CHECK(TPM_CUDA_CALL(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDefault, cp->stream)));
    if (kind == TPM_COPY_D2D) {
        return TPM_OK;
    }
    /*
     * A host buffer is the caller's again when copy returns (as with the CPU backend): wait.
     * Data read back is checked against the errors the kernels flagged on the way.
     */
    if (kind == TPM_COPY_D2H) {
        return check_device_errors(cp);
    }
    return TPM_CUDA_CALL(cudaStreamSynchronize(cp->stream));
}

static tpm_status_t cuda_sync(tpm_backend_t *be)
{
    return check_device_errors(priv_of(be));
}

/* ------------------------------------------------------------------------------------------ */
/* ops                                                                                        */
/* ------------------------------------------------------------------------------------------ */

static tpm_status_t cuda_encoder_fwd(tpm_backend_t *be, float *out, const int32_t *tokens,
                                     const float *wte, const float *wpe, int B, int T, int C)
{
    cuda_priv_t *cp = priv_of(be);

    CUDA_REQUIRE(B >= 0 && T >= 0 && C >= 0);
    if ((size_t)B * (size_t)T == 0 || C == 0) {
        return TPM_OK;
    }
    CUDA_REQUIRE(out != NULL && tokens != NULL && wte != NULL && wpe != NULL);
    return tpm_cuda_encoder_fwd(out, tokens, wte, wpe, B, T, C, cp->err_d, cp->stream);
}

static tpm_status_t cuda_encoder_bwd(tpm_backend_t *be, float *dwte, float *dwpe, const float *dout,
                                     const int32_t *tokens, int B, int T, int C)
{
    cuda_priv_t *cp = priv_of(be);

    CUDA_REQUIRE(B >= 0 && T >= 0 && C >= 0);
    if ((size_t)B * (size_t)T == 0 || C == 0) {
        return TPM_OK;
    }
    CUDA_REQUIRE(dout != NULL && tokens != NULL);
    CUDA_REQUIRE((size_t)B * (size_t)T <= 0x7fffffff);
    return tpm_cuda_encoder_bwd(dwte, dwpe, dout, tokens, B, T, C, cp->err_d, cp->stream);
}

static tpm_status_t cuda_layernorm_fwd(tpm_backend_t *be, float *out, float *mean, float *rstd,
                                       const float *inp, const float *w, const float *b, int N,
                                       int C)
{
    CUDA_REQUIRE(N >= 0 && C >= 0);
    if (N == 0) {
        return TPM_OK;
    }
    CUDA_REQUIRE(C > 0 && out != NULL && inp != NULL && w != NULL && b != NULL);
    return tpm_cuda_layernorm_fwd(out, mean, rstd, inp, w, b, N, C, priv_of(be)->stream);
}

static tpm_status_t cuda_layernorm_bwd(tpm_backend_t *be, float *dinp, float *dw, float *db,
                                       const float *dout, const float *inp, const float *w,
                                       const float *mean, const float *rstd, int N, int C)
{
    cuda_priv_t *cp      = priv_of(be);
    float       *scratch = NULL;

    CUDA_REQUIRE(N >= 0 && C >= 0);
    if (N == 0 || C == 0) {
        return TPM_OK;
    }
    CUDA_REQUIRE(dout != NULL && inp != NULL && mean != NULL && rstd != NULL);
    CUDA_REQUIRE(dinp == NULL || w != NULL);
    if (dw != NULL || db != NULL) {
        TPM_CHECK(get_scratch(cp, 2 * tpm_cuda_colsum_scratch_floats(N, C), &scratch));
    }
    return tpm_cuda_layernorm_bwd(dinp, dw, db, dout, inp, w, mean, rstd, N, C, scratch,
                                  cp->stream);
}

static tpm_status_t cuda_matmul_fwd(tpm_backend_t *be, float *out, const float *inp, const float *w,
                                    const float *bias, int N, int IC, int OC, int w_trans)
{
    cuda_priv_t *cp = priv_of(be);

    CUDA_REQUIRE(N >= 0 && IC >= 0 && OC >= 0);
    CUDA_REQUIRE(w_trans == 0 || w_trans == 1);
    if (N == 0 || OC == 0) {
        return TPM_OK;
    }
    CUDA_REQUIRE(out != NULL);
    CUDA_REQUIRE(IC == 0 || (inp != NULL && w != NULL));
    return tpm_cuda_matmul_fwd(cp->blas, cp->math, out, inp, w, bias, N, IC, OC, w_trans,
                               cp->stream);
}

static tpm_status_t cuda_matmul_bwd(tpm_backend_t *be, float *dinp, float *dw, float *dbias,
                                    const float *dout, const float *inp, const float *w, int N,
                                    int IC, int OC, int w_trans)
{
    cuda_priv_t *cp      = priv_of(be);
    float       *scratch = NULL;

    CUDA_REQUIRE(N >= 0 && IC >= 0 && OC >= 0);
    CUDA_REQUIRE(w_trans == 0 || w_trans == 1);
    if (N == 0 || OC == 0) {
        return TPM_OK; /* every gradient is an empty sum */
    }
    CUDA_REQUIRE(dout != NULL);
    CUDA_REQUIRE(dinp == NULL || IC == 0 || w != NULL);
    CUDA_REQUIRE(dw == NULL || IC == 0 || inp != NULL);
    if (dbias != NULL) {
        TPM_CHECK(get_scratch(cp, tpm_cuda_colsum_scratch_floats(N, OC), &scratch));
    }
    return tpm_cuda_matmul_bwd(cp->blas, cp->math, dinp, dw, dbias, dout, inp, w, N, IC, OC,
                               w_trans, scratch, cp->stream);
}

static tpm_status_t attn_check(int B, int T, int C, int NH)
{
    CUDA_REQUIRE(B >= 0 && T >= 0 && C >= 0 && NH > 0);
    CUDA_REQUIRE(C % NH == 0);
    CUDA_REQUIRE(C <= 0x7fffffff / 3);
    return TPM_OK;
}

static tpm_status_t cuda_attention_fwd(tpm_backend_t *be, float *out, float *lse, const float *qkv,
                                       int B, int T, int C, int NH)
{
    TPM_CHECK(attn_check(B, T, C, NH));
    if (B == 0 || T == 0 || C == 0) {
        return TPM_OK;
    }
    CUDA_REQUIRE(out != NULL && lse != NULL && qkv != NULL);
    return tpm_cuda_attention_fwd(out, lse, qkv, B, T, C, NH, priv_of(be)->stream);
}

static tpm_status_t cuda_attention_bwd(tpm_backend_t *be, float *dqkv, const float *dout,
                                       const float *qkv, const float *out, const float *lse, int B,
                                       int T, int C, int NH)
{
    cuda_priv_t *cp = priv_of(be);
    float       *scratch;

    TPM_CHECK(attn_check(B, T, C, NH));
    if (B == 0 || T == 0 || C == 0) {
        return TPM_OK;
    }
    CUDA_REQUIRE(dqkv != NULL && dout != NULL && qkv != NULL && out != NULL && lse != NULL);
    TPM_CHECK(get_scratch(cp, tpm_cuda_attention_bwd_scratch_floats(B, T, NH), &scratch));
    return tpm_cuda_attention_bwd(dqkv, dout, qkv, out, lse, B, T, C, NH, scratch, cp->stream);
}

static tpm_status_t cuda_attention_kv(tpm_backend_t *be, float *out, const float *qkv,
                                      float *kcache, float *vcache, const int32_t *slot,
                                      const int32_t *pos, int N, int C, int NH, int ctx)
{
    cuda_priv_t *cp = priv_of(be);

    CUDA_REQUIRE(N >= 0 && C >= 0 && ctx > 0);
    if (N == 0 || C == 0) {
        return TPM_OK; /* C == 0: a tensor-parallel rank that owns no head */
    }
    TPM_CHECK(attn_check(1, 1, C, NH));
    CUDA_REQUIRE(out != NULL && qkv != NULL && kcache != NULL && vcache != NULL && slot != NULL &&
                 pos != NULL);
    return tpm_cuda_attention_kv(out, qkv, kcache, vcache, slot, pos, N, C, NH, ctx, cp->err_d,
                                 cp->stream);
}

static tpm_status_t cuda_gelu_fwd(tpm_backend_t *be, float *out, const float *inp, size_t n)
{
    if (n == 0) {
        return TPM_OK;
    }
    CUDA_REQUIRE(out != NULL && inp != NULL);
    return tpm_cuda_gelu_fwd(out, inp, n, priv_of(be)->stream);
}

static tpm_status_t cuda_gelu_bwd(tpm_backend_t *be, float *dinp, const float *inp,
                                  const float *dout, size_t n)
{
    if (n == 0) {
        return TPM_OK;
    }
    CUDA_REQUIRE(dinp != NULL && inp != NULL && dout != NULL);
    return tpm_cuda_gelu_bwd(dinp, inp, dout, n, priv_of(be)->stream);
}

static tpm_status_t cuda_add(tpm_backend_t *be, float *out, const float *a, const float *b,
                             size_t n)
{
    if (n == 0) {
        return TPM_OK;
    }
    CUDA_REQUIRE(out != NULL && a != NULL && b != NULL);
    return tpm_cuda_add(out, a, b, n, priv_of(be)->stream);
}

static tpm_status_t cuda_axpy(tpm_backend_t *be, float *y, float alpha, const float *x, size_t n)
{
    if (n == 0) {
        return TPM_OK;
    }
    CUDA_REQUIRE(y != NULL && x != NULL);
    return tpm_cuda_axpy(y, alpha, x, n, priv_of(be)->stream);
}

static tpm_status_t cuda_scale(tpm_backend_t *be, float *x, float alpha, size_t n)
{
    if (n == 0) {
        return TPM_OK;
    }
    CUDA_REQUIRE(x != NULL);
    return tpm_cuda_scale(x, alpha, n, priv_of(be)->stream);
}

static tpm_status_t cuda_sumsq(tpm_backend_t *be, const float *x, size_t n, double *sumsq_p)
{
    cuda_priv_t *cp    = priv_of(be);
    double       total = 0.0;
    size_t       nparts;

    CUDA_REQUIRE(sumsq_p != NULL);
    if (n == 0) {
        *sumsq_p = 0.0;
        return TPM_OK;
    }
    CUDA_REQUIRE(x != NULL);
    nparts = tpm_cuda_sumsq_nparts(n);
    TPM_CHECK(tpm_cuda_sumsq_partial(x, n, cp->parts_d, cp->stream));
    TPM_CHECK(TPM_CUDA_CALL(cudaMemcpyAsync(cp->parts_h, cp->parts_d, nparts * sizeof(double),
                                            cudaMemcpyDeviceToHost, cp->stream)));
    TPM_CHECK(check_device_errors(cp)); /* waits for the stream */
    /* the partials in order: deterministic for a given n */
    for (size_t k = 0; k < nparts; k++) {
        total += cp->parts_h[k];
    }
    *sumsq_p = total;
    return TPM_OK;
}

static tpm_status_t cuda_xent_fwd_bwd(tpm_backend_t *be, float *losses, float *dlogits,
                                      const float *logits, const int32_t *targets, int N, int V,
                                      int Vp, float dloss)
{
    cuda_priv_t *cp = priv_of(be);

    CUDA_REQUIRE(N >= 0 && V > 0 && Vp >= V);
    if (N == 0) {
        return TPM_OK;
    }
    CUDA_REQUIRE(losses != NULL && logits != NULL && targets != NULL);
    return tpm_cuda_xent_fwd_bwd(losses, dlogits, logits, targets, N, V, Vp, dloss, cp->err_d,
                                 cp->stream);
}

static tpm_status_t cuda_adamw(tpm_backend_t *be, float *param, const float *grad, float *m,
                               float *v, size_t n, float lr, float beta1, float beta2, float eps,
                               float wd, int t)
{
    float bc1, bc2;

    CUDA_REQUIRE(t >= 1);
    if (n == 0) {
        return TPM_OK;
    }
    CUDA_REQUIRE(param != NULL && grad != NULL && m != NULL && v != NULL);
    /* the CPU backend's bias corrections, bit for bit */
    bc1 = 1.0f - powf(beta1, (float)t);
    bc2 = 1.0f - powf(beta2, (float)t);
    return tpm_cuda_adamw(param, grad, m, v, n, lr, beta1, beta2, eps, wd, bc1, bc2,
                          priv_of(be)->stream);
}

static tpm_status_t cuda_to_bf16(tpm_backend_t *be, uint16_t *dst, const float *src, size_t n)
{
    if (n == 0) {
        return TPM_OK;
    }
    CUDA_REQUIRE(dst != NULL && src != NULL);
    return tpm_cuda_to_bf16(dst, src, n, priv_of(be)->stream);
}

static tpm_status_t cuda_from_bf16(tpm_backend_t *be, float *dst, const uint16_t *src, size_t n)
{
    if (n == 0) {
        return TPM_OK;
    }
    CUDA_REQUIRE(dst != NULL && src != NULL);
    return tpm_cuda_from_bf16(dst, src, n, priv_of(be)->stream);
}

static tpm_status_t cuda_twobit_encode(tpm_backend_t *be, int mode, int B, const float *g, size_t n,
                                       void *residual, uint64_t key, uint64_t stream,
                                       uint64_t index0, uint8_t *chunk)
{
    CUDA_REQUIRE(tpm_twobit_block_ok(B) && mode >= TPM_TWOBIT_EF_FP32 &&
                 mode <= TPM_TWOBIT_STOCHASTIC);
    CUDA_REQUIRE(chunk != NULL && (n == 0 || g != NULL));
    CUDA_REQUIRE(mode == TPM_TWOBIT_STOCHASTIC || n == 0 || residual != NULL);
    return tpm_cuda_twobit_encode(mode, B, g, n, residual, key, stream, index0, chunk,
                                  priv_of(be)->stream);
}

static tpm_status_t cuda_twobit_decode_add(tpm_backend_t *be, int B, const uint8_t *chunk, size_t n,
                                           float *acc)
{
    CUDA_REQUIRE(tpm_twobit_block_ok(B));
    if (n == 0) {
        return TPM_OK;
    }
    CUDA_REQUIRE(chunk != NULL && acc != NULL);
    return tpm_cuda_twobit_decode_add(B, chunk, n, acc, priv_of(be)->stream);
}

/* ---------------------------------------------------------------------------------------------- */
/*
 * LLaMA-family ops: typed stubs until CUDA kernels for them exist and have run on a GPU
 * (issue 14). tpmpi refuses --device=cuda --arch=llama before any of them is reached.
 */
static tpm_status_t cuda_llama_unsupported(const char *op)
{
    tpm_log_error("cuda backend: %s is not implemented yet (LLaMA ops run on --device=cpu only)",
                  op);
    return TPM_ERR_UNSUPPORTED;
}

static tpm_status_t cuda_rmsnorm_fwd(tpm_backend_t *be, float *out, float *rstd, const float *inp,
                                     const float *w, int N, int C, float eps)
{
    (void)be, (void)out, (void)rstd, (void)inp, (void)w, (void)N, (void)C, (void)eps;
    return cuda_llama_unsupported("rmsnorm_fwd");
}

static tpm_status_t cuda_rmsnorm_bwd(tpm_backend_t *be, float *dinp, float *dw, const float *dout,
                                     const float *inp, const float *w, const float *rstd, int N,
                                     int C)
{
    (void)be, (void)dinp, (void)dw, (void)dout, (void)inp, (void)w, (void)rstd, (void)N, (void)C;
    return cuda_llama_unsupported("rmsnorm_bwd");
}

static tpm_status_t cuda_rope_fwd(tpm_backend_t *be, float *qkv, const int32_t *pos,
                                  const float *inv_freq, int N, int NH, int NKV, int hs)
{
    (void)be, (void)qkv, (void)pos, (void)inv_freq, (void)N, (void)NH, (void)NKV, (void)hs;
    return cuda_llama_unsupported("rope_fwd");
}

static tpm_status_t cuda_rope_bwd(tpm_backend_t *be, float *dqkv, const int32_t *pos,
                                  const float *inv_freq, int N, int NH, int NKV, int hs)
{
    (void)be, (void)dqkv, (void)pos, (void)inv_freq, (void)N, (void)NH, (void)NKV, (void)hs;
    return cuda_llama_unsupported("rope_bwd");
}

static tpm_status_t cuda_swiglu_fwd(tpm_backend_t *be, float *out, const float *gate,
                                    const float *up, size_t n)
{
    (void)be, (void)out, (void)gate, (void)up, (void)n;
    return cuda_llama_unsupported("swiglu_fwd");
}

static tpm_status_t cuda_swiglu_bwd(tpm_backend_t *be, float *dgate, float *dup, const float *dout,
                                    const float *gate, const float *up, size_t n)
{
    (void)be, (void)dgate, (void)dup, (void)dout, (void)gate, (void)up, (void)n;
    return cuda_llama_unsupported("swiglu_bwd");
}

static tpm_status_t cuda_attention_gqa_fwd(tpm_backend_t *be, float *out, float *lse,
                                           const float *qkv, int B, int T, int NH, int NKV, int hs)
{
    (void)be, (void)out, (void)lse, (void)qkv, (void)B, (void)T, (void)NH, (void)NKV, (void)hs;
    return cuda_llama_unsupported("attention_gqa_fwd");
}

static tpm_status_t cuda_attention_gqa_bwd(tpm_backend_t *be, float *dqkv, const float *dout,
                                           const float *qkv, const float *out, const float *lse,
                                           int B, int T, int NH, int NKV, int hs)
{
    (void)be, (void)dqkv, (void)dout, (void)qkv, (void)out, (void)lse, (void)B, (void)T, (void)NH,
        (void)NKV, (void)hs;
    return cuda_llama_unsupported("attention_gqa_bwd");
}

static tpm_status_t cuda_attention_gqa_kv(tpm_backend_t *be, float *out, const float *qkv,
                                          float *kcache, float *vcache, const int32_t *slot,
                                          const int32_t *pos, int N, int NH, int NKV, int hs,
                                          int ctx)
{
    (void)be, (void)out, (void)qkv, (void)kcache, (void)vcache, (void)slot, (void)pos, (void)N,
        (void)NH, (void)NKV, (void)hs, (void)ctx;
    return cuda_llama_unsupported("attention_gqa_kv");
}

const tpm_backend_ops_t tpm_backend_cuda_ops = {
    .name              = "cuda",
    .alloc             = cuda_alloc,
    .free              = cuda_free,
    .memzero           = cuda_memzero,
    .copy              = cuda_copy,
    .sync              = cuda_sync,
    .encoder_fwd       = cuda_encoder_fwd,
    .encoder_bwd       = cuda_encoder_bwd,
    .layernorm_fwd     = cuda_layernorm_fwd,
    .layernorm_bwd     = cuda_layernorm_bwd,
    .matmul_fwd        = cuda_matmul_fwd,
    .matmul_bwd        = cuda_matmul_bwd,
    .attention_fwd     = cuda_attention_fwd,
    .attention_bwd     = cuda_attention_bwd,
    .gelu_fwd          = cuda_gelu_fwd,
    .gelu_bwd          = cuda_gelu_bwd,
    .add               = cuda_add,
    .axpy              = cuda_axpy,
    .scale             = cuda_scale,
    .sumsq             = cuda_sumsq,
    .xent_fwd_bwd      = cuda_xent_fwd_bwd,
    .attention_kv      = cuda_attention_kv,
    .adamw             = cuda_adamw,
    .to_bf16           = cuda_to_bf16,
    .from_bf16         = cuda_from_bf16,
    .twobit_encode     = cuda_twobit_encode,
    .twobit_decode_add = cuda_twobit_decode_add,
    .rmsnorm_fwd       = cuda_rmsnorm_fwd,
    .rmsnorm_bwd       = cuda_rmsnorm_bwd,
    .rope_fwd          = cuda_rope_fwd,
    .rope_bwd          = cuda_rope_bwd,
    .swiglu_fwd        = cuda_swiglu_fwd,
    .swiglu_bwd        = cuda_swiglu_bwd,
    .attention_gqa_fwd = cuda_attention_gqa_fwd,
    .attention_gqa_bwd = cuda_attention_gqa_bwd,
    .attention_gqa_kv  = cuda_attention_gqa_kv,
};
