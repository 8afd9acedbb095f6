#!/usr/bin/env bash
# Start a Dask cluster on this machine for numerai-dask: one scheduler and N single-threaded worker
# processes, in the background, with the worker environment of numerai_dask.clusters (one BLAS/OpenMP
# thread per worker thread, the memory spill thresholds). With SCHEDULER set, start only the workers,
# joining that scheduler: the way to add this machine's cores to a cluster on other machines.
#
# usage: cluster/start-local.sh [N_WORKERS]          (default: one worker per core)
#        SCHEDULER=tcp://10.0.0.5:8786 HOST=10.0.0.6 cluster/start-local.sh [N_WORKERS]
#
# environment (all optional):
#   HOST             the address the scheduler and workers listen on (default 127.0.0.1: this machine
#                    only; give the machine's address on a private network for other machines)
#   SCHEDULER        start workers only, for the scheduler at this address
#   PORT             scheduler port (default 8786; 0 = any free port)
#   DASHBOARD_PORT   scheduler dashboard port (default 8787; 0 = any free port)
#   RUN_DIR          where the pid file, scheduler.json and the logs go (default cluster/run)
#   PYTHON           an interpreter with numerai-dask installed (default .venv/bin/python, else python3)
#   MEMORY_LIMIT     per worker, e.g. 4GiB (default auto: the machine's memory shared by the workers)
#   STARTUP_TIMEOUT  seconds to wait for the scheduler and every worker (default 60)
#
# Prints the scheduler address (tcp://HOST:PORT) on stdout once every worker has joined; without
# SCHEDULER the address is also in RUN_DIR/scheduler.json (what cluster/processes.yaml reads). Writes "<name> <pid>" lines to RUN_DIR/pids;
# cluster/stop-local.sh stops exactly those processes.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
workers="${1:-$(getconf _NPROCESSORS_ONLN)}"
run_dir="${RUN_DIR:-$here/run}"
timeout="${STARTUP_TIMEOUT:-60}"
host="${HOST:-127.0.0.1}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$here/../.venv/bin/python" ]; then PYTHON="$(cd "$here/.." && pwd)/.venv/bin/python"; else PYTHON=python3; fi
fi
pids="$run_dir/pids"
scheduler_file="$run_dir/scheduler.json"

if ! [[ "$workers" =~ ^[1-9][0-9]*$ ]]; then
  echo "start-local: N_WORKERS must be a positive integer, got '$workers'" >&2
  exit 2
fi
if [ -s "$pids" ]; then
  echo "start-local: $pids exists: a cluster started from there may still run;" \
    "stop it with RUN_DIR=$run_dir $here/stop-local.sh" >&2
  exit 1
fi
mkdir -p "$run_dir"
rm -f "$scheduler_file"

# The one definition of the worker environment (BLAS threads, allocator, spill thresholds) is numerai_dask's.
worker_env="$("$PYTHON" -m numerai_dask.clusters worker-env)" || {
  echo "start-local: $PYTHON cannot run numerai_dask.clusters; install numerai-dask there (see README.md)" >&2
  exit 1
}
eval "$worker_env"

# launch NAME COMMAND...: run COMMAND as the leader of a new session (it outlives this shell and the
# terminal, and stop-local.sh stops its whole process group), output to RUN_DIR/NAME.log, pid recorded.
launch() {
  local name="$1"
  shift
  setsid "$@" >"$run_dir/$name.log" 2>&1 </dev/null &
  echo "$name $!" >>"$pids"
}

# Worker names are unique on a scheduler: workers joining one elsewhere are named after this host.
if [ -n "${SCHEDULER:-}" ]; then
  join=("$SCHEDULER")
  prefix="$(hostname)-$$-"
else
  prefix=""
  launch scheduler "$PYTHON" -m dask scheduler --host "$host" --port "${PORT:-8786}" \
    --dashboard-address "$host:${DASHBOARD_PORT:-8787}" --scheduler-file "$scheduler_file"
  join=(--scheduler-file "$scheduler_file")
fi
for i in $(seq 1 "$workers"); do
  launch "worker-$i" "$PYTHON" -m dask worker "${join[@]}" --name "${prefix}worker-$i" \
    --host "$host" --nthreads 1 --nworkers 1 --memory-limit "${MEMORY_LIMIT:-auto}" \
    --dashboard-address "$host:0"
done

if ! "$PYTHON" - "${SCHEDULER:-}" "$scheduler_file" "$prefix" "$workers" "$timeout" <<'PY'
"""Wait until the scheduler answers and every worker started here has joined; print its address."""
import os
import sys
import time

from distributed import Client

address, scheduler_file, prefix = sys.argv[1:4]
workers, timeout = int(sys.argv[4]), float(sys.argv[5])
deadline = time.monotonic() + timeout
while not address and not os.path.exists(scheduler_file):
    if time.monotonic() > deadline:
        sys.exit(f"no {scheduler_file} after {timeout:.0f}s")
    time.sleep(0.1)
where = {"address": address} if address else {"scheduler_file": scheduler_file}
mine = {f"{prefix}worker-{i}" for i in range(1, workers + 1)}
with Client(**where, timeout=f"{timeout}s") as client:
    while not mine <= {w["name"] for w in client.scheduler_info(n_workers=-1)["workers"].values()}:
        if time.monotonic() > deadline:
            sys.exit(f"not every worker joined after {timeout:.0f}s")
        time.sleep(0.2)
    print(client.scheduler.address)
PY
then
  echo "start-local: the cluster did not come up within ${timeout}s; the logs end with:" >&2
  for log in "$run_dir"/*.log; do
    echo "--- $log" >&2
    tail -n 15 "$log" >&2
  done
  RUN_DIR="$run_dir" "$here/stop-local.sh" >&2
  exit 1
fi
