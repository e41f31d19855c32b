#!/usr/bin/env bash
# Installs Cascade's build and test dependencies on Debian 12 (DESIGN §10).
set -euo pipefail
# libopenblas0-openmp: LibTorch's float32 GEMMs (prefill) through OpenBLAS instead of the
# reference BLAS (17x faster on one core here), on LibTorch's own OpenMP threads.
pkgs=(build-essential cmake libtorch-dev libopenmpi-dev openmpi-bin libboost-dev libtomlplusplus-dev
      libgtest-dev nlohmann-json3-dev libcli11-dev libpcre2-dev libicu-dev pkg-config curl python3
      clang libclang-rt-14-dev libopenblas0-openmp)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#pkgs[@]} packages present"
else
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "install_deps: installing ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The official OpenAI client for tests/openai_client_test.sh, from the npm registry
# (Node.js >= 18 with npm; the version is pinned in tests/openai/package-lock.json).
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -d "$here/tests/openai/node_modules/openai" ]; then
  echo "install_deps: the openai npm package is present"
elif command -v npm >/dev/null; then
  (cd "$here/tests/openai" && npm ci --no-audit --no-fund --loglevel=error)
else
  echo "install_deps: warning: no npm, so openai_client_test will fail (install Node.js >= 18)" >&2
fi
