#!/usr/bin/env bash
# Builds toolgate with a sanitizer and runs the unit and integration tests against it.
#   scripts/sanitize.sh asan     ASan + UBSan (build-asan/)
#   scripts/sanitize.sh tsan     TSan (build-tsan/), with tests/tsan.supp
# CI runs both after the README's test command (.ci/run); docs/testing.md says what each covers.
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:?usage: scripts/sanitize.sh asan|tsan}
case $preset in
  asan | tsan) ;;
  *) echo "scripts/sanitize.sh: unknown preset '$preset' (asan or tsan)" >&2; exit 2 ;;
esac
scripts/deps.sh
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset"
# The fuzz targets are ASan+UBSan builds of their own (scripts/fuzz.sh): not run again here.
ctest --preset "$preset" --timeout 1200 -L 'unit|integration' "${@:2}"
