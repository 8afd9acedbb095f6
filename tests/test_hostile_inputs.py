"""Hostile inputs, end to end on the real cluster: the whole corpus of bad submissions in one job, and bad data files.

One ``numerai-dask score`` of a clean dataset, one of the same dataset plus
every kind in :mod:`bad_submissions` (and the tolerated rewrites of good
files): the job finishes, every score is bit-identical, every bad kind is in
``rejections.parquet`` with its reason, and the CLI prints the rejections.
Bad *data* files stop the job instead: exit 1, one line naming the file and
the problem, nothing published.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bad_submissions import KINDS, SPARSE_BYTES, TOLERATED, Corpus, Kind
from test_cli import Run, run_cli

from numerai_dask.cli import REJECTIONS_SHOWN, build_parser, main, spec_from_arguments
from numerai_dask.pipeline import SUBMISSION_BYTES_PER_ROW, SUBMISSION_SLACK_BYTES, ScoringParams
from numerai_dask.submissions import parse_prediction_file
from numerai_dask.synthetic import generate

DATASET = {"n_eras": 5, "rows_per_era": 40, "n_features": 5, "n_models": 8, "n_unresolved": 1, "seed": 23}


@dataclass(frozen=True)
class Runs:
    """The clean run, the run with the corpus, and the data folder of the latter."""

    clean: Run
    hostile: Run
    root: Path


def data_rows(root: Path) -> pd.DataFrame:
    """Every data row (id as a column), from every data file."""
    return pd.concat(pd.read_parquet(p).reset_index() for p in sorted((root / "data").glob("*.parquet")))


def write_corpus(root: Path) -> None:
    """Every bad kind and every tolerated rewrite into the dataset at ``root``."""
    valid = parse_prediction_file("model_001.csv", (root / "submissions" / "model_001.csv").read_bytes()).frame()
    rows = data_rows(root)
    era = rows.loc[rows["target"].notna(), "era"].iloc[0]
    corpus = Corpus(root, valid, rows.loc[rows["era"] == era, "id"].tolist())
    for kind in KINDS:
        kind.build(corpus)
    for variant in TOLERATED:
        path = root / "submissions" / variant.model_file
        frame = parse_prediction_file(path.name, path.read_bytes()).frame()
        path.write_bytes(variant.encode(frame))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, dask_cluster: str) -> Runs:
    base = tmp_path_factory.mktemp("hostile")
    clean = base / "clean"
    generate(str(clean), **DATASET)
    hostile = Path(shutil.copytree(clean, base / "hostile"))
    write_corpus(hostile)
    scored = {}
    for name, root in (("clean", clean), ("hostile", hostile)):
        out = base / f"out-{name}"
        scored[name] = Run.of(out, run_cli("score", str(root), "--scheduler", dask_cluster, "--out", str(out)))
    return Runs(scored["clean"], scored["hostile"], hostile)


def test_the_corpus_has_at_least_25_kinds() -> None:
    assert len({kind.name for kind in KINDS}) == len(KINDS) >= 25


def test_every_good_score_is_bit_identical_with_the_corpus_present(runs: Runs) -> None:
    """Nothing of the corpus reaches the meta model: per-era scores and the leaderboard are exactly the clean run's."""
    for table in ("per_era", "leaderboard"):
        pd.testing.assert_frame_equal(runs.hostile.table(table), runs.clean.table(table), check_exact=True)
    assert runs.clean.table("rejections").empty


def test_tolerated_files_are_scored_not_rejected(runs: Runs) -> None:
    rejected = set(runs.hostile.table("rejections")["model"])
    scored = set(runs.hostile.table("per_era")["model"])
    for variant in TOLERATED:
        model = variant.model_file.split(".")[0]
        assert model in scored and model not in rejected, variant.name


@pytest.mark.parametrize("kind", KINDS, ids=[kind.name for kind in KINDS])
def test_each_kind_is_rejected_with_its_reason(runs: Runs, kind: Kind) -> None:
    rejections = runs.hostile.table("rejections")
    mine = rejections[rejections["model"] == kind.rejected_model]
    assert len(mine) >= 1, f"{kind.name}: no rejection for model {kind.rejected_model!r}"
    matching = mine[mine["reason"].str.contains(kind.reason, regex=False)]
    assert len(matching) == 1, f"{kind.name}: reasons were {mine['reason'].tolist()}"
    [row] = matching.itertuples(index=False)
    assert pd.notna(row.era) == kind.in_era, row
    assert row.file.startswith("submissions/"), row


def test_a_file_name_that_is_not_utf8_is_named_printably_in_the_rejections(runs: Runs) -> None:
    rejections = runs.hostile.table("rejections")
    assert "submissions/model_006/zz_late\\udcff.csv" in set(rejections["file"])


def test_the_oversized_file_is_rejected_from_its_listed_size_without_being_read(runs: Runs) -> None:
    """A sparse file of SPARSE_BYTES: the reason quotes its size; reading it would have failed with MemoryError."""
    assert (runs.root / "submissions" / "oversized.csv").stat().st_size == SPARSE_BYTES
    rejections = runs.hostile.table("rejections")
    [reason] = rejections.loc[rejections["model"] == "oversized", "reason"]
    assert reason.startswith(f"the file is {SPARSE_BYTES:,} bytes, over the limit of ")
    assert "MemoryError" not in " ".join(rejections["reason"])


def test_the_cli_prints_every_rejection_count_and_the_first_ones(runs: Runs) -> None:
    rejections = runs.hostile.table("rejections")
    lines = runs.hostile.stdout.splitlines()
    assert f"{len(rejections)} rejections:" in lines
    for row in rejections.head(REJECTIONS_SHOWN).itertuples(index=False):
        assert any(line.startswith(f"  {row.model} · ") and line.endswith(row.reason) for line in lines), row
    assert f"  … and {len(rejections) - REJECTIONS_SHOWN} more in rejections.parquet" in lines


def test_the_report_lists_the_rejections_with_markup_from_files_escaped(runs: Runs) -> None:
    page = (runs.hostile.folder / "report.html").read_text()
    assert "&lt;html&gt;&lt;body&gt;Access denied&lt;/body&gt;&lt;/html&gt;" in page
    assert "<body>Access denied" not in page


# ------------------------------------------------------------------ bad data files


def rewrite(path: Path, change: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    """Rewrite one data file (id as the index, as generated) through ``change``."""
    change(pd.read_parquet(path)).to_parquet(path)


def nan_feature(frame: pd.DataFrame) -> pd.DataFrame:
    feature = frame["feature_0001"].astype(float)
    feature.iloc[3] = np.nan
    return frame.assign(feature_0001=feature)


def one_row_era(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame, frame.iloc[[0]].rename(index=lambda _: "lonely-id").assign(era="9999")])


def eraless_rows(frame: pd.DataFrame) -> pd.DataFrame:
    era = frame["era"].astype(object)
    era.iloc[[2, 5]] = None
    return frame.assign(era=era)


def idless_rows(frame: pd.DataFrame) -> pd.DataFrame:
    ids = frame.index.to_series().astype(object)
    ids.iloc[[1, 4, 7]] = None
    return frame.set_axis(pd.Index(ids, name=frame.index.name))


def repeated_id(frame: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame, frame.iloc[[0]].rename(index=lambda _: other.index[0])])


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda f, _: f.drop(columns=["target"]), "no column(s) ['target']"),
        (lambda f, _: f.drop(columns=["era"]), "no column(s) ['era']"),
        (lambda f, _: nan_feature(f), "feature column(s) feature_0001 have missing values (NaN)"),
        (lambda f, _: eraless_rows(f), "2 rows have no era (a missing value in 'era')"),
        (lambda f, _: idless_rows(f), "3 rows have no id (a missing value in 'id')"),
        (repeated_id, "1 id appears on more than one row of the data"),
        (lambda f, _: f.assign(era=f["era"].astype(int)), "the era column holds text in"),
        (lambda f, _: f.assign(era=f["era"].astype(float)), "but float64 values in"),
        (lambda f, _: f.drop(columns=["feature_0001"]), "lacks 1 feature of"),
        # the first file lacks one of the second's: that feature was dropped, silently, from every era
        (lambda f, _: f.assign(feature_9999=f["feature_0001"]), "has 1 feature"),
    ],
    ids=["missing-target", "missing-era", "nan-feature", "rows-without-era", "rows-without-id",
         "duplicate-id", "eras-as-numbers-in-one-file", "eras-as-floats-in-one-file", "feature-missing-in-one-file",
         "feature-only-in-one-file"],
)
def test_a_bad_data_file_stops_the_job_naming_the_file_and_publishing_nothing(
    change: Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame], problem: str, tmp_path: Path, dask_cluster: str,
    capsys: pytest.CaptureFixture,
) -> None:
    root = tmp_path / "root"
    generate(str(root), **DATASET)
    first, second = sorted((root / "data").glob("*.parquet"))
    rewrite(second, lambda frame: change(frame, pd.read_parquet(first)))
    out = tmp_path / "out"
    status = main(["score", str(root), "--scheduler", dask_cluster, "--out", str(out), "--quiet"])
    [line] = capsys.readouterr().err.splitlines()
    assert status == 1
    assert line.startswith("numerai-dask: error: ") and str(second) in line and problem in line, line
    assert not out.exists() or list(out.iterdir()) == []  # nothing published; the job's scratch, if any, removed


def test_an_era_with_one_resolved_row_waits_as_an_unresolved_one_and_the_rest_is_scored(
        tmp_path: Path, dask_cluster: str, capsys: pytest.CaptureFixture) -> None:
    """One resolved row stopped the whole job; only when every era has one is the era column likely wrong."""
    root = tmp_path / "root"
    generate(str(root), **DATASET)
    first, second = sorted((root / "data").glob("*.parquet"))
    rewrite(second, one_row_era)
    out = tmp_path / "out"
    assert main(["score", str(root), "--scheduler", dask_cluster, "--out", str(out), "--quiet"]) == 0
    manifest = json.loads(next((out / "runs").glob("*/manifest.json")).read_text())
    assert "9999" in manifest["eras"]["unresolved"] and "9999" not in manifest["eras"]["scored"]
    assert len(manifest["eras"]["scored"]) == DATASET["n_eras"] - DATASET["n_unresolved"]
    every = pd.concat([pd.read_parquet(first), pd.read_parquet(second)])  # now every era has one row
    every.groupby("era", observed=True).head(1).to_parquet(first)
    second.unlink()
    assert main(["score", str(root), "--scheduler", dask_cluster, "--out", str(tmp_path / "out2"), "--quiet"]) == 1
    assert "has only 1 row with a resolved target, as every era has" in capsys.readouterr().err


def test_the_size_limit_is_automatic_or_given() -> None:
    assert ScoringParams().submission_size_limit(10_000) == SUBMISSION_BYTES_PER_ROW * 10_000 + SUBMISSION_SLACK_BYTES
    given = spec_from_arguments(build_parser().parse_args(["score", "r", "--max-submission-bytes", "4096"]))
    assert given.params.submission_size_limit(10_000) == 4096
