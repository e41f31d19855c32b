#!/usr/bin/env bash
# Issue 17's hybrid offload report, on a GPU machine: the DESIGN §10 anchor (2.70 B
# Llama, bf16) with a 2 GiB GPU budget and the rest in RAM, its offloaded layers
# computed on the CPU (offload_compute = "cpu"), streamed to the GPU ("cuda:0"), or
# split between both ("cpu+cuda:0": the cost model's share, then fixed SHARES), side by
# side in one run (scripts/ab_decode.sh), batch 1 and batch 16 planned apart (each with
# max_batch = its batch). Prints the host's read bound and GEMV rates and each plan's
# choice line and stages first.
#   [ROUNDS=2] [SHARES="0.35 0.65"] scripts/hybrid_offload_check.sh [BUILD_DIR]
# BUILD_DIR (default build-gpu) holds `cascade`, `bench/random_model`, `bench/cpu_gemv_bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
model=${MODEL:-/tmp/anchor}
[ -f "$model/config.json" ] || "$build/bench/random_model" --out "$model" --hidden 2560 --intermediate 6912 \
  --layers 32 --heads 20 --kv-heads 20 --vocab 32000 >/dev/null
threads=$(($(nproc) - 2))
echo "== host: read bound and GEMV rates at $threads threads (the hybrid's CPU stage)"
"$build/bench/cpu_gemv_bench" --threads "$threads" --tokens 1,16 2>&1
export MAX_MEMORY='"cuda:0" = "2GiB", "cpu" = "100GiB"' MAX_SEQ_LEN=${MAX_SEQ_LEN:-128} NEW_TOKENS=${NEW_TOKENS:-64}
for batch in 1 16; do
  for oc in cpu cuda:0 cpu+cuda:0; do
    echo "== plan at max_batch $batch: offload_compute $oc"
    "$build/cascade" plan --model "$model" --max-memory "cuda:0=2GiB,cpu=100GiB" --max-batch "$batch" \
      --max-seq-len "$MAX_SEQ_LEN" --offload-compute "$oc" | grep -E 'offload_compute|^  rank'
  done
  echo "== batch $batch decode tok/s; A: offload_compute cpu, B: cpu+cuda:0 (the cost model's split)"
  BATCHES=$batch PLACEMENT_EXTRA='offload_compute = "cpu"' PLACEMENT_EXTRA_B='offload_compute = "cpu+cuda:0"' \
    scripts/ab_decode.sh "$build/cascade" "$build/cascade" "$model"
  echo "== batch $batch decode tok/s; A: offload_compute cuda:0 (all streamed), B: cpu+cuda:0"
  BATCHES=$batch PLACEMENT_EXTRA='offload_compute = "cuda:0"' PLACEMENT_EXTRA_B='offload_compute = "cpu+cuda:0"' \
    scripts/ab_decode.sh "$build/cascade" "$build/cascade" "$model"
  for share in ${SHARES:-0.35 0.65}; do
    echo "== batch $batch decode tok/s; A: cpu+cuda:0, B: cpu+cuda:0 with streamed_share $share"
    BATCHES=$batch ROUNDS=1 PLACEMENT_EXTRA='offload_compute = "cpu+cuda:0"' \
      PLACEMENT_EXTRA_B=$(printf 'offload_compute = "cpu+cuda:0"\nstreamed_share = %s' "$share") \
      scripts/ab_decode.sh "$build/cascade" "$build/cascade" "$model"
  done
done
