"""``numerai-dask refresh`` as a person runs it: once, against a held lease, and on a schedule until SIGTERM."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from numerai_dask.cli import RefreshSettings, refresh_settings_from_job_file, spec_from_job_file
from numerai_dask.refresh import Cron, Lease, parse_interval, run_on_schedule
from numerai_dask.settings import InvalidSetting
from numerai_dask.storage import Storage
from numerai_dask.synthetic import generate

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "numerai_dask.cli", *args], capture_output=True, text=True,
                          timeout=300, **kwargs)


def small_dataset(root: Path, seed: int = 0) -> None:
    generate(str(root), n_eras=4, rows_per_era=30, n_features=4, n_models=3, n_unresolved=1, seed=seed)


@pytest.mark.parametrize("command", ["score", "refresh"])
def test_storage_refusing_the_run_folder_on_a_first_run_is_one_line(command, tmp_path, dask_cluster):
    """A refresh's failed publishing was a bare OSError, where score said what failed and that the previous run
    is still the latest (which a first run has none of). Here ``runs`` is a file, where the run folders go;
    test_faults has a previous run kept on S3."""
    small_dataset(tmp_path / "root")
    out = tmp_path / "out"
    out.mkdir()
    (out / "runs").write_text("not a folder")
    done = cli(command, str(tmp_path / "root"), "--out", str(out), "--scheduler", dask_cluster, "--quiet")
    [line] = done.stderr.splitlines()
    assert done.returncode == 1
    assert line.startswith("numerai-dask: error: could not publish run ") and f"to {out} (" in line, line
    assert line.endswith("; nothing was published"), line
    assert not (out / "latest.json").exists()


def test_refresh_once_then_nothing_to_do(tmp_path, dask_cluster):
    small_dataset(tmp_path)
    first = cli("refresh", str(tmp_path), "--scheduler", dask_cluster)
    assert first.returncode == 0, first.stderr
    assert "published runs/" in first.stdout and "report:" in first.stdout
    second = cli("refresh", str(tmp_path), "--scheduler", dask_cluster, "--json")
    assert second.returncode == 0, second.stderr
    run_id = json.loads((tmp_path / "leaderboard" / "latest.json").read_text())["run_id"]
    assert json.loads(second.stdout) == {"status": "unchanged",
                                         "message": f"nothing to do: no input or parameter changed since runs/{run_id}"}
    assert len(list((tmp_path / "leaderboard" / "runs").iterdir())) == 1


def test_refresh_against_a_held_lease_exits_non_zero_with_one_line(tmp_path, dask_cluster):
    small_dataset(tmp_path)
    holder = Lease(Storage(str(tmp_path / "leaderboard")), seconds=600, owner="nightly@elsewhere:42")
    holder.acquire()
    result = cli("refresh", str(tmp_path), "--scheduler", dask_cluster)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "another refresh holds the lease" in result.stderr and "nightly@elsewhere:42" in result.stderr
    assert not (tmp_path / "leaderboard" / "latest.json").exists()
    released = result.stderr.split("if it is no longer running, an empty file ")[1].split(" releases it")[0]
    Path(released).touch()  # as the message says: the holder is gone
    assert cli("refresh", str(tmp_path), "--scheduler", dask_cluster).returncode == 0
    assert (tmp_path / "leaderboard" / "latest.json").exists()


def test_ctrl_c_stops_a_scheduled_refresh_on_a_local_cluster_without_a_traceback(tmp_path):
    """Ctrl-C reaches the terminal's whole process group: the LocalCluster's workers too, which each printed a
    KeyboardInterrupt traceback and died under the refresh that was to finish."""
    small_dataset(tmp_path)
    log, errors = tmp_path / "log.txt", tmp_path / "errors.txt"
    with log.open("w") as handle, errors.open("w") as error_handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "numerai_dask.cli", "refresh", str(tmp_path), "--workers", "1", "--every", "1h"],
            stdout=handle, stderr=error_handle, text=True, start_new_session=True)
    try:
        wait_for(log, "next refresh in", process)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert log.read_text().rstrip().endswith("stopped")
    assert "Traceback" not in errors.read_text() and "KeyboardInterrupt" not in errors.read_text(), errors.read_text()


def test_schedule_survives_a_failed_tick_and_stops_on_sigterm(tmp_path, dask_cluster):
    root = tmp_path / "root"
    root.mkdir()  # no data yet: the first tick fails
    log, errors = tmp_path / "log.txt", tmp_path / "errors.txt"
    with log.open("w") as handle, errors.open("w") as error_handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "numerai_dask.cli", "refresh", str(root), "--scheduler", dask_cluster,
             "--every", "1s"], stdout=handle, stderr=error_handle, text=True)
    try:
        wait_for(errors, "refresh failed", process)
        small_dataset(root)
        wait_for(log, "published runs/", process)
        # the run's summary and the next tick's line, before SIGTERM (which, sent between them, is "stopped")
        wait_for(log, "next refresh in", process, after="published runs/")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    text, failure = log.read_text(), errors.read_text()
    assert "no data files" in failure and "the previous leaderboard stays published" in failure
    assert "refresh failed" not in text and text.rstrip().endswith("stopped")
    published = text[text.index("published runs/"):].splitlines()  # the run's summary ends with where it is
    report = next(i for i, line in enumerate(published) if line.startswith("report: "))
    assert published[report - 1].startswith("outputs: ") and published[report + 1].startswith("next refresh in")
    assert (root / "leaderboard" / "latest.json").exists()


def wait_for(log: Path, text: str, process: subprocess.Popen, timeout: float = 120, after: str = "") -> None:
    """Until ``text`` is in ``log`` (after the first ``after`` in it, if given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        written = log.read_text()
        if after in written and text in written[written.index(after):]:
            return
        if process.poll() is not None:
            pytest.fail(f"refresh exited early ({process.returncode}):\n{log.read_text()}")
        time.sleep(0.2)
    pytest.fail(f"{text!r} not seen in {timeout} s:\n{log.read_text()}")


def test_run_on_schedule_logs_failures_and_stops_when_told():
    stop = threading.Event()
    calls: list[int] = []
    messages: list[str] = []
    failures: list[str] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("storage down")
        if len(calls) == 3:
            stop.set()

    run_on_schedule(flaky, lambda _: 0.01, stop, messages.append, failures.append)
    assert len(calls) == 3
    assert len(failures) == 1 and "refresh failed: OSError: storage down" in failures[0]
    assert messages == ["next refresh in 0 s"] * 2


def test_shipped_refresh_job_file():
    path = REPO / "jobs" / "refresh.toml"
    assert refresh_settings_from_job_file(str(path)) == RefreshSettings(every=900.0, keep_runs=10,
                                                                        lease_seconds=7200.0)
    assert spec_from_job_file(str(path)).params.extra_targets == ("target_jerome",)
    assert refresh_settings_from_job_file(str(REPO / "jobs" / "local.toml")) is None


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("15m", 900), ("1h30m", 5400), ("2d", 172800)])
def test_intervals(text, seconds):
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "fortnightly", "0s", "5x"])
def test_bad_intervals_are_clear_errors(text):
    with pytest.raises(InvalidSetting, match="every: "):
        parse_interval(text)


def test_cron_next_fire_times():
    at = dt.datetime(2026, 11, 23, 10, 7, 30, tzinfo=dt.timezone.utc)  # a Monday
    assert Cron.parse("*/15 * * * *").next_after(at) == at.replace(minute=15, second=0)
    assert Cron.parse("5 * * * *").next_after(at) == at.replace(hour=11, minute=5, second=0)
    assert Cron.parse("0 6 * * 0").next_after(at) == dt.datetime(2026, 11, 29, 6, 0, tzinfo=dt.timezone.utc)
    assert Cron.parse("30 2 1 1 *").next_after(at) == dt.datetime(2027, 1, 1, 2, 30, tzinfo=dt.timezone.utc)
    # both day fields restricted: either matches (the 1st of the month, or a Saturday)
    assert Cron.parse("0 0 1 * 6").next_after(at) == dt.datetime(2026, 11, 28, 0, 0, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("text", ["* * * *", "61 * * * *", "* 24 * * *", "a * * * *", "*/0 * * * *"])
def test_bad_cron_expressions_are_clear_errors(text):
    with pytest.raises(InvalidSetting, match="cron: "):
        Cron.parse(text)


def test_a_cron_expression_that_never_fires_is_refused_before_any_refresh():
    with pytest.raises(InvalidSetting, match="cron: never fires"):
        RefreshSettings(cron="0 0 31 2 *")


def test_every_and_cron_together_are_refused():
    with pytest.raises(InvalidSetting, match="not both"):
        RefreshSettings(every=60.0, cron="* * * * *")
