"""Every metric of score_era equals numerai-tools 0.7.2 (the oracle) on randomized eras."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numerai_tools import scoring as nt

from oracle import TOLERANCE, oracle

from numerai_dask.scoring import (
    BASIS_RCOND,
    LANCZOS_MIN_SIZE,
    MODEL_BLOCK,
    SINGLE_PASS_SPREAD,
    DegenerateEraError,
    FeatureSpace,
    Ranks,
    average_ranks_doubled,
    feature_basis,
    _eigen_weights,
    _inverse_operator,
    _orthonormalizing_weights,
    _singular_weights,
    _uncentred_gram,
    _positive_definite_extremes,
    neutralize,
    score_era,
    small_integer_gram,
    stake_weight,
    tie_kept_rank,
)



def random_era(rng: np.random.Generator, n: int, m: int, f: int, tied_models: int = 0):
    """A random era with a weak signal; ``tied_models`` columns rounded to 4 levels (heavy ties)."""
    features = rng.integers(0, 5, size=(n, f)).astype(np.int8)
    latent = features.astype(float) @ rng.normal(size=f) + rng.normal(size=n) * 3
    target = np.digitize(latent, np.quantile(latent, [0.2, 0.4, 0.6, 0.8])) / 4
    predictions = 1 / (1 + np.exp(-(0.3 * latent[:, None] + rng.normal(size=(n, m)) * 3)))
    predictions[:, :tied_models] = np.round(predictions[:, :tied_models] * 3) / 3
    stakes = rng.exponential(size=m)
    return predictions, target, features, stakes, rng.random(n)


def resolved_rows(predictions, target, features, benchmark):
    keep = ~np.isnan(target)
    return predictions[keep], target[keep], features[keep], benchmark[keep]


def assert_parity(mine: dict, theirs: dict) -> None:
    assert set(mine) == set(theirs)
    for name in theirs:
        np.testing.assert_allclose(mine[name], theirs[name], rtol=0, atol=TOLERANCE, err_msg=name)


@pytest.mark.parametrize("seed", range(8))
def test_random_eras_with_ties_odd_sizes_constant_and_duplicate_features(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 900)) | 1
    m = int(rng.integers(2, 9))
    f = int(rng.integers(3, 30))
    predictions, target, features, stakes, benchmark = random_era(rng, n, m, f, tied_models=m // 2)
    features[:, 0] = 3  # constant
    features[:, 1] = features[:, 2]  # duplicated
    stakes[rng.integers(m)] = 0.0
    mine = score_era(predictions, target, features, stakes, benchmark)
    assert_parity(mine, oracle(predictions, target, features, stakes, benchmark))


@pytest.mark.parametrize("seed", range(3))
def test_many_features_constant_or_duplicated_or_not(seed):
    """Past LANCZOS_MIN_SIZE features the route is chosen from two Lanczos eigenvalues: full rank takes the
    Cholesky route, a constant or duplicated feature the eigenvector route; numerai-tools' numbers either way."""
    rng = np.random.default_rng(100 + seed)
    f = LANCZOS_MIN_SIZE + int(rng.integers(1, 100))
    predictions, target, features, stakes, benchmark = random_era(rng, int(rng.integers(300, 700)) | 1, 4, f,
                                                                  tied_models=1)
    if seed == 1:
        features[:, 0] = 3
    if seed == 2:
        features[:, 1] = features[:, 2]
    centred = features - features.mean(axis=0)
    assert _orthonormalizing_weights(centred, BASIS_RCOND)[2] == (seed == 0)
    mine = score_era(predictions, target, features, stakes, benchmark)
    assert_parity(mine, oracle(predictions, target, features, stakes, benchmark))


@pytest.mark.parametrize("size", [LANCZOS_MIN_SIZE, 300])
def test_the_extreme_eigenvalues_of_a_positive_definite_matrix(size):
    """Lanczos (past LANCZOS_MIN_SIZE) or every eigenvalue: the same two, to 1e-6, well or ill conditioned."""
    from scipy.linalg.lapack import dtrtri

    rng = np.random.default_rng(size)
    for scale in (1.0, 1e-3):
        vectors = np.linalg.qr(rng.normal(size=(size, size)))[0]
        values = np.geomspace(scale, 1.0, size) * rng.uniform(0.5, 2.0)
        gram = (vectors * values) @ vectors.T
        gram = (gram + gram.T) / 2
        inverse, failed = dtrtri(np.linalg.cholesky(gram), lower=1)
        assert not failed
        for inverse_of_gram in (inverse.T @ inverse, _inverse_operator(inverse)):  # dense, or through L⁻¹
            assert _positive_definite_extremes(gram, inverse_of_gram) == pytest.approx((values.min(), values.max()),
                                                                                    rel=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_few_features_and_tied_predictions_keep_residual_ties(seed):
    """Duplicate (features, prediction) rows: FNC's second ranking must keep their exact ties."""
    rng = np.random.default_rng(100 + seed)
    predictions, target, features, stakes, benchmark = random_era(rng, 1200 + seed, 4, 2, tied_models=4)
    mine = score_era(predictions, target, features, stakes, benchmark)
    assert_parity(mine, oracle(predictions, target, features, stakes, benchmark))


@pytest.mark.parametrize("proportion", [0.0, 0.25, 0.5, 0.9])
def test_partial_neutralization(proportion):
    rng = np.random.default_rng(7)
    predictions, target, features, stakes, benchmark = random_era(rng, 301, 5, 12, tied_models=2)
    mine = score_era(predictions, target, features, stakes, benchmark, proportion=proportion)
    assert_parity(mine, oracle(predictions, target, features, stakes, benchmark, proportion))


def test_neutralize_equals_numerai_tools_neutralize():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(200, 4))
    features = rng.integers(0, 5, size=(200, 9)).astype(np.int8)
    theirs = nt.neutralize(pd.DataFrame(values), pd.DataFrame(features.astype(float)), 0.6).values
    np.testing.assert_allclose(neutralize(values, FeatureSpace.of(features), 0.6), theirs, atol=1e-12)


def test_the_gram_matrix_of_small_integer_features_is_exact():
    """Float32 sums of small integer products are exact: the same matrix as integer arithmetic, bit for bit;
    float features, or products that could outgrow 24 bits, are left to float64 (None)."""
    rng = np.random.default_rng(5)
    features = rng.integers(-128, 128, size=(1000, 12)).astype(np.int8)  # 1000 · 128² < 2²⁴
    exact = features.astype(np.int64)
    sums = exact.sum(axis=0).astype(np.float64)
    expected = (exact.T @ exact).astype(np.float64) - np.outer(sums, sums) / len(features)
    assert np.array_equal(small_integer_gram(features), expected)
    centred = features - features.mean(axis=0)
    np.testing.assert_allclose(small_integer_gram(features), centred.T @ centred, rtol=1e-12, atol=1e-9)
    assert small_integer_gram(features.astype(np.float64)) is None
    assert small_integer_gram(np.full((17, 2), 1000, dtype=np.int16)) is None  # 17 · 1000² ≥ 2²⁴


@pytest.mark.parametrize("n_features", [30, 100])  # every eigenvalue, then the extreme two by Lanczos
@pytest.mark.parametrize("noise", [1.0, 1e-3])
def test_near_collinear_features_keep_an_orthonormal_basis_and_parity(noise, n_features):
    """Float features that copy others up to ``noise``: at 1e-3 the Gram route's
    eigenvalues spread past SINGLE_PASS_SPREAD (a second pass is taken), at 1 not;
    the basis stays orthonormal and every metric equal to numerai-tools either way."""
    rng = np.random.default_rng(21)
    predictions, target, base, stakes, benchmark = random_era(rng, 600, 5, n_features, tied_models=2)
    copies = base[:, :10] + noise * rng.normal(size=(600, 10))
    features = np.hstack([base.astype(np.float64), copies])
    centred = features - features.mean(axis=0)
    gram = centred.T @ centred
    eigenvalues = np.linalg.eigvalsh(gram)
    assert (eigenvalues[-1] / eigenvalues[0] > SINGLE_PASS_SPREAD) == (noise < 0.1)
    _, spread, cholesky = _orthonormalizing_weights(centred, BASIS_RCOND, gram)
    assert cholesky == (noise > 0.1)
    assert spread == pytest.approx(eigenvalues[-1] / eigenvalues[0], rel=1e-6)
    basis = feature_basis(features)
    np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-10)
    mine = score_era(predictions, target, features, stakes, benchmark)
    assert_parity(mine, oracle(predictions, target, features, stakes, benchmark))


def _ill_conditioned(name: str, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    features = base.astype(np.float64)
    if name.startswith("offset"):
        return features + float(name.split()[1])
    if name == "one feature 1e6 times the others":
        features[:, -1] *= 1e6
        return features
    if name == "near-collinear by 1e-5":
        return np.column_stack([features, features[:, 0] + features[:, 1] + 1e-5 * rng.normal(size=len(base))])
    assert name == "gaussian around 5e4, one duplicated"
    features = rng.normal(size=base.shape) * 1e3 + 5e4
    features[:, 1] = features[:, 2]
    return features


@pytest.mark.parametrize(("name", "n_features", "constant_apart"), [
    ("offset 100", 30, True),  # [X, 1] below the cut-off: every direction kept (bound, then Lanczos past 64)
    ("offset 100", 80, True),
    ("offset 1000", 80, False),  # cut off from the Gram matrix of [X, 1]
    ("offset 300", 30, False),  # singular values near the cut-off: the SVD decides
    ("one feature 1e6 times the others", 30, False),  # the cut-off drops the constant's direction
    ("near-collinear by 1e-5", 30, False),
    ("gaussian around 5e4, one duplicated", 30, False),
])
def test_ill_conditioned_features_are_cut_off_as_numerai_tools_cuts_x_and_ones(name, n_features, constant_apart):
    """numerai-tools' neutralize keeps the directions of the uncentred ``[X, 1]`` whose singular value is at least
    1e-6 of its largest. Features far from zero, a feature on a scale far from the others', or nearly collinear
    features make that cut-off drop directions the centred features keep (FNC differed by up to 0.03, TC too, when
    the cut-off was taken on the centred features); every metric must follow numerai-tools'."""
    rng = np.random.default_rng(n_features)
    predictions, target, base, stakes, benchmark = random_era(rng, 601, 5, n_features, tied_models=2)
    features = _ill_conditioned(name, base, rng)
    space = FeatureSpace.of(features)
    assert space.constant_apart == constant_apart
    basis = space.basis()
    np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-10)
    if constant_apart:
        assert np.array_equal(space.project_constant(), np.ones(601))
    if name.startswith("one feature"):  # the constant's direction is mostly cut off
        assert np.abs(space.project_constant() - 1).max() > 0.1
    mine = score_era(predictions, target, features, stakes, benchmark)
    assert_parity(mine, oracle(predictions, target, features, stakes, benchmark))


def test_a_direction_the_centred_features_drop_as_tiny_is_cut_from_x_and_ones_as_lstsq_cuts_it():
    """A feature equal to another plus a constant and noise 3e-8 of the largest singular value: the centred features
    drop that direction as null, while ``[X, 1]``, with a small singular value near it (a nearly collinear pair far
    from zero), cuts along another vector; TC differed by 5e-9 (a helper's find). Only the directions of constant
    or repeated columns are dropped on the centred route now."""
    rng = np.random.default_rng(912739854)
    base = rng.integers(0, 5, size=(300, 3)).astype(np.float64)
    base[:, 1] = base[:, 0] + 0.00678 * rng.normal(size=300)
    features = base + 4.92
    largest = np.linalg.svd(features - features.mean(axis=0), compute_uv=False)[0]
    noise = rng.normal(size=300)
    noise = (noise - noise.mean()) / np.linalg.norm(noise - noise.mean())
    features = np.column_stack([features, features[:, 0] + 9.068 + 2.99e-8 * largest * noise])
    predictions, target, _, stakes, benchmark = random_era(rng, 300, 4, 1, tied_models=1)
    assert not FeatureSpace.of(features).constant_apart
    mine = score_era(predictions, target, features, stakes, benchmark)
    assert_parity(mine, oracle(predictions, target, features, stakes, benchmark))


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")  # the oracle's exposures
def test_an_era_without_features_is_neutralized_against_the_constant_alone():
    rng = np.random.default_rng(5)
    predictions, target, features, stakes, benchmark = random_era(rng, 301, 4, 3, tied_models=1)
    features = features[:, :0]
    space = FeatureSpace.of(features)
    assert space.constant_apart and space.weights.shape == (0, 0)
    mine = score_era(predictions, target, features, stakes, benchmark)
    theirs = oracle(predictions, target, features, stakes, benchmark)
    assert np.isnan(mine.pop("fe_max")).all() and np.isnan(mine.pop("fe_rms")).all()
    assert_parity(mine, {name: values for name, values in theirs.items() if not name.startswith("fe_")})


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
def test_features_past_1e154_overflow_the_gram_matrix_and_take_the_svd():
    """Squares of such values overflow: the Gram matrices were infinite and score_era raised IndexError or
    LinAlgError (a helper's find); the SVD of ``[X, 1]`` needs no squares. FNC follows numerai-tools; TC and the
    exposures are left to their rounding at such magnitudes (the exposures square the features too)."""
    rng = np.random.default_rng(11)
    predictions, target, _, stakes, benchmark = random_era(rng, 50, 4, 1, tied_models=1)
    for features in (rng.normal(size=(50, 3)) * 1e150 + 1e160,
                     np.column_stack([rng.normal(size=50) * 1e160, rng.normal(size=50)])):
        assert not FeatureSpace.of(features).constant_apart
        mine = score_era(predictions, target, features, stakes, benchmark)
        theirs = oracle(predictions, target, features, stakes, benchmark)
        for name in ("corr", "fnc", "mmc", "bmc", "cwmm"):
            np.testing.assert_allclose(mine[name], theirs[name], rtol=0, atol=TOLERANCE, err_msg=name)
        assert np.isfinite(mine["tc"]).all()


def test_an_eigenvalue_near_the_cut_off_is_left_to_the_svd():
    """Features at 300–304: one singular value of ``[X, 1]`` lies within CUTOFF_MARGIN of 1e-6 of the largest, where
    the Gram matrix's rounding could put it either side; the weights are then the SVD's, cut as lstsq cuts."""
    rng = np.random.default_rng(30)
    features = rng.integers(0, 5, size=(601, 30)) + 300.0
    uncentred = np.hstack([features, np.ones((601, 1))])
    means = features.mean(axis=0)
    centred = features - means
    gram = _uncentred_gram(centred.T @ centred, means, 601)
    np.testing.assert_allclose(gram, uncentred.T @ uncentred, rtol=1e-12)
    assert _eigen_weights(gram, BASIS_RCOND) is None
    weights, _, cholesky = _orthonormalizing_weights(uncentred, BASIS_RCOND, gram)
    assert not cholesky
    np.testing.assert_array_equal(weights, _singular_weights(uncentred, BASIS_RCOND)[0])
    singular = np.linalg.svd(uncentred, compute_uv=False)
    assert weights.shape[1] == np.sum(singular > BASIS_RCOND * singular[0]) < 31


def test_compact_ranks_score_exactly_as_the_predictions_they_come_from():
    """The pipeline ships uint16 ranks instead of predictions: every metric must be bit-identical."""
    rng = np.random.default_rng(31)
    predictions, target, features, stakes, benchmark = random_era(rng, 401, 6, 12, tied_models=3)
    extra = target.copy()
    extra[rng.choice(401, size=40, replace=False)] = np.nan  # re-ranks a subset for corr_<extra>
    compact = Ranks.of(predictions).compact()
    assert compact.dtype == np.uint16 and compact.shape == (6, 401)
    direct = score_era(predictions, target, features, stakes, benchmark, extra_targets={"x": extra})
    ranked = score_era(Ranks(compact.T), target, features, stakes, benchmark, extra_targets={"x": extra})
    assert set(direct) == set(ranked)
    for name in direct:
        np.testing.assert_array_equal(ranked[name], direct[name], err_msg=name)


def test_unresolved_rows_dropped_before_scoring_equal_numerai_tools_filtering():
    rng = np.random.default_rng(11)
    predictions, target, features, stakes, benchmark = random_era(rng, 500, 6, 10, tied_models=2)
    target[rng.choice(500, size=60, replace=False)] = np.nan
    p, y, x, b = resolved_rows(predictions, target, features, benchmark)
    mine = score_era(p, y, x, stakes, b)
    assert_parity(mine, oracle(predictions, target, features, stakes, benchmark))


def test_single_model():
    rng = np.random.default_rng(5)
    predictions, target, features, stakes, benchmark = random_era(rng, 77, 1, 6)
    mine = score_era(predictions, target, features, stakes, benchmark)
    assert_parity(mine, oracle(predictions, target, features, stakes, benchmark))
    # Alone, a model is the meta model: it contributes nothing beyond itself.
    assert abs(mine["mmc"][0]) < 1e-12
    assert mine["cwmm"][0] == pytest.approx(1.0, abs=1e-12)


def test_model_equal_to_meta_model_has_no_contribution():
    rng = np.random.default_rng(9)
    predictions, target, features, stakes, benchmark = random_era(rng, 401, 5, 8)
    stakes[-1] = 0.0  # the copy carries no stake, so the meta model is the same with or without it
    predictions[:, -1] = nt.stake_weight(nt.tie_kept_rank(pd.DataFrame(predictions[:, :-1])),
                                         pd.Series(stakes[:-1])).values
    mine = score_era(predictions, target, features, stakes, benchmark)
    assert_parity(mine, oracle(predictions, target, features, stakes, benchmark))
    assert abs(mine["mmc"][-1]) < 1e-12
    assert mine["cwmm"][-1] == pytest.approx(1.0, abs=1e-12)


def test_zero_stakes_for_every_model_mean_equal_weights():
    rng = np.random.default_rng(13)
    predictions, target, features, _, benchmark = random_era(rng, 150, 4, 5)
    zero = score_era(predictions, target, features, np.zeros(4), benchmark)
    equal = score_era(predictions, target, features, np.ones(4), benchmark)
    assert_parity(zero, equal)
    assert_parity(equal, oracle(predictions, target, features, np.ones(4), benchmark))


def test_without_benchmark_there_is_no_bmc():
    rng = np.random.default_rng(17)
    predictions, target, features, stakes, _ = random_era(rng, 120, 3, 4)
    mine = score_era(predictions, target, features, stakes)
    assert set(mine) == {"corr", "fnc", "mmc", "tc", "cwmm", "fe_max", "fe_rms", "meta_corr"}
    assert all(v.shape == (3,) and v.dtype == np.float64 for v in mine.values())


def test_feature_subset_equals_scoring_only_those_features():
    rng = np.random.default_rng(19)
    predictions, target, features, stakes, benchmark = random_era(rng, 250, 4, 12)
    subset = [1, 4, 5, 9]
    mine = score_era(predictions, target, features, stakes, benchmark, feature_subset=subset)
    assert_parity(mine, oracle(predictions, target, features[:, subset], stakes, benchmark))


def test_ranks_equal_pandas_average_rank_bit_for_bit():
    rng = np.random.default_rng(23)
    values = np.round(rng.random((333, 6)) * rng.integers(1, 20, size=6), 0)
    expected = nt.tie_kept_rank(pd.DataFrame(values)).values
    assert np.array_equal(tie_kept_rank(values), expected)
    assert np.array_equal(Ranks.of(values).gaussian(), nt.gaussian(pd.DataFrame(expected)).values)
    assert np.array_equal(average_ranks_doubled(values[:, 0]), average_ranks_doubled(values)[:, 0])


def test_constant_prediction_column_is_a_clear_error():
    rng = np.random.default_rng(29)
    predictions, target, features, stakes, _ = random_era(rng, 60, 3, 4)
    predictions[:, 1] = 0.5
    with pytest.raises(DegenerateEraError, match=r"columns \[1\] are constant"):
        score_era(predictions, target, features, stakes)


def test_constant_target_is_a_clear_error():
    rng = np.random.default_rng(31)
    predictions, _, features, stakes, _ = random_era(rng, 60, 3, 4)
    with pytest.raises(DegenerateEraError, match="target is constant"):
        score_era(predictions, np.full(60, 0.5), features, stakes)


def test_non_finite_inputs_are_clear_errors():
    rng = np.random.default_rng(37)
    predictions, target, features, stakes, _ = random_era(rng, 60, 3, 4)
    bad_target = target.copy()
    bad_target[3] = np.nan
    with pytest.raises(DegenerateEraError, match="target has NaN"):
        score_era(predictions, bad_target, features, stakes)
    bad_features = features.astype(np.float64)
    bad_features[7, 2] = np.nan  # was numpy's LinAlgError from inside the factorization
    with pytest.raises(DegenerateEraError, match="features have NaN"):
        score_era(predictions, target, bad_features, stakes)
    predictions[5, 0] = np.inf
    with pytest.raises(DegenerateEraError, match="predictions have NaN"):
        score_era(predictions, target, features, stakes)


def test_fnc_is_nan_when_the_features_explain_a_model_entirely():
    rng = np.random.default_rng(41)
    predictions, target, features, stakes, _ = random_era(rng, 200, 3, 6)
    own_gaussian_rank = Ranks.of(predictions[:, [2]]).gaussian()
    scores = score_era(predictions, target, np.hstack([features, own_gaussian_rank]), stakes)
    assert np.isnan(scores["fnc"][2])
    assert np.all(np.isfinite(scores["fnc"][:2]))
    assert np.all(np.isfinite(scores["corr"]))


@pytest.mark.parametrize("rows", [3, 5, 7])
def test_tc_and_fnc_are_nan_when_the_era_has_no_rows_beyond_the_feature_space(rows):
    """rank([X, 1]) = N: nothing is left after neutralization, and the reference's TC is rounding noise that
    depends on the basis (its SVD basis and a QR basis of the same space disagree in the second digit)."""
    rng = np.random.default_rng(rows)
    predictions, target, _, stakes, benchmark = random_era(rng, rows, 4, rows)
    features = np.eye(rows, dtype=np.int8) * np.int8(4)  # with the ones column: rank N
    scores = score_era(predictions, target, features, stakes, benchmark)
    assert np.all(np.isnan(scores["tc"])) and np.all(np.isnan(scores["fnc"]))
    assert np.all(np.isfinite(scores["corr"])) and np.all(np.isfinite(scores["mmc"]))

    def reference_tc(basis: np.ndarray) -> np.ndarray:
        frame = pd.DataFrame(predictions)
        with np.errstate(invalid="ignore"):  # the reference divides rounding by rounding
            return nt.meta_portfolio_contribution(frame, pd.Series(stakes), pd.DataFrame(np.sqrt(rows) * basis),
                                                  pd.Series(np.full(rows, 1 / rows)), pd.Series(target)).to_numpy()

    with_ones = np.hstack([features, np.ones((rows, 1))]).astype(float)
    svd_basis = np.linalg.svd(with_ones, full_matrices=False)[0]
    qr_basis = np.linalg.qr(with_ones)[0]
    by_svd, by_qr = reference_tc(svd_basis), reference_tc(qr_basis)
    assert np.all(np.isfinite(by_svd)) and np.all(np.isfinite(by_qr))
    assert not np.allclose(by_svd, by_qr, rtol=0, atol=TOLERANCE)


def test_tc_is_finite_with_one_row_beyond_the_feature_space():
    """rank([X, 1]) = N − 1 leaves a residual of one dimension: the portfolio is defined there, and its TC equals
    the reference's (zero: every model's weights are a multiple of the portfolio)."""
    rng = np.random.default_rng(8)
    predictions, target, features, stakes, benchmark = random_era(rng, 8, 4, 6)
    assert np.linalg.matrix_rank(np.hstack([features, np.ones((8, 1))])) == 7
    assert_parity(score_era(predictions, target, features, stakes, benchmark),
                  oracle(predictions, target, features, stakes, benchmark))


def test_extra_targets_add_corr_columns_equal_to_numerai_corr():
    rng = np.random.default_rng(43)
    predictions, target, features, stakes, _ = random_era(rng, 240, 4, 5, tied_models=1)
    jerome = rng.integers(0, 5, 240) / 4
    partly = jerome.copy()
    partly[:30] = np.nan
    scores = score_era(predictions, target, features, stakes,
                       extra_targets={"jerome": jerome, "partly": partly, "none": np.full(240, np.nan)})
    frame = pd.DataFrame(predictions, index=[f"id{i:04d}" for i in range(240)])
    for name, values in (("jerome", jerome), ("partly", partly)):
        expected = nt.numerai_corr(frame, pd.Series(values, index=frame.index, name=name)).values
        np.testing.assert_allclose(scores[f"corr_{name}"], expected, rtol=0, atol=TOLERANCE)
    assert np.all(np.isnan(scores["corr_none"]))


def test_more_models_than_one_block_score_as_the_reference():
    """Every metric is computed MODEL_BLOCK models at a time: across the blocks' edges, with ties, an extra target
    with unresolved rows and a mask over the models, they are still the reference's."""
    rng = np.random.default_rng(53)
    m = 2 * MODEL_BLOCK + 3
    predictions, target, features, stakes, benchmark = random_era(rng, 301, m, 9, tied_models=40)
    partly = rng.integers(0, 5, 301) / 4
    partly[:25] = np.nan
    mine = score_era(predictions, target, features, stakes, benchmark, extra_targets={"partly": partly})
    assert_parity({name: v for name, v in mine.items() if name != "corr_partly"},
                  oracle(predictions, target, features, stakes, benchmark))
    frame = pd.DataFrame(predictions, index=[f"id{i:04d}" for i in range(301)])
    expected = nt.numerai_corr(frame, pd.Series(partly, index=frame.index, name="partly")).values
    np.testing.assert_allclose(mine["corr_partly"], expected, rtol=0, atol=TOLERANCE)
    mask = np.arange(m) % 7 == 3
    part = score_era(predictions, target, features, stakes, benchmark, extra_targets={"partly": partly}, per_model=mask)
    for name in ("corr", "fnc", "fe_max", "fe_rms", "corr_partly"):
        np.testing.assert_allclose(part[name][mask], mine[name][mask], rtol=0, atol=1e-15, err_msg=name)
        assert np.all(np.isnan(part[name][~mask]))


def test_the_meta_model_is_summed_bit_for_bit_as_numerai_tools_sums_it():
    """Ranking the meta model keeps exactly the reference's ties only if every row rounds as pandas rounds it:
    the running sum over more models than one block must add the columns in pandas' order."""
    rng = np.random.default_rng(43)
    predictions = rng.random((301, MODEL_BLOCK * 2 + 3))
    predictions[:, :5] = np.round(predictions[:, :5] * 4) / 4
    stakes = rng.exponential(size=predictions.shape[1])
    theirs = nt.stake_weight(nt.tie_kept_rank(pd.DataFrame(predictions)), pd.Series(stakes))
    np.testing.assert_array_equal(stake_weight(Ranks.of(predictions), stakes), theirs.to_numpy())


def test_per_model_mask_limits_only_the_metrics_of_one_model():
    rng = np.random.default_rng(47)
    predictions, target, features, stakes, benchmark = random_era(rng, 180, 6, 7, tied_models=2)
    extra = {"jerome": rng.integers(0, 5, 180) / 4}
    full = score_era(predictions, target, features, stakes, benchmark, extra_targets=extra)
    mask = np.array([False, True, False, False, True, False])
    part = score_era(predictions, target, features, stakes, benchmark, extra_targets=extra, per_model=mask)
    for name in ("corr", "fnc", "fe_max", "fe_rms", "corr_jerome"):
        np.testing.assert_allclose(part[name][mask], full[name][mask], rtol=0, atol=1e-15, err_msg=name)
        assert np.all(np.isnan(part[name][~mask]))
    for name in ("mmc", "bmc", "tc", "cwmm"):
        assert np.array_equal(part[name], full[name])
    none = score_era(predictions, target, features, stakes, benchmark, extra_targets=extra, per_model=np.zeros(6, bool))
    assert all(np.all(np.isnan(none[name])) for name in ("corr", "fnc", "fe_max", "fe_rms", "corr_jerome"))
    assert np.array_equal(none["mmc"], full["mmc"])
