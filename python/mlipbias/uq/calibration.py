"""Calibration of uncertainties: inductive conformal prediction and variance recalibration.

:class:`ConformalCalibration` (Zaverkin et al. 2024, Methods "Conformal prediction"): on a calibration
set with errors e_i and uncertainties U_i, the factor c is the
``ceil((n + 1)(1 - alpha))``-th smallest ratio e_i / U_i. Then ``e <= c U`` holds for a new
point from the same distribution with probability at least ``1 - alpha`` (exactly
``ceil((n + 1)(1 - alpha)) / (n + 1)`` for continuous data). Zaverkin et al. (2024) use the per-atom force
RMSE ``sqrt(|F_i - F_i_ref|^2 / 3)`` against the per-atom uncertainty
(:func:`force_rmse_per_atom`) and the absolute energy error against the energy uncertainty
(per atom or total: the ratio is the same). The factor is stored in the model file as
``calibration/{energy,force}/METHOD`` with ``calibration/alpha``.

The default ``alpha = 0.05`` (confidence 0.95) is the level of Zaverkin et al.'s (2024) active-learning
runs: the paper's text (as available here) lost the number, the authors' public example scripts use
``conformal_alpha=0.05``. With fewer calibration points than the level needs (n < (1 - alpha) /
alpha, e.g. 19 for alpha = 0.05; common in the first generations of active learning), the
factor is the largest ratio, as the authors' code does too, and a :class:`CalibrationWarning`
says so: then ``P(e <= c U) >= n / (n + 1)``, less than 1 - alpha.

:class:`VarianceRecalibration` (Tan et al. 2023, Eq. 13): the variance ``sigma^2 = a U + b`` whose
Gaussian negative log-likelihood of the validation errors is smallest, under
``a >= 0, b >= 0`` (``constraint="nonnegative"``, for U >= 0) or ``a >= 0, a U + b > 0`` on
every validation U (``"positive_variance"``, for scores that can be negative, such as a GMM
negative log-likelihood; below the smallest validation U the variance stays at its smallest
validation value). Stored as ``calibration/nll/{energy,force}/METHOD = [a, b, min_variance]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

QUANTITIES = ("energy", "force")
DEFAULT_ALPHA = 0.05
CONSTRAINTS = ("nonnegative", "positive_variance")


def _check_key(quantity: str, method: str) -> None:
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity must be 'energy' or 'force', got {quantity!r}")
    if not method or "/" in method or " " in method:
        raise ValueError(f"method must be a single word such as 'ensemble', got {method!r}")


def _errors_and_uncertainty(errors, uncertainty) -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(errors, dtype=float)
    u = np.asarray(uncertainty, dtype=float)
    if e.ndim != 1 or u.shape != e.shape:
        raise ValueError(f"errors {e.shape} and uncertainty {u.shape} must be 1-d arrays of the same length")
    if e.size == 0:
        raise ValueError("errors and uncertainty are empty")
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(u))):
        raise ValueError("errors or uncertainty contain NaN or infinite values")
    return e, u


def force_rmse_per_atom(forces, forces_ref) -> np.ndarray:
    """``sqrt(|F_i - F_i_ref|^2 / 3)`` per atom (eV/A), the force error conformal prediction uses."""
    f = np.asarray(forces, dtype=float)
    f_ref = np.asarray(forces_ref, dtype=float)
    if f.shape != f_ref.shape or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"forces {f.shape} and forces_ref {f_ref.shape} must both be (n_atoms, 3)")
    return np.sqrt(np.mean((f - f_ref) ** 2, axis=1))


class CalibrationWarning(UserWarning):
    """A calibration was done with less data than its confidence level needs."""


def conformal_rank(n: int, alpha: float) -> int:
    """``ceil((n + 1)(1 - alpha))``: which order statistic of n ratios is the conformal factor."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    # The tolerance keeps e.g. (9 + 1) * 0.9 = 9.000000000000002 at 9.
    k = math.ceil((n + 1) * (1 - alpha) - 1e-9)
    if k > n:
        need = math.ceil((1 - alpha) / alpha - 1e-9)
        raise ValueError(
            f"conformal calibration with alpha = {alpha:g} needs at least {need} calibration points, got {n}"
        )
    return k


class ConformalCalibration:
    """Inductive conformal factor c for ``U_calibrated = c U`` at miscoverage level ``alpha``.

    >>> cal = ConformalCalibration(alpha=0.05).fit(errors_val, u_val)
    >>> cal.apply(u_test), cal.coverage(errors_test, u_test)

    After :meth:`fit`, ``largest_ratio_fallback`` is True when there were too few points for
    ``alpha`` and the largest ratio was used (a :class:`CalibrationWarning` was issued).
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA, factor: float = 1.0):
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.factor = float(factor)
        self.n_calibration = 0
        self.largest_ratio_fallback = False

    def __repr__(self) -> str:
        return f"ConformalCalibration(alpha={self.alpha:g}, factor={self.factor:.6g})"

    def fit(self, errors, uncertainty) -> ConformalCalibration:
        """Fit c on absolute errors and positive uncertainties of a calibration set."""
        e, u = _errors_and_uncertainty(errors, uncertainty)
        if np.any(e < 0):
            raise ValueError("errors must be absolute errors (>= 0)")
        if np.any(u <= 0):
            raise ValueError(
                f"uncertainty must be positive: {int(np.sum(u <= 0))} of {u.size} values are <= 0"
            )
        ratios = e / u
        try:
            k = conformal_rank(e.size, self.alpha)
            self.largest_ratio_fallback = False
        except ValueError as exc:  # too few points for 1 - alpha: never leave U uncalibrated
            import warnings

            k = e.size
            self.largest_ratio_fallback = True
            warnings.warn(
                f"{exc}: using the largest of the {e.size} ratios error/U as the factor, which "
                f"guarantees coverage {e.size / (e.size + 1):.3f} instead of {1 - self.alpha:g}",
                CalibrationWarning,
                stacklevel=2,
            )
        self.factor = float(np.partition(ratios, k - 1)[k - 1])
        self.n_calibration = e.size
        return self

    def apply(self, uncertainty) -> np.ndarray:
        """The calibrated uncertainty ``c U``."""
        return self.factor * np.asarray(uncertainty, dtype=float)

    def coverage(self, errors, uncertainty) -> float:
        """Fraction of points with ``error <= c U`` (at least 1 - alpha on exchangeable data)."""
        e, u = _errors_and_uncertainty(errors, uncertainty)
        return float(np.mean(e <= self.factor * u))

    def to_records(self, quantity: str, method: str) -> dict[str, np.ndarray]:
        """Model-file records; every conformal factor of one file shares ``calibration/alpha``."""
        _check_key(quantity, method)
        return {
            f"calibration/{quantity}/{method}": np.array([self.factor]),
            "calibration/alpha": np.array([self.alpha]),
        }

    @classmethod
    def from_records(cls, records: Mapping, quantity: str, method: str) -> ConformalCalibration:
        """The calibration of ``method`` for ``quantity`` from model-file records.

        An absent factor is 1 (uncalibrated); an absent ``calibration/alpha`` reads as the default.
        """
        _check_key(quantity, method)
        factor = records.get(f"calibration/{quantity}/{method}", [1.0])
        alpha = records.get("calibration/alpha", [DEFAULT_ALPHA])
        return cls(alpha=float(np.ravel(alpha)[0]), factor=float(np.ravel(factor)[0]))


class VarianceRecalibration:
    """``sigma^2 = a U + b`` fitted by minimising the Gaussian NLL of validation errors (Eq. 13).

    ``errors`` passed to :meth:`fit` and :meth:`nll` are residuals of shape (n,) or (n, d)
    (d components per U, e.g. the three force components of an atom); ``score`` is the
    quantity the variance is linear in, (n,): the variance itself for an ensemble variance,
    U^2 for a standard deviation, the raw value for a GMM score.
    """

    def __init__(
        self, constraint: str = "nonnegative", a: float = 0.0, b: float = 1.0, min_variance: float = 0.0
    ):
        if constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {', '.join(CONSTRAINTS)}, got {constraint!r}")
        self.constraint = constraint
        self.a = float(a)
        self.b = float(b)
        self.min_variance = float(min_variance)

    def __repr__(self) -> str:
        return (
            f"VarianceRecalibration(constraint={self.constraint!r}, a={self.a:.6g}, b={self.b:.6g}, "
            f"min_variance={self.min_variance:.6g})"
        )

    def fit(self, errors, score) -> VarianceRecalibration:
        """Minimise the Gaussian NLL (Eq. 13) of validation residuals over (a, b); returns self."""
        from scipy.optimize import minimize

        e = np.asarray(errors, dtype=float)
        s = np.asarray(score, dtype=float)
        if e.ndim not in (1, 2) or s.ndim != 1 or e.shape[0] != s.shape[0] or s.size == 0:
            raise ValueError(f"errors {e.shape} must be (n,) or (n, d) and score {s.shape} (n,), n > 0")
        if not (np.all(np.isfinite(e)) and np.all(np.isfinite(s))):
            raise ValueError("errors or score contain NaN or infinite values")
        squared = e**2 if e.ndim == 1 else np.sum(e**2, axis=1)  # per row
        n_components = 1 if e.ndim == 1 else e.shape[1]
        scale = float(np.sum(squared) / e.size)  # mean squared error per component
        if scale == 0:
            raise ValueError("all validation errors are zero; the variance cannot be fitted")
        if self.constraint == "nonnegative":
            if np.any(s < 0):
                raise ValueError(
                    f"score has negative values (min {s.min():.4g}); use constraint='positive_variance'"
                )
            shift = 0.0
        else:
            shift = float(s.min())
        # Fit v = scale * (alpha t + beta) with t of order one, so both unknowns are of order one.
        t = s - shift
        t_scale = float(np.mean(t)) or 1.0
        t = t / t_scale
        beta_min = 1e-9

        def objective(x):
            v = scale * (x[0] * t + x[1])
            value = 0.5 * (n_components * np.sum(np.log(2 * np.pi * v)) + np.sum(squared / v)) / e.size
            dv = 0.5 * (n_components / v - squared / v**2) / e.size * scale
            return value, np.array([dv @ t, dv.sum()])

        # Starts: constant variance, and a nonnegative least-squares line through squared / d.
        y = squared / n_components / scale
        slope = (
            max(float(np.mean((t - t.mean()) * (y - y.mean())) / np.var(t)), 0.0) if np.var(t) > 0 else 0.0
        )
        starts = [(0.0, 1.0), (slope, max(float(y.mean()) - slope * float(t.mean()), 0.1))]
        bounds = [(0.0, None), (beta_min, None)]
        best = min(
            (minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=bounds) for x0 in starts),
            key=lambda r: r.fun,
        )
        alpha, beta = (float(x) for x in best.x)
        self.a = alpha * scale / t_scale
        self.b = beta * scale - self.a * shift
        self.min_variance = beta * scale if self.constraint == "positive_variance" else beta_min * scale
        return self

    def variance(self, score) -> np.ndarray:
        """``max(a U + b, min_variance)``."""
        return np.maximum(self.a * np.asarray(score, dtype=float) + self.b, self.min_variance)

    def apply(self, score) -> np.ndarray:
        """The recalibrated standard deviation ``sqrt(max(a U + b, min_variance))``."""
        return np.sqrt(self.variance(score))

    def nll(self, errors, score) -> float:
        """The calibrated NLL (Tan et al. 2023, Eq. 14) per error component."""
        from mlipbias.uq.metrics import calibrated_nll

        return calibrated_nll(errors, score, self.a, self.b, self.min_variance)

    def to_records(self, quantity: str, method: str) -> dict[str, np.ndarray]:
        _check_key(quantity, method)
        return {f"calibration/nll/{quantity}/{method}": np.array([self.a, self.b, self.min_variance])}

    @classmethod
    def from_records(cls, records: Mapping, quantity: str, method: str) -> VarianceRecalibration:
        _check_key(quantity, method)
        name = f"calibration/nll/{quantity}/{method}"
        if name not in records:
            raise ValueError(f"missing record {name}")
        values = np.ravel(records[name]).astype(float)
        if values.shape != (3,):
            raise ValueError(f"record {name} has {values.size} values, expected 3 (a, b, min_variance)")
        a, b, min_variance = values
        # The constraint only matters when refitting; only "positive_variance" allows b < 0.
        constraint = "positive_variance" if b < 0 else "nonnegative"
        return cls(constraint=constraint, a=a, b=b, min_variance=min_variance)


def fit_method_calibration(
    method: str,
    alpha: float,
    energy_residuals,
    U,
    force_residuals=None,
    U_i=None,
    *,
    score=None,
    atom_score=None,
    log=print,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The calibration records of one uncertainty method and the coverage they reach on the same data.

    ``energy_residuals`` E - E_ref (n_structures,) against the energy uncertainty ``U`` (n_structures,),
    and ``force_residuals`` F - F_ref (n_atoms, 3) against the per-atom ``U_i`` (n_atoms,); both
    uncertainties are standard deviations. A score that is not one (``score``, ``atom_score``: a GMM's
    negative log-likelihoods) first gets the variance recalibration ``sigma^2 = a s + b``
    (:class:`VarianceRecalibration`, ``"positive_variance"``) and ``sigma`` stands for U (U_i). Then
    every quantity gets its conformal factor (:class:`ConformalCalibration`: |E - E_ref| against U,
    :func:`force_rmse_per_atom` against U_i). A quantity that cannot be calibrated is logged and left
    out. Returns (records, coverage) with coverage keys ``"energy/METHOD"``, ``"force/METHOD"``.
    """
    records: dict[str, np.ndarray] = {}
    coverage: dict[str, float] = {}
    energy_residuals = np.asarray(energy_residuals, dtype=float)
    forces = force_residuals is not None
    if score is not None:
        fit = VarianceRecalibration("positive_variance").fit(energy_residuals, score)
        records.update(fit.to_records("energy", method))
        U = fit.apply(score)
        if forces:
            fit = VarianceRecalibration("positive_variance").fit(force_residuals, atom_score)
            records.update(fit.to_records("force", method))
            U_i = fit.apply(atom_score)
        else:
            log(f"{method}: no reference forces, so the per-atom score is not calibrated")
    pairs = [("energy", np.abs(energy_residuals), U)]
    if forces:
        pairs.append(("force", force_rmse_per_atom(force_residuals, np.zeros_like(force_residuals)), U_i))
    for quantity, errors, u in pairs:
        try:
            conformal = ConformalCalibration(alpha).fit(errors, u)
        except ValueError as error:
            log(f"{method}: {quantity} uncertainty not calibrated ({error})")
            continue
        records.update(conformal.to_records(quantity, method))
        coverage[f"{quantity}/{method}"] = conformal.coverage(errors, u)
        fallback = f", the largest of {len(errors)} ratios" if conformal.largest_ratio_fallback else ""
        log(
            f"{method}: conformal factor c_{quantity[0].upper()} = {conformal.factor:.4g} "
            f"(alpha = {alpha:g}{fallback})"
        )
    return records, coverage
