#!/bin/sh
# SPDX-License-Identifier: MIT
# fuzz_safetensors.sh: build the libFuzzer target tests/fuzz/fuzz_safetensors.c (the
# safetensors reader, src/ckpt/safetensors.c) with clang -fsanitize=fuzzer,address,undefined
# and run it for TPM_FUZZ_SECONDS (default 10) from seeds: the committed Hugging Face fixture
# files and a few small hand-made ones. Any crash, sanitizer report, leak or failed contract
# check fails the test; the crashing input is kept in tests/fuzz_safetensors.d/. SKIP (77)
# when clang or its libFuzzer runtime is not installed.
set -u
: "${TOP_BUILDDIR:=.}"
: "${TOP_SRCDIR:=$(dirname "$0")/..}"
dir=$TOP_BUILDDIR/tests/fuzz_safetensors.d
secs=${TPM_FUZZ_SECONDS:-10}
CLANG=${CLANG:-clang}
mkdir -p "$dir/corpus" "$dir/seeds"

if ! command -v "$CLANG" >/dev/null 2>&1; then
    echo "SKIP: $CLANG not found (apt-get install clang)"
    exit 77
fi
printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' \
    >"$dir/probe.c"
if ! "$CLANG" -fsanitize=fuzzer,address,undefined "$dir/probe.c" -o "$dir/probe" \
    >"$dir/probe.log" 2>&1; then
    cat "$dir/probe.log"
    echo "SKIP: $CLANG cannot link -fsanitize=fuzzer (libFuzzer runtime missing)"
    exit 77
fi

src=$TOP_SRCDIR/src
# shellcheck disable=SC2046
if ! "$CLANG" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -I"$src" $(pkg-config --cflags jansson 2>/dev/null) \
    "$TOP_SRCDIR/tests/fuzz/fuzz_safetensors.c" "$src/ckpt/safetensors.c" \
    "$src/base/log.c" "$src/base/mem.c" "$src/base/status.c" "$src/base/timer.c" \
    $(pkg-config --libs jansson 2>/dev/null || echo -ljansson) -lm -o "$dir/fuzz_safetensors" \
    >"$dir/build.log" 2>&1; then
    cat "$dir/build.log"
    echo "FAIL: fuzz_safetensors does not build"
    exit 1
fi

# seeds: the fixture files (their data cut to keep inputs small) and hand-made near misses
for f in "$TOP_SRCDIR"/tests/fixtures/hf_*/*.safetensors; do
    head -c 4096 "$f" >"$dir/seeds/$(basename "$(dirname "$f")")_$(basename "$f")"
done
seed() { printf "$1" >"$dir/seeds/$2"; }
seed '\074\000\000\000\000\000\000\000{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}   \000\074\000\300' s1
seed '\110\000\000\000\000\000\000\000{"a":{"dtype":"BF16","shape":[1,2],"data_offsets":[0,4]},"__metadata__":{}}   \300\077\000\300' s2

UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}" \
ASAN_OPTIONS="detect_leaks=1" \
    "$dir/fuzz_safetensors" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -max_len=8192 -print_final_stats=1 -artifact_prefix="$dir/" "$dir/corpus" "$dir/seeds" \
    >"$dir/fuzz.log" 2>&1
rc=$?
grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done)|^#[0-9]+ +DONE' "$dir/fuzz.log"
if [ $rc -ne 0 ]; then
    tail -60 "$dir/fuzz.log"
    ls "$dir"/crash-* "$dir"/leak-* "$dir"/timeout-* 2>/dev/null
    echo "0 passed, 1 failed (fuzz_safetensors exit status $rc)"
    exit 1
fi
echo "1 passed, 0 failed (fuzz_safetensors ran ${secs} s)"
