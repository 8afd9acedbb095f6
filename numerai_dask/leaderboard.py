"""The reduce: a per-era table of scores becomes one leaderboard row per model.

Statistics follow the storage contract (DESIGN.md): for each metric its mean,
standard deviation (ddof 0), sharpe (mean / std) and maximum drawdown (the
largest fall of the cumulative per-era sum from its running peak, starting at
0, eras in order, reported ≥ 0). Eras where a metric is NaN (e.g. BMC without a
benchmark) are left out of that metric's statistics. A sharpe with a zero
standard deviation (a single era) is NaN: it is undefined, not infinite.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from numerai_dask.settings import require, require_finite_number, require_positive

#: An era label of digits, as DESIGN.md orders eras: decimal digits, which ``int`` reads (``str.isdigit`` also
#: takes "²", which ``int`` refuses).
DIGITS = re.compile(r"\d+")
#: Metrics summarised with mean, std, sharpe and max drawdown.
SUMMARISED = ("corr", "fnc", "mmc", "bmc", "tc")
#: Metrics summarised by their mean only.
AVERAGED = ("cwmm", "fe_max", "fe_rms")
#: Means this close rank as ties (:func:`rank_of_means`): far below any difference a score can mean, far above
#: the rounding of float64 sums of a few thousand eras.
RANK_RTOL = 1e-12
RANK_ATOL = 1e-15


@dataclass(frozen=True)
class PayoutRule:
    """Per-era payout score ``clip(corr_weight·corr + mmc_weight·mmc, ±clip)``."""

    corr_weight: float = 0.5
    mmc_weight: float = 2.0
    clip: float = 0.05

    def __post_init__(self) -> None:
        for name in ("corr_weight", "mmc_weight"):
            require_finite_number(getattr(self, name), name)
        require_positive(self.clip, "clip")

    def per_era(self, per_era: pd.DataFrame) -> pd.Series:
        raw = self.corr_weight * per_era["corr"] + self.mmc_weight * per_era["mmc"]
        return raw.clip(-self.clip, self.clip)


def era_order(eras: pd.Series | pd.Index | list) -> list:
    """Distinct eras in scoring order: numeric when every era is digits, else lexicographic (DESIGN.md)."""
    labels = pd.unique(pd.Series(list(eras), dtype=str))
    if all(DIGITS.fullmatch(label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def rank_of_means(means: pd.Series) -> pd.Series:
    """1 = the highest mean; means equal within RANK_RTOL share the best rank of their group, as pandas' ``min``
    method ranks exact ties; a NaN mean has no rank.

    Scores of the same predictions differ in the last bits with the order
    they are summed in and the column a model's predictions take in the era's
    matrices: two copies of one file, or models clipped to the payout's ±0.05
    in the same eras in a different order, got ranks of their own.
    """
    ordered = means.sort_values(ascending=False, kind="stable")
    values = ordered.to_numpy(dtype=float)
    starts = np.ones(len(values), dtype=bool)
    starts[1:] = ~np.isclose(values[1:], values[:-1], rtol=RANK_RTOL, atol=RANK_ATOL)
    ranks = np.maximum.accumulate(np.where(starts, np.arange(1, len(values) + 1), 0))
    return pd.Series(ranks, index=ordered.index).where(ordered.notna()).astype("Int64").reindex(means.index)


def summarise_metric(per_era: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean, std (ddof 0), sharpe and max drawdown of one metric per model, eras in order.

    ``per_era`` must already be sorted by era order within each model.
    """
    scored = per_era[["model", metric]].dropna()
    grouped = scored.groupby("model", sort=True)[metric]
    mean = grouped.mean()
    std = grouped.std(ddof=0)
    cumulative = grouped.cumsum()
    peak = cumulative.groupby(scored["model"]).cummax().clip(lower=0.0)
    drawdown = (peak - cumulative).groupby(scored["model"]).max().clip(lower=0.0)
    return pd.DataFrame(
        {
            f"{metric}_mean": mean,
            f"{metric}_std": std,
            f"{metric}_sharpe": mean / std.where(std > 0),
            f"{metric}_max_drawdown": drawdown,
        }
    )


def build_leaderboard(
    per_era: pd.DataFrame,
    payout: PayoutRule = PayoutRule(),
    previous: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per model: summaries of every metric, the payout score, and ranks.

    ``per_era`` has columns ``era, model`` and the metric columns (any
    ``corr_<target>`` columns are summarised like corr). Ranks are 1 = best,
    by mean (``payout_rank`` orders the table). With ``previous`` (an earlier
    leaderboard) ``rank_change`` is how many places a model rose (new: NaN).
    """
    order = {era: i for i, era in enumerate(era_order(per_era["era"]))}
    table = per_era.assign(
        _era_position=per_era["era"].astype(str).map(order),
        payout=payout.per_era(per_era),
    ).sort_values(["model", "_era_position"], kind="stable")
    extra = [c for c in table.columns if c.startswith("corr_")]
    summarised = [m for m in SUMMARISED if m in table.columns] + extra
    board = pd.DataFrame({"n_eras": table.groupby("model", sort=True)["era"].nunique()})
    for metric in summarised:
        board = board.join(summarise_metric(table, metric))
    for metric in AVERAGED:
        if metric in table.columns:
            board[f"{metric}_mean"] = table.groupby("model", sort=True)[metric].mean()
    board["payout_mean"] = table.groupby("model", sort=True)["payout"].mean()
    for metric in [m for m in SUMMARISED if f"{m}_mean" in board] + ["payout"]:
        board[f"{metric}_rank"] = rank_of_means(board[f"{metric}_mean"])
    board = board.reset_index().rename(columns={"index": "model"})
    board = board.sort_values(["payout_rank", "model"], kind="stable").reset_index(drop=True)
    return with_rank_change(board, previous) if previous is not None else board


def with_rank_change(board: pd.DataFrame, previous: pd.DataFrame) -> pd.DataFrame:
    """``board`` with ``rank_change``: how many payout places each model rose since ``previous`` (new: NaN).

    A ``previous`` leaderboard without ``payout_rank`` (none to compare with) leaves ``board`` as it is.
    """
    if "payout_rank" not in previous:
        return board
    before = previous.set_index("model")["payout_rank"]
    return board.assign(rank_change=board["model"].map(before).astype("Int64") - board["payout_rank"])
