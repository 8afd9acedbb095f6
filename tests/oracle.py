"""numerai-tools 0.7.2 as the oracle: every metric of the DESIGN.md table, computed its way.

Shared by the kernel parity tests and the job tests; nothing here uses the project's code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numerai_tools import scoring as nt

TOLERANCE = 1e-9


def oracle_basis(features: np.ndarray) -> np.ndarray:
    """An orthonormal basis of [X, 1] from an SVD, independent of the project's code."""
    a = np.hstack([features.astype(np.float64), np.ones((len(features), 1))])
    u, singular, _ = np.linalg.svd(a, full_matrices=False)
    return u[:, singular > 1e-6 * singular[0]]


def oracle(predictions, target, features, stakes, benchmark=None, proportion=1.0):
    """numerai-tools' value of every metric, following the DESIGN.md metric table.

    ``target`` may hold NaN (unresolved rows): numerai-tools filters those itself
    for corr/mmc/bmc; fnc, tc and exposures are defined on the resolved rows.
    """
    n, m = predictions.shape
    ids = pd.Index([f"id{i:06d}" for i in range(n)])
    models = [f"model_{j}" for j in range(m)]
    p_all = pd.DataFrame(predictions, index=ids, columns=models)
    y_all = pd.Series(target, index=ids, name="target")
    resolved = ~np.isnan(target)
    p, y = p_all[resolved], y_all[resolved]
    x = pd.DataFrame(features[resolved].astype(np.float64), index=ids[resolved])
    x.columns = [f"feature_{k}" for k in range(x.shape[1])]
    s = pd.Series(stakes, index=models)
    n_resolved = int(resolved.sum())

    out = {"corr": nt.numerai_corr(p_all, y_all, max_filtered_index_ratio=0.5).values}
    if proportion == 1.0:
        out["fnc"] = nt.feature_neutral_corr(p, x, y).values
    else:
        neutral = nt.variance_normalize(nt.neutralize(nt.gaussian(nt.tie_kept_rank(p)), x, proportion))
        out["fnc"] = nt.numerai_corr(neutral, y).values
    meta = nt.stake_weight(nt.tie_kept_rank(p), s)
    out["mmc"] = nt.correlation_contribution(p, meta, y).values
    if benchmark is not None:
        b = pd.Series(benchmark, index=ids, name="benchmark")[resolved]
        out["bmc"] = nt.correlation_contribution(p, b, y).values
    q = oracle_basis(features[resolved])
    out["tc"] = nt.meta_portfolio_contribution(
        p,
        s,
        pd.DataFrame(np.sqrt(n_resolved) * q, index=p.index),
        pd.Series(1.0 / n_resolved, index=p.index),
        y,
    ).values
    ranked = nt.tie_kept_rank(p)
    meta_rank = nt.tie_kept_rank(meta.to_frame()).iloc[:, 0]
    out["cwmm"] = np.array([ranked[c].corr(meta_rank) for c in models])
    out["meta_corr"] = np.repeat(nt.numerai_corr(meta.to_frame(), y).values, m)
    varying = x.loc[:, x.std() > 0]
    exposures = np.array(
        [[abs(nt.pearson_correlation(varying[f], ranked[c])) for f in varying] for c in models]
    )
    out["fe_max"] = np.array([nt.max_feature_correlation(ranked[c], varying)[1] for c in models])
    out["fe_rms"] = np.sqrt((exposures**2).mean(axis=1))
    return out
