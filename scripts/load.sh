#!/usr/bin/env bash
# HTTP load on the example server (release build, in-memory store) with wrk,
# the server pinned to core 0 and wrk to core 1 (taskset), every ratio from
# interleaved rounds: /healthz and /whoami alternate in short runs, and each
# round gives one ratio; the median and the 25th-75th percentiles are printed.
#
#   scripts/load.sh [ROUNDS] [SECONDS_PER_RUN] [CONNECTIONS] [FLOOR_US]
#
# /healthz is sent with an Authorization header of the same size as the
# /whoami requests, so the two differ only by the check and the answer.
# FLOOR_US is the raw RS256 verify time; by default (`measure`) it is
# measured in every fresh round, on the server's core right after that
# round's runs (`cargo bench --bench verify -- --floor-only`), so the floor
# shares the round's machine as the two runs do. A number fixes it instead.
# Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-8}
SECS=${2:-3}
CONNS=${3:-32}
FLOOR_US=${4:-measure}
PORT=${LOAD_PORT:-18080}
BASE="http://127.0.0.1:$PORT"
TARGET=${CARGO_TARGET_DIR:-target}

if ! command -v wrk >/dev/null; then
  echo "installing wrk (Debian package)" >&2
  apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null
fi
cargo build -q --release --example server --example machine_login
if [ "$FLOOR_US" = measure ]; then cargo bench -q --bench verify --no-run 2>/dev/null; fi
floor_us() { # the RS256 floor now, on the server's core
  if [ "$FLOOR_US" = measure ]; then
    taskset -c 0 cargo bench -q --bench verify -- --floor-only 2>/dev/null | awk '/^floor rs256/ {print $3}'
  else
    echo "$FLOOR_US"
  fi
}
BIN=$(cd "$TARGET/release/examples" && pwd)
WORK=$(mktemp -d)
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

start_server() { # $1: on|off (cache of checked assertions)
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -f "$WORK/server.out"
  (cd "$WORK" && JWT_PROFILE_LISTEN=127.0.0.1:$PORT JWT_PROFILE_STORE=memory \
     JWT_PROFILE_ASSERTION_CACHE=$1 exec taskset -c 0 "$BIN/server" > server.out 2> server.err) &
  SERVER_PID=$!
  for _ in $(seq 100); do grep -q listening "$WORK/server.out" 2>/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; cat "$WORK/server.err" >&2; exit 1
}

# Every request of the pool is formatted once, when the script loads: wrk's
# one thread formatting a request per call (wrk.format) capped /healthz at
# about 87 000/s against 125 000/s with a fixed header, so the pool's
# /healthz time was wrk's, not the server's, and flattered the fresh ratio.
cat > "$WORK/pool.lua" <<'LUA'
local requests = {}
local path = os.getenv("LOAD_PATH")
for line in io.lines(os.getenv("TOKENS")) do
  requests[#requests + 1] = wrk.format("GET", path, { ["Authorization"] = "Bearer " .. line })
end
local i = math.random(#requests)
request = function()
  i = i % #requests + 1
  return requests[i]
end
LUA

rps() { # wrk args -> requests/s; fails on any non-2xx answer
  local out; out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" "$@")
  if grep -q Non-2xx <<<"$out"; then echo "non-2xx answers: $out" >&2; exit 1; fi
  awk '/^Requests\/sec:/ {print $2}' <<<"$out"
}

summary() { # $1 name, $2 goal; stdin: ratios
  sort -g | awk -v name="$1" -v goal="$2" '
    {a[NR]=$1}
    END {
      m = a[int((NR+1)/2)]; if (NR % 2 == 0) m = (a[NR/2] + a[NR/2+1]) / 2
      lo = a[int(0.25 * (NR - 1) + 1.5)]; hi = a[int(0.75 * (NR - 1) + 1.5)]
      printf "ratio %s %.3f (p25 %.3f, p75 %.3f)   goal %s, %d rounds\n", name, m, lo, hi, goal, NR
    }'
}

start_server on
TOKEN=$(cd "$WORK" && "$BIN/machine_login" --print-token admin-key.json "$BASE/whoami")
REUSED=$WORK/reused.txt
: > "$REUSED"
for round in $(seq "$ROUNDS"); do
  if (( round % 2 )); then
    h=$(rps -H "Authorization: Bearer $TOKEN" "$BASE/healthz"); w=$(rps -H "Authorization: Bearer $TOKEN" "$BASE/whoami")
  else
    w=$(rps -H "Authorization: Bearer $TOKEN" "$BASE/whoami"); h=$(rps -H "Authorization: Bearer $TOKEN" "$BASE/healthz")
  fi
  printf 'load round %d reused: healthz %s/s whoami %s/s\n' "$round" "$h" "$w"
  awk -v w="$w" -v h="$h" 'BEGIN { print w / h }' >> "$REUSED"
done

# Fresh: every request's signature is checked (cache of checked assertions
# off), cycling through a pool of distinct assertions; /healthz gets the same
# pool of headers.
start_server off
(cd "$WORK" && "$BIN/machine_login" --print-token --count 5000 admin-key.json "$BASE/whoami" > tokens.txt)
FRESH=$WORK/fresh.txt
: > "$FRESH"
for round in $(seq "$ROUNDS"); do
  if (( round % 2 )); then
    h=$(TOKENS="$WORK/tokens.txt" LOAD_PATH=/healthz rps -s "$WORK/pool.lua" "$BASE/healthz")
    f=$(TOKENS="$WORK/tokens.txt" LOAD_PATH=/whoami rps -s "$WORK/pool.lua" "$BASE/whoami")
  else
    f=$(TOKENS="$WORK/tokens.txt" LOAD_PATH=/whoami rps -s "$WORK/pool.lua" "$BASE/whoami")
    h=$(TOKENS="$WORK/tokens.txt" LOAD_PATH=/healthz rps -s "$WORK/pool.lua" "$BASE/healthz")
  fi
  us=$(floor_us)
  printf 'load round %d fresh: healthz %s/s whoami %s/s floor %s us\n' "$round" "$h" "$f" "$us"
  # Per-request time of fresh /whoami over (that of /healthz + the floor).
  awk -v f="$f" -v h="$h" -v us="$us" 'BEGIN { print (1e6 / f) / (1e6 / h + us) }' >> "$FRESH"
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); server on core 0, wrk -t1 -c$CONNS on core 1, ${SECS}s runs"
summary whoami_reused/healthz ">= 0.90" < "$REUSED"
summary whoami_fresh_time/healthz_time_plus_floor "<= 1.15 (floor: $FLOOR_US)" < "$FRESH"
