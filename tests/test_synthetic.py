"""The synthetic generator: deterministic, Numerai-shaped, and written exactly as the storage contract says."""

from __future__ import annotations

import io
import json
import uuid

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from numerai_dask.synthetic import EraArrays, GeneratedDataset, generate, make_era

TARGET_VALUES = {0.0, 0.25, 0.5, 0.75, 1.0}


@pytest.fixture
def memory_root():
    """A fresh memory:// root, removed afterwards (the memory filesystem is shared by the process)."""
    root = f"memory://synthetic-{uuid.uuid4().hex}"
    yield root
    fs, base = fsspec.core.url_to_fs(root)
    if fs.exists(base):
        fs.rm(base, recursive=True)


def all_files(root: str) -> dict[str, bytes]:
    """Every file under ``root`` by path relative to it, with its bytes."""
    fs, base = fsspec.core.url_to_fs(root)
    base = base.rstrip("/")
    return {path[len(base) + 1:]: fs.cat_file(path) for path in fs.find(base)}


def read_table(root: str, path: str) -> pd.DataFrame:
    """Read one CSV or Parquet file under ``root``."""
    fs, base = fsspec.core.url_to_fs(root)
    data = io.BytesIO(fs.cat_file(f"{base.rstrip('/')}/{path}"))
    return pd.read_csv(data) if path.endswith(".csv") else pd.read_parquet(data)


def read_data(root: str, dataset: GeneratedDataset) -> pd.DataFrame:
    """All data files concatenated in order, ``id`` as a column."""
    frames = [read_table(root, path) for path in dataset.data_files]
    return pd.concat([frame.reset_index() if "id" not in frame.columns else frame for frame in frames],
                     ignore_index=True)


def merged_predictions(root: str, dataset: GeneratedDataset, model: str) -> pd.Series:
    """A model's predictions by id after applying its files in order (later rows win)."""
    frames = [read_table(root, path) for path in dataset.submission_files[model]]
    merged = pd.concat(frames).drop_duplicates("id", keep="last")
    return merged.set_index("id")["prediction"]


# ------------------------------------------------------------------------------ make_era


def test_make_era_shapes_dtypes_and_values():
    era = make_era(300, 25, 40, seed=3)
    assert isinstance(era, EraArrays)
    assert era.predictions.shape == (300, 40) and era.predictions.dtype == np.float64
    assert era.target.shape == (300,) and era.target.dtype == np.float64
    assert era.features.shape == (300, 25) and era.features.dtype == np.int8
    assert era.stakes.shape == (40,) and era.benchmark.shape == (300,)
    assert era.ids.shape == (300,) and len(set(era.ids.tolist())) == 300
    assert all(isinstance(i, str) and i.startswith("n") for i in era.ids.tolist())
    assert set(np.unique(era.features).tolist()) == {0, 1, 2, 3, 4}
    assert set(np.unique(era.target).tolist()) == TARGET_VALUES
    assert ((era.predictions > 0) & (era.predictions < 1)).all()
    assert ((era.benchmark > 0) & (era.benchmark < 1)).all()
    assert (era.stakes >= 0).all() and (era.stakes == 0).any() and (era.stakes > 0).any()


def test_features_are_roughly_quintiles_and_target_exact_quintiles():
    era = make_era(1000, 30, 2, seed=1)
    shares = np.stack([(era.features == v).mean(axis=0) for v in range(5)])
    assert np.abs(shares - 0.2).max() < 0.08
    assert np.bincount((era.target * 4).astype(int), minlength=5).tolist() == [200] * 5


def test_make_era_is_deterministic_per_seed():
    a, b, c = make_era(50, 8, 6, seed=11), make_era(50, 8, 6, seed=11), make_era(50, 8, 6, seed=12)
    for name in ("predictions", "target", "features", "stakes", "benchmark", "ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.predictions, c.predictions)
    assert not np.array_equal(a.ids, c.ids)


def test_tie_fraction_of_models_are_heavily_tied_and_none_constant():
    era = make_era(400, 10, 20, seed=5, tie_fraction=0.25)
    distinct = np.array([np.unique(era.predictions[:, j]).size for j in range(20)])
    assert (distinct <= 6).sum() == 5
    assert (distinct[distinct > 6] == 400).all()
    assert (distinct >= 2).all()


@pytest.mark.parametrize("n_rows, n_features, n_models", [(2, 1, 1), (3, 3, 2), (7, 3, 2)])
def test_make_era_tiny_sizes_stay_scorable(n_rows, n_features, n_models):
    era = make_era(n_rows, n_features, n_models, seed=0, tie_fraction=1.0)
    assert era.predictions.shape == (n_rows, n_models)
    assert np.unique(era.target).size >= 2
    assert all(np.unique(era.predictions[:, j]).size >= 2 for j in range(n_models))
    assert set(np.unique(era.target).tolist()) <= TARGET_VALUES


def test_constant_and_duplicate_features():
    era = make_era(60, 12, 3, seed=2, n_constant_features=3, n_duplicate_features=4)
    constant = [j for j in range(12) if np.unique(era.features[:, j]).size == 1]
    assert len(constant) == 3
    varying = np.delete(era.features, constant, axis=1)
    assert np.unique(varying, axis=1).shape[1] == varying.shape[1] - 4


def test_all_features_constant_still_gives_a_scorable_era():
    era = make_era(6, 2, 3, seed=1, n_constant_features=2)
    assert (era.features == 2).all()
    assert np.unique(era.target).size >= 2 and np.isfinite(era.predictions).all()


@pytest.mark.parametrize("arguments", [
    dict(n_rows=1, n_features=3, n_models=2),
    dict(n_rows=5, n_features=0, n_models=2),
    dict(n_rows=5, n_features=3, n_models=2, n_constant_features=2, n_duplicate_features=1),
    dict(n_rows=5, n_features=3, n_models=2, tie_fraction=1.5),
])
def test_make_era_rejects_impossible_sizes(arguments):
    with pytest.raises(ValueError):
        make_era(**arguments)


def test_signal_sets_the_typical_correlation():
    def mean_corr(signal: float) -> float:
        """Mean Pearson correlation with the target over 20 models and 32 eras (seeds)."""
        corrs = []
        for seed in range(32):
            era = make_era(1000, 20, 20, seed=seed, signal=signal, tie_fraction=0.0)
            corrs += [np.corrcoef(era.predictions[:, j], era.target)[0, 1] for j in range(20)]
        return float(np.mean(corrs))

    # The mean over 32 eras has a standard error near 0.004 (signal 0) and 0.006 (signal 0.05).
    assert 0.03 < mean_corr(0.05) < 0.075
    assert abs(mean_corr(0.0)) < 0.015


# ------------------------------------------------------------------------------ generate


def test_generate_writes_the_contract_layout(memory_root):
    dataset = generate(memory_root, n_eras=3, rows_per_era=7, n_features=3, n_models=3, n_unresolved=1)
    files = all_files(memory_root)
    assert sorted(files) == sorted([
        "data/train.parquet", "data/validation.parquet", "data/features.json", "stakes.csv",
        "benchmark/benchmark.parquet", "submissions/model_000/a_first.parquet",
        "submissions/model_000/b_reupload.csv", "submissions/model_001.csv", "submissions/model_002.parquet"])
    written = [*dataset.data_files, dataset.features_file, dataset.stakes_file, dataset.benchmark_file,
               *(path for paths in dataset.submission_files.values() for path in paths)]
    assert sorted(written) == sorted(files)
    assert dataset.eras == ["0001", "0002", "0003"]
    assert dataset.resolved_eras == ["0001", "0002"] and dataset.unresolved_eras == ["0003"]
    assert dataset.models == ["model_000", "model_001", "model_002"]


def test_generate_is_byte_for_byte_deterministic(memory_root):
    arguments = dict(n_eras=4, rows_per_era=20, n_features=6, n_models=5)
    generate(f"{memory_root}/a", seed=4, **arguments)
    generate(f"{memory_root}/b", seed=4, **arguments)
    generate(f"{memory_root}/c", seed=5, **arguments)
    a, b, c = (all_files(f"{memory_root}/{name}") for name in "abc")
    assert a == b
    assert a.keys() == c.keys() and a["data/train.parquet"] != c["data/train.parquet"]


def test_data_files_dtypes_targets_and_unresolved_eras(memory_root):
    dataset = generate(memory_root, n_eras=5, rows_per_era=30, n_features=8, n_models=2, n_unresolved=2,
                       extra_targets=("target_jerome", "target_ralph"))
    first = read_table(memory_root, dataset.data_files[0])
    assert first.index.name == "id" and "id" not in first.columns
    assert list(first.columns) == ["era", *dataset.feature_names, "target", "target_jerome", "target_ralph"]
    data = read_data(memory_root, dataset)
    assert len(data) == 150 and data["id"].is_unique
    features = data[dataset.feature_names]
    assert (features.dtypes == np.int8).all() and features.isin(range(5)).all().all()
    targets = data[["target", "target_jerome", "target_ralph"]]
    unresolved = data["era"].isin(dataset.unresolved_eras)
    assert targets[unresolved].isna().all().all()
    assert targets[~unresolved].notna().all().all()
    assert set(np.unique(targets[~unresolved].to_numpy()).tolist()) == TARGET_VALUES
    assert list(data["era"].unique()) == dataset.eras
    assert not (data["target"] == data["target_jerome"]).all()


def test_era_split_across_files_and_one_era_per_row_group(memory_root):
    split = generate(f"{memory_root}/split", n_eras=6, rows_per_era=10, n_features=2, n_models=1, n_data_files=3)
    whole = generate(f"{memory_root}/whole", n_eras=6, rows_per_era=10, n_features=2, n_models=1, n_data_files=3,
                     split_era_across_files=False)
    assert split.data_files == ["data/train.parquet", "data/validation.parquet", "data/live.parquet"]

    def eras_per_file(root, dataset):
        return [set(read_table(root, path)["era"]) for path in dataset.data_files]

    split_eras = eras_per_file(f"{memory_root}/split", split)
    assert split_eras[0] & split_eras[1] and split_eras[1] & split_eras[2]
    whole_eras = eras_per_file(f"{memory_root}/whole", whole)
    assert not (whole_eras[0] & whole_eras[1]) and not (whole_eras[1] & whole_eras[2])
    assert set().union(*whole_eras) == set(whole.eras)

    fs, base = fsspec.core.url_to_fs(f"{memory_root}/split")
    metadata = pq.ParquetFile(io.BytesIO(fs.cat_file(f"{base}/data/validation.parquet"))).metadata
    era_column = metadata.schema.names.index("era")
    eras_by_group = [(metadata.row_group(i).column(era_column).statistics.min,
                      metadata.row_group(i).column(era_column).statistics.max)
                     for i in range(metadata.num_row_groups)]
    assert metadata.num_row_groups == len(split_eras[1]) > 1
    assert all(low == high for low, high in eras_by_group)


def test_integer_eras_and_id_as_column(memory_root):
    dataset = generate(memory_root, n_eras=3, rows_per_era=7, n_features=3, n_models=2, era_format="int",
                       id_as_index=False, n_data_files=1)
    assert dataset.eras == [1, 2, 3]
    frame = read_table(memory_root, dataset.data_files[0])
    assert frame.columns[0] == "id" and frame["id"].is_unique
    assert pd.api.types.is_integer_dtype(frame["era"]) and list(frame["era"].unique()) == [1, 2, 3]


def test_submissions_cover_every_id_and_reupload_replaces_rows(memory_root):
    dataset = generate(memory_root, n_eras=4, rows_per_era=25, n_features=4, n_models=4, n_unresolved=1)
    ids = set(read_data(memory_root, dataset)["id"])
    assert len(dataset.submission_files["model_000"]) == 2 and len(dataset.submission_files["model_003"]) == 2
    first, reupload = (read_table(memory_root, path) for path in dataset.submission_files["model_000"])
    assert list(first.columns) == ["id", "prediction"] == list(reupload.columns)
    assert set(first["id"]) == ids and 0 < len(reupload) < len(first)
    stale = first.set_index("id")["prediction"].loc[reupload["id"]].to_numpy()
    assert (stale != reupload["prediction"].to_numpy()).all()
    for model in dataset.models:
        predictions = merged_predictions(memory_root, dataset, model)
        assert set(predictions.index) == ids
        assert predictions.between(0, 1).all()
    benchmark = read_table(memory_root, dataset.benchmark_file)
    assert set(benchmark["id"]) == ids and benchmark["prediction"].between(0, 1).all()


def test_merged_submissions_score_like_a_tournament(memory_root):
    dataset = generate(memory_root, n_eras=20, rows_per_era=500, n_features=20, n_models=9, n_unresolved=2,
                       tie_fraction=0.0)
    data = read_data(memory_root, dataset).set_index("id")
    resolved = data[data["era"].isin(dataset.resolved_eras)]
    corrs = []
    for model in dataset.models:
        predictions = merged_predictions(memory_root, dataset, model).reindex(resolved.index)
        by_era = pd.DataFrame({"p": predictions, "y": resolved["target"], "era": resolved["era"]}).groupby("era")
        corrs.append(by_era.apply(lambda era: np.corrcoef(era["p"], era["y"])[0, 1]).mean())
    assert 0.015 < np.mean(corrs) < 0.08


def test_tied_models_in_submissions(memory_root):
    dataset = generate(memory_root, n_eras=2, rows_per_era=50, n_features=3, n_models=10, n_unresolved=0,
                       tie_fraction=0.3)
    distinct = [merged_predictions(memory_root, dataset, model).nunique() for model in dataset.models]
    assert sum(count <= 12 for count in distinct) == 3
    assert sum(count == 100 for count in distinct) == 7


def test_features_json_and_stakes(memory_root):
    dataset = generate(memory_root, n_eras=2, rows_per_era=5, n_features=40, n_models=12)
    metadata = json.loads(all_files(memory_root)[dataset.features_file])
    sets = {name: set(features) for name, features in metadata["feature_sets"].items()}
    assert sets["small"] and sets["small"] < sets["medium"] < sets["all"]
    assert metadata["feature_sets"]["all"] == dataset.feature_names
    stakes = read_table(memory_root, dataset.stakes_file)
    assert list(stakes["model"]) == dataset.models
    assert (stakes["stake"] >= 0).all() and (stakes["stake"] == 0).any() and (stakes["stake"] > 0).any()


def test_generate_to_a_local_folder_and_file_url(tmp_path):
    plain = generate(str(tmp_path / "plain"), n_eras=2, rows_per_era=4, n_features=2, n_models=2, seed=9)
    generate(f"file://{tmp_path / 'url'}", n_eras=2, rows_per_era=4, n_features=2, n_models=2, seed=9)
    for path in [*plain.data_files, plain.stakes_file, plain.benchmark_file,
                 *(p for paths in plain.submission_files.values() for p in paths)]:
        assert (tmp_path / "plain" / path).read_bytes() == (tmp_path / "url" / path).read_bytes()
    data = pd.concat([pd.read_parquet(tmp_path / "plain" / path) for path in plain.data_files])
    assert data.shape == (8, 1 + 2 + 2) and data.index.is_unique


@pytest.mark.parametrize("arguments", [
    dict(n_data_files=3, n_eras=2),
    dict(n_unresolved=3, n_eras=2),
    dict(era_format="date"),
    dict(extra_targets=("jerome",)),
])
def test_generate_rejects_impossible_layouts(memory_root, arguments):
    with pytest.raises(ValueError):
        generate(memory_root, **{"rows_per_era": 4, "n_features": 2, "n_models": 2, **arguments})
