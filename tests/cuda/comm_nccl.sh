#!/bin/sh
# SPDX-License-Identifier: MIT
# The NCCL communicator under mpirun (test_comm_nccl), one GPU per rank: TPM_TEST_NP_CUDA
# ranks (default 1, all a single-GPU machine can run). Exit 77 (SKIP) without a CUDA device.
: "${TOP_BUILDDIR:?}" "${MPIRUN:?}"
"$TOP_BUILDDIR/tests/cuda/test_backend_cuda" --probe || exit $?
exec $MPIRUN -np "${TPM_TEST_NP_CUDA:-1}" "$TOP_BUILDDIR/tests/cuda/test_comm_nccl"
