#!/bin/sh
# SPDX-License-Identifier: MIT
# The LLaMA family in training (issue 14): --arch=llama --model=llama-tiny (GQA NH4 NKV2,
# untied head, Llama-3 rope scaling) and a Qwen-like variant (q/k/v biases, tied head).
#  a) ZeRO-3: the same global batch as N=1 x 12, N=2 x 6, N=3 x 4 (ranks x grad-accum) gives
#     the same losses within 1e-5 relative (N=3 divides neither the heads nor the rows)
#  b) checkpoints record the architecture and its configuration; a resume on the same rank
#     count gives the losses of the uninterrupted run bit for bit, on another within 1e-5
#  c) refusals with exit status 2 and a message: a llama checkpoint in a gpt2 run, an unknown
#     arch attribute, --arch/preset mismatches, llama-only options with gpt2, NKV not
#     dividing NH, --device=cuda (training and serving), llm.c export of a llama checkpoint,
#     a bf16 KV cache for llama, --mode=trainserve --arch=llama
#  d) a checkpoint without the arch attribute (written before it) loads as gpt2
#  e) serving the trained checkpoint: tests/mpi/test_serve_tp reads it through the engine's
#     loader at M = 1, 2, 3 (M = 3 does not divide the 2 KV heads) and its logits equal the
#     training forward within 1e-5; tpmpi --mode=serve answers a completion at M = 2
#  f) --init-from=hf:DIR (tests/fixtures/hf_llama_tiny, saved by transformers) at N = 1 and
#     N = 3 on llm.c token shards of a 100-token vocabulary, one step at lr 1e-30 (weights
#     unchanged): the final checkpoints of both rank counts are identical and hold the
#     fixture's parameters exactly; a config.json of another model is refused
#  g) --mode=export --format=hf of that checkpoint gives the fixture's safetensors tensors
#     byte for byte (names, dtypes, shapes, values); importing the export again gives the same
#     shards; a GPT-2 checkpoint is refused
set -u
: "${TPMPI:?}" "${MPIRUN:?}" "${TOP_BUILDDIR:?}"
. "$(dirname "$0")/train_lib.sh"
dir=$TOP_BUILDDIR/tests/llama_train.d
prog=$TOP_BUILDDIR/tests/mpi/test_ckpt
rm -rf "$dir" && mkdir -p "$dir"
common="--mode=train --arch=llama --model=llama-tiny --batch=2 --seed=7 --lr=1e-3 --warmup=5 --threads=1 --log-every=100"

# close REF GOT STEPS LABEL: STEPS loss records of two metrics files, the same steps, max
# relative difference <= 1e-5; closef: the same on "step loss" files
close() {
    losses "$1" >"$dir/a"
    losses "$2" >"$dir/b"
    closef "$dir/a" "$dir/b" "$3" "$4"
}
closef() {
    check "$(paste "$1" "$2" | awk -v want="$3" '
        { d = $2 - $4; if (d < 0) d = -d; r = d / ($2 < 0 ? -$2 : $2); if (r > m) m = r; c++
          if ($1 != $3) bad = 1 }
        END { printf "  %d steps, max relative loss difference %.3g\n", c, m > "/dev/stderr";
              print (c == want && !bad && m <= 1e-5) ? 1 : 0 }')" "$4"
}
# expect NP WANT_RC PATTERN ARGS...: tpmpi's exit status and a message naming the problem
expect() {
    np=$1 want=$2 pat=$3
    shift 3
    timeout 120 $MPIRUN -np "$np" "$TPMPI" "$@" >"$dir/out" 2>&1
    rc=$?
    if [ "$rc" -eq "$want" ] && grep -q -- "$pat" "$dir/out"; then
        check 1 "rc $rc: $(grep -m 1 -- "$pat" "$dir/out")"
    else
        check 0 "tpmpi $* (np $np): rc $rc (want $want), want message '$pat'"
        sed 's/^/    /' "$dir/out" | grep -v '^    \[tpmpi r0\]   ' | head -20
    fi
}

# a) ZeRO-3 equivalence, llama-tiny and the Qwen-like variant
run_tpmpi n1 1 --steps=30 --grad-accum=12
run_tpmpi n2 2 --steps=30 --grad-accum=6
run_tpmpi n3 3 --steps=30 --grad-accum=4
close "$dir/n1.jsonl" "$dir/n2.jsonl" 30 "a) llama-tiny N=2 x 6 = N=1 x 12"
close "$dir/n1.jsonl" "$dir/n3.jsonl" 30 "a) llama-tiny N=3 x 4 = N=1 x 12"
grep -q 'model llama-tiny (llama): L=2 C=64 NH=4 NKV=2 F=160.*llama3 scaling), untied head' \
    "$dir/n1.log"
check $((! $?)) "a) the model line names the LLaMA configuration"
first=$(losses "$dir/n1.jsonl" | sed -n '1s/.* //p')
last=$(losses "$dir/n1.jsonl" | sed -n '30s/.* //p')
check "$(awk -v a="$first" -v b="$last" 'BEGIN { print (b < a - 0.05) ? 1 : 0 }')" \
    "a) llama-tiny learns: loss $first -> $last over 30 steps"
run_tpmpi q1 1 --steps=15 --grad-accum=6 --qkv-bias=1 --tie-embeddings=1 --rope-scaling-factor=0
run_tpmpi q3 3 --steps=15 --grad-accum=2 --qkv-bias=1 --tie-embeddings=1 --rope-scaling-factor=0
close "$dir/q1.jsonl" "$dir/q3.jsonl" 15 "a) qkv bias, tied head: N=3 x 2 = N=1 x 6"
check "$(grep -q 'qkvb' "$dir/q1.log" && ! grep -q 'lm_head' "$dir/q1.log" && echo 1 || echo 0)" \
    "a) the variant has a qkvb tensor and no lm_head"

# b) checkpoints: attributes, exact resume on N=2, resume on N=3 (global batch 12 either way)
run_tpmpi c_straight 2 --steps=20 --grad-accum=3 --ckpt-dir="$dir/c" --ckpt-every=10
ck=$dir/c/ckpt_00000010.h5
attr() { h5dump -a "/$2" "$1" 2>/dev/null | sed -n 's/.*(0): *\(.*\)$/\1/p' | tr -d '"'; }
check "$([ "$(attr "$ck" arch)" = llama ] && [ "$(attr "$ck" n_kv_head)" = 2 ] &&
    [ "$(attr "$ck" intermediate_size)" = 160 ] && [ "$(attr "$ck" tie_embeddings)" = 0 ] &&
    [ "$(attr "$ck" qkv_bias)" = 0 ] && [ "$(attr "$ck" rope_orig_ctx)" = 16 ] && echo 1 || echo 0)" \
    "b) the checkpoint records arch llama, n_kv_head 2, intermediate_size 160, untied, no bias"
check "$(h5dump -H -d /model/lm_head "$ck" >/dev/null 2>&1 && h5dump -H -d /model/h.1.gatew "$ck" \
    >/dev/null 2>&1 && echo 1 || echo 0)" "b) lm_head and h.1.gatew are datasets of the checkpoint"
mkdir -p "$dir/c2" "$dir/c3" && cp "$ck" "$dir/c2/" && cp "$ck" "$dir/c3/"
run_tpmpi c_resumed 2 --steps=20 --grad-accum=3 --ckpt-dir="$dir/c2" --resume
losses "$dir/c_straight.jsonl" | sed -n '11,20p' >"$dir/c_ref"
losses "$dir/c_resumed.jsonl" >"$dir/c_got"
check "$([ "$(wc -l <"$dir/c_ref")" -eq 10 ] && cmp -s "$dir/c_ref" "$dir/c_got" && echo 1 || echo 0)" \
    "b) N=2 resume from step 10: steps 11-20 identical to the straight run"
check "$(h5diff -q "$dir/c/ckpt_00000020.h5" "$dir/c2/ckpt_00000020.h5" /model /model &&
    h5diff -q "$dir/c/ckpt_00000020.h5" "$dir/c2/ckpt_00000020.h5" /optim /optim && echo 1 || echo 0)" \
    "b) step-20 weights and AdamW moments identical"
run_tpmpi c_n3 3 --steps=20 --grad-accum=2 --ckpt-dir="$dir/c3" --resume
losses "$dir/c_n3.jsonl" >"$dir/c_got3"
closef "$dir/c_ref" "$dir/c_got3" 10 "b) N=3 x 2 resume from the N=2 x 3 step-10 checkpoint"

# c) refusals
expect 2 2 "holds a llama model, but this run is --arch=gpt2" --mode=train --model=tiny \
    --steps=1 --batch=2 --threads=1 --init-from="$ck"
timeout 120 $MPIRUN -np 1 "$prog" set-arch "$ck" "$dir/mistery.h5" mistery >/dev/null 2>&1
expect 2 2 "model architecture 'mistery' is unknown" $common --steps=1 --init-from="$dir/mistery.h5"
expect 1 2 "is a llama preset, but --arch=gpt2" --mode=train --model=llama-tiny --steps=1
expect 1 2 "is a gpt2 preset, but --arch=llama" --mode=train --arch=llama --steps=1
expect 1 2 "is an --arch=llama option" --mode=train --model=tiny --n-kv-head=2 --steps=1
expect 1 2 "n_kv_head 3 must divide n_head 4" $common --steps=1 --n-kv-head=3
expect 1 2 "device=cuda --arch=llama" $common --steps=1 --device=cuda
# (a build without CUDA refuses --device=cuda before it opens the checkpoint)
expect 1 2 "holds a llama model; the CUDA backend\|built without CUDA" --mode=serve --ckpt="$ck" \
    --device=cuda
expect 1 2 "a bf16 KV cache is not implemented for LLaMA" --mode=serve --ckpt="$ck" --kv-dtype=bf16
expect 2 2 "trainserve --arch=llama: the live weight push" $common --steps=1 --mode=trainserve
expect 1 2 "llm.c files hold GPT-2 models only" --mode=export --ckpt="$ck" --out="$dir/x.bin"

# d) a GPT-2 checkpoint without the arch attribute loads as gpt2
common="--mode=train --model=tiny --batch=2 --seed=7 --threads=1 --log-every=100"
run_tpmpi g 1 --steps=2 --ckpt-dir="$dir/g"
timeout 120 $MPIRUN -np 1 "$prog" set-arch "$dir/g/ckpt_00000002.h5" "$dir/old.h5" - >/dev/null 2>&1
check "$(h5dump -a /arch "$dir/old.h5" >/dev/null 2>&1 && echo 0 || echo 1)" "d) the copy has no arch attribute"
run_tpmpi g_old 1 --steps=1 --init-from="$dir/old.h5"
check "$(grep -q 'fresh optimizer' "$dir/g_old.log" && echo 1 || echo 0)" \
    "d) a checkpoint without arch loads into --arch=gpt2"
expect 1 2 "holds a gpt2 model, but this run is --arch=llama" --mode=train --arch=llama \
    --model=llama-tiny --steps=1 --batch=2 --threads=1 --init-from="$dir/old.h5"

# e) serving the llama checkpoint
for m in 1 2 3; do
    timeout 300 $MPIRUN -np "$m" "$TOP_BUILDDIR/tests/mpi/test_serve_tp" --ckpt="$ck" \
        >"$dir/tp$m.log" 2>&1
    rc=$?
    check "$([ "$rc" -eq 0 ] && grep -q ' 0 failed' "$dir/tp$m.log" && echo 1 || echo 0)" \
        "e) M=$m: $(grep 'max normalised' "$dir/tp$m.log" || tail -3 "$dir/tp$m.log")"
done
# the Qwen-like model (q/k/v biases, tied head, one KV head: at M > 1 one rank owns it and the
# others only MLP and vocabulary rows) and a serving format, from the initial weights
for args in "--arch=qwen -np1" "--arch=qwen -np2" "--arch=qwen -np3" "--arch=llama --dtype=int8 -np3"; do
    np=${args##*-np}
    timeout 300 $MPIRUN -np "$np" "$TOP_BUILDDIR/tests/mpi/test_serve_tp" ${args% -np*} \
        >"$dir/tpq.log" 2>&1
    rc=$?
    check "$([ "$rc" -eq 0 ] && grep -q ' 0 failed' "$dir/tpq.log" && echo 1 || echo 0)" \
        "e) ${args% -np*} M=$np: $(grep 'max normalised' "$dir/tpq.log" || tail -3 "$dir/tpq.log")"
done
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
$MPIRUN -np 2 "$TPMPI" --mode=serve --ckpt="$ck" --threads=1 --host=127.0.0.1 --port="$port" \
    >"$dir/serve.log" 2>&1 &
spid=$!
code=000
for _ in $(seq 1 120); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health" 2>/dev/null || true)
    [ "$code" = 200 ] && break
    kill -0 "$spid" 2>/dev/null || break
    sleep 0.5
done
code=$(curl -s -o "$dir/completion.json" -w '%{http_code}' -H 'Content-Type: application/json' \
    --data '{"prompt": "The ", "max_tokens": 8, "temperature": 0}' \
    "http://127.0.0.1:$port/v1/completions" 2>/dev/null || true)
kill -TERM "$spid" 2>/dev/null
wait "$spid" 2>/dev/null
check "$([ "$code" = 200 ] && grep -q '"text"' "$dir/completion.json" && echo 1 || echo 0)" \
    "e) tpmpi --mode=serve on 2 ranks answers a completion with the llama checkpoint (HTTP $code)"
grep -q 'serving .*: llama L=2 C=64 NH=4 NKV=2' "$dir/serve.log"
check $((! $?)) "e) the server names the llama model"

# f) Hugging Face import
hfdir=$(cd "$(dirname "$0")/fixtures" && pwd)
mkdir -p "$dir/tok100"
python3 - "$dir/tok100" <<'PY'
import struct, sys
for name, n, seed in (("train_000.bin", 4096, 1), ("val_000.bin", 1024, 2)):
    x, toks = seed, []
    for _ in range(n):
        x = (1103515245 * x + 12345) % 2**31
        toks.append(x % 100)
    with open(sys.argv[1] + "/" + name, "wb") as f:
        f.write(struct.pack("<256i", 20240520, 1, n, *([0] * 253)))
        f.write(struct.pack("<%dH" % n, *toks))
PY
common="--mode=train --arch=llama --model=llama-tiny --n-embd=32 --intermediate-size=48 --vocab-size=100 --data=$dir/tok100 --batch=2 --seq-len=16 --steps=1 --lr=1e-30 --min-lr=0 --weight-decay=0 --threads=1 --log-every=100"
run_tpmpi hf1 1 --init-from="hf:$hfdir/hf_llama_tiny" --ckpt-dir="$dir/hf1"
run_tpmpi hf3 3 --init-from="hf:$hfdir/hf_llama_tiny" --ckpt-dir="$dir/hf3"
check "$(grep -q 'imported Hugging Face model' "$dir/hf3.log" && echo 1 || echo 0)" \
    "f) the import is announced"
check "$(h5diff -q "$dir/hf1/ckpt_00000001.h5" "$dir/hf3/ckpt_00000001.h5" /model /model &&
    echo 1 || echo 0)" "f) N=1 and N=3 imports give identical weights"
python3 - "$hfdir/llama_tiny.bin" "$dir/hf3/ckpt_00000001.h5" >"$dir/hfcmp" 2>&1 <<'PY'
import struct, subprocess, sys
fx = open(sys.argv[1], "rb").read()
L, C, NH, NKV, F, V, Vp, B, T, P = [struct.unpack_from("<16i", fx)[i] for i in (2, 3, 4, 5, 6, 7, 8, 10, 11, 12)]
off = 128 + 8 * B * T + 4 * B * T * Vp + 4
params = struct.unpack_from("<%df" % P, fx, off)
# canonical order of the untied LLaMA table (docs/MODEL.md)
Q = (NH + 2 * NKV) * (C // NH)
blk = [("ln1w", C), ("qkvw", Q * C), ("ow", C * C), ("ln2w", C), ("gatew", F * C), ("upw", F * C), ("downw", F * C)]
names, o = [], 0
for l in range(L):
    for n, k in blk:
        names.append(("h.%d.%s" % (l, n), o, k)); o += k
for n, k in (("wte", Vp * C), ("lnfw", C), ("lm_head", Vp * C)):
    names.append((n, o, k)); o += k
assert o == P, (o, P)
bad = 0
for n, o, k in names:
    out = subprocess.run(["h5dump", "-m", "%.9g", "-d", "/model/" + n, sys.argv[2]], capture_output=True, text=True).stdout
    body = out.split("DATA {", 1)[1].split("}", 1)[0]
    vals = []
    for line in body.splitlines():
        if ":" in line:
            vals += [float(v) for v in line.split(":", 1)[1].replace(",", " ").split()]
    if len(vals) != k or any(struct.unpack("<f", struct.pack("<f", a))[0] != b for a, b in zip(vals, params[o:o + k])):
        bad += 1
        print("differs:", n, len(vals), k)
print("%d tensors compared, %d differ" % (len(names), bad))
PY
check "$(grep -q ' 0 differ' "$dir/hfcmp" && echo 1 || echo 0)" \
    "f) the checkpoint holds the fixture's parameters exactly: $(tail -1 "$dir/hfcmp")"
expect 2 2 "hidden_size is 32, this run has 64 (--n-embd)" --mode=train --arch=llama \
    --model=llama-tiny --steps=1 --threads=1 --init-from="hf:$hfdir/hf_llama_tiny"

# g) Hugging Face export, and the export imported again
timeout 120 $MPIRUN -np 2 "$TPMPI" --mode=export --format=hf --ckpt="$dir/hf3/ckpt_00000001.h5" \
    --out="$dir/hfout" >"$dir/export.log" 2>&1
check "$([ $? -eq 0 ] && [ -s "$dir/hfout/config.json" ] && echo 1 || echo 0)" \
    "g) --mode=export --format=hf writes config.json and model.safetensors"
python3 - "$hfdir/hf_llama_tiny/model.safetensors" "$dir/hfout/model.safetensors" \
    >"$dir/stcmp" 2>&1 <<'PY'
import json, struct, sys
def load(p):
    b = open(p, "rb").read()
    n = struct.unpack_from("<Q", b)[0]
    h = json.loads(b[8:8 + n])
    h.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in h.items()}
a, b = load(sys.argv[1]), load(sys.argv[2])
diff = [k for k in a if a[k] != b.get(k)] + [k for k in b if k not in a]
print("%d tensors, %d differ" % (len(a), len(diff)), " ".join(diff[:5]))
PY
check "$(grep -q '^21 tensors, 0 differ' "$dir/stcmp" && echo 1 || echo 0)" \
    "g) the exported tensors are transformers' own: $(cat "$dir/stcmp")"
common="$common --init-from=hf:$dir/hfout"
run_tpmpi hf2 2 --ckpt-dir="$dir/hf2"
check "$(h5diff -q "$dir/hf1/ckpt_00000001.h5" "$dir/hf2/ckpt_00000001.h5" /model /model &&
    echo 1 || echo 0)" "g) importing the export again (N=2) gives the same weights"
expect 1 2 "exports LLaMA-family models only" --mode=export --format=hf \
    --ckpt="$dir/g/ckpt_00000002.h5" --out="$dir/gpt2hf"

finish
