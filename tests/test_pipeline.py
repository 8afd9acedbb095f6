"""The whole job on a real multi-process Dask cluster, checked era by era against numerai-tools.

The expected scores are built here without the project's code: pandas reads the
files, applies re-uploads in file-name order, and numerai-tools (tests/oracle.py)
scores every resolved era.
"""

from __future__ import annotations

import gc
import os
import pickle
import platform
import subprocess
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import Client
from numerai_tools.scoring import numerai_corr
from oracle import TOLERANCE, oracle

from numerai_dask import pipeline
from numerai_dask.clusters import ClusterSpec, WorkerSettings, connect
from numerai_dask.pipeline import (CACHED_IDS_COLUMN, SCRATCH_HEARTBEAT, SCRATCH_PREFIX, JobError, ModelBatch, ModelFiles,
                                   ScoringParams, chunked, compact_ranks, discover, in_batches, load_model_batch,
                                   mean_rank_correlation, prediction_correlations, read_columns, release_memory,
                                   returning_freed_memory, run_job, score_era_task, scratch_heartbeat,
                                   sweep_stale_scratch, trim_heap)
from numerai_dask.scoring import score_era
from numerai_dask.storage import Storage, StorageError
from numerai_dask.synthetic import generate

METRICS = ("corr", "fnc", "mmc", "bmc", "tc", "cwmm", "fe_max", "fe_rms")


@pytest.fixture(scope="module")
def client(dask_cluster: str):
    with Client(dask_cluster) as c:
        yield c


def read_table(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"id": str}) if path.suffix == ".csv" else pd.read_parquet(path)
    return frame.reset_index() if "id" not in frame.columns else frame


def model_files(root: Path) -> dict[str, list[Path]]:
    """Each model's files in the order the contract applies them: single file first, then the folder's."""
    files: dict[str, list[Path]] = {}
    for path in sorted((root / "submissions").iterdir()):
        if path.is_dir():
            files.setdefault(path.name, []).extend(sorted(path.iterdir()))
        else:
            files.setdefault(path.stem, []).insert(0, path)
    return files


def merged_predictions(paths: list[Path]) -> pd.Series:
    frames = [read_table(p).set_index("id")["prediction"] for p in paths]
    merged = frames[0]
    for later in frames[1:]:
        merged = later.combine_first(merged)  # a later file's rows win
    return merged


def expected_per_era(root: Path, excluded: dict[str, set] | None = None, extra_targets=("target_jerome",)) -> pd.DataFrame:
    """numerai-tools' scores of every resolved era; ``excluded`` maps era label → models left out."""
    data = pd.concat([read_table(p) for p in sorted((root / "data").glob("*.parquet"))], ignore_index=True)
    features = [c for c in data.columns if c.startswith("feature_")]
    predictions = {m: merged_predictions(p) for m, p in model_files(root).items()}
    stakes = pd.read_csv(root / "stakes.csv").set_index("model")["stake"]
    benchmark = merged_predictions(sorted((root / "benchmark").iterdir()))
    tables = []
    for era, rows in data.groupby("era", sort=True):
        rows = rows[rows["target"].notna()].sort_values("id")
        if rows.empty:
            continue
        models = sorted(set(predictions) - (excluded or {}).get(str(era), set()))
        p = np.column_stack([predictions[m].reindex(rows["id"]).to_numpy() for m in models])
        scores = oracle(p, rows["target"].to_numpy(), rows[features].to_numpy(),
                        stakes.reindex(models).to_numpy(), benchmark.reindex(rows["id"]).to_numpy())
        table = pd.DataFrame({"era": str(era), "model": models, **scores})
        for name in extra_targets:
            frame = pd.DataFrame(p, index=rows["id"].to_numpy(), columns=models)
            target = pd.Series(rows[name].to_numpy(), index=frame.index, name=name)
            table[f"corr_{name}"] = numerai_corr(frame, target).to_numpy()
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def assert_matches(per_era: pd.DataFrame, expected: pd.DataFrame) -> None:
    key = ["era", "model"]
    mine = per_era.sort_values(key).reset_index(drop=True)
    theirs = expected.sort_values(key).reset_index(drop=True)
    assert mine[key].equals(theirs[key])
    for metric in [c for c in theirs.columns if c not in key]:
        np.testing.assert_allclose(mine[metric], theirs[metric], rtol=0, atol=TOLERANCE, err_msg=metric)


def test_job_equals_numerai_tools_era_by_era(tmp_path, client):
    """String eras, id as index, an era split over two files, re-uploads, two unresolved eras."""
    dataset = generate(str(tmp_path), n_eras=7, rows_per_era=60, n_features=8, n_models=6, n_unresolved=2, seed=1)
    result = run_job(client, Storage(str(tmp_path)), ScoringParams(extra_targets=("target_jerome",)))
    assert_matches(result.per_era, expected_per_era(tmp_path))
    assert sorted(set(result.per_era["era"])) == [str(e) for e in dataset.resolved_eras]
    assert not set(map(str, dataset.unresolved_eras)) & set(result.per_era["era"])
    assert result.manifest["eras"]["unresolved"] == [str(e) for e in dataset.unresolved_eras]
    assert result.rejections.empty
    assert sorted(result.leaderboard["model"]) == dataset.models
    # the generator's folder models re-upload part of their ids: the merged scores above prove the
    # re-upload won; scoring the first file alone would give a different corr
    folder_model = next(m for m, files in dataset.submission_files.items() if len(files) == 2)
    first_only = read_table(tmp_path / dataset.submission_files[folder_model][0]).set_index("id")["prediction"]
    assert not first_only.equals(merged_predictions([tmp_path / f for f in dataset.submission_files[folder_model]]))


def test_load_windows_bounded_by_bytes_give_the_same_scores(tmp_path, client):
    """A load task reads ``read_window_bytes`` at a time: one model per window scores bit-identically to one window."""
    generate(str(tmp_path), n_eras=4, rows_per_era=50, n_features=6, n_models=5, n_unresolved=1, seed=3)
    one_task = run_job(client, Storage(str(tmp_path)), ScoringParams(models_per_task=100, read_window_bytes=2**40))
    per_model = run_job(client, Storage(str(tmp_path)), ScoringParams(models_per_task=100, read_window_bytes=1))
    pd.testing.assert_frame_equal(per_model.per_era, one_task.per_era, check_exact=True)


def test_a_load_task_never_holds_its_batch_of_ranks_twice(tmp_path):
    """Joining each era's ranks across read windows frees the pieces as it goes: the task's traced peak stays below
    twice its result (stacking every era at once, with the pieces alive, peaked at 2.5× it here)."""
    import tracemalloc

    from numerai_dask.pipeline import batches, discover

    generate(str(tmp_path), n_eras=20, rows_per_era=200, n_features=4, n_models=150, n_unresolved=0, seed=5)
    storage = Storage(str(tmp_path))
    inputs = discover(storage, ScoringParams())
    (models,) = batches(inputs.submissions, ScoringParams(models_per_task=len(inputs.submissions)))
    load_model_batch(storage, models[:3], inputs.index)  # what a first load imports and caches is not traced
    tracemalloc.start()
    try:
        batch = load_model_batch(storage, models, inputs.index, read_window_bytes=1)  # one model per window
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    ranks = sum(matrix.nbytes for _, matrix in batch.by_era.values())
    assert not batch.rejections and ranks == 150 * 20 * 200 * 2  # uint16 ranks of every model in every era
    assert peak < 2 * ranks


def test_a_graph_holding_the_era_index_once_does_not_warn_of_its_size(tmp_path, client):
    """Dask warns of large graphs, meant for data copied into many tasks; the era index and the benchmark are
    in the graph once each and grow with the data's rows (80 eras of 5,000 rows made every job warn, and the
    correlation of the leaderboard's models, which takes the era index too)."""
    import warnings

    import dask

    generate(str(tmp_path), n_eras=4, rows_per_era=20_000, n_features=4, n_models=3, n_unresolved=0, seed=8)
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": "256kB"}), \
            warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = run_job(client, Storage(str(tmp_path)), ScoringParams())
        correlations = prediction_correlations(client, Storage(str(tmp_path)), result)
    assert len(result.per_era) == 4 * 3 and correlations.shape == (3, 3)
    assert not [w for w in seen if "large graph" in str(w.message)]
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": "256kB"}), \
            pytest.warns(UserWarning, match="large graph"):  # anything else that is large still warns
        client.compute(dask.delayed(len)(np.zeros(2**16))).result()


def test_repeated_ids_name_only_the_data_files_that_hold_them(tmp_path):
    """The era index finds repeats; only then are the files holding them looked for, and only those are named."""
    from numerai_dask.pipeline import read_era_index

    generate(str(tmp_path), n_eras=6, rows_per_era=20, n_features=3, n_models=1, n_unresolved=0, seed=2,
             n_data_files=3, split_era_across_files=False)
    first, second, third = sorted((tmp_path / "data").glob("*.parquet"))
    frame, last = pd.read_parquet(first), pd.read_parquet(third)
    pd.concat([last, frame.iloc[[4]]]).to_parquet(third)
    storage = Storage(str(tmp_path))
    with pytest.raises(StorageError, match="1 id appears on more than one row of the data") as raised:
        read_era_index(storage, storage.list_data_files(), "target")
    message = str(raised.value)
    assert str(first) in message and str(third) in message and str(second) not in message
    assert repr(str(frame.index[4])) in message


@pytest.mark.parametrize("where", ["memory", "s3"])
def test_a_staged_batch_is_where_its_ranks_lie_in_the_scratch_not_the_ranks_themselves(tmp_path, where, request):
    """A load task's result says where each era's ranks lie in its scratch file; read back, they are exactly the
    loaded batch's, model names and all, whether an era has all of the batch's models or some; each run writes a
    file of its own; and the result itself is a small fraction of the ranks. On S3 too (uint16 ranks written as
    bytes through s3fs, read back by ranges)."""
    from numerai_dask.pipeline import batches, discover, stage_model_batch, staged_era_slices

    generate(str(tmp_path), n_eras=20, rows_per_era=200, n_features=4, n_models=150, n_unresolved=0, seed=5)
    storage = Storage(str(tmp_path))
    inputs = discover(storage, ScoringParams())
    (models,) = batches(inputs.submissions, ScoringParams(models_per_task=len(inputs.submissions)))
    (empty,) = models[7].paths
    Path(empty).write_text("id,prediction\n")  # a rejected model: absent from every era
    data = pd.concat([pd.read_parquet(f, columns=["era"]).reset_index() for f in (tmp_path / "data").glob("*.parquet")])
    early = set(sorted(data["era"].unique())[:10])
    covering = next(m for m in models[8:] if len(m.paths) == 1 and m.paths[0].endswith(".csv"))
    (partial,) = covering.paths
    predictions = pd.read_csv(partial)
    predictions[predictions["id"].isin(data.loc[data["era"].isin(early), "id"])].to_csv(partial, index=False)
    if where == "s3":
        scratch = Storage(request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_server").storage_options)
    else:
        scratch = Storage(f"memory://staged-{tmp_path.name}")
    staged = stage_model_batch(storage, models, inputs.index, 2**20, scratch, "job")
    loaded = load_model_batch(storage, models, inputs.index)
    assert staged.rejections == loaded.rejections
    assert sorted(staged.by_era) == sorted(loaded.by_era) and len(loaded.by_era) == 20
    for label, (names, ranks) in loaded.by_era.items():
        ((read_names, read_ranks),) = staged_era_slices(scratch, [staged], label)
        assert read_names == names and len(names) == (149 if covering.model in names else 148)
        assert (staged.by_era[label].models is None) == (len(names) == 149)
        np.testing.assert_array_equal(read_ranks, ranks)
        assert read_ranks.dtype == ranks.dtype == np.uint16
    assert sum(covering.model in names for names, _ in loaded.by_era.values()) == 10
    assert staged_era_slices(scratch, [staged], "no such era") == []
    ranks_bytes = sum(ranks.nbytes for _, ranks in loaded.by_era.values())
    assert staged.relpath.startswith("job/") and len(scratch.read_bytes(staged.relpath)) == ranks_bytes
    assert stage_model_batch(storage, models, inputs.index, 2**20, scratch, "job").relpath != staged.relpath
    assert len(pickle.dumps(staged)) < ranks_bytes / 10


def test_a_job_removes_its_scratch_and_needs_one_that_every_worker_reaches(tmp_path, client):
    """The ranks wait in a folder of the job's own in the scratch storage (the root by default), gone when the job
    ends, and the scores do not depend on where; a scratch the workers cannot share (each worker process has a
    ``memory://`` of its own, and the four load tasks spread over both workers) fails the job with the reason. A job
    that fails in a score task (after every load task, on which each depends) removes its scratch too."""
    generate(str(tmp_path / "root"), n_eras=3, rows_per_era=30, n_features=4, n_models=4, n_unresolved=0, seed=6)
    storage = Storage(str(tmp_path / "root"))
    before = sorted(p.name for p in (tmp_path / "root").iterdir())
    (tmp_path / "scratch").mkdir()
    elsewhere = run_job(client, storage, ScoringParams(models_per_task=1), scratch=Storage(str(tmp_path / "scratch")))
    assert list((tmp_path / "scratch").iterdir()) == []
    by_default = run_job(client, storage, ScoringParams(models_per_task=1))
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == before
    pd.testing.assert_frame_equal(elsewhere.per_era, by_default.per_era, check_exact=True)
    with pytest.raises(JobError, match="every worker must reach it"):
        run_job(client, storage, ScoringParams(models_per_task=1), scratch=Storage("memory://not-shared"))
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == before
    last = sorted((tmp_path / "root" / "data").glob("*.parquet"))[-1]
    frame = pd.read_parquet(last)
    frame["feature_0001"] = frame["feature_0001"].astype(float).where(frame.index != frame.index[0])  # one NaN
    frame.to_parquet(last)
    with pytest.raises(StorageError, match="missing values"):  # a score task fails, the others run on
        run_job(client, storage, ScoringParams(models_per_task=1))
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == before


def written_ago(folder: Path, seconds: float) -> None:
    """Date every file below a local ``folder`` back by ``seconds``, as if nothing had been written there since."""
    when = time.time() - seconds
    for path in folder.rglob("*"):
        os.utime(path, (when, when))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_sweep_removes_only_scratch_folders_untouched_for_an_hour(tmp_path, where, request):
    """A killed client leaves its job's scratch folder behind, its heartbeat stopped; an interrupted job's may come
    back without a heartbeat when a task still running writes its ranks. The sweep removes a folder once its newest
    file is an hour old, and leaves live jobs' folders and anything not named as a job's scratch. On S3, where
    folders are common prefixes and times are the objects' LastModified, "an hour old" comes from this client's
    clock set two hours on (an object's time cannot be set back)."""
    if where == "s3":
        storage = Storage(request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_server").storage_options)
    else:
        storage = Storage(str(tmp_path))
    stale, live, leftover = (f"{SCRATCH_PREFIX}{c * 32}" for c in "abc")
    lookalikes = [f"{SCRATCH_PREFIX}notes", f"{SCRATCH_PREFIX}{'e' * 32}-backup"]
    for name in (stale, live, *lookalikes):
        storage.write_text(f"{name}/{SCRATCH_HEARTBEAT}", "alive")
    storage.write_bytes(f"{stale}/batch.ranks", b"ranks")
    storage.write_bytes(f"{leftover}/batch.ranks", b"ranks")  # no heartbeat
    storage.write_bytes(f"{SCRATCH_PREFIX}{'f' * 32}", b"a file, not a folder")
    storage.write_bytes("data/train.parquet", b"data")
    told: list[str] = []
    assert sweep_stale_scratch(storage, told.append) == [] and told == []  # everything written just now
    expected = sorted([stale, live, leftover])
    if where == "local":
        written_ago(tmp_path / stale, 7200)
        written_ago(tmp_path / live, 120)
        assert sweep_stale_scratch(storage, told.append) == [stale]
        assert told == [f"removing the scratch folder {storage.display(stale)}, untouched for 2.0 h "
                        "(its job ended without removing it)"]
        expected.remove(stale)
    later = time.time() + 7200
    assert sweep_stale_scratch(storage, told.append, now=later) == expected
    assert storage.top_folders(SCRATCH_PREFIX) == sorted(lookalikes)
    assert storage.exists("data/train.parquet") and storage.exists(f"{SCRATCH_PREFIX}{'f' * 32}")
    if where == "local":  # an empty folder tells no time: left, and told
        (tmp_path / f"{SCRATCH_PREFIX}{'9' * 32}").mkdir()
        assert sweep_stale_scratch(storage, told.append, now=later) == []
        assert "no file that tells its time" in told[-1]


def test_a_scratch_heartbeat_is_renewed_while_its_job_runs_and_stops_with_it(tmp_path):
    """The heartbeat is written at once and rewritten every interval while the block runs; a renewal that fails is
    told once, and its recovery too, the beats going on; none is written after the block ends (a late one would
    bring a removed folder back). A scratch the client cannot write fails at once."""
    storage = Storage(str(tmp_path))
    told: list[str] = []
    with scratch_heartbeat(storage, "job", told.append, every=0.05):
        first = storage.newest_change("job")
        assert storage.read_bytes(f"job/{SCRATCH_HEARTBEAT}").startswith(b"numerai-dask job alive at ")
        time.sleep(0.3)
        assert storage.newest_change("job") > first
        storage.delete("job")
        (tmp_path / "job").write_text("a file where the folder was: every renewal fails")
        time.sleep(0.3)
        (tmp_path / "job").unlink()
        time.sleep(0.3)
        assert storage.newest_change("job") > first
    assert len(told) == 2 and "could not renew" in told[0] and "renewed the scratch heartbeat" in told[1]
    storage.delete("job")
    time.sleep(0.3)
    assert not storage.exists("job")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(JobError, match="cannot write the job's scratch"):
        with scratch_heartbeat(Storage(str(tmp_path / "a-file")), "job", told.append):
            pass


def test_a_job_sweeps_stale_scratch_and_beats_in_its_own_while_it_runs(tmp_path, client):
    """A job on a real cluster removes a dead job's scratch folder from its scratch storage, leaves a live one,
    and keeps a heartbeat in its own folder while its tasks run (seen from its progress reports)."""
    generate(str(tmp_path / "root"), n_eras=3, rows_per_era=30, n_features=4, n_models=4, n_unresolved=0, seed=6)
    scratch = Storage(str(tmp_path / "scratch"))
    dead, alive = f"{SCRATCH_PREFIX}{'d' * 32}", f"{SCRATCH_PREFIX}{'e' * 32}"
    for name in (dead, alive):
        scratch.write_text(f"{name}/{SCRATCH_HEARTBEAT}", "alive")
    written_ago(tmp_path / "scratch" / dead, 7200)
    seen: set[str] = set()

    def during(_) -> None:
        seen.update(name for name in scratch.top_folders(SCRATCH_PREFIX)
                    if name != alive and scratch.exists(f"{name}/{SCRATCH_HEARTBEAT}"))

    run_job(client, Storage(str(tmp_path / "root")), ScoringParams(models_per_task=1), scratch=scratch,
            on_progress=during)
    assert len(seen) == 1 and dead not in seen  # the job's own folder, beating
    assert scratch.top_folders(SCRATCH_PREFIX) == [alive]


def test_mean_rank_correlation_averages_each_pair_over_the_eras_that_correlate_it() -> None:
    """A model missing from an era, and one whose predictions are constant in an era (no correlation there), leave
    those eras out of their pairs' means only; checked against pandas' Spearman."""
    rng = np.random.default_rng(4)
    values = {era: {m: rng.random(30) for m in ("a", "b", "c")} for era in ("e1", "e2", "e3")}
    values["e2"]["c"] = np.full(30, 0.5)  # constant: no correlation in e2
    del values["e3"]["b"]  # b did not predict e3
    batch = ModelBatch({era: (list(by_model), compact_ranks(np.vstack(list(by_model.values()))))
                        for era, by_model in values.items()}, [])
    mine = mean_rank_correlation(batch, ["a", "b", "c"])
    spearman = {era: pd.DataFrame(by_model).corr(method="spearman") for era, by_model in values.items()}
    expected = {
        ("a", "b"): (spearman["e1"].loc["a", "b"] + spearman["e2"].loc["a", "b"]) / 2,
        ("a", "c"): (spearman["e1"].loc["a", "c"] + spearman["e3"].loc["a", "c"]) / 2,
        ("b", "c"): spearman["e1"].loc["b", "c"],
    }
    for (x, y), value in expected.items():
        assert mine.loc[x, y] == pytest.approx(value, abs=1e-12) and mine.loc[y, x] == pytest.approx(value, abs=1e-12)
    assert np.allclose(np.diag(mine.to_numpy()), 1.0)


#: Run in a process of its own whose BLAS and OpenMP pools start with two threads: two task threads score an
#: era each, the second starting while the first is scoring and still scoring when the first ends; each prints
#: the pools' threads as it scores.
TWO_TASK_THREADS = """
import sys, threading
from threadpoolctl import ThreadpoolController
from numerai_dask import pipeline
from numerai_dask.pipeline import ModelFiles, ScoringParams, discover, load_model_batch, score_era_task
from numerai_dask.scoring import score_era
from numerai_dask.storage import Storage

storage, params = Storage(sys.argv[1]), ScoringParams()
inputs = discover(storage, params)
batch = load_model_batch(storage, [ModelFiles.of(m, f) for m, f in inputs.submissions.items()], inputs.index)
first_is_scoring, second_is_scoring, first_is_done = threading.Event(), threading.Event(), threading.Event()

def score_era_in_turn(*args, **kwargs):
    if threading.current_thread().name == "first":
        first_is_scoring.set()
        assert second_is_scoring.wait(20)
    else:
        second_is_scoring.set()
        assert first_is_done.wait(20)
    print(threading.current_thread().name, sorted({p["num_threads"] for p in ThreadpoolController().info()}))
    return score_era(*args, **kwargs)

def score(era, name):
    if name == "second":
        assert first_is_scoring.wait(20)
    result = score_era_task(storage, era, inputs.features, params, [batch.by_era[era.label]], inputs.stakes, None)
    assert result.skipped is None and len(result.table) == 3
    if name == "first":
        first_is_done.set()

pipeline.score_era = score_era_in_turn
print("before", sorted({p["num_threads"] for p in ThreadpoolController().info()}))
threads = [threading.Thread(target=score, args=(era, name), name=name)
           for era, name in zip(inputs.eras, ("first", "second"))]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(60)
"""


def test_two_task_threads_each_score_with_one_thread_in_every_blas_pool(tmp_path) -> None:
    """A worker of two task threads whose BLAS variables were not set to one (another cluster's): each era is
    scored with one BLAS/OpenMP thread in every pool, including the era still scoring when the other ends
    (OpenBLAS's pool is process-wide: a limit restored as one task ends gave it back its threads)."""
    generate(str(tmp_path), n_eras=2, rows_per_era=60, n_features=5, n_models=3, n_unresolved=0, seed=5)
    environment = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    run = subprocess.run([sys.executable, "-c", TWO_TASK_THREADS, str(tmp_path)], env=environment,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert sorted(run.stdout.splitlines()) == ["before [2]", "first [1]", "second [1]"], run.stdout


def test_cached_ranks_read_back_as_written_by_this_version_or_through_pandas(tmp_path) -> None:
    out = Storage(str(tmp_path))
    ids = pd.Series(["n2", "n1", "n3"], dtype="str").to_numpy()
    ranks = np.array([[1, 5, 3], [70_000, 2, 4]], dtype=np.uint32)  # uint32: eras of over 32,767 rows
    out.write_columns("plain.parquet", {CACHED_IDS_COLUMN: ids, "m1": ranks[0], "m2": ranks[1]})
    out.write_parquet("pandas.parquet", pd.DataFrame({CACHED_IDS_COLUMN: ids, "m1": ranks[0], "m2": ranks[1]}))
    for name in ("plain.parquet", "pandas.parquet"):
        columns = read_columns(out, name, [CACHED_IDS_COLUMN, "m2"])
        assert list(columns) == [CACHED_IDS_COLUMN, "m2"]
        assert np.array_equal(columns[CACHED_IDS_COLUMN], ids)
        assert columns["m2"].dtype == np.uint32 and np.array_equal(columns["m2"], ranks[1])


def test_in_batches_cuts_the_fewest_runs_of_at_most_size_items_of_nearly_equal_length():
    for count, size in [(500, 64), (65, 64), (129, 64), (64, 64), (7, 3), (1, 5), (10, 1)]:
        runs = in_batches(list(range(count)), size)
        lengths = [len(run) for run in runs]
        assert [i for run in runs for i in run] == list(range(count))  # in order, each item once
        assert len(runs) == -(-count // size) and max(lengths) <= size and max(lengths) - min(lengths) <= 1
    assert [len(run) for run in in_batches(list(range(500)), 64)] == [62, 63] * 4  # not seven of 64 and one of 52
    assert in_batches([], 64) == []


def test_chunked_cuts_runs_by_count_and_by_bytes():
    assert chunked(list("abcdefg"), [10] * 7, 3, 100) == [list("abc"), list("def"), ["g"]]
    assert chunked(list("abcd"), [60, 30, 20, 500], 3, 100) == [["a", "b"], ["c"], ["d"]]  # too big: alone
    assert chunked([], [], 3, 100) == []


def test_integer_eras_and_id_as_column(tmp_path, client):
    generate(str(tmp_path), n_eras=5, rows_per_era=41, n_features=6, n_models=4, n_unresolved=1, seed=2,
             era_format="int", id_as_index=False)
    result = run_job(client, Storage(str(tmp_path)), ScoringParams(extra_targets=("target_jerome",)))
    assert_matches(result.per_era, expected_per_era(tmp_path))
    assert list(result.per_era["era"].drop_duplicates()) == ["1", "2", "3", "4"]


def test_rejected_models_never_enter_the_meta_model(tmp_path, client):
    dataset = generate(str(tmp_path), n_eras=4, rows_per_era=50, n_features=5, n_models=5, n_unresolved=0, seed=3)
    data = pd.concat([read_table(p) for p in sorted((tmp_path / "data").glob("*.parquet"))])
    # model_001: NaN predictions → the whole file is rejected; model_004: constant in one era only
    bad = model_files(tmp_path)["model_001"]
    for path in bad:
        path.unlink()
    nan_file = tmp_path / "submissions" / "model_001.csv"
    pd.DataFrame({"id": data["id"], "prediction": np.nan}).to_csv(nan_file, index=False)
    constant_era = str(dataset.resolved_eras[1])
    preds = merged_predictions(model_files(tmp_path)["model_004"])
    preds[data.loc[data["era"].astype(str) == constant_era, "id"]] = 0.5
    for path in model_files(tmp_path)["model_004"]:
        path.unlink()
    preds.rename("prediction").reset_index().to_csv(tmp_path / "submissions" / "model_004.csv", index=False)

    result = run_job(client, Storage(str(tmp_path)), ScoringParams())
    excluded = {str(e): {"model_001"} for e in dataset.resolved_eras}
    excluded[constant_era].add("model_004")
    assert_matches(result.per_era, expected_per_era(tmp_path, excluded, extra_targets=()))
    reasons = result.rejections.set_index("model")
    assert "model_001" in reasons.index and "NaN" in reasons.loc["model_001", "reason"]
    assert reasons.loc["model_001", "file"] == "submissions/model_001.csv"
    assert reasons.loc["model_004", "era"] == constant_era
    assert "constant" in reasons.loc["model_004", "reason"]
    assert "model_001" not in set(result.leaderboard["model"])


def test_feature_set_and_partial_neutralization(tmp_path, client):
    generate(str(tmp_path), n_eras=3, rows_per_era=70, n_features=12, n_models=3, n_unresolved=0, seed=4)
    small = Storage(str(tmp_path)).read_feature_sets()["small"]
    result = run_job(client, Storage(str(tmp_path)), ScoringParams(feature_set="small", neutralization=0.5))
    data = pd.concat([read_table(p) for p in sorted((tmp_path / "data").glob("*.parquet"))])
    predictions = {m: merged_predictions(p) for m, p in model_files(tmp_path).items()}
    stakes = pd.read_csv(tmp_path / "stakes.csv").set_index("model")["stake"]
    benchmark = merged_predictions(sorted((tmp_path / "benchmark").iterdir()))
    for era, rows in data.groupby("era"):
        rows = rows.sort_values("id")
        models = sorted(predictions)
        p = np.column_stack([predictions[m].reindex(rows["id"]).to_numpy() for m in models])
        expected = oracle(p, rows["target"].to_numpy(), rows[small].to_numpy(), stakes.reindex(models).to_numpy(),
                          benchmark.reindex(rows["id"]).to_numpy(), proportion=0.5)
        mine = result.per_era[result.per_era["era"] == str(era)].sort_values("model")
        for metric in METRICS:
            np.testing.assert_allclose(mine[metric], expected[metric], rtol=0, atol=TOLERANCE, err_msg=metric)


def test_a_feature_listed_twice_in_a_feature_set_is_scored_once(tmp_path) -> None:
    from numerai_dask.pipeline import select_features

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "features.json").write_text(
        '{"feature_sets": {"small": ["feature_b", "feature_a", "feature_b"]}}')
    columns = ["id", "era", "feature_a", "feature_b", "feature_c", "target"]
    assert select_features(Storage(str(tmp_path)), columns, "small") == ["feature_b", "feature_a"]
    assert select_features(Storage(str(tmp_path)), columns, None) == ["feature_a", "feature_b", "feature_c"]


def test_a_feature_set_naming_columns_that_are_not_features_says_so(tmp_path) -> None:
    """It said the data lacked them, where ``era`` and ``target`` are in the data, though not features."""
    from numerai_dask.pipeline import select_features

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "features.json").write_text('{"feature_sets": {"small": ["feature_a", "era", "target"]}}')
    columns = ["id", "era", "feature_a", "target"]
    with pytest.raises(JobError, match=r"feature set 'small' names 2 columns that are not among the data's "
                                       r"feature_\* columns, e.g. \['era', 'target'\]"):
        select_features(Storage(str(tmp_path)), columns, "small")


def test_an_unknown_feature_set_says_why_none_is_known(tmp_path) -> None:
    from numerai_dask.pipeline import select_features

    columns = ["id", "era", "feature_a", "target"]
    with pytest.raises(JobError, match=r"known sets: none \(no data/features.json\)"):
        select_features(Storage(str(tmp_path)), columns, "small")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "features.json").write_text('{"targets": ["target"]}')
    with pytest.raises(JobError, match=r"known sets: none \(data/features.json names no feature sets\)"):
        select_features(Storage(str(tmp_path)), columns, "small")


def test_job_errors_are_one_line_causes(tmp_path, client):
    generate(str(tmp_path), n_eras=2, rows_per_era=20, n_features=3, n_models=2, n_unresolved=0, seed=5)
    with pytest.raises(JobError, match="target column 'target_cyrus' is not in the data"):
        run_job(client, Storage(str(tmp_path)), ScoringParams(target="target_cyrus"))
    with pytest.raises(JobError, match="unknown feature set 'huge'"):
        run_job(client, Storage(str(tmp_path)), ScoringParams(feature_set="huge"))
    with pytest.raises(JobError, match="no data files"):
        run_job(client, Storage(str(tmp_path / "empty")), ScoringParams())


class Cycle:
    """An object only a reference cycle keeps alive, holding 8 MB."""

    def __init__(self) -> None:
        self.buffer = np.zeros(2**20)
        self.me = self


def test_tasks_that_return_freed_memory_free_their_cycles_whether_they_return_or_raise() -> None:
    """A task's cyclic garbage is gone when it ends, returning or raising; the task function still pickles as a reference."""
    left: list[weakref.ref] = []

    @returning_freed_memory
    def task(fail: bool) -> str:
        left.append(weakref.ref(Cycle()))
        if fail:
            raise ValueError("bad input")
        return "scored"

    collecting = gc.isenabled()
    gc.disable()  # as between a worker's tasks, when allocation counts have not triggered a collection
    try:
        assert task(False) == "scored"
        with pytest.raises(ValueError, match="bad input"):
            task(True)
        assert len(left) == 2 and all(ref() is None for ref in left)
        orphan = weakref.ref(Cycle())
        assert orphan() is not None  # without a release, the cycle stays
        release_memory()
        assert orphan() is None
    finally:
        if collecting:
            gc.enable()
    assert pickle.loads(pickle.dumps(load_model_batch)) is load_model_batch
    assert load_model_batch.__name__ == "load_model_batch" and "window" in (load_model_batch.__doc__ or "")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_a_worker_near_its_memory_thresholds_gives_its_free_heap_back_when_a_task_ends() -> None:
    """A fresh 1 GiB worker (spilling above 60 %) keeps its free heap pages after a task; once it holds enough
    to pass half of 60 %, they are given back. Either way glibc keeps its thresholds: the next freed blocks
    stay in the heap for the next task, and no task maps its arrays afresh."""
    resident = lambda: int(Path("/proc/self/statm").read_text().split()[1]) * 4096  # noqa: E731 — pickled by value

    def given_back_by_release(holding: int) -> int:
        """Resident bytes ``release_memory`` gives back after 25 MiB are freed below a block still in use."""
        held = np.ones(holding)
        blocks = [bytearray(64 * 1024) for _ in range(400)]  # below malloc's mmap threshold: on the heap
        kept = blocks[-1]
        del blocks
        before = resident()
        release_memory()
        given_back = before - resident()
        assert len(kept) == 64 * 1024 and held.size == holding
        return given_back

    def freed_at_once() -> int:
        """Resident bytes given back the moment 25 MiB of heap blocks are freed (with Dask's glibc setting,
        ``MALLOC_TRIM_THRESHOLD_=65536``, all of them: 24 MiB measured)."""
        blocks = [bytearray(64 * 1024) for _ in range(400)]
        before = resident()
        del blocks
        return before - resident()

    with connect(ClusterSpec("local", {"workers": 1}, worker=WorkerSettings(memory_limit="1GiB")),
                 log=lambda _: None) as fresh:
        assert fresh.submit(given_back_by_release, 0, pure=False).result() < 5 * 2**20
        assert fresh.submit(given_back_by_release, 40 * 2**20, pure=False).result() >= 20 * 2**20
        assert fresh.submit(freed_at_once, pure=False).result() < 5 * 2**20


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trimming_the_heap_returns_pages_freed_below_its_top() -> None:
    """25 MiB freed under a block still in use stay resident until the heap is trimmed."""
    resident = lambda: int(Path("/proc/self/statm").read_text().split()[1]) * 4096  # noqa: E731
    blocks = [bytearray(64 * 1024) for _ in range(400)]  # below malloc's mmap threshold: on the heap
    kept = blocks[-1]
    del blocks
    before = resident()
    trim_heap()
    assert before - resident() >= 20 * 2**20
    assert len(kept) == 64 * 1024
