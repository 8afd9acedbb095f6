"""One era, every metric: numerai-tools 0.7.2 against score_era, measured in the same run.

    .venv/bin/python benchmarks/bench_kernels.py [--rows 5000 --features 705 --models 1000]

Both sides run with one BLAS thread. The reference computes corr, fnc, mmc,
bmc and tc with numerai-tools (tc with an SVD basis of [X, 1] as neutralizers,
its cost counted) and cwmm with pandas. numerai-tools has no function for
exposures to every feature at once, so the reference computes fe_max/fe_rms
with the same NumPy matrix product the kernel uses: that part is a wash.
Prints each side's time, the ratio and the largest difference of any metric.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from numerai_tools import scoring as nt
from threadpoolctl import threadpool_limits

from numerai_dask.scoring import score_era
from numerai_dask.synthetic import make_era


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--features", type=int, default=705)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    era = make_era(args.rows, args.features, args.models, seed=args.seed)
    print(f"one era: {args.rows} rows × {args.features} features × {args.models} models, one BLAS thread")
    with threadpool_limits(1):
        score_era(era.predictions[:50, :3], era.target[:50], era.features[:50, :5], era.stakes[:3])  # warm-up
        start = time.perf_counter()
        mine = score_era(era.predictions, era.target, era.features, era.stakes, era.benchmark)
        kernel_seconds = time.perf_counter() - start
        theirs, took = reference(era.predictions, era.target, era.features, era.stakes, era.benchmark)
    reference_seconds = sum(took.values())
    for name, seconds in took.items():
        print(f"  numerai-tools {name:14s} {seconds:8.2f} s")
    worst = max(float(np.nanmax(np.abs(mine[k] - theirs[k]))) for k in theirs)
    print(f"numerai-tools (all metrics) {reference_seconds:8.2f} s")
    print(f"score_era     (all metrics) {kernel_seconds:8.2f} s")
    print(f"ratio                       {reference_seconds / kernel_seconds:8.1f}×")
    print(f"largest difference          {worst:.2e}")


if __name__ == "__main__":
    main()
