"""A Dask cluster of a test's own, started and stopped with the operator scripts in ``cluster/``.

Tests that hurt a cluster (kill a worker) or test the scripts start one here
instead of using the shared ``dask_cluster`` fixture. ``cluster/start-local.sh`` runs a scheduler on a free port and N
single-threaded workers; ``cluster/stop-local.sh`` stops exactly the
processes in its pid file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CLUSTER_SCRIPTS = Path(__file__).resolve().parent.parent / "cluster"
SCRIPT_TIMEOUT = 90


@dataclass(frozen=True)
class ScriptCluster:
    """A running cluster: scheduler address, folder of pid file and logs, and the pid of each process by name."""

    address: str
    run_dir: Path
    pids: dict[str, int]


def script_environment(run_dir: Path) -> dict[str, str]:
    """The scripts' environment: this interpreter, ``run_dir``, any free ports."""
    return {**os.environ, "PYTHON": sys.executable, "RUN_DIR": str(run_dir), "PORT": "0", "DASHBOARD_PORT": "0"}


def read_pids(run_dir: Path) -> dict[str, int]:
    """The ``<name> <pid>`` lines of ``run_dir/pids``."""
    lines = (run_dir / "pids").read_text().split("\n")
    return {name: int(pid) for name, pid in (line.split() for line in lines if line.strip())}


def run_script(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run ``cluster/<name>`` to completion; a non-zero exit fails with its output."""
    done = subprocess.run([str(CLUSTER_SCRIPTS / name), *args], env=env, capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{name} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@contextmanager
def script_cluster(run_dir: Path, workers: int) -> Iterator[ScriptCluster]:
    """Start a cluster of ``workers`` workers with ``cluster/start-local.sh``; stop it with ``stop-local.sh`` at the end."""
    environment = script_environment(run_dir)
    started = run_script("start-local.sh", environment, str(workers))
    try:
        yield ScriptCluster(started.stdout.strip(), run_dir, read_pids(run_dir))
    finally:
        run_script("stop-local.sh", environment)


def is_running(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
