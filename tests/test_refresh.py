"""Incremental refresh: after every kind of change it equals a full score of the same inputs, doing less work."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import Client

from numerai_dask.leaderboard import PayoutRule
from numerai_dask.pipeline import SCRATCH_PREFIX, ScoringParams, run_job
from numerai_dask import refresh as refresh_module
from numerai_dask.refresh import Lease, LeaseBusy, refresh_once
from numerai_dask.storage import Storage, StorageError
from numerai_dask.synthetic import generate

TOLERANCE = 1e-12
PARAMS = ScoringParams(extra_targets=("target_jerome",), models_per_task=3)


@pytest.fixture(scope="module")
def client(dask_cluster: str):
    with Client(dask_cluster) as c:
        yield c


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "root"
    info = generate(str(root), n_eras=6, rows_per_era=40, n_features=6, n_models=5, n_unresolved=1, seed=11)
    return root, tmp_path / "out", info


def refresh(client, root: Path, out: Path, params: ScoringParams = PARAMS):
    return refresh_once(client, Storage(str(root)), Storage(str(out)), params)


def assert_equals_full_score(client, root: Path | Storage, outcome, params: ScoringParams = PARAMS) -> None:
    full = run_job(client, root if isinstance(root, Storage) else Storage(str(root)), params)
    mine = outcome.result
    pd.testing.assert_frame_equal(mine.per_era, full.per_era, check_exact=False, rtol=0, atol=TOLERANCE)
    board_columns = [c for c in full.leaderboard.columns]
    pd.testing.assert_frame_equal(mine.leaderboard[board_columns], full.leaderboard, check_exact=False,
                                  rtol=0, atol=TOLERANCE)
    key = ["model", "file", "era", "reason"]
    assert (mine.rejections.sort_values(key).reset_index(drop=True).astype(str)
            .equals(full.rejections.sort_values(key).reset_index(drop=True).astype(str)))
    assert mine.skipped_eras == full.skipped_eras


def resolved_labels(info) -> list[str]:
    return [str(e) for e in info.resolved_eras]


def write_csv(path: Path, ids, values) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": ids, "prediction": values}).to_csv(path, index=False)


def model_folder(root: Path, model: str) -> Path:
    """The model's folder of submission files, its single file moved into one first: later files append to it."""
    folder = root / "submissions" / model
    if not folder.is_dir():
        single = next((root / "submissions").glob(f"{model}.*"))
        folder.mkdir()
        single.rename(folder / f"a{single.suffix}")
    return folder


def scratch_folders(out: Path) -> list[Path]:
    return sorted(out.glob(f"{SCRATCH_PREFIX}*"))


def data_frame(root: Path) -> pd.DataFrame:
    frames = [pd.read_parquet(p).reset_index() for p in sorted((root / "data").glob("*.parquet"))]
    return pd.concat(frames, ignore_index=True)


def test_first_refresh_is_a_full_score_and_no_change_is_nothing_to_do(client, dataset):
    root, out, info = dataset
    first = refresh(client, root, out)
    assert_equals_full_score(client, root, first)
    assert first.eras_rescored == resolved_labels(info)
    assert not scratch_folders(out)  # the changed models' ranks waited there for the era tasks
    latest = (out / "latest.json").read_text()
    again = refresh(client, root, out)
    assert again.run_folder is None and again.message.startswith("nothing to do")
    assert (out / "latest.json").read_text() == latest
    assert len(list((out / "runs").iterdir())) == 1


def refresh_watching(client, root: Path, out: Path, *prefixes: str) -> dict[str, list[set[str]]]:
    """Refresh, and return for each prefix the keys each task of the refresh whose key starts so depends on."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Dependencies(SchedulerPlugin):  # defined here, so it travels to the scheduler by value
        name = "test-task-dependencies"

        def __init__(self) -> None:
            self.seen: dict[str, list[set[str]]] = {prefix: [] for prefix in prefixes}

        def start(self, scheduler) -> None:
            self.scheduler = scheduler

        def transition(self, key, start, finish, *args, **kwargs) -> None:
            if finish != "processing":
                return
            for prefix in prefixes:
                if str(key).startswith(prefix):
                    self.seen[prefix].append({str(d.key) for d in self.scheduler.tasks[key].dependencies})

    client.register_plugin(Dependencies())
    try:
        refresh(client, root, out)
        return client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins[Dependencies.name].seen)
    finally:
        client.unregister_scheduler_plugin(Dependencies.name)


def test_every_era_task_shares_one_copy_of_the_features_stakes_and_staged_ranks(client, dataset):
    """The feature names and stakes travel to the cluster once, as data every era's score task depends on, not
    inside each task (at 600 eras × 2,376 names × 10,000 stakes, submitting and running took 3.2 s embedded, 1.3 s);
    so does the record of where each batch of changed models' ranks lies in the scratch: no era has data of its own."""
    root, out, info = dataset
    seen = refresh_watching(client, root, out, "score_staged_era_task-")["score_staged_era_task-"]
    assert len(seen) == len(resolved_labels(info))
    shared = set.intersection(*seen)
    assert all(keys == shared for keys in seen)
    staged = {key for key in shared if key.startswith("changed_ranks-")}
    assert len(staged) == -(-len(info.models) // PARAMS.models_per_task) and len(shared - staged) == 2


def test_a_refresh_whose_scoring_fails_removes_its_scratch_and_publishes_nothing(client, dataset):
    """A new model's ranks wait in a scratch folder of the output; when the era tasks then fail (a feature with a
    missing value), the folder is removed and the previous run stays the latest."""
    root, out, _ = dataset
    refresh(client, root, out)
    latest = (out / "latest.json").read_text()
    ids = data_frame(root)["id"]
    write_csv(root / "submissions" / "newcomer_failing.csv", ids, np.random.default_rng(4).random(len(ids)))
    path = sorted((root / "data").glob("*.parquet"))[0]
    frame = pd.read_parquet(path)
    frame["feature_0001"] = frame["feature_0001"].astype(float).mask(np.arange(len(frame)) == 3)
    frame.to_parquet(path)
    with pytest.raises(StorageError, match="feature_0001 have missing values"):
        refresh(client, root, out)
    assert not scratch_folders(out)
    assert (out / "latest.json").read_text() == latest and len(list((out / "runs").iterdir())) == 1


def test_a_refresh_on_s3_equals_a_full_score_and_leaves_no_scratch(client, s3_server, s3_bucket):
    """Inputs and outputs on S3: the lease, the caches and the staged ranks all go through s3fs; a first refresh
    and one after a new model equal full scores, and no scratch object is left in the output."""
    options = s3_server.storage_options
    root, out = Storage(f"{s3_bucket}/root", options), Storage(f"{s3_bucket}/out", options)
    generate(root.url, n_eras=6, rows_per_era=40, n_features=6, n_models=5, n_unresolved=1, seed=11,
             storage_options=options)
    assert_equals_full_score(client, root, refresh_once(client, root, out, PARAMS))
    fs = s3_server.filesystem()
    fs.invalidate_cache()
    frames = []
    for path in fs.glob(f"{root.url}/data/*.parquet"):
        with fs.open(path) as handle:
            frames.append(pd.read_parquet(handle).reset_index())
    ids = pd.concat(frames)
    fs.pipe_file(f"{root.url}/submissions/newcomer_s3.csv",
                 pd.DataFrame({"id": ids["id"], "prediction": np.linspace(0, 1, len(ids))}).to_csv(index=False).encode())
    outcome = refresh_once(client, root, out, PARAMS)
    assert outcome.models_read == ["newcomer_s3"]
    assert_equals_full_score(client, root, outcome)
    fs.invalidate_cache()
    assert fs.find(f"{out.url}/cache")
    assert not fs.glob(f"{out.url}/{SCRATCH_PREFIX}*") and not fs.glob(f"{root.url}/{SCRATCH_PREFIX}*")


def test_each_refresh_scatters_under_keys_of_its_own(client, dataset):
    """Data scattered again under a key hashed from its content, while the previous refresh's release of that key
    is still on its way, is lost, and the tasks that need it are cancelled (dask/distributed#8576: back-to-back
    refreshes failed with "lost dependencies"). The era index, names and stakes take keys of each refresh's own."""
    root, out, info = dataset
    scattered = []
    for newcomer in ("newcomer_1", "newcomer_2"):  # the same index, names and stakes each time, and one more model
        ids = data_frame(root)["id"]
        write_csv(root / "submissions" / f"{newcomer}.csv", ids, np.random.default_rng(1).random(len(ids)))
        seen = refresh_watching(client, root, out, "load_changed_models-", "score_staged_era_task-")
        by_era = {key for key in set.intersection(*seen["score_staged_era_task-"]) if not key.startswith("changed_ranks-")}
        scattered.append(set.intersection(*seen["load_changed_models-"]) | by_era)
    assert len(scattered[0]) == len(scattered[1]) == 3 and not scattered[0] & scattered[1]


def test_new_model_reads_only_that_model(client, dataset):
    root, out, info = dataset
    refresh(client, root, out)
    ids = data_frame(root)["id"]
    write_csv(root / "submissions" / "newcomer.csv", ids, np.random.default_rng(1).random(len(ids)))
    outcome = refresh(client, root, out)
    assert outcome.models_read == ["newcomer"]
    assert outcome.eras_rescored == resolved_labels(info)  # it enters every era's meta model
    assert_equals_full_score(client, root, outcome)
    board = outcome.result.leaderboard.set_index("model")
    assert pd.isna(board.loc["newcomer", "rank_change"])
    assert board.drop(index="newcomer")["rank_change"].notna().all()


def test_a_model_named_id_keeps_its_cached_predictions_apart_from_the_ids(client, dataset):
    """An era's cache holds its ids beside one column per model: a model may be called "id" (a valid name)."""
    root, out, info = dataset
    single = next(root / files[0] for model, files in info.submission_files.items()
                  if files == [f"submissions/{model}{Path(files[0]).suffix}"])
    single.rename(single.with_name(f"id{single.suffix}"))
    refresh(client, root, out)
    ids = data_frame(root)["id"]
    write_csv(root / "submissions" / "newcomer.csv", ids, np.random.default_rng(2).random(len(ids)))
    outcome = refresh(client, root, out)  # keeps every other model's cached ranks, "id" among them
    assert outcome.models_read == ["newcomer"]
    assert "id" in set(outcome.result.leaderboard["model"])
    assert_equals_full_score(client, root, outcome)


def test_a_state_of_another_format_is_rescored_and_read_in_full_not_reused(client, dataset, monkeypatch):
    """The state's format is part of every cached score's fingerprint: an output written by a version whose cache
    is laid out otherwise is never read (a format-1 era cache names its ids column "id")."""
    root, out, info = dataset
    monkeypatch.setattr(refresh_module, "STATE_FORMAT", refresh_module.STATE_FORMAT - 1)
    refresh(client, root, out)
    monkeypatch.undo()
    outcome = refresh(client, root, out)
    assert outcome.eras_rescored == resolved_labels(info)
    assert outcome.models_read == sorted(info.submission_files)
    assert_equals_full_score(client, root, outcome)


def test_appended_file_rescores_only_the_eras_it_touches(client, dataset):
    root, out, info = dataset
    refresh(client, root, out)
    data = data_frame(root)
    era = resolved_labels(info)[2]
    rows = data[data["era"].astype(str) == era].head(10)
    model = info.models[1]
    folder = model_folder(root, model)
    refresh(client, root, out)  # moving a file into a folder is a change in itself
    write_csv(folder / "z_reupload.csv", rows["id"], np.linspace(0.1, 0.9, len(rows)))
    outcome = refresh(client, root, out)
    assert outcome.models_read == [model]
    assert outcome.eras_rescored == [era]
    assert_equals_full_score(client, root, outcome)


def test_a_new_model_and_an_appended_file_read_by_one_task_equal_a_full_score(client, dataset):
    """One task reads a new model in full and another model's appended file: in the era that file touches, the
    staged batch holds the appended model's ranks first, out of name order, and the newcomer's after them."""
    root, out, info = dataset
    model = info.models[-1]
    folder = model_folder(root, model)
    refresh(client, root, out)  # moving a file into a folder is a change in itself
    data = data_frame(root)
    era = resolved_labels(info)[1]
    rows = data[data["era"].astype(str) == era].head(10)
    write_csv(folder / "z_reupload.csv", rows["id"], np.linspace(0.9, 0.1, len(rows)))
    write_csv(root / "submissions" / "aaa_newcomer.csv", data["id"], np.random.default_rng(5).random(len(data)))
    outcome = refresh(client, root, out)
    assert outcome.models_read == ["aaa_newcomer", model]
    assert_equals_full_score(client, root, outcome)


def test_rewritten_deleted_and_restaked_models(client, dataset):
    root, out, info = dataset
    refresh(client, root, out)
    ids = data_frame(root)["id"]
    for path in (root / "submissions").glob(f"{info.models[0]}*"):
        if path.is_dir():
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
        else:
            path.unlink()
    rewritten = info.models[2]
    for path in (root / "submissions").glob(f"{rewritten}*"):
        if path.is_file():
            write_csv(path.with_suffix(".csv"), ids, np.random.default_rng(2).random(len(ids)))
            if path.suffix != ".csv":
                path.unlink()
    stakes = pd.read_csv(root / "stakes.csv")
    stakes.loc[stakes["model"] == info.models[3], "stake"] = 123.0
    stakes.to_csv(root / "stakes.csv", index=False)
    outcome = refresh(client, root, out)
    assert outcome.models_read == [rewritten]
    assert info.models[0] not in set(outcome.result.leaderboard["model"])
    assert_equals_full_score(client, root, outcome)


def test_stakes_only_change_reads_no_submission(client, dataset):
    root, out, info = dataset
    refresh(client, root, out)
    stakes = pd.read_csv(root / "stakes.csv")
    stakes["stake"] = stakes["stake"][::-1].to_numpy()
    stakes.to_csv(root / "stakes.csv", index=False)
    outcome = refresh(client, root, out)
    assert outcome.models_read == []
    assert outcome.eras_rescored == resolved_labels(info)
    assert_equals_full_score(client, root, outcome)


def test_a_file_rewritten_with_its_old_size_and_time_is_read_again(client, dataset):
    """New content of the same size with the old modification time put back (``cp -p``, ``touch -r``) was
    "nothing to do", and the old scores stayed."""
    root, out, info = dataset
    refresh(client, root, out)
    path = sorted((root / "submissions").glob("*.csv"))[0]
    before = path.stat()
    header, *rows = path.read_text().splitlines()
    predictions = [row.split(",")[1] for row in rows]
    shuffled = np.random.default_rng(3).permutation(len(rows))
    path.write_text("\n".join([header, *(f"{row.split(',')[0]},{predictions[k]}" for row, k in zip(rows, shuffled))])
                    + "\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    outcome = refresh(client, root, out)
    assert outcome.models_read == [path.stem]
    assert_equals_full_score(client, root, outcome)


def test_era_caches_gone_from_storage_are_scored_again_from_the_inputs(client, dataset):
    """With the caches deleted, the first change failed every refresh with a FileNotFoundError for a cached
    era's file. (With no change there is nothing to do: the published run stands.)"""
    root, out, info = dataset
    refresh(client, root, out)
    cached = sorted((out / "cache" / "eras").rglob("*.parquet"))
    cached[0].unlink()
    assert refresh(client, root, out).run_folder is None
    stakes = pd.read_csv(root / "stakes.csv")
    stakes["stake"] = stakes["stake"][::-1].to_numpy()
    stakes.to_csv(root / "stakes.csv", index=False)
    healed = refresh(client, root, out)
    assert healed.eras_rescored == resolved_labels(info) and sorted(healed.models_read) == sorted(info.models)
    assert_equals_full_score(client, root, healed)


def test_new_era_with_appended_round_files_rescores_one_era(client, dataset):
    root, out, info = dataset
    refresh(client, root, out)
    data = data_frame(root)
    template = data[data["era"].astype(str) == resolved_labels(info)[0]].copy()
    template["id"] = "new" + template["id"].str[3:]
    template["era"] = "0099"
    template.set_index("id").to_parquet(root / "data" / "zz_new_round.parquet")
    rng = np.random.default_rng(3)
    for model in info.models:
        model_folder(root, model)
    refresh_after_move = refresh(client, root, out)  # moving files is a change in itself
    assert_equals_full_score(client, root, refresh_after_move)
    for model in info.models:
        write_csv(root / "submissions" / model / "zz_round_0099.csv", template["id"], rng.random(len(template)))
    outcome = refresh(client, root, out)
    assert outcome.eras_rescored == ["0099"]
    assert_equals_full_score(client, root, outcome)


def test_a_benchmark_rejected_for_ids_the_data_lacked_counts_once_they_arrive(client, dataset):
    """The benchmark's file is unchanged, but a new era's data makes its ids known: every era's BMC is back, as
    in a full score, where the refresh kept the eras' cached NaN."""
    root, out, info = dataset
    data = data_frame(root)
    template = data[data["era"].astype(str) == resolved_labels(info)[0]].copy()
    template["id"] = "new" + template["id"].str[3:]
    template["era"] = "0099"
    bench = next((root / "benchmark").iterdir())
    frame = pd.read_parquet(bench).reset_index()
    extra = pd.DataFrame({"id": template["id"], "prediction": np.linspace(0.1, 0.9, len(template))})
    pd.concat([frame[["id", "prediction"]], extra], ignore_index=True).set_index("id").to_parquet(bench)
    first = refresh(client, root, out)
    assert "benchmark/" in " ".join(first.result.rejections["model"]) and first.result.per_era["bmc"].isna().all()
    template.set_index("id").to_parquet(root / "data" / "zz_new_round.parquet")
    outcome = refresh(client, root, out)
    assert outcome.result.per_era["bmc"].notna().any()
    assert_equals_full_score(client, root, outcome)


def test_newly_resolved_era_and_rewritten_data(client, dataset):
    root, out, info = dataset
    refresh(client, root, out)
    unresolved = str(info.unresolved_eras[0])
    for path in sorted((root / "data").glob("*.parquet")):
        frame = pd.read_parquet(path)
        mask = frame["era"].astype(str) == unresolved
        if mask.any():
            frame.loc[mask, "target"] = np.random.default_rng(4).integers(0, 5, int(mask.sum())) / 4
            frame.to_parquet(path)
    outcome = refresh(client, root, out)
    assert unresolved in outcome.eras_rescored
    assert_equals_full_score(client, root, outcome)


def set_targets(root: Path, era: str, targets) -> None:
    """The target of ``era``'s rows, in every data file that holds some (``targets(n)`` gives n values)."""
    for path in sorted((root / "data").glob("*.parquet")):
        frame = pd.read_parquet(path)
        mask = frame["era"].astype(str) == era
        if mask.any():
            frame.loc[mask, "target"] = targets(int(mask.sum()))
            frame.to_parquet(path)


def test_rows_of_a_scored_era_that_unresolve_or_resolve_again_are_scored_as_a_full_score_scores_them(client, dataset):
    """An era's cache holds its resolved rows: when they change, the cache no longer fits the era (a refresh
    failed on every run with "cached predictions do not match the era's ids")."""
    root, out, info = dataset
    era = resolved_labels(info)[0]
    refresh(client, root, out)
    set_targets(root, era, lambda n: np.r_[np.full(2, np.nan), np.arange(n - 2) % 5 / 4])  # two rows unresolve
    outcome = refresh(client, root, out)
    assert era in outcome.eras_rescored
    assert_equals_full_score(client, root, outcome)
    set_targets(root, era, lambda n: np.arange(n) % 5 / 4)  # they resolve again
    assert_equals_full_score(client, root, refresh(client, root, out))


def test_an_era_skipped_for_a_constant_target_keeps_its_models_for_when_the_target_is_mended(client, dataset):
    """A degenerate era's models' predictions are cached too: rescored later (its target mended, or the benchmark
    changed), it has every model, where it used to have none ("no valid submission covers this era")."""
    root, out, info = dataset
    era = resolved_labels(info)[1]
    refresh(client, root, out)
    set_targets(root, era, lambda n: np.full(n, 0.5))
    outcome = refresh(client, root, out)
    assert era in outcome.result.skipped_eras and outcome.models_read == []
    assert_equals_full_score(client, root, outcome)
    bench = next((root / "benchmark").iterdir())
    frame = pd.read_parquet(bench)
    frame["prediction"] = frame["prediction"].to_numpy()[::-1]
    frame.to_parquet(bench)
    assert_equals_full_score(client, root, refresh(client, root, out))  # still skipped, for the same reason
    set_targets(root, era, lambda n: np.arange(n) % 5 / 4)
    outcome = refresh(client, root, out)
    assert era in outcome.eras_rescored and outcome.models_read == []
    assert era not in outcome.result.skipped_eras
    assert_equals_full_score(client, root, outcome)


def test_parameter_benchmark_and_payout_changes(client, dataset):
    root, out, info = dataset
    refresh(client, root, out)
    half = ScoringParams(extra_targets=("target_jerome",), neutralization=0.5, models_per_task=3)
    outcome = refresh(client, root, out, half)
    assert outcome.eras_rescored == resolved_labels(info)
    assert_equals_full_score(client, root, outcome, half)

    bench = next((root / "benchmark").iterdir())
    frame = pd.read_parquet(bench)
    frame["prediction"] = frame["prediction"].to_numpy()[::-1]
    frame.to_parquet(bench)
    outcome = refresh(client, root, out, half)
    assert outcome.models_read == []
    assert_equals_full_score(client, root, outcome, half)

    paid = ScoringParams(extra_targets=("target_jerome",), neutralization=0.5, models_per_task=3,
                         payout=PayoutRule(1.0, 1.0, 0.1))
    outcome = refresh(client, root, out, paid)
    assert outcome.eras_rescored == [] and outcome.run_folder is not None
    assert_equals_full_score(client, root, outcome, paid)


def test_bad_submission_is_rejected_the_same_way(client, dataset):
    root, out, info = dataset
    refresh(client, root, out)
    ids = data_frame(root)["id"]
    write_csv(root / "submissions" / "broken.csv", ids, np.full(len(ids), np.nan))
    outcome = refresh(client, root, out)
    assert "broken" in set(outcome.result.rejections["model"])
    assert_equals_full_score(client, root, outcome)
    # an unchanged rejected model stays rejected without being read again
    again = refresh(client, root, out, ScoringParams(extra_targets=("target_jerome",), models_per_task=3,
                                                     payout=PayoutRule(clip=0.04)))
    assert "broken" in set(again.result.rejections["model"]) and again.models_read == []


def test_a_listing_rejection_is_reported_once_by_every_refresh_and_gone_with_its_file(client, dataset):
    """Rejections found listing the files are found again by every run: a refresh must not carry them over too."""
    root, out, info = dataset
    model, other = sorted(info.submission_files)[:2]
    unreadable = model_folder(root, model) / "z_late.csv.gz"
    unreadable.write_bytes(b"\x1f\x8b not really compressed predictions")
    refresh(client, root, out)
    ids = data_frame(root)["id"]
    for seed in (3, 4):  # another model changes: the rejected one is not read again
        write_csv(model_folder(root, other) / "a.csv", ids, np.random.default_rng(seed).random(len(ids)))
        outcome = refresh(client, root, out)
        assert (outcome.result.rejections["file"] == f"submissions/{model}/z_late.csv.gz").sum() == 1
        assert_equals_full_score(client, root, outcome)
    unreadable.unlink()
    outcome = refresh(client, root, out)
    assert model not in set(outcome.result.rejections["model"])
    assert_equals_full_score(client, root, outcome)


def test_history_is_pruned_and_unused_cache_files_removed(client, dataset):
    root, out, info = dataset
    for clip in (0.05, 0.04, 0.03):
        refresh_once(client, Storage(str(root)), Storage(str(out)),
                     ScoringParams(payout=PayoutRule(clip=clip)), keep_runs=2)
    stakes = pd.read_csv(root / "stakes.csv")
    stakes["stake"] += 1
    stakes.to_csv(root / "stakes.csv", index=False)
    refresh_once(client, Storage(str(root)), Storage(str(out)), ScoringParams(payout=PayoutRule(clip=0.03)),
                 keep_runs=2)
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 2
    assert json.loads((out / "latest.json").read_text())["run_id"] == runs[-1]
    referenced = set()
    for run in runs:
        for era in json.loads((out / "runs" / run / "state.json").read_text())["eras"].values():
            referenced.update(p for p in (era["predictions"], era["scores"]) if p)
    on_disk = {str(p.relative_to(out)) for p in (out / "cache").rglob("*.parquet")}
    assert on_disk == referenced


@pytest.mark.parametrize("pointer", ["{}", "[]", '{"path": 3}', "not json"])
def test_a_latest_json_that_names_no_run_is_a_storage_error_that_says_so(client, dataset, pointer):
    root, out, info = dataset
    refresh(client, root, out)
    (out / "latest.json").write_text(pointer)
    with pytest.raises(StorageError, match='latest.json does not name a run .*"path": "runs/<run id>"'):
        refresh(client, root, out)


def test_a_held_lease_stops_a_second_refresh(client, dataset):
    root, out, _ = dataset
    refresh(client, root, out)
    holder = Lease(Storage(str(out)), seconds=600, owner="someone-else")
    holder.acquire()
    with pytest.raises(LeaseBusy, match="someone-else"):
        refresh(client, root, out, ScoringParams(payout=PayoutRule(clip=0.01)))
    holder.release()
    assert refresh(client, root, out, ScoringParams(payout=PayoutRule(clip=0.01))).run_folder is not None


def test_an_expired_lease_is_taken_over(tmp_path):
    out = Storage(str(tmp_path))
    Lease(out, seconds=-1, owner="crashed").acquire()  # never released, already expired
    taker = Lease(out, seconds=60)
    taker.acquire()
    assert taker.generation == 2
    taker.check()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_racing_leases_have_exactly_one_winner(tmp_path, where, request):
    url = str(tmp_path) if where == "local" else request.getfixturevalue("s3_bucket") + "/out"
    options = request.getfixturevalue("s3_server").storage_options if where == "s3" else None
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def contend(name: str) -> None:
        lease = Lease(Storage(url, options), seconds=60, owner=name)
        barrier.wait()
        try:
            lease.acquire()
            outcomes.append("won")
        except LeaseBusy:
            outcomes.append("lost")

    threads = [threading.Thread(target=contend, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["lost", "lost", "lost", "won"]
