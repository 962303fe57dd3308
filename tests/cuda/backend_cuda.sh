#!/bin/sh
# SPDX-License-Identifier: MIT
# Every op of the CUDA backend against the CPU backend (test_backend_cuda). Exit 77 (SKIP)
# when no CUDA device is usable.
: "${TOP_BUILDDIR:?}"
exec "$TOP_BUILDDIR/tests/cuda/test_backend_cuda"
