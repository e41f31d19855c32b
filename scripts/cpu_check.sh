#!/usr/bin/env bash
# The CPU decode kernels on a machine of the GPU kind's host (its CPU, not its GPU): the
# GEMV bench at one thread and at every core, then the all-CPU decode of the DESIGN §10
# anchor with an older build (A) and this one (B) side by side (scripts/ab_decode.sh), and
# the GPU 2 GiB + CPU-computed offload row the same way.
#   BASE=DIR scripts/cpu_check.sh   (DIR: a source tree of the older commit), or
#   BASE_PATCH=FILE scripts/cpu_check.sh   (FILE: `git diff OLD` of this tree; A is this
#   tree with FILE taken back, for machines that get no .git)
# Builds this tree through scripts/gpu_check.sh (BUILD_ONLY) and BASE's `cascade` target
# with the same flags; writes logs and a summary under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
summary="$OUT/cpu_summary.txt"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
base=${BASE:-}
if [ -z "$base" ]; then
  base=/tmp/cascade-base
  patch_file=$(realpath "${BASE_PATCH:?set BASE or BASE_PATCH}")
  rm -rf "$base" && mkdir -p "$base"
  tar -c --exclude='./build*' --exclude=./.git --exclude=./.deps --exclude=./tests/data --exclude=./models . | tar -x -C "$base"
  (cd "$base" && patch -R -s -p1 <"$patch_file") || exit 1
fi
deps=$PWD/.deps/root
# The tokenizer's PCRE2/ICU from the carried Debian packages where the machine lacks them.
[ -f /usr/include/unicode/normalizer2.h ] ||
  export LD_LIBRARY_PATH=$deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
(cmake -S "$base" -B build-base -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$torch_prefix" \
  -DCASCADE_EXTRA_INCLUDE="$deps/usr/include" -DCASCADE_EXTRA_LIB="$deps/usr/lib/x86_64-linux-gnu" &&
  cmake --build build-base -j"$(nproc)" --target cascade) >"$OUT/build-base.log" 2>&1 &
BUILD_ONLY=1 scripts/gpu_check.sh
wait $! || { tail -20 "$OUT/build-base.log"; exit 1; }
{
  lscpu | grep -E 'Model name|^CPU\(s\)'
  echo "features: $(grep -o -w -E 'avx2|fma|avx512f|avx512bw|avx512_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  for t in 1 "$(nproc)"; do build-gpu/bench/cpu_gemv_bench --threads "$t"; done
  export DTYPE=${DTYPE:-bfloat16} NEW_TOKENS=${NEW_TOKENS:-16} ROUNDS=${ROUNDS:-1} RANDOM_MODEL=build-gpu/bench/random_model
  echo "== all layers on the CPU, $(nproc) threads"
  BATCHES=${BATCHES:-1 16} scripts/ab_decode.sh build-base/cascade build-gpu/cascade
  echo "== GPU 2 GiB + the rest computed on the CPU (offload_compute = \"cpu\")"
  MAX_MEMORY='"cuda:0" = "2GiB", "cpu" = "100GiB"' PLACEMENT_EXTRA='offload_compute = "cpu"' BATCHES=1 \
    scripts/ab_decode.sh build-base/cascade build-gpu/cascade
} 2>&1 | tee "$summary"
