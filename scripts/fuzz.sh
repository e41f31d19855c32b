#!/usr/bin/env bash
# The libFuzzer targets (tests/fuzz/) under AddressSanitizer + UndefinedBehaviorSanitizer,
# built with clang into build-fuzz/, each run for FUZZ_SECONDS (default 30) from its seed
# corpus tests/fuzz/corpus/<target>/ (inputs that once crashed stay there as regression
# cases). A crash, a sanitizer report or a broken invariant fails the script; the input
# that did it is left in build-fuzz/ (crash-*), ready to add to the corpus.
#   scripts/fuzz.sh [TARGET ...]
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(completion_request_fuzz chat_request_fuzz chat_template_fuzz http_request_fuzz
  safetensors_header_fuzz tokenizer_json_fuzz step_header_fuzz control_message_fuzz config_fuzz model_config_fuzz)
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCASCADE_FUZZ=ON -DCASCADE_ASAN=ON -DCASCADE_BUILD_TESTS=OFF -DCASCADE_CUDA=OFF >/dev/null
cmake --build build-fuzz -j"${JOBS:-$(nproc)}" --target "${targets[@]}"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for t in "${targets[@]}"; do
  work=build-fuzz/corpus/$t
  mkdir -p "$work"
  max_len=4096
  [ "$t" = tokenizer_json_fuzz ] && max_len=16384
  log=build-fuzz/$t.log
  if ! (cd build-fuzz && "tests/fuzz/$t" -max_total_time="${FUZZ_SECONDS:-30}" -max_len=$max_len -timeout=10 \
    -rss_limit_mb=4096 "corpus/$t" "../tests/fuzz/corpus/$t" >"../$log" 2>&1); then
    grep -v '^"' "$log" | tail -60
    echo "fuzz: $t failed (log: $log; the input is build-fuzz/crash-* or timeout-*)"
    exit 1
  fi
  echo "fuzz: $t: $(grep -E '^Done' "$log")"
done
echo "fuzz: ${#targets[@]} targets ran without a crash"
