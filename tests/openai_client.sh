#!/bin/sh
# SPDX-License-Identifier: MIT
# openai_client.sh: a real client against the server: the `openai` Python package from PyPI
# (installed into a venv under the build directory, reused by later runs) lists the models,
# runs a non-streaming and a streaming completion (same greedy text, same usage), passes
# top_k through extra_body, runs a chat completion with and without streaming (same text,
# the role in the first delta, usage), asks for log-probabilities (echo, chat), and gets the right exception classes for a bad request (400),
# an unknown model (404) and a wrong API key (401). SKIP (77) when PyPI cannot be reached.
# SERVE_TARGET=fake (default): tests/serve/fake_server; SERVE_TARGET=real with SERVE_CKPT:
# `mpirun tpmpi --mode=serve` (see tests/serve_http_real.sh).
set -u
: "${TOP_BUILDDIR:=.}"
: "${TOP_SRCDIR:=$(dirname "$0")/..}"
SERVE_TARGET=${SERVE_TARGET:-fake}
dir=$TOP_BUILDDIR/tests/openai_client_$SERVE_TARGET.d
venv=${TPM_OPENAI_VENV:-${TPMPI_CACHE:-$TOP_BUILDDIR/tests/cache}/venv-openai}
rm -rf "$dir" && mkdir -p "$dir"
. "$TOP_SRCDIR/tests/serve_lib.sh"

if [ "$SERVE_TARGET" = fake ] && [ ! -x "$FAKE_SERVER" ]; then
    echo "SKIP: $FAKE_SERVER not built"
    exit 77
fi

pypi_reachable() {
    python3 - <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen("https://pypi.org/simple/openai/", timeout=15).read(64)
except Exception as e:
    sys.stderr.write("PyPI not reachable: %s\n" % e)
    sys.exit(1)
EOF
}

# make -j runs this script twice at once (fake and real server): one installs, the other waits
install_openai() {
    "$venv/bin/python" -c 'import openai' >/dev/null 2>&1 && return 0
    pypi_reachable || return 77
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    if ! python3 -m venv "$venv" >"$dir/venv.log" 2>&1 ||
        ! "$venv/bin/pip" install --quiet --disable-pip-version-check 'openai>=1.0,<3' \
            >>"$dir/venv.log" 2>&1; then
        cat "$dir/venv.log"
        rm -rf "$venv"
        return 1
    fi
}
mkdir -p "$(dirname "$venv")"
if command -v flock >/dev/null 2>&1; then
    (flock 9 && install_openai) 9>"$venv.lock"
else
    install_openai
fi
case $? in
0) ;;
77)
    echo "SKIP: PyPI is not reachable; cannot install the openai package"
    exit 77
    ;;
*)
    echo "FAIL: could not create the venv or install openai from PyPI"
    exit 1
    ;;
esac

KEY=client-key-42
trap 'serve_stop 5 >/dev/null 2>&1' EXIT
[ "$SERVE_TARGET" = fake ] && export FAKE_READY_MS=0 FAKE_STEP_MS=2
serve_start "$dir/server.log" --api-key="$KEY" --ctx-size=64 --max-tokens=32
if ! serve_wait_ready 180; then
    cat "$dir/server.log"
    echo "server did not become ready"
    exit 1
fi

"$venv/bin/python" - "$SERVE_URL" "$KEY" "$SERVE_TARGET" <<'EOF'
import sys
import openai

url, key, target = sys.argv[1], sys.argv[2], sys.argv[3]
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what)


client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)
print("openai", openai.__version__)

models = client.models.list()
model = models.data[0].id
check(len(models.data) == 1 and models.data[0].object == "model", "models.list")

args = dict(model=model, prompt="The quick", max_tokens=12, temperature=0)
r = client.completions.create(**args)
text = r.choices[0].text
print("non-streaming: %r finish=%s usage=%s" % (text, r.choices[0].finish_reason, r.usage))
check(r.object == "text_completion" and r.id.startswith("cmpl-"), "completion object")
check(r.choices[0].finish_reason in ("length", "stop"), "finish_reason")
check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "usage sum")
check(1 <= r.usage.completion_tokens <= 12, "completion_tokens within max_tokens")
if target == "fake":
    check(text.startswith("The quick brown fox") and r.choices[0].finish_reason == "length",
          "fake engine text")

parts, finish, usage, n_chunks = [], None, None, 0
stream = client.completions.create(stream=True, stream_options={"include_usage": True}, **args)
for chunk in stream:
    n_chunks += 1
    if chunk.choices:
        parts.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage is not None:
        usage = chunk.usage
print("streaming: %d chunks %r finish=%s usage=%s" % (n_chunks, "".join(parts), finish, usage))
check("".join(parts) == text, "streamed text equals the non-streamed text")
check(finish == r.choices[0].finish_reason, "streamed finish_reason")
check(usage is not None and usage.completion_tokens == r.usage.completion_tokens,
      "streamed usage")
check(n_chunks >= 3, "several chunks")

r2 = client.completions.create(model=model, prompt="Hello", max_tokens=4, temperature=0.8,
                               top_p=0.9, seed=7, stop=["\n\n"], extra_body={"top_k": 5})
check(r2.usage.completion_tokens >= 1, "sampling parameters and extra_body top_k")

# chat completions, as most clients and tools call them
msgs = [{"role": "user", "content": "Hi"}]  # ChatML costs ~30 tokens of a 64-token context
c = client.chat.completions.create(model=model, messages=msgs, max_completion_tokens=8,
                                   temperature=0)
ctext = c.choices[0].message.content
print("chat: %r finish=%s usage=%s" % (ctext, c.choices[0].finish_reason, c.usage))
check(c.object == "chat.completion" and c.id.startswith("chatcmpl-"), "chat object")
check(c.choices[0].message.role == "assistant", "chat message role")
check(c.choices[0].finish_reason in ("length", "stop"), "chat finish_reason")
check(1 <= c.usage.completion_tokens <= 8 and c.usage.prompt_tokens > 2, "chat usage")
if target == "fake":
    check(ctext.startswith("The quick brown") and c.usage.completion_tokens == 8,
          "fake engine chat text")
parts, roles, finish, usage = [], [], None, None
for chunk in client.chat.completions.create(model=model, messages=msgs, max_tokens=8,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}):
    check(chunk.object == "chat.completion.chunk", "chat chunk object")
    if chunk.choices:
        d = chunk.choices[0].delta
        if d.role:
            roles.append(d.role)
        parts.append(d.content or "")
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage is not None:
        usage = chunk.usage
print("chat streaming: %r finish=%s" % ("".join(parts), finish))
check("".join(parts) == ctext, "streamed chat text equals the non-streamed one")
check(roles == ["assistant"], "the role comes once, in the first delta: %s" % roles)
check(finish == c.choices[0].finish_reason, "streamed chat finish_reason")
check(usage is not None and usage.completion_tokens == c.usage.completion_tokens,
      "streamed chat usage")
try:
    client.chat.completions.create(model=model, messages=msgs, tools=[{"type": "function",
                                   "function": {"name": "f", "parameters": {}}}])
    check(False, "tools accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400, "chat tools -> BadRequestError")

# log-probabilities, as loglikelihood evaluation asks for them
r3 = client.completions.create(model=model, prompt="The quick", max_tokens=1, temperature=0,
                               logprobs=2, echo=True)
lp = r3.choices[0].logprobs
check(r3.choices[0].text.startswith("The quick") and lp.token_logprobs[0] is None,
      "echo + logprobs: the prompt's text, the first token null")
check(len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset), "logprobs lists")
if target == "real":
    check(len(lp.tokens) == r3.usage.prompt_tokens + r3.usage.completion_tokens and
          all(v is not None and v <= 0 for v in lp.token_logprobs[1:]), "one value per token")
c3 = client.chat.completions.create(model=model, messages=msgs, max_tokens=2, temperature=0,
                                    logprobs=True, top_logprobs=2)
if target == "real":
    check(len(c3.choices[0].logprobs.content) == c3.usage.completion_tokens and
          all(len(e.top_logprobs) == 2 for e in c3.choices[0].logprobs.content),
          "chat logprobs through the client")
else:
    check(c3.choices[0].logprobs is not None, "chat logprobs object (fake engine: empty)")

c4 = client.completions.create(model=model, prompt="x", n=2, max_tokens=3)
check([c.index for c in c4.choices] == [0, 1], "completions n=2: two choices through the client")
c5 = client.completions.create(model=model, prompt=["x", "y"], max_tokens=2, best_of=2)
check([c.index for c in c5.choices] == [0, 1], "two prompts with best_of=2: one choice each")
c6 = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                    n=2, max_tokens=3)
check([c.index for c in c6.choices] == [0, 1], "chat n=2: two choices through the client")
try:
    client.completions.create(model=model, prompt="x", n=2, stream=True)
    check(False, "n=2 with stream accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400 and "stream" in str(e), "n=2 with stream -> BadRequestError")
try:
    client.completions.create(model="no-such-model", prompt="x")
    check(False, "unknown model accepted")
except openai.NotFoundError as e:
    check(e.status_code == 404, "unknown model -> NotFoundError")
try:
    openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    check(False, "wrong key accepted")
except openai.AuthenticationError as e:
    check(e.status_code == 401, "wrong key -> AuthenticationError")

print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
EOF
rc=$?
serve_stop_clean 30
src=$?
if [ $rc -ne 0 ] || [ $src -ne 0 ]; then
    echo "---- server log (server exit status $src)"
    tail -40 "$dir/server.log"
    exit 1
fi
exit 0
