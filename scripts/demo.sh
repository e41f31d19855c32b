#!/usr/bin/env bash
# The README's first command: install, build, then run the daemon on the bundled demo
# model (models/demo: 5.4 M parameters, Llama architecture, trained on Python sources by
# scripts/train_demo_model.py) split across two CPU stage processes and the disk tier
# (examples/demo.toml), ask it a few prompts over its Unix socket with curl and with
# `cascade complete`, show the device map and tokens/s, and shut it down.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # Open MPI refuses root otherwise
command -v curl >/dev/null || { echo "demo: curl is missing (apt-get install curl)"; exit 1; }
sock=$PWD/cascade.sock
log=$(mktemp)
rm -f "$sock"  # one left by a killed daemon would end the wait below before this one listens
./build/cascade serve --config examples/demo.toml 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
# The socket listens while the stages start; the log's "ready" line says they are up.
for _ in $(seq 300); do
  [ -S "$sock" ] && grep -q '^cascade: ready' "$log" && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
[ -S "$sock" ] && grep -q '^cascade: ready' "$log" || { cat "$log"; echo "demo: the daemon did not start within 30 s"; exit 1; }
echo
echo "== the daemon's start-up (device map, stages, time to ready)"
grep -v '^$' "$log"
echo
echo "== curl --unix-socket $sock http://localhost/v1/completions (non-streaming, greedy)"
curl -s --unix-socket "$sock" http://localhost/v1/completions \
  -d '{"prompt": "import os\n\n\ndef read_config(path):\n", "max_tokens": 60, "temperature": 0}' |
  python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["choices"][0]["text"]); print("usage:", r["usage"])'
echo
echo "== curl, streaming (SSE), sampled: temperature 0.7, seed 4"
curl -sN --unix-socket "$sock" http://localhost/v1/completions \
  -d '{"prompt": "class Stack:\n    def __init__(self):\n", "max_tokens": 40, "temperature": 0.7, "seed": 4, "stream": true}' \
  >"$log.sse"
head -n 6 "$log.sse"
echo "… ($(grep -c '^data: {' "$log.sse") chunks in all, then $(tail -n 2 "$log.sse" | head -n 1))"
echo "the streamed text:"
grep '^data: {' "$log.sse" | sed 's/^data: //' |
  python3 -c 'import json,sys; print("".join(json.loads(l)["choices"][0]["text"] for l in sys.stdin))'
rm -f "$log.sse"
echo
echo "== cascade complete --socket $sock 'for i in range(10):'"
./build/cascade complete --socket "$sock" --max-tokens 60 $'for i in range(10):\n'
echo
echo "== GET /health and the token counters from GET /metrics"
curl -s --unix-socket "$sock" http://localhost/health
echo
curl -s --unix-socket "$sock" http://localhost/metrics | grep -E '^cascade_(generated_tokens|requests|stage_busy)'
echo
echo "== tokens/s: 8 concurrent greedy requests of 64 tokens"
start=$(date +%s.%N)
clients=()
for i in $(seq 8); do
  curl -s --unix-socket "$sock" http://localhost/v1/completions \
    -d "{\"prompt\": \"def f$i(x):\", \"max_tokens\": 64, \"temperature\": 0, \"ignore_eos\": true}" >/dev/null &
  clients+=($!)
done
wait "${clients[@]}"
end=$(date +%s.%N)
python3 -c "print(f'512 tokens in {$end - $start:.2f} s: {512 / ($end - $start):.0f} tokens/s')"
echo
echo "== SIGTERM: the daemon finishes, stops its stages and removes the socket"
kill -TERM $pid
wait $pid && echo "daemon exited 0"; tail -2 "$log"
[ ! -e "$sock" ] && echo "socket removed"
trap 'rm -f "$log"' EXIT
