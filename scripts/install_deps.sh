#!/usr/bin/env bash
# Installs Cascade's build and test dependencies on Debian 12 (DESIGN §10).
set -euo pipefail
pkgs=(build-essential cmake libtorch-dev libopenmpi-dev openmpi-bin libboost-dev libtomlplusplus-dev
      libgtest-dev nlohmann-json3-dev libcli11-dev libpcre2-dev libicu-dev pkg-config curl python3
      clang libclang-rt-14-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#pkgs[@]} packages present"
  exit 0
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "install_deps: installing ${missing[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
