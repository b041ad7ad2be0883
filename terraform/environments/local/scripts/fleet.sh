#!/bin/sh
# Start or stop a local appliance fleet for terraform/environments/local.
#   fleet.sh start   FLEET_STATE_DIR, FLEET_APPLIANCE_BIN, FLEET_URL, FLEET_TIMEOUT and APPLIANCE_* set
#                    (FLEET_RESTARTS: the restart count of main.tf, kept in FLEET_STATE_DIR/restarts)
#   fleet.sh stop    FLEET_PIDFILE set (FLEET_DATA: the storage root, named as what stays)
# `appliance up` runs detached (its own session, output to a log), so Terraform does not wait on it.
set -eu

probe() { # 0 when $1 answers 200
  if command -v curl >/dev/null 2>&1; then
    curl -fs -o /dev/null --max-time 2 "$1" 2>/dev/null
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" >/dev/null 2>&1
  fi
}

is_fleet() { # 0 when pid $1 is alive and is an appliance process (not a recycled pid)
  kill -0 "$1" 2>/dev/null || return 1
  # The whole command line: `ps -o args=` cuts it at $COLUMNS, and from a long path "appliance" falls
  # past the cut (the stop was then skipped). /proc/PID/cmdline is whole; elsewhere, ps -ww is unlimited.
  if [ -r "/proc/$1/cmdline" ]; then
    tr '\000' ' ' <"/proc/$1/cmdline" | grep -q appliance
  else
    ps -ww -o args= -p "$1" 2>/dev/null | grep -q appliance
  fi
}

start() {
  pidfile="$FLEET_STATE_DIR/appliance.pid"
  log="$FLEET_STATE_DIR/appliance.log"
  mkdir -p "$FLEET_STATE_DIR"
  if [ -f "$pidfile" ] && is_fleet "$(cat "$pidfile")"; then
    echo "fleet.sh: a fleet is already running (pid $(cat "$pidfile")); run terraform destroy first" >&2
    exit 1
  fi
  if probe "$FLEET_URL/healthz"; then
    echo "fleet.sh: something already answers at $FLEET_URL; choose another port" >&2
    exit 1
  fi
  # Its own session (where setsid exists), so no terminal signal of Terraform's reaches it.
  if command -v setsid >/dev/null 2>&1; then
    setsid nohup "$FLEET_APPLIANCE_BIN" up >"$log" 2>&1 </dev/null &
  else
    nohup "$FLEET_APPLIANCE_BIN" up >"$log" 2>&1 </dev/null &
  fi
  pid=$!
  echo "$pid" >"$pidfile"
  echo "${FLEET_RESTARTS:-0}" >"$FLEET_STATE_DIR/restarts"
  waited=0
  while [ "$waited" -lt "$((FLEET_TIMEOUT * 2))" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$pidfile"
      echo "fleet.sh: appliance up exited before the fleet was ready; its log ($log):" >&2
      tail -n 40 "$log" >&2
      exit 1
    fi
    if probe "$FLEET_URL/readyz"; then
      echo "fleet.sh: fleet ready at $FLEET_URL (pid $pid, log $log)"
      exit 0
    fi
    sleep 0.5
    waited=$((waited + 1))
  done
  echo "fleet.sh: the fleet was not ready after ${FLEET_TIMEOUT}s; stopping it. Its log ($log):" >&2
  tail -n 40 "$log" >&2
  FLEET_PIDFILE="$pidfile" stop
  exit 1
}

stop() {
  pidfile="$FLEET_PIDFILE"
  if [ ! -f "$pidfile" ]; then
    echo "fleet.sh: no pidfile at $pidfile; nothing to stop"
    return 0
  fi
  pid=$(cat "$pidfile")
  if is_fleet "$pid"; then
    # SIGTERM: the supervisor stops its nodes gracefully (and they die with it if it is killed).
    kill -TERM "$pid" 2>/dev/null || true
    waited=0
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 60 ]; do
      sleep 0.5
      waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "fleet.sh: pid $pid still alive after 30s; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile" "$(dirname "$pidfile")/restarts"
  echo "fleet.sh: fleet stopped (pid $pid)"
  if [ -n "${FLEET_DATA:-}" ]; then
    echo "fleet.sh: left in place: the tables in $FLEET_DATA (and the log); delete that folder to start afresh"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: fleet.sh start|stop" >&2; exit 2 ;;
esac
