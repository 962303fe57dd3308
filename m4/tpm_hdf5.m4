# SPDX-License-Identifier: MIT
#
# tpm_hdf5.m4: TPM_CHECK_HDF5 finds parallel (MPI-IO) HDF5 through pkg-config.
#
# Debian ships hdf5-openmpi.pc and hdf5-mpi.pc; hdf5.pc is an alternatives link that may point
# at the serial flavour, so it is only used to give a clear error. Requires CC to be the MPI
# compiler. Sets HDF5_CFLAGS and HDF5_LIBS; defines HAVE_HDF5.

AC_DEFUN([TPM_CHECK_HDF5], [
AC_REQUIRE([PKG_PROG_PKG_CONFIG])
tpm_hdf5_pc=
PKG_CHECK_MODULES([HDF5], [hdf5-openmpi], [tpm_hdf5_pc=hdf5-openmpi],
  [PKG_CHECK_MODULES([HDF5], [hdf5-mpi], [tpm_hdf5_pc=hdf5-mpi], [tpm_hdf5_pc=])])
AS_IF([test "x$tpm_hdf5_pc" = x], [
  AS_IF([$PKG_CONFIG --exists hdf5 2>/dev/null || $PKG_CONFIG --exists hdf5-serial 2>/dev/null],
    [AC_MSG_ERROR([only serial HDF5 was found; tpmpi needs parallel HDF5 (MPI-IO).
Debian/Ubuntu: apt-get install libhdf5-openmpi-dev])],
    [AC_MSG_ERROR([parallel HDF5 not found (no hdf5-openmpi or hdf5-mpi pkg-config module).
Debian/Ubuntu: apt-get install libhdf5-openmpi-dev])])
])

tpm_save_CPPFLAGS=$CPPFLAGS; tpm_save_LIBS=$LIBS
CPPFLAGS="$CPPFLAGS $HDF5_CFLAGS"; LIBS="$HDF5_LIBS $LIBS"
AC_MSG_CHECKING([whether HDF5 ($tpm_hdf5_pc) has MPI-IO support])
AC_LINK_IFELSE([AC_LANG_PROGRAM([[#include <hdf5.h>
#if !defined(H5_HAVE_PARALLEL)
#error serial HDF5
#endif]], [[hid_t p = H5Pcreate(H5P_FILE_ACCESS);
return H5Pset_fapl_mpio(p, MPI_COMM_WORLD, MPI_INFO_NULL) < 0;]])],
  [AC_MSG_RESULT([yes])],
  [AC_MSG_RESULT([no])
   AC_MSG_ERROR([HDF5 from $tpm_hdf5_pc lacks H5_HAVE_PARALLEL/H5Pset_fapl_mpio (serial build?).
Debian/Ubuntu: apt-get install libhdf5-openmpi-dev])])
CPPFLAGS=$tpm_save_CPPFLAGS; LIBS=$tpm_save_LIBS
AC_DEFINE([HAVE_HDF5], [1], [Define if parallel HDF5 is available])
])
