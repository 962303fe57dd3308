#!/bin/sh
# SPDX-License-Identifier: MIT
#
# autogen.sh: regenerate configure and Makefile.in from a git checkout (generated files are
# not committed). aclocal --install copies the autoconf-archive and pkg.m4 macros into m4/,
# so a release tarball builds without autoconf-archive installed.
set -e
cd "$(dirname "$0")"
autoreconf -fi
