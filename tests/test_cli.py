"""The console script end to end: ``python -m numerai_dask.cli`` in a subprocess, on real clusters and real S3.

Jobs go to the shared two-worker cluster (``dask_cluster``) unless a test is
about another way of finding one (the environment, a LocalCluster; the
scripts and specs in ``cluster/`` are tested in test_clusters.py). S3 jobs read and publish through moto's HTTP server.
Every subprocess starts from this environment without any AWS or Dask
scheduler variable, and gets only those the test gives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import Client

from numerai_dask.cli import (Console, duration, main, parse_storage_options, progress_line,
                              refresh_settings_from_job_file, spec_from_job_file)
from numerai_dask.leaderboard import build_leaderboard
from numerai_dask.pipeline import JobError, JobResult, Progress, ScoringParams, run_job
from numerai_dask.report import render_html
from numerai_dask.storage import Storage
from numerai_dask.synthetic import generate
from numerai_dask.wording import counted

REPO = Path(__file__).resolve().parent.parent
CLI_TIMEOUT = 180
TOLERANCE = 1e-12
#: The dataset every test scores (or a copy of it): 4 resolved eras, 1 unresolved.
DATASET = {"n_eras": 5, "rows_per_era": 40, "n_features": 5, "n_models": 4, "n_unresolved": 1, "seed": 7}
RUN_FILES = ("per_era.parquet", "leaderboard.parquet", "leaderboard.csv", "rejections.parquet", "report.html",
             "manifest.json")
METRICS = ("corr", "fnc", "mmc", "bmc", "tc")
LEADERBOARD_COLUMNS = [
    "model", "n_eras",
    *[f"{m}_{s}" for m in METRICS for s in ("mean", "std", "sharpe", "max_drawdown")],
    "cwmm_mean", "fe_max_mean", "fe_rms_mean", "payout_mean",
    *[f"{m}_rank" for m in (*METRICS, "payout")],
]
PER_ERA_COLUMNS = ["era", "model", "corr", "fnc", "mmc", "bmc", "tc", "cwmm", "fe_max", "fe_rms", "meta_corr"]


def cli_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without AWS or Dask scheduler settings, plus ``extra``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "DASK_SCHEDULER_ADDRESS"}
    return {**clean, **(extra or {})}


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``numerai-dask ARGS`` as a subprocess of this interpreter; output captured as text."""
    return subprocess.run([sys.executable, "-m", "numerai_dask.cli", *args], env=cli_environment(env),
                          capture_output=True, text=True, timeout=CLI_TIMEOUT, cwd=cwd)


def succeeded(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """``done`` after checking it exited 0 (else fail with its output)."""
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


@dataclass(frozen=True)
class Run:
    """A published run on the local disk: the out folder, the run folder latest.json names, and the CLI's output."""

    out: Path
    folder: Path
    stdout: str

    @classmethod
    def of(cls, out: Path, done: subprocess.CompletedProcess) -> Run:
        latest = json.loads((out / "latest.json").read_text())
        assert latest["path"] == f"runs/{latest['run_id']}"
        return cls(out, out / latest["path"], succeeded(done).stdout)

    def table(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.folder / f"{name}.parquet")


def assert_frames_close(mine: pd.DataFrame, theirs: pd.DataFrame, key: list[str]) -> None:
    """Same columns and keys; numbers equal to TOLERANCE, everything else equal."""
    assert list(mine.columns) == list(theirs.columns)
    mine = mine.sort_values(key).reset_index(drop=True)
    theirs = theirs.sort_values(key).reset_index(drop=True)
    for column in mine.columns:
        if pd.api.types.is_float_dtype(theirs[column]):
            np.testing.assert_allclose(mine[column], theirs[column], rtol=0, atol=TOLERANCE, err_msg=column)
        else:
            assert mine[column].astype(str).tolist() == theirs[column].astype(str).tolist(), column


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The DATASET in a local folder, shared read-only (jobs publish with --out elsewhere)."""
    root = tmp_path_factory.mktemp("dataset")
    generate(str(root), **DATASET)
    return root


@pytest.fixture(scope="module")
def scored(dataset: Path, dask_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """``score ROOT --scheduler ADDRESS --out OUT`` on the dataset: the run the local tests inspect."""
    out = tmp_path_factory.mktemp("scored") / "leaderboard"
    return Run.of(out, run_cli("score", str(dataset), "--scheduler", dask_cluster, "--out", str(out)))


# ------------------------------------------------------------------ score, local


def test_score_prints_the_short_leaderboard_and_the_report_path(scored: Run) -> None:
    lines = scored.stdout.splitlines()
    header = next(line.split() for line in lines if line.split()[:2] == ["model", "n_eras"])
    assert {"corr_mean", "fnc_mean", "mmc_mean", "payout_rank"} <= set(header)
    printed = {row[0]: dict(zip(header, row)) for row in (line.split() for line in lines) if len(row) == len(header)}
    for row in scored.table("leaderboard").itertuples(index=False):
        assert printed[row.model]["corr_mean"] == f"{row.corr_mean:.4f}"
        assert printed[row.model]["payout_rank"] == str(row.payout_rank)
    assert lines[-1] == f"report: {scored.folder / 'report.html'}"
    assert " · 0 eras skipped · 1 unresolved · " in scored.stdout


def test_score_publishes_a_complete_run_that_latest_json_points_at(scored: Run) -> None:
    assert sorted(p.name for p in scored.out.iterdir()) == ["latest.json", "runs"]
    assert [p.name for p in (scored.out / "runs").iterdir()] == [scored.folder.name]
    assert set(RUN_FILES) <= {p.name for p in scored.folder.iterdir()}
    assert "<h1>Leaderboard</h1>" in (scored.folder / "report.html").read_text()


def test_published_tables_have_the_contract_columns(scored: Run) -> None:
    board = scored.table("leaderboard")
    assert list(board.columns) == LEADERBOARD_COLUMNS
    assert sorted(board["model"]) == [f"model_{j:03d}" for j in range(DATASET["n_models"])]
    assert (board["n_eras"] == DATASET["n_eras"] - DATASET["n_unresolved"]).all()
    assert_frames_close(pd.read_csv(scored.folder / "leaderboard.csv"), board, ["model"])
    assert list(scored.table("per_era").columns) == PER_ERA_COLUMNS
    assert list(scored.table("rejections").columns) == ["model", "file", "era", "reason"]
    assert scored.table("rejections").empty


def test_manifest_records_inputs_and_parameters(scored: Run, dataset: Path) -> None:
    manifest = json.loads((scored.folder / "manifest.json").read_text())
    assert manifest["run_id"] == scored.folder.name
    inputs = {Path(entry["path"]): entry for entry in manifest["inputs"]}
    on_disk = {p for p in dataset.rglob("*") if p.is_file()}
    assert set(inputs) == on_disk
    for path, entry in inputs.items():
        assert entry["size"] == path.stat().st_size
        assert entry["version"]
    assert manifest["parameters"]["target"] == "target"
    assert manifest["parameters"]["neutralization"] == 1.0
    assert manifest["parameters"]["payout"] == {"corr_weight": 0.5, "mmc_weight": 2.0, "clip": 0.05}


@pytest.mark.parametrize("mode", ["text", "json"])
def test_a_model_predicting_only_unresolved_eras_is_named_as_not_scored(mode: str, dataset: Path, dask_cluster: str,
                                                                        tmp_path: Path) -> None:
    """It has no leaderboard row and nothing to reject: the manifest, the summary and the report name it."""
    root = tmp_path / "root"
    shutil.copytree(dataset, root)
    data = pd.concat([pd.read_parquet(path) for path in sorted((root / "data").glob("*.parquet"))])
    ids = data.index if "id" not in data else data["id"]
    unresolved = pd.Series(ids.to_numpy())[data["target"].isna().to_numpy()]
    assert len(unresolved)
    pd.DataFrame({"id": unresolved, "prediction": np.linspace(0.1, 0.9, len(unresolved))}).to_csv(
        root / "submissions" / "next_round.csv", index=False)
    out = tmp_path / "out"
    done = succeeded(run_cli("score", str(root), "--scheduler", dask_cluster, "--out", str(out),
                             *(["--json"] if mode == "json" else [])))
    run = Run.of(out, done)
    manifest = json.loads((run.folder / "manifest.json").read_text())
    assert manifest["models"]["not_scored"] == ["next_round"]
    assert manifest["models"]["submitted"] == DATASET["n_models"] + 1
    assert "next_round" not in set(run.table("leaderboard")["model"]) and run.table("rejections").empty
    page = (run.folder / "report.html").read_text()
    assert "5 submitted · 1 predicts only unresolved or skipped eras: next_round" in page
    assert "0 skipped · 1 unresolved" in page
    if mode == "json":
        document = json.loads(done.stdout)
        assert document["models_not_scored"] == ["next_round"]
        # a first run: every top model has the keys a later run's have, rank_change null
        assert [set(m) for m in document["top_models"]] == [{"model", "payout_rank", "payout_mean", "corr_mean",
                                                             "mmc_mean", "tc_mean", "rank_change"}] * 4
        assert all(m["rank_change"] is None for m in document["top_models"])
        assert document["eras_unresolved"] == manifest["eras"]["unresolved"] and len(document["eras_unresolved"]) == 1
    else:
        assert "1 not scored (every era they predict is unresolved or skipped): next_round" in done.stdout


def test_scheduler_address_from_the_environment(dataset: Path, dask_cluster: str, tmp_path: Path) -> None:
    done = succeeded(run_cli("score", str(dataset), "--out", str(tmp_path / "out"),
                             env={"DASK_SCHEDULER_ADDRESS": dask_cluster}))
    assert f"connected to {dask_cluster} (2 workers)" in done.stdout
    assert "LocalCluster" not in done.stdout


@pytest.mark.parametrize("mode", ["text", "quiet", "json"])
def test_a_failure_the_command_outlives_goes_to_stderr_in_every_mode(mode: str, capsys: pytest.CaptureFixture) -> None:
    """A scheduled refresh's failed tick: on stderr even with --quiet, and a failed JSON object with --json."""
    Console(mode).warn("refresh failed: OSError: down")
    captured = capsys.readouterr()
    assert captured.err == "refresh failed: OSError: down\n"
    assert captured.out == ('{"status": "failed", "error": "refresh failed: OSError: down"}\n' if mode == "json" else "")


def test_json_failure_is_one_object_too(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    job = tmp_path / "job.toml"
    job.write_text('root = "r"\n[scoring]\nneutralization = 1.5\n')
    assert main(["run", str(job), "--json"]) == 1
    captured = capsys.readouterr()
    cause = f"job file {job}: [scoring] neutralization: must be between 0 and 1, got 1.5"
    assert json.loads(captured.out) == {"status": "failed", "error": cause}
    assert captured.err == f"numerai-dask: error: {cause}\n"


def test_scoring_options_reach_the_job(dataset: Path, dask_cluster: str, scored: Run, tmp_path: Path) -> None:
    """--extra-target, --feature-set and --neutralization give exactly what run_job gives with them."""
    out = tmp_path / "out"
    run = Run.of(out, run_cli("score", str(dataset), "--scheduler", dask_cluster, "--out", str(out),
                              "--extra-target", "target_jerome", "--feature-set", "small",
                              "--neutralization", "0.5"))
    params = ScoringParams(extra_targets=("target_jerome",), feature_set="small", neutralization=0.5)
    with Client(dask_cluster) as client:
        expected = run_job(client, Storage(str(dataset)), params)
    assert_frames_close(run.table("per_era"), expected.per_era, ["era", "model"])
    board = run.table("leaderboard")
    assert {"corr_target_jerome_mean", "corr_target_jerome_sharpe"} <= set(board.columns)
    assert_frames_close(board, expected.leaderboard, ["model"])
    default_fnc = scored.table("per_era").sort_values(["era", "model"])["fnc"].to_numpy()
    assert not np.allclose(run.table("per_era").sort_values(["era", "model"])["fnc"], default_fnc)
    manifest = json.loads((run.folder / "manifest.json").read_text())
    assert manifest["parameters"]["feature_set"] == "small"
    assert manifest["parameters"]["extra_targets"] == ["target_jerome"]


# ------------------------------------------------------------------ score, S3


@pytest.mark.parametrize("credentials", ["environment", "storage-options"])
def test_score_on_s3_equals_the_local_job_and_never_shows_the_secret(
    credentials: str, s3_server, s3_bucket: str, dask_cluster: str, scored: Run
) -> None:
    """The same generated data on S3, credentials only from the AWS environment or only from --storage-option."""
    root = f"{s3_bucket}/root"
    generate(root, **DATASET, storage_options=s3_server.storage_options)
    secret = f"secret-{os.urandom(8).hex()}"  # moto does not check it; it must still never be shown
    if credentials == "environment":
        env = {"AWS_ENDPOINT_URL": s3_server.endpoint_url, "AWS_ACCESS_KEY_ID": "cli-key",
               "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1"}
        options: list[str] = []
    else:
        env = {}
        options = ["--storage-option", "key=cli-key", "--storage-option", f"secret={secret}",
                   "--storage-option", f"client_kwargs.endpoint_url={s3_server.endpoint_url}"]
    done = succeeded(run_cli("score", root, "--scheduler", dask_cluster, *options, env=env))

    fs = s3_server.filesystem()
    fs.invalidate_cache()
    out = f"{root}/leaderboard"
    latest = json.loads(fs.cat_file(f"{out}/latest.json"))
    folder = f"{out}/{latest['path']}"
    published = {path.rsplit("/", 1)[1]: fs.info(path) for path in fs.find(folder)}
    assert set(RUN_FILES) <= set(published)
    latest_written = fs.info(f"{out}/latest.json")["LastModified"]
    assert all(info["LastModified"] <= latest_written for info in published.values())
    assert done.stdout.splitlines()[-1] == f"report: {folder}/report.html"

    board = pd.read_parquet(fs.open(f"{folder}/leaderboard.parquet"))
    assert_frames_close(board, scored.table("leaderboard"), ["model"])
    outputs = [done.stdout, done.stderr] + [fs.cat_file(path).decode("utf-8", "replace") for path in fs.find(out)]
    assert not [text[:200] for text in outputs if secret in text]


# ------------------------------------------------------------ bad submissions


def test_bad_submissions_are_listed_and_change_no_other_score(dataset: Path, dask_cluster: str, scored: Run,
                                                                tmp_path: Path) -> None:
    root = Path(shutil.copytree(dataset, tmp_path / "root"))
    data = pd.concat(pd.read_parquet(p) for p in sorted((root / "data").glob("*.parquet")))
    ids = data.index
    submissions = root / "submissions"
    # one era alone, every prediction the same: a rejection of that era (the others are of whole files)
    flat_era = data.loc[data["target"].notna(), "era"].iloc[0]
    pd.DataFrame({"id": ids[(data["era"] == flat_era).to_numpy()], "prediction": 0.5}).to_csv(
        submissions / "flat.csv", index=False)
    # columns id and a script tag, no prediction: the reason quotes the columns, so it carries the tag
    pd.DataFrame({"id": ids, "<script>alert(1)</script>": 0.5}).to_csv(submissions / "no_prediction.csv",
                                                                      index=False)
    good = (submissions / "model_001.csv").read_bytes()
    for bad_name in ("bad name", "..", "<script>"):
        (submissions / f"{bad_name}.csv").write_bytes(good)
    out = tmp_path / "out"
    run = Run.of(out, run_cli("score", str(root), "--scheduler", dask_cluster, "--out", str(out)))

    assert "5 rejections:" in run.stdout
    assert ("  no_prediction · submissions/no_prediction.csv: missing column(s) 'prediction'; "
            "the file has columns 'id', '<script>alert(1)</script>'") in run.stdout
    for bad_name in ("bad name", "..", "<script>"):
        assert f"  {bad_name} · submissions/{bad_name}.csv: invalid model name" in run.stdout
    assert f"  flat · submissions/flat.csv era {flat_era}: constant: every prediction" in run.stdout
    assert " era nan" not in run.stdout  # a file's rejection beside an era's said "era nan"
    assert sorted(run.table("rejections")["model"]) == sorted(["no_prediction", "bad name", "..", "<script>", "flat"])
    # rejected files never reach the meta model: every other score is the clean run's
    assert_frames_close(run.table("per_era"), scored.table("per_era"), ["era", "model"])
    page = (run.folder / "report.html").read_text()
    assert_only_own_scripts(page)
    assert "<script>alert" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "submissions/&lt;script&gt;.csv" in page


class ScriptElements(HTMLParser):
    """The attributes and text of every ``<script>`` element of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[tuple[dict, str]] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "script":
            self.scripts.append((dict(attrs), ""))
            self._inside = True

    def handle_data(self, data: str) -> None:
        if self._inside:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag: str) -> None:
        self._inside = False if tag == "script" else self._inside


def assert_only_own_scripts(page: str) -> None:
    """The page's scripts are its own two: the JSON data (no raw ``<``, ``>``, ``&``) and the code."""
    parser = ScriptElements()
    parser.feed(page)
    assert page.lower().count("<script") == 2
    (data_attrs, data), (code_attrs, _) = parser.scripts
    assert data_attrs == {"type": "application/json", "id": "report-data"} and code_attrs == {}
    assert not set("<>&") & set(data)
    json.loads(data)


def test_report_escapes_every_name_and_reason_from_storage() -> None:
    """render_html on a result whose model name, rejection, skipped era and root carry markup."""
    evil = "<script>alert('x')</script>"
    per_era = pd.DataFrame({"era": ["1", "2", "1", "2"], "model": [evil, evil, "plain", "plain"],
                            **{m: [0.01, 0.02, 0.03, -0.01] for m in (*METRICS, "cwmm", "fe_max", "fe_rms")}})
    result = JobResult(
        per_era=per_era,
        leaderboard=build_leaderboard(per_era),
        rejections=pd.DataFrame({"model": ["<b>m</b>"], "file": ["submissions/<i>.csv"], "era": [None],
                                 "reason": ['bad "<img src=x onerror=alert(1)>"']}),
        skipped_eras={"<u>3</u>": "<svg onload=alert(1)>"},
        manifest={"root": "/data/<root>", "parameters": {"target": "<target>"}, "eras": {"scored": ["1", "2"]}},
    )
    page = render_html(result, "<run>")
    assert_only_own_scripts(page)
    for markup in ("<script>alert", "<b>", "<i>", "<img", "<u>", "<svg onload", "<root>", "<target>", "<run>"):
        assert markup not in page, markup
    for escaped in ("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;", "&lt;b&gt;m&lt;/b&gt;",
                    "submissions/&lt;i&gt;.csv", "&lt;img src=x onerror=alert(1)&gt;", "&lt;svg onload=alert(1)&gt;",
                    "&lt;u&gt;3&lt;/u&gt;", "&lt;root&gt;", "&lt;run&gt;"):
        assert escaped in page, escaped


# --------------------------------------------------------------- job failures


def assert_one_line_cause(status: int, stderr: str, cause: str) -> None:
    """Exit status 1 and nothing on stderr but ``numerai-dask: error: …`` naming ``cause``: no traceback."""
    lines = stderr.splitlines()
    assert status == 1 and len(lines) == 1 and lines[0].startswith("numerai-dask: error: "), (status, stderr)
    assert cause in lines[0]


def test_a_job_that_scores_nothing_names_a_submissions_rejection_before_the_benchmarks(
        dataset: Path, dask_cluster: str, tmp_path: Path) -> None:
    """The first rejection named was the benchmark's, which is not why no model was scored."""
    root = Path(shutil.copytree(dataset, tmp_path / "root"))
    for folder in ("submissions", "benchmark"):
        shutil.rmtree(root / folder)
        (root / folder).mkdir()
    (root / "submissions" / "only.csv").write_text("id,prediction\nzz,0.5\n")
    (root / "benchmark" / "bench.csv").write_text("id,prediction\nzz,0.5\n")
    done = run_cli("score", str(root), "--scheduler", dask_cluster, "--out", str(tmp_path / "out"), "--quiet")
    assert_one_line_cause(done.returncode, done.stderr, "no model could be scored in any era: 2 rejections, the "
                          "first: only · submissions/only.csv: 1 of 1 ids is not in the data")


@pytest.mark.parametrize(
    ("args", "cause"),
    [
        (["{root}", "--target", "target_cyrus"], "target column 'target_cyrus' is not in the data"),
        (["{root}", "--feature-set", "huge"], "unknown feature set 'huge'; known sets: all, medium, small"),
        (["{empty}"], "no data files: {empty} does not exist"),
        (["{corrupt}/data/train.parquet"], "no data files: {corrupt}/data/train.parquet/data does not exist"),
        (["{no_parquet}"], "no data files: {no_parquet}/data holds no .parquet file"),
        (["{corrupt}"], "{corrupt}/data/train.parquet is not a readable parquet file: Parquet magic bytes not found"),
        (["{no_submissions}"], "no submissions: {no_submissions}/submissions does not exist"),
        (["{root}", "--max-submission-bytes", "100"], "no submissions: 6 rejections, the first: model_000 · "
         "submissions/model_000/"),
    ],
    ids=["unknown-target", "unknown-feature-set", "root-missing", "root-a-file", "data-without-parquet",
         "data-file-not-parquet", "no-submissions", "every-submission-rejected"],
)
def test_a_failed_job_exits_1_with_a_one_line_cause(args: list[str], cause: str, dataset: Path, dask_cluster: str,
                                                    tmp_path: Path) -> None:
    """The console script, on a cluster: the job fails while it discovers its inputs."""
    (tmp_path / "corrupt" / "data").mkdir(parents=True)
    (tmp_path / "corrupt" / "data" / "train.parquet").write_text("id,era\n0,1\n")  # CSV, not parquet
    (tmp_path / "no_parquet" / "data").mkdir(parents=True)
    (tmp_path / "no_parquet" / "data" / "train.csv").write_text("id,era\n0,1\n")
    shutil.copytree(dataset / "data", tmp_path / "no_submissions" / "data")
    fill = {"root": str(dataset), "empty": str(tmp_path / "empty"), "corrupt": str(tmp_path / "corrupt"),
            "no_parquet": str(tmp_path / "no_parquet"), "no_submissions": str(tmp_path / "no_submissions")}
    done = run_cli("score", *[a.format(**fill) for a in args], "--scheduler", dask_cluster,
                   "--out", str(tmp_path / "out"))
    assert_one_line_cause(done.returncode, done.stderr, cause.format(**fill))


def test_a_bad_data_file_on_a_local_cluster_is_one_line_with_nothing_from_its_workers(dataset: Path,
                                                                                       tmp_path: Path) -> None:
    """A LocalCluster's workers share the command's stderr: a task that raised printed its traceback there,
    once per retry of the same bad data."""
    root = tmp_path / "root"
    shutil.copytree(dataset, root)
    path = sorted((root / "data").glob("*.parquet"))[-1]
    frame = pd.read_parquet(path)
    frame["feature_0001"] = frame["feature_0001"].astype(float).where(frame.index != frame.index[0])
    frame.to_parquet(path)
    done = run_cli("score", str(root), "--workers", "1", "--quiet", "--out", str(tmp_path / "out"))
    assert_one_line_cause(done.returncode, done.stderr, "feature column(s) feature_0001 have missing values (NaN)")
    out = tmp_path / "out"
    assert done.stdout == "" and (not out.exists() or list(out.iterdir()) == [])  # the job's scratch removed


@pytest.mark.parametrize(
    ("root", "options", "cause"),
    [
        ("s3://no-such-bucket-{tag}/tournament", [], "no data files: s3://no-such-bucket-{tag} does not exist (or is "
         "hidden from these credentials)"),
        ("{bucket}/tournament", [], "no data files: {bucket}/tournament does not exist (or is hidden"),
        ("{bucket}/tournament", ["--storage-option", "bogus_option=1"],
         "{bucket}/tournament: a storage option that S3 does not take (AioSession.__init__() got an unexpected "
         "keyword argument 'bogus_option')"),
        ("{bucket}/tournament", ["--storage-option", "client_kwargs.region=x"],
         "a storage option that S3 does not take (AioSession._create_client() got an unexpected keyword argument "
         "'region')"),
    ],
    ids=["missing-bucket", "missing-prefix", "unknown-option", "unknown-client-option"],
)
def test_s3_roots_that_hold_nothing_or_unknown_options_are_a_one_line_cause(
    root: str, options: list[str], cause: str, s3_server, s3_bucket: str, dask_cluster: str, tmp_path: Path
) -> None:
    """Which part of an S3 root is missing is named; an option s3fs passes on to botocore, which takes no such
    argument, was a traceback from the first request."""
    fill = {"bucket": s3_bucket, "tag": os.urandom(4).hex()}
    env = {"AWS_ENDPOINT_URL": s3_server.endpoint_url, "AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret",
           "AWS_DEFAULT_REGION": "us-east-1"}
    done = run_cli("score", root.format(**fill), "--out", str(tmp_path / "out"), "--scheduler", dask_cluster,
                   *options, env=env)
    assert_one_line_cause(done.returncode, done.stderr, cause.format(**fill))
    assert not (tmp_path / "out").exists()


def test_ctrl_c_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """Interrupted (here while it connects to a scheduler that accepted the connection and says nothing), the
    command says so on one line, where it printed a KeyboardInterrupt traceback."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(120)
        process = subprocess.Popen([sys.executable, "-m", "numerai_dask.cli", "score", str(tmp_path), "--scheduler",
                                    f"tcp://127.0.0.1:{silent.getsockname()[1]}", "--json"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            connection, _ = silent.accept()
            with connection:
                process.send_signal(signal.SIGINT)
                out, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 130 and "Traceback" not in err, err
    assert err.splitlines()[-1] == "numerai-dask: interrupted"
    assert json.loads(out) == {"status": "interrupted"}


def test_ctrl_c_while_the_local_cluster_starts_is_not_lost(dataset: Path, tmp_path: Path) -> None:
    """Ctrl-C to the command's process group once it has started its first worker process (the LocalCluster
    is starting): the job stops, exit 130, where the signal was ignored then and the run published."""
    process = subprocess.Popen([sys.executable, "-m", "numerai_dask.cli", "score", str(dataset), "--workers", "1",
                                "--out", str(tmp_path / "out"), "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not child_processes(process.pid) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # its workers too: they share its new session
    assert process.returncode == 130, err
    assert err.splitlines()[-1] == "numerai-dask: interrupted" and json.loads(out) == {"status": "interrupted"}
    assert not (tmp_path / "out" / "latest.json").exists()


#: Put on PYTHONPATH, makes the interpreter send itself SIGINT as it starts importing pandas: a Ctrl-C while the
#: command's libraries load, whatever the machine's speed.
INTERRUPT_AT_PANDAS = """
import os, signal, sys

class InterruptAtPandas:
    def find_spec(self, name, path=None, target=None):
        if name == "pandas":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, InterruptAtPandas())
"""


def test_ctrl_c_while_the_command_loads_its_libraries_is_one_line(tmp_path: Path) -> None:
    """The command's libraries take about a second to load, before ``main`` runs: a Ctrl-C then was a
    KeyboardInterrupt traceback from an import."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(INTERRUPT_AT_PANDAS)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"), *sys.path[1:]])}
    done = subprocess.run([sys.executable, "-m", "numerai_dask", "score", str(tmp_path), "--json"], env=environment,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1] == "numerai-dask: interrupted"
    assert json.loads(done.stdout) == {"status": "interrupted"}


#: Put on PYTHONPATH, makes a worker process the command spawns send Ctrl-C's SIGINT to its process group as it
#: starts importing Dask's worker: a Ctrl-C while the LocalCluster's workers load their libraries.
INTERRUPT_AS_A_WORKER_LOADS_DASK = """
import os, signal, sys
from multiprocessing import spawn

class InterruptAtDaskWorker:
    def find_spec(self, name, path=None, target=None):
        if name == "distributed.worker":
            sys.meta_path.remove(self)
            os.killpg(0, signal.SIGINT)
        return None

if spawn.is_forking(sys.argv):
    sys.meta_path.insert(0, InterruptAtDaskWorker())
"""


def test_ctrl_c_while_the_local_clusters_workers_load_dask_is_the_commands_alone(dataset: Path, tmp_path: Path) -> None:
    """The worker took the Ctrl-C too, and printed a KeyboardInterrupt traceback from its imports: Dask's
    preload, which makes a worker ignore Ctrl-C, runs only once they are done."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(INTERRUPT_AS_A_WORKER_LOADS_DASK)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"), *sys.path[1:]])}
    command = Path(sys.executable).parent / "numerai-dask"
    done = subprocess.run([str(command), "score", str(dataset), "--workers", "1", "--out", str(tmp_path / "out"),
                           "--json"], env=environment, capture_output=True, text=True, timeout=120,
                          start_new_session=True)  # the hook's SIGINT goes to the command's process group only
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1] == "numerai-dask: interrupted"
    assert json.loads(done.stdout) == {"status": "interrupted"}
    assert not (tmp_path / "out" / "latest.json").exists()


def child_processes(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry.name))
    return children


def test_an_unreachable_s3_endpoint_is_a_one_line_cause_and_a_json_failure(tmp_path: Path, dask_cluster: str) -> None:
    """botocore's errors are none of the Python ones the command line names: they were a 150-line traceback."""
    with socket.socket() as closed:  # a port nothing listens on once this block ends
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    done = run_cli("score", "s3://bucket/tournament", "--out", str(tmp_path / "out"), "--scheduler", dask_cluster,
                   "--json", env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "key",
                                  "AWS_SECRET_ACCESS_KEY": "secret", "AWS_DEFAULT_REGION": "us-east-1"})
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1].startswith("numerai-dask: error: EndpointConnectionError: Could not connect")
    assert json.loads(done.stdout.splitlines()[-1])["status"] == "failed"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "cause"),
    [
        (["score", "nosuch://{empty}"], "ValueError: Protocol not known: nosuch"),
        (["run", "{empty}/missing.toml"], "cannot read job file {empty}/missing.toml"),
    ],
    ids=["unknown-protocol", "missing-job-file"],
)
def test_bad_arguments_exit_1_with_a_one_line_cause(args: list[str], cause: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """Mistakes found before any cluster is needed (checked in this process: no cluster is started)."""
    fill = {"empty": str(tmp_path)}
    status = main([a.format(**fill) for a in args])
    captured = capsys.readouterr()
    assert_one_line_cause(status, captured.err, cause.format(**fill))
    assert "LocalCluster" not in captured.out


@pytest.mark.parametrize(
    ("args", "cause"),
    [
        (["score", "r", "--neutralization", "1.5"], "argument --neutralization: must be between 0 and 1, got 1.5"),
        (["score", "r", "--target", "era"], "argument --target: 'era' is the data's era column, not a target"),
        (["score", "r", "--payout-corr-weight", "nan"], "argument --payout-corr-weight: must be a finite number"),
        (["score", "r", "--payout-clip", "-1"], "argument --payout-clip: must be a positive number, got -1.0"),
        (["score", "r", "--workers", "0"], "argument --workers: must be a whole number of at least 1, got 0"),
        (["score", "r", "--models-per-task", "0"], "argument --models-per-task: must be a whole number"),
        (["score", "r", "--max-submission-bytes", "0"], "argument --max-submission-bytes: must be a whole number"),
        (["score", "r", "--extra-target", "id"], "argument --extra-target: 'id' is the data's id column"),
        (["score", "r", "--extra-target", "t2", "--extra-target", "t2"],
         "argument --extra-target: 't2' given more than once"),
        (["score", "r", "--storage-option", "no-equals-sign"], "argument --storage-option: takes KEY=VALUE"),
        (["refresh", "r", "--lease-seconds", "0"], "argument --lease-seconds: must be a positive number, got 0.0"),
        (["refresh", "r", "--keep-runs", "0"], "argument --keep-runs: must be a whole number of at least 1, got 0"),
        (["refresh", "r", "--every", "15x"], "argument --every: takes an interval like 30s, 15m, 2h or 1d"),
        (["refresh", "r", "--cron", "0 0 31 2 *"], "argument --cron: never fires"),
        (["generate", "r", "--eras", "0"], "argument --eras: must be a whole number of at least 1, got 0"),
        (["generate", "r", "--rows-per-era", "1"], "argument --rows-per-era: must be a whole number of at least 2"),
        (["generate", "r", "--unresolved", "30"], "argument --unresolved: must be between 0 and the number of eras (24), got 30"),
        (["demo", "--workers", "0"], "argument --workers: must be a whole number of at least 1, got 0"),
        (["generate", "r", "--seed", "-1"], "argument --seed: must be a whole number of at least 0, got -1"),
    ],
    ids=["bad-neutralization", "era-as-target", "nan-payout-weight", "negative-clip", "zero-workers",
         "zero-models-per-task", "zero-submission-bytes", "id-as-extra-target", "extra-target-twice",
         "bad-storage-option", "zero-lease", "zero-keep-runs", "bad-interval", "cron-never-fires",
         "bad-generator-size", "one-row-eras", "too-many-unresolved", "zero-demo-workers", "negative-seed"],
)
def test_bad_option_values_are_usage_errors(args: list[str], cause: str, capsys: pytest.CaptureFixture) -> None:
    """Exit status 2, as for an unknown option, naming the option and the problem; nothing is started."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    captured = capsys.readouterr()
    assert exited.value.code == 2 and captured.out == ""
    assert captured.err.splitlines()[-1].startswith(f"numerai-dask {args[0]}: error: {cause}")
    assert captured.err.splitlines()[0].startswith(f"usage: numerai-dask {args[0]} ")


@pytest.mark.parametrize(("args", "unknown"), [(["score", "r", "--neutralisation", "1"], "--neutralisation 1"),
                                               (["refresh", "r", "more"], "more"),
                                               (["generate", "--bogus", "r"], "--bogus")])
def test_unknown_arguments_are_told_with_the_commands_usage(args: list[str], unknown: str,
                                                            capsys: pytest.CaptureFixture) -> None:
    """An argument the command does not take is a usage error naming it, with that command's usage (which
    lists the options it does take), not the top-level one."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    captured = capsys.readouterr()
    assert exited.value.code == 2 and captured.out == ""
    assert captured.err.splitlines()[0].startswith(f"usage: numerai-dask {args[0]} ")
    assert captured.err.splitlines()[-1] == f"numerai-dask {args[0]}: error: unrecognized arguments: {unknown}"


# ------------------------------------------------------------------ job files


def test_run_a_job_file(dataset: Path, dask_cluster: str, scored: Run, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = tmp_path / "job.toml"
    job.write_text(f'root = "{dataset}"\nout = "{out}"\n\n[scoring]\nextra_targets = ["target_jerome"]\n\n'
                   f'[scoring.payout]\nclip = 0.01\n\n[cluster]\nscheduler = "{dask_cluster}"\n')
    run = Run.of(out, run_cli("run", str(job)))
    assert f"connected to {dask_cluster}" in run.stdout
    board = run.table("leaderboard")
    assert "corr_target_jerome_mean" in board.columns
    assert (board["payout_mean"].abs() <= 0.01).all()
    same = [c for c in scored.table("leaderboard").columns if not c.startswith("payout")]
    assert_frames_close(board[same], scored.table("leaderboard")[same], ["model"])


def test_every_shipped_job_file_parses_without_unknown_keys() -> None:
    files = sorted((REPO / "jobs").glob("*.toml"))
    assert {f.name for f in files} >= {"local.toml", "s3.toml"}
    specs = {f.name: spec_from_job_file(str(f)) for f in files}
    assert specs["local.toml"].root == "demo-data"
    assert specs["s3.toml"].root.startswith("s3://")
    assert specs["s3.toml"].scheduler is None  # the address is left to the operator


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('root = "r"\nstorage_option = {}\n', "unknown key(s) ['storage_option'] at the top"),
        ('root = "r"\n[scoring]\nneutralisation = 0.5\n', "unknown key(s) ['neutralisation'] in [scoring]"),
        ('root = "r"\n[scoring.payout]\nmmc = 1\n', "unknown key(s) ['mmc'] in [scoring.payout]"),
        ('root = "r"\n[cluster]\nadress = "tcp://x:1"\n', "unknown key(s) ['adress'] in [cluster]"),
        ('root = "r"\n[scoring.payout]\nclip = "high"\n', "[scoring.payout] clip: must be a positive number, got 'high'"),
        ('root = "r"\n[refresh]\nkeep_runs = "10"\n',
         "[refresh] keep_runs: must be a whole number of at least 1, got '10' (text: write the number without quotes)"),
        ('root = "r"\n[scoring]\nneutralization = "0.5"\n',
         "[scoring] neutralization: must be between 0 and 1, got '0.5' (text: write the number without quotes)"),
        ('out = "o"\n', "has no 'root'"),
        ('root = 5\n', "root must be a text (a folder or URL), got 5"),
        ('root = "r"\nscoring = "x"\n', "scoring must be a table ([scoring]), got 'x'"),
        ('root = "r"\n[scoring]\nextra_targets = 3\n', "extra_targets must be a name or a list of names, got 3"),
        ('root = "r"\n[scoring]\nmodels_per_task = 2.5\n', "[scoring] models_per_task: must be a whole number"),
        ('root = "r"\n[scoring.payout]\nclip = -0.05\n', "[scoring.payout] clip: must be a positive number"),
        ('root = "r"\n[scoring.payout]\nclip = true\n', "[scoring.payout] clip: must be a positive number, got True"),
        ('root = "r"\n[refresh]\nevery = 0\n', "[refresh] every: takes an interval like 30s, 15m, 2h or 1d, got 0"),
        ('root = "r"\n[refresh]\nevery = 15\n', "[refresh] every: takes an interval like 30s, 15m, 2h or 1d, got 15"),
        ('root = "r"\n[refresh]\nevery = "0s"\n', "[refresh] every: must be a positive interval, got '0s'"),
        ('root = "r"\n[refresh]\nevery = "1m"\ncron = "* * * * *"\n', "[refresh] cron: a refresh repeats every "
         "interval or on cron, not both"),
        ('root = "r"\n[refresh]\nkeep_runs = "3"\n', "[refresh] keep_runs: must be a whole number of at least 1"),
        ('root = "r"\n[refresh]\nlease_seconds = "x"\n', "[refresh] lease_seconds: must be a positive number"),
        ('root = "r"\n[refresh]\ncron = 5\n', "[refresh] cron: takes five fields"),
        ('root = "r"\n[cluster]\nworkers = 0\n', "[cluster] workers: must be a whole number of at least 1, got 0"),
        ('root = "r"\n[cluster]\ncluster = 5\n', "[cluster] cluster must be a text (a cluster spec file), got 5"),
        ('root = "r"\n[cluster]\nscheduler = 5\n', "[cluster] scheduler must be a text (a scheduler's address), got 5"),
        ('root = "r"\n[cluster]\nscheduler = ""\n', "[cluster] scheduler must be a text (a scheduler's address), got ''"),
        ('root = "r"\n[scoring]\npayout = 3\n', "[scoring] payout must be a table ([scoring.payout]), got 3"),
        ('root = "r"\nrefresh = true\n', "refresh must be a table ([refresh]), got True"),
        ('root = "r"\n[scoring]\ntarget = 5\n', "[scoring] target: must be a column name (text), got 5"),
        ('root = "r"\n[scoring]\nfeature_set = 5\n', "[scoring] feature_set: must be a feature set's name (text)"),
        ('root = ""\n', "root must be a text (a folder or URL), got ''"),
        ('root = "r"\nout = ""\n', "out must be a text (a folder or URL), got ''"),
    ],
)
def test_job_file_mistakes_are_errors(tmp_path: Path, text: str, complaint: str) -> None:
    job = tmp_path / "job.toml"
    job.write_text(text)
    with pytest.raises(JobError) as raised:
        spec_from_job_file(str(job))
        refresh_settings_from_job_file(str(job))
    assert complaint in str(raised.value)


def test_one_extra_target_given_as_a_string_is_one_target(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text('root = "r"\n[scoring]\nextra_targets = "target_jerome"\n')
    assert spec_from_job_file(str(job)).params.extra_targets == ("target_jerome",)


# ------------------------------------------------------------------ demo


def test_generating_over_a_larger_dataset_names_the_models_left_from_it(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """``generate`` (and ``demo``) write over a folder and remove nothing: the earlier models were scored with
    the new ones, without a word."""
    sizes = ["--eras", "3", "--rows-per-era", "20", "--features", "4", "--unresolved", "1"]
    assert main(["generate", str(tmp_path), *sizes, "--models", "5"]) == 0
    assert "note:" not in capsys.readouterr().out
    assert main(["generate", str(tmp_path), *sizes, "--models", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"note: {tmp_path}/submissions also holds 2 models written before (model_003, model_004), which a job "
        "scores with these; generate into an empty folder for this dataset alone")


def test_demo_generates_scores_and_reports_on_a_local_cluster(tmp_path: Path) -> None:
    done = succeeded(run_cli("demo", "--dir", str(tmp_path / "demo"), "--eras", "4", "--rows-per-era", "40",
                             "--features", "5", "--models", "4", "--workers", "1"))
    assert "started a LocalCluster of 1 worker" in done.stdout
    report = Path(done.stdout.splitlines()[-1].removeprefix("report: "))
    assert report.is_file() and report.is_relative_to(tmp_path / "demo" / "leaderboard" / "runs")
    assert "<h1>Leaderboard</h1>" in report.read_text()


@pytest.mark.parametrize(("seconds", "shown"), [(0.04, "0.0s"), (0.42, "0.4s"), (9.94, "9.9s"), (9.96, "10s"),
                                                (42.4, "42s"), (59.6, "1m00s"), (185, "3m05s"), (7_800, "2h10m")])
def test_durations_are_short_and_a_short_stage_is_not_zero(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


def test_storage_options_convert_numbers_and_booleans_but_keep_credentials_as_written() -> None:
    """A secret ``0123456789`` went to S3 as the number 123456789."""
    assert parse_storage_options(["key=00012345", "secret=0123456789", "token=1.50", "profile=123", "anon=true",
                                  "config_kwargs.retries.max_attempts=5", "client_kwargs.timeout=1.5",
                                  "client_kwargs.region_name=007", "client_kwargs.aws_session_token=12.0"]) == {
        "key": "00012345", "secret": "0123456789", "token": "1.50", "profile": "123", "anon": True,
        "config_kwargs": {"retries": {"max_attempts": 5}},
        "client_kwargs": {"timeout": 1.5, "region_name": "007", "aws_session_token": "12.0"}}


@pytest.mark.parametrize(("count", "words", "shown"), [
    (1, ("worker",), "1 worker"), (0, ("model",), "0 models"), (2, ("era",), "2 eras"),
    (1, ("row has", "rows have"), "1 row has"), (1_234, ("row has", "rows have"), "1,234 rows have")])
def test_counts_agree_with_their_words(count: int, words: tuple[str, ...], shown: str) -> None:
    assert counted(count, *words) == shown


def test_a_progress_line_says_how_far_how_long_and_how_long_still() -> None:
    assert progress_line(Progress("score", "eras", 120, 500, 65.2, 206.0)) == \
        "score: 120/500 eras (24%) · 1m05s · ETA 3m26s"
    assert progress_line(Progress("read and validate", "models", 40, 40, 0.31, 0.0)) == \
        "read and validate: 40/40 models (100%) · 0.3s"
