#!/usr/bin/env bash
# Start a local MLflow tracking server: SQLite backend by default (or PostgreSQL), artifacts
# served by the server from a folder (or an s3:// URI), bound to 127.0.0.1 unless --host says
# otherwise. Writes <dir>/mlflow.env (MLFLOW_TRACKING_URI) and <dir>/server.json.
#
#   infra/local/start-mlflow.sh [--dir DIR] [--backend-store-uri URI] [--artifacts-destination URI]
#                               [--host HOST] [--port PORT] [--allowed-hosts LIST] [--workers N]
#
# DIR defaults to outputs/mlflow, the folder `python -m pipeline run` (output_root: outputs) uses
# for its own local server: the pipeline finds a server started here through server.json and
# logs to it, so one SQLite file never has two servers. Idempotent; stop with stop-mlflow.sh.
# A PostgreSQL URI carries a password: it is passed to mlflow through the environment
# (MLFLOW_BACKEND_STORE_URI), never on a command line, and never printed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VENV=${WHALE_VENV:-$REPO/.venv}
DIR=$REPO/outputs/mlflow
BACKEND=${MLFLOW_BACKEND_STORE_URI:-}
ARTIFACTS=""
HOST=127.0.0.1
PORT=""
ALLOWED_HOSTS=""
WORKERS=1
STARTUP_TIMEOUT_S=90

die() { echo "start-mlflow: error: $*" >&2; exit 1; }
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
# user:password@ -> user:***@, for anything we print
mask() { sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#' <<< "$1"; }

while [ $# -gt 0 ]; do
  case $1 in
    --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
    --backend-store-uri) BACKEND=${2:?--backend-store-uri needs a value}; shift 2 ;;
    --artifacts-destination) ARTIFACTS=${2:?--artifacts-destination needs a value}; shift 2 ;;
    --host) HOST=${2:?--host needs a value}; shift 2 ;;
    --port) PORT=${2:?--port needs a value}; shift 2 ;;
    --allowed-hosts) ALLOWED_HOSTS=${2:?--allowed-hosts needs a value}; shift 2 ;;
    --workers) WORKERS=${2:?--workers needs a value}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

[ -x "$VENV/bin/mlflow" ] || die "no mlflow in $VENV (run 'make install' first, or set WHALE_VENV)"
PY=$VENV/bin/python
[[ $WORKERS =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive integer, got '$WORKERS'"
[ -z "$PORT" ] || [[ $PORT =~ ^[0-9]+$ && $PORT -ge 1 && $PORT -le 65535 ]] || die "--port must be 1-65535, got '$PORT'"
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
BACKEND=${BACKEND:-sqlite:///$DIR/mlflow.db}
ARTIFACTS=${ARTIFACTS:-$DIR/artifacts}
case $BACKEND in
  sqlite:*)
    # SQLite has one writer: several server processes on one file lock up.
    [ "$WORKERS" -eq 1 ] || die "--workers $WORKERS with a SQLite backend: SQLite allows one writer, use --workers 1 or PostgreSQL" ;;
  postgresql:*|postgresql+*:*|mysql:*|mysql+*:*|mssql:*|mssql+*:*) ;;
  *) die "--backend-store-uri must be a database URI (sqlite:///..., postgresql://...); MLflow 3 refuses bare file stores, got '$(mask "$BACKEND")'" ;;
esac
# SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the project installs psycopg2.
case $BACKEND in
  postgresql+psycopg2:*)
    "$PY" -c "import psycopg2" 2>/dev/null || die "a postgresql+psycopg2:// backend needs psycopg2 in $VENV: pip install psycopg2-binary" ;;
  postgresql:*|postgresql+psycopg:*)
    "$PY" -c "import psycopg" 2>/dev/null ||
      die "$(mask "$BACKEND") needs psycopg 3, absent from $VENV; write postgresql+psycopg2://... (psycopg2-binary) or pip install 'psycopg[binary]'" ;;
esac
if [[ $ARTIFACTS == s3://* ]]; then
  "$PY" -c "import boto3" 2>/dev/null || die "an s3:// artifact store needs boto3 in $VENV: pip install boto3"
fi

# Which Host headers MLflow 3 accepts. Bound to loopback, its default (localhost and private
# addresses) is right. Bound to an interface other machines reach, they send this machine's
# name or address, which the default may not cover (e.g. a public or TEST-NET address).
if [ -z "$ALLOWED_HOSTS" ] && [ "$HOST" != 127.0.0.1 ] && [ "$HOST" != localhost ]; then
  names=(localhost 127.0.0.1 "$(hostname)" "$(hostname -f 2>/dev/null || hostname)")
  # shellcheck disable=SC2207
  names+=($(hostname -I 2>/dev/null || true))
  [ "$HOST" = 0.0.0.0 ] || names+=("$HOST")
  ALLOWED_HOSTS=$(printf '%s\n' "${names[@]}" | awk 'NF && !seen[$0]++ {printf "%s%s,%s:*", sep, $0, $0; sep=","}')
fi

exec 9> "$DIR/server.lock"
flock 9  # the pipeline takes the same lock (pipeline/mlflow_server.py) before it starts a server

# -- already running? ------------------------------------------------------------------------
running=$("$PY" - "$DIR/server.json" <<'EOF'
import json, os, sys, urllib.request
try:
    state = json.load(open(sys.argv[1]))
    os.kill(int(state["pid"]), 0)
    with urllib.request.urlopen(state["uri"].rstrip("/") + "/health", timeout=3) as r:
        ok = r.status == 200
except Exception:
    ok = False
# uri, then the backend and artifact store it was started with ("" if the pipeline started it)
print("\t".join([state["uri"], state.get("backend", ""), state.get("artifacts", "")]) if ok else "")
EOF
)
if [ -n "$running" ]; then
  IFS=$'\t' read -r running_uri running_backend running_artifacts <<< "$running"
  if [ -n "$running_backend" ] && { [ "$running_backend" != "$(mask "$BACKEND")" ] || [ "$running_artifacts" != "$ARTIFACTS" ]; }; then
    die "the server running for $DIR ($running_uri) uses $running_backend and $running_artifacts; stop it first: $HERE/stop-mlflow.sh --dir $DIR"
  fi
  echo "An MLflow server for $DIR is already running: $running_uri"
  echo "  export MLFLOW_TRACKING_URI=$running_uri"
  exit 0
fi

# -- start -----------------------------------------------------------------------------------
if [ -z "$PORT" ]; then
  PORT=$("$PY" -c "import socket; s=socket.socket(); s.bind(('$HOST' if '$HOST' != '0.0.0.0' else '', 0)); print(s.getsockname()[1])")
elif "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null; then
  die "port $PORT is already in use"
fi
CLIENT_HOST=$HOST
[ "$HOST" != 0.0.0.0 ] || CLIENT_HOST=127.0.0.1
URI=http://$CLIENT_HOST:$PORT

args=(server --host "$HOST" --port "$PORT" --workers "$WORKERS"
      --serve-artifacts --artifacts-destination "$ARTIFACTS")
[ -z "$ALLOWED_HOSTS" ] || args+=(--allowed-hosts "$ALLOWED_HOSTS")
rm -f "$DIR/server.pid"
# Own session, so stop-mlflow.sh (and the pipeline) can stop the server and its uvicorn workers
# as one process group.
# MLflow 3's GenAI job runner (seven huey processes) has no use here: off.
# 9>&-: the server must not inherit (and hold) the start-up lock.
# shellcheck disable=SC2016  # $$ and $@ belong to the inner shell
MLFLOW_BACKEND_STORE_URI=$BACKEND MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
  setsid bash -c 'echo $$ > "$0"; exec "$@"' "$DIR/server.pid" \
  "$VENV/bin/mlflow" "${args[@]}" >> "$DIR/server.log" 2>&1 < /dev/null 9>&- &
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -s "$DIR/server.pid" ] && break; sleep 0.1; done
PID=$(cat "$DIR/server.pid")

echo "Starting MLflow ($(mask "$BACKEND"), artifacts $ARTIFACTS) on $URI ..."
deadline=$((SECONDS + STARTUP_TIMEOUT_S))
until "$PY" -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('$URI/health', timeout=2).status != 200)" 2>/dev/null; do
  if ! kill -0 "$PID" 2>/dev/null; then
    tail -n 20 "$DIR/server.log" >&2
    die "mlflow server exited during start-up (log: $DIR/server.log)"
  fi
  if [ $SECONDS -ge $deadline ]; then
    kill -TERM -- "-$PID" 2>/dev/null || true
    tail -n 20 "$DIR/server.log" >&2
    die "mlflow server did not answer on $URI/health within ${STARTUP_TIMEOUT_S}s (log: $DIR/server.log)"
  fi
  sleep 0.5
done

# server.json is the pipeline's record of a running local server ({"uri", "pid"}); the extra
# keys let a second start-mlflow.sh notice a different backend. The password stays out of it.
"$PY" -c "import json,sys; json.dump(dict(uri=sys.argv[1], pid=int(sys.argv[2]), backend=sys.argv[3], artifacts=sys.argv[4]), open(sys.argv[5], 'w'))" \
  "$URI" "$PID" "$(mask "$BACKEND")" "$ARTIFACTS" "$DIR/server.json"
echo "export MLFLOW_TRACKING_URI=$URI" > "$DIR/mlflow.env"
echo "MLflow tracking server up: $URI (pid $PID)"
[ -z "$ALLOWED_HOSTS" ] || echo "  allowed Host headers: $ALLOWED_HOSTS"
echo "  export MLFLOW_TRACKING_URI=$URI      # or: source $DIR/mlflow.env"
echo "  runs table: $URI/#/experiments"
echo "Stop it: $HERE/stop-mlflow.sh --dir $DIR"
