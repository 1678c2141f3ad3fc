#!/usr/bin/env bash
# A multi-node Ray cluster on one machine, for development: a head plus N worker nodes,
# every process on 127.0.0.1, the dashboard on 127.0.0.1, token auth with its own token file.
#
#   cluster/local.sh up [N]     start a head and N worker nodes (default 2); prints the address
#   cluster/local.sh env        the exports a client needs: eval "$(cluster/local.sh env)"
#   cluster/local.sh down       stop exactly the processes `up` started (never `ray stop`)
#
# One Python process (cluster/local_cluster.py) owns every node; its PID is recorded and
# stopping it stops its nodes. Worker nodes offer one `train_slot` each, so
# `run.worker_resources.train_slot=1` puts one training worker on each node.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
STATE=${BEGAN_LOCAL_CLUSTER:-$HOME/.began-dist/local-cluster}
PORT=${RAY_HEAD_PORT:-6390}
DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
PYTHON=${PYTHON:-$( [ -x "$HERE/../.venv/bin/python" ] && echo "$HERE/../.venv/bin/python" || echo python3 )}

export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$STATE/auth_token"

up() {
  local workers=${1:-2}
  mkdir -p "$STATE"
  if [ -f "$STATE/cluster.pid" ] && kill -0 "$(cat "$STATE/cluster.pid")" 2>/dev/null; then
    echo "a local cluster from $STATE is already up; run: $0 down" >&2
    exit 1
  fi
  [ -s "$RAY_AUTH_TOKEN_PATH" ] || "$PYTHON" -c "import secrets; print(secrets.token_hex(32))" >"$RAY_AUTH_TOKEN_PATH"
  chmod 600 "$RAY_AUTH_TOKEN_PATH"
  rm -f "$STATE/address"
  nohup "$PYTHON" "$HERE/local_cluster.py" --workers "$workers" --port "$PORT" \
    --dashboard-port "$DASHBOARD_PORT" --address-file "$STATE/address" >"$STATE/cluster.log" 2>&1 &
  echo $! >"$STATE/cluster.pid"
  for _ in $(seq 1 300); do
    [ -s "$STATE/address" ] && break
    kill -0 "$(cat "$STATE/cluster.pid")" 2>/dev/null || { echo "cluster failed; see $STATE/cluster.log" >&2; exit 1; }
    sleep 1
  done
  [ -s "$STATE/address" ] || { echo "cluster not up after 300 s; see $STATE/cluster.log" >&2; exit 1; }
  echo "Ray cluster up: head + $workers worker nodes on 127.0.0.1 (PID $(cat "$STATE/cluster.pid"))"
  echo "  address:   $(cat "$STATE/address")   (began-dist train --address $(cat "$STATE/address") ...)"
  echo "  dashboard: http://127.0.0.1:$DASHBOARD_PORT   (ray job submit --address http://127.0.0.1:$DASHBOARD_PORT ...)"
  echo "  clients:   eval \"\$($0 env)\""
}

down() {
  local pidfile="$STATE/cluster.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    local pid
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    echo "stopped the local cluster (PID $pid)"
  else
    echo "no local cluster running from $STATE"
  fi
  rm -f "$pidfile" "$STATE/address"
}

case ${1:-} in
  up) up "${2:-2}" ;;
  down) down ;;
  env) echo "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" ;;
  *) sed -n '2,11p' "$0"; exit 2 ;;
esac
