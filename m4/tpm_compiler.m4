# SPDX-License-Identifier: MIT
#
# tpm_compiler.m4: compiler options for tpmpi.
#
# TPM_COMPILER_ARGS (call BEFORE the compiler is chosen, i.e. before AX_PROG_CC_MPI):
#   declares --enable-werror (default yes), --enable-debug and --enable-sanitizers=LIST.
#   With --enable-debug and no user CFLAGS, CFLAGS defaults to "-O0 -g3" instead of "-g -O2".
# TPM_COMPILER_FLAGS (call AFTER the compiler is chosen):
#   builds TPM_CFLAGS (warning set, -Werror, -DTPM_DEBUG, sanitizers) for AM_CFLAGS and
#   TPM_LDFLAGS (sanitizers) for AM_LDFLAGS. The flags never go into CFLAGS, so configure's
#   own probes are not broken by -Werror.

AC_DEFUN([TPM_COMPILER_ARGS], [
AC_ARG_ENABLE([werror],
  [AS_HELP_STRING([--enable-werror], [treat compiler warnings as errors @<:@default: yes@:>@])],
  [], [enable_werror=yes])
AC_ARG_ENABLE([debug],
  [AS_HELP_STRING([--enable-debug], [build with -O0 -g3 -DTPM_DEBUG (and nvcc -G) @<:@default: no@:>@])],
  [], [enable_debug=no])
AC_ARG_ENABLE([sanitizers],
  [AS_HELP_STRING([--enable-sanitizers=LIST],
    [build with -fsanitize=LIST, e.g. address,undefined (compile and link) @<:@default: no@:>@])],
  [], [enable_sanitizers=no])
AS_CASE([$enable_werror], [yes|no], [],
  [AC_MSG_ERROR([--enable-werror takes no value (got '$enable_werror')])])
AS_CASE([$enable_debug], [yes|no], [],
  [AC_MSG_ERROR([--enable-debug takes no value (got '$enable_debug')])])
AS_IF([test "x$enable_sanitizers" = xyes],
  [AC_MSG_ERROR([--enable-sanitizers needs a list, e.g. --enable-sanitizers=address,undefined])])
dnl Must run before AC_PROG_CC: it only sets its "-g -O2" default when CFLAGS is unset.
AS_IF([test "x$enable_debug" = xyes],
  [AS_IF([test "x${CFLAGS+set}" = xset], [CFLAGS="$CFLAGS -O0 -g3"], [CFLAGS="-O0 -g3"])])
])

AC_DEFUN([TPM_COMPILER_FLAGS], [
AC_REQUIRE([AC_PROG_CC])
TPM_CFLAGS="-std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes"
TPM_CFLAGS="$TPM_CFLAGS -Wpointer-arith -Wformat=2 -Wvla"
# errno from libm is never read; without this sqrtf keeps the AdamW loop scalar
TPM_CFLAGS="$TPM_CFLAGS -fno-math-errno"
TPM_LDFLAGS=""

AC_MSG_CHECKING([whether $CC accepts the tpmpi warning set])
tpm_save_CFLAGS=$CFLAGS
CFLAGS="$CFLAGS $TPM_CFLAGS -Werror"
AC_COMPILE_IFELSE([AC_LANG_SOURCE([[int tpm_conftest(void); int tpm_conftest(void) { return 0; }]])],
  [AC_MSG_RESULT([yes])],
  [AC_MSG_RESULT([no]); AC_MSG_ERROR([$CC rejects: $TPM_CFLAGS])])
CFLAGS=$tpm_save_CFLAGS

AS_IF([test "x$enable_werror" = xyes], [TPM_CFLAGS="$TPM_CFLAGS -Werror"])
AS_IF([test "x$enable_debug" = xyes], [TPM_CFLAGS="$TPM_CFLAGS -DTPM_DEBUG"])

tpm_sanitizers=none
AS_IF([test "x$enable_sanitizers" != xno && test "x$enable_sanitizers" != x], [
  tpm_san_flags="-fsanitize=$enable_sanitizers -fno-omit-frame-pointer -fno-sanitize-recover=all"
  AC_MSG_CHECKING([whether $CC can build and link with $tpm_san_flags])
  tpm_save_CFLAGS=$CFLAGS; tpm_save_LDFLAGS=$LDFLAGS
  CFLAGS="$CFLAGS $tpm_san_flags"; LDFLAGS="$LDFLAGS $tpm_san_flags"
  AC_LINK_IFELSE([AC_LANG_PROGRAM([[#include <stdlib.h>]], [[void *p = malloc(4); free(p);]])],
    [AC_MSG_RESULT([yes])],
    [AC_MSG_RESULT([no]); AC_MSG_ERROR([$CC cannot use $tpm_san_flags (see config.log)])])
  CFLAGS=$tpm_save_CFLAGS; LDFLAGS=$tpm_save_LDFLAGS
  TPM_CFLAGS="$TPM_CFLAGS $tpm_san_flags"
  TPM_LDFLAGS="$TPM_LDFLAGS $tpm_san_flags"
  tpm_sanitizers=$enable_sanitizers
])
AC_SUBST([TPM_CFLAGS])
AC_SUBST([TPM_LDFLAGS])
AM_CONDITIONAL([TPM_SANITIZERS], [test "x$tpm_sanitizers" != xnone])
])
