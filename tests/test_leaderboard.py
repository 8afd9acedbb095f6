"""The reduce: leaderboard statistics against direct per-model computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from numerai_dask.leaderboard import PayoutRule, build_leaderboard, era_order, rank_of_means


def reference_drawdown(values) -> float:
    """Walk the eras: the largest fall of the running sum below its running peak (peak starts at 0)."""
    total, peak, worst = 0.0, 0.0, 0.0
    for v in values:
        total += v
        peak = max(peak, total)
        worst = max(worst, peak - total)
    return worst


def per_era_table(seed: int = 0, eras=("0010", "0002", "0100", "0007"), models=("b", "a", "c")):
    rng = np.random.default_rng(seed)
    rows = [
        {"era": e, "model": m, **{k: rng.normal(0, 0.03) for k in ("corr", "fnc", "mmc", "bmc", "tc")},
         "cwmm": rng.random(), "fe_max": rng.random(), "fe_rms": rng.random(), "corr_target_jerome": rng.normal()}
        for e in eras for m in models
    ]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed)  # shuffled on purpose


def test_statistics_equal_direct_computation_in_numeric_era_order():
    table = per_era_table()
    board = build_leaderboard(table).set_index("model")
    for model, rows in table.groupby("model"):
        rows = rows.assign(_e=rows["era"].astype(int)).sort_values("_e")
        for metric in ("corr", "fnc", "mmc", "bmc", "tc", "corr_target_jerome"):
            v = rows[metric].to_numpy()
            assert board.loc[model, f"{metric}_mean"] == pytest.approx(v.mean())
            assert board.loc[model, f"{metric}_std"] == pytest.approx(v.std(ddof=0))
            assert board.loc[model, f"{metric}_sharpe"] == pytest.approx(v.mean() / v.std(ddof=0))
            assert board.loc[model, f"{metric}_max_drawdown"] == pytest.approx(reference_drawdown(v))
        for metric in ("cwmm", "fe_max", "fe_rms"):
            assert board.loc[model, f"{metric}_mean"] == pytest.approx(rows[metric].mean())
        payout = np.clip(0.5 * rows["corr"] + 2 * rows["mmc"], -0.05, 0.05)
        assert board.loc[model, "payout_mean"] == pytest.approx(payout.mean())
        assert board.loc[model, "n_eras"] == 4


def test_drawdown_depends_on_era_order_and_starts_at_zero():
    table = pd.DataFrame({"era": ["1", "2", "10"], "model": "m", "corr": [-0.02, 0.05, -0.04],
                          "mmc": 0.0})
    board = build_leaderboard(table)
    # numeric order 1, 2, 10: sums -0.02, 0.03, -0.01 → peak 0.03, fall 0.04 (lexicographic would differ)
    assert board.loc[0, "corr_max_drawdown"] == pytest.approx(0.04)
    assert era_order(["1", "10", "2"]) == ["1", "2", "10"]
    assert era_order([-1, 0, -3, 2]) == ["-1", "-3", "0", "2"]  # not all digits: lexicographic, as DESIGN.md says
    assert era_order(["²", "1"]) == ["1", "²"]  # a digit int() refuses: lexicographic, not an error
    assert era_order(["١٠", "٢"]) == ["٢", "١٠"]  # decimal digits of any script are read as int() reads them
    assert era_order(["b", "a10", "a2"]) == ["a10", "a2", "b"]


def test_all_positive_eras_have_no_drawdown_and_single_era_sharpe_is_undefined():
    table = pd.DataFrame({"era": ["1", "2"], "model": ["m", "m"], "corr": [0.01, 0.02], "mmc": [0.0, 0.0]})
    assert build_leaderboard(table).loc[0, "corr_max_drawdown"] == 0.0
    single = build_leaderboard(table.iloc[:1])
    assert np.isnan(single.loc[0, "corr_sharpe"])


def test_nan_eras_are_left_out_of_that_metric_only():
    table = per_era_table()
    table.loc[table["era"] == "0002", "bmc"] = np.nan
    board = build_leaderboard(table).set_index("model")
    for model, rows in table.groupby("model"):
        assert board.loc[model, "bmc_mean"] == pytest.approx(rows["bmc"].dropna().mean())
        assert board.loc[model, "corr_mean"] == pytest.approx(rows["corr"].mean())


def test_payout_rule_is_configurable_and_ranks_order_the_table():
    table = per_era_table(seed=3)
    rule = PayoutRule(corr_weight=1.0, mmc_weight=0.0, clip=0.01)
    board = build_leaderboard(table, payout=rule)
    expected = table.assign(p=table["corr"].clip(-0.01, 0.01)).groupby("model")["p"].mean()
    assert board.set_index("model")["payout_mean"].to_dict() == pytest.approx(expected.to_dict())
    assert list(board["payout_rank"]) == sorted(board["payout_rank"])
    assert board["payout_mean"].is_monotonic_decreasing


def test_rank_change_against_previous_leaderboard():
    table = per_era_table(seed=5)
    board = build_leaderboard(table)
    previous = board.assign(payout_rank=board["payout_rank"][::-1].to_numpy())
    previous = previous[previous["model"] != board.loc[0, "model"]]  # the leader is new
    again = build_leaderboard(table, previous=previous).set_index("model")
    for model, row in previous.set_index("model").iterrows():
        assert again.loc[model, "rank_change"] == row["payout_rank"] - again.loc[model, "payout_rank"]
    assert pd.isna(again.loc[board.loc[0, "model"], "rank_change"])


def test_models_with_the_same_scores_in_other_eras_tie_in_every_rank():
    """Summed in era order, 0.1, 0.2, 0.3 and 0.3, 0.2, 0.1 differ in the last bit, as do payouts clipped
    to ±0.05 in different eras: each model had a rank of its own."""
    eras = ["1", "2", "3", "4"]
    corr = {"a": [0.1, 0.2, 0.3, 0.4], "b": [0.4, 0.3, 0.2, 0.1]}
    mmc = {"a": [-0.5, 0.5, 0.5, 0.5], "b": [0.5, 0.5, 0.5, -0.5]}  # payouts clipped to -0.05, 0.05 ×3
    table = pd.DataFrame([{"era": e, "model": m, "corr": corr[m][i], "fnc": corr[m][i], "mmc": mmc[m][i],
                           "bmc": np.nan, "tc": corr[m][i], "cwmm": corr[m][i], "fe_max": 0.1, "fe_rms": 0.1}
                          for m in ("a", "b") for i, e in enumerate(eras)])
    board = build_leaderboard(table, payout=PayoutRule(corr_weight=0.0)).set_index("model")
    for column in ("corr_rank", "fnc_rank", "mmc_rank", "tc_rank", "payout_rank"):
        assert board.loc["a", column] == board.loc["b", column] == 1, column
    assert pd.isna(board.loc["a", "bmc_rank"])


def test_means_equal_to_twelve_digits_share_the_best_rank_of_their_group():
    means = pd.Series({"copy": 0.027300000000000005, "original": 0.0273, "close": 0.0273 - 1e-9, "worse": 0.01,
                       "none": np.nan, "best": 0.05})
    ranks = rank_of_means(means)
    assert ranks.dtype == "Int64" and pd.isna(ranks["none"])
    assert ranks.drop("none").to_dict() == {"copy": 2, "original": 2, "close": 4, "worse": 5, "best": 1}
