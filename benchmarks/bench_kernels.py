"""One era, every metric: numerai-tools 0.7.2 against score_era, measured in the same run.

    .venv/bin/python benchmarks/bench_kernels.py [--rows 5000 --features 705 --models 1000]

Both sides run with one BLAS thread; the reference is ``reference.py``.
``score_era`` runs ``--repeat`` times and its median counts: its first run in
a process also pays for memory new to it (0.89–0.93 s against 0.73–0.85 s for
the next runs at the default sizes on this VM), which the reference, run after
it, does not. Prints each side's time, the ratio and the largest difference of any metric.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from numerai_dask.scoring import score_era
from numerai_dask.synthetic import make_era
from reference import reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--features", type=int, default=705)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of score_era (the median counts)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    era = make_era(args.rows, args.features, args.models, seed=args.seed)
    print(f"one era: {args.rows} rows × {args.features} features × {args.models} models, one BLAS thread")
    with threadpool_limits(1):
        score_era(era.predictions[:50, :3], era.target[:50], era.features[:50, :5], era.stakes[:3])  # warm-up
        runs = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            mine = score_era(era.predictions, era.target, era.features, era.stakes, era.benchmark)
            runs.append(time.perf_counter() - start)
        kernel_seconds = float(np.median(runs))
        theirs, took = reference(era.predictions, era.target, era.features, era.stakes, era.benchmark)
    reference_seconds = sum(took.values())
    for name, seconds in took.items():
        print(f"  numerai-tools {name:14s} {seconds:8.2f} s")
    worst = max(float(np.nanmax(np.abs(mine[k] - theirs[k]))) for k in theirs)
    print(f"numerai-tools (all metrics) {reference_seconds:8.2f} s")
    print(f"score_era     (all metrics) {kernel_seconds:8.2f} s   median of {', '.join(f'{r:.2f}' for r in runs)}")
    print(f"ratio                       {reference_seconds / kernel_seconds:8.1f}×")
    print(f"largest difference          {worst:.2e}")


if __name__ == "__main__":
    main()
