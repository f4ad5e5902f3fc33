"""UQ metrics against scipy, scikit-learn and uncertainty-toolbox; conformal coverage and the
(a, b) variance fit on synthetic data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from uncertainty_toolbox.metrics_calibration import miscalibration_area as toolbox_miscalibration_area

from mlipbias.modelfile import read_model_file, write_model_file
from mlipbias.uq.calibration import (
    CalibrationWarning,
    ConformalCalibration,
    VarianceRecalibration,
    conformal_rank,
    force_rmse_per_atom,
)
from mlipbias.uq.metrics import (
    Predictions,
    accuracy,
    calibrated_nll,
    format_table,
    gaussian_nll,
    metrics_table,
    miscalibration_area,
    roc_auc,
    spearman,
    uncertainty_metrics,
)


def random_case(seed: int, n: int = 300, ties: bool = False):
    rng = np.random.default_rng(seed)
    u = rng.gamma(2.0, 1.0, n)
    errors = np.abs(rng.normal(size=n) * u) + 0.3 * rng.random(n)
    if ties:  # coarse values make many ties in both
        u, errors = np.round(u), np.round(errors * 2) / 2
    return errors, u


# ------------------------------------------------------------------------------ ranking


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_spearman_matches_scipy(seed, ties):
    errors, u = random_case(seed, ties=ties)
    assert spearman(errors, u) == pytest.approx(stats.spearmanr(u, errors).statistic, abs=1e-12)


def test_spearman_known_answers():
    x = np.array([0.1, 0.5, 0.2, 3.0, 1.0])
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    # d = rank differences (0, 1, -1, 0, 0): rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 0.9
    assert spearman([1, 2, 3, 4, 5], [1, 3, 2, 4, 5]) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="uncertainty are all equal"):
        spearman(x, np.ones(5))
    with pytest.raises(ValueError, match="differ in length"):
        spearman(x, x[:3])
    with pytest.raises(ValueError, match="NaN"):
        spearman(x, [1, 2, np.nan, 4, 5])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_roc_auc_matches_sklearn(seed, ties):
    errors, u = random_case(seed, ties=ties)
    high = errors > np.percentile(errors, 20)
    assert roc_auc(errors, u) == pytest.approx(roc_auc_score(high, u), abs=1e-12)
    high50 = errors > np.percentile(errors, 50)
    assert roc_auc(errors, u, percentile=50) == pytest.approx(roc_auc_score(high50, u), abs=1e-12)


def test_roc_auc_known_answers():
    errors = np.arange(1.0, 11.0)
    assert roc_auc(errors, errors) == 1.0  # U ranks the errors perfectly
    assert roc_auc(errors, -errors) == 0.0
    assert roc_auc(errors, np.ones(10)) == 0.5  # no discrimination
    # 20th percentile of 1..10 is 2.8: errors 3..10 are high. U puts error 1 above all of them.
    u = errors.copy()
    u[0] = 100.0
    assert roc_auc(errors, u) == pytest.approx(1 - 8 / 16)  # one of the two low points beats every high
    with pytest.raises(ValueError, match="no errors above the 20th percentile"):
        roc_auc(np.ones(5), np.arange(5.0))


# ------------------------------------------------------------------------------ calibration metrics


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("sigma_scale", [0.3, 1.0, 1.7])
@pytest.mark.parametrize("n_bins", [100, 17])
def test_miscalibration_area_matches_uncertainty_toolbox(seed, sigma_scale, n_bins):
    rng = np.random.default_rng(seed)
    sigma = rng.gamma(2.0, 0.5, 400)
    residual = rng.normal(size=400) * sigma * rng.choice([0.5, 1.5], 400)  # a curve that crosses
    ours = miscalibration_area(residual, sigma * sigma_scale, n_bins=n_bins)
    reference = toolbox_miscalibration_area(residual, sigma * sigma_scale, np.zeros(400), num_bins=n_bins)
    assert ours == pytest.approx(reference, abs=1e-12)


def test_miscalibration_area_of_vector_errors_counts_components():
    rng = np.random.default_rng(5)
    sigma = rng.uniform(0.5, 2.0, 200)
    forces = rng.normal(size=(200, 3)) * sigma[:, None] * 1.3
    reference = toolbox_miscalibration_area(forces.ravel(), np.repeat(sigma, 3), np.zeros(600))
    assert miscalibration_area(forces, sigma) == pytest.approx(reference, abs=1e-12)


def test_miscalibration_area_known_answers():
    rng = np.random.default_rng(11)
    sigma = rng.uniform(0.1, 3.0, 200_000)
    calibrated = rng.normal(size=sigma.size) * sigma
    assert miscalibration_area(calibrated, sigma) < 0.005
    # Zero errors: every interval holds all of them, the area is the triangle above y = x.
    assert miscalibration_area(np.zeros(50), np.ones(50)) == pytest.approx(0.5)
    # Errors far outside every finite interval: observed 0 up to p = 98/99, 1 at p = 1, so the
    # area is the triangle below y = x up to 98/99 plus the last trapezoid: 49/99.
    assert miscalibration_area(np.full(50, 1e6), np.ones(50)) == pytest.approx(49 / 99, abs=1e-12)
    with pytest.raises(ValueError, match="sigma must be positive"):
        miscalibration_area(calibrated[:5], [1, 1, 0, 1, 1])


def test_gaussian_and_calibrated_nll_match_scipy():
    rng = np.random.default_rng(2)
    u = rng.gamma(2.0, 0.5, 100)
    a, b = 0.4, 0.05
    forces = rng.normal(size=(100, 3)) * np.sqrt(a * u + b)[:, None]
    reference = -np.mean(stats.norm.logpdf(forces, scale=np.sqrt(a * u + b)[:, None]))
    assert gaussian_nll(forces, a * u + b) == pytest.approx(reference, rel=1e-12)
    assert calibrated_nll(forces, u, a, b) == pytest.approx(reference, rel=1e-12)
    energies = forces[:, 0]
    reference_1d = -np.mean(stats.norm.logpdf(energies, scale=np.sqrt(a * u + b)))
    assert calibrated_nll(energies, u, a, b) == pytest.approx(reference_1d, rel=1e-12)
    with pytest.raises(ValueError, match="variance must be positive"):
        calibrated_nll(energies, u, 0.0, 0.0)


def test_accuracy_hand_computed():
    out = accuracy(
        energy=[10.0, -4.0],
        energy_ref=[8.0, -3.0],
        n_atoms=[2, 4],
        forces=np.zeros((6, 3)),
        forces_ref=np.array([[3.0, 0, 0], [0, -4.0, 0]] + [[0, 0, 0]] * 4),
    )
    # per-atom energy errors 1 and -0.25
    assert out["energy_rmse"] == pytest.approx(math.sqrt((1 + 0.0625) / 2))
    assert out["energy_mae"] == pytest.approx(0.625)
    assert out["force_rmse"] == pytest.approx(math.sqrt(25 / 18))
    assert out["force_mae"] == pytest.approx(7 / 18)
    with pytest.raises(ValueError, match="n_atoms must be >= 1"):
        accuracy([1.0], [1.0], [0])


# ------------------------------------------------------------------------------ the table


def synthetic_predictions(seed: int, n_struct: int = 60, a: float = 0.5, b: float = 0.01) -> Predictions:
    """Errors drawn with variance a U^2 + b from per-atom and per-structure uncertainties U."""
    rng = np.random.default_rng(seed)
    n_atoms = rng.integers(3, 9, n_struct)
    n_total = int(n_atoms.sum())
    atom_u = rng.gamma(2.0, 0.1, n_total)
    energy_u = rng.gamma(2.0, 0.2, n_struct)
    forces_ref = rng.normal(size=(n_total, 3))
    energy_ref = rng.normal(size=n_struct) * 10
    return Predictions(
        energy=energy_ref + rng.normal(size=n_struct) * np.sqrt(a * energy_u**2 + b),
        energy_ref=energy_ref,
        n_atoms=n_atoms,
        forces=forces_ref + rng.normal(size=(n_total, 3)) * np.sqrt(a * atom_u**2 + b)[:, None],
        forces_ref=forces_ref,
        energy_uncertainty=energy_u,
        atom_uncertainty=atom_u,
    )


def test_metrics_table_is_made_of_the_single_metrics():
    test, val = synthetic_predictions(1), synthetic_predictions(2)
    table = metrics_table(test, val)
    force_err = np.linalg.norm(test.forces - test.forces_ref, axis=1)
    forces = table["forces"]
    assert forces["spearman"] == pytest.approx(stats.spearmanr(test.atom_uncertainty, force_err).statistic)
    assert forces["roc_auc"] == pytest.approx(
        roc_auc_score(force_err > np.percentile(force_err, 20), test.atom_uncertainty)
    )
    residual = test.forces - test.forces_ref
    assert forces["miscalibration_area"] == pytest.approx(
        toolbox_miscalibration_area(
            residual.ravel(), np.repeat(test.atom_uncertainty, 3), np.zeros(residual.size)
        )
    )
    fit = VarianceRecalibration().fit(val.forces - val.forces_ref, val.atom_uncertainty**2)
    assert (forces["cnll_a"], forces["cnll_b"]) == pytest.approx((fit.a, fit.b))
    assert forces["cnll"] == pytest.approx(calibrated_nll(residual, test.atom_uncertainty**2, fit.a, fit.b))
    energy_err = np.abs(test.energy - test.energy_ref)
    assert table["energy"]["spearman"] == pytest.approx(spearman(energy_err, test.energy_uncertainty))
    assert table["energy"]["rmse"] == pytest.approx(
        accuracy(test.energy, test.energy_ref, test.n_atoms)["energy_rmse"]
    )
    text = format_table(table)
    assert text.splitlines()[0].split() == ["metric", "energy", "forces"]
    assert "miscalibration_area" in text


def test_metrics_table_without_uncertainty_or_validation():
    test = synthetic_predictions(3)
    bare = Predictions(test.energy, test.energy_ref, test.n_atoms, test.forces, test.forces_ref)
    assert set(metrics_table(bare)["forces"]) == {"rmse", "mae"}
    table = metrics_table(test)
    assert np.isnan(table["forces"]["cnll"]) and not np.isnan(table["forces"]["spearman"])
    assert "n/a" in format_table(table)
    with pytest.raises(ValueError, match=r"Predictions.atom_uncertainty has shape \(3,\)"):
        Predictions(
            test.energy,
            test.energy_ref,
            test.n_atoms,
            test.forces,
            test.forces_ref,
            atom_uncertainty=[1, 2, 3],
        )
    with pytest.raises(ValueError, match="Predictions.forces has shape"):
        Predictions(test.energy, test.energy_ref, test.n_atoms, test.forces[1:], test.forces_ref)


def test_score_kind_for_negative_scores():
    """A GMM-like score (negative log-likelihood, can be negative): variance a U + b."""
    rng = np.random.default_rng(8)
    score = rng.normal(size=3000) * 2.0
    variance = 0.2 * (score - score.min()) + 0.05
    residual = rng.normal(size=3000) * np.sqrt(variance)
    out = uncertainty_metrics(
        residual[1500:], score[1500:], kind="score", validation=(residual[:1500], score[:1500])
    )
    assert np.isnan(out["miscalibration_area"])
    assert out["miscalibration_area_recalibrated"] < 0.05
    # Recovered variance a U + b: a = 0.2, b = 0.05 - 0.2 min(score)
    assert out["cnll_a"] == pytest.approx(0.2, rel=0.25)
    assert out["cnll_a"] * score.min() + out["cnll_b"] == pytest.approx(0.05, abs=0.05)
    with pytest.raises(ValueError, match="kind must be one of"):
        uncertainty_metrics(residual, score, kind="sigma")


# ------------------------------------------------------------------------------ conformal prediction


def test_conformal_factor_is_the_finite_sample_quantile():
    rng = np.random.default_rng(4)
    errors, u = np.abs(rng.normal(size=57)), rng.uniform(0.5, 1.5, 57)
    for alpha in (0.05, 0.1, 0.32):
        k = math.ceil((57 + 1) * (1 - alpha))
        cal = ConformalCalibration(alpha).fit(errors, u)
        assert cal.factor == np.sort(errors / u)[k - 1]
        assert cal.factor == np.quantile(errors / u, k / 57, method="inverted_cdf")
    assert conformal_rank(9, 0.1) == 9  # (9 + 1) * 0.9 is 9 up to rounding
    with pytest.warns(CalibrationWarning, match="alpha = 0.01 needs at least 99 calibration points, got 57"):
        few = ConformalCalibration(0.01).fit(errors, u)
    assert few.largest_ratio_fallback and few.factor == np.max(errors / u)  # never uncalibrated
    assert not cal.largest_ratio_fallback and ConformalCalibration().alpha == 0.05  # seed 002's level
    with pytest.raises(ValueError, match="uncertainty must be positive: 1 of 57"):
        ConformalCalibration(0.1).fit(errors, np.r_[u[:-1], 0.0])
    with pytest.raises(ValueError, match="absolute errors"):
        ConformalCalibration(0.1).fit(-errors, u)


@pytest.mark.parametrize("alpha, n", [(0.1, 20), (0.05, 60), (0.2, 7)])
def test_conformal_coverage_reaches_one_minus_alpha(alpha, n):
    """Over many calibration sets the coverage of a fresh point is ceil((n+1)(1-alpha))/(n+1)."""
    rng = np.random.default_rng(0)
    trials = 2000
    sigma = rng.gamma(2.0, 1.0, (trials, n + 1))
    errors = np.abs(rng.standard_t(3, (trials, n + 1))) * sigma * 0.3  # heavy tails, U off by 0.3
    covered = np.empty(trials, dtype=bool)
    for t in range(trials):
        cal = ConformalCalibration(alpha).fit(errors[t, :n], sigma[t, :n])
        covered[t] = errors[t, n] <= cal.apply(sigma[t, n])
    expected = math.ceil((n + 1) * (1 - alpha)) / (n + 1)
    assert expected >= 1 - alpha
    tolerance = 4 * math.sqrt(expected * (1 - expected) / trials)
    assert abs(covered.mean() - expected) < tolerance


def test_conformal_coverage_on_a_test_set_and_records(tmp_path):
    rng = np.random.default_rng(6)
    forces = rng.normal(size=(4000, 3))
    sigma = rng.uniform(0.2, 1.0, 4000)
    forces_ref = forces + rng.normal(size=(4000, 3)) * sigma[:, None] * 2.0
    err = force_rmse_per_atom(forces, forces_ref)
    assert err[0] == pytest.approx(np.sqrt(np.mean((forces[0] - forces_ref[0]) ** 2)))
    cal = ConformalCalibration(alpha=0.05).fit(err[:2000], sigma[:2000])
    assert cal.coverage(err[2000:], sigma[2000:]) == pytest.approx(0.95, abs=0.015)
    records = cal.to_records("force", "ensemble")
    path = write_model_file(tmp_path / "c.mlip", records)
    again = ConformalCalibration.from_records(read_model_file(path), "force", "ensemble")
    assert (again.alpha, again.factor) == (0.05, cal.factor)
    assert ConformalCalibration.from_records({}, "energy", "posterior").factor == 1.0  # absent: 1
    with pytest.raises(ValueError, match="quantity must be 'energy' or 'force'"):
        cal.to_records("stress", "ensemble")


# ------------------------------------------------------------------------------ variance recalibration


def test_variance_fit_recovers_known_a_and_b():
    rng = np.random.default_rng(12)
    u = rng.gamma(2.0, 0.5, 20_000)
    a, b = 0.7, 0.2
    forces = rng.normal(size=(u.size, 3)) * np.sqrt(a * u + b)[:, None]
    fit = VarianceRecalibration().fit(forces, u)
    assert fit.a == pytest.approx(a, rel=0.05) and fit.b == pytest.approx(b, rel=0.1)
    # Only a constant: b is the mean square error, a = 0.
    constant = rng.normal(size=5000) * 0.3
    flat = VarianceRecalibration().fit(constant, rng.random(5000))
    assert flat.a < 0.01 and flat.b == pytest.approx(0.09, rel=0.1)


def test_variance_fit_is_the_nll_minimum():
    """Compare with an independent optimiser of scipy.stats.norm's log-likelihood."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(13)
    u = rng.gamma(1.5, 1.0, 400)
    errors = rng.normal(size=400) * np.sqrt(0.3 * u + 0.5) * rng.uniform(0.7, 1.3, 400)

    def nll(log_ab):
        a, b = np.exp(log_ab)
        return -np.mean(stats.norm.logpdf(errors, scale=np.sqrt(a * u + b)))

    reference = minimize(nll, [0.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14})
    fit = VarianceRecalibration().fit(errors, u)
    assert (fit.a, fit.b) == pytest.approx(tuple(np.exp(reference.x)), rel=1e-4)
    assert fit.nll(errors, u) == pytest.approx(reference.fun, rel=1e-9)


def test_positive_variance_constraint_for_negative_scores(tmp_path):
    rng = np.random.default_rng(14)
    score = rng.normal(size=20_000) - 3.0  # negative scores
    variance = 0.5 * score + 4.0  # positive on every sample (score > -8 here)
    errors = rng.normal(size=score.size) * np.sqrt(variance)
    with pytest.raises(ValueError, match="use constraint='positive_variance'"):
        VarianceRecalibration().fit(errors, score)
    fit = VarianceRecalibration("positive_variance").fit(errors, score)
    assert fit.a == pytest.approx(0.5, rel=0.1) and fit.b == pytest.approx(4.0, rel=0.05)
    assert fit.min_variance == pytest.approx(fit.a * score.min() + fit.b)
    assert fit.variance([score.min() - 10])[0] == fit.min_variance  # floored below the validation range
    np.testing.assert_allclose(fit.apply(score[:5]) ** 2, fit.a * score[:5] + fit.b, rtol=1e-14)
    records = fit.to_records("energy", "gmm")
    again = VarianceRecalibration.from_records(
        read_model_file(write_model_file(tmp_path / "v.mlip", records)), "energy", "gmm"
    )
    assert (again.a, again.b, again.min_variance) == (fit.a, fit.b, fit.min_variance)
    with pytest.raises(ValueError, match="all validation errors are zero"):
        VarianceRecalibration().fit(np.zeros(5), np.ones(5))
