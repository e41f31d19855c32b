#!/usr/bin/env bash
# The whole test suite from a fresh Debian 12 machine: install, build, ctest.
# `scripts/test.sh -L quick` passes its arguments to ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j"$(nproc)" "$@"
