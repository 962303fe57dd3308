#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Build the llama.cpp peer for the side-by-side benchmark (issue 15), from
# PyPI only: the llama-cpp-python source distribution vendors llama.cpp under
# vendor/llama.cpp. Builds the CPU backend (native CPU flags, OpenMP) and the
# tools the peer scripts use:
#   llama-bench     prefill / decode tok/s (bench_llamacpp.sh)
#   llama-simple    greedy continuation of a prompt (check_gguf.sh)
#   llama-quantize  llama.cpp's own Q8_0 from the F32 GGUF (check_gguf.sh compares)
#   llama-tokenize  prompt token ids (check_gguf.sh)
# and a Python venv with the pinned `gguf` package plus h5py for to_gguf.py.
#
# Optional: this is a benchmark, not part of scripts/test. Idempotent: a
# second run finds the stamp files and reuses the build.
#
# Usage: benchmarks/peers/llamacpp-setup.sh [--cache DIR] [--jobs N]
#   --cache DIR   where to download and build (default: build/peers under the
#                 repo root; env PEERS_CACHE works too)
#   --jobs N      parallel compile jobs (default 2)
# Prints the paths on success; exit 2 for usage errors, 1 for build failures.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36     # vendors llama.cpp (see README.md)
GGUF_VERSION=0.19.0
H5PY_VERSION=3.12.1

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${PEERS_CACHE:-$root/build/peers}
jobs=2

while [ $# -gt 0 ]; do
    case $1 in
        --cache) [ $# -ge 2 ] || { echo "llamacpp-setup: --cache needs a directory" >&2; exit 2; }
                 cache=$2; shift 2 ;;
        --cache=*) cache=${1#--cache=}; shift ;;
        --jobs) [ $# -ge 2 ] || { echo "llamacpp-setup: --jobs needs a number" >&2; exit 2; }
                jobs=$2; shift 2 ;;
        --jobs=*) jobs=${1#--jobs=}; shift ;;
        -h|--help) sed -n '3,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "llamacpp-setup: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
case $jobs in ''|*[!0-9]*|0) echo "llamacpp-setup: --jobs must be a positive integer, got '$jobs'" >&2; exit 2 ;; esac

mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
src=$cache/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION
lsrc=$src/vendor/llama.cpp
bdir=$cache/llama.cpp
venv=$cache/venv
stamp_build=$bdir/.tpmpi-built-$LLAMA_CPP_PYTHON_VERSION
stamp_venv=$venv/.tpmpi-gguf-$GGUF_VERSION
tools="llama-bench llama-simple llama-quantize llama-tokenize"

log() { printf 'llamacpp-setup: %s\n' "$*" >&2; }

# --- 1. the sdist ---------------------------------------------------------
tarball=$cache/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz
if [ ! -f "$tarball" ]; then
    log "downloading llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (sdist) from PyPI"
    /usr/bin/python3 -m pip download --quiet --no-binary :all: --no-deps \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$cache.dl.$$"
    mv "$cache.dl.$$/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" "$tarball"
    rm -rf "$cache.dl.$$"
fi
if [ ! -f "$lsrc/CMakeLists.txt" ]; then
    log "extracting $tarball"
    tar -xzf "$tarball" -C "$cache"
    [ -f "$lsrc/CMakeLists.txt" ] || { log "no vendor/llama.cpp in the sdist"; exit 1; }
fi

# --- 2. llama.cpp (CPU backend + tools) -----------------------------------
if ! command -v cmake >/dev/null 2>&1; then
    log "cmake missing: apt-get install cmake"
    apt-get install -y cmake >&2
fi
if [ -f "$stamp_build" ]; then
    log "reusing the build in $bdir ($(cat "$stamp_build"))"
else
    t0=$(date +%s)
    log "configuring llama.cpp in $bdir (Release, GGML_NATIVE=ON, CPU only)"
    cmake -S "$lsrc" -B "$bdir" -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DGGML_OPENMP=ON \
        -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=ON >"$cache/cmake-configure.log" 2>&1 \
        || { log "cmake configure failed, see $cache/cmake-configure.log"; tail -20 "$cache/cmake-configure.log" >&2; exit 1; }
    log "building $tools with $jobs jobs (log: $cache/cmake-build.log)"
    # shellcheck disable=SC2086
    cmake --build "$bdir" --config Release -j "$jobs" --target $tools >"$cache/cmake-build.log" 2>&1 \
        || { log "build failed, see $cache/cmake-build.log"; tail -30 "$cache/cmake-build.log" >&2; exit 1; }
    t1=$(date +%s)
    echo "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION, built in $((t1 - t0)) s with -j$jobs on $(date -u +%Y-%m-%dT%H:%MZ)" >"$stamp_build"
    log "built in $((t1 - t0)) s"
fi
for t in $tools; do
    [ -x "$bdir/bin/$t" ] || { log "missing $bdir/bin/$t after the build"; exit 1; }
done

# --- 3. Python: gguf + h5py in a venv (gguf needs a newer numpy than Debian's)
if [ ! -f "$stamp_venv" ]; then
    log "creating $venv with gguf==$GGUF_VERSION h5py==$H5PY_VERSION"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet "gguf==$GGUF_VERSION" "h5py==$H5PY_VERSION" >&2
    "$venv/bin/python" -c 'import gguf, h5py, numpy' \
        || { log "the venv cannot import gguf/h5py/numpy"; exit 1; }
    touch "$stamp_venv"
fi

# shell-quoted, for eval "$(llamacpp-setup.sh)"
printf 'LLAMA_BIN=%q\n' "$bdir/bin"
printf 'PEERS_PYTHON=%q\n' "$venv/bin/python"
printf 'BUILD_INFO=%q\n' "$(cat "$stamp_build")"
