#!/usr/bin/env bash
# Issue 18's mixture-of-experts offload report, on a GPU machine: a random Mixtral larger
# than a 2 GiB GPU budget (GPU 2 GiB + the CPU), offloaded as whole layers (A:
# placement.experts = "with-layer", accelerate's order) against the experts apart from
# attention (B: "auto": attention, norms, routers, embedding and head on the GPU first,
# the experts in what room is left, the rest on the CPU), side by side in one run
# (scripts/ab_decode.sh), at batch 1 and 16, with the offloaded part computed on the CPU
# and streamed to the GPU. Prints each plan's device table and stages first.
#   [MOE_FLAGS="--hidden ..."] [ROUNDS=2] [NEW_TOKENS=32] scripts/moe_offload_check.sh [BUILD_DIR]
# BUILD_DIR (default build-gpu) holds `cascade` and `bench/random_model`.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
model=${MOE_MODEL:-/tmp/moe-anchor}
# 2.51 B parameters, 5.0 GB in bf16: 16 layers of 8 experts (top 2) of 2048 x 2816.
flags=${MOE_FLAGS:---hidden 2048 --intermediate 2816 --layers 16 --heads 16 --kv-heads 4 --vocab 32000 --experts 8 --top-k 2}
# shellcheck disable=SC2086  # flags is a list
[ -f "$model/config.json" ] || "$build/bench/random_model" --out "$model" $flags
export NEW_TOKENS=${NEW_TOKENS:-32} BATCHES=${BATCHES:-1 16}
for compute in cpu cuda:0; do
  for experts in with-layer auto; do
    echo "== plan: offload_compute $compute, experts $experts"
    "$build/cascade" plan --model "$model" --max-memory "cuda:0=2GiB,cpu=100GiB" --max-batch 16 --max-seq-len 512 \
      --offload-compute "$compute" --experts "$experts" | sed -n '/^device  /,$p'
  done
  echo "== decode tok/s; A: whole layers offloaded (experts = with-layer), B: experts apart (auto); offload_compute $compute"
  MAX_MEMORY='"cuda:0" = "2GiB", "cpu" = "100GiB"' \
    PLACEMENT_EXTRA=$(printf 'offload_compute = "%s"\nexperts = "with-layer"' "$compute") \
    PLACEMENT_EXTRA_B=$(printf 'offload_compute = "%s"\nexperts = "auto"' "$compute") \
    scripts/ab_decode.sh "$build/cascade" "$build/cascade" "$model"
done
