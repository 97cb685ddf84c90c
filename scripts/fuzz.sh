#!/usr/bin/env bash
# Runs each fuzz target (cargo-fuzz, libFuzzer) for SECONDS (default 600)
# and prints libFuzzer's closing stats. cargo-fuzz needs nightly features;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain build them.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${1:-600}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(verify public_key key_api_body token_form)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
export RUSTC_BOOTSTRAP=1
for t in "${TARGETS[@]}"; do
  cargo fuzz build -O "$t"
  mkdir -p "corpus/$t"
  echo "== $t: ${SECONDS_EACH}s"
  cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$SECONDS_EACH" -print_final_stats=1 2>&1 \
    | grep -E "stat::|Done|SUMMARY|ERROR|crash-|panicked" || true
done
