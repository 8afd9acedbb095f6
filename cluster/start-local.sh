#!/usr/bin/env bash
# Start a Dask cluster on this machine for numerai-dask: one scheduler and N single-threaded worker
# processes on 127.0.0.1, each with one BLAS/OpenMP thread, running in the background.
#
# usage: cluster/start-local.sh [N_WORKERS]          (default: one worker per core)
#
# environment (all optional):
#   PORT             scheduler port (default 8786; 0 = any free port)
#   DASHBOARD_PORT   scheduler dashboard port (default 8787; 0 = any free port)
#   RUN_DIR          where the pid file, scheduler.json and the logs go (default cluster/run)
#   PYTHON           an interpreter with numerai-dask installed (default .venv/bin/python, else python3)
#   MEMORY_LIMIT     per worker, e.g. 4GiB (default auto: the machine's memory shared by the workers)
#   STARTUP_TIMEOUT  seconds to wait for the scheduler and every worker (default 60)
#
# Prints the scheduler address (tcp://127.0.0.1:PORT) on stdout once every worker has joined; the
# address is also in RUN_DIR/scheduler.json. Writes "<name> <pid>" lines to RUN_DIR/pids;
# cluster/stop-local.sh stops exactly those processes.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
workers="${1:-$(getconf _NPROCESSORS_ONLN)}"
run_dir="${RUN_DIR:-$here/run}"
timeout="${STARTUP_TIMEOUT:-60}"
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

# One thread per worker and one BLAS thread per process: two levels of threads fight over cores.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1

# launch NAME COMMAND...: run COMMAND as the leader of a new session (it outlives this shell and the
# terminal, and stop-local.sh stops its whole process group), output to RUN_DIR/NAME.log, pid recorded.
launch() {
  local name="$1"
  shift
  setsid "$@" >"$run_dir/$name.log" 2>&1 </dev/null &
  echo "$name $!" >>"$pids"
}

launch scheduler "$PYTHON" -m dask scheduler --host 127.0.0.1 --port "${PORT:-8786}" \
  --dashboard-address "127.0.0.1:${DASHBOARD_PORT:-8787}" --scheduler-file "$scheduler_file"
for i in $(seq 1 "$workers"); do
  launch "worker-$i" "$PYTHON" -m dask worker --scheduler-file "$scheduler_file" --name "worker-$i" \
    --host 127.0.0.1 --nthreads 1 --nworkers 1 --memory-limit "${MEMORY_LIMIT:-auto}" \
    --dashboard-address 127.0.0.1:0
done

if ! "$PYTHON" - "$scheduler_file" "$workers" "$timeout" <<'PY'
"""Wait until the scheduler has written its address and every worker has joined; print the address."""
import os
import sys
import time

from distributed import Client

scheduler_file, workers, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while not os.path.exists(scheduler_file):
    if time.monotonic() > deadline:
        sys.exit(f"no {scheduler_file} after {timeout:.0f}s")
    time.sleep(0.1)
with Client(scheduler_file=scheduler_file, timeout=f"{timeout}s") as client:
    client.wait_for_workers(workers, timeout=max(deadline - time.monotonic(), 1.0))
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
