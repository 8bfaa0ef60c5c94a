#!/usr/bin/env bash
# Installs what is needed, builds, and runs every test (unit, then integration).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh build Release
cd build
ctest --output-on-failure --timeout 900 "$@"
