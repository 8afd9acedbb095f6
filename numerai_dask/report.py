"""Presentation and publishing: the HTML report, the terminal table, and the run folder.

``report.html`` is one self-contained file: no network request, it opens from
a disk or from object storage. The server side writes the page's text
(header, first page of the leaderboard, rejections) HTML-escaped, and the
data for the interactive parts as one JSON document inside
``<script type="application/json">`` with ``<``, ``>``, ``&`` and U+2028/9
escaped, so no string from storage can close the script element. The
browser-side code (``report.js``, inlined) draws every chart as SVG and puts
every name into the page as text (``textContent``), never as markup.

Size: the leaderboard (every model, every column) and the per-era spread are
always embedded; the per-era series behind the cumulative and per-era charts
are embedded as base64 int16 (1e-4 resolution) for the leaderboard's first
models up to ``SERIES_BUDGET`` values (every model when they fit), so 5,000
models × 500 eras stays under ~10 MB.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import secrets
from collections.abc import Callable
from importlib import resources

import numpy as np
import pandas as pd

from numerai_dask.leaderboard import era_order
from numerai_dask.pipeline import JobResult
from numerai_dask.storage import Storage, StorageError
from numerai_dask.submissions import describe_error
from numerai_dask.wording import counted

#: Leaderboard columns shown in the terminal.
SUMMARY_COLUMNS = ("model", "n_eras", "corr_mean", "fnc_mean", "mmc_mean", "bmc_mean", "tc_mean",
                   "corr_sharpe", "payout_mean", "payout_rank", "rank_change")
#: Leaderboard columns the HTML table shows until "all columns" is ticked (those present).
TABLE_COLUMNS = ("payout_rank", "rank_change", "model", "n_eras", "payout_mean", "corr_mean", "mmc_mean", "tc_mean",
                 "fnc_mean", "bmc_mean", "corr_sharpe", "mmc_sharpe", "corr_max_drawdown", "cwmm_mean", "fe_max_mean")
#: Per-era metrics whose series the charts draw (plus every ``corr_<target>``).
SERIES_METRICS = ("corr", "mmc", "tc", "fnc", "bmc")
#: Per-era values (models × eras × metrics) embedded at most: 3e6 int16 in base64 ≈ 8 MB.
SERIES_BUDGET = 3_000_000
#: Models the cumulative chart shows before anyone picks others.
CHART_TOP = 5
#: Rows the page shows before its script runs (the script paginates everything).
FIRST_PAGE = 50
#: Rejections embedded at most, and characters of a reason (they quote file contents).
REJECTIONS_EMBEDDED = 10_000
REASON_CHARACTERS = 500
#: Models waiting for a resolved era named on the report's card; the manifest lists them all.
NOT_SCORED_SHOWN = 20
#: int16 quantization of per-era scores: the value times SCALE, MISSING where a model has no score.
SCALE = 10_000
MISSING = -32768
SPREAD_QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
#: Content types stored with the run's text files on object storage.
CONTENT_TYPES = {"html": "text/html; charset=utf-8", "json": "application/json", "csv": "text/csv"}


def new_run_id(now: dt.datetime | None = None) -> str:
    """A unique run id that sorts in time order: UTC time to the microsecond, plus a random suffix.

    Retention keeps the newest runs by name, so runs made within one second must still sort by time.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S.%fZ}-{secrets.token_hex(3)}"


def summary_table(leaderboard: pd.DataFrame, rows: int = 10) -> str:
    """A short fixed-width leaderboard for the terminal."""
    columns = [c for c in SUMMARY_COLUMNS if c in leaderboard.columns]
    head = leaderboard[columns].head(rows)
    return head.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")


# ------------------------------------------------------------------ the data the page's script reads


def plain(value: object) -> object:
    """A table cell as JSON: floats to 9 decimals (the page shows 4, which must round as the CSV's do: at 6,
    0.09225001 became 0.09225 and then 0.0922), NaN/NA as null, numpy scalars as Python ones."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else round(float(value), 9)
    if isinstance(value, (int, np.integer)):
        return int(value)
    return str(value)


def columns_json(frame: pd.DataFrame) -> dict[str, list]:
    """A table column by column (compact for thousands of rows)."""
    return {str(c): [plain(v) for v in frame[c].tolist()] for c in frame.columns}


def series_metrics(per_era: pd.DataFrame) -> list[str]:
    """The per-era metrics worth charting: SERIES_METRICS and ``corr_<target>`` columns that hold a value."""
    candidates = [m for m in SERIES_METRICS if m in per_era] + [c for c in per_era if c.startswith("corr_")]
    return [m for m in candidates if per_era[m].notna().any()]


def series_models(leaderboard: pd.DataFrame, n_eras: int, n_metrics: int, budget: int = SERIES_BUDGET) -> list[str]:
    """The models whose per-era series are embedded: the leaderboard's first ones, within ``budget`` values."""
    fits = max(budget // max(n_eras * n_metrics, 1), CHART_TOP)
    return [str(m) for m in leaderboard["model"].head(fits)]


def encode_series(values: np.ndarray) -> str:
    """Per-era scores (models × eras, NaN where missing) as base64 of little-endian int16 (value × SCALE)."""
    scaled = np.clip(np.round(values * SCALE), MISSING + 1, 32767)
    packed = np.where(np.isfinite(values), scaled, MISSING).astype("<i2")
    return base64.b64encode(packed.tobytes()).decode("ascii")


class Grid:
    """Where each per-era row goes in a models × eras array (models and eras in the given orders)."""

    def __init__(self, per_era: pd.DataFrame, models: list[str], eras: list[str]) -> None:
        self.shape = (len(models), len(eras))
        rows = pd.Categorical(per_era["model"].astype(str), categories=models).codes
        columns = pd.Categorical(per_era["era"].astype(str), categories=eras).codes
        self.known = (rows >= 0) & (columns >= 0)
        self.rows, self.columns = rows[self.known], columns[self.known]

    def matrix(self, values: pd.Series) -> np.ndarray:
        """One metric as a models × eras array, NaN where a model has no score."""
        matrix = np.full(self.shape, np.nan)
        matrix[self.rows, self.columns] = values.to_numpy(np.float64)[self.known]
        return matrix


def spread(matrix: np.ndarray) -> dict[str, list]:
    """Per era (column), the quantiles of one metric across every model scored there (eras × SPREAD_QUANTILES)."""
    scored = np.isfinite(matrix).any(axis=0)
    quantiles = np.full((len(SPREAD_QUANTILES), matrix.shape[1]), np.nan)
    quantiles[:, scored] = np.nanquantile(matrix[:, scored], SPREAD_QUANTILES, axis=0)
    return {"quantiles": list(SPREAD_QUANTILES),
            "values": [[plain(v) for v in row] for row in quantiles.T],
            "models": [int(n) for n in np.isfinite(matrix).sum(axis=0)]}


def report_data(result: JobResult) -> dict:
    """Everything the page's script draws: leaderboard, series, spread, meta model, correlations, rejections."""
    per_era, board = result.per_era, result.leaderboard
    eras = [str(e) for e in era_order(per_era["era"].unique())]
    metrics = series_metrics(per_era)
    ranked = [str(m) for m in board["model"]]
    models = series_models(board, len(eras), len(metrics))
    grid = Grid(per_era, ranked, eras)
    series, spreads = {}, {}
    for metric in metrics:
        matrix = grid.matrix(per_era[metric])
        series[metric] = encode_series(matrix[: len(models)])
        spreads[metric] = spread(matrix)
    meta = None
    if "meta_corr" in per_era:
        meta = [plain(v) for v in per_era.groupby(per_era["era"].astype(str))["meta_corr"].first().reindex(eras)]
    correlation = result.prediction_correlation
    rejections = result.rejections.head(REJECTIONS_EMBEDDED).assign(
        reason=lambda r: r["reason"].astype(str).str.slice(0, REASON_CHARACTERS))
    return {
        "leaderboard": columns_json(board),
        "defaultColumns": table_columns(board),
        "eras": eras,
        "series": {"models": models, "metrics": metrics, "scale": SCALE, "missing": MISSING, "data": series},
        "spread": spreads,
        "meta": meta,
        "correlation": None if correlation is None or correlation.empty else {
            "models": [str(m) for m in correlation.columns],
            "values": [[plain(v) for v in row] for row in correlation.to_numpy()]},
        "targets": ["corr", *[c for c in metrics if c.startswith("corr_")]],
        "chartTop": CHART_TOP,
        "rejections": columns_json(rejections),
        "rejectionCount": len(result.rejections),
    }


def table_columns(board: pd.DataFrame) -> list[str]:
    """The leaderboard columns shown first: TABLE_COLUMNS, then each extra target's mean CORR."""
    shown = [c for c in TABLE_COLUMNS if c in board.columns]
    return shown + [c for c in board.columns if c.startswith("corr_") and c.endswith("_mean") and c not in shown]


def previous_run(manifest: dict) -> str | None:
    """The run the rank change compares with: a refresh's previous run, or the one a score found in its output."""
    return manifest.get("previous_run") or manifest.get("refresh", {}).get("previous")


def script_json(data: dict) -> str:
    """JSON that is safe inside a ``<script>`` element: nothing in it can end the element or the line."""
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    for raw, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


# ------------------------------------------------------------------ the page


def _format(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        return "–" if np.isnan(value) else f"{value:.4f}"
    return "–" if value is None or value is pd.NA else str(value)


def table_html(frame: pd.DataFrame, table_id: str) -> str:
    """A plain escaped table (the page before its script runs, and the whole page without scripts)."""
    header = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = "".join(f"<td>{html.escape(_format(v))}</td>" for v in row)
        body.append(f"<tr>{cells}</tr>")
    return (f"<div class='table-wrap'><table id='{table_id}'><thead><tr>{header}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def card(label: str, value: str, note: str = "") -> str:
    return (f"<div class='card'><div class='label'>{html.escape(label)}</div>"
            f"<div class='value'>{html.escape(value)}</div><div class='note'>{html.escape(note)}</div></div>")


def chart(chart_id: str, title: str, note: str, controls: str = "") -> str:
    return (f"<section class='panel'><div class='panel-head'><h3>{html.escape(title)}</h3>{controls}</div>"
            f"<p class='note'>{html.escape(note)}</p><div class='chart' id='{chart_id}'></div></section>")


def bmc_note(board: pd.DataFrame, manifest: dict) -> str:
    """Why no model has a BMC, when none has (HTML): no benchmark file, or one that could not be used."""
    if "bmc_mean" not in board or not len(board) or board["bmc_mean"].notna().any():
        return ""
    if manifest.get("benchmark"):
        return (f" · BMC is empty: the benchmark <code>{html.escape(manifest['benchmark'])}</code> was rejected or "
                "covers no scored era (see the rejections)")
    return " · BMC is empty: no benchmark (a file in <code>benchmark/</code>)"


def models_note(models: dict, scored: int) -> str:
    """How many models were submitted, and which of them wait for a resolved era (none of theirs is)."""
    waiting = models.get("not_scored", [])
    if not waiting:
        return f"{models.get('submitted', scored):,} submitted"
    names = ", ".join(waiting[:NOT_SCORED_SHOWN]) + (
        f" and {len(waiting) - NOT_SCORED_SHOWN:,} more" if len(waiting) > NOT_SCORED_SHOWN else "")
    return (f"{models.get('submitted', scored):,} submitted · "
            f"{counted(len(waiting), 'predicts', 'predict')} only unresolved or skipped eras: {names}")


def top_model_note(board: pd.DataFrame) -> str:
    """The top model's payout and corr means, and how many models share its payout rank (the card names the first)."""
    if not len(board):
        return ""
    top = board.iloc[0]
    tied = int((board["payout_rank"] == top["payout_rank"]).sum()) - 1 if pd.notna(top["payout_rank"]) else 0
    note = f"payout {_format(top['payout_mean'])} · corr {_format(top['corr_mean'])}"
    return note + (f" · tied with {counted(tied, 'other')}" if tied else "")


def render_html(result: JobResult, run_id: str) -> str:
    """The page a person opens: summary cards, the leaderboard, charts, rejections, skipped eras, parameters."""
    manifest = result.manifest
    board = result.leaderboard
    data = report_data(result)
    top = board.iloc[0] if len(board) else None
    skipped = pd.DataFrame([(era, result.skipped_eras[era]) for era in era_order(list(result.skipped_eras))],
                           columns=["era", "reason"])
    parameters = json.dumps(manifest.get("parameters", {}), sort_keys=True)
    previous = previous_run(manifest) if "rank_change" in board else None
    n_series = len(data["series"]["models"])
    columns = table_columns(board)
    cards = "".join([
        card("models scored", f"{len(board):,}", models_note(manifest.get("models", {}), len(board))),
        card("eras scored", f"{len(data['eras']):,}", f"{len(result.skipped_eras)} skipped · "
             f"{len(manifest.get('eras', {}).get('unresolved', [])):,} unresolved"),
        card("rejections", f"{len(result.rejections):,}", "see below" if len(result.rejections) else "none"),
        card("top model", str(top["model"]) if top is not None else "–", top_model_note(board)),
    ])
    metric_select = "<select id='metric' aria-label='metric'></select>"
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; script-src 'unsafe-inline'; "
        "style-src 'unsafe-inline'; img-src data:\">",
        f"<title>numerai-dask leaderboard {html.escape(run_id)}</title>",
        f"<style>{resources.files('numerai_dask').joinpath('report.css').read_text()}</style></head><body>",
        "<header><h1>Leaderboard</h1>",
        f"<p class='meta'>run <code>{html.escape(run_id)}</code> · root <code>"
        f"{html.escape(str(manifest.get('root', '')))}</code>"
        + (f" · rank change against run <code>{html.escape(str(previous))}</code>" if previous else
           " · first run in this output: no rank change")
        + bmc_note(board, manifest)
        + "</p></header>",
        f"<div class='cards'>{cards}</div>",
        "<section class='panel wide'><div class='panel-head'><h2>Models</h2>"
        "<div class='controls'><input id='filter' type='search' placeholder='filter by model name' "
        "aria-label='filter by model name'> <label><input id='all-columns' type='checkbox'> all columns</label>"
        "</div></div>",
        f"<p class='note'>Click a column to sort, a model to chart it. Per-era series are embedded for the "
        f"{n_series:,} first models of {len(board):,}.</p>",
        table_html(board[columns].head(FIRST_PAGE), "leaderboard"),
        "<div class='pager' id='pager'></div></section>",
        "<div class='grid'>",
        chart("cumulative", "Cumulative score", "Sum over eras of the per-era score: the top models and any you pick.",
              f"<div class='controls'>{metric_select} <input id='pick' list='pickable' placeholder='add a model' "
              f"aria-label='add a model'><datalist id='pickable'></datalist></div>"),
        chart("per-era", "Per-era score", "The first picked model's score in each era."),
        chart("spread", "Spread across models", "Per era: median, 25–75 % and 10–90 % of every model's score; "
              "a bad era pulls the whole band down."),
        chart("meta", "Meta model CORR per era", "The stake-weighted meta model's own CORR in each era."),
        chart("correlation", "Correlation of the top models' predictions",
              "Mean over eras of the per-era Spearman correlation between two models' predictions."),
        chart("targets", "Per-target CORR", "Mean CORR of the top models against each target scored."),
        "</div>",
        f"<section class='panel wide'><div class='panel-head'><h2 class='bad'>Rejections ({len(result.rejections):,})"
        "</h2><div class='controls'><input id='rejection-filter' type='search' placeholder='filter rejections' "
        "aria-label='filter rejections'></div></div>",
        table_html(result.rejections.head(FIRST_PAGE), "rejections") if len(result.rejections) else "<p>none</p>",
        "<div class='pager' id='rejection-pager'></div></section>",
        f"<section class='panel wide'><h2>Skipped eras ({len(skipped)})</h2>",
        table_html(skipped, "skipped") if len(skipped) else "<p>none</p>",
        f"</section><section class='panel wide'><h2>Parameters</h2><p><code>{html.escape(parameters)}</code></p>"
        f"<p class='note'>timings (s): <code>{html.escape(json.dumps(manifest.get('timings_seconds', {})))}"
        "</code></p></section>",
        "<div id='tooltip' role='tooltip'></div>",
        f"<script type='application/json' id='report-data'>{script_json(data)}</script>",
        f"<script>{resources.files('numerai_dask').joinpath('report.js').read_text()}</script>",
        "</body></html>",
    ]
    return "\n".join(parts)


def publish_run(
    out: Storage,
    result: JobResult,
    run_id: str,
    extra_files: dict[str, bytes] | None = None,
    before_latest: Callable[[], None] | None = None,
) -> str:
    """Write ``runs/<run_id>/…`` completely, then ``latest.json`` last, in one PUT.

    A reader of ``latest.json`` therefore only ever sees a finished run.
    ``extra_files`` join the run folder; ``before_latest`` runs just before the
    switch and may raise to stop it (a refresh checks it still holds its lease).
    Returns the run's folder relative to ``out``. Storage failing for good is a
    StorageError saying so, and that ``latest.json`` still names the previous
    run (or that nothing was published, on a first run).
    """
    try:
        return _write_run(out, result, run_id, extra_files or {}, before_latest)
    except OSError as error:
        raise StorageError(f"could not publish run {run_id} to {out.display_url} ({describe_error(error)}); "
                           f"{what_latest_names(out)}") from None


def what_latest_names(out: Storage) -> str:
    """After a failed publish (``latest.json`` is written last, so never this run): which run it still names,
    asked only then, not before every publish."""
    try:
        return "latest.json still names the previous run" if out.exists("latest.json") else "nothing was published"
    except OSError:  # storage failing still
        return "latest.json was not changed"


def _write_run(out: Storage, result: JobResult, run_id: str, extra_files: dict[str, bytes],
               before_latest: Callable[[], None] | None) -> str:
    folder = f"runs/{run_id}"
    manifest = {**result.manifest, "run_id": run_id}
    out.write_parquet(f"{folder}/per_era.parquet", result.per_era)
    out.write_parquet(f"{folder}/leaderboard.parquet", result.leaderboard)
    out.write_parquet(f"{folder}/rejections.parquet", result.rejections)
    files = {
        "leaderboard.csv": result.leaderboard.to_csv(index=False).encode(),
        "report.html": render_html(result, run_id).encode(),
        "manifest.json": json.dumps(manifest, indent=2, sort_keys=True, default=str).encode(),
        **extra_files,
    }
    for name, data in files.items():
        out.write_bytes(f"{folder}/{name}", data, CONTENT_TYPES.get(name.rsplit(".", 1)[-1]))
    if before_latest is not None:
        before_latest()
    out.write_bytes("latest.json", json.dumps({"run_id": run_id, "path": folder}).encode())
    return folder
