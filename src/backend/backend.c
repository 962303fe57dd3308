/* SPDX-License-Identifier: MIT */
/*
 * backend.c: backend selection by name at run time. This is the only place that
 * knows which backends were compiled in (HAVE_CUDA); callers see the op table.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "backend/backend.h"

#include "backend/backend_cpu.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

#ifdef HAVE_CUDA
#include "backend/backend_cuda.h"
#endif /* HAVE_CUDA */

static tpm_status_t backend_cpu_setup(tpm_backend_t *be, int n_threads)
{
    /*
     * Both settings are process-wide. The OpenMP flavour of OpenBLAS runs on the
     * OpenMP team, so the two numbers are kept equal.
     */
    if (n_threads > 0) {
        omp_set_num_threads(n_threads);
        openblas_set_num_threads(n_threads);
    }
    be->n_threads = omp_get_max_threads();
    TPM_CHECK(tpm_backend_cpu_priv_create(&be->priv));
    tpm_log_debug("cpu backend: %d threads, %s", be->n_threads, tpm_backend_blas_info());
    return TPM_OK;
}

tpm_status_t tpm_backend_create(const char *name, int n_threads, tpm_backend_t **be_p)
{
    tpm_backend_t *be;
    void          *p;
    tpm_status_t   status;

    if (name == NULL || be_p == NULL) {
        tpm_log_error("tpm_backend_create: name and be_p must not be NULL");
        return TPM_ERR_INVALID_ARG;
    }
    if (n_threads < 0) {
        tpm_log_error("backend %s: thread count %d is negative", name, n_threads);
        return TPM_ERR_INVALID_ARG;
    }

    if (strcmp(name, "cpu") == 0) {
        TPM_CHECK(tpm_calloc(1, sizeof(*be), &p));
        be      = p;
        be->ops = &tpm_backend_cpu_ops;
        TPM_CHECK_GOTO(backend_cpu_setup(be, n_threads), status, err_free_be);
        *be_p = be;
        return TPM_OK;
    }
    if (strcmp(name, "cuda") == 0) {
#ifdef HAVE_CUDA
        TPM_CHECK(tpm_calloc(1, sizeof(*be), &p));
        be            = p;
        be->ops       = &tpm_backend_cuda_ops;
        be->n_threads = n_threads;
        /* device, stream, cuBLAS; "no CUDA device: ..." when there is none */
        TPM_CHECK_GOTO(tpm_backend_cuda_priv_create(&be->priv), status, err_free_be);
        *be_p = be;
        return TPM_OK;
#else
        tpm_log_error("backend cuda is not available: tpmpi was built without CUDA "
                      "(configure --with-cuda)");
        return TPM_ERR_UNSUPPORTED;
#endif /* HAVE_CUDA */
    }
    tpm_log_error("unknown backend '%s' (known: cpu, cuda)", name);
    return TPM_ERR_INVALID_ARG;

err_free_be:
    tpm_free(be);
    return status;
}

tpm_status_t tpm_backend_set_matmul(tpm_backend_t *be, const char *mode)
{
    if (strcmp(mode, "auto") != 0 && strcmp(mode, "fp32") != 0 && strcmp(mode, "tf32") != 0 &&
        strcmp(mode, "bf16") != 0) {
        tpm_log_error("matmul precision '%s': expected auto, fp32, tf32 or bf16", mode);
        return TPM_ERR_INVALID_ARG;
    }
#ifdef HAVE_CUDA
    if (be->ops == &tpm_backend_cuda_ops && strcmp(mode, "auto") != 0) {
        return tpm_backend_cuda_set_math(be->priv, mode);
    }
#endif /* HAVE_CUDA */
    /* the CPU backend multiplies in fp32 whatever is asked */
    (void)be;
    return TPM_OK;
}

void tpm_backend_destroy(tpm_backend_t *be)
{
    if (be == NULL) {
        return;
    }
    if (be->ops == &tpm_backend_cpu_ops) {
        tpm_backend_cpu_priv_destroy(be->priv);
    }
#ifdef HAVE_CUDA
    if (be->ops == &tpm_backend_cuda_ops) {
        tpm_backend_cuda_priv_destroy(be->priv);
    }
#endif /* HAVE_CUDA */
    tpm_free(be);
}
