#!/usr/bin/env bash
# ZITADEL's own client libraries, which this project did not write, log a
# machine in end to end against the example server (SPEC §5, §6):
#   - Python: PyPI zitadel-client, Zitadel.with_private_key(HOST, KEY_FILE)
#     (a WebTokenAuthenticator.from_json), its Authorization header;
#   - Node: npm @zitadel/node, ServiceAccount.fromJsonString(…).authenticate(HOST)
#     (what createServiceAccountInterceptor calls).
# Each reads HOST/.well-known/openid-configuration for the token endpoint,
# exchanges an assertion signed with the server's admin key file for an access
# token (RFC 7523 jwt-bearer grant), and the token must then be an at+jwt of
# the issuer, verified against its JWKS, that GET /whoami accepts as "admin"
# (scripts/python/zitadel_login.py, scripts/node/zitadel_login.mjs).
# HOST is plain http://127.0.0.1:PORT: neither library insists on https.
# Traffic stays on 127.0.0.1; the libraries come from the package registries.
#
#   scripts/zitadel_clients.sh
#
# Prints one line per library (`python zitadel-client: ok` or `…: FAILED: why`),
# then `N passed, M failed`; exits 1 when any failed, 2 when the server did not
# start. Environment:
#   SERVER_BIN            the example server binary; default: `cargo build --example server`,
#                         then ${CARGO_TARGET_DIR:-target}/debug/examples/server
#   ZITADEL_PY_VERSION    zitadel-client version to install (default 4.1.9; `latest`: the newest)
#   ZITADEL_NODE_VERSION  @zitadel/node version to install (default 3.0.28; `latest`: the newest)
#   ZITADEL_CLIENTS_ENV   directory to install the libraries into and keep for the next run
#                         (default: a temporary one, removed on exit)
#   KEEP_WORK=1           keep the temporary directory (server and client logs) and print its path
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY_VERSION=${ZITADEL_PY_VERSION:-4.1.9}
NODE_VERSION=${ZITADEL_NODE_VERSION:-3.0.28}
EXPECTED_USER="admin"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/zitadel-clients.XXXXXX")
SERVER=
cleanup() {
  if [ -n "$SERVER" ]; then
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
  fi
  if [ "${KEEP_WORK:-}" = 1 ]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ENVDIR=${ZITADEL_CLIENTS_ENV:-$WORK/env}
mkdir -p "$ENVDIR"
ENVDIR=$(cd "$ENVDIR" && pwd)

PASSED=0
FAILED=0
declare -A BROKEN=() # library -> why it cannot run (install failed)
report() { # NAME STATUS [REASON]
  if [ "$2" = ok ]; then
    echo "$1: ok"
    PASSED=$((PASSED + 1))
  else
    echo "$1: FAILED: $3"
    FAILED=$((FAILED + 1))
  fi
}
last_line() { { grep -v '^[[:space:]]*$' "$1" 2>/dev/null || true; } | tail -n 1 | cut -c1-400; }

# --- the libraries, into a throwaway environment ----------------------------
PY_NAME="python zitadel-client"
NODE_NAME="node @zitadel/node"
PY="$ENVDIR/py/bin/python"
if ! command -v python3 >/dev/null; then
  BROKEN[$PY_NAME]="python3 is not installed"
else
  spec=zitadel-client
  [ "$PY_VERSION" = latest ] || spec="zitadel-client==$PY_VERSION"
  if { [ -x "$PY" ] || python3 -m venv "$ENVDIR/py"; } > "$WORK/pip.log" 2>&1 &&
    "$PY" -m pip install -q --disable-pip-version-check "$spec" >> "$WORK/pip.log" 2>&1; then
    echo "installed zitadel-client $("$PY" -c 'from importlib.metadata import version; print(version("zitadel-client"))')" >&2
  else
    BROKEN[$PY_NAME]="pip install $spec: $(last_line "$WORK/pip.log")"
  fi
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  BROKEN[$NODE_NAME]="node or npm is not installed"
else
  mkdir -p "$ENVDIR/node"
  [ -f "$ENVDIR/node/package.json" ] || echo '{"private":true}' > "$ENVDIR/node/package.json"
  if npm install --prefix "$ENVDIR/node" --no-audit --no-fund --loglevel=error \
    "@zitadel/node@$NODE_VERSION" > "$WORK/npm.log" 2>&1; then
    echo "installed @zitadel/node $(node -p 'require(process.argv[1]).version' \
      "$ENVDIR/node/node_modules/@zitadel/node/package.json")" >&2
  else
    BROKEN[$NODE_NAME]="npm install @zitadel/node@$NODE_VERSION: $(last_line "$WORK/npm.log")"
  fi
fi

# --- the example server -------------------------------------------------------
if [ -z "${SERVER_BIN:-}" ]; then
  cargo build -q --example server
  SERVER_BIN=${CARGO_TARGET_DIR:-target}/debug/examples/server
fi
case $SERVER_BIN in /*) ;; *) SERVER_BIN=$ROOT/$SERVER_BIN ;; esac
[ -x "$SERVER_BIN" ] || { echo "no server binary at $SERVER_BIN" >&2; exit 2; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
    echo $((20000 + RANDOM % 20000))
}

# Every JWT_PROFILE_* setting not given here keeps its default (the caller's
# environment does not leak in): JWT_PROFILE_AUDIENCE is http://LISTEN.
UNSET=()
for v in $(compgen -e | grep '^JWT_PROFILE_' || true); do UNSET+=(-u "$v"); done
SRV=$WORK/server
ADDR=
for attempt in 1 2 3; do
  rm -rf "$SRV" && mkdir -p "$SRV"
  PORT=$(free_port)
  HOST=http://127.0.0.1:$PORT
  (cd "$SRV" && exec env "${UNSET[@]}" \
    JWT_PROFILE_LISTEN="127.0.0.1:$PORT" \
    JWT_PROFILE_ISSUER="$HOST" \
    JWT_PROFILE_STORE="sqlite://$SRV/jwt-profile.db" \
    JWT_PROFILE_ADMIN_KEY_FILE="$SRV/admin-key.json" \
    JWT_PROFILE_MASTER_KEY_FILE="$SRV/master-key" \
    "$SERVER_BIN" > "$SRV/stdout" 2> "$SRV/stderr") &
  SERVER=$!
  for _ in $(seq 300); do # 30 s
    ADDR=$(sed -n 's|^listening on http://||p' "$SRV/stdout" 2>/dev/null | head -n 1)
    [ -n "$ADDR" ] && break
    kill -0 "$SERVER" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$ADDR" ] && break
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  SERVER=
  echo "the server did not start on port $PORT (attempt $attempt); its stderr:" >&2
  tail -n 20 "$SRV/stderr" >&2 || true
  # Another port only when this one was taken meanwhile; any other error stays.
  grep -qiE 'in use|addrinuse|bind' "$SRV/stderr" 2>/dev/null || break
done
if [ -z "$ADDR" ]; then
  echo "the example server did not print 'listening on http://ADDR'" >&2
  exit 2
fi
if [ "$ADDR" != "127.0.0.1:$PORT" ]; then
  echo "the server listens on $ADDR, expected 127.0.0.1:$PORT" >&2
  exit 2
fi
KEY=$SRV/admin-key.json
if [ ! -s "$KEY" ]; then
  echo "the server wrote no admin key file at $KEY" >&2
  exit 2
fi

# --- each library logs in -----------------------------------------------------
run() { # NAME LOG COMMAND…
  local name=$1 log=$2
  shift 2
  if [ -n "${BROKEN[$name]:-}" ]; then
    report "$name" failed "${BROKEN[$name]}"
  elif timeout 60 "$@" > "$log.out" 2> "$log.err"; then
    report "$name" ok
  else
    local rc=$? why
    why=$(last_line "$log.err")
    [ "$rc" = 124 ] && why="timed out after 60 s${why:+ ($why)}"
    report "$name" failed "${why:-exit $rc}"
  fi
}
run "$PY_NAME" "$WORK/python" env PYTHONWARNINGS=ignore "$PY" "$ROOT/scripts/python/zitadel_login.py" \
  "$HOST" "$KEY" "$EXPECTED_USER"
run "$NODE_NAME" "$WORK/node" node "$ROOT/scripts/node/zitadel_login.mjs" \
  "$ENVDIR/node" "$HOST" "$KEY" "$EXPECTED_USER"

if [ "$FAILED" -gt 0 ]; then
  echo "server stderr (last lines):" >&2
  tail -n 20 "$SRV/stderr" >&2 || true
fi
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
