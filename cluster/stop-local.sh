#!/usr/bin/env bash
# Stop the cluster that cluster/start-local.sh started: exactly the processes in RUN_DIR/pids.
#
# usage: cluster/stop-local.sh
# environment: RUN_DIR (default cluster/run), GRACE seconds before SIGKILL (default 10)
#
# Each process was started as the leader of its own process group, so the whole group goes
# (a worker's nanny and the worker process it runs): SIGTERM first, SIGKILL after GRACE seconds.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
run_dir="${RUN_DIR:-$here/run}"
grace="${GRACE:-10}"
pids="$run_dir/pids"

if [ ! -s "$pids" ]; then
  echo "stop-local: no $pids: nothing started from $run_dir is running" >&2
  exit 0
fi

# Workers first (they are listed after the scheduler), so they do not try to reconnect.
groups=$(awk '{print $2}' "$pids" | tac)
running() {
  local group
  for group in $groups; do
    if kill -0 -- "-$group" 2>/dev/null; then return 0; fi
  done
  return 1
}

for group in $groups; do kill -TERM -- "-$group" 2>/dev/null || true; done
for _ in $(seq 1 $((grace * 10))); do
  running || break
  sleep 0.1
done
for group in $groups; do kill -KILL -- "-$group" 2>/dev/null || true; done
rm -f "$pids" "$run_dir/scheduler.json"
echo "stopped $(echo $groups | wc -w) processes started from $run_dir"
