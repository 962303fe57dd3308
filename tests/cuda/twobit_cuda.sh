#!/bin/sh
# SPDX-License-Identifier: MIT
# The device 2-bit codec is bit-identical to the CPU reference (test_twobit_cuda). Exit 77
# (SKIP) when no CUDA device is usable.
: "${TOP_BUILDDIR:?}"
exec "$TOP_BUILDDIR/tests/cuda/test_twobit_cuda"
