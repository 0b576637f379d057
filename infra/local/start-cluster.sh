#!/usr/bin/env bash
# Start a local multi-node Ray cluster on this machine: a head node plus N worker nodes, each its
# own raylet with its own ports and temp dir, token authentication on. Writes <dir>/cluster.env
# with everything a client needs (`source` it, then `ray job submit ...`).
#
#   infra/local/start-cluster.sh [--workers N] [--head-cpus N] [--worker-cpus N]
#                                [--object-store-mb MB] [--dir DIR]
# By default the nodes together declare this machine's CPUs (nproc), split between them.
#
# Idempotent: if the same cluster is already up in DIR it says so and exits 0. Stop it with
# infra/local/stop-cluster.sh (same --dir).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VENV=${WHALE_VENV:-$REPO/.venv}
DIR=${WHALE_CLUSTER_DIR:-/tmp/whale-ray-$(id -un)}
WORKERS=1
HEAD_CPUS=""    # default: sized to the machine below, once --workers is known
WORKER_CPUS=""
OBJECT_STORE_MB=1024
# Ray puts Unix sockets under <dir>/<node>/session_<timestamp>_<pid>/sockets/; AF_UNIX paths
# stop at 107 bytes, which leaves about this much for <dir>.
MAX_DIR_LEN=40

die() { echo "start-cluster: error: $*" >&2; exit 1; }
usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
is_count() { [[ $1 =~ ^[0-9]+$ ]]; }

while [ $# -gt 0 ]; do
  case $1 in
    --workers) WORKERS=${2:?--workers needs a value}; shift 2 ;;
    --head-cpus) HEAD_CPUS=${2:?--head-cpus needs a value}; shift 2 ;;
    --worker-cpus) WORKER_CPUS=${2:?--worker-cpus needs a value}; shift 2 ;;
    --object-store-mb) OBJECT_STORE_MB=${2:?--object-store-mb needs a value}; shift 2 ;;
    --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

# Every node on one machine shares its cores: declaring more CPUs than there are makes Ray place
# more busy workers than cores (measured on 2 cores with 2+2 declared: pretrain 14 min 25 s against
# 4 min 13 s in-process). So the nodes split the machine's CPUs: each worker node nproc/(workers+1)
# (at least 1), the head the rest (at least 1).
is_count "$WORKERS" || die "--workers must be a non-negative integer, got '$WORKERS'"
MACHINE_CPUS=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)
SHARE=$((MACHINE_CPUS / (WORKERS + 1)))
[ "$SHARE" -ge 1 ] || SHARE=1
[ -n "$WORKER_CPUS" ] || WORKER_CPUS=$SHARE
if [ -z "$HEAD_CPUS" ]; then
  HEAD_CPUS=$((MACHINE_CPUS - WORKERS * WORKER_CPUS))
  [ "$HEAD_CPUS" -ge 1 ] || HEAD_CPUS=1
fi

for pair in "workers:$WORKERS" "head-cpus:$HEAD_CPUS" "worker-cpus:$WORKER_CPUS" "object-store-mb:$OBJECT_STORE_MB"; do
  is_count "${pair#*:}" || die "--${pair%%:*} must be a non-negative integer, got '${pair#*:}'"
done
[ "$OBJECT_STORE_MB" -ge 100 ] || die "--object-store-mb must be at least 100 (Ray's minimum is 75 MiB)"
[ -x "$VENV/bin/ray" ] || die "no Ray in $VENV (run 'make install' first, or set WHALE_VENV to the virtualenv to use)"
PY=$VENV/bin/python
CTL=("$PY" "$HERE/cluster_ctl.py")

mkdir -p "$(dirname "$DIR")"
DIR=$(cd "$(dirname "$DIR")" && pwd)/$(basename "$DIR")
[ ${#DIR} -le $MAX_DIR_LEN ] || die "--dir '$DIR' is ${#DIR} characters; Ray's Unix socket paths need it at most $MAX_DIR_LEN (try /tmp/<name>)"
STATE=$DIR/cluster.state
ENV_FILE=$DIR/cluster.env
SHAPE="workers=$WORKERS head_cpus=$HEAD_CPUS worker_cpus=$WORKER_CPUS object_store_mb=$OBJECT_STORE_MB"

print_usage_hint() {
  cat <<EOF

Use it from a shell (with the project's virtualenv active):
  source $ENV_FILE
  ray job submit --working-dir . -- python -m pipeline run configs/tiny.yaml --set output_root=\$PWD/outputs
(a job runs in an unpacked copy of its working dir, inside $DIR: a relative output_root would
 land there and vanish with the cluster)
Stop it:
  $HERE/stop-cluster.sh${DIR_ARG}
EOF
}
DIR_ARG=""
[ "$DIR" = "/tmp/whale-ray-$(id -un)" ] || DIR_ARG=" --dir $DIR"

# -- already running? ------------------------------------------------------------------------
if [ -f "$STATE" ]; then
  # shellcheck disable=SC1090  # our own state file
  running_shape=$(. "$STATE"; echo "$SHAPE")
  # shellcheck disable=SC1090
  gcs_port=$(. "$STATE"; echo "$GCS_PORT")
  if "${CTL[@]}" alive --dir "$DIR" --gcs-port "$gcs_port"; then
    if [ "$running_shape" = "$SHAPE" ]; then
      echo "A local Ray cluster is already running in $DIR ($running_shape)."
      print_usage_hint
      exit 0
    fi
    die "a cluster with a different shape is running in $DIR ($running_shape); stop it first: $HERE/stop-cluster.sh${DIR_ARG}"
  fi
  echo "Found the state of a cluster that is no longer running in $DIR; cleaning up."
  "$HERE/stop-cluster.sh" --dir "$DIR" >/dev/null
fi
if [ -e "$DIR" ]; then
  [ -f "$DIR/.whale-ray-cluster" ] || [ -z "$(ls -A "$DIR")" ] ||
    die "$DIR exists and is not a cluster directory made by this script; pick another --dir"
  "$HERE/stop-cluster.sh" --dir "$DIR" >/dev/null  # leftovers of an interrupted start
fi

# -- start -----------------------------------------------------------------------------------
mkdir -p "$DIR"
chmod 700 "$DIR"
touch "$DIR/.whale-ray-cluster"
started_ok=0
on_exit() {
  if [ $started_ok -eq 0 ]; then
    echo "start-cluster: failed; stopping what was started. Logs: $DIR/*.log" >&2
    for log in "$DIR"/*.log; do [ -f "$log" ] && { echo "--- $log" >&2; tail -n 15 "$log" >&2; }; done
    "$HERE/stop-cluster.sh" --dir "$DIR" --keep-logs >/dev/null 2>&1 || true
  fi
}
trap on_exit EXIT

# A token per cluster, in the cluster's own directory: clients and every node read it through
# RAY_AUTH_TOKEN_PATH. Ray 2.59+ turns token auth on for local clusters, but only when the
# client side also has RAY_AUTH_MODE=token does `ray job submit` send the token ("Missing
# authentication token" otherwise), so we set the mode explicitly everywhere.
(umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(32))' > "$DIR/auth_token")
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$DIR/auth_token
# A RAY_AUTH_TOKEN in the caller's environment would win over the file; a RAY_ADDRESS from
# another cluster's env file has no business here either.
unset RAY_AUTH_TOKEN RAY_ADDRESS RAY_API_SERVER_ADDRESS
export RAY_USAGE_STATS_ENABLED=0
# Job entrypoints run `python` from PATH: make it the virtualenv's on every node.
export PATH=$VENV/bin:$PATH
export VIRTUAL_ENV=$VENV
# Marks every process this cluster starts (see cluster_ctl.py) so stop-cluster.sh finds them.
export WHALE_RAY_CLUSTER=$DIR
# Job drivers run in an unpacked copy of the working dir: a relative output_root (the default
# `outputs`) resolves against the project instead, so `ray job submit` and `make run` share caches.
export WHALE_PROJECT_DIR=$REPO

# gcs, dashboard (job API), ray client server, and one dashboard-agent port per node: the agent's
# default (52365) would collide between nodes on one machine. Everything else Ray picks itself.
read -r -a PORTS <<< "$("${CTL[@]}" free-ports $((3 + WORKERS + 1)))"
GCS_PORT=${PORTS[0]}
DASHBOARD_PORT=${PORTS[1]}
CLIENT_PORT=${PORTS[2]}
OBJECT_STORE_BYTES=$((OBJECT_STORE_MB * 1024 * 1024))

# Each node runs in its own session, recorded in <node>.sid, so stop-cluster.sh can find it.
start_node() {
  local name=$1; shift
  # shellcheck disable=SC2016  # $$ and $@ belong to the inner shell
  setsid --wait bash -c 'echo $$ > "$0"; exec "$@"' "$DIR/$name.sid" \
    timeout 120 "$VENV/bin/ray" start "$@" > "$DIR/$name.log" 2>&1 ||
    die "ray start failed for the $name node (see $DIR/$name.log)"
}

echo "Starting the head node (GCS port $GCS_PORT, job API http://127.0.0.1:$DASHBOARD_PORT) ..."
start_node head --head \
  --port "$GCS_PORT" \
  --num-cpus "$HEAD_CPUS" --num-gpus 0 \
  --object-store-memory "$OBJECT_STORE_BYTES" \
  --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
  --ray-client-server-port "$CLIENT_PORT" \
  --dashboard-agent-listen-port "${PORTS[3]}" \
  --temp-dir "$DIR/head" \
  --node-name head \
  --disable-usage-stats

# Ray advertises the machine's routable address even when asked for 127.0.0.1 (it rewrites
# loopback so that other machines could join); read back the address it really uses.
[ -s "$DIR/head/ray_current_cluster" ] || die "the head node did not record its address (see $DIR/head.log)"
GCS_ADDRESS=$(cat "$DIR/head/ray_current_cluster")

for i in $(seq 1 "$WORKERS"); do
  echo "Starting worker node $i ..."
  start_node "worker-$i" \
    --address "$GCS_ADDRESS" \
    --num-cpus "$WORKER_CPUS" --num-gpus 0 \
    --object-store-memory "$OBJECT_STORE_BYTES" \
    --dashboard-agent-listen-port "${PORTS[$((3 + i))]}" \
    --temp-dir "$DIR/worker-$i" \
    --node-name "worker-$i" \
    --disable-usage-stats
done

echo "Waiting for $((WORKERS + 1)) node(s) to report alive ..."
"${CTL[@]}" wait-ready --api "http://127.0.0.1:$DASHBOARD_PORT" --nodes $((WORKERS + 1)) --timeout 90 ||
  die "the cluster did not become ready"

cat > "$STATE" <<EOF
SHAPE="$SHAPE"
GCS_PORT=$GCS_PORT
DASHBOARD_PORT=$DASHBOARD_PORT
GCS_ADDRESS=$GCS_ADDRESS
EOF
cat > "$ENV_FILE" <<EOF
# Written by infra/local/start-cluster.sh on $(date -Iseconds); \`source\` this file.
# RAY_ADDRESS: for ray.init() / python -m pipeline run; RAY_API_SERVER_ADDRESS: for ray job ...
export RAY_ADDRESS=$GCS_ADDRESS
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$DIR/auth_token
unset RAY_AUTH_TOKEN  # it would take precedence over RAY_AUTH_TOKEN_PATH
EOF
started_ok=1
echo "Local Ray cluster up in $DIR: head ($HEAD_CPUS CPU) + $WORKERS worker node(s) ($WORKER_CPUS CPU each), token auth on."
echo "  dashboard / job API: http://127.0.0.1:$DASHBOARD_PORT    GCS: $GCS_ADDRESS"
print_usage_hint
