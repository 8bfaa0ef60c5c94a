#!/usr/bin/env bash
# Installs what toolgate needs to build and test, from Debian 12 packages only. Idempotent:
# apt-get runs only when something is missing.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libcurl4-openssl-dev libssl-dev zlib1g-dev libsqlite3-dev
  nlohmann-json3-dev libconcurrentqueue-dev libyaml-cpp-dev libcpp-httplib-dev
  prometheus-cpp-dev libsystemd-dev libjemalloc-dev libdeflate-dev libre2-dev
  libgtest-dev libgmock-dev libbenchmark-dev clang libclang-rt-14-dev
  python3 python3-grpcio python3-protobuf python3-pytest
  python3-grpc-tools python3-setuptools python3-pip
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing: ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
