"""A real fsspec filesystem that misbehaves on purpose: storage faults for tests, without mocks.

``faulty:///some/folder`` is the local folder ``/some/folder`` served by
:class:`FaultyFileSystem`, an :class:`fsspec.AbstractFileSystem` that passes
listings and reads to fsspec's local filesystem, except that reads of chosen
files go wrong the way remote storage does:

* ``fail``: the first ``fail_reads`` reads (default 1) of each matching file raise
  :class:`ConnectionResetError` (an OSError, as a dropped S3 connection does); later
  reads succeed;
* ``gate``: reads of matching files wait until :meth:`FaultyFileSystem.release`
  is called (storage that stalls), so a test can act while a job is in flight.

It is deliberately not a ``LocalFileSystem`` subclass: code that takes a
shortcut for local folders treats it as the remote storage it stands in for.
Patterns are :mod:`fnmatch` patterns over local paths. ``where`` limits the
faults to reads made by the process ``client_pid`` (``"client"``), by any
other process, i.e. the Dask workers (``"worker"``), or by either (``"any"``).
The state lives in files under ``state`` (created atomically), so "first read"
means first in the whole cluster, whatever process reads. Dask workers
unpickle the filesystem by importing this module: send it to them with
``Client.upload_file``.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import time
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

GATE_POLL_SECONDS = 0.02


class FaultyFileSystem(fsspec.AbstractFileSystem):
    """A local folder whose reads fail once or stall, per file-name pattern (see the module docstring)."""

    protocol = ("faulty",)
    root_marker = "/"

    def __init__(self, state: str, fail: str = "", gate: str = "", where: str = "any", client_pid: int = 0,
                 fail_reads: int = 1, **kwargs) -> None:
        if where not in ("any", "worker", "client"):
            raise ValueError(f"where must be 'any', 'worker' or 'client', got {where!r}")
        if where != "any" and not client_pid:
            raise ValueError(f"where={where!r} needs the client's process id (client_pid)")
        super().__init__(**kwargs)
        self.local = LocalFileSystem()
        self.state = Path(state)
        self.fail = fail
        self.fail_reads = fail_reads
        self.gate = gate
        self.where = where
        self.client_pid = client_pid
        for folder in ("failed", "waiting"):
            (self.state / folder).mkdir(parents=True, exist_ok=True)

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        """``faulty:///a/b`` → ``/a/b``, the local path."""
        path = fsspec.utils.stringify_path(path)
        return LocalFileSystem._strip_protocol(path.removeprefix("faulty://"))

    # ----------------------------------------------- the local filesystem's answers

    def ls(self, path: str, detail: bool = True, **kwargs) -> list:
        return self.local.ls(self._strip_protocol(path), detail=detail, **kwargs)

    def info(self, path: str, **kwargs) -> dict:
        return self.local.info(self._strip_protocol(path), **kwargs)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.local.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs) -> None:
        self.local.mkdir(self._strip_protocol(path), create_parents=create_parents, **kwargs)

    def rm_file(self, path: str) -> None:
        self.local.rm_file(self._strip_protocol(path))

    def rmdir(self, path: str) -> None:
        self.local.rmdir(self._strip_protocol(path))

    def _open(self, path: str, mode: str = "rb", **kwargs):
        """Open the local file, after the fault this read is due (reads only)."""
        local = self._strip_protocol(path)
        if "r" in mode and self._affects_this_process():
            if self.gate and fnmatch.fnmatch(local, self.gate):
                self._wait_for_release(local)
            if self.fail and fnmatch.fnmatch(local, self.fail) and self._read_due_to_fail(local):
                raise ConnectionResetError(errno.ECONNRESET, "injected transient storage failure", local)
        return self.local.open(local, mode=mode)

    # ------------------------------------------------------------------ the faults

    def _affects_this_process(self) -> bool:
        """Whether reads in this process get faults (the pid, not the thread: workers read from thread pools too)."""
        if self.where == "any":
            return True
        return (os.getpid() == self.client_pid) == (self.where == "client")

    def _read_due_to_fail(self, path: str) -> bool:
        """True for the first ``fail_reads`` reads of ``path`` across every process sharing ``state`` (one O_EXCL
        marker file a failure)."""
        for attempt in range(self.fail_reads):
            marker = self.state / "failed" / f"{hashlib.sha1(path.encode()).hexdigest()}-{attempt}"
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            return True
        return False

    def _wait_for_release(self, path: str) -> None:
        """Leave a marker that a read is waiting, then block until the ``released`` file exists."""
        (self.state / "waiting" / hashlib.sha1(path.encode()).hexdigest()).touch()
        while not (self.state / "released").exists():
            time.sleep(GATE_POLL_SECONDS)

    # ------------------------------------------------------------- for the test

    def failures(self) -> int:
        """How many reads have failed so far."""
        return sum(1 for _ in (self.state / "failed").iterdir())

    def waiting(self) -> int:
        """How many distinct gated files a reader has waited on so far."""
        return sum(1 for _ in (self.state / "waiting").iterdir())

    def release(self) -> None:
        """Let every gated read, now and later, go on."""
        (self.state / "released").touch()


fsspec.register_implementation("faulty", FaultyFileSystem, clobber=True)
