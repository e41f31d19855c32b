#!/usr/bin/env bash
# Issue 9 on the GPU machine: weight memory of a GPU stage in bf16 and in int8, and both
# runs' greedy tokens, on the random 134 M-parameter Llama. Builds like gpu_check.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
deps=$PWD/.deps/root
export LD_LIBRARY_PATH=$deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$torch_prefix" \
  -DCASCADE_EXTRA_INCLUDE="$deps/usr/include" -DCASCADE_EXTRA_LIB="$deps/usr/lib/x86_64-linux-gnu" >"$OUT/build.log" 2>&1
cmake --build build-gpu -j"$(nproc)" --target cascade random_model >>"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
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
