#!/usr/bin/env bash
# Compiles each CUDA kernel file for sm_90 with nvcc, as the GPU build does, and fails
# naming the file that does not compile.
#   tests/cuda_kernels_compile_test.sh NVCC SOURCE_DIR FILE.cu...
set -uo pipefail
nvcc=$1 src=$2
shift 2
[ $# -gt 0 ] || { echo "no .cu files given"; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failed=""
for f in "$@"; do
  if "$nvcc" -std=c++17 -I"$src" -arch=sm_90 -c "$f" -o "$out/$(basename "$f").o"; then
    echo "compiled: $f"
  else
    failed="$failed $f"
  fi
done
[ -z "$failed" ] || { echo "nvcc failed on:$failed"; exit 1; }
