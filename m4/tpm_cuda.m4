# SPDX-License-Identifier: MIT
#
# tpm_cuda.m4: TPM_CHECK_CUDA, the optional CUDA backend (cuBLAS, cuBLASLt, NCCL).
#
# --with-cuda[=DIR] (default: no; yes means /usr/local/cuda). Sets NVCC, NVCCFLAGS,
# TPM_NVCCFLAGS (warnings, -Werror, -G from --enable-werror/--enable-debug), CUDA_CPPFLAGS,
# CUDA_LIBS, and HAVE_CUDA (define + AM_CONDITIONAL). Only compiles and links: configure never
# runs GPU code, so it works on machines without a GPU or driver. Call after TPM_COMPILER_ARGS.

AC_DEFUN([TPM_CHECK_CUDA], [
AC_ARG_WITH([cuda],
  [AS_HELP_STRING([--with-cuda@<:@=DIR@:>@],
    [build the CUDA backend (cuBLAS, NCCL) from toolkit DIR @<:@default: no; DIR=/usr/local/cuda@:>@])],
  [], [with_cuda=no])
AC_ARG_VAR([NVCC], [CUDA compiler])
AC_ARG_VAR([NVCCFLAGS], [flags for nvcc (default: -O3 -std=c++17, sm_90 + sm_90a SASS, compute_90 PTX)])
have_cuda=no
TPM_NVCCFLAGS=
CUDA_CPPFLAGS=
CUDA_LIBS=
AS_IF([test "x$with_cuda" != xno], [
  AS_IF([test "x$with_cuda" = xyes], [tpm_cuda_dir=/usr/local/cuda], [tpm_cuda_dir=$with_cuda])
  AS_IF([test -d "$tpm_cuda_dir"], [], [AC_MSG_ERROR([CUDA directory $tpm_cuda_dir does not exist])])
  AC_PATH_PROG([NVCC], [nvcc], [no], [$tpm_cuda_dir/bin$PATH_SEPARATOR$PATH])
  AS_IF([test "x$NVCC" = xno], [AC_MSG_ERROR([nvcc not found under $tpm_cuda_dir/bin])])
  : ${NVCCFLAGS="-O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_90,code=compute_90"}
  TPM_NVCCFLAGS="-Xcompiler -Wall,-Wextra"
  AS_IF([test "x$enable_werror" = xyes], [TPM_NVCCFLAGS="$TPM_NVCCFLAGS -Werror all-warnings"])
  AS_IF([test "x$enable_debug" = xyes], [TPM_NVCCFLAGS="$TPM_NVCCFLAGS -G"])
  tpm_cuda_libdir=$tpm_cuda_dir/lib64
  test -d "$tpm_cuda_libdir" || tpm_cuda_libdir=$tpm_cuda_dir/lib
  # -isystem: nccl.h declares "f()" prototypes that -Wstrict-prototypes -Werror rejects
  CUDA_CPPFLAGS="-isystem $tpm_cuda_dir/include"
  CUDA_LIBS="-L$tpm_cuda_libdir -Wl,-rpath,$tpm_cuda_libdir -lnccl -lcublasLt -lcublas -lcudart -lstdc++"
  tpm_save_CPPFLAGS=$CPPFLAGS; tpm_save_LIBS=$LIBS
  CPPFLAGS="$CPPFLAGS $CUDA_CPPFLAGS"
  AC_CHECK_HEADERS([cuda_runtime.h cublas_v2.h cublasLt.h nccl.h], [],
    [AC_MSG_ERROR([CUDA header $ac_header missing under $tpm_cuda_dir/include])])
  LIBS="-L$tpm_cuda_libdir"
  AC_CHECK_LIB([cudart], [cudaMalloc], [], [AC_MSG_ERROR([libcudart not found in $tpm_cuda_libdir])])
  AC_CHECK_LIB([cublas], [cublasSgemm_v2], [], [AC_MSG_ERROR([libcublas not found in $tpm_cuda_libdir])])
  AC_CHECK_LIB([cublasLt], [cublasLtCreate], [], [AC_MSG_ERROR([libcublasLt not found in $tpm_cuda_libdir])])
  AC_CHECK_LIB([nccl], [ncclAllReduce], [], [AC_MSG_ERROR([libnccl not found in $tpm_cuda_libdir])])
  CPPFLAGS=$tpm_save_CPPFLAGS; LIBS=$tpm_save_LIBS
  AC_MSG_CHECKING([whether $NVCC accepts NVCCFLAGS])
  cat > conftest.cu <<_ACEOF
__global__ void tpm_conftest_kernel(float *x) { x[[threadIdx.x]] *= 2.f; }
_ACEOF
  AS_IF([$NVCC $TPM_NVCCFLAGS $NVCCFLAGS -c conftest.cu -o conftest.$OBJEXT >&AS_MESSAGE_LOG_FD 2>&1],
    [AC_MSG_RESULT([yes])],
    [AC_MSG_RESULT([no]); AC_MSG_ERROR([$NVCC rejected: $TPM_NVCCFLAGS $NVCCFLAGS])])
  rm -f conftest.cu conftest.$OBJEXT
  have_cuda=yes
  AC_DEFINE([HAVE_CUDA], [1], [Define if the CUDA backend is built])
])
AC_SUBST([TPM_NVCCFLAGS])
AC_SUBST([CUDA_CPPFLAGS])
AC_SUBST([CUDA_LIBS])
AM_CONDITIONAL([HAVE_CUDA], [test "x$have_cuda" = xyes])
])
