#!/bin/sh
# SPDX-License-Identifier: MIT
# --mode=eval --task: the multiple-choice fixture tests/fixtures/mc_tiny.jsonl on a tiny
# checkpoint at M=1, 2 and 3 ranks: the same predictions and log-likelihoods (1e-5), and
# acc, acc_norm and acc_bytes equal what lm-evaluation-harness's formulas (numpy argmax of
# ll, ll / len(choice), ll / len(choice in UTF-8)) give from the printed log-likelihoods.
# Bad task files: exit 2 naming the line.
set -u
: "${TPMPI:?}" "${MPIRUN:?}" "${TOP_BUILDDIR:?}" "${TOP_SRCDIR:?}"
. "$(dirname "$0")/train_lib.sh"
dir=$TOP_BUILDDIR/tests/eval_task.d
task=$TOP_SRCDIR/tests/fixtures/mc_tiny.jsonl
rm -rf "$dir" && mkdir -p "$dir"
common="--model=tiny --threads=1 --log-level=warn"

run_tpmpi train 2 --mode=train --steps=30 --batch=4 --lr=3e-3 --ckpt-dir="$dir/ck"
for m in 1 2 3; do
    run_tpmpi "mc$m" "$m" --mode=eval --ckpt="$dir/ck" --task="$task" --out="$dir/mc$m.json"
done
/usr/bin/python3 - "$task" "$dir/mc1.json" "$dir/mc2.json" "$dir/mc3.json" >"$dir/check" <<'PY'
import json, sys
items = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
res = [json.load(open(p)) for p in sys.argv[2:]]
ok = lambda c, label: print(("ok: " if c else "FAIL: ") + label)
def argmax(v):
    return max(range(len(v)), key=lambda i: (v[i], -i))
r0 = res[0]
ok(r0["items"] == len(items) and len(r0["ll"]) == sum(len(i["choices"]) for i in items),
   "one log-likelihood per choice")
acc = accn = accb = 0
o = 0
for i, it in enumerate(items):
    ll = r0["ll"][o:o + len(it["choices"])]
    o += len(it["choices"])
    ok(all(x < 0 for x in ll), f"item {i}: log-likelihoods are negative")
    p = argmax(ll)
    ok(p == r0["pred"][i], f"item {i}: pred is the argmax of ll")
    acc += p == it["label"]
    accn += argmax([x / len(c) for x, c in zip(ll, it["choices"])]) == it["label"]
    accb += argmax([x / len(c.encode()) for x, c in zip(ll, it["choices"])]) == it["label"]
n = len(items)
ok(abs(r0["acc"] - acc / n) < 1e-12, f"acc {r0['acc']} = {acc}/{n}")
ok(abs(r0["acc_norm"] - accn / n) < 1e-12, f"acc_norm {r0['acc_norm']} = {accn}/{n} (per character)")
ok(abs(r0["acc_bytes"] - accb / n) < 1e-12, f"acc_bytes {r0['acc_bytes']} = {accb}/{n} (per byte)")
for m, r in enumerate(res[1:], 2):
    ok(r["pred"] == r0["pred"], f"M={m}: the same predictions")
    d = max(abs(a - b) / abs(b) for a, b in zip(r["ll"], r0["ll"]))
    ok(d <= 1e-5, f"M={m}: log-likelihoods within 1e-5 of M=1 ({d:.2g})")
PY
cat "$dir/check"
pass=$((pass + $(grep -c '^ok:' "$dir/check")))
fail=$((fail + $(grep -c '^FAIL:' "$dir/check")))
check "$(grep -q '^ok:' "$dir/check" && echo 1 || echo 0)" "the checks ran"

# bad task files: exit 2, the message names the problem and the line
bad() {
    _name=$1 _pat=$2
    printf '%s\n' "$3" >"$dir/$_name.jsonl"
    timeout 120 $MPIRUN -np 2 "$TPMPI" $common --mode=eval --ckpt="$dir/ck" \
        --task="$dir/$_name.jsonl" >"$dir/$_name.out" 2>"$dir/$_name.err"
    _rc=$?
    check "$([ $_rc -eq 2 ] && grep -q "$_pat" "$dir/$_name.err" && echo 1 || echo 0)" \
        "$_name: exit 2 (got $_rc) with '$_pat'"
}
bad not_json "not_json.jsonl:1: not JSON" '{"context": "a", '
bad label "label.jsonl:2: want" '{"context": "a", "choices": [" b", " c"], "label": 0}
{"context": "a", "choices": [" b", " c"], "label": 2}'
bad one_choice "one_choice.jsonl:1: want" '{"context": "a", "choices": [" b"], "label": 0}'
bad empty "holds no item" ''

rm -f "$dir/missing.jsonl"
timeout 120 $MPIRUN -np 2 "$TPMPI" $common --mode=eval --ckpt="$dir/ck" \
    --task="$dir/missing.jsonl" >/dev/null 2>"$dir/missing.err"
rc=$?
check "$([ $rc -eq 2 ] && grep -q "cannot open" "$dir/missing.err" && echo 1 || echo 0)" \
    "a missing task file: exit 2 (got $rc)"
finish
