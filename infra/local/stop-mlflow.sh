#!/usr/bin/env bash
# Stop the local MLflow server recorded in <dir>/server.json (started by start-mlflow.sh or by
# the pipeline): SIGTERM to its process group (the server and its uvicorn workers), SIGKILL after
# a grace period, then check that its port is closed.
#
#   infra/local/stop-mlflow.sh [--dir DIR] [--grace SECONDS]
#
# Idempotent: with no server recorded or running it says so and exits 0. Data (the SQLite file,
# the artifacts) stays where it is.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VENV=${WHALE_VENV:-$REPO/.venv}
DIR=$REPO/outputs/mlflow
GRACE=10

die() { echo "stop-mlflow: error: $*" >&2; exit 1; }
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case $1 in
    --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
    --grace) GRACE=${2:?--grace needs a value}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done
[[ $GRACE =~ ^[0-9]+$ ]] || die "--grace must be a whole number of seconds, got '$GRACE'"
[ -x "$VENV/bin/python" ] || die "no virtualenv at $VENV (set WHALE_VENV)"
PY=$VENV/bin/python

if [ ! -f "$DIR/server.json" ]; then
  echo "No MLflow server recorded in $DIR."
  exit 0
fi
read -r URI PID < <("$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); print(s['uri'], s['pid'])" "$DIR/server.json") ||
  die "$DIR/server.json is unreadable; stop the server by hand and delete the file"
PORT=${URI##*:}
PORT=${PORT%%/*}

# Only signal the recorded pid if it still is an MLflow server: pids get reused.
if kill -0 "$PID" 2>/dev/null && tr '\0' ' ' < "/proc/$PID/cmdline" 2>/dev/null | grep -q mlflow; then
  kill -TERM -- "-$PID" 2>/dev/null || kill -TERM "$PID"
  for _ in $(seq 1 $((GRACE * 10))); do
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$PID" 2>/dev/null; then
    echo "MLflow server $PID ignored SIGTERM for ${GRACE}s; sending SIGKILL."
    kill -KILL -- "-$PID" 2>/dev/null || kill -KILL "$PID" 2>/dev/null || true
    sleep 0.5
  fi
  # uvicorn workers share the group; make sure none outlived the parent
  mapfile -t leftover < <(ps -eo pid=,pgid= | awk -v g="$PID" '$2 == g {print $1}')
  [ ${#leftover[@]} -eq 0 ] || kill -KILL "${leftover[@]}" 2>/dev/null || true
  echo "Stopped the MLflow server at $URI (pid $PID)."
else
  echo "The MLflow server recorded in $DIR (pid $PID) is not running."
fi
rm -f "$DIR/server.json" "$DIR/server.pid" "$DIR/mlflow.env"

for _ in $(seq 1 50); do
  "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null || exit 0
  sleep 0.1
done
die "port $PORT still accepts connections; something else may be listening there"
