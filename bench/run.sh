#!/usr/bin/env bash
# corral's runtime figures, on this machine: bash bench/run.sh
#  - rolling reloads under load: failed requests (the goal: 0), requests/s, time per reload;
#  - a crash loop: the supervisor's own CPU time per spawn (the goal: nothing beyond spawning);
#  - idle: the supervisor's RSS and CPU with 8 workers doing nothing (the goal: ~0 CPU).
# Timing goals live here, not in the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
CORRAL=$PWD/target/release/corral
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# corral's CPU time (user + system) in ms, from /proc/PID/stat (proc(5), fields 14 and 15).
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) * 1000 / hz }' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }
# Waits (bounded) for a line in corral's log.
wait_log() { timeout 30 grep -q -m1 -- "$2" <(tail -n +1 -f "$1"); }

echo "== rolling reload under load: 4 workers, batch 1, 4 client threads, 3 reloads"
cat > "$dir/bench.toml" <<EOT
command = ["python3", "$PWD/tests/worker.py"]
workers = 4
[[listen]]
name = "http"
address = "127.0.0.1:$port"
EOT
"$CORRAL" run "$dir/bench.toml" --control "$dir/bench.sock" 2>"$dir/bench.log" &
pid=$!
wait_log "$dir/bench.log" "4/4 ready"
python3 bench/load.py "$port" 4 120 >"$dir/load.out" &
load=$!
for i in 1 2 3; do
  start=$(date +%s%N)
  "$CORRAL" reload bench --control "$dir/bench.sock" >/dev/null
  echo "reload $i: $(( ($(date +%s%N) - start) / 1000000 )) ms"
done
kill -TERM $load; wait $load || true
read -r ok failed secs <"$dir/load.out"
echo "requests: $ok ok, $failed failed, $(python3 -c "print(round($ok / $secs))") req/s over ${secs}s"
kill -TERM $pid; wait $pid || true

echo "== the same with a balanced listener (a socket per worker, each drained before its stop)"
sed -i 's/^address = .*/&\nbalance = true/' "$dir/bench.toml"
"$CORRAL" run "$dir/bench.toml" --control "$dir/bench.sock" 2>"$dir/bench.log" &
pid=$!
wait_log "$dir/bench.log" "4/4 ready"
python3 bench/load.py "$port" 4 120 >"$dir/load.out" &
load=$!
for i in 1 2 3; do
  start=$(date +%s%N)
  "$CORRAL" reload bench --control "$dir/bench.sock" >/dev/null
  echo "reload $i: $(( ($(date +%s%N) - start) / 1000000 )) ms"
done
kill -TERM $load; wait $load || true
read -r ok failed secs <"$dir/load.out"
echo "requests: $ok ok, $failed failed, $(python3 -c "print(round($ok / $secs))") req/s over ${secs}s"
kill -TERM $pid; wait $pid || true

echo "== crash loop: a worker that exits at once, restart.delay 10ms, max_delay 100ms, for 10s"
cat > "$dir/crash.toml" <<EOT
command = ["/bin/false"]
[readiness]
mode = "exec"
[restart]
delay = "10ms"
max_delay = "100ms"
EOT
"$CORRAL" run "$dir/crash.toml" --control "$dir/crash.sock" 2>"$dir/crash.log" &
pid=$!
wait_log "$dir/crash.log" "restarting in"
before=$(cpu_ms $pid); spawned=$(grep -c ": started" "$dir/crash.log")
sleep 10
after=$(cpu_ms $pid); spawns=$(( $(grep -c ": started" "$dir/crash.log") - spawned ))
echo "supervisor CPU: $(python3 -c "print(round($after - $before))") ms in 10 s for $spawns spawns ($(python3 -c "print(round(($after - $before) / max(1, $spawns), 2))") ms per spawn, fork and exec included)"
kill -TERM $pid; wait $pid || true

echo "== idle: 8 workers that sleep, for 10s"
cat > "$dir/idle.toml" <<EOT
command = ["sleep", "infinity"]
workers = 8
[readiness]
mode = "exec"
EOT
"$CORRAL" run "$dir/idle.toml" --control "$dir/idle.sock" 2>"$dir/idle.log" &
pid=$!
wait_log "$dir/idle.log" "8/8 ready"
before=$(cpu_ms $pid)
sleep 10
keeper=$(pgrep -P "$pid" -x corral-keeper)
echo "supervisor CPU: $(python3 -c "print(round($(cpu_ms $pid) - $before))") ms in 10 s idle; RSS $(rss_kib $pid) KiB; its keeper's RSS $(rss_kib "$keeper") KiB"
kill -TERM $pid; wait $pid || true
