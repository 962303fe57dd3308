# SPDX-License-Identifier: MIT
#
# tpm_criterion.m4: TPM_CHECK_CRITERION, the Criterion unit-test framework.
#
# --enable-tests=auto|yes|no (default auto): auto builds the unit tests when Criterion is
# found, yes makes a missing Criterion an error, no skips them. Sets CRITERION_CFLAGS,
# CRITERION_LIBS and the HAVE_CRITERION conditional. The MPI tests do not need Criterion.

AC_DEFUN([TPM_CHECK_CRITERION], [
AC_REQUIRE([PKG_PROG_PKG_CONFIG])
AC_ARG_ENABLE([tests],
  [AS_HELP_STRING([--enable-tests@<:@=auto|yes|no@:>@],
    [build the Criterion unit tests @<:@default: auto@:>@])],
  [], [enable_tests=auto])
have_criterion=no
AS_CASE([$enable_tests],
  [no], [],
  [yes|auto], [
    PKG_CHECK_MODULES([CRITERION], [criterion >= 2.3], [have_criterion=yes], [have_criterion=no])
    AS_IF([test "x$have_criterion" = xno && test "x$enable_tests" = xyes],
      [AC_MSG_ERROR([--enable-tests=yes but Criterion >= 2.3 was not found.
Debian/Ubuntu: apt-get install libcriterion-dev])])],
  [AC_MSG_ERROR([--enable-tests takes auto, yes or no (got '$enable_tests')])])
AM_CONDITIONAL([HAVE_CRITERION], [test "x$have_criterion" = xyes])
])
