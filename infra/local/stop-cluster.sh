#!/usr/bin/env bash
# Stop the local Ray cluster that start-cluster.sh started in DIR, and only that one: every
# process of its nodes and job drivers gets SIGTERM, then SIGKILL after a grace period; the
# script fails if anything survives or if the cluster's ports are still taken.
#
#   infra/local/stop-cluster.sh [--dir DIR] [--keep-logs] [--grace SECONDS]
#
# Idempotent: with nothing running it says so and exits 0. It never runs `ray stop`, which
# kills every Ray process on the machine, other users' included.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VENV=${WHALE_VENV:-$REPO/.venv}
DIR=${WHALE_CLUSTER_DIR:-/tmp/whale-ray-$(id -un)}
KEEP_LOGS=0
GRACE=3

die() { echo "stop-cluster: error: $*" >&2; exit 1; }
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case $1 in
    --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
    --keep-logs) KEEP_LOGS=1; shift ;;
    --grace) GRACE=${2:?--grace needs a value}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done
[ -x "$VENV/bin/python" ] || die "no virtualenv at $VENV (set WHALE_VENV to the one the cluster was started with)"
[[ $GRACE =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--grace must be a number of seconds, got '$GRACE'"
if [ -d "$DIR" ]; then DIR=$(cd "$DIR" && pwd); fi

if [ -e "$DIR" ] && [ ! -f "$DIR/.whale-ray-cluster" ]; then
  die "$DIR is not a cluster directory made by start-cluster.sh; refusing to touch it"
fi

GCS_PORT="" DASHBOARD_PORT=""
if [ -f "$DIR/cluster.state" ]; then
  # shellcheck disable=SC1091
  . "$DIR/cluster.state"
fi

# Runs even without a state file: the marker still finds processes of a half-started cluster.
"$VENV/bin/python" "$HERE/cluster_ctl.py" stop --dir "$DIR" --grace "$GRACE" ||
  die "some processes of the cluster in $DIR could not be stopped (listed above)"

for port in $GCS_PORT $DASHBOARD_PORT; do
  if "$VENV/bin/python" -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; then
    die "port $port is still accepting connections after the cluster stopped"
  fi
done

if [ ! -d "$DIR" ]; then
  echo "No local Ray cluster in $DIR."
elif [ $KEEP_LOGS -eq 1 ]; then
  rm -f "$DIR/cluster.state" "$DIR/cluster.env" "$DIR/auth_token" "$DIR"/*.sid
  echo "Stopped the local Ray cluster in $DIR (logs kept there)."
else
  rm -rf "$DIR"
  echo "Stopped the local Ray cluster and removed $DIR."
fi
