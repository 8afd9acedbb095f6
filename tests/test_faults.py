"""Faults with real parts: a worker process or the client killed mid-job, storage failing or stalling, two jobs at
once.

Storage faults come from :mod:`faulty_filesystem`, a real fsspec filesystem
over a local folder that fails or stalls reads on purpose; it is sent to the
workers with ``Client.upload_file``. S3 faults come from :mod:`s3_fault_proxy`,
an HTTP proxy in front of moto's server that answers 500, 503 and SlowDown,
drops connections and cuts bodies short, for the client and the workers alike. The worker-kill test starts a cluster of
its own with ``cluster/start-local.sh`` (a scheduler and two single-threaded
``dask worker`` processes), the others use the shared two-worker cluster. The
expected result is always the same job on a healthy cluster, with plain storage.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from distributed import Client
import faulty_filesystem
from faulty_filesystem import FaultyFileSystem
from s3_fault_proxy import FAULTS, FaultProxy, Schedule
from script_cluster import script_cluster
from test_cli import RUN_FILES, cli_environment, run_cli

from numerai_dask.pipeline import (SCRATCH_HEARTBEAT, SCRATCH_PREFIX, SCRATCH_STALE_SECONDS, JobResult, ScoringParams,
                                   run_job, sweep_stale_scratch)
from numerai_dask.report import new_run_id, publish_run
from numerai_dask.storage import READ_ATTEMPTS, Storage
from numerai_dask.synthetic import generate

#: One model per load task: many small tasks spread over both workers.
PARAMS = ScoringParams(models_per_task=1)
WAIT_SECONDS = 60.0


def make_dataset(root: Path, seed: int) -> str:
    """A small tournament (6 resolved eras, 8 models) under ``root``; returns the root as text."""
    generate(str(root), n_eras=6, rows_per_era=60, n_features=6, n_models=8, n_unresolved=0, seed=seed)
    return str(root)


def faulty_storage(root: str, state: Path, **faults: str) -> tuple[Storage, FaultyFileSystem]:
    """``root`` read through a FaultyFileSystem with ``faults`` (paths in patterns are local paths)."""
    storage = Storage(f"faulty://{root}", {"state": str(state), "client_pid": os.getpid(), **faults})
    assert isinstance(storage.fs, FaultyFileSystem)
    return storage, storage.fs


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail the test after WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {WAIT_SECONDS:.0f}s")
        time.sleep(0.02)


def assert_same_scores(result: JobResult, expected: JobResult) -> None:
    """Bit-identical per-era scores, leaderboard and rejections: a fault may cost time, never a digit."""
    for name in ("per_era", "leaderboard", "rejections"):
        pd.testing.assert_frame_equal(getattr(result, name), getattr(expected, name), check_exact=True, obj=name)


@dataclass
class BackgroundJob:
    """``run_job`` in a thread, so the test can hurt the cluster while it runs."""

    thread: threading.Thread
    outcome: dict

    @classmethod
    def start(cls, client: Client, storage: Storage) -> BackgroundJob:
        outcome: dict = {}

        def target() -> None:
            try:
                outcome["result"] = run_job(client, storage, PARAMS)
            except BaseException as error:  # noqa: BLE001 — handed to the test thread by result()
                outcome["error"] = error

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        return cls(thread, outcome)

    def result(self) -> JobResult:
        """The job's result; its exception is raised here."""
        self.thread.join(WAIT_SECONDS)
        assert not self.thread.is_alive(), f"the job did not finish within {WAIT_SECONDS:.0f}s"
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["result"]


def healthy_result(address: str, root: str) -> JobResult:
    """The job on plain storage, on the cluster at ``address`` with nothing going wrong."""
    with Client(address) as client:
        return run_job(client, Storage(root), PARAMS)


@contextmanager
def client_with_faults(address: str) -> Iterator[Client]:
    """A client on ``address`` whose workers can unpickle a FaultyFileSystem (the module is uploaded to them)."""
    with Client(address) as client:
        client.upload_file(faulty_filesystem.__file__)
        yield client


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, dask_cluster: str) -> tuple[str, JobResult]:
    """A dataset shared by the storage-fault tests, and its healthy result."""
    root = make_dataset(tmp_path_factory.mktemp("data"), seed=31)
    return root, healthy_result(dask_cluster, root)


# ---------------------------------------------------------------- a worker dies


def test_job_survives_a_worker_killed_mid_job(tmp_path: Path, dask_cluster: str) -> None:
    """SIGKILL one worker (nanny and worker process) while every load is done and eras are being scored.

    Eras stall on their data reads until the kill has been seen by the
    scheduler, so the kill lands mid-job every time: the dead worker's results
    (the loaded batches' records of their scratch files) and running era tasks must be redone on
    the other worker, and the scores must not change.
    """
    root = make_dataset(tmp_path / "root", seed=11)
    expected = healthy_result(dask_cluster, root)
    storage, fs = faulty_storage(root, tmp_path / "state", gate=f"{root}/data/*", where="worker")
    with script_cluster(tmp_path / "cluster", workers=2) as own, client_with_faults(own.address) as client:
        job = BackgroundJob.start(client, storage)
        try:
            wait_for(lambda: fs.waiting() > 0, "an era task waiting on its data")
            held = client.run_on_scheduler(
                lambda dask_scheduler: {ws.name: len(ws.has_what) for ws in dask_scheduler.workers.values()})
            victim = max(held, key=held.get)
            assert held[victim] > 0, f"no worker holds results yet: {held}"
            os.killpg(own.pids[victim], signal.SIGKILL)
            wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, "the scheduler noticing the lost worker")
        finally:
            fs.release()
        result = job.result()
    assert_same_scores(result, expected)


def test_a_killed_client_leaves_its_scratch_for_a_later_jobs_sweep(tmp_path: Path, dask_cluster: str) -> None:
    """SIGKILL the ``score`` command once its scratch folder has a heartbeat: nothing is published and the folder
    stays, its heartbeat no longer renewed. A sweep leaves it while its files are recent (its job could be alive)
    and removes it once they are an hour old."""
    root = make_dataset(tmp_path / "root", seed=61)
    out = tmp_path / "out"
    scratch = Storage(str(out))
    command = subprocess.Popen([sys.executable, "-m", "numerai_dask.cli", "score", root, "--scheduler", dask_cluster,
                                "--out", str(out), "--models-per-task", "1", "--quiet"], env=cli_environment())
    try:
        wait_for(lambda: any(scratch.exists(f"{name}/{SCRATCH_HEARTBEAT}")
                             for name in scratch.top_folders(SCRATCH_PREFIX)), "the job's scratch heartbeat")
        command.send_signal(signal.SIGKILL)
    finally:
        if command.wait(timeout=WAIT_SECONDS) != -signal.SIGKILL:
            pytest.fail(f"the command was not killed mid-job: it exited with {command.returncode}")
    with Client(dask_cluster) as client:  # its tasks released, none still writing into the folder
        wait_for(lambda: client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0
                 and not any(client.run(lambda dask_worker: len(dask_worker.state.executing)).values()),
                 "the killed client's tasks to end")
    (left,) = scratch.top_folders(SCRATCH_PREFIX)
    assert not (out / "latest.json").exists()
    told: list[str] = []
    assert sweep_stale_scratch(scratch, told.append) == []
    assert sweep_stale_scratch(scratch, told.append, now=time.time() + 2 * SCRATCH_STALE_SECONDS) == [left]
    assert scratch.top_folders(SCRATCH_PREFIX) == [] and told == [
        f"removing the scratch folder {scratch.display(left)}, untouched for 2.0 h (its job ended without removing it)"]


# ------------------------------------------------------------ storage faults

@pytest.mark.parametrize(
    ("pattern", "where"),
    [
        pytest.param("data/*.parquet", "worker", id="era-data-read-on-a-worker"),
        pytest.param("submissions/model_003/*", "worker", id="one-models-submission-reads-on-a-worker"),
        pytest.param("*", "client", id="every-read-while-discovering"),
    ],
)
def test_transient_storage_failures_change_nothing(tmp_path: Path, dask_cluster: str,
                                                   dataset: tuple[str, JobResult], pattern: str, where: str) -> None:
    """The first read of each matching file fails (ConnectionResetError), later reads succeed: same scores."""
    root, expected = dataset
    storage, fs = faulty_storage(root, tmp_path / "state", fail=f"{root}/{pattern}", where=where)
    try:
        with client_with_faults(dask_cluster) as client:
            result = run_job(client, storage, PARAMS)
    finally:
        if fs.failures() == 0:
            pytest.fail("no fault was injected: the test would prove nothing")
    assert_same_scores(result, expected)


def test_a_scratch_read_failing_past_the_read_retries_is_tried_again_as_a_task(tmp_path: Path, dask_cluster: str,
                                                                               dataset: tuple[str, JobResult]) -> None:
    """The batch's ranks file fails READ_ATTEMPTS reads for each of the two workers: some era task's reads all
    fail, and only Dask's task retries (an I/O failure, not an input the job must stop for) save the job."""
    root, expected = dataset
    scratch_root = tmp_path / "scratch"
    scratch_root.mkdir()
    scratch, fs = faulty_storage(str(scratch_root), tmp_path / "state", fail=f"{scratch_root}/{SCRATCH_PREFIX}*/*.ranks",
                                 where="worker", fail_reads=2 * READ_ATTEMPTS)
    with client_with_faults(dask_cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        result = run_job(client, Storage(root), ScoringParams(), scratch=scratch)  # one batch: one ranks file
    assert fs.failures() == 2 * READ_ATTEMPTS
    assert_same_scores(result, expected)


# ------------------------------------------------------- two jobs, one cluster


def test_two_jobs_at_once_on_one_cluster_keep_their_own_scores(tmp_path: Path, dask_cluster: str) -> None:
    """A stalled job A is in flight when job B (same shape, other data) is submitted: B's scores are B's."""
    root_a, root_b = make_dataset(tmp_path / "a", seed=41), make_dataset(tmp_path / "b", seed=42)
    expected_b = healthy_result(dask_cluster, root_b)
    storage_a, fs = faulty_storage(root_a, tmp_path / "state", gate=f"{root_a}/data/*", where="worker")
    with client_with_faults(dask_cluster) as client_a, Client(dask_cluster) as client_b:
        job_a = BackgroundJob.start(client_a, storage_a)
        try:
            wait_for(lambda: fs.waiting() > 0, "job A waiting on its data")
            job_b = BackgroundJob.start(client_b, Storage(root_b))
            b_id = client_b.id

            def b_wants_a_task(dask_scheduler) -> bool:
                """On the scheduler (a local function, so it travels by value): has client B asked for a task?"""
                client = dask_scheduler.clients.get(b_id)
                return client is not None and len(client.wants_what) > 0

            wait_for(lambda: client_b.run_on_scheduler(b_wants_a_task), "job B's graph reaching the scheduler")
        finally:
            fs.release()
        job_a.result()
        assert_same_scores(job_b.result(), expected_b)



# ------------------------------------------------------------------ S3 faults


def through(options: dict, endpoint_url: str) -> dict:
    """S3 storage options reaching ``endpoint_url`` (the fault proxy) instead of the server itself."""
    return {**options, "client_kwargs": {**options.get("client_kwargs", {}), "endpoint_url": endpoint_url}}


@pytest.fixture(scope="module")
def s3_dataset(s3_server, dask_cluster: str) -> Iterator[tuple[str, JobResult]]:
    """The small tournament on moto's S3 (a bucket of this module's own), and its healthy result."""
    fs = s3_server.filesystem()
    bucket = f"faults-{os.getpid()}"
    fs.mkdir(bucket)
    root = f"s3://{bucket}/root"
    generate(root, n_eras=6, rows_per_era=60, n_features=6, n_models=8, n_unresolved=0, seed=51,
             storage_options=s3_server.storage_options)
    with Client(dask_cluster) as client:
        yield root, run_job(client, Storage(root, s3_server.storage_options), PARAMS)
    fs.invalidate_cache()
    fs.rm(bucket, recursive=True)


def test_s3_failing_transiently_changes_no_score(s3_server, dask_cluster: str,
                                                 s3_dataset: tuple[str, JobResult]) -> None:
    """Every third distinct request's first attempt fails (500, 503, SlowDown, dropped, cut short), reads and writes.

    botocore retries error answers and dropped connections, s3fs retries bodies
    cut short, and the project's storage retries what still fails: the job
    scores exactly as on healthy storage, and publishes a complete run.
    """
    root, expected = s3_dataset
    with FaultProxy(s3_server.endpoint_url, Schedule.transient(every=3)) as proxy:
        options = through(s3_server.storage_options, proxy.endpoint_url)
        with Client(dask_cluster) as client:
            result = run_job(client, Storage(root, options), PARAMS)
        folder = publish_run(Storage(f"{root}/out", options), result, new_run_id())
    assert set(proxy.injected) == set(FAULTS), proxy.injected
    fs = s3_server.filesystem()
    fs.invalidate_cache()
    assert fs.ls(root, detail=False) and not fs.glob(f"{root}/.numerai-dask-scratch-*")  # the job's scratch removed
    published = Storage(f"{root}/out", s3_server.storage_options)
    assert json.loads(published.read_bytes("latest.json"))["path"] == folder
    assert_same_scores(JobResult(*[pd.read_parquet(io.BytesIO(published.read_bytes(f"{folder}/{name}.parquet")))
                                   for name in ("per_era", "leaderboard", "rejections")], {}, {}), expected)


def test_s3_failing_for_good_mid_publish_keeps_the_previous_run(s3_server, dask_cluster: str,
                                                                s3_dataset: tuple[str, JobResult]) -> None:
    """A published run, then a CLI run whose publishing meets storage refusing every PUT after the second.

    The CLI exits 1 with one line saying what failed and that the previous run
    is still the latest; ``latest.json`` still names the first run, complete.
    """
    root, healthy = s3_dataset
    out = f"{root}/out-for-good"
    published = Storage(out, s3_server.storage_options)
    publish_run(published, healthy, new_run_id())
    before = json.loads(published.read_bytes("latest.json"))
    with FaultProxy(s3_server.endpoint_url, Schedule.puts_fail_after(2)) as proxy:
        second = run_cli("score", root, "--out", out, "--scheduler", dask_cluster,
                         "--storage-option", f"key={s3_server.storage_options['key']}",
                         "--storage-option", f"secret={s3_server.storage_options['secret']}",
                         "--storage-option", f"client_kwargs.endpoint_url={proxy.endpoint_url}",
                         "--storage-option", "config_kwargs.retries.max_attempts=2",  # fail for good sooner
                         "--quiet")  # stderr holds the error alone
    assert proxy.injected["503"] > 0
    [line] = second.stderr.splitlines()
    assert second.returncode == 1
    assert line.startswith("numerai-dask: error: could not publish run ") and line.endswith(
        "latest.json still names the previous run"), line
    assert json.loads(published.read_bytes("latest.json")) == before
    assert all(published.info(f"{before['path']}/{name}") is not None for name in RUN_FILES)
