"""Per-era scoring of every model at once, equal to numerai-tools 0.7.2.

The kernel interface (see DESIGN.md) is :func:`score_era`. Every metric is
computed on whole matrices: predictions are ``(N, M)`` with one column per
model, the rows being one era's ids with a resolved target, sorted by id.
Each era pays for one sort per model column (two with FNC), one factorization
of its features' Gram matrix shared by every model (two, or an SVD, for
features whose ``[X, 1]`` is ill-conditioned), and a handful of GEMMs.

Building blocks are small pure functions whose docstrings list their steps in
the order numerai-tools performs them, so each can be checked line by line
against ``numerai_tools.scoring``.

Degenerate inputs get a clear result instead of silent NaNs:

* a constant prediction column or a constant target raises
  :class:`DegenerateEraError` (correlation with a constant is undefined; the
  pipeline rejects constant submissions and skips such eras with a reason);
* non-finite inputs raise :class:`DegenerateEraError`;
* FNC is NaN for a model whose ranked predictions lie entirely in the span of
  the features (nothing is left after neutralization), and TC is NaN for every
  model when the meta portfolio does, documented per metric;
* stakes that sum to zero mean equal weights (the storage contract's rule for
  missing stakes).
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache

import numpy as np
from scipy.linalg.lapack import dlauum, dtrtri
from scipy.sparse.linalg import ArpackError, LinearOperator, eigsh
from scipy.special import ndtri

#: Singular values of ``[X, 1]`` below this fraction of the largest are
#: treated as zero, as ``np.linalg.lstsq(..., rcond=1e-6)`` does in
#: numerai-tools' ``neutralize``.
BASIS_RCOND = 1e-6

#: Eigenvalue ratios of a Gram matrix within this factor of ``rcond²`` either side are too near the
#: cut-off for the Gram matrix to decide (see ``_eigen_weights``): the SVD does.
CUTOFF_MARGIN = 1e3

#: An era's ``[X, 1]`` whose condition number may come within this fraction of ``1/rcond`` is cut
#: off on ``[X, 1]`` itself, not where the centred features are (see ``_cut_as_centred``).
CONDITION_MARGIN = 1e-2

#: A Gram-route basis is orthonormal to about 1e-16 × the spread of the kept
#: eigenvalues (largest / smallest, the squared condition number); above this
#: spread a second pass is taken, which restores orthonormality to machine precision.
SINGLE_PASS_SPREAD = 1e4

#: Feature counts up to this get every eigenvalue of their Gram matrix (cheap there); above it, the
#: extreme two by Lanczos iteration, to this relative tolerance (see ``_positive_definite_extremes``).
LANCZOS_MIN_SIZE = 64
LANCZOS_TOL = 1e-6

#: ``meta_portfolio_contribution`` divides the gradient by this constant.
TC_SCALE = 50.0

#: A neutralized column whose norm is below this fraction of its norm before
#: neutralization has nothing left to rank: its FNC is undefined (NaN).
RESIDUAL_RTOL = 1e-9

METRICS = ("corr", "fnc", "mmc", "tc", "cwmm", "fe_max", "fe_rms")

#: Every metric is computed this many models at a time: its temporaries (several N × block float64
#: arrays in FNC) then stay the same size whatever the number of models.
MODEL_BLOCK = 256

#: Doubled ranks are at most 2N + 1: 32-bit integers hold any era, at half the memory traffic of 64.
RANK_TYPE = np.int32


class DegenerateEraError(ValueError):
    """An era's inputs make every correlation undefined (or some input is not finite)."""


# --------------------------------------------------------------------------- ranks


def average_ranks_doubled(values: np.ndarray) -> np.ndarray:
    """Twice the 1-based average rank of each column, ties sharing their mean rank.

    1. argsort each column (one sort per column);
    2. mark where a sorted value differs from its predecessor: the tie groups;
    3. a group starting at sorted position ``f`` with ``k`` members has average
       1-based rank ``f + (k + 1)/2``, so twice that, ``2f + k + 1``, is an integer;
    4. scatter back to the original row order.

    Doubling keeps the result an exact integer, so later transforms are exact
    table lookups. Returns an (N, M) view of a models-major array: a column-major
    (Fortran-ordered) input is ranked without a transposing copy.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        return average_ranks_doubled(values[:, None])[:, 0]
    n, m = values.shape
    by_model = np.ascontiguousarray(values.T)
    order = np.argsort(by_model, axis=1)
    order += (np.arange(m) * n)[:, None]
    flat_order = order.ravel()
    ordered = by_model.ravel()[flat_order].reshape(m, n)
    starts = np.empty((m, n), dtype=bool)
    starts[:, 0] = True
    np.not_equal(ordered[:, 1:], ordered[:, :-1], out=starts[:, 1:])
    del ordered
    doubled = np.empty(m * n, dtype=RANK_TYPE)
    if starts.all():  # no ties anywhere: the doubled rank of sorted position f is 2f + 2
        doubled[flat_order] = np.tile(np.arange(2, 2 * n + 2, 2, dtype=RANK_TYPE), m)
    else:
        group_starts = np.flatnonzero(starts)
        group_sizes = np.diff(group_starts, append=m * n)
        doubled[flat_order] = np.repeat((2 * (group_starts % n) + group_sizes + 1).astype(RANK_TYPE), group_sizes)
    return doubled.reshape(m, n).T


@lru_cache(maxsize=16)
def _gaussian_table(n: int) -> np.ndarray:
    """``ndtri((d/2 - 0.5) / n)`` for every doubled rank ``d`` in 2..2n, indexed by ``d - 2``."""
    return ndtri(np.arange(1, 2 * n, dtype=np.float64) / (2 * n))


@lru_cache(maxsize=16)
def _gaussian_pow15_table(n: int) -> np.ndarray:
    """:func:`power` 1.5 of :func:`_gaussian_table`, same indexing."""
    return power(_gaussian_table(n), 1.5)


@dataclass(frozen=True)
class Ranks:
    """Tie-kept ranks of prediction columns, computed once and shared by every metric."""

    doubled: np.ndarray  # (N, M) integers: twice the 1-based average rank

    @classmethod
    def of(cls, values: np.ndarray) -> Ranks:
        """Rank each column of ``values`` (ties averaged)."""
        return cls(average_ranks_doubled(values))

    def compact(self) -> np.ndarray:
        """The doubled ranks models-major, (M, N), as uint16 when N ≤ 32767 (else uint32): for shipping and caching.

        ``Ranks(compact.T)`` scores exactly as these ranks do.
        """
        dtype = np.uint16 if 2 * self.n <= np.iinfo(np.uint16).max else np.uint32
        return np.ascontiguousarray(self.doubled.T, dtype=dtype)

    @property
    def n(self) -> int:
        return self.doubled.shape[0]

    def uniform(self) -> np.ndarray:
        """numerai-tools' ``tie_kept_rank``: ``(rank - 0.5) / N``, in (0, 1)."""
        return (self.doubled - 1) / (2 * self.n)

    def gaussian(self) -> np.ndarray:
        """``gaussian(tie_kept_rank(x))``: the normal quantile of the uniform rank."""
        return _gaussian_table(self.n)[self.doubled - 2]

    def gaussian_pow15(self) -> np.ndarray:
        """``tie_kept_rank__gaussianize__pow_1_5``: the gaussian rank raised to the signed power 1.5."""
        return _gaussian_pow15_table(self.n)[self.doubled - 2]


def tie_kept_rank(values: np.ndarray) -> np.ndarray:
    """Percentile rank of each column, ties kept: ``(average rank - 0.5) / N``."""
    return Ranks.of(values).uniform()


def gaussianize(ranked: np.ndarray) -> np.ndarray:
    """Normal quantile of percentile ranks in (0, 1): mean 0 and std ≈ 1 per column."""
    return ndtri(ranked)


def power(values: np.ndarray, p: float) -> np.ndarray:
    """Signed power: ``sign(x) · |x|^p``."""
    return np.sign(values) * np.abs(values) ** p


# ----------------------------------------------------------------- linear algebra


def pearson(columns: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``columns`` (N, M) with ``vector`` (N,).

    1. centre the columns and the vector;
    2. dot each centred column with the centred vector;
    3. divide by the product of their norms.
    """
    centred = columns - columns.mean(axis=0)
    v = vector - vector.mean()
    norms = np.sqrt(np.einsum("ij,ij->j", centred, centred)) * np.sqrt(v @ v)
    return (v @ centred) / norms


def orthogonalize(v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Remove from each column of ``v`` its projection on the vector ``u``: ``v − u (vᵀu)/(uᵀu)``."""
    return v - np.outer(u, (v.T @ u) / (u @ u))


def _orthonormalizing_weights(a: np.ndarray, rcond: float, gram: np.ndarray | None = None) -> tuple[np.ndarray, float, bool]:
    """Weights ``W`` making ``a·W`` an orthonormal basis of the column space of ``a``, their eigenvalue spread,
    and whether ``W`` is the inverted Cholesky factor (upper triangular).

    1. ``G = aᵀa`` (``gram``, when the caller has it already);
    2. when ``G = LLᵀ`` (Cholesky) exists and its eigenvalues spread over at most
       :data:`SINGLE_PASS_SPREAD` (then no direction is below ``rcond``),
       ``W = L⁻ᵀ``: the same column space, orthonormal as accurately, and no
       eigenvectors to compute (15 ms against 53 at 705 features);
    3. otherwise ``G``'s eigenvectors, dropping directions below ``rcond``
       (:func:`_eigen_weights`);
    4. when an eigenvalue of ``G`` lies too near that cut-off for ``G`` to
       decide, the singular values of ``a`` itself, as ``lstsq`` does
       (:func:`_singular_weights`).

    The basis is a product ``a·W``, so identical rows of ``a`` stay identical
    rows of the basis (ties in neutralized predictions survive exactly).
    """
    if a.shape[1] == 0:
        return np.zeros((0, 0)), 1.0, False
    gram = a.T @ a if gram is None else gram
    cholesky = _cholesky_weights(gram)
    if cholesky is not None and cholesky[2] <= SINGLE_PASS_SPREAD * cholesky[1]:
        return cholesky[0], cholesky[2] / cholesky[1], True
    eigen = _eigen_weights(gram, rcond)
    if eigen is None:
        return _singular_weights(a, rcond)
    weights, smallest, largest = eigen
    return weights, largest / smallest, False


def _eigen_weights(gram: np.ndarray, rcond: float) -> tuple[np.ndarray, float, float] | None:
    """``W = V Λ^-½`` over the directions of ``G = aᵀa`` that ``lstsq(a, ·, rcond)`` keeps, with the smallest kept
    and the largest eigenvalue; None when an eigenvalue is too near the cut-off for ``G`` to decide.

    1. the eigenvalues and eigenvectors of ``G``;
    2. None when an eigenvalue lies within :data:`CUTOFF_MARGIN` of the cut-off
       ``rcond²`` × the largest, either side: ``G``'s rounding (1e-16 of its
       largest eigenvalue) could move it across, or mix a kept direction with
       a dropped one;
    3. keep the directions whose singular value (√eigenvalue) is at least
       ``rcond`` × the largest, and scale each by ``1/√eigenvalue``.

    No direction kept (``G`` is zero): empty weights, and 1.0 for both eigenvalues.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    largest = eigenvalues[-1]
    if largest <= 0:
        return np.zeros((len(gram), 0)), 1.0, 1.0
    ratios = eigenvalues / largest
    cutoff = rcond**2
    if np.any((ratios > cutoff / CUTOFF_MARGIN) & (ratios < cutoff * CUTOFF_MARGIN)):
        return None
    keep = ratios > cutoff
    kept = eigenvalues[keep]
    return eigenvectors[:, keep] / np.sqrt(kept), float(kept[0]), float(largest)


def _singular_weights(a: np.ndarray, rcond: float) -> tuple[np.ndarray, float, bool]:
    """:func:`_orthonormalizing_weights` from the SVD of ``a``, cut off as ``np.linalg.lstsq(a, ·, rcond)`` does.

    1. ``a = UΣVᵀ``;
    2. keep the singular values above ``rcond`` × the largest;
    3. ``W = V Σ⁻¹`` over the kept ones, so that ``a·W`` is their ``U``.

    Costs an SVD of the (N, F) matrix, about ten times the Gram route's
    eigenvectors: only eras with singular values near the cut-off take it.
    """
    _, singular, vt = np.linalg.svd(a, full_matrices=False)
    keep = singular > rcond * singular[0]
    kept = singular[keep]
    return vt[keep].T / kept, float((singular[0] / kept[-1]) ** 2), False


def _cholesky_weights(gram: np.ndarray) -> tuple[np.ndarray, float, float] | None:
    """``L⁻ᵀ`` and the smallest and largest eigenvalues of ``G = LLᵀ``, or None when ``G`` has no Cholesky
    factor. ``L⁻ᵀ`` orthonormalizes as accurately as eigenvectors only while those eigenvalues spread at most
    :data:`SINGLE_PASS_SPREAD`; the callers check.

    1. the Cholesky factor ``L`` (none: ``G`` is not numerically positive definite);
    2. its inverse ``L⁻¹`` (LAPACK ``dtrtri``);
    3. the extreme eigenvalues of ``G`` (:func:`_positive_definite_extremes`, through ``G⁻¹ = L⁻ᵀL⁻¹``).
    """
    try:
        lower = np.linalg.cholesky(gram)
    except np.linalg.LinAlgError:
        return None
    inverse, failed = dtrtri(lower, lower=1)
    if failed:
        return None
    smallest, largest = _positive_definite_extremes(gram, _inverse_operator(inverse))
    if not smallest > 0:  # also NaN
        return None
    return inverse.T, smallest, largest


def _inverse_operator(lower_inverse: np.ndarray) -> LinearOperator:
    """``G⁻¹ = L⁻ᵀL⁻¹`` as an operator, from ``L⁻¹``: two triangular products a vector, no (F, F) matrix formed."""
    n = len(lower_inverse)
    return LinearOperator((n, n), matvec=lambda v: lower_inverse.T @ (lower_inverse @ v), dtype=np.float64)


def _positive_definite_extremes(matrix: np.ndarray, inverse: np.ndarray | LinearOperator) -> tuple[float, float]:
    """The smallest and the largest eigenvalue of a symmetric positive definite ``matrix``, given its ``inverse``.

    1. the largest eigenvalue of ``matrix``, by Lanczos iteration (ARPACK);
    2. the largest eigenvalue of ``inverse`` the same way: the smallest of ``matrix``, inverted.

    Lanczos converges to the extreme eigenvalues in a few dozen products: at
    5,000 rows × 2,376 features 0.15 s against 0.63 s for every eigenvalue
    (``eigvalsh``; 7 against 18 ms at 705), to a relative 1e-6 there. A few
    features (at most :data:`LANCZOS_MIN_SIZE`), or no convergence, take ``eigvalsh``.
    """
    n = len(matrix)
    if n > LANCZOS_MIN_SIZE:
        start = np.random.default_rng(0).standard_normal(n)  # fixed: the same era always takes the same route
        try:
            largest, inverse_largest = (eigsh(m, k=1, which="LA", v0=start, tol=LANCZOS_TOL,
                                              return_eigenvectors=False)[0] for m in (matrix, inverse))
            return float(1 / inverse_largest), float(largest)
        except ArpackError:
            pass
    eigenvalues = np.linalg.eigvalsh(matrix)
    return float(eigenvalues[0]), float(eigenvalues[-1])


def _uncentred_gram(gram: np.ndarray, means: np.ndarray, n: int) -> np.ndarray:
    """``[X, 1]ᵀ[X, 1]`` from the centred features' Gram matrix ``G``, their column means ``x̄`` and row count:
    ``[[G + N·x̄x̄ᵀ, N·x̄], [N·x̄ᵀ, N]]``."""
    f = len(means)
    uncentred = np.empty((f + 1, f + 1))
    uncentred[:f, :f] = gram + n * np.outer(means, means)
    uncentred[:f, f] = uncentred[f, :f] = n * means
    uncentred[f, f] = n
    return uncentred


def _uncentred_gram_inverse(gram_inverse: LinearOperator, means: np.ndarray, n: int) -> LinearOperator:
    """The inverse of :func:`_uncentred_gram` as an operator, from ``G⁻¹``'s:
    ``[[G⁻¹, −G⁻¹x̄], [−x̄ᵀG⁻¹, 1/N + x̄ᵀG⁻¹x̄]]``."""
    shifted = gram_inverse.matvec(means)
    corner = 1 / n + means @ shifted

    def apply(v: np.ndarray) -> np.ndarray:
        a, b = v[:-1], v[-1]
        return np.append(gram_inverse.matvec(a) - shifted * b, corner * b - shifted @ a)

    f = len(means)
    return LinearOperator((f + 1, f + 1), matvec=apply, dtype=np.float64)


def _centred_weights(features: np.ndarray, gram: np.ndarray, means: np.ndarray,
                     rcond: float) -> tuple[np.ndarray, float, bool] | None:
    """:func:`_orthonormalizing_weights` of the centred features ``C``, when ``lstsq([X, 1], ·, rcond)`` keeps
    exactly the constant and the directions of ``C`` these keep; None when it may cut elsewhere.

    1. when ``G``, the Gram matrix of ``C``, has a Cholesky factor: whether
       ``[X, 1]`` is cut where ``C`` is (:func:`_cut_as_centred`, which may
       use ``G⁻¹``), before any eigenvector is computed; then ``L⁻ᵀ`` when
       ``G``'s eigenvalues spread at most :data:`SINGLE_PASS_SPREAD`;
    2. otherwise the kept eigenvectors (:func:`_eigen_weights`; None when
       ``G`` cannot decide);
    3. the directions dropped must be exactly null, one for each constant or
       repeated column (:func:`_redundant_columns`): a direction merely
       tiny is cut from ``[X, 1]`` too, but along a different vector when
       ``[X, 1]`` has a small singular value near it;
    4. whether ``[X, 1]`` is cut there, unless step 1 said so.
    """
    n = len(features)
    if not len(gram):
        return np.zeros((0, 0)), 1.0, False
    cholesky = _cholesky_weights(gram)
    if cholesky is not None:
        weights, smallest, largest = cholesky
        if not _cut_as_centred(gram, (smallest, largest), means, n, rcond, _inverse_operator(weights.T)):
            return None
        if largest <= SINGLE_PASS_SPREAD * smallest:
            return weights, largest / smallest, True
    eigen = _eigen_weights(gram, rcond)
    if eigen is None or len(gram) - eigen[0].shape[1] != _redundant_columns(features):
        return None
    weights, smallest, largest = eigen
    if cholesky is None and weights.shape[1] and not _cut_as_centred(gram, (smallest, largest), means, n, rcond):
        return None
    return weights, largest / smallest, False


def _redundant_columns(features: np.ndarray) -> int:
    """How many feature columns add nothing to ``[X, 1]`` by their values alone: constant columns, and repeats
    of another column (bit for bit)."""
    constant = (features == features[:1]).all(axis=0)
    distinct = {column.tobytes() for column in np.ascontiguousarray(features[:, ~constant].T)}
    return features.shape[1] - len(distinct)


def _cut_as_centred(gram: np.ndarray, extremes: tuple[float, float], means: np.ndarray, n: int, rcond: float,
                    gram_inverse: LinearOperator | None = None) -> bool:
    """Whether ``lstsq([X, 1], ·, rcond)`` keeps the constant and the kept directions of the centred features ``C``
    (eigenvalues of ``G`` from ``extremes[0]`` to ``extremes[1]``), and only those.

    ``[X, 1] = [C, 1]·T`` with ``T = [[I, 0], [x̄ᵀ, 1]]``, and ``C ⊥ 1``:

    1. the directions ``C`` drops are below ``rcond`` of ``[X, 1]`` too: each
       gives one of ``[X, 1]`` no longer (``(a, −x̄ᵀa)``), and ``[X, 1]``'s
       largest singular value is at least ``C``'s;
    2. those it keeps and the constant stay above it when ``cond([C, 1]) · cond(T)``,
       over what ``C`` keeps, is below ``1/rcond``: the singular values of
       ``[C, 1]`` there are ``C``'s and ``√N``; those of ``T`` are 1 but for
       a pair ``s, 1/s`` with ``s² + 1/s² = 2 + ‖x̄‖²``, so ``cond(T) = s²``;
    3. when ``C`` keeps every direction (``gram_inverse``, ``G⁻¹``, given) and
       the bound reaches the limit, ``[X, 1]``'s condition number itself, from
       the extreme eigenvalues of ``[X, 1]ᵀ[X, 1]`` (Lanczos, as for ``G``).

    The limit is :data:`CONDITION_MARGIN` below ``1/rcond``: an era that
    may come that close is cut on ``[X, 1]`` itself, which decides exactly.
    """
    limit = (1 - CONDITION_MARGIN) / rcond
    smallest, largest = extremes
    centred_condition = np.sqrt(max(largest, n) / min(smallest, n))
    pair = 2 + means @ means
    if centred_condition * (pair + np.sqrt(pair * pair - 4)) / 2 < limit:
        return True
    if gram_inverse is None or not np.isfinite(pair * pair):
        return False
    smallest, largest = _positive_definite_extremes(_uncentred_gram(gram, means, n),
                                                    _uncentred_gram_inverse(gram_inverse, means, n))
    return bool(smallest > 0 and np.sqrt(largest / smallest) < limit)


def centred_columns(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The feature columns as float64, each minus its mean, and those means."""
    x = np.array(features, dtype=np.float64)
    means = x.mean(axis=0)
    x -= means
    return x, means


def small_integer_gram(features: np.ndarray) -> np.ndarray | None:
    """The centred features' Gram matrix ``XᵀX − N·x̄x̄ᵀ`` when the features are small integers, else None.

    1. when every product sum fits float32's 24-bit significand (N · max|x|² < 2²⁴:
       Numerai's 0–4 buckets up to 1,048,576 rows), ``XᵀX`` in float32 is exact,
       whatever the summation order, at twice float64's speed;
    2. subtract the column sums' outer product over N, in float64.
    """
    if not np.issubdtype(features.dtype, np.integer) or features.size == 0:
        return None
    largest = max(-int(features.min()), int(features.max()))
    if features.shape[0] * largest**2 >= 2**24:
        return None
    x = features.astype(np.float32)
    sums = x.sum(axis=0, dtype=np.float64)
    return (x.T @ x).astype(np.float64) - np.outer(sums, sums) / len(x)


def _weights_product(weights: np.ndarray, cholesky: bool) -> np.ndarray:
    """``W·Wᵀ``, the map that takes ``factorᵀ·V`` to a projection's coefficients (symmetric, j × j).

    For the Cholesky route (``W = L⁻ᵀ``) it is ``G⁻¹``, which LAPACK's
    ``dlauum`` forms from the triangular ``L⁻¹`` (4 ms with the symmetrizing
    at 705 features); otherwise one GEMM.
    """
    if cholesky:
        lower, failed = dlauum(weights.T, lower=1)
        if not failed:
            return np.tril(lower) + np.tril(lower, -1).T
    return weights @ weights.T


@dataclass(frozen=True)
class FeatureSpace:
    """One era's features as scoring uses them, computed once and shared by every model.

    The orthonormal basis ``Q`` of ``[X, 1]`` that numerai-tools' least squares
    projects on is kept factored, ``Q = factor·weights``, with the constant
    column ``1/√N`` apart when ``factor`` is the centred features. Projecting
    then costs two thin GEMMs through the (N, j) factor and one (j, j)
    product, through ``W·Wᵀ`` (:func:`_weights_product`); the (N, k) basis
    itself is never formed.
    """

    centred: np.ndarray  # (N, F) the features as float64, centred
    factor: np.ndarray  # (N, j) the centred features or [X, 1], or a first orthonormal basis of them (second pass)
    weights: np.ndarray  # (j, k) factor·weights is orthonormal and spans the kept directions
    coefficient_map: np.ndarray  # (j, j) weights·weightsᵀ
    constant_apart: bool = True  # 1/√N is a column of Q besides factor·weights (factor centred)

    @classmethod
    def of(cls, features: np.ndarray, rcond: float = BASIS_RCOND) -> FeatureSpace:
        """Factor the feature space of one era, rank-revealing as ``lstsq([X, 1], ·, rcond)`` is.

        1. convert the features to float64 and centre each column: ``C``;
        2. weights orthonormalizing ``C``, from its Gram matrix (computed exactly
           from small integer features, see :func:`small_integer_gram`), when
           ``[X, 1]`` is cut off where ``C`` is (:func:`_centred_weights`):
           then ``Q = [C·W, 1/√N]``, the constant column being orthogonal to
           every centred column, its part of a projection the column mean.
           Numerai-shaped eras take this route (0–4 features: the bound of
           :func:`_cut_as_centred` is 4e4 at 705 features, 5e5 at 2,376);
        3. otherwise (features far from zero, on scales far apart, or nearly
           collinear) the cut-off depends on the singular values of ``[X, 1]``
           itself: weights orthonormalizing ``[X, 1]``, from its Gram matrix
           :func:`_uncentred_gram` (:func:`_orthonormalizing_weights`), or
           from its SVD when that matrix overflows (values past 1e154);
        4. when the kept eigenvalues spread over more than :data:`SINGLE_PASS_SPREAD`
           (the Gram route squares the condition number), form that first basis
           and orthonormalize it once more, which restores orthogonality to
           machine precision;
        5. the map from ``factorᵀ·V`` to coefficients, ``weights·weightsᵀ``.
        """
        features = np.asarray(features)
        n = len(features)
        centred, means = centred_columns(features)
        gram = small_integer_gram(features)
        gram = centred.T @ centred if gram is None else gram
        factor, constant_apart = centred, True
        route = _centred_weights(features, gram, means, rcond) if np.isfinite(gram).all() else None
        if route is None:
            factor, constant_apart = np.hstack([features.astype(np.float64), np.ones((n, 1))]), False
            uncentred_gram = _uncentred_gram(gram, means, n)
            route = (_orthonormalizing_weights(factor, rcond, uncentred_gram) if np.isfinite(uncentred_gram).all()
                     else _singular_weights(factor, rcond))
        weights, spread, cholesky = route
        if spread > SINGLE_PASS_SPREAD:
            factor = factor @ weights
            weights, _, cholesky = _orthonormalizing_weights(factor, rcond)
        return cls(centred, factor, weights, _weights_product(weights, cholesky), constant_apart)

    def project(self, values: np.ndarray) -> np.ndarray:
        """``QQᵀ·values``: each column's (or the vector's) least-squares fit on ``[X, 1]``.

        Column-major (N, M) input gives column-major output, so ranking the
        result needs no transposing copy.
        """
        coefficients = self.coefficient_map @ (self.factor.T @ values)
        fitted = (coefficients.T @ self.factor.T).T
        if self.constant_apart:
            fitted += values.mean(axis=0)
        return fitted

    def project_constant(self) -> np.ndarray:
        """``QQᵀ·1``: the ones themselves when ``1/√N`` is kept apart as a column of ``Q``; else computed, as
        ``[X, 1]``'s cut-off may have dropped part of the constant's direction (all of it, nearly, when one
        feature is some 1e6 times the others' scale)."""
        ones = np.ones(self.factor.shape[0])
        return ones if self.constant_apart else self.project(ones)

    def basis(self) -> np.ndarray:
        """``Q`` itself, (N, k): orthonormal, spanning ``[X, 1]`` (for checks; scoring never forms it)."""
        basis = self.factor @ self.weights
        if not self.constant_apart:
            return basis
        n = self.factor.shape[0]
        return np.hstack([basis, np.full((n, 1), 1.0 / np.sqrt(n))])


def feature_basis(features: np.ndarray, rcond: float = BASIS_RCOND) -> np.ndarray:
    """An orthonormal basis ``Q`` (N, k) of the column space of ``[X, 1]``, rank-revealing (see :class:`FeatureSpace`)."""
    return FeatureSpace.of(features, rcond).basis()


def neutralize(values: np.ndarray, space: FeatureSpace, proportion: float = 1.0) -> np.ndarray:
    """Subtract ``proportion`` of each column's projection on the feature space: ``V − p·Q(QᵀV)``.

    Equal to numerai-tools' ``neutralize(values, X, proportion)`` when ``space``
    is :meth:`FeatureSpace.of` ``X`` (its least squares includes a constant column).
    """
    residual = space.project(values)
    residual *= -proportion
    residual += values
    return residual


# ---------------------------------------------------------------------- metrics


def _centred_target(target: np.ndarray) -> np.ndarray:
    return target - target.mean()


def _pow15_target(target: np.ndarray) -> np.ndarray:
    """numerai_corr's target: centred, then raised to the signed power 1.5."""
    return power(_centred_target(target), 1.5)


def _contribution_target(target: np.ndarray) -> np.ndarray:
    """contribution_scores' target: ×4 when it lies in [0, 1] (buckets −2..2), then centred."""
    if np.all((target >= 0) & (target <= 1)):
        target = target * 4
    return _centred_target(target)


def numerai_corr(ranks: Ranks, target: np.ndarray) -> np.ndarray:
    """CORR per model (numerai-tools ``numerai_corr``).

    1. centre the target;
    2. tie-kept rank, gaussianize and raise each prediction column to the power 1.5;
    3. raise the centred target to the signed power 1.5;
    4. Pearson of each transformed column with the transformed target.
    """
    return pearson(ranks.gaussian_pow15(), _pow15_target(target))


def feature_neutral_corr(
    ranks: Ranks, space: FeatureSpace, target: np.ndarray, proportion: float = 1.0
) -> np.ndarray:
    """FNC per model (numerai-tools ``feature_neutral_corr``; ``neutralize`` with ``proportion``).

    1. tie-kept rank and gaussianize each prediction column;
    2. neutralize against the features (``space`` of ``[X, 1]``) by ``proportion``;
    3. (variance-normalize: a positive scale per column, which ranking ignores);
    4. :func:`numerai_corr` of the neutralized columns: rank again, gaussianize,
       power 1.5, Pearson with the power-1.5 centred target.

    A column with nothing left after step 2 (it lies in the feature space) has no
    ranking to score: its FNC is NaN.
    """
    gaussian = ranks.gaussian()
    residual = neutralize(gaussian, space, proportion)
    scores = numerai_corr(Ranks.of(residual), target)
    return np.where(_spread(residual) > RESIDUAL_RTOL * _spread(gaussian), scores, np.nan)


def _spread(columns: np.ndarray) -> np.ndarray:
    """Each column's norm about its mean, ``√(Σx² − N·x̄²)``, without a centred copy (for thresholds only)."""
    squares = np.einsum("ij,ij->j", columns, columns) - len(columns) * columns.mean(axis=0) ** 2
    return np.sqrt(np.maximum(squares, 0.0))


def in_model_blocks(ranks: Ranks, block: int = MODEL_BLOCK) -> Iterator[tuple[slice, Ranks]]:
    """The columns of ``ranks``, ``block`` at a time, each block with its slice of the columns.

    With no model there is one empty block, so the results of a block loop are empty arrays, not missing.
    """
    models = ranks.doubled.shape[1]
    for start in range(0, models, block) if models else [0]:
        columns = slice(start, start + block)
        yield columns, Ranks(ranks.doubled[:, columns])


def stake_weight(ranks: Ranks, stakes: np.ndarray, block: int = MODEL_BLOCK) -> np.ndarray:
    """Stake-weighted meta model of the tie-kept ranks: ``Σⱼ sⱼ·rankedⱼ / Σs`` (equal weights when the stakes sum to 0).

    1. tie-kept rank each column (``block`` columns at a time);
    2. add each column times its stake to the running sum, in column order;
    3. divide by the sum of the stakes.

    The sum runs over models in column order, then divides, exactly as
    numerai-tools' pandas ``stake_weight`` does: rows whose weighted sums are
    mathematically equal must round to the same float, or ranking the meta
    model would break ties that the reference keeps. Each block's columns are
    added to the running sum one by one, so the blocks keep that order bit for bit.
    """
    weights = np.asarray(stakes, dtype=np.float64)
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    total = np.zeros(ranks.n)
    for columns, part in in_model_blocks(ranks, block):
        weighted = part.uniform().T * weights[columns, None]
        total = np.add.reduce(np.vstack([total[None], weighted]), axis=0)
    return total / weights.sum()


def correlation_contributions(
    ranks: Ranks, references: Sequence[np.ndarray], target: np.ndarray, block: int = MODEL_BLOCK
) -> list[np.ndarray]:
    """Contribution of each model to each reference's correlation with the target (MMC, BMC).

    numerai-tools ``correlation_contribution``, for each reference:

    1. tie-kept rank and gaussianize each prediction column (once for every
       reference, ``block`` columns at a time) and the reference;
    2. orthogonalize each column with respect to the gaussianized reference;
    3. ×4 the target when it lies in [0, 1], then centre it;
    4. dot the target with each orthogonalized column, divided by N.

    Steps 2 and 4 are folded into matrix–vector products:
    ``tᵀ(p − m (pᵀm)/(mᵀm)) = tᵀp − (tᵀm)(pᵀm)/(mᵀm)``.
    """
    t = _contribution_target(target)
    gaussian_references = [Ranks.of(reference).gaussian() for reference in references]
    along = [(m, (t @ m) / (m @ m)) for m in gaussian_references]  # each reference and tᵀm/mᵀm, once
    parts: list[list[np.ndarray]] = [[] for _ in references]
    for _, part in in_model_blocks(ranks, block):
        p = part.gaussian()
        tp = t @ p
        for contributions, (m, share) in zip(parts, along):
            contributions.append((tp - share * (m @ p)) / len(t))
    return [np.concatenate(contributions) for contributions in parts]


def meta_portfolio_contribution(
    ranks: Ranks, stakes: np.ndarray, space: FeatureSpace, target: np.ndarray, block: int = MODEL_BLOCK
) -> np.ndarray:
    """TC-style contribution: the gradient of the meta portfolio's return w.r.t. the stakes.

    numerai-tools ``meta_portfolio_contribution(P, s, √N·Q, 1/N, y)``:

    1. centre the target: ``t``;
    2. normalize the stakes to sum to 1: ``s``;
    3. weights ``W = (S − QQᵀS)/N`` with ``S`` the rank-gaussian-power-1.5 predictions,
       centred: ``W_c`` (already centred when ``1/√N`` is a column of ``Q``);
    4. portfolio ``v = W_c s``;
    5. residualize ``W_c`` against ``v``: ``R = W_c − v (vᵀW_c)/(vᵀv)``;
    6. gradient ``Rᵀt / ‖v‖``, divided by 50.

    When the portfolio lies in the feature space, ``v`` is nothing but rounding
    (as when the era has no more rows than ``[X, 1]`` has independent columns)
    and the reference's gradient is noise that changes with the basis: every
    model's TC is NaN.

    Step 5–6 reduce to one matrix–vector product. As ``t`` and ``v`` are
    centred, ``Rᵀt = Sᵀ(I − QQᵀ)(t − βv) / N`` with ``β = vᵀt/vᵀv``; and with
    ``r = (S − QQᵀS)s/N`` and ``v = r − r̄``, ``(I − QQᵀ)v = v + r̄·QQᵀ1``, so
    ``Rᵀt = Sᵀ(t_r − β(v + r̄·QQᵀ1)) / N`` with ``t_r = t − QQᵀt``. ``S`` is
    formed ``block`` columns at a time, twice: to sum ``S s``, then for ``Sᵀ(…)``.
    """
    s = _normalized_stakes(stakes)
    t = _centred_target(target)
    n = len(t)
    portfolio = np.zeros(n)
    for columns, part in in_model_blocks(ranks, block):
        portfolio += part.gaussian_pow15() @ s[columns]
    residual = (portfolio - space.project(portfolio)) / n
    centring = residual.mean()
    v = residual - centring
    if not np.linalg.norm(v) > RESIDUAL_RTOL * np.linalg.norm(portfolio) / n:
        return np.full(ranks.doubled.shape[1], np.nan)
    t_residual = t - space.project(t)
    z = t_residual - (v @ t) / (v @ v) * (v + centring * space.project_constant())
    scale = n * np.sqrt(v @ v) * TC_SCALE
    return np.concatenate([(z @ part.gaussian_pow15()) / scale for _, part in in_model_blocks(ranks, block)])


def feature_exposures(ranked: np.ndarray, centred_features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max and root-mean-square over features of ``|Pearson(tie_kept_rank(P), feature)|``.

    1. centre each ranked prediction column and scale it to unit norm;
    2. covariances = centred featuresᵀ × those columns (F × M), each row divided
       by its feature's norm: the correlations; constant features are left out;
    3. per model: the largest absolute correlation and the RMS of the correlations.
    With no varying feature both are NaN.
    """
    norms = np.sqrt(np.einsum("ij,ij->j", centred_features, centred_features))
    varying = norms > 0
    if not varying.any():
        nan = np.full(ranked.shape[1], np.nan)
        return nan, nan.copy()
    centred = ranked - ranked.mean(axis=0)
    centred /= np.sqrt(np.einsum("ij,ij->j", centred, centred))
    correlations = (centred_features.T @ centred)[varying] / norms[varying, None]
    return np.abs(correlations).max(axis=0), np.sqrt((correlations**2).mean(axis=0))


def _normalized_stakes(stakes: np.ndarray) -> np.ndarray:
    """Stakes summing to 1; equal weights when they sum to 0 (no stake information)."""
    stakes = np.asarray(stakes, dtype=np.float64)
    total = stakes.sum()
    if total <= 0:
        return np.full(len(stakes), 1.0 / len(stakes))
    return stakes / total


# -------------------------------------------------------------------- the kernel


def check_era_inputs(ranks: Ranks, target: np.ndarray) -> None:
    """Raise :class:`DegenerateEraError` unless the target is finite and varying and no model is constant."""
    if ranks.doubled.ndim != 2 or target.shape != (ranks.n,):
        raise DegenerateEraError(
            f"predictions must be (N, M) and target (N,), got {ranks.doubled.shape} and {target.shape}"
        )
    if ranks.n < 2:
        raise DegenerateEraError(f"an era needs at least 2 rows to correlate, got {ranks.n}")
    if not np.all(np.isfinite(target)):
        raise DegenerateEraError("target has NaN or infinite values; pass only resolved rows")
    if np.all(target == target[0]):
        raise DegenerateEraError("target is constant in this era: every correlation is undefined")
    constant = np.flatnonzero(np.all(ranks.doubled == ranks.doubled[0], axis=0))
    if len(constant):
        raise DegenerateEraError(
            f"prediction columns {constant.tolist()[:10]} are constant: their correlations are undefined"
        )


def finite_predictions(predictions: np.ndarray) -> np.ndarray:
    """``predictions`` as float64, or :class:`DegenerateEraError` when any is NaN or infinite."""
    predictions = np.asarray(predictions, dtype=np.float64)
    if not np.all(np.isfinite(predictions)):
        raise DegenerateEraError("predictions have NaN or infinite values")
    return predictions


def model_scores(
    ranks: Ranks, target: np.ndarray, space: FeatureSpace, proportion: float = 1.0
) -> dict[str, np.ndarray]:
    """Metrics of each model that depend on that model alone: corr, fnc, fe_max, fe_rms."""
    fe_max, fe_rms = feature_exposures(ranks.uniform(), space.centred)
    return {
        "corr": numerai_corr(ranks, target),
        "fnc": feature_neutral_corr(ranks, space, target, proportion),
        "fe_max": fe_max,
        "fe_rms": fe_rms,
    }


def model_scores_in_blocks(
    ranks: Ranks,
    target: np.ndarray,
    space: FeatureSpace,
    proportion: float,
    extra_targets: Mapping[str, np.ndarray],
    block: int = MODEL_BLOCK,
) -> dict[str, np.ndarray]:
    """:func:`model_scores` and the CORR against each extra target (``corr_<name>``), ``block`` models at a time.

    Each of these metrics depends on its own column alone, so the blocks'
    results side by side are the metrics of all the models; only the
    temporaries shrink: at 5,000 rows × 705 features × 500 models, these
    metrics peak at 44 MiB traced instead of 86, and :func:`score_era` at 79
    instead of 120; blocks of 256 took 250 ms
    there, of 128 267 ms and all 500 at once 270 ms. At Numerai's 10,000 models
    one N × M float64 array would be 400 MB.
    """
    extra = {f"corr_{name}": np.asarray(values, dtype=np.float64) for name, values in extra_targets.items()}
    parts = []
    for _, part in in_model_blocks(ranks, block):
        scores = model_scores(part, target, space, proportion)
        scores.update({name: corr_with_target(part, values) for name, values in extra.items()})
        parts.append(scores)
    return {name: np.concatenate([scores[name] for scores in parts]) for name in parts[0]}


def ensemble_scores(
    ranks: Ranks,
    target: np.ndarray,
    space: FeatureSpace,
    stakes: np.ndarray,
    benchmark: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Metrics that depend on the era's whole set of models and stakes: mmc, tc, cwmm, meta_corr (+ bmc).

    The meta model is the stake-weighted mean of the models' tie-kept ranks;
    ``meta_corr`` is its own CORR, the same for every model of the era (the
    report charts it per era). Like :func:`model_scores_in_blocks`, every step
    takes the models :data:`MODEL_BLOCK` at a time, so :func:`score_era`'s
    memory no longer grows with them: at 5,000 rows × 705 features its traced
    peak is 79 MiB for 500 models and for 2,000 (206 MiB when these metrics
    formed N × M float64 arrays; 400 MB each at Numerai's 10,000 models).
    """
    meta = stake_weight(ranks, stakes)
    references = [meta] if benchmark is None else [meta, np.asarray(benchmark, dtype=np.float64)]
    contributions = correlation_contributions(ranks, references, target)
    meta_ranked = tie_kept_rank(meta)
    scores = {
        "mmc": contributions[0],
        "tc": meta_portfolio_contribution(ranks, stakes, space, target),
        "cwmm": np.concatenate([pearson(part.uniform(), meta_ranked) for _, part in in_model_blocks(ranks)]),
        "meta_corr": np.full(ranks.doubled.shape[1], numerai_corr(Ranks.of(meta[:, None]), target)[0]),
    }
    if benchmark is not None:
        scores["bmc"] = contributions[1]
    return scores


def score_era(
    predictions: np.ndarray | Ranks,
    target: np.ndarray,
    features: np.ndarray,
    stakes: np.ndarray,
    benchmark: np.ndarray | None = None,
    *,
    proportion: float = 1.0,
    feature_subset: np.ndarray | list[int] | None = None,
    extra_targets: Mapping[str, np.ndarray] | None = None,
    per_model: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Score every model of one era: the kernel interface of DESIGN.md.

    ``predictions`` (N, M), ``target`` (N,), ``features`` (N, F) of any numeric
    dtype, ``stakes`` (M,) ≥ 0, ``benchmark`` (N,) or None; rows are the era's
    resolved ids sorted by id. ``proportion`` is the neutralization proportion
    of FNC; ``feature_subset`` selects feature columns (FNC, TC, exposures);
    ``extra_targets`` maps names to other targets of the same rows, each adding
    ``corr_<name>`` (see :func:`corr_with_target`); ``per_model``, a boolean
    mask over models, limits the metrics that depend on one model alone (corr,
    fnc, exposures, extra corr) to those models, NaN for the others — the
    cross-model metrics always use every model (an incremental refresh keeps
    the per-model scores of unchanged models).
    Returns arrays of shape (M,) under ``corr fnc mmc tc cwmm fe_max fe_rms``,
    ``meta_corr`` (the meta model's CORR, repeated) (+ ``bmc`` with a
    benchmark). Raises :class:`DegenerateEraError` when the
    era cannot be scored (see the module docstring).

    Every metric depends on the predictions only through their tie-kept ranks,
    so ``predictions`` may also come ranked already, as :class:`Ranks` (the
    pipeline ranks where it reads them and ships compact ranks).
    """
    ranks = predictions if isinstance(predictions, Ranks) else Ranks.of(finite_predictions(predictions))
    target = np.asarray(target, dtype=np.float64)
    stakes = np.asarray(stakes, dtype=np.float64)
    check_era_inputs(ranks, target)
    m = ranks.doubled.shape[1]
    if stakes.shape != (m,) or np.any(stakes < 0) or not np.all(np.isfinite(stakes)):
        raise DegenerateEraError(f"stakes must be {m} finite values ≥ 0")
    if benchmark is not None:
        benchmark = finite_predictions(benchmark)
        check_era_inputs(Ranks.of(benchmark[:, None]), target)
    features = np.asarray(features)
    if feature_subset is not None:
        features = features[:, feature_subset]
    if features.dtype.kind in "fc" and not np.isfinite(features).all():
        raise DegenerateEraError("features have NaN or infinite values")
    space = FeatureSpace.of(features)
    selected = np.ones(m, dtype=bool) if per_model is None else np.asarray(per_model, dtype=bool)
    subset = ranks if selected.all() else Ranks(ranks.doubled[:, selected])
    own = model_scores_in_blocks(subset, target, space, proportion, extra_targets or {})
    scores = ensemble_scores(ranks, target, space, stakes, benchmark)
    for name, values in own.items():
        scores[name] = np.full(m, np.nan)
        scores[name][selected] = values
    return scores


def corr_with_target(ranks: Ranks, target: np.ndarray) -> np.ndarray:
    """CORR against another target of the same rows, for comparing targets.

    Rows where that target is unresolved (NaN) are left out, re-ranking the
    predictions on the rest as numerai-tools' index filtering does (ranking the
    ranks of a subset gives that subset's ranks). A target with fewer than two
    resolved rows, or constant on them, cannot be correlated with: NaN for every model.
    """
    resolved = np.isfinite(target)
    values = target[resolved]
    if len(values) < 2 or np.all(values == values[0]):
        return np.full(ranks.doubled.shape[1], np.nan)
    if not resolved.all():
        ranks = Ranks.of(ranks.doubled[resolved])
    return numerai_corr(ranks, values)
