#!/usr/bin/env bash
# One call on the GPU machine (DESIGN §10): optionally regenerate the HF fixtures,
# build against LibTorch's own CUDA build, run the whole ctest suite, and leave logs
# and a summary under $OUT. Needs the Debian header packages unpacked in .deps/root
# (toml++ is not installed there): see docs/development.md.
#   REGEN_FIXTURES=1 REGEN_TOKENIZERS=1 scripts/gpu_check.sh   (FIXTURES="a b": only those)
#   CTEST=gpu COMPARE=1 SKIP_EXTRAS=1 scripts/gpu_check.sh   (GPU tests only, then the accelerate comparison)
#   CTEST=none|gpu|all (default all); COMPARE_ROWS=a,b,c; GPU_BENCH=0 skips the 134 M bench;
#   BUILD_ONLY=1 stops after the build (other scripts build through it)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
summary="$OUT/summary.txt"
: >"$summary"
step() { echo "== $1: $2" | tee -a "$summary"; }

if [ "${REGEN_FIXTURES:-0}" = 1 ]; then
  # shellcheck disable=SC2086  # FIXTURES is a list of names
  python3 scripts/make_fixtures.py --out tests/data ${FIXTURES:+--only $FIXTURES} >"$OUT/fixtures.log" 2>&1
  step fixtures "exit $? ($(grep -c distinct "$OUT/fixtures.log") models)"
  tar czf "$OUT/fixtures.tgz" -C tests data
fi

if [ "${REGEN_TOKENIZERS:-0}" = 1 ]; then
  python3 scripts/make_tokenizer_fixtures.py --out tests/data/tokenizers --bench-out "$OUT/tokenizer_bench.json" \
    >"$OUT/tokenizers.log" 2>&1
  step tokenizers "exit $? ($(grep -c vocab "$OUT/tokenizers.log") tokenizers)"
  tar czf "$OUT/tokenizers.tgz" -C tests/data tokenizers
fi

deps=$PWD/.deps/root
# The tokenizer needs PCRE2 and ICU headers; use the carried Debian packages when the
# machine lacks them.
if [ ! -f /usr/include/pcre2.h ] || [ ! -f /usr/include/unicode/normalizer2.h ]; then
  export LD_LIBRARY_PATH=$deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  step deps "PCRE2/ICU from .deps/root"
fi
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
step torch "$(python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))')"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$torch_prefix" \
  -DCASCADE_EXTRA_INCLUDE="$deps/usr/include" -DCASCADE_EXTRA_LIB="$deps/usr/lib/x86_64-linux-gnu" \
  >"$OUT/build.log" 2>&1
step configure "exit $? ($(grep -o 'Cascade: .*' "$OUT/build.log"))"
start=$(date +%s)
cmake --build build-gpu -j"$(nproc)" >>"$OUT/build.log" 2>&1
rc=$?
step build "exit $rc in $(($(date +%s) - start)) s"
[ $rc = 0 ] || { tail -30 "$OUT/build.log"; exit 1; }
[ "${BUILD_ONLY:-0}" = 1 ] && exit 0
if [ "${CTEST:-all}" = all ]; then
  ctest --test-dir build-gpu --output-on-failure -j8 >"$OUT/ctest.log" 2>&1
  step ctest "exit $?: $(grep -E 'tests passed|tests failed' "$OUT/ctest.log")"
elif [ "${CTEST}" = gpu ]; then  # only the tests that exercise the GPU paths
  failed=""
  for t in decode_graphs_test weight_stream_test device_upload_test quant_test host_stager_test kv_cache_test \
    fused_kernels_test attention_kernels_test int8_kernels_test model_test gpu_memory_test "cluster_test --gtest_filter=*Gpu*:*Streamed*:*Hybrid*"; do
    build-gpu/tests/$t >>"$OUT/ctest.log" 2>&1 || failed="$failed ${t%% *}"
  done
  step gpu_tests "$(grep -cE '^\[  PASSED' "$OUT/ctest.log") binaries passed; failed:${failed:- none}"
  grep -E 'graphs vs eager|offload stage|streamed cpu/disk|\[ int8 \]' "$OUT/ctest.log" >>"$summary"
fi
# Cascade against transformers + accelerate on the DESIGN §10 anchor (issue 8).
if [ "${COMPARE:-0}" = 1 ]; then
  timeout "${COMPARE_TIMEOUT:-420}" python3 scripts/compare_accelerate.py --cascade build-gpu/cascade \
    --work /tmp/cascade-compare --out "$OUT/compare.md" --rows "${COMPARE_ROWS:-a,b,c}" >"$OUT/compare.log" 2>&1
  step compare_accelerate "exit $?"
  cat "$OUT/compare.md" >>"$summary" 2>/dev/null || tail -20 "$OUT/compare.log" >>"$summary"
fi
if [ "${GPU_BENCH:-1}" = 1 ]; then
# Both modes on one GPU (issue 7/8): a GPU stage + the CPU-computing offload stage,
# on a random 134 M-parameter Llama, side by side in one `cascade bench`.
build-gpu/bench/random_model --out /tmp/m134 >/dev/null
cat >/tmp/gpu_offload.toml <<'TOML'
[model]
path = "/tmp/m134"
dtype = "bfloat16"
[placement]
max_memory = { "cuda:0" = "20GiB", "cpu" = "16GiB" }
device_map = { "model.embed_tokens" = 0, "model.layers.0" = 0, "model.layers.1" = 0, "model.layers.2" = 0, "model.layers.3" = 0, "model.layers.4" = 0, "model.layers.5" = 0, "model.layers.6" = 0, "model.layers.7" = 0, "model.layers.8" = 0, "model.layers.9" = 0, "model.layers.10" = "cpu", "model.layers.11" = "cpu", "model.norm" = "cpu", "lm_head" = 0 }
offload_compute = "cpu"
[runtime]
max_batch = 16
max_seq_len = 256
threads_per_stage = 8
TOML
build-gpu/cascade bench --config /tmp/gpu_offload.toml --requests 32 --prompt-len 64 --new-tokens 32 --concurrency 16 \
  --trace "$OUT/gpu_offload_trace.json" >"$OUT/gpu_bench.txt" 2>&1
step gpu_bench "exit $?: $(grep 'pipeline / sequential' "$OUT/gpu_bench.txt")"
grep -A3 '^mode' "$OUT/gpu_bench.txt" >>"$summary"
fi
[ "${SKIP_EXTRAS:-0}" = 1 ] && { cat "$summary"; exit 0; }

# The planner against accelerate, and a plan from measured GPU memory.
python3 scripts/compare_planner.py --cascade build-gpu/cascade --out "$OUT/planner_compare.md" >/tmp/planner.log 2>&1
step compare_planner "exit $? ($(grep -c -- '->' /tmp/planner.log) cases)"
grep -- '->' /tmp/planner.log >>"$summary"
build-gpu/cascade plan --model tests/data/llama_gqa >/tmp/plan.txt 2>&1
step plan_measured "exit $?: $(sed -n 3p /tmp/plan.txt)"

# Tokenizer speed, HF and Cascade side by side on this machine, same text and files.
if [ -x build-gpu/bench/tokenizer_bench ]; then
  t=tests/data/tokenizers
  {
    python3 scripts/hf_tokenizer_bench.py --ids-out "$OUT/hf_llama2_bench_ids.json" $t/llama2_bytefallback \
      $t/gpt2_bytelevel $t/llama3_split
    build-gpu/bench/tokenizer_bench $t/llama2_bytefallback $t/gpt2_bytelevel $t/llama3_split
    # Unigram (SentencePiece Precompiled normalizer); the 1 MB's ids compared one by one.
    python3 scripts/hf_tokenizer_bench.py --ids-out /tmp/hf_t5_ids.json $t/t5_hub $t/t5_unigram $t/unigram_bytefallback
    build-gpu/bench/tokenizer_bench --ids-out /tmp/cascade_t5_ids.json $t/t5_hub $t/t5_unigram $t/unigram_bytefallback
    python3 -c 'import json; a, b = (json.load(open(f"/tmp/{w}_t5_ids.json")) for w in ("hf", "cascade"))
print(f"t5_hub: {len(a)} HF ids, {len(b)} Cascade ids,", "identical" if a == b else "DIFFERENT")'
  } >"$OUT/tokenizer_bench.txt" 2>&1
  step tokenizer_bench "exit $?"
fi

# A test binary that failed and dies on a signal when run alone gets a backtrace
# (cuda-gdb also debugs host code; there is no gdb).
for name in $(grep -oE '[0-9]+ - [a-z_]+_test' "$OUT/ctest.log" | awk '{print $3}' | sort -u); do
  t=build-gpu/tests/$name
  timeout 300 "$t" >/dev/null 2>&1
  rc=$?
  if [ $rc -ge 128 ]; then
    echo "== $t died with signal $((rc - 128))" >>"$OUT/backtraces.txt"
    timeout 120 cuda-gdb -batch -ex run -ex bt "$t" >>"$OUT/backtraces.txt" 2>&1
  fi
done
[ -f "$OUT/backtraces.txt" ] && step backtraces "$(grep -c died "$OUT/backtraces.txt") crashing test binaries"
grep -h '\[ parity \]' build-gpu/Testing/Temporary/LastTest.log >>"$summary" 2>/dev/null
cat "$summary"
