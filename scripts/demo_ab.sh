#!/usr/bin/env bash
# The demo's 8-client load (scripts/demo.sh's last figure) on two builds in turn, for an
# A/B on one machine: each build serves examples/demo.toml, takes one warm-up round of 8
# concurrent greedy 64-token requests, then RUNS timed rounds; ROUNDS alternations.
#   scripts/demo_ab.sh OLD/cascade NEW/cascade     (ROUNDS=2 RUNS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
sock=$PWD/cascade.sock
load() {
  local pids=()
  for _ in $(seq 8); do
    curl -s --unix-socket "$sock" http://localhost/v1/completions \
      -d '{"prompt": "def f(x", "max_tokens": 64, "temperature": 0, "ignore_eos": true}' >/dev/null &
    pids+=($!)
  done
  wait "${pids[@]}"
}
serve() {  # prints the tok/s of each timed run
  rm -f "$sock"
  "$1" serve --config examples/demo.toml 2>/dev/null &
  local pid=$! out=""
  for _ in $(seq 300); do curl -s --unix-socket "$sock" http://localhost/health 2>/dev/null | grep -q '"ok"' && break; sleep 0.1; done
  load
  for _ in $(seq "${RUNS:-3}"); do
    local s e
    s=$(date +%s.%N); load; e=$(date +%s.%N)
    out="$out $(python3 -c "print(round(512 / ($e - $s)))")"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$out"
}
for r in $(seq "${ROUNDS:-2}"); do
  echo "round $r  A:$(serve "$1")  B:$(serve "$2")"
done
