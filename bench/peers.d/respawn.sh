#!/usr/bin/env bash
# bench/peers: keeps one copy of the app running behind nginx, as systemd's Restart=always with
# RestartSec=100ms would: restarts it 100 ms after it exits, whatever the reason.
#   respawn.sh PIDFILE COMMAND...    (PIDFILE: the running copy's pid)
# SIGTERM stops the copy (gracefully: it gets SIGTERM too) and the loop.
set -uo pipefail
pidfile=$1
shift
child=
stop() {
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
  [ -n "$child" ] && wait "$child" 2>/dev/null
  exit 0
}
trap stop TERM INT
while :; do
  "$@" &
  child=$!
  echo "$child" >"$pidfile"
  wait "$child" 2>/dev/null
  sleep 0.1
done
