# SPDX-License-Identifier: MIT
#
# tpm_blas.m4: TPM_CHECK_BLAS finds a CBLAS, preferring OpenBLAS built with OpenMP.
#
# tpmpi's CPU backend uses OpenMP itself; the pthread flavour of OpenBLAS would start its own
# thread pool next to libgomp's and oversubscribe the cores, so Debian's openblas-openmp
# directory is used when present (with an rpath, because the alternatives system may point
# libopenblas.so.0 at the pthread flavour). Then pkg-config openblas, then any -lopenblas/-lblas.
# Sets BLAS_CFLAGS, BLAS_LIBS; defines HAVE_OPENBLAS when openblas_set_num_threads links.
# User-set BLAS_CFLAGS/BLAS_LIBS are respected.

AC_DEFUN([TPM_CHECK_BLAS], [
AC_REQUIRE([PKG_PROG_PKG_CONFIG])
AC_ARG_VAR([BLAS_CFLAGS], [C compiler flags for CBLAS, overriding the search])
AC_ARG_VAR([BLAS_LIBS], [linker flags for CBLAS, overriding the search])
tpm_blas_kind=
AS_IF([test "x${BLAS_LIBS+set}" = xset], [tpm_blas_kind="user (BLAS_LIBS)"])

AS_IF([test "x$tpm_blas_kind" = x], [
  tpm_multiarch=`$CC -print-multiarch 2>/dev/null`
  AS_IF([test "x$tpm_multiarch" = x], [tpm_multiarch=x86_64-linux-gnu])
  tpm_blas_omp_dir=/usr/lib/$tpm_multiarch/openblas-openmp
  AC_MSG_CHECKING([for the OpenMP flavour of OpenBLAS])
  AS_IF([test -f "$tpm_blas_omp_dir/libopenblas.so"], [
    AC_MSG_RESULT([$tpm_blas_omp_dir])
    BLAS_CFLAGS="-I/usr/include/$tpm_multiarch/openblas-openmp"
    BLAS_LIBS="-L$tpm_blas_omp_dir -Wl,-rpath,$tpm_blas_omp_dir -lopenblas"
    tpm_blas_kind="openblas-openmp"
  ], [AC_MSG_RESULT([no])])
])

AS_IF([test "x$tpm_blas_kind" = x], [
  PKG_CHECK_MODULES([BLAS], [openblas], [tpm_blas_kind="openblas (pkg-config)"], [:])
])

AS_IF([test "x$tpm_blas_kind" = x], [
  tpm_save_LIBS=$LIBS
  AC_SEARCH_LIBS([cblas_sgemm], [openblas blas],
    [AS_IF([test "x$ac_cv_search_cblas_sgemm" != "xnone required"],
       [BLAS_LIBS=$ac_cv_search_cblas_sgemm])
     tpm_blas_kind="search ($ac_cv_search_cblas_sgemm)"],
    [AC_MSG_ERROR([no CBLAS found. Debian/Ubuntu: apt-get install libopenblas-openmp-dev])])
  LIBS=$tpm_save_LIBS
])

tpm_save_CPPFLAGS=$CPPFLAGS; tpm_save_LIBS=$LIBS
CPPFLAGS="$CPPFLAGS $BLAS_CFLAGS"; LIBS="$BLAS_LIBS $LIBS"
AC_MSG_CHECKING([whether cblas_sgemm links])
AC_LINK_IFELSE([AC_LANG_PROGRAM([[#include <cblas.h>]],
  [[float a[4] = {1, 2, 3, 4}, b[4] = {1, 0, 0, 1}, c[4];
cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 2, 1.0f, a, 2, b, 2, 0.0f, c, 2);
return (int)c[0];]])],
  [AC_MSG_RESULT([yes])],
  [AC_MSG_RESULT([no])
   AC_MSG_ERROR([cblas_sgemm from <cblas.h> does not link with BLAS_LIBS='$BLAS_LIBS'])])
AC_MSG_CHECKING([for openblas_set_num_threads])
AC_LINK_IFELSE([AC_LANG_PROGRAM([[#include <cblas.h>]], [[openblas_set_num_threads(1);]])],
  [AC_MSG_RESULT([yes])
   AC_DEFINE([HAVE_OPENBLAS], [1], [Define if the BLAS is OpenBLAS (openblas_set_num_threads)])],
  [AC_MSG_RESULT([no])
   AC_MSG_ERROR([openblas_set_num_threads missing: tpmpi needs OpenBLAS, got BLAS_LIBS='$BLAS_LIBS'])])
CPPFLAGS=$tpm_save_CPPFLAGS; LIBS=$tpm_save_LIBS
AC_SUBST([BLAS_CFLAGS])
AC_SUBST([BLAS_LIBS])
])
