#!/bin/sh
# A worker that is a shell script, as many are: it starts the real server as its child, waits
# until that one serves, and says so with systemd-notify(1). So READY=1 comes from a descendant
# of the worker (systemd-notify, a child of this shell), never from the worker itself. SIGTERM
# is passed on to the server, whose in-flight requests finish before it exits.
set -eu
here=$(dirname "$0")
dir=$(mktemp -d)
mkfifo "$dir/ready"
WORKER_LISTEN_ANY_PID=1 WORKER_READY_FIFO="$dir/ready" python3 "${WORKER_PY:-$here/../worker.py}" &
server=$!
trap 'kill -TERM "$server"; wait "$server"; exit 0' TERM
read -r _ < "$dir/ready"
rm -r "$dir"
systemd-notify --ready
wait "$server"
