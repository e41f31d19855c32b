#!/usr/bin/env bash
# Issue 10 on a machine with several GPUs (e.g. the device tool's nvidia-h200-x2):
# build as gpu_check.sh does, run the NCCL channel test and the stage tests, then the
# anchor model (DESIGN §10, random weights, bf16) split over the GPUs with
# strategy = "balanced" under `cascade bench --mode both` at batch 1, S and 4S.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
BUILD_ONLY=1 OUT=$OUT scripts/gpu_check.sh >/dev/null  # configure + build, as one GPU does
build_rc=$?
summary="$OUT/summary.txt"
: >"$summary"
step() { echo "== $1: $2" | tee -a "$summary"; }
export LD_LIBRARY_PATH=$PWD/.deps/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
gpus=$(nvidia-smi -L | wc -l)
step gpus "$gpus: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
step build "exit $build_rc"
ctest --test-dir build-gpu --output-on-failure -R 'channel_test|world_test|heartbeat_test' >"$OUT/ctest.log" 2>&1
step ctest_comm "exit $?: $(grep -E 'tests passed|tests failed' "$OUT/ctest.log")"
grep -h '\[ nccl \]' build-gpu/Testing/Temporary/LastTest.log | tee -a "$summary"

# A stage killed or stalled while the other end of its NCCL hop waits: an error naming
# it within 10 s, never a hang (ncclCommGetAsyncError polling + ncclCommAbort).
cat >/tmp/nccl_fault.toml <<TOML
[model]
path = "$PWD/tests/data/llama_gqa"
dtype = "float32"
[placement]
max_memory = { "cuda:0" = "8GiB", "cuda:1" = "8GiB", "cpu" = "8GiB" }
device_map = { "model.embed_tokens" = 0, "model.layers.0" = 0, "model.layers.1" = 1, "model.norm" = 1, "lm_head" = 1 }
[runtime]
max_batch = 2
max_seq_len = 256
heartbeat_timeout = 3
TOML
for fault in 2:step=5:exit 1:step=5:exit 2:step=5:stall; do
  start=$(date +%s.%N)
  CASCADE_FAULT=$fault timeout 60 build-gpu/cascade generate --config /tmp/nccl_fault.toml --prompt-ids 1,2,3 \
    --max-new-tokens 100 >/tmp/fault.log 2>&1
  rc=$?
  secs=$(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')")
  left=$(pgrep -fc 'cascade stage' || true)
  step "nccl fault $fault" "exit $rc after $secs s, stage processes left: $left; $(grep -a -o "error: .*" /tmp/fault.log | head -1)"
done
[ "${ONLY_FAULTS:-0}" = 1 ] && { cat "$summary"; exit 0; }

# The anchor model: LlamaConfig(hidden 2560, intermediate 6912, 32 layers, 20 heads), bf16.
start=$(date +%s)
build-gpu/bench/random_model --out /tmp/anchor --hidden 2560 --intermediate 6912 --layers 32 --heads 20 \
  --kv-heads 20 --vocab 32000 >/tmp/anchor.log 2>&1
step anchor "$(cat /tmp/anchor.log) in $(($(date +%s) - start)) s"
mm=""
for g in $(seq 0 $((gpus - 1))); do mm="$mm\"cuda:$g\" = \"60GiB\", "; done
cat >/tmp/multi.toml <<TOML
[model]
path = "/tmp/anchor"
dtype = "bfloat16"
[placement]
strategy = "balanced"
max_memory = { ${mm}"cpu" = "64GiB" }
[runtime]
max_batch = $((4 * gpus))
max_seq_len = 256
threads_per_stage = 4
TOML
build-gpu/cascade plan --config /tmp/multi.toml --set runtime.mode=pipeline >"$OUT/plan.txt" 2>&1
step plan "$(grep route "$OUT/plan.txt")"
for c in 1 $gpus $((4 * gpus)); do
  trace=()
  [ "$c" = $((4 * gpus)) ] && trace=(--trace "$OUT/multi_trace_c$c.json")
  build-gpu/cascade bench --config /tmp/multi.toml --requests $((2 * c)) --prompt-len 32 --new-tokens 32 \
    --concurrency $c "${trace[@]}" >"$OUT/bench_c$c.txt" 2>&1
  step "bench concurrency $c" "exit $?: $(grep 'pipeline / sequential' "$OUT/bench_c$c.txt")"
  grep -A3 '^mode' "$OUT/bench_c$c.txt" >>"$summary"
done
cat "$summary"
