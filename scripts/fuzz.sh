#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan+UBSan) and runs each for SECONDS.
#   scripts/fuzz.sh [TARGET|all] [SECONDS]      e.g. scripts/fuzz.sh jcs 60
# Seeds are in tests/fuzz/corpus/TARGET; new inputs go to build/fuzz/corpus/TARGET, crashes
# to build/fuzz/artifacts/ (a crash found becomes a regression test in the target's unit test).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-all}
seconds=${2:-60}
out=build/fuzz
mkdir -p "$out/artifacts"
CXX=${CXX_FUZZ:-clang++}
FLAGS=(-std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I.)
ABSL=$(pkg-config --libs absl_statusor absl_status absl_strings)

build() {
  local name=$1; shift
  # Rebuilt when any source or header it may include changed.
  if [ ! -x "$out/${name}_fuzz" ] ||
     [ -n "$(find "$@" daemon tests/fuzz -name '*.h' -newer "$out/${name}_fuzz" 2>/dev/null)" ] ||
     [ -n "$(find "$@" -newer "$out/${name}_fuzz" 2>/dev/null)" ]; then
    "$CXX" "${FLAGS[@]}" "$@" -o "$out/${name}_fuzz" $ABSL $(pkg-config --libs absl_time) -lyaml-cpp -lre2 -lcrypto
  fi
}

run() {
  local name=$1
  mkdir -p "$out/corpus/$name"
  echo "fuzz $name for ${seconds}s"
  "$out/${name}_fuzz" -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/${name}-" "$out/corpus/$name" "tests/fuzz/corpus/$name" \
    2>"$out/$name.log" || { tail -50 "$out/$name.log"; exit 1; }
  grep -E "stat::number_of_executed_units|Done" "$out/$name.log" | tail -2
}

targets=(jcs config)
[ -f daemon/policy/policy.cc ] && [ -f tests/fuzz/policy_fuzz.cc ] && targets+=(policy)
for t in "${targets[@]}"; do
  [ "$target" = all ] || [ "$target" = "$t" ] || continue
  case $t in
    jcs) build jcs tests/fuzz/jcs_fuzz.cc daemon/normalize/jcs.cc ;;
    config) build config tests/fuzz/config_fuzz.cc daemon/config/config.cc ;;
    policy) build policy tests/fuzz/policy_fuzz.cc daemon/policy/policy.cc daemon/policy/glob.cc \
              daemon/policy/yaml_tree.cc daemon/policy/rate_state.cc daemon/common/crypto.cc ;;
  esac
  run "$t"
done
