"""numerai-tools 0.7.2 the way a user computes our metrics today: shared by the benchmarks.

The reference computes corr, fnc, mmc, bmc and tc with numerai-tools (tc with
an SVD basis of [X, 1] as neutralizers, its cost counted) and cwmm with pandas.
numerai-tools has no function for exposures to every feature at once, so the
reference computes fe_max/fe_rms with one NumPy matrix product, as the kernel
does: that part is a wash.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from numerai_tools import scoring as nt


def read_predictions(root: Path, files: list[str]) -> pd.Series:
    """A generated model's predictions with its re-uploads applied (later files win)."""
    merged = None
    for name in files:
        path = root / name
        frame = pd.read_csv(path, dtype={"id": str}) if path.suffix == ".csv" else pd.read_parquet(path)
        series = frame.set_index("id")["prediction"]
        merged = series if merged is None else series.combine_first(merged)
    return merged



def reference(predictions, target, features, stakes, benchmark) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every metric the numerai-tools way, with per-metric timings."""
    n, m = predictions.shape
    ids = pd.Index([f"id{i:07d}" for i in range(n)])
    models = [f"model_{j:05d}" for j in range(m)]
    p = pd.DataFrame(predictions, index=ids, columns=models)
    y = pd.Series(target, index=ids, name="target")
    x = pd.DataFrame(features.astype(np.float64), index=ids, columns=[f"feature_{k}" for k in range(features.shape[1])])
    s = pd.Series(stakes, index=models)
    b = pd.Series(benchmark, index=ids, name="benchmark")
    out, took = {}, {}

    def timed(name, compute):
        start = time.perf_counter()
        out[name] = np.asarray(compute(), dtype=np.float64)
        took[name] = time.perf_counter() - start

    timed("corr", lambda: nt.numerai_corr(p, y).values)
    timed("fnc", lambda: nt.feature_neutral_corr(p, x, y).values)
    meta = nt.stake_weight(nt.tie_kept_rank(p), s)
    timed("mmc", lambda: nt.correlation_contribution(p, meta, y).values)
    timed("bmc", lambda: nt.correlation_contribution(p, b, y).values)

    def tc():
        a = np.hstack([features.astype(np.float64), np.ones((n, 1))])
        u, singular, _ = np.linalg.svd(a, full_matrices=False)
        q = u[:, singular > 1e-6 * singular[0]]
        return nt.meta_portfolio_contribution(
            p, s, pd.DataFrame(np.sqrt(n) * q, index=ids), pd.Series(1.0 / n, index=ids), y
        ).values

    timed("tc", tc)
    ranked = nt.tie_kept_rank(p)
    timed("cwmm", lambda: ranked.corrwith(nt.tie_kept_rank(meta.to_frame()).iloc[:, 0]).values)

    def exposures():
        centred = ranked.values - ranked.values.mean(axis=0)
        x = features.astype(np.float64) - features.mean(axis=0)
        x = x[:, np.linalg.norm(x, axis=0) > 0]
        correlations = (x / np.linalg.norm(x, axis=0)).T @ (centred / np.linalg.norm(centred, axis=0))
        return np.abs(correlations).max(axis=0), np.sqrt((correlations**2).mean(axis=0))

    start = time.perf_counter()
    out["fe_max"], out["fe_rms"] = exposures()
    took["fe_max+fe_rms"] = time.perf_counter() - start
    return out, took
