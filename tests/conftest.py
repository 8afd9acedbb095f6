"""Real-part fixtures for the whole suite: an S3 endpoint over HTTP and a multi-process Dask cluster.

Nothing here is a mock. ``s3_server`` runs moto's standalone server (a real HTTP
S3 API on 127.0.0.1) in a subprocess; ``dask_cluster`` runs a real ``dask
scheduler`` and two ``dask worker`` processes. Both are session-scoped (started
once, on first use), set no environment variables in the test process, and are
stopped by process id (and process group) at the end. Subprocess output goes to
log files whose tail is quoted when something does not come up in time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import s3fs

from numerai_dask.clusters import WorkerSettings

STARTUP_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Service:
    """A subprocess started in its own process group, with its output in ``log``."""

    name: str
    process: subprocess.Popen
    log: Path

    def tail(self, lines: int = 30) -> str:
        """The last lines of the process's output, for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"

    def check_alive(self) -> None:
        """Fail the test session clearly if the process has already exited."""
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with status {self.process.returncode}; its output ends with:\n{self.tail()}"
            )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it has not exited after ``grace`` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if self.process.poll() is not None:
                break
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        # Children left in the group (e.g. a nanny's worker) go with it.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def start_service(name: str, command: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Service:
    """Start ``command`` in a new session (so its whole group can be stopped), output to ``log_dir/name.log``."""
    log = log_dir / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return Service(name, process, log)


def wait_until(ready: Callable[[], bool], services: list[Service], what: str, timeout: float = STARTUP_TIMEOUT) -> None:
    """Poll ``ready`` until it is true; fail with the services' output if one dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for service in services:
            service.check_alive()
        if ready():
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {s.name} ---\n{s.tail()}" for s in services)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s; output:\n{tails}")


# --------------------------------------------------------------------- S3


@dataclass(frozen=True)
class S3Server:
    """A running S3-compatible endpoint: its URL and the s3fs ``storage_options`` that reach it."""

    endpoint_url: str
    storage_options: dict = field(hash=False)

    def filesystem(self) -> s3fs.S3FileSystem:
        """An s3fs filesystem on this endpoint (for tests that write layouts directly)."""
        return s3fs.S3FileSystem(**self.storage_options)


def _accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _answers_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, even if with an error status
    except OSError:
        return False


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 API over HTTP on 127.0.0.1: moto's standalone server in a subprocess.

    Yields an :class:`S3Server`; its ``storage_options`` carry dummy credentials
    and the endpoint explicitly, so no AWS environment variable is set or needed.
    The server is stopped by process id at the end of the session.
    """
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    service = start_service(
        "moto-server",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        tmp_path_factory.mktemp("moto"),
    )
    try:
        wait_until(lambda: _answers_http(endpoint + "/moto-api/"), [service], f"moto server at {endpoint}")
        yield S3Server(
            endpoint_url=endpoint,
            storage_options={
                "key": "testing-key",
                "secret": "testing-secret",
                "client_kwargs": {"endpoint_url": endpoint},
            },
        )
    finally:
        service.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh, empty bucket on ``s3_server`` for one test; yields ``s3://<bucket>`` and deletes it afterwards."""
    fs = s3_server.filesystem()
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    fs.mkdir(bucket)
    try:
        yield f"s3://{bucket}"
    finally:
        fs.invalidate_cache()
        fs.rm(bucket, recursive=True)


# --------------------------------------------------------------------- Dask


def _dask_command(*args: str) -> list[str]:
    """The ``dask`` CLI of the running interpreter (works from a venv without activating it)."""
    return [sys.executable, "-m", "dask", *args]


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real multi-process Dask cluster on 127.0.0.1; yields the scheduler address ``tcp://127.0.0.1:PORT``.

    One ``dask scheduler`` process and two ``dask worker`` processes (one thread,
    one worker process each, 2 GiB memory limit, the project's worker environment). Ready when a
    Client sees both workers; all three process groups are stopped at the end.
    """
    from distributed import Client

    log_dir = tmp_path_factory.mktemp("dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    services = [
        start_service(
            "dask-scheduler",
            _dask_command("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"),
            log_dir,
        )
    ]
    try:
        wait_until(lambda: _accepts_tcp(port), services, f"Dask scheduler at {address}")
        services += [
            start_service(
                f"dask-worker-{i}",
                _dask_command(
                    "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--nworkers", "1",
                    "--memory-limit", "2GiB", "--no-dashboard",
                ),
                log_dir,
                env=WorkerSettings().environment(),
            )
            for i in range(2)
        ]
        with Client(address, timeout=f"{STARTUP_TIMEOUT:.0f}s") as client:
            wait_until(lambda: len(client.scheduler_info()["workers"]) >= 2, services,
                       f"two Dask workers at {address}")
        yield address
    finally:
        for service in reversed(services):
            service.stop()
