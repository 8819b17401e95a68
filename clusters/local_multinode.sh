#!/usr/bin/env bash
# A multi-node Ray cluster on one machine: a head and one Ray node per worker, each advertising
# the custom resource of one node type of clusters/aws.yaml (see clusters/README.md), so that
# stage placement can be tried on a laptop. Every node is a separate raylet on this host.
#
#   clusters/local_multinode.sh start                 # head + workers of PHI4RAY_WORKERS
#   ray job submit --address http://127.0.0.1:8266 --working-dir . -- \
#       python jobs/pipeline.py --recipe tiny --run-dir /tmp/runs/tiny
#   clusters/local_multinode.sh status
#   clusters/local_multinode.sh stop                  # stops this cluster's processes only
#
# Settings (environment):
#   PHI4RAY_WORKERS         "role:cpus ..." one worker node each (default "data:2 synth:1 train:2 serve:1");
#                           the node gets `cpus` CPUs and {"role": cpus}; role is data, synth,
#                           train or serve (or any name a recipe asks for)
#   PHI4RAY_PORT            GCS port of the head (default 6380, so that a default Ray on 6379 is untouched)
#   PHI4RAY_DASHBOARD_PORT  dashboard and job server (default 8266)
#   PHI4RAY_TEMP_DIR        Ray's --temp-dir; also holds this cluster's state (default /tmp/phi4ray-local)
#
# The head has no CPUs (as on the cloud configs): tasks and actors run on the workers; job
# drivers run on the head. `stop` ends the processes of this cluster's sessions, never another
# Ray on the machine (unlike `ray stop`, which stops every Ray of the user).
set -euo pipefail

WORKERS=${PHI4RAY_WORKERS:-"data:2 synth:1 train:2 serve:1"}
PORT=${PHI4RAY_PORT:-6380}
DASHBOARD_PORT=${PHI4RAY_DASHBOARD_PORT:-8266}
TEMP_DIR=${PHI4RAY_TEMP_DIR:-/tmp/phi4ray-local}
STATE="$TEMP_DIR/phi4ray-sessions"
PYTHON=${PYTHON:-python}
# How long a raylet waits for its agents to register (Ray's default is short for a loaded laptop).
export RAY_agent_register_timeout_ms=${RAY_agent_register_timeout_ms:-120000}

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Ports a second raylet on the same host would otherwise take from the first (fixed defaults).
node_ports() {
  echo "--node-manager-port=$(free_port) --object-manager-port=$(free_port)" \
       "--metrics-export-port=$(free_port) --dashboard-agent-listen-port=$(free_port)" \
       "--dashboard-agent-grpc-port=$(free_port) --runtime-env-agent-port=$(free_port)"
}

# Run `ray start ARGS` as the leader of a new session and record the session, so that `stop`
# finds every process the node starts (its workers too) and nothing else. On a loaded machine a
# raylet can give up waiting for its agents (Ray waits 15 s for the dashboard agent's port, and
# `ray start` 30 s for the raylet); such a node is stopped and started again, up to 3 times.
start_node() {
  local name=$1 attempt sid
  shift
  for attempt in 1 2 3; do
    setsid ray start "$@" > "$TEMP_DIR/$name.out" 2>&1 &
    sid=$!
    echo "$sid" >> "$STATE" # before it is up: `stop` must also find a node that failed half-way
    if wait "$sid"; then
      return 0
    fi
    echo "local_multinode: $name failed to start (attempt $attempt):" >&2
    tail -n 5 "$TEMP_DIR/$name.out" >&2
    stop_sessions "$sid"
  done
  return 1
}

cmd_start() {
  if [ -s "$STATE" ]; then
    echo "local_multinode: already started ($STATE); run '$0 stop' first" >&2
    exit 1
  fi
  mkdir -p "$TEMP_DIR"
  : > "$STATE"
  # shellcheck disable=SC2046
  start_node head --head --node-ip-address=127.0.0.1 --port="$PORT" --num-cpus=0 \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
    --ray-client-server-port="$(free_port)" --temp-dir="$TEMP_DIR" --disable-usage-stats $(node_ports) \
    || { cmd_stop; exit 1; }
  echo "local_multinode: head at 127.0.0.1:$PORT, dashboard http://127.0.0.1:$DASHBOARD_PORT"
  local i=0 spec role cpus
  for spec in $WORKERS; do
    role=${spec%%:*}
    cpus=${spec#*:}
    i=$((i + 1))
    # shellcheck disable=SC2046
    start_node "worker$i-$role" --address="127.0.0.1:$PORT" --node-ip-address=127.0.0.1 --num-cpus="$cpus" \
      --resources="{\"$role\": $cpus}" --temp-dir="$TEMP_DIR" --disable-usage-stats $(node_ports) \
      || { cmd_stop; exit 1; }
    echo "local_multinode: worker $i: $cpus CPUs, {\"$role\": $cpus}"
  done
  echo "local_multinode: submit jobs with --address http://127.0.0.1:$DASHBOARD_PORT; stop with '$0 stop'"
}

session_pids() {  # every live process in sessions "$@", and their descendants
  "$PYTHON" - "$@" <<'PY'
import os, sys
sids = {int(x) for x in sys.argv[1:]}
procs = {}
for d in os.listdir("/proc"):
    if d.isdigit():
        try:
            stat = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        procs[int(d)] = (int(fields[1]), int(fields[3]))  # ppid, session id
mine = {p for p, (_, sid) in procs.items() if sid in sids}
grew = True
while grew:
    more = {p for p, (ppid, _) in procs.items() if ppid in mine} - mine
    mine |= more
    grew = bool(more)
print(" ".join(map(str, sorted(mine - {os.getpid()}))))
PY
}

stop_sessions() {  # SIGTERM, then SIGKILL after 5 s, to the processes of sessions "$@"
  [ "$#" -gt 0 ] || return 0
  local pids
  pids=$(session_pids "$@")
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for _ in 1 2 3 4 5; do
    sleep 1
    pids=$(session_pids "$@")
    [ -n "$pids" ] || return 0
  done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
}

cmd_stop() {
  if [ -s "$STATE" ]; then
    # shellcheck disable=SC2046
    stop_sessions $(cat "$STATE")
  fi
  rm -f "$STATE"
  echo "local_multinode: stopped"
}

cmd_status() {
  RAY_ADDRESS="127.0.0.1:$PORT" ray status
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status   (settings: see the top of this file)" >&2; exit 2 ;;
esac
