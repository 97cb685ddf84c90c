#!/usr/bin/env bash
# HTTP load on the example server (release build, in-memory store) with wrk:
# 10 s at 64 connections in three modes, then the ratios against the goals.
#
#   scripts/load.sh [DURATION_S] [CONNECTIONS] [FLOOR_US]
#
# FLOOR_US is the raw RS256 verify median from `cargo bench --bench verify`
# (verify/rs256_floor); default 17.4. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=${2:-64}
FLOOR_US=${3:-17.4}
CORES=$(nproc)
PORT=${LOAD_PORT:-18080}
BASE="http://127.0.0.1:$PORT"

if ! command -v wrk >/dev/null; then
  echo "installing wrk (Debian package)" >&2
  apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null
fi
cargo build -q --release --example server --example machine_login
BIN=$PWD/target/release/examples
WORK=$(mktemp -d)
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

start_server() { # $1: on|off (cache of checked assertions)
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  (cd "$WORK" && JWT_PROFILE_LISTEN=127.0.0.1:$PORT JWT_PROFILE_STORE=memory \
     JWT_PROFILE_ASSERTION_CACHE=$1 exec "$BIN/server" > server.out 2> server.err) &
  SERVER_PID=$!
  for _ in $(seq 100); do grep -q listening "$WORK/server.out" 2>/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; cat "$WORK/server.err" >&2; exit 1
}

cat > "$WORK/pool.lua" <<'LUA'
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
local i = math.random(#tokens)
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "/whoami", { ["Authorization"] = "Bearer " .. tokens[i] })
end
LUA

run() { # $1 label, rest: wrk args
  local label=$1; shift
  local out; out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "$@")
  local rps p50 p99 errors
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  printf 'load %-16s requests/s %10s   p50 %8s   p99 %8s   non-2xx %s\n' "$label" "$rps" "$p50" "$p99" "${errors:-0}"
  eval "RPS_${label//-/_}=$rps"
}

start_server on
TOKEN=$(cd "$WORK" && "$BIN/machine_login" --print-token admin-key.json "$BASE/whoami")
run healthz "$BASE/healthz"
run whoami-reused -H "Authorization: Bearer $TOKEN" "$BASE/whoami"

# Fresh: every request's signature is checked (cache of checked assertions
# off), cycling through a pool of distinct assertions.
start_server off
(cd "$WORK" && "$BIN/machine_login" --print-token --count 2000 admin-key.json "$BASE/whoami" > tokens.txt)
TOKENS="$WORK/tokens.txt" run whoami-fresh -s "$WORK/pool.lua" "$BASE/whoami"

echo "machine: $CORES cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); wrk -t2 -c$CONNS -d${DURATION}s on the same machine"
awk -v r="$RPS_whoami_reused" -v h="$RPS_healthz" 'BEGIN { printf "ratio reused_vs_healthz %.2f (goal >= 0.85)\n", r / h }'
awk -v f="$RPS_whoami_fresh" -v c="$CORES" -v us="$FLOOR_US" 'BEGIN { cap = c / (us / 1e6); printf "ratio fresh_vs_capacity %.2f (goal >= 0.80; capacity = %d cores / %.1f us = %.0f/s)\n", f / cap, c, us, cap }'
