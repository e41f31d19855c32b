#!/usr/bin/env bash
# Issue 9 on the GPU machine: weight memory of a GPU stage in bf16 and in int8, and both
# runs' greedy tokens, on the random 134 M-parameter Llama. Builds through gpu_check.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
BUILD_ONLY=1 OUT=$OUT scripts/gpu_check.sh >/dev/null || { tail -30 "$OUT/build.log"; exit 1; }
export LD_LIBRARY_PATH=$PWD/.deps/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
build-gpu/bench/random_model --out /tmp/m134 >/dev/null
cat >/tmp/gpu_int8.toml <<'TOML'
[model]
path = "/tmp/m134"
dtype = "bfloat16"
[placement]
max_memory = { "cuda:0" = "20GiB", "cpu" = "16GiB" }
[runtime]
max_batch = 4
max_seq_len = 256
TOML
for q in none int8; do
  build-gpu/cascade generate --config /tmp/gpu_int8.toml --quantization $q --prompt-ids 1,2,3,4,5,6,7,8 \
    --max-new-tokens 32 --json >"$OUT/int8_$q.json" 2>"$OUT/int8_$q.log"
  echo "== $q: exit $?: $(grep -o 'ready in.*' "$OUT/int8_$q.log") | $(grep -o 'generated.*' "$OUT/int8_$q.log")"
  cat "$OUT/int8_$q.json"
done
