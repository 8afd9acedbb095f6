"""A full score against a refresh after one new era (of 100) and after one new model (of 200), one run.

    .venv/bin/python benchmarks/bench_refresh.py [--rows-per-era 1000 --features 200 --workers 2]

The dataset starts at 99 eras × 199 models, every model in a folder. Then:

1. a first refresh builds the cache (printed, not a ratio);
2. one new era arrives as a round does: a new data file, and each model
   appends a file with its predictions for that era → refresh, timed;
3. one new model arrives → refresh, timed;
4. a full ``score`` of the final inputs (100 eras × 200 models), timed.

Prints each time and the two ratios (goals: ≤ 5 % and ≤ 25 %).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
from numerai_dask.clusters import ClusterSpec, connect
from numerai_dask.pipeline import ScoringParams, prediction_correlations, run_job
from numerai_dask.refresh import refresh_once
from numerai_dask.report import new_run_id, publish_run
from numerai_dask.storage import Storage
from numerai_dask.synthetic import generate


def prepare(root: Path, rows: int, features: int, seed: int) -> tuple[pd.DataFrame, dict[str, pd.Series], str]:
    """Generate 100 eras × 200 models; hold back the last era and the last model. Returns what was held back."""
    from reference import read_predictions  # here: the LocalCluster's workers import this script again (spawn)
    info = generate(str(root), n_eras=100, rows_per_era=rows, n_features=features, n_models=200,
                    n_unresolved=0, seed=seed, n_data_files=4, split_era_across_files=False)
    data = pd.concat([pd.read_parquet(root / p) for p in info.data_files])
    last_era = info.eras[-1]
    held_rows = data[data["era"] == last_era]
    for path in info.data_files:
        frame = pd.read_parquet(root / path)
        frame[frame["era"] != last_era].to_parquet(root / path)
    predictions = {m: read_predictions(root, files) for m, files in info.submission_files.items()}
    for files in info.submission_files.values():
        for name in files:
            (root / name).unlink()
    for folder in (root / "submissions").iterdir():
        folder.rmdir()
    held_ids = held_rows.index
    for model, series in predictions.items():
        folder = root / "submissions" / model
        folder.mkdir()
        series.drop(held_ids).rename("prediction").reset_index().to_parquet(folder / "a_history.parquet")
    last_model = info.models[-1]
    for path in (root / "submissions" / last_model).iterdir():
        path.unlink()
    (root / "submissions" / last_model).rmdir()
    return held_rows, predictions, last_model


def timed(label: str, action) -> float:
    start = time.perf_counter()
    outcome = action()
    seconds = time.perf_counter() - start
    detail = f" ({outcome.message})" if hasattr(outcome, "message") else ""
    print(f"{label:44s}{seconds:8.2f} s{detail}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-era", type=int, default=1000)
    parser.add_argument("--features", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    params = ScoringParams()
    with tempfile.TemporaryDirectory() as folder, \
            connect(ClusterSpec("local", {"workers": args.workers}), log=lambda _: None) as client:
        root, out = Path(folder) / "root", Path(folder) / "out"
        started = time.perf_counter()
        held_rows, predictions, new_model = prepare(root, args.rows_per_era, args.features, args.seed)
        print(f"dataset: 99 eras × {args.rows_per_era} rows × {args.features} features × 199 models "
              f"(+1 era, +1 model held back), made in {time.perf_counter() - started:.1f} s, "
              f"{args.workers} workers")
        source, target = Storage(str(root)), Storage(str(out))

        def refresh():
            return refresh_once(client, source, target, params)

        timed("first refresh (builds the cache)", refresh)
        held_rows.to_parquet(root / "data" / "zz_new_round.parquet")
        for model, series in predictions.items():
            if model != new_model:
                rows = series.reindex(held_rows.index).rename("prediction").reset_index()
                rows.to_csv(root / "submissions" / model / "z_round.csv", index=False)
        new_era = timed("refresh after one new era (100th)", refresh)
        folder_new = root / "submissions" / new_model
        folder_new.mkdir()
        predictions[new_model].rename("prediction").reset_index().to_parquet(folder_new / "a_history.parquet")
        new_model_seconds = timed("refresh after one new model (200th)", refresh)

        def full_score():  # what `numerai-dask score` does, as a refresh does it
            result = run_job(client, source, params)
            result.prediction_correlation = prediction_correlations(client, source, result)
            publish_run(Storage(str(Path(folder) / "full")), result, new_run_id())
            return result

        full = timed("full score of the same inputs (100 × 200)", full_score)
        print(f"new era   / full score  {new_era / full:6.1%}   (goal ≤ 5 %)")
        print(f"new model / full score  {new_model_seconds / full:6.1%}   (goal ≤ 25 %)")


if __name__ == "__main__":
    main()
