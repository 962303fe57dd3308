#!/bin/sh
# SPDX-License-Identifier: MIT
# lm_eval.sh: lm-evaluation-harness (PyPI lm_eval[api], installed into a venv under the build
# directory and reused) runs its local-completions model against `tpmpi --mode=serve` (2
# ranks) on a custom multiple-choice task: a local YAML over tests/fixtures/mc_tiny.jsonl,
# loaded with the `json` builder of `datasets` offline (no download of data or tokenizers:
# tokenizer_backend=remote uses the server's /tokenizer_info and /tokenize). It must run to
# completion, and its acc, acc_norm and acc_bytes must equal `tpmpi --mode=eval --task` on
# the same checkpoint and items, choice by choice (log-likelihoods within 1e-5).
# SKIP (77) when lm_eval cannot be installed (no PyPI).
set -u
: "${TPMPI:?}" "${MPIRUN:?}" "${TOP_BUILDDIR:?}" "${TOP_SRCDIR:?}"
dir=$TOP_BUILDDIR/tests/lm_eval.d
venv=${TPM_LMEVAL_VENV:-${TPMPI_CACHE:-$TOP_BUILDDIR/tests/cache}/venv-lmeval}
task=$TOP_SRCDIR/tests/fixtures/mc_tiny.jsonl
rm -rf "$dir" && mkdir -p "$dir/tasks"
. "$TOP_SRCDIR/tests/serve_lib.sh"

install_lmeval() {
    "$venv/bin/python" -c 'import lm_eval, tenacity, aiohttp' >/dev/null 2>&1 && return 0
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    if ! python3 -m venv "$venv" >"$dir/venv.log" 2>&1 ||
        ! "$venv/bin/pip" install --quiet --disable-pip-version-check 'lm_eval[api]>=0.4.9,<0.5' \
            >>"$dir/venv.log" 2>&1; then
        rm -rf "$venv"
        return 1
    fi
}
mkdir -p "$(dirname "$venv")"
if ! (flock 9 && install_lmeval) 9>"$venv.lock"; then
    tail -5 "$dir/venv.log" 2>/dev/null
    echo "SKIP: lm_eval[api] could not be installed from PyPI"
    exit 77
fi

if ! timeout 300 $MPIRUN -np 2 "$TPMPI" --mode=train --model=tiny --steps=30 --batch=4 \
    --lr=3e-3 --threads=1 --log-level=warn --ckpt-dir="$dir/ck" >"$dir/train.log" 2>&1 ||
    ! timeout 300 $MPIRUN -np 2 "$TPMPI" --mode=eval --ckpt="$dir/ck" --task="$task" \
        --threads=1 --log-level=warn --out="$dir/eval.json" >"$dir/eval.log" 2>&1; then
    cat "$dir/train.log" "$dir/eval.log"
    echo "0 passed, 1 failed (training or --mode=eval)"
    exit 1
fi

export SERVE_TARGET=real SERVE_CKPT="$dir/ck"
trap 'serve_stop 10 >/dev/null 2>&1' EXIT
serve_start "$dir/server.log"
if ! serve_wait_ready 180; then
    cat "$dir/server.log"
    echo "0 passed, 1 failed (the server did not become ready)"
    exit 1
fi
eot=$(curl -s "$SERVE_URL/tokenizer_info" | sed -n 's/.*"eos_token_id":\([0-9]*\).*/\1/p')
n_ctx=$(curl -s "$SERVE_URL/tokenizer_info" | sed -n 's/.*"model_max_length":\([0-9]*\).*/\1/p')
cat >"$dir/tasks/tpmpi_mc_tiny.yaml" <<YAML
task: tpmpi_mc_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: $task
test_split: test
output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
  - metric: acc_bytes
YAML
# an empty context is the end-of-text token, as --mode=eval does: custom_prefix_token_id
if ! (cd "$dir" && HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    HF_HOME="$dir/hf" timeout 300 "$venv/bin/lm_eval" run --model local-completions \
    --model_args "base_url=$SERVE_URL/v1/completions,model=ck,tokenizer_backend=remote,tokenized_requests=True,custom_prefix_token_id=$eot,max_length=$n_ctx,num_concurrent=1,max_retries=1" \
    --tasks tpmpi_mc_tiny --include_path "$dir/tasks" --output_path "$dir/out" --log_samples \
    >"$dir/lm_eval.log" 2>&1); then
    tail -40 "$dir/lm_eval.log"
    echo "0 passed, 1 failed (lm_eval did not run to completion)"
    exit 1
fi
grep -A6 '^|' "$dir/lm_eval.log"
serve_stop 10 >/dev/null 2>&1

python3 - "$dir/eval.json" "$dir/out" <<'PY'
import glob, json, sys
ours = json.load(open(sys.argv[1]))
res = json.load(open(glob.glob(sys.argv[2] + "/*/results_*.json")[0]))["results"]["tpmpi_mc_tiny"]
samples = sorted((json.loads(l) for l in open(glob.glob(sys.argv[2] + "/*/samples_*.jsonl")[0])),
                 key=lambda s: s["doc_id"])
passed = failed = 0
def ok(c, label):
    global passed, failed
    print(("ok: " if c else "FAIL: ") + label)
    passed += bool(c)
    failed += not c
ok(len(samples) == ours["items"], f"lm_eval scored {len(samples)} items, --mode=eval {ours['items']}")
for m in ("acc", "acc_norm", "acc_bytes"):
    ok(abs(res[m + ",none"] - ours[m]) < 1e-12,
       f"{m}: lm_eval {res[m + ',none']}, --mode=eval {ours[m]}")
theirs = [float(r[0]) for s in samples for r in s["filtered_resps"]]
d = max(abs(a - b) / abs(b) for a, b in zip(theirs, ours["ll"])) if len(theirs) == len(ours["ll"]) else 1
ok(d <= 1e-5, f"every choice's log-likelihood within 1e-5 ({d:.2g}, {len(theirs)} choices)")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
