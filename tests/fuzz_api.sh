#!/bin/sh
# SPDX-License-Identifier: MIT
# fuzz_api.sh: build the libFuzzer target tests/fuzz/fuzz_api.c (the HTTP front-end's request
# parsing and answer building) with clang -fsanitize=fuzzer,address,undefined and run it for
# TPM_FUZZ_SECONDS (default 20) from a small seed corpus. Any crash, sanitizer report, leak
# or failed contract check fails the test; the crashing input is kept in tests/fuzz_api.d/.
# SKIP (77) when clang or its libFuzzer runtime is not installed (scripts/install-deps
# installs them). A longer run: TPM_FUZZ_SECONDS=300 make check TESTS=tests/fuzz_api.sh
set -u
: "${TOP_BUILDDIR:=.}"
: "${TOP_SRCDIR:=$(dirname "$0")/..}"
dir=$TOP_BUILDDIR/tests/fuzz_api.d
secs=${TPM_FUZZ_SECONDS:-20}
CLANG=${CLANG:-clang}
mkdir -p "$dir/corpus" "$dir/seeds"

if ! command -v "$CLANG" >/dev/null 2>&1; then
    echo "SKIP: $CLANG not found (apt-get install clang)"
    exit 77
fi
# probe the libFuzzer runtime on its own, so that a failure to build OUR code is a FAIL
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
    "$TOP_SRCDIR/tests/fuzz/fuzz_api.c" "$src/serve/api.c" "$src/data/tokenizer.c" \
    "$src/base/log.c" "$src/base/mem.c" "$src/base/status.c" "$src/base/timer.c" "$src/base/file.c" \
    $(pkg-config --libs jansson 2>/dev/null || echo -ljansson) -lm -o "$dir/fuzz_api" \
    >"$dir/build.log" 2>&1; then
    cat "$dir/build.log"
    echo "FAIL: fuzz_api does not build"
    exit 1
fi

# seeds: one valid request per endpoint and a few near misses (selector byte first)
seed() { printf "$1" >"$dir/seeds/$2"; }
seed '\000{"model":"m","prompt":"Hello world","max_tokens":4,"temperature":0.7,"top_p":0.9,"top_k":5,"seed":3,"stop":["fox","\\n"],"stream":true,"stream_options":{"include_usage":true}}' c1
seed '\001{"prompt":[[1,2,3]],"max_tokens":60}' c2
seed '\000{"prompt":["x"],"n":1,"echo":false,"logprobs":null,"suffix":""}' c3
seed '\001{"prompt":[1,2,319],"stop":"a"}' c4
seed '\002{"content":"The quick brown fox \\u00e9","with_pieces":true}' t1
seed '\003{"tokens":[84,104,101,255,319]}' d1
seed '\004ab\342\202\254\355\240\200\300\257' u1

UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}" \
ASAN_OPTIONS="detect_leaks=1" \
    "$dir/fuzz_api" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
    -print_final_stats=1 -artifact_prefix="$dir/" -dict="$TOP_SRCDIR/tests/fuzz/api.dict" \
    "$dir/corpus" "$dir/seeds" >"$dir/fuzz.log" 2>&1
rc=$?
grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done)|^#[0-9]+ +DONE' "$dir/fuzz.log"
if [ $rc -ne 0 ]; then
    tail -60 "$dir/fuzz.log"
    ls "$dir"/crash-* "$dir"/leak-* "$dir"/timeout-* 2>/dev/null
    echo "0 passed, 1 failed (fuzz_api exit status $rc)"
    exit 1
fi
echo "1 passed, 0 failed (fuzz_api ran ${secs} s)"
