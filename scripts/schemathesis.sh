#!/usr/bin/env bash
# Schemathesis (PyPI) against the example server's /openapi.json, as the
# administrator, with every check. Traffic stays on 127.0.0.1.
#
#   scripts/schemathesis.sh [MAX_EXAMPLES_PER_OPERATION]   (default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
MAX=${1:-300}
PORT=${SCHEMATHESIS_PORT:-18181}
command -v schemathesis >/dev/null || python3 -m pip install -q schemathesis
cargo build -q --example server --example machine_login
BIN=$PWD/target/debug/examples
WORK=$(mktemp -d)
# The stateful phase reuses the user and key id it sees in the bearer
# assertion and removes the administrator's own key (which an administrator
# may do), leaving the rest of the run unauthenticated. So: one pass without
# DELETE, then DELETE alone, each against a fresh server and administrator.
pass_run() { # $1: label, rest: schemathesis filters
  local label=$1; shift
  (cd "$WORK" && rm -f server.out admin-key.json && JWT_PROFILE_LISTEN=127.0.0.1:$PORT JWT_PROFILE_STORE=memory exec "$BIN/server" > server.out 2> server.err) &
  SERVER=$!
  for _ in $(seq 100); do grep -q listening "$WORK/server.out" 2>/dev/null && break; sleep 0.1; done
  TOKEN=$(cd "$WORK" && "$BIN/machine_login" --print-token admin-key.json "http://127.0.0.1:$PORT/whoami")
  echo "== pass: $label"
  schemathesis --config-file scripts/schemathesis.toml run "http://127.0.0.1:$PORT/openapi.json" \
    --checks all \
    --max-examples "$MAX" \
    --header "Authorization: Bearer $TOKEN" \
    --continue-on-failure \
    --generation-deterministic "$@" || { rc=$?; echo "schemathesis exit $rc"; status=$rc; }
  echo "after the pass, the administrator's assertion gets: $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/whoami")"
  kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true
}
status=0
SERVER=
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
pass_run "create, read, list" --exclude-method DELETE
pass_run "remove" --include-method DELETE
exit "$status"
