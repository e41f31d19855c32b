#!/usr/bin/env bash
# The quick tests under AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/).
# Leak checking is off: LibTorch keeps process-lifetime allocations it never frees.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=build-asan BUILD_TYPE=Debug scripts/build.sh -DCASCADE_ASAN=ON
export ASAN_OPTIONS=detect_leaks=0:detect_container_overflow=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir build-asan --output-on-failure -j"$(nproc)" -L quick "$@"
