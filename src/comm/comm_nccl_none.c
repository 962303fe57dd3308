/* SPDX-License-Identifier: MIT */
/*
 * comm_nccl_none.c: tpm_comm_nccl_create() in builds without CUDA (Makefile.am compiles
 * this file instead of comm_nccl.c), so that callers choose the communicator without an
 * #ifdef and --device=cuda is refused with a clear message.
 */
#include "comm/comm.h"

#include "base/log.h"

tpm_status_t tpm_comm_nccl_create(int debug, tpm_comm_t **comm_p)
{
    (void)debug;
    (void)comm_p;
    tpm_log_error("--device=cuda: tpmpi was built without CUDA (configure --with-cuda)");
    return TPM_ERR_UNSUPPORTED;
}
