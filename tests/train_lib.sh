# SPDX-License-Identifier: MIT
# train_lib.sh: helpers shared by the training and checkpoint tests (sourced, POSIX sh).
# The test sets $dir (its scratch directory) and $common (options every run gets), then:
#   check OK LABEL            count a verdict (OK is 1 or 0), print "ok: LABEL" or "FAIL: LABEL"
#                             (quiet_ok=1: only failures are printed, for tests whose labels
#                             describe the failure)
#   run_tpmpi NAME NP ARGS... tpmpi on NP ranks with $common ARGS, metrics in $dir/NAME.jsonl
#                             and output in $dir/NAME.log; a failed run prints its log, the
#                             counts, and exits 1
#   losses FILE               "step loss" per step record of a metrics file
#   summary_field FILE NAME   a number of the summary record
#   finish                    print "N passed, N failed"; exit status 0 only without failures
pass=0
fail=0
quiet_ok=0

check() {
    if [ "$1" -eq 1 ]; then
        pass=$((pass + 1))
        [ "$quiet_ok" = 1 ] || echo "ok: $2"
    else
        fail=$((fail + 1))
        echo "FAIL: $2"
    fi
}

run_tpmpi() {
    _name=$1 _np=$2
    shift 2
    # shellcheck disable=SC2086 # $common is a list of options
    if ! timeout 300 $MPIRUN -np "$_np" "$TPMPI" $common "$@" --metrics="$dir/$_name.jsonl" \
        >"$dir/$_name.log" 2>&1; then
        cat "$dir/$_name.log"
        echo "FAIL: tpmpi run '$_name' failed"
        echo "$pass passed, $((fail + 1)) failed"
        exit 1
    fi
}

losses() { sed -n 's/.*"type":"step","step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/p' "$1"; }

summary_field() { sed -n "s/.*\"type\":\"summary\".*\"$2\":\([0-9.e+-]*\).*/\1/p" "$1"; }

finish() {
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
}
