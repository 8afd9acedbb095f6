"""Presentation and publishing: the HTML report, the terminal table, and the run folder.

Every model name, file name, reason and parameter shown in HTML is escaped:
they come from storage and are not trusted.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import secrets
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from numerai_dask.leaderboard import era_order
from numerai_dask.pipeline import JobResult
from numerai_dask.storage import Storage

#: Leaderboard columns shown in the terminal and at the top of the report.
SUMMARY_COLUMNS = ("model", "n_eras", "corr_mean", "fnc_mean", "mmc_mean", "bmc_mean", "tc_mean",
                   "corr_sharpe", "payout_mean", "payout_rank", "rank_change")
CHART_MODELS = 8

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#1b1f24}
table{border-collapse:collapse;font-size:.85rem;margin-bottom:1.5rem}
th,td{border-bottom:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f3f4f6;position:sticky;top:0}td:first-child,th:first-child{text-align:left}
.meta{color:#555}.bad{color:#a40000}
"""


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


def _table_html(frame: pd.DataFrame) -> str:
    header = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = "".join(f"<td>{html.escape(_format(v))}</td>" for v in row)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _format(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        return "-" if np.isnan(value) else f"{value:.4f}"
    return "-" if value is None else str(value)


def cumulative_corr_svg(per_era: pd.DataFrame, models: Sequence[str], width: int = 720, height: int = 260) -> str:
    """An inline SVG of cumulative CORR over eras for the given models."""
    order = era_order(per_era["era"])
    wide = per_era.pivot_table(index="era", columns="model", values="corr").reindex(order)
    wide = wide[[m for m in models if m in wide.columns]].fillna(0.0).cumsum()
    if wide.empty or len(order) < 2:
        return ""
    low, high = float(min(wide.min().min(), 0.0)), float(max(wide.max().max(), 0.0))
    span = (high - low) or 1.0
    x = np.linspace(10, width - 10, len(order))
    lines = []
    for i, model in enumerate(wide.columns):
        y = height - 10 - (wide[model].to_numpy() - low) / span * (height - 20)
        points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, y))
        hue = (i * 360 // max(len(wide.columns), 1)) % 360
        lines.append(f'<polyline fill="none" stroke="hsl({hue},70%,40%)" stroke-width="1.5" points="{points}">'
                     f"<title>{html.escape(str(model))}</title></polyline>")
    zero = height - 10 - (0.0 - low) / span * (height - 20)
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="cumulative corr">'
            f'<line x1="0" x2="{width}" y1="{zero:.1f}" y2="{zero:.1f}" stroke="#999" stroke-dasharray="4"/>'
            f"{''.join(lines)}</svg>")


def render_html(result: JobResult, run_id: str) -> str:
    """The page a person opens: parameters, leaderboard, chart, skipped eras and rejections."""
    manifest = result.manifest
    board = result.leaderboard
    columns = [c for c in SUMMARY_COLUMNS if c in board.columns]
    top = list(board["model"].head(CHART_MODELS))
    skipped = pd.DataFrame(sorted(result.skipped_eras.items()), columns=["era", "reason"])
    parameters = json.dumps(manifest.get("parameters", {}), sort_keys=True)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>numerai-dask leaderboard {html.escape(run_id)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Leaderboard</h1><p class='meta'>run {html.escape(run_id)} · root {html.escape(str(manifest.get('root', '')))}"
        f" · {len(board)} models · {len(manifest.get('eras', {}).get('scored', []))} eras scored</p>",
        f"<p class='meta'>parameters: <code>{html.escape(parameters)}</code></p>",
        "<h2>Cumulative CORR, top models</h2>",
        cumulative_corr_svg(result.per_era, top),
        "<h2>All models</h2>",
        _table_html(board[columns]),
        f"<h2>Skipped eras ({len(skipped)})</h2>",
        _table_html(skipped) if len(skipped) else "<p>none</p>",
        f"<h2 class='bad'>Rejections ({len(result.rejections)})</h2>",
        _table_html(result.rejections) if len(result.rejections) else "<p>none</p>",
        "<h2>Full leaderboard columns</h2>",
        _table_html(board),
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
    Returns the run's folder relative to ``out``.
    """
    folder = f"runs/{run_id}"
    manifest = {**result.manifest, "run_id": run_id}
    out.write_parquet(f"{folder}/per_era.parquet", result.per_era)
    out.write_parquet(f"{folder}/leaderboard.parquet", result.leaderboard)
    out.write_parquet(f"{folder}/rejections.parquet", result.rejections)
    files = {
        "leaderboard.csv": result.leaderboard.to_csv(index=False).encode(),
        "report.html": render_html(result, run_id).encode(),
        "manifest.json": json.dumps(manifest, indent=2, sort_keys=True, default=str).encode(),
        **(extra_files or {}),
    }
    for name, data in files.items():
        out.write_bytes(f"{folder}/{name}", data)
    if before_latest is not None:
        before_latest()
    out.write_bytes("latest.json", json.dumps({"run_id": run_id, "path": folder}).encode())
    return folder
