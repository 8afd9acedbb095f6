"""report.html as a person sees it: in a real headless chromium, from a file and from S3 over HTTP.

The published runs come from the console script on the shared two-worker
cluster, with hostile text in rejection reasons and file names, twice into
the same output (so the second run has rank changes). The browser is
Debian's chromium, driven by playwright (``make test`` installs chromium when
it is missing and it can); without it the browser tests skip and say why.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import Client
from test_cli import run_cli, succeeded
from test_pipeline import merged_predictions, model_files, read_table

from numerai_dask.leaderboard import build_leaderboard
from numerai_dask.pipeline import CORRELATED_MODELS, JobResult, ScoringParams, prediction_correlations, run_job
from numerai_dask.report import (
    CHART_TOP,
    MISSING,
    SCALE,
    encode_series,
    plain,
    publish_run,
    report_data,
    render_html,
    script_json,
    series_models,
)
from numerai_dask.storage import Storage
from numerai_dask.synthetic import generate

CHROMIUM = Path("/usr/bin/chromium")
#: 60 models: the table has two pages of 50.
DATASET = {"n_eras": 7, "rows_per_era": 40, "n_features": 5, "n_models": 60, "n_unresolved": 1, "seed": 11}
HOSTILE_COLUMN = "</script><img src=x onerror=alert(1)>\u2028&amp;"
HOSTILE_FILE = "<img src=x onerror=alert(2)>.csv"
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass(frozen=True)
class Published:
    """The dataset, the two runs' console output and leaderboards, the second run's report and --json summary."""

    root: Path
    quiet: subprocess.CompletedProcess
    verbose: subprocess.CompletedProcess
    first_run: str
    first: pd.DataFrame
    second: pd.DataFrame
    report: Path
    summary: dict


@pytest.fixture(scope="module")
def published(dask_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Published:
    root = tmp_path_factory.mktemp("report-root")
    generate(str(root), **DATASET)
    ids = pd.concat(read_table(p) for p in sorted((root / "data").glob("*.parquet")))["id"]
    submissions = root / "submissions"
    pd.DataFrame({"id": ids, HOSTILE_COLUMN: 0.5}).to_csv(submissions / "hostile.csv", index=False)
    shutil.copy(submissions / "model_001.csv", submissions / HOSTILE_FILE)
    job = root / "job.toml"
    job.write_text(f'root = "{root}"\n\n[scoring]\nextra_targets = ["target_jerome"]\n\n'
                   f'[cluster]\nscheduler = "{dask_cluster}"\n')
    quiet = succeeded(run_cli("run", str(job), "--quiet"))
    first = json.loads((root / "leaderboard" / "latest.json").read_text())["run_id"]
    board = pd.read_parquet(root / "leaderboard" / "runs" / first / "leaderboard.parquet")
    # the first run's best model leaves: every other model rises
    leaver = board["model"].iloc[0]
    for path in [submissions / f"{leaver}.csv", submissions / leaver]:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    verbose = succeeded(run_cli("score", str(root), "--scheduler", dask_cluster, "--extra-target", "target_jerome",
                                "--json"))
    second = json.loads(verbose.stdout)
    return Published(root, quiet, verbose, first, board, pd.read_parquet(second["outputs"]["leaderboard.parquet"]),
                     Path(second["outputs"]["report.html"]), second)


# ------------------------------------------------------------------ the console


def test_quiet_prints_nothing(published: Published) -> None:
    assert (published.quiet.stdout, published.quiet.stderr) == ("", "")


def test_json_is_one_object_on_stdout_and_progress_goes_to_stderr(published: Published, dask_cluster: str) -> None:
    [line] = published.verbose.stdout.splitlines()
    summary = json.loads(line)
    folder = published.report.parent
    assert summary["status"] == "published" and summary["run_id"] == folder.name
    assert json.loads((folder.parent.parent / "latest.json").read_text())["run_id"] == folder.name
    assert summary["outputs"]["folder"] == str(folder)
    assert all(Path(path).is_file() for name, path in summary["outputs"].items() if name != "folder")
    board = published.second
    assert [m["model"] for m in summary["top_models"]] == board["model"].head(10).tolist()
    assert summary["top_models"][0]["corr_mean"] == board["corr_mean"].iloc[0]
    assert summary["top_models"][0]["rank_change"] == board["rank_change"].iloc[0]
    assert (summary["models_scored"], summary["eras_scored"], summary["rejections"]) == (59, 6, 2)
    assert set(summary["timings_seconds"]) == {"discover", "score", "reduce"}
    log = published.verbose.stderr
    assert f"connected to {dask_cluster} (2 workers) · dashboard http" in log
    assert "read and validate: 60/60 models (100%)" in log  # 59 scored and "hostile"
    assert "score: 6/6 eras (100%)" in log


# ------------------------------------------------------------------ the page, without a browser


def test_script_json_cannot_end_the_script_element_and_round_trips() -> None:
    data = {"name": HOSTILE_COLUMN, "nested": ["</SCRIPT>", "<!--", "a\u2029b"]}
    text = script_json(data)
    for raw in ("<", ">", "&", "\u2028", "\u2029"):
        assert raw not in text
    assert json.loads(text) == data


def test_series_encoding_keeps_four_decimals_and_missing_values() -> None:
    values = np.array([[0.12344, -0.5, np.nan], [3.5, -3.5, 0.0]])
    decoded = np.frombuffer(base64.b64decode(encode_series(values)), dtype="<i2").reshape(values.shape)
    assert decoded[0, 2] == MISSING
    np.testing.assert_allclose(decoded[0, :2] / SCALE, [0.1234, -0.5])
    assert decoded[1].tolist() == [32767, MISSING + 1, 0]  # clipped to ±3.2767, never the missing marker


def test_series_cap_keeps_the_first_models_within_the_budget() -> None:
    board = pd.DataFrame({"model": [f"m{i}" for i in range(5000)]})
    assert series_models(board, n_eras=500, n_metrics=4, budget=3_000_000) == [f"m{i}" for i in range(1500)]
    assert len(series_models(board, n_eras=10, n_metrics=4, budget=3_000_000)) == 5000
    assert len(series_models(board, n_eras=10**6, n_metrics=4, budget=10)) == CHART_TOP


def test_a_run_without_a_benchmark_says_why_bmc_is_empty() -> None:
    rng = np.random.default_rng(1)
    per_era = pd.DataFrame({"era": np.repeat(["1", "2"], 3), "model": ["a", "b", "c"] * 2,
                            **{m: rng.normal(0, 0.03, 6) for m in ("corr", "fnc", "mmc", "tc", "cwmm", "fe_max",
                                                                   "fe_rms")}})
    no_file = "BMC is empty: no benchmark (a file in <code>benchmark/</code>)"
    unusable = "BMC is empty: the benchmark <code>benchmark/&lt;b&gt;.csv</code> was rejected or covers no scored era"
    for bmc, benchmark, note in ((np.full(6, np.nan), None, no_file), (np.full(6, np.nan), "benchmark/<b>.csv", unusable),
                                 (rng.normal(0, 0.03, 6), "benchmark/<b>.csv", None)):
        table = per_era.assign(bmc=bmc)
        result = JobResult(table, build_leaderboard(table), pd.DataFrame(columns=["model", "file", "era", "reason"]),
                           {}, {"root": "r", "eras": {"scored": ["1", "2"]}, "benchmark": benchmark})
        page = render_html(result, "run")
        assert [n for n in (no_file, unusable) if n in page] == ([note] if note else [])


def test_skipped_eras_are_listed_in_era_order_and_cells_round_as_the_csv_does() -> None:
    """Skipped eras were listed as text sorts them ("10" before "9"); table cells went to the page at 6 decimals,
    and 0.09225001 showed as 0.0922 where the CSV and the terminal say 0.0923."""
    rng = np.random.default_rng(2)
    per_era = pd.DataFrame({"era": np.repeat(["1", "2"], 2), "model": ["a", "b"] * 2,
                            **{m: rng.normal(0, 0.03, 4) for m in ("corr", "fnc", "mmc", "bmc", "tc", "cwmm", "fe_max",
                                                                   "fe_rms")}})
    result = JobResult(per_era, build_leaderboard(per_era), pd.DataFrame(columns=["model", "file", "era", "reason"]),
                       {"10": "constant target", "9": "constant target"}, {"root": "r", "eras": {"scored": ["1", "2"]}})
    page = render_html(result, "run")
    skipped = page[page.index("Skipped eras"):]
    assert skipped.index(">9<") < skipped.index(">10<")
    assert plain(0.09225001) == 0.09225001 and f"{plain(0.09225001):.4f}" == "0.0923"


def test_the_top_model_card_says_when_others_share_its_payout_rank() -> None:
    """Copies of one file score alike and share payout rank 1: the card named one of them as if alone."""
    rng = np.random.default_rng(4)
    scores = {m: rng.normal(0, 0.03, 2) for m in ("corr", "fnc", "mmc", "bmc", "tc", "cwmm", "fe_max", "fe_rms")}
    per_era = pd.DataFrame({"era": ["1", "2"] * 3, "model": np.repeat(["copy_a", "copy_b", "other"], 2),
                            **{m: np.tile(v, 3) + np.repeat([0, 0, -0.01], 2) for m, v in scores.items()}})
    result = JobResult(per_era, build_leaderboard(per_era), pd.DataFrame(columns=["model", "file", "era", "reason"]),
                       {}, {"root": "r", "eras": {"scored": ["1", "2"]}})
    page = render_html(result, "run")
    card = page[page.index(">top model<"):]
    assert card.index("copy_a") < card.index("tied with 1 other<") < card.index("</div></div>")
    alone = per_era[per_era["model"] != "copy_b"]
    page = render_html(JobResult(alone, build_leaderboard(alone), result.rejections, {}, result.manifest), "run")
    assert "tied with" not in page


def test_a_report_of_5000_models_stays_small() -> None:
    models, eras = 5000, 80
    rng = np.random.default_rng(0)
    per_era = pd.DataFrame({
        "era": np.repeat([f"{e:04d}" for e in range(eras)], models),
        "model": np.tile([f"model_{m:05d}" for m in range(models)], eras),
        **{m: rng.normal(0, 0.03, models * eras) for m in ("corr", "fnc", "mmc", "bmc", "tc", "cwmm", "fe_max",
                                                           "fe_rms")},
    })
    result = JobResult(per_era, build_leaderboard(per_era), pd.DataFrame(columns=["model", "file", "era", "reason"]),
                       {}, {"root": "r", "eras": {"scored": []}})
    page = render_html(result, "big")
    assert len(page.encode()) < 20e6
    data = report_data(result)
    assert len(data["series"]["models"]) == models  # 5000 × 80 × 5 values fit the budget
    assert len(data["leaderboard"]["model"]) == models


@pytest.fixture(scope="module")
def job(published: Published, dask_cluster: str) -> JobResult:
    """The second run's job, scored in this process, with its prediction correlations."""
    with Client(dask_cluster) as client:
        result = run_job(client, Storage(str(published.root)), ScoringParams())
        result.prediction_correlation = prediction_correlations(client, Storage(str(published.root)), result)
    return result


def test_prediction_correlations_are_the_mean_per_era_spearman(published: Published, job: JobResult) -> None:
    """Checked against pandas' Spearman on the submission files as the contract merges them."""
    result, mine = job, job.prediction_correlation
    top = list(result.leaderboard["model"].head(CORRELATED_MODELS))
    assert list(mine.index) == top == list(mine.columns)
    data = pd.concat(read_table(p) for p in sorted((published.root / "data").glob("*.parquet")))
    data = data[data["target"].notna()]
    files = model_files(published.root)
    predictions = pd.DataFrame({m: merged_predictions(files[m]) for m in top})
    per_era = [predictions.loc[rows["id"]].corr(method="spearman") for _, rows in data.groupby("era")]
    expected = sum(per_era) / len(per_era)
    np.testing.assert_allclose(mine.to_numpy(), expected.loc[top, top].to_numpy(), rtol=0, atol=1e-12)


def test_second_score_ranks_against_the_first(published: Published) -> None:
    before = published.first.set_index("model")["payout_rank"]
    after = published.second.set_index("model")
    expected = (before.reindex(after.index) - after["payout_rank"]).astype("Int64")
    assert after["rank_change"].tolist() == expected.tolist()
    assert (after["rank_change"] >= 1).sum() > 0
    assert published.summary["previous_run"] == f"runs/{published.first_run}"
    assert f"rank change against run <code>runs/{published.first_run}</code>" in published.report.read_text()


def test_page_text_is_escaped(published: Published) -> None:
    page = published.report.read_text()
    assert "<img" not in page and "onerror=alert(1)>" not in page
    assert page.count("<script") == 2  # the data and the code, nothing from storage
    assert "&lt;img src=x onerror=alert(2)&gt;" in page


# ------------------------------------------------------------------ in chromium


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (make test installs it with apt-get when run as root; "
                    "here it could not)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extras")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=BROWSER_FLAGS, headless=True,
            viewport={"width": 1400, "height": 900})
        yield browser
        browser.close()


@dataclass
class Visit:
    """A page the test opened, with what it logged, asked for and alerted."""

    page: object
    errors: list[str]
    requests: list[str]
    dialogs: list[str]

    def cells(self, column: str) -> list[str]:
        index = self.page.eval_on_selector_all("#leaderboard thead th", "ths => ths.map(th => th.dataset.key)")
        position = index.index(column) + 1
        return self.page.eval_on_selector_all(f"#leaderboard tbody td:nth-child({position})",
                                               "tds => tds.map(td => td.textContent)")

    def count(self, selector: str) -> int:
        return self.page.eval_on_selector_all(selector, "nodes => nodes.length")


def visit(browser, url: str) -> Visit:
    page = browser.new_page()
    seen = Visit(page, [], [], [])
    page.on("console", lambda message: seen.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    page.on("request", lambda request: seen.requests.append(request.url))
    page.on("dialog", lambda dialog: (seen.dialogs.append(dialog.message), dialog.dismiss()))
    response = page.goto(url)
    assert response is not None and response.ok
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    return seen


def drawn(visit: Visit, selector: str) -> int:
    """How many elements match ``selector`` with a non-zero size on screen."""
    return visit.page.eval_on_selector_all(
        selector, "nodes => nodes.filter(n => { const b = n.getBoundingClientRect(); "
                  "return b.width > 0 && b.height > 0; }).length")


def test_report_in_chromium_sorts_filters_pages_and_draws(published: Published, browser, tmp_path: Path) -> None:
    seen = visit(browser, published.report.as_uri())
    page, board = seen.page, published.second
    n_eras = DATASET["n_eras"] - DATASET["n_unresolved"]

    # charts: the top models' cumulative lines, per-era bars, spread bands, meta bars, the matrix, targets
    assert drawn(seen, "#cumulative path.series") == CHART_TOP
    assert drawn(seen, "#per-era rect.bar") == n_eras
    assert drawn(seen, "#spread polygon.band") == 2 and drawn(seen, "#spread path.series") == 1
    assert drawn(seen, "#meta rect.bar") == n_eras
    # every bar within its plot (52 … 626 of the 640-wide chart): the first covered the axis' labels, the last
    # was cut off at the edge
    spans = page.eval_on_selector_all("#per-era rect.bar, #meta rect.bar",
                                      "bars => bars.map(b => [b.x.baseVal.value, b.x.baseVal.value + b.width.baseVal.value])")
    assert spans and all(52 <= left and right <= 626 for left, right in spans), spans
    assert drawn(seen, "#correlation rect.cell") == CORRELATED_MODELS ** 2
    assert drawn(seen, "#targets rect.bar") == 2 * 10

    # the first page in payout order, two pages, rank changes shown
    assert seen.cells("model") == board["model"].head(50).tolist()
    assert "rows 1–50 of 59 · page 1 / 2" in page.inner_text("#pager")
    assert seen.cells("rank_change")[:3] == [f"▲ {v}" for v in board["rank_change"].head(3)]
    page.click("#pager [data-page=next]")
    assert seen.cells("model") == board["model"].iloc[50:].tolist()

    # sort by corr_mean: best first, then the other way
    page.click("#leaderboard th[data-key=corr_mean]")
    by_corr = board.sort_values("corr_mean", ascending=False, kind="stable")
    assert seen.cells("model") == by_corr["model"].head(50).tolist()
    assert seen.cells("corr_mean") == [f"{v:.4f}" for v in by_corr["corr_mean"].head(50)]
    page.click("#leaderboard th[data-key=corr_mean]")
    assert seen.cells("model") == board.sort_values("corr_mean", kind="stable")["model"].head(50).tolist()

    # filter by name
    page.fill("#filter", "model_00")
    expected = board[board["model"].str.contains("model_00")]
    assert sorted(seen.cells("model")) == sorted(expected["model"])
    assert f"of {len(expected)} ·" in page.inner_text("#pager")

    # a model picked from the table joins the cumulative chart
    picked = expected["model"][expected.index >= CHART_TOP].iloc[0]
    page.click(f"#leaderboard td.model button >> text={picked}")
    assert drawn(seen, "#cumulative path.series") == CHART_TOP + 1
    assert picked in page.inner_text("#cumulative .legend")
    # and its per-era bars show (they stayed the first pick's)
    assert page.get_attribute("#per-era svg", "aria-label").endswith(f" per era of {picked}")

    # hostile text stays text: no alert, no injected element, the reason shown as written
    assert seen.dialogs == [] and seen.count("img") == 0
    page.fill("#rejection-filter", "onerror")
    shown = page.eval_on_selector_all("#rejections tbody td", "tds => tds.map(td => td.textContent)")
    rejections = pd.read_parquet(published.report.parent / "rejections.parquet")
    hostile = rejections[rejections["reason"].str.contains("onerror") | rejections["file"].str.contains("onerror")]
    assert len(hostile) == 2 and seen.count("#rejections tbody tr") == 2
    assert set(hostile["reason"]) | set(hostile["file"]) <= set(shown)

    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert seen.errors == []
    assert all(url.startswith("file://") for url in seen.requests), seen.requests
    page.close()


def test_report_in_chromium_writes_numbers_as_they_round(published: Published, browser, tmp_path: Path) -> None:
    """A matrix cell rounds before its sign is written (−0.001 is ".00", not "-.00"); each chart's tick labels share
    the decimals of its step (zero was "0" beside "0.050" and "0.10"); a filter that matches nothing says so."""
    start = "<script type='application/json' id='report-data'>"
    head, rest = published.report.read_text(encoding="utf-8").split(start)
    embedded, tail = rest.split("</script>", 1)
    data = json.loads(embedded)
    n = len(data["correlation"]["models"])
    near_zero = [-0.001, 0.004, -0.006, -0.0049, 0.5, -0.125, 0.125]
    data["correlation"]["values"] = [[1.0 if i == j else near_zero[(i + j) % 7] for j in range(n)] for i in range(n)]
    page_file = tmp_path / "report.html"
    page_file.write_text(head + start + script_json(data) + "</script>" + tail, encoding="utf-8")
    seen = visit(browser, page_file.as_uri())
    page = seen.page

    written = {"-0.001": ".00", "0.004": ".00", "-0.006": "-.01", "-0.0049": ".00", "0.5": ".50", "1.0": "1.00",
               "-0.125": "-.13", "0.125": ".13"}
    cells = page.eval_on_selector_all("#correlation text.cell-value", "texts => texts.map(t => t.textContent)")
    expected = [written[str(1.0 if i == j else near_zero[(i + j) % 7])] for i in range(n) for j in range(n)]
    assert cells == expected

    for chart in ("cumulative", "per-era", "spread", "meta", "targets"):
        ticks = page.eval_on_selector_all(f"#{chart} svg > text.tick", "ts => ts.map(t => t.textContent)")
        decimals = {len(t.partition(".")[2]) for t in ticks}
        assert len(ticks) >= 3 and len(decimals) == 1, (chart, ticks)

    page.fill("#filter", "No Such model")
    assert page.inner_text("#leaderboard tbody") == "nothing matches “No Such model”"
    assert "rows 0–0 of 0" in page.inner_text("#pager")
    assert seen.errors == []
    page.close()


def test_report_served_from_s3_over_http(job: JobResult, browser, s3_server, s3_bucket: str) -> None:
    """Published to moto's S3 as publish_run writes it (stored as text/html), then opened over HTTP."""
    out = Storage(f"{s3_bucket}/leaderboard", s3_server.storage_options)
    folder = publish_run(out, job, "20260101T000000.000000Z-abcdef")
    key = out.path(f"{folder}/report.html")
    assert s3_server.filesystem().info(key)["ContentType"].startswith("text/html")
    seen = visit(browser, s3_server.filesystem().url(key, expires=600))  # a presigned link, as one shares it
    assert seen.page.title() == "numerai-dask leaderboard 20260101T000000.000000Z-abcdef"
    assert drawn(seen, "#cumulative path.series") == CHART_TOP
    assert seen.errors == [] and seen.dialogs == []
    assert all(url.startswith(s3_server.endpoint_url) for url in seen.requests), seen.requests
    seen.page.close()
