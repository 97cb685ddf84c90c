#!/usr/bin/env bash
# RSA-2048 key generation: the key service's (aws-lc-rs, in process) against
# `openssl genrsa 2048` (one process per key, as people run it), in one run.
#
#   scripts/keygen.sh [N]     (default 31 keys each; medians compared)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-31}
cargo bench -q --bench keygen --no-run
keygen=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/keygen-* | grep -v '\.d$' | head -n 1)
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ours=$("$keygen" "$N" | median)
theirs=$(for _ in $(seq "$N"); do
  s=$(date +%s%N); openssl genrsa 2048 >/dev/null 2>&1; e=$(date +%s%N)
  awk -v d=$((e - s)) 'BEGIN { printf "%.2f\n", d / 1e6 }'
done | median)
echo "keygen aws-lc-rs (in process)  median ${ours} ms over $N keys"
echo "keygen openssl genrsa 2048     median ${theirs} ms over $N keys"
awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "ratio keygen_vs_openssl %.2f (goal <= 0.60)\n", a / b }'
