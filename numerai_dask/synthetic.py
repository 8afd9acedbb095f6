"""Deterministic synthetic Numerai-shaped data: one era as arrays, or a whole tournament on storage.

Every number comes from one seeded :class:`numpy.random.Generator`, so the
same arguments give the same arrays and the same bytes on every run.

The data model is a small latent factor structure, so that scores look like a
real tournament's (mean CORR of good models around 0.01–0.05, eras that burn):

* a few latent factors per row drive every feature: a feature is the quintile
  bucket (0–4, int8) of (its own mix of the factors + noise);
* the *hidden signal* is a fixed linear combination of the features; the
  target is the quintile bucket of (hidden signal × the era's loading +
  noise), mapped to {0, .25, .5, .75, 1}; the loading varies from era to era;
* every model predicts (its own strength × hidden signal + its own exposure
  to the factors + noise) through a logistic into (0, 1); strengths are spread
  around ``signal``, which is a model's expected correlation with the target;
  the factor exposures share a common part, so models agree with each other
  (the meta model matters) and are exposed to the features;
* a ``tie_fraction`` of the models are heavily tied: their ranks are cut into
  a few equal levels, never one (a constant column has no correlation);
* the benchmark is one more model of strength ``signal``, never tied.

:func:`make_era` returns one era as the arrays the scoring kernel takes;
:func:`generate` writes a dataset under any fsspec root following the storage
contract of DESIGN.md.
"""

from __future__ import annotations

import io
import json
import numbers
from dataclasses import dataclass

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from scipy.special import expit, ndtri

from numerai_dask.settings import is_count, require, require_count

#: Latent factors behind the features of a row.
N_FACTORS = 8

#: Share of a feature's latent variance that comes from the factors (the rest is noise).
FACTOR_SHARE = 0.5

#: Correlation of the hidden signal with the target's latent value in an average era.
TARGET_LOADING = 0.25

#: Relative spread of the target loading from era to era (some eras burn).
ERA_LOADING_SPREAD = 0.6

#: Relative spread of the models' strengths around ``signal``.
STRENGTH_SPREAD = 0.5

#: Share of a model's non-signal variance that is exposure to the latent factors.
FACTOR_EXPOSURE = 0.5

#: How much of a model's factor exposure is common to all models (the rest is its own).
COMMON_EXPOSURE = 0.7

#: A tied model's predictions take this many distinct values, drawn per model in [low, high].
TIE_LEVELS = (3, 6)

#: Correlation of an extra target's latent value with the main target's.
EXTRA_TARGET_CORRELATION = 0.8

#: Upper edges of the five equal buckets of a standard normal.
QUINTILE_EDGES = ndtri(np.array([0.2, 0.4, 0.6, 0.8]))

#: The value of a constant feature column.
CONSTANT_FEATURE_VALUE = 2

#: Share of the models with zero stake.
ZERO_STAKE_SHARE = 0.15

#: Share of all ids that a re-uploading model predicts again in its second file.
REUPLOAD_SHARE = 0.25

#: Data file names when there are at most three files, as Numerai names its downloads.
NUMERAI_FILE_NAMES = ("train", "validation", "live")


@dataclass(frozen=True)
class EraArrays:
    """One era as the scoring kernel takes it (rows in the order drawn, not sorted by id).

    ``predictions`` float64 (N, M) in (0, 1); ``target`` float64 (N,) in
    {0, .25, .5, .75, 1}; ``features`` int8 (N, F) in 0..4; ``stakes`` float64
    (M,) ≥ 0 with some zeros when M ≥ 2; ``benchmark`` float64 (N,) in (0, 1);
    ``ids`` (N,) unique strings.
    """

    predictions: np.ndarray
    target: np.ndarray
    features: np.ndarray
    stakes: np.ndarray
    benchmark: np.ndarray
    ids: np.ndarray


@dataclass(frozen=True)
class GeneratedDataset:
    """What :func:`generate` wrote. Paths are relative to ``root`` (join with "/").

    ``eras`` are the era values in order, as written (strings like "0001" or
    ints). Every model in ``models`` has a stake in ``stakes.csv`` and
    predicts every id of every era, unresolved ones included.
    ``submission_files`` maps each model to its files in the order they apply:
    a model with two files re-uploads part of its ids in the second, and the
    second file's rows are the model's real predictions for those ids.
    """

    root: str
    eras: list
    resolved_eras: list
    unresolved_eras: list
    models: list[str]
    feature_names: list[str]
    extra_targets: tuple[str, ...]
    data_files: list[str]
    features_file: str
    submission_files: dict[str, list[str]]
    stakes_file: str
    benchmark_file: str


@dataclass(frozen=True)
class _Population:
    """What stays fixed across eras: how features are made, what the target hides, who the models are.

    The last entry of ``hidden_loadings``, ``exposures`` and ``tie_levels`` is the
    benchmark. ``tie_levels`` is 0 for an untied model.
    """

    loadings: np.ndarray  # (K, F) float32, unit-norm columns
    weights: np.ndarray  # (F,) float32, the hidden linear combination of features
    constant_columns: np.ndarray  # (C,) column indices
    duplicate_columns: np.ndarray  # (D,) column indices, overwritten by...
    duplicate_sources: np.ndarray  # (D,) ...these columns
    hidden_loadings: np.ndarray  # (M + 1,) loading of each model's score on the hidden signal
    exposures: np.ndarray  # (K, M + 1) unit-norm factor exposure of each model
    tie_levels: np.ndarray  # (M + 1,) int


@dataclass(frozen=True)
class _Era:
    """One drawn era before targets are bucketed: the latent target value is kept for extra targets."""

    features: np.ndarray  # (N, F) int8
    target_latent: np.ndarray  # (N,) float64
    predictions: np.ndarray  # (N, M) float64
    benchmark: np.ndarray  # (N,) float64


# ----------------------------------------------------------------------------- one era


def make_era(n_rows: int, n_features: int, n_models: int, *, seed: int = 0, signal: float = 0.05,
             tie_fraction: float = 0.2, n_constant_features: int = 0, n_duplicate_features: int = 0,
             ) -> EraArrays:
    """Draw one era of ``n_rows`` rows for ``n_models`` models, as the scoring kernel takes it.

    ``signal`` is the models' typical expected correlation with the target;
    ``n_constant_features`` columns are constant (value 2) and
    ``n_duplicate_features`` are exact copies of other columns, so kernels
    meet rank-deficient features. Every prediction column and the target take
    at least two distinct values.
    """
    _check_era_arguments(n_rows, n_features, n_models, tie_fraction, n_constant_features, n_duplicate_features)
    rng = np.random.default_rng(seed)
    population = _draw_population(rng, n_features, n_models, signal, tie_fraction,
                                  n_constant_features, n_duplicate_features)
    era = _draw_era(rng, population, n_rows)
    return EraArrays(predictions=era.predictions, target=_quintile_values(era.target_latent),
                     features=era.features, stakes=_draw_stakes(rng, n_models), benchmark=era.benchmark,
                     ids=_draw_ids(rng, n_rows))


def _check_era_arguments(n_rows: int, n_features: int, n_models: int, tie_fraction: float,
                         n_constant: int, n_duplicate: int) -> None:
    """Raise ValueError for sizes that cannot give a scorable era."""
    if n_rows < 2:
        raise ValueError(f"an era needs at least 2 rows to have a correlation, got n_rows={n_rows}")
    if n_features < 1 or n_models < 1:
        raise ValueError(f"need at least one feature and one model, got {n_features} and {n_models}")
    if not 0.0 <= tie_fraction <= 1.0:
        raise ValueError(f"tie_fraction must be in [0, 1], got {tie_fraction}")
    if n_constant < 0 or n_duplicate < 0:
        raise ValueError("n_constant_features and n_duplicate_features must be ≥ 0")
    free = n_features - n_constant - n_duplicate
    if free < 0 or (n_duplicate > 0 and free < 1):
        raise ValueError(f"{n_features} features cannot hold {n_constant} constant and {n_duplicate} duplicate "
                         "columns plus a column to duplicate")


def _draw_population(rng: np.random.Generator, n_features: int, n_models: int, signal: float,
                     tie_fraction: float, n_constant: int, n_duplicate: int) -> _Population:
    """Draw the parts of the data model shared by all eras; the benchmark is appended as a last model."""
    loadings = _unit_columns(rng.standard_normal((N_FACTORS, n_features), dtype=np.float32))
    weights = rng.standard_normal(n_features, dtype=np.float32)

    order = rng.permutation(n_features)
    constant_columns = np.sort(order[:n_constant])
    duplicate_columns = order[n_constant:n_constant + n_duplicate]
    free_columns = order[n_constant + n_duplicate:]
    duplicate_sources = rng.choice(free_columns, size=n_duplicate)

    strengths = signal * (1.0 + STRENGTH_SPREAD * rng.standard_normal(n_models))
    strengths = np.append(strengths, signal)
    common = rng.standard_normal((N_FACTORS, 1))
    own = rng.standard_normal((N_FACTORS, n_models + 1))
    exposures = _unit_columns(COMMON_EXPOSURE * _unit_columns(common) + (1 - COMMON_EXPOSURE) * _unit_columns(own))

    n_tied = int(np.floor(tie_fraction * n_models + 0.5))
    tie_levels = np.zeros(n_models + 1, dtype=np.int64)
    tie_levels[rng.choice(n_models, size=n_tied, replace=False)] = rng.integers(
        TIE_LEVELS[0], TIE_LEVELS[1] + 1, size=n_tied)

    return _Population(loadings=loadings, weights=weights, constant_columns=constant_columns,
                       duplicate_columns=duplicate_columns, duplicate_sources=duplicate_sources,
                       hidden_loadings=np.clip(strengths / TARGET_LOADING, -0.95, 0.95), exposures=exposures,
                       tie_levels=tie_levels)


def _draw_era(rng: np.random.Generator, population: _Population, n_rows: int) -> _Era:
    """Draw one era's features, latent target, every model's predictions and the benchmark."""
    factors = rng.standard_normal((n_rows, N_FACTORS), dtype=np.float32)
    features = _draw_features(rng, population, factors)
    hidden = _standardize(((features - CONSTANT_FEATURE_VALUE).astype(np.float32) @ population.weights)
                          .astype(np.float64))

    loading = np.clip(TARGET_LOADING * (1.0 + ERA_LOADING_SPREAD * rng.standard_normal()), -0.95, 0.95)
    target_latent = loading * hidden + np.sqrt(1.0 - loading**2) * rng.standard_normal(n_rows)

    scores = _model_scores(rng, population, hidden, factors.astype(np.float64))
    predictions = _tie(expit(scores), population.tie_levels)
    return _Era(features=features, target_latent=target_latent, predictions=predictions[:, :-1],
                benchmark=predictions[:, -1])


def _draw_features(rng: np.random.Generator, population: _Population, factors: np.ndarray) -> np.ndarray:
    """Bucket each feature's latent value (factor mix + noise, unit variance) into quintiles 0..4, int8.

    The buckets are the quintiles of the latent distribution, so no sort is
    needed; then constant and duplicate columns are written over.
    """
    latent = rng.standard_normal((factors.shape[0], population.loadings.shape[1]), dtype=np.float32)
    latent *= np.float32(np.sqrt(1.0 - FACTOR_SHARE))
    latent += np.float32(np.sqrt(FACTOR_SHARE)) * (factors @ population.loadings)
    features = np.zeros(latent.shape, dtype=np.int8)
    for edge in QUINTILE_EDGES.astype(np.float32):
        features += latent > edge
    features[:, population.constant_columns] = CONSTANT_FEATURE_VALUE
    features[:, population.duplicate_columns] = features[:, population.duplicate_sources]
    return features


def _model_scores(rng: np.random.Generator, population: _Population, hidden: np.ndarray,
                  factors: np.ndarray) -> np.ndarray:
    """Each model's latent score: loading × hidden signal + factor exposure + own noise, unit variance.

    The factor exposure is made uncorrelated with the hidden signal within the
    era, so a model's expected correlation with the target's latent value is
    its hidden loading times the era's target loading (its strength in an
    average era), whatever its exposure.
    """
    exposure = factors @ population.exposures
    exposure -= exposure.mean(axis=0)
    hidden_norm = hidden @ hidden
    if hidden_norm > 0:
        exposure -= np.outer(hidden, hidden @ exposure / hidden_norm)
    exposure = _standardize(exposure)
    noise = rng.standard_normal((hidden.shape[0], population.hidden_loadings.shape[0]))
    beta = population.hidden_loadings
    rest = np.sqrt(1.0 - beta**2)
    return (np.outer(hidden, beta)
            + rest * np.sqrt(FACTOR_EXPOSURE) * exposure
            + rest * np.sqrt(1.0 - FACTOR_EXPOSURE) * noise)


def _tie(predictions: np.ndarray, tie_levels: np.ndarray) -> np.ndarray:
    """Cut the ranks of each tied column into its number of equal levels, valued at the levels' centres.

    With at least two rows and two levels the lowest and highest rows land in
    different levels, so a tied column is never constant.
    """
    tied = np.flatnonzero(tie_levels)
    if tied.size:
        n_rows = predictions.shape[0]
        ranks = np.argsort(np.argsort(predictions[:, tied], axis=0, kind="stable"), axis=0, kind="stable")
        levels = tie_levels[tied]
        predictions[:, tied] = (ranks * levels // n_rows + 0.5) / levels
    return predictions


def _quintile_values(latent: np.ndarray) -> np.ndarray:
    """Map each value to its quintile by rank within its column: {0, .25, .5, .75, 1}, never all equal."""
    ranks = np.argsort(np.argsort(latent, axis=0, kind="stable"), axis=0, kind="stable")
    return (ranks * 5 // latent.shape[0]) / 4.0


def _draw_stakes(rng: np.random.Generator, n_models: int) -> np.ndarray:
    """Log-normal stakes rounded to cents; some zero (at least one when M ≥ 2, never all)."""
    stakes = np.round(rng.lognormal(mean=np.log(100.0), sigma=1.5, size=n_models), 2)
    n_zero = max(1, int(round(ZERO_STAKE_SHARE * n_models))) if n_models >= 2 else 0
    stakes[rng.choice(n_models, size=n_zero, replace=False)] = 0.0
    return stakes


def _draw_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct Numerai-like ids: "n" followed by 15 hex digits (60 random bits)."""
    values = rng.choice(1 << 60, size=n, replace=False).astype(np.uint64)
    shifts = np.arange(56, -1, -4, dtype=np.uint64)
    nibbles = (values[:, None] >> shifts) & np.uint64(0xF)
    chars = np.empty((n, 16), dtype=np.uint8)
    chars[:, 0] = ord("n")
    chars[:, 1:] = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles]
    return chars.view("S16").ravel().astype("U16")


def _unit_columns(matrix: np.ndarray) -> np.ndarray:
    """Scale each column to unit Euclidean norm."""
    return matrix / np.linalg.norm(matrix, axis=0, keepdims=True)


def _standardize(values: np.ndarray) -> np.ndarray:
    """Centre and scale along axis 0 to unit variance; a constant column becomes zeros."""
    centred = values - values.mean(axis=0)
    std = centred.std(axis=0)
    return np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)


# ----------------------------------------------------------------------------- a dataset


def generate(root: str, *, n_eras: int = 20, rows_per_era: int = 200, n_features: int = 40, n_models: int = 12,
             n_unresolved: int = 2, seed: int = 0, signal: float = 0.05,
             extra_targets: tuple[str, ...] = ("target_jerome",), era_format: str = "string",
             id_as_index: bool = True, n_data_files: int = 2, split_era_across_files: bool = True,
             storage_options: dict | None = None, tie_fraction: float = 0.2, n_constant_features: int = 0,
             n_duplicate_features: int = 0) -> GeneratedDataset:
    """Write a synthetic tournament under the fsspec URL ``root`` (storage contract v1) and describe it.

    Layout: ``data/*.parquet`` (eras in order over ``n_data_files`` files; with
    ``split_era_across_files`` the era at each boundary is split between the
    two files; one row group per era chunk so era filters prune),
    ``data/features.json``, ``submissions/`` (models in turn as a folder with a
    first file and a partial re-upload, a single CSV, a single Parquet),
    ``stakes.csv`` and ``benchmark/benchmark.parquet``. The newest
    ``n_unresolved`` eras have NaN in every target column. Existing files at
    the same paths are overwritten; nothing else under ``root`` is removed.
    Memory holds every row's predictions for every model (rows × models floats).
    """
    check_parameters(n_eras, rows_per_era, n_features, n_models, n_unresolved, seed)
    _check_dataset_arguments(n_eras, n_data_files, era_format, extra_targets)
    _check_era_arguments(rows_per_era, n_features, n_models, tie_fraction, n_constant_features, n_duplicate_features)
    rng = np.random.default_rng(seed)
    population = _draw_population(rng, n_features, n_models, signal, tie_fraction,
                                  n_constant_features, n_duplicate_features)
    n_rows = n_eras * rows_per_era
    ids = _draw_ids(rng, n_rows)
    features = np.empty((n_rows, n_features), dtype=np.int8)
    targets = np.empty((n_rows, 1 + len(extra_targets)))
    predictions = np.empty((n_rows, n_models))
    benchmark = np.empty(n_rows)
    for era_index in range(n_eras):
        rows = slice(era_index * rows_per_era, (era_index + 1) * rows_per_era)
        era = _draw_era(rng, population, rows_per_era)
        features[rows], predictions[rows], benchmark[rows] = era.features, era.predictions, era.benchmark
        targets[rows] = _targets(rng, era.target_latent, len(extra_targets))
    targets[(n_eras - n_unresolved) * rows_per_era:] = np.nan

    eras = [f"{i:04d}" if era_format == "string" else i for i in range(1, n_eras + 1)]
    era_column = np.repeat(np.array(eras, dtype=object if era_format == "string" else np.int64), rows_per_era)
    feature_names = [f"feature_{j:04d}" for j in range(n_features)]
    target_names = ["target", *extra_targets]
    models = [f"model_{j:0{max(3, len(str(n_models - 1)))}d}" for j in range(n_models)]

    fs, base = fsspec.core.url_to_fs(root, **(storage_options or {}))
    writer = _Writer(fs, base.rstrip("/"))
    data_files = []
    for name, rows in _data_file_rows(n_eras, rows_per_era, n_data_files, split_era_across_files):
        frame = _data_frame(ids[rows], era_column[rows], features[rows], feature_names, targets[rows], target_names)
        data_files.append(writer.parquet(f"data/{name}.parquet", frame if id_as_index else frame.reset_index(),
                                         preserve_index=id_as_index,
                                         row_group_starts=_run_starts(era_column[rows])))
    features_file = writer.text("data/features.json", _features_json(rng, feature_names, target_names))
    submission_files = _write_submissions(writer, rng, models, ids, predictions)
    stakes_file = writer.csv("stakes.csv", pa.table({"model": models, "stake": _draw_stakes(rng, n_models)}))
    benchmark_file = writer.parquet("benchmark/benchmark.parquet", pa.table({"id": ids, "prediction": benchmark}))

    n_resolved = n_eras - n_unresolved
    return GeneratedDataset(root=root, eras=eras, resolved_eras=eras[:n_resolved], unresolved_eras=eras[n_resolved:],
                            models=models, feature_names=feature_names, extra_targets=tuple(extra_targets),
                            data_files=data_files, features_file=features_file, submission_files=submission_files,
                            stakes_file=stakes_file, benchmark_file=benchmark_file)


def check_parameters(n_eras: int, rows_per_era: int, n_features: int, n_models: int, n_unresolved: int,
                     seed: int) -> None:
    """Raise :class:`InvalidSetting` (a ValueError naming :func:`generate`'s parameter) for sizes that cannot
    give a dataset to score, or a seed NumPy does not take: the command line checks its options with it before
    anything starts."""
    for key, value in (("n_eras", n_eras), ("n_features", n_features), ("n_models", n_models)):
        require_count(value, key)
    require(isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0, "seed",
            f"must be a whole number of at least 0, got {seed!r}")
    require(is_count(rows_per_era) and rows_per_era >= 2, "rows_per_era",
            f"must be a whole number of at least 2 (a correlation needs two rows), got {rows_per_era!r}")
    require(isinstance(n_unresolved, int) and 0 <= n_unresolved <= n_eras, "n_unresolved",
            f"must be between 0 and the number of eras ({n_eras}), got {n_unresolved!r}")


def _check_dataset_arguments(n_eras: int, n_data_files: int, era_format: str,
                             extra_targets: tuple[str, ...]) -> None:
    """Raise ValueError for a dataset layout that cannot be written as asked."""
    if not 1 <= n_data_files <= n_eras:
        raise ValueError(f"n_data_files must be between 1 and n_eras={n_eras}, got {n_data_files}")
    if era_format not in ("string", "int"):
        raise ValueError(f'era_format must be "string" or "int", got {era_format!r}')
    if len(set(extra_targets)) != len(extra_targets) or not all(
            name.startswith("target_") and name != "target_" for name in extra_targets):
        raise ValueError(f"extra targets must be distinct names starting with 'target_', got {extra_targets}")


def _targets(rng: np.random.Generator, latent: np.ndarray, n_extra: int) -> np.ndarray:
    """The target and ``n_extra`` correlated targets of one era, as quintile values, shape (N, 1 + n_extra)."""
    noise = rng.standard_normal((latent.shape[0], n_extra))
    extra = EXTRA_TARGET_CORRELATION * latent[:, None] + np.sqrt(1 - EXTRA_TARGET_CORRELATION**2) * noise
    return _quintile_values(np.column_stack([latent, extra]))


def _data_file_rows(n_eras: int, rows_per_era: int, n_files: int, split_era: bool) -> list[tuple[str, slice]]:
    """Name and row range of each data file: eras in order, cut evenly; a split moves each cut to mid-era."""
    names = NUMERAI_FILE_NAMES[:n_files] if n_files <= len(NUMERAI_FILE_NAMES) else [
        f"part_{i:03d}" for i in range(n_files)]
    era_cuts = np.round(np.arange(1, n_files) * n_eras / n_files).astype(int)
    row_cuts = era_cuts * rows_per_era - (rows_per_era // 2 if split_era else 0)
    bounds = [0, *row_cuts.tolist(), n_eras * rows_per_era]
    return [(name, slice(start, stop)) for name, start, stop in zip(names, bounds[:-1], bounds[1:])]


def _run_starts(values: np.ndarray) -> list[int]:
    """Start offsets of the runs of equal consecutive values (the era chunks of a file)."""
    return [0, *(np.flatnonzero(values[1:] != values[:-1]) + 1).tolist()]


def _data_frame(ids: np.ndarray, eras: np.ndarray, features: np.ndarray, feature_names: list[str],
                targets: np.ndarray, target_names: list[str]) -> pd.DataFrame:
    """Rows as Numerai ships them: ``id`` index, ``era``, int8 features, float targets."""
    return pd.concat([pd.DataFrame({"era": eras}),
                      pd.DataFrame(features, columns=feature_names),
                      pd.DataFrame(targets, columns=target_names)], axis=1).set_index(pd.Index(ids, name="id"))


def _features_json(rng: np.random.Generator, feature_names: list[str], target_names: list[str]) -> str:
    """Numerai-style feature metadata: nested random feature sets small ⊂ medium ⊂ all, in column order."""
    n = len(feature_names)
    order = rng.permutation(n)
    n_small = max(1, n // 8)
    n_medium = max(n_small, n // 3)
    sets = {"small": np.sort(order[:n_small]), "medium": np.sort(order[:n_medium]), "all": np.arange(n)}
    return json.dumps({"feature_sets": {name: [feature_names[j] for j in columns] for name, columns in sets.items()},
                       "targets": target_names}, indent=2)


def _write_submissions(writer: _Writer, rng: np.random.Generator, models: list[str], ids: np.ndarray,
                       predictions: np.ndarray) -> dict[str, list[str]]:
    """Write each model's predictions of every id, cycling through three layouts.

    Model 0, 3, 6… get a folder: ``a_first.parquet`` covers every id, with
    stale values (shifted by 0.5 modulo 1, so each differs) for a random
    subset of ids that ``b_reupload.csv`` then predicts again with the real
    values. Models 1, 4, 7… get ``<model>.csv``; 2, 5, 8… ``<model>.parquet``.
    """
    id_array = pa.array(ids)
    files = {}
    for j, model in enumerate(models):
        column = predictions[:, j]
        if j % 3 == 0:
            redone = np.sort(rng.choice(len(ids), size=max(1, int(REUPLOAD_SHARE * len(ids))), replace=False))
            stale = column.copy()
            stale[redone] = (stale[redone] + 0.5) % 1.0
            files[model] = [
                writer.parquet(f"submissions/{model}/a_first.parquet", pa.table({"id": id_array, "prediction": stale})),
                writer.csv(f"submissions/{model}/b_reupload.csv",
                           pa.table({"id": id_array.take(redone), "prediction": column[redone]})),
            ]
        elif j % 3 == 1:
            files[model] = [writer.csv(f"submissions/{model}.csv", pa.table({"id": id_array, "prediction": column}))]
        else:
            files[model] = [writer.parquet(f"submissions/{model}.parquet",
                                           pa.table({"id": id_array, "prediction": column}))]
    return files


class _Writer:
    """Writes whole files under one root through any fsspec filesystem (bytes built in memory, then one put)."""

    def __init__(self, fs: fsspec.AbstractFileSystem, base: str) -> None:
        self.fs = fs
        self.base = base

    def parquet(self, path: str, data: pa.Table | pd.DataFrame, *, preserve_index: bool = False,
                row_group_starts: list[int] | None = None) -> str:
        """Write a table as Parquet, one row group per range starting at ``row_group_starts`` (default one)."""
        table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=preserve_index)
        bounds = [*(row_group_starts or [0]), table.num_rows]
        buffer = io.BytesIO()
        with pq.ParquetWriter(buffer, table.schema) as parquet:
            for start, stop in zip(bounds[:-1], bounds[1:]):
                parquet.write_table(table.slice(start, stop - start), row_group_size=max(1, stop - start))
        return self._put(path, buffer.getvalue())

    def csv(self, path: str, table: pa.Table) -> str:
        """Write a table as CSV with a header (floats in shortest round-trip form)."""
        buffer = io.BytesIO()
        pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(quoting_style="none"))
        return self._put(path, buffer.getvalue())

    def text(self, path: str, text: str) -> str:
        """Write UTF-8 text."""
        return self._put(path, text.encode())

    def _put(self, path: str, data: bytes) -> str:
        """Store ``data`` at ``path`` relative to the root, creating folders where the filesystem needs them."""
        full = f"{self.base}/{path}"
        self.fs.makedirs(full.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe(full, data)
        return path
