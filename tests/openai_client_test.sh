#!/usr/bin/env bash
# The official OpenAI Node.js client (tests/openai/, installed by scripts/install_deps.sh)
# against a live `cascade serve` over TCP with an API key, started without a config file
# (--model, flags and CASCADE_* variables): the demo model, given a chat template. ctest runs it (label mpi): tests/openai_client_test.sh CASCADE_BINARY
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cascade=$1
if [ ! -d "$here/openai/node_modules/openai" ]; then
  echo "openai_client_test: tests/openai/node_modules is missing: run scripts/install_deps.sh (Node.js >= 18 and npm)" >&2
  exit 1
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
demo=$here/../models/demo
mkdir "$work/model"
for f in config.json generation_config.json model.safetensors tokenizer.json; do ln -s "$demo/$f" "$work/model/$f"; done
cat >"$work/model/tokenizer_config.json" <<'JSON'
{"eos_token": "<|endoftext|>",
 "chat_template": "{% if messages | length > 3 %}{{ raise_exception('at most three messages, please') }}{% endif %}{% for m in messages %}{{ m.role | capitalize }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"}
JSON
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# No config file: the checkpoint, flags and CASCADE_* variables (issue 20, item 5).
CASCADE_RUNTIME_MAX_BATCH=4 CASCADE_RUNTIME_MAX_SEQ_LEN=256 CASCADE_RUNTIME_THREADS_PER_STAGE=1 \
  "$cascade" serve --model "$work/model" --socket "$work/d.sock" --port "$port" --api-key test-key \
  >"$work/serve.log" 2>&1 &
pid=$!
up=""
for _ in $(seq 600); do  # until /health answers 200 (the socket exists before the model is loaded)
  if curl -sf -m 2 -H "Authorization: Bearer test-key" "http://127.0.0.1:$port/health" >/dev/null; then up=1; break; fi
  kill -0 "$pid" 2>/dev/null || { cat "$work/serve.log" >&2; echo "openai_client_test: the daemon exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$up" ] || { cat "$work/serve.log" >&2; echo "openai_client_test: the daemon did not come up in 60 s" >&2; exit 1; }
CASCADE_BASE_URL="http://127.0.0.1:$port/v1" CASCADE_API_KEY=test-key CASCADE_MODEL=model \
  timeout 120 node "$here/openai/client_test.mjs" || { tail -20 "$work/serve.log" >&2; exit 1; }
