#!/bin/sh
# SPDX-License-Identifier: MIT
# serve_http.sh: the OpenAI-compatible HTTP API end to end, driven with curl: health while
# loading and when ready, models, completions (string, token-list and nested prompts;
# streaming by server-sent events, with stop strings and usage), tokenize/detokenize,
# Prometheus metrics, and the error answers in OpenAI's shape (bad JSON, missing or wrong
# API key, unknown route, wrong method, oversize body, oversize prompt, bad parameters).
# With the fake engine (SERVE_TARGET=fake, the default) also: a full queue (503), a client
# that disconnects (its job is cancelled), an engine error, and a graceful shutdown that
# ends an open stream. SERVE_TARGET=real runs the checks that do not depend on the fake
# engine's known answers against `tpmpi --mode=serve` (tests/serve_http_real.sh).
set -u
: "${TOP_BUILDDIR:=.}"
: "${TOP_SRCDIR:=$(dirname "$0")/..}"
SERVE_TARGET=${SERVE_TARGET:-fake}
dir=$TOP_BUILDDIR/tests/serve_http_$SERVE_TARGET.d
rm -rf "$dir" && mkdir -p "$dir"
. "$TOP_SRCDIR/tests/serve_lib.sh"

if [ "$SERVE_TARGET" = fake ] && [ ! -x "$FAKE_SERVER" ]; then
    echo "SKIP: $FAKE_SERVER not built"
    exit 77
fi
if ! command -v curl >/dev/null 2>&1; then
    echo "SKIP: curl not found"
    exit 77
fi

KEY=test-key-0123456789
fake=0
[ "$SERVE_TARGET" = fake ] && fake=1
trap 'serve_stop 5 >/dev/null 2>&1' EXIT

# ---- start; with the fake engine, "loading" for the first 1.5 s ----------------------------
[ $fake = 1 ] && export FAKE_READY_MS=1500 FAKE_STEP_MS=2
serve_start "$dir/server.log" --api-key="$KEY" --ctx-size=64 --max-tokens=48 \
    --max-body-bytes=8192 --parallel=4 --max-queue=16
if [ $fake = 1 ]; then
    serve_wait_listening 20 || { cat "$dir/server.log"; echo "server did not start"; exit 1; }
    code=$(req GET /health "")
    check "$([ "$code" = 503 ] && echo 1 || echo 0)" "/health while loading: $code (want 503)"
    check "$(jcheck "$dir/body" 'd == {"status": "loading"}')" "/health while loading body"
    code=$(post /v1/completions '{"prompt":"hi"}')
    check "$([ "$code" = 503 ] && echo 1 || echo 0)" "completion while loading: $code (want 503)"
    check "$(jcheck "$dir/body" 'd["error"]["code"] == "model_loading"')" "loading error code"
fi
if ! serve_wait_ready 180; then
    cat "$dir/server.log"
    echo "server did not become ready"
    exit 1
fi

# ---- health, models, key ---------------------------------------------------------------------
code=$(req GET /health "")
check "$([ "$code" = 200 ] && echo 1 || echo 0)" "/health without a key: $code (want 200)"
check "$(jcheck "$dir/body" 'd == {"status": "ok"}')" "/health body"
code=$(get /v1/models)
check "$([ "$code" = 200 ] && echo 1 || echo 0)" "/v1/models: $code"
check "$(jcheck "$dir/body" 'd["object"] == "list" and d["data"][0]["object"] == "model"')" \
    "/v1/models body"
MODEL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"][0]["id"])' \
    "$dir/body" 2>/dev/null || echo "?")
code=$(get "/v1/models/$MODEL")
check "$([ "$code" = 200 ] && echo 1 || echo 0)" "/v1/models/$MODEL: $code"
code=$(get /v1/models/nope)
check "$([ "$code" = 404 ] && echo 1 || echo 0)" "/v1/models/nope: $code (want 404)"

code=$(req GET /v1/models "")
check "$([ "$code" = 401 ] && echo 1 || echo 0)" "no API key: $code (want 401)"
check "$(is_openai_error "$dir/body")" "no API key: error shape"
check "$(jcheck "$dir/body" 'd["error"]["code"] == "invalid_api_key"')" "no API key: code"
printf '{"prompt":"hi"}' >"$dir/in"
code=$(req POST /v1/completions "$dir/in" -H "Authorization: Bearer wrong-key")
check "$([ "$code" = 401 ] && echo 1 || echo 0)" "wrong API key: $code (want 401)"
code=$(req POST /v1/completions "$dir/in" -H "Authorization: Bearer ${KEY}x")
check "$([ "$code" = 401 ] && echo 1 || echo 0)" "API key with a suffix: $code (want 401)"
if grep -q "$KEY" "$dir/server.log"; then
    check 0 "the API key appears in the server log"
fi

# ---- completions --------------------------------------------------------------------------
code=$(post /v1/completions "{\"model\":\"$MODEL\",\"prompt\":\"The quick\",\"max_tokens\":12,\"temperature\":0}")
cp "$dir/body" "$dir/full.json"
check "$([ "$code" = 200 ] && echo 1 || echo 0)" "completion: $code"
check "$(jcheck "$dir/full.json" 'd["object"] == "text_completion" and d["id"].startswith("cmpl-") and len(d["choices"]) == 1 and d["choices"][0]["finish_reason"] in ("length", "stop")')" \
    "completion shape"
check "$(jcheck "$dir/full.json" '(lambda u: u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and 1 <= u["completion_tokens"] <= 12)(d["usage"])')" \
    "usage adds up"
check "$(jcheck "$dir/full.json" 'all(k in d["timings"] for k in ("prompt_ms", "predicted_ms", "ttft_ms", "predicted_per_second", "prompt_n", "predicted_n"))')" \
    "timings present"
if [ $fake = 1 ]; then
    check "$(jcheck "$dir/full.json" 'd["choices"][0]["text"].startswith("The quick brown fox") and d["usage"]["completion_tokens"] == 12 and d["choices"][0]["finish_reason"] == "length"')" \
        "fake completion text"
fi

# the same request streamed: same text (greedy), a final chunk, usage, [DONE]
post /v1/completions "{\"model\":\"$MODEL\",\"prompt\":\"The quick\",\"max_tokens\":12,\"temperature\":0,\"stream\":true,\"stream_options\":{\"include_usage\":true}}" -N \
    -D "$dir/headers" >/dev/null
sse_summary "$dir/body" >"$dir/sse.json"
check "$(grep -qi '^content-type: text/event-stream' "$dir/headers" && echo 1 || echo 0)" \
    "stream content type"
check "$(jcheck "$dir/sse.json" 'd["done"] and d["bad"] == 0 and d["after_done"] == 0 and d["error"] is None and d["events"] >= 2')" \
    "stream is well-formed SSE ending with [DONE]"
check "$(python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); print(int(a["text"] == b["choices"][0]["text"] and a["finish"] == b["choices"][0]["finish_reason"] and a["usage"] == b["usage"]))' "$dir/sse.json" "$dir/full.json")" \
    "streamed text, finish_reason and usage equal the non-streamed answer"
check "$(jcheck "$dir/sse.json" 'd["timings"]')" "stream final chunk has timings"

# chat completions: the same greedy answer streamed and not; the template's prompt tokens
chat='{"messages":[{"role":"user","content":"The quick"}],"max_tokens":6,"temperature":0'
code=$(post /v1/chat/completions "$chat}")
cp "$dir/body" "$dir/chat.json"
check "$([ "$code" = 200 ] && echo 1 || echo 0)" "chat completion: $code"
check "$(jcheck "$dir/chat.json" 'd["object"] == "chat.completion" and d["id"].startswith("chatcmpl-") and d["choices"][0]["message"]["role"] == "assistant" and isinstance(d["choices"][0]["message"]["content"], str)')" \
    "chat completion shape"
post /tokenize '{"content":"<|im_start|>user\nThe quick<|im_end|>\n<|im_start|>assistant\n"}' >/dev/null
check "$(python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); print(int(a["usage"]["prompt_tokens"] == len(b["tokens"])))' "$dir/chat.json" "$dir/body")" \
    "chat prompt = the ChatML rendering of the messages"
post /v1/chat/completions "$chat,\"stream\":true,\"stream_options\":{\"include_usage\":true}}" -N >/dev/null
python3 - "$dir/body" "$dir/chat.json" >"$dir/chat_sse.txt" <<'PYEOF'
import json, sys
events = [l[6:] for l in open(sys.argv[1]).read().split("\n") if l.startswith("data: ")]
full = json.load(open(sys.argv[2]))
ok = events[-1] == "[DONE]"
chunks = [json.loads(e) for e in events[:-1]]
ok = ok and all(c["object"] == "chat.completion.chunk" for c in chunks)
deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
text = "".join(d.get("content", "") for d in deltas)
ok = ok and deltas[0].get("role") == "assistant" and all("role" not in d for d in deltas[1:])
ok = ok and text == full["choices"][0]["message"]["content"]
ok = ok and chunks[-1]["choices"] == [] and chunks[-1]["usage"] == full["usage"]
print(1 if ok else 0)
PYEOF
check "$(cat "$dir/chat_sse.txt")" "chat stream: role first, same text and usage as without streaming"
code=$(post /v1/chat/completions '{"messages":[{"role":"robot","content":"x"}]}')
check "$([ "$code" = 400 ] && [ "$(is_openai_error "$dir/body")" = 1 ] && echo 1 || echo 0)" \
    "chat with an unknown role: $code (want 400)"

# log-probabilities with echo (what loglikelihood evaluation sends), and in chat
code=$(post /v1/completions '{"prompt":"The quick brown","max_tokens":3,"temperature":0,"logprobs":3,"echo":true}')
cp "$dir/body" "$dir/lp.json"
check "$([ "$code" = 200 ] && echo 1 || echo 0)" "echo + logprobs: $code"
check "$(jcheck "$dir/lp.json" '(lambda c, l: c["text"].startswith("The quick brown") and l["token_logprobs"][0] is None and l["top_logprobs"][0] is None and len(l["tokens"]) == len(l["token_logprobs"]) == len(l["top_logprobs"]) == len(l["text_offset"]))(d["choices"][0], d["choices"][0]["logprobs"])')" \
    "echo + logprobs: the text starts with the prompt, the first token is null"
if [ $fake = 0 ]; then
    # the real engine: one entry per prompt and generated token; the text is their
    # concatenation; every value <= 0 and at most the top-1; greedy tokens are the top-1
    check "$(jcheck "$dir/lp.json" '(lambda c, l, u: len(l["tokens"]) == u["prompt_tokens"] + u["completion_tokens"] and "".join(l["tokens"]) == c["text"] and all(v <= 0 and len(t) == 3 and max(t.values()) >= v - 1e-6 for v, t in zip(l["token_logprobs"][1:], l["top_logprobs"][1:])) and all(abs(max(t.values()) - v) < 1e-6 for v, t in zip(l["token_logprobs"][u["prompt_tokens"]:], l["top_logprobs"][u["prompt_tokens"]:])))(d["choices"][0], d["choices"][0]["logprobs"], d["usage"])')" \
        "echo + logprobs (real engine): one entry per token, greedy = top 1: $(head -c 400 "$dir/lp.json")"
    code=$(post /v1/completions '{"prompt":"The quick brown","max_tokens":3,"temperature":0,"logprobs":0}')
    check "$(python3 -c 'import json,sys; a=json.load(open(sys.argv[1]))["choices"][0]; b=json.load(open(sys.argv[2]))["choices"][0]; n=len(b["logprobs"]["tokens"]); print(int(a["logprobs"]["token_logprobs"] == b["logprobs"]["token_logprobs"][n - len(a["logprobs"]["tokens"]):] and b["text"].endswith(a["text"]) and all(t == {} for t in a["logprobs"]["top_logprobs"])))' "$dir/body" "$dir/lp.json")" \
        "logprobs without echo: the generated tokens' values, the same as with echo"
    code=$(post /v1/chat/completions '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":3,"temperature":0,"logprobs":true,"top_logprobs":2}')
    check "$(jcheck "$dir/body" '(lambda c: len(c["logprobs"]["content"]) == d["usage"]["completion_tokens"] and "".join(e["token"] for e in c["logprobs"]["content"]) == c["message"]["content"] and all(len(e["top_logprobs"]) == 2 and e["bytes"] == list(e["token"].encode()) for e in c["logprobs"]["content"]))(d["choices"][0])')" \
        "chat logprobs: one entry per generated token, with bytes and top_logprobs"
fi

# logit_bias and penalties: a +100 bias makes greedy decoding emit that token only (real
# engine: the fake one ignores sampling parameters)
if [ $fake = 0 ]; then
    post /detokenize '{"tokens":[88,88,88,88]}' >/dev/null
    cp "$dir/body" "$dir/x4.json"
    code=$(post /v1/completions '{"prompt":[84,104,101],"max_tokens":4,"temperature":0,"logit_bias":{"88":100},"logprobs":0}')
    check "$(python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); print(int(a["choices"][0]["text"] == b["content"] and a["choices"][0]["logprobs"]["tokens"] != []))' "$dir/body" "$dir/x4.json")" \
        "logit_bias +100 on token 88: greedy emits it 4 times: $(head -c 300 "$dir/body")"
    code=$(post /v1/completions '{"prompt":[84,104,101],"max_tokens":6,"temperature":0}')
    cp "$dir/body" "$dir/nopen.json"
    code=$(post /v1/completions '{"prompt":[84,104,101],"max_tokens":6,"temperature":0,"frequency_penalty":2,"presence_penalty":2}')
    check "$([ "$code" = 200 ] && echo 1 || echo 0)" "penalties accepted: $code"
    python3 - "$dir/nopen.json" "$dir/body" >"$dir/pen.txt" <<'PYEOF'
import json, sys
a = json.load(open(sys.argv[1]))["choices"][0]["text"]
b = json.load(open(sys.argv[2]))["choices"][0]["text"]
print(a != b, repr(a), repr(b))
PYEOF
    echo "penalties: $(cat "$dir/pen.txt")"
fi

# embeddings (real engine: the fake one has none): unit length, the model's width, the same
# vector for the text and for its token ids, and for the same request twice
if [ $fake = 0 ]; then
    code=$(post /v1/embeddings '{"input":"The quick brown fox"}')
    cp "$dir/body" "$dir/emb1.json"
    check "$([ "$code" = 200 ] && echo 1 || echo 0)" "embeddings: $code"
    check "$(jcheck "$dir/emb1.json" '(lambda e: d["object"] == "list" and d["data"][0]["object"] == "embedding" and len(e) == 64 and abs(sum(x * x for x in e) - 1) < 1e-4)(d["data"][0]["embedding"])')" \
        "embedding: 64 floats of unit length"
    post /tokenize '{"content":"The quick brown fox"}' >/dev/null
    ids=$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["tokens"]))' "$dir/body")
    post /v1/embeddings "{\"input\":$ids}" >/dev/null
    cp "$dir/body" "$dir/emb2.json"
    post /v1/embeddings '{"input":["The quick brown fox"]}' >/dev/null
    check "$(python3 -c 'import json,sys; e=[json.load(open(f))["data"][0]["embedding"] for f in sys.argv[1:]]; print(int(max(abs(a - b) for a, b in zip(e[0], e[1])) < 1e-6 and e[0] == e[2]))' "$dir/emb1.json" "$dir/emb2.json" "$dir/body")" \
        "embedding of the text = of its token ids = of the same request again"
fi
code=$(post /v1/embeddings '{"input":"x","encoding_format":"base64"}')
check "$([ "$code" = 400 ] && [ "$(is_openai_error "$dir/body")" = 1 ] && echo 1 || echo 0)" \
    "embeddings with base64: $code (want 400)"

# prompt forms: token ids, [[ids]], ["text"]
code=$(post /v1/completions '{"prompt":[84,104,101],"max_tokens":2}')
check "$([ "$code" = 200 ] && echo 1 || echo 0)" "token-id prompt: $code"
check "$(jcheck "$dir/body" 'd["usage"]["prompt_tokens"] == 3')" "token-id prompt: 3 prompt tokens"
code=$(post /v1/completions '{"prompt":[[84,104,101,32]],"max_tokens":2}')
check "$([ "$code" = 200 ] && echo 1 || echo 0)" "[[ids]] prompt: $code"
check "$(jcheck "$dir/body" 'd["usage"]["prompt_tokens"] == 4')" "[[ids]] prompt: 4 prompt tokens"
code=$(post /v1/completions '{"prompt":["Hello"],"max_tokens":2}')
check "$([ "$code" = 200 ] && echo 1 || echo 0)" "[\"text\"] prompt: $code"
code=$(post /v1/completions '{"prompt":"","max_tokens":2}')
check "$([ "$code" = 200 ] && echo 1 || echo 0)" "empty prompt (end-of-text): $code"

if [ $fake = 1 ]; then
    code=$(post /v1/completions '{"prompt":"x","max_tokens":40,"stop":["fox","zzz"]}')
    check "$(jcheck "$dir/body" 'd["choices"][0]["text"] == "The quick brown " and d["choices"][0]["finish_reason"] == "stop"')" \
        "stop string cuts the text"
    post /v1/completions '{"prompt":"x","max_tokens":40,"stop":"fox","stream":true}' -N >/dev/null
    sse_summary "$dir/body" >"$dir/sse.json"
    check "$(jcheck "$dir/sse.json" 'd["text"] == "The quick brown " and d["finish"] == "stop" and d["done"]')" \
        "stop string in a stream: held back, never sent"
    code=$(post /v1/completions '{"prompt":"EOT","max_tokens":40}')
    check "$(jcheck "$dir/body" 'd["choices"][0]["finish_reason"] == "stop" and d["usage"]["completion_tokens"] == 4')" \
        "end-of-text ends with stop"
    code=$(post /v1/completions '{"prompt":"FAIL","max_tokens":40}')
    check "$([ "$code" = 500 ] && echo 1 || echo 0)" "engine error: $code (want 500)"
    check "$(jcheck "$dir/body" 'd["error"]["code"] == "engine_error"')" "engine error code"
    post /v1/completions '{"prompt":"FAIL","max_tokens":40,"stream":true}' -N >/dev/null
    sse_summary "$dir/body" >"$dir/sse.json"
    check "$(jcheck "$dir/sse.json" 'd["error"] is not None and d["error"]["code"] == "engine_error" and d["done"]')" \
        "engine error in a stream: an error event, then [DONE]"
fi

# ---- tokenize / detokenize -------------------------------------------------------------------
code=$(post /tokenize '{"content":"Hello, world! \u00e9"}')
check "$([ "$code" = 200 ] && echo 1 || echo 0)" "/tokenize: $code"
ids=$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["tokens"]))' \
    "$dir/body" 2>/dev/null || echo '[]')
code=$(post /detokenize "{\"tokens\":$ids}")
check "$(jcheck "$dir/body" 'd["content"] == "Hello, world! \u00e9"')" "/detokenize round trip"
code=$(post /tokenize '{"content":"ab","with_pieces":true}')
check "$(jcheck "$dir/body" 'isinstance(d["tokens"][0], dict) and "".join(t["piece"] for t in d["tokens"]) == "ab"')" \
    "/tokenize with_pieces"
code=$(post /detokenize '{"tokens":[1,99999999]}')
check "$([ "$code" = 400 ] && echo 1 || echo 0)" "/detokenize bad id: $code (want 400)"

# ---- errors: 4xx in OpenAI's shape, and the server keeps serving ------------------------
n400=0
bad() { # bad WANT_STATUS WANT_PARAM_OR_- BODY_JSON
    want=$1 param=$2
    code=$(post /v1/completions "$3")
    ok=0
    if [ "$code" = "$want" ] && [ "$(is_openai_error "$dir/body")" = 1 ]; then
        if [ "$param" = - ] || [ "$(jcheck "$dir/body" "d['error']['param'] == '$param'")" = 1 ]; then
            ok=1
        fi
    fi
    [ "$want" = 400 ] && n400=$((n400 + 1))
    check $ok "bad request $3: got $code $(head -c 300 "$dir/body") (want $want, param $param)"
}
# several completions in one request, as OpenAI's reference defines them: choices indexed
# in order, prompt-major (prompt i's k-th at i * n + k); best_of's n picks best first by the
# sum of their log-probabilities; the prompt counted once per prompt in usage
code=$(post /v1/completions '{"prompt": "x", "max_tokens": 3, "n": 2, "temperature": 1, "seed": 5}')
check "$([ "$code" = 200 ] && jcheck "$dir/body" "d['object'] == 'text_completion' and [c['index'] for c in d['choices']] == [0, 1] and all(c['logprobs'] is None for c in d['choices'])")" \
    "n=2: two choices, indexed 0 and 1 (got $code $(head -c 300 "$dir/body"))"
code=$(post /v1/completions '{"prompt": ["x", [1, 2]], "max_tokens": 2, "n": 2, "temperature": 0}')
check "$([ "$code" = 200 ] && jcheck "$dir/body" "[c['index'] for c in d['choices']] == [0, 1, 2, 3] and d['choices'][0]['text'] == d['choices'][1]['text'] and d['choices'][2]['text'] == d['choices'][3]['text']")" \
    "two prompts x n=2: four choices, prompt-major; greedy samples of one prompt agree"
post /v1/completions '{"prompt": [1, 2], "max_tokens": 2, "temperature": 0}' >/dev/null
cp "$dir/body" "$dir/one_prompt.json"
post /v1/completions '{"prompt": ["x", [1, 2]], "max_tokens": 2, "temperature": 0}' >/dev/null
check "$(python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); print(int(b["choices"][1]["text"] == a["choices"][0]["text"] and b["usage"]["prompt_tokens"] > a["usage"]["prompt_tokens"]))' "$dir/one_prompt.json" "$dir/body")" \
    "a list of prompts: each choice is that prompt's own completion; usage counts both prompts"
code=$(post /v1/completions '{"prompt": "x", "max_tokens": 4, "n": 2, "best_of": 4, "temperature": 1, "seed": 9, "logprobs": 1}')
check "$([ "$code" = 200 ] && jcheck "$dir/body" "len(d['choices']) == 2 and sum(d['choices'][0]['logprobs']['token_logprobs']) >= sum(d['choices'][1]['logprobs']['token_logprobs'])")" \
    "best_of=4, n=2: two choices, best first by the sum of log-probabilities (got $code)"
code=$(post /v1/completions '{"prompt": "x", "max_tokens": 4, "best_of": 3, "temperature": 1}')
check "$([ "$code" = 200 ] && jcheck "$dir/body" "len(d['choices']) == 1 and d['choices'][0]['logprobs'] is None")" \
    "best_of=3: one choice; the ranking's log-probabilities are not in the answer"
code=$(post /v1/chat/completions '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "n": 2}')
check "$([ "$code" = 200 ] && jcheck "$dir/body" "d['object'] == 'chat.completion' and [c['index'] for c in d['choices']] == [0, 1]")" \
    "chat n=2: two choices"
bad 400 - '{"prompt": "x", '
bad 400 - '[1, 2, 3]'
bad 400 - ''
bad 400 prompt '{"max_tokens": 3}'
bad 400 prompt '{"prompt": 12}'
bad 400 prompt '{"prompt": []}'
bad 400 prompt '{"prompt": ["a", []]}'
bad 400 prompt '{"prompt": [1, "a"]}'
bad 400 prompt '{"prompt": [1, 99999999]}'
bad 400 prompt '{"prompt": [-1]}'
bad 400 n '{"prompt": "x", "n": 17}'
bad 400 n '{"prompt": "x", "n": 0}'
bad 400 stream '{"prompt": "x", "n": 2, "stream": true}'
bad 400 stream '{"prompt": ["x", "y"], "stream": true}'
bad 400 echo '{"prompt": "x", "echo": true, "stream": true}'
bad 400 logprobs '{"prompt": "x", "logprobs": 21}'
bad 400 logprobs '{"prompt": "x", "logprobs": 2, "stream": true}'
bad 400 logit_bias '{"prompt": "x", "logit_bias": {"abc": 1}}'
bad 400 presence_penalty '{"prompt": "x", "presence_penalty": 3}'
bad 400 suffix '{"prompt": "x", "suffix": "y"}'
bad 400 best_of '{"prompt": "x", "n": 3, "best_of": 2}'
bad 400 best_of '{"prompt": "x", "n": 2, "best_of": 17}'
bad 400 prompt '{"prompt": ["a", "b", "c", "d", "e", "f"], "n": 3}'
bad 400 max_tokens '{"prompt": "x", "max_tokens": 0}'
bad 400 max_tokens '{"prompt": "x", "max_tokens": 49}'
bad 400 max_tokens '{"prompt": "x", "max_tokens": "5"}'
bad 400 temperature '{"prompt": "x", "temperature": 5}'
bad 400 top_p '{"prompt": "x", "top_p": 0}'
bad 400 top_k '{"prompt": "x", "top_k": 1.5}'
bad 400 stop '{"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}'
bad 400 stop '{"prompt": "x", "stop": [""]}'
bad 400 stream '{"prompt": "x", "stream": "yes"}'
bad 404 model '{"prompt": "x", "model": "no-such-model"}'
# prompt + max_tokens over the 64-token context
long=$(python3 -c 'print("lorem ipsum dolor sit amet " * 40)')
bad 400 prompt "{\"prompt\": \"$long\", \"max_tokens\": 4}"
check "$(jcheck "$dir/body" 'd["error"]["code"] == "context_length_exceeded"')" \
    "oversize prompt: code context_length_exceeded"
bad 400 prompt '{"prompt": [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30], "max_tokens": 40}'

# the context boundary (64 tokens): a prompt of p tokens may ask for up to 64 - p + 1 tokens
ids() { python3 -c 'import sys; print(",".join(["84"] * int(sys.argv[1])))' "$1"; }
code=$(post /v1/completions "{\"prompt\":[$(ids 64)],\"max_tokens\":1,\"temperature\":0}")
check "$([ "$code" = 200 ] && echo 1 || echo 0)" "64-token prompt, max_tokens 1: $code (want 200)"
check "$(jcheck "$dir/body" 'd["usage"]["prompt_tokens"] == 64 and d["usage"]["completion_tokens"] == 1')" \
    "64-token prompt: one token generated"
code=$(post /v1/completions "{\"prompt\":[$(ids 64)],\"temperature\":0}")
check "$([ "$code" = 200 ] && echo 1 || echo 0)" "64-token prompt, default max_tokens: $code (want 200)"
code=$(post /v1/completions "{\"prompt\":[$(ids 62)],\"max_tokens\":3,\"temperature\":0,\"stop\":[\"\\u0001\"]}")
check "$([ "$code" = 200 ] && echo 1 || echo 0)" "62-token prompt, max_tokens 3: $code (want 200)"
check "$(jcheck "$dir/body" 'd["usage"]["completion_tokens"] <= 3 and d["choices"][0]["finish_reason"] in ("length", "stop")')" \
    "62-token prompt: at most 3 tokens"
bad 400 prompt "{\"prompt\":[$(ids 64)],\"max_tokens\":2}"
check "$(jcheck "$dir/body" 'd["error"]["code"] == "context_length_exceeded" and "context is 64 tokens" in d["error"]["message"] and "at most 1 new tokens" in d["error"]["message"]')" \
    "64-token prompt, max_tokens 2: the message states the rule: $(head -c 300 "$dir/body")"
bad 400 prompt "{\"prompt\":[$(ids 62)],\"max_tokens\":4}"
bad 400 prompt "{\"prompt\":[$(ids 65)],\"max_tokens\":1}"
check "$(jcheck "$dir/body" 'd["error"]["code"] == "context_length_exceeded" and "65 tokens" in d["error"]["message"] and "context of 64 tokens" in d["error"]["message"]')" \
    "65-token prompt: code and message"
bad 400 max_tokens '{"prompt": "x", "max_tokens": 1000000000000}'
check "$(jcheck "$dir/body" '"from 1 to 48" in d["error"]["message"] and "2147483647" not in d["error"]["message"]')" \
    "max_tokens 10^12: the message names the real range: $(head -c 200 "$dir/body")"

# body over --max-body-bytes=8192: 413 (announced by Content-Length, before reading it)
python3 -c 'import json; print(json.dumps({"prompt": "x" * 20000}))' >"$dir/big.json"
code=$(req POST /v1/completions "$dir/big.json" -H "Authorization: Bearer $KEY")
check "$([ "$code" = 413 ] && echo 1 || echo 0)" "oversize body: $code (want 413)"
check "$(is_openai_error "$dir/body")" "oversize body: error shape"
# the same body sent chunked (no Content-Length): 413 once the limit is crossed
code=$(req POST /v1/completions "$dir/big.json" -H "Authorization: Bearer $KEY" \
    -H "Transfer-Encoding: chunked")
check "$([ "$code" = 413 ] && echo 1 || echo 0)" "oversize chunked body: $code (want 413)"

code=$(get /v1/nothing-here)
check "$([ "$code" = 404 ] && echo 1 || echo 0)" "unknown route: $code (want 404)"
check "$(is_openai_error "$dir/body")" "unknown route: error shape"
code=$(get /v1/completions -D "$dir/headers")
check "$([ "$code" = 405 ] && echo 1 || echo 0)" "GET /v1/completions: $code (want 405)"
check "$(is_openai_error "$dir/body")" "wrong method: error shape"
check "$(grep -qi '^allow: POST' "$dir/headers" && echo 1 || echo 0)" "wrong method: Allow header"
code=$(req DELETE /health "")
check "$([ "$code" = 405 ] && echo 1 || echo 0)" "DELETE /health: $code (want 405)"

# malformed request heads: answered at once in OpenAI's shape (not libmicrohttpd's HTML),
# and closed; a connection that sends nothing gets 408 after the head timeout (10 s)
raw '' 30 "$dir/idle.body" >"$dir/idle.out" &
idle_pid=$!
for bytes in '\x00\x01\x02 garbage' '\x00\x01\x02 garbage\r\n\r\n' 'GARBAGE\r\n\r\n' \
    'GET / HTTP/1.1 extra\r\n\r\n' 'GET /health HTTP/1.1\r\nContent-Length: 1x\r\n\r\n' \
    'GET /health HTTP/1.1\r\n folded: header\r\n\r\n'; do
    out=$(raw "$bytes" 5)
    check "$([ "$out" = "400 1" ] && [ "$(is_openai_error "$dir/body")" = 1 ] && echo 1 || echo 0)" \
        "malformed head $bytes: '$out' $(head -c 200 "$dir/body") (want 400 in the JSON shape, closed)"
    n400=$((n400 + 1))
done
out=$(raw 'GET /health HTTP/2.0\r\n\r\n' 5)
check "$([ "$out" = "505 1" ] && [ "$(is_openai_error "$dir/body")" = 1 ] && echo 1 || echo 0)" \
    "HTTP/2.0 request line: '$out' (want 505, JSON, closed)"
big=$(python3 -c 'print("GET /health HTTP/1.1\\r\\nX-Big: " + "a" * 20000 + "\\r\\n\\r\\n")')
out=$(raw "$big" 5)
check "$([ "$out" = "431 1" ] && [ "$(is_openai_error "$dir/body")" = 1 ] && echo 1 || echo 0)" \
    "20 KB of headers: '$out' $(head -c 200 "$dir/body") (want 431, JSON, closed)"

# still serving after all that
code=$(post /v1/completions '{"prompt":"still there?","max_tokens":3}')
check "$([ "$code" = 200 ] && echo 1 || echo 0)" "serving after bad requests: $code"

wait $idle_pid
check "$([ "$(cat "$dir/idle.out")" = "408 1" ] && [ "$(is_openai_error "$dir/idle.body")" = 1 ] && echo 1 || echo 0)" \
    "a connection that sends nothing: '$(cat "$dir/idle.out")' (want 408, closed)"

# ---- metrics ---------------------------------------------------------------------------------
code=$(get /metrics -D "$dir/headers")
check "$([ "$code" = 200 ] && echo 1 || echo 0)" "/metrics: $code"
check "$(grep -qi '^content-type: text/plain; version=0.0.4' "$dir/headers" && echo 1 || echo 0)" \
    "/metrics content type"
v=$(metric 'tpmpi:http_requests_total{code="400"}')
check "$([ "$v" != missing ] && [ "$v" -ge "$n400" ] && echo 1 || echo 0)" \
    "400 counter $v >= $n400 bad requests sent"
v=$(metric 'tpmpi:http_requests_total{code="401"}')
check "$([ "$v" != missing ] && [ "$v" -ge 3 ] && echo 1 || echo 0)" "401 counter $v >= 3"
for h in time_to_first_token_seconds inter_token_latency_seconds e2e_request_latency_seconds; do
    v=$(metric "tpmpi:${h}_count")
    inf=$(metric "tpmpi:${h}_bucket{le=\"+Inf\"}")
    check "$([ "$v" != missing ] && [ "$v" -gt 0 ] && [ "$v" = "$inf" ] && echo 1 || echo 0)" \
        "histogram $h: count $v, +Inf bucket $inf"
done
v=$(metric 'tpmpi:generation_tokens_total')
check "$([ "$v" != missing ] && [ "$v" -gt 0 ] && echo 1 || echo 0)" "generation tokens $v > 0"
v=$(metric 'tpmpi:request_finished_total{finished_reason="length"}')
check "$([ "$v" != missing ] && [ "$v" -gt 0 ] && echo 1 || echo 0)" "finished (length) $v > 0"
for g in num_requests_running num_requests_waiting prompt_tokens_total num_slots; do
    v=$(metric "tpmpi:$g")
    check "$([ "$v" != missing ] && echo 1 || echo 0)" "metric tpmpi:$g present"
done

# ---- counted before the answer is released: /metrics right after an answer has it ----------
finished_sum() {
    get /metrics >/dev/null
    awk '$1 ~ /^tpmpi:request_finished_total/ { s += $2 } END { print s + 0 }' "$dir/body"
}
n_late=0
for i in 1 2 3 4 5 6 7 8; do
    a=$(finished_sum)
    a200=$(metric 'tpmpi:http_requests_total{code="200"}')
    if [ $((i % 2)) = 0 ]; then
        post /v1/completions '{"prompt":"count me","max_tokens":3,"stream":true}' -N >/dev/null
    else
        post /v1/completions '{"prompt":"count me","max_tokens":3}' >/dev/null
    fi
    b=$(finished_sum)
    b200=$(metric 'tpmpi:http_requests_total{code="200"}')
    # +1 for the completion, +1 for the second /metrics itself (it counts itself)
    if [ "$b" != $((a + 1)) ] || [ "$b200" != $((a200 + 2)) ]; then
        n_late=$((n_late + 1))
        echo "request $i: finished $a -> $b, 200s $a200 -> $b200"
    fi
done
check "$([ $n_late = 0 ] && echo 1 || echo 0)" \
    "/metrics read right after each answer counts it (late in $n_late of 8)"
if [ $fake = 1 ]; then
    a=$(finished_sum)
    post /v1/completions '{"prompt":"x","max_tokens":40,"stop":"fox","stream":true}' -N >/dev/null
    b=$(finished_sum)
    check "$([ "$b" = $((a + 1)) ] && echo 1 || echo 0)" \
        "a stream ended by a stop string is counted before its [DONE]: $a -> $b"
fi

# ---- a client that goes away: its job is cancelled ----------------------------------------
if [ $fake = 1 ]; then
    serve_stop 10
    rc=$?
    check "$([ $rc = 0 ] && echo 1 || echo 0)" "fake server exit status $rc"

    # a slow engine (50 ms a token) for the disconnect, queue and shutdown checks
    export FAKE_READY_MS=0 FAKE_STEP_MS=50
    serve_start "$dir/server2.log" --api-key="$KEY" --ctx-size=2048 --max-tokens=1000 \
        --parallel=1 --max-queue=1
    serve_wait_ready 20 || { cat "$dir/server2.log"; echo "server 2 did not start"; exit 1; }

    get /metrics >/dev/null
    m200=$(metric 'tpmpi:http_requests_total{code="200"}')
    # streaming client reads 2 events and hangs up
    printf '{"prompt":"x","max_tokens":1000,"stream":true}' >"$dir/in"
    curl -s -N -H "Authorization: Bearer $KEY" --data-binary "@$dir/in" \
        "$SERVE_URL/v1/completions" 2>/dev/null | head -c 300 >/dev/null
    # non-streaming client gives up after 0.5 s
    printf '{"prompt":"x","max_tokens":1000}' >"$dir/in"
    curl -s --max-time 0.5 -H "Authorization: Bearer $KEY" --data-binary "@$dir/in" \
        "$SERVE_URL/v1/completions" >/dev/null 2>&1
    n=0
    while [ $n -lt 30 ]; do
        get /metrics >/dev/null
        c=$(metric 'tpmpi:request_finished_total{finished_reason="cancelled"}')
        r=$(metric 'tpmpi:num_requests_running')
        [ "$c" = 2 ] && [ "$r" = 0 ] && break
        sleep 0.1
        n=$((n + 1))
    done
    check "$([ "$c" = 2 ] && [ "$r" = 0 ] && echo 1 || echo 0)" \
        "disconnected clients cancel their jobs: cancelled $c (want 2), running $r (want 0)"
    # both count as 499, the stream (whose 200 headers went out) as well
    v=$(metric 'tpmpi:http_requests_total{code="499"}')
    v200=$(metric 'tpmpi:http_requests_total{code="200"}')
    vo=$(metric 'tpmpi:http_requests_total{code="other"}')
    check "$([ "$v" = 2 ] && [ "$vo" = 0 ] && echo 1 || echo 0)" \
        "disconnects counted as 499: $v (want 2), other $vo (want 0)"
    check "$([ "$v200" = $((m200 + n + 1)) ] && echo 1 || echo 0)" \
        "the disconnected stream is not a 200: $v200 200s (want $((m200 + n + 1)), the /metrics polls)"
    maxn=$(sed -n 's/.*job cancelled after \([0-9]*\) tokens.*/\1/p' "$dir/server2.log" | sort -n | tail -1)
    check "$([ -n "$maxn" ] && [ "$maxn" -lt 40 ] && echo 1 || echo 0)" \
        "cancelled jobs stopped early (at most $maxn of 1000 tokens)"

    # queue: 1 slot + 1 waiting; the third concurrent request is refused with 503
    printf '{"prompt":"x","max_tokens":40}' >"$dir/in"
    # (each step waits until /metrics shows the previous request running, then waiting)
    qpids=
    for i in 1 2; do
        curl -s -o "$dir/q$i.json" -w '%{http_code}' -H "Authorization: Bearer $KEY" \
            --data-binary "@$dir/in" "$SERVE_URL/v1/completions" >"$dir/q$i.code" 2>/dev/null &
        qpids="$qpids $!"
        n=0
        while [ $n -lt 100 ]; do
            get /metrics >/dev/null
            if [ $i = 1 ]; then
                [ "$(metric tpmpi:num_requests_running)" = 1 ] && break
            else
                [ "$(metric tpmpi:num_requests_waiting)" = 1 ] && break
            fi
            sleep 0.05
            n=$((n + 1))
        done
    done
    code=$(post /v1/completions '{"prompt":"x","max_tokens":20}' -D "$dir/headers")
    check "$([ "$code" = 503 ] && echo 1 || echo 0)" "full queue: $code (want 503)"
    check "$(jcheck "$dir/body" 'd["error"]["code"] == "queue_full"')" "full queue: code"
    check "$(grep -qi '^retry-after:' "$dir/headers" && echo 1 || echo 0)" "full queue: Retry-After"
    for p in $qpids; do
        wait "$p"
    done
    check "$([ "$(cat "$dir/q1.code")" = 200 ] && [ "$(cat "$dir/q2.code")" = 200 ] && echo 1 || echo 0)" \
        "the running and the queued request complete: $(cat "$dir/q1.code") $(cat "$dir/q2.code")"

    # graceful shutdown: an open stream ends with an error event and [DONE]; exit status 0
    printf '{"prompt":"x","max_tokens":1000,"stream":true}' >"$dir/in"
    curl -s -N -H "Authorization: Bearer $KEY" --data-binary "@$dir/in" \
        "$SERVE_URL/v1/completions" >"$dir/stream_stop.txt" 2>/dev/null &
    cpid=$!
    sleep 0.5
    t0=$(date +%s)
    serve_stop 10
    rc=$?
    t1=$(date +%s)
    wait $cpid
    check "$([ $rc = 0 ] && echo 1 || echo 0)" "SIGTERM: exit status $rc (want 0)"
    check "$([ $((t1 - t0)) -le 3 ] && echo 1 || echo 0)" "SIGTERM: stopped in $((t1 - t0)) s"
    sse_summary "$dir/stream_stop.txt" >"$dir/sse.json"
    check "$(jcheck "$dir/sse.json" 'd["done"] and d["error"] is not None and d["error"]["code"] == "shutting_down" and len(d["text"]) > 0')" \
        "SIGTERM: the open stream gets text, an error event and [DONE]"
    grep -q 'http: stopped' "$dir/server2.log"
    check "$([ $? = 0 ] && echo 1 || echo 0)" "SIGTERM: front-end stopped"
else
    # graceful shutdown of the real server with a stream open
    printf '{"prompt":"x","max_tokens":40,"stream":true}' >"$dir/in"
    curl -s -N -H "Authorization: Bearer $KEY" --data-binary "@$dir/in" \
        "$SERVE_URL/v1/completions" >"$dir/stream_stop.txt" 2>/dev/null &
    cpid=$!
    sleep 0.2
    serve_stop_clean 60
    rc=$?
    wait $cpid
    check "$([ $rc = 0 ] && echo 1 || echo 0)" "SIGTERM: exit status $rc (want 0)"
    sse_summary "$dir/stream_stop.txt" >"$dir/sse.json"
    check "$(jcheck "$dir/sse.json" 'd["done"] and d["bad"] == 0')" \
        "SIGTERM: the open stream ends with [DONE]"
fi

if [ "$fail" -ne 0 ]; then
    echo "---- server log"
    tail -50 "$dir/server.log"
    [ -f "$dir/server2.log" ] && tail -30 "$dir/server2.log"
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
