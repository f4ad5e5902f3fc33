"""How well an uncertainty ranks and calibrates the true error (Tan et al. 2023, Sec. 2.3).

Functions take the true errors first and the uncertainties second, like scikit-learn's
``roc_auc_score(y_true, y_score)``:

- :func:`spearman`: rank correlation rho(U, eps) (Eq. 12), ties get average ranks.
- :func:`roc_auc`: area under the ROC curve of U as a detector of "high error", i.e. an
  error above the 20th percentile of the errors.
- :func:`miscalibration_area`: area between the observed and the expected fraction of errors
  inside centred Gaussian intervals of standard deviation sigma (Tran et al.), as in
  uncertainty-toolbox's ``miscalibration_area``.
- :func:`gaussian_nll`, :func:`calibrated_nll`: mean Gaussian negative log-likelihood of the
  errors with variance ``a U + b`` (Eq. 14 divided by the number of error components).
- :func:`accuracy`: energy RMSE/MAE per atom and force RMSE/MAE per component.
- :func:`metrics_table`: all of it for energies and forces, :func:`format_table` prints it.

Errors that come as vectors (forces, shape ``(n, 3)``) share one uncertainty per row:
each component is a Gaussian variable with the row's sigma. Units: eV, eV/A.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNCERTAINTY_KINDS = ("std", "variance", "score")


def _vector(name: str, x, ndim: tuple[int, ...] = (1,)) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dimensions, got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _pair(errors, uncertainty, errors_ndim: tuple[int, ...] = (1,)) -> tuple[np.ndarray, np.ndarray]:
    e = _vector("errors", errors, errors_ndim)
    u = _vector("uncertainty", uncertainty)
    if e.shape[0] != u.shape[0]:
        raise ValueError(f"errors ({e.shape[0]} rows) and uncertainty ({u.shape[0]}) differ in length")
    return e, u


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Each run of equal values gets the mean of the ranks it spans.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(errors, uncertainty) -> float:
    """Spearman's rank correlation between the errors and the uncertainties (Eq. 12).

    The Pearson correlation of the ranks; +1 when U orders the data exactly as the error.
    ValueError when either input is constant (the correlation is undefined).
    """
    e, u = _pair(errors, uncertainty)
    re, ru = _ranks(e), _ranks(u)
    re -= re.mean()
    ru -= ru.mean()
    denominator = np.sqrt((re @ re) * (ru @ ru))
    if denominator == 0:
        which = "errors" if re @ re == 0 else "uncertainty"
        raise ValueError(f"spearman: {which} are all equal, the rank correlation is undefined")
    return float((re @ ru) / denominator)


def roc_auc(errors, uncertainty, percentile: float = 20.0) -> float:
    """ROC-AUC of the uncertainty as a score for "high error" (Tan et al. 2023).

    An error is high when it is above the ``percentile``-th percentile of ``errors`` (20 in
    the paper). The AUC is the probability that a random high-error point has a larger U than
    a random low-error point, ties counting one half (the Mann-Whitney statistic).
    """
    e, u = _pair(errors, uncertainty)
    if not 0 <= percentile < 100:
        raise ValueError(f"roc_auc: percentile must be in [0, 100), got {percentile}")
    high = e > np.percentile(e, percentile)
    n_high = int(high.sum())
    n_low = len(e) - n_high
    if n_high == 0 or n_low == 0:
        raise ValueError(
            f"roc_auc: no errors above the {percentile:g}th percentile, ROC-AUC needs high and low errors"
        )
    rank_sum = _ranks(u)[high].sum()
    return float((rank_sum - n_high * (n_high + 1) / 2) / (n_high * n_low))


def calibration_curve(errors, sigma, n_bins: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(expected, observed) fractions of errors inside centred Gaussian intervals.

    ``expected`` is ``linspace(0, 1, n_bins)``; ``observed[k]`` is the fraction of error
    components with ``|e| / sigma <= Phi^-1(1/2 + expected[k] / 2)``.
    """
    from scipy.special import ndtri

    e, s = _pair(errors, sigma, errors_ndim=(1, 2))
    if np.any(s <= 0):
        raise ValueError(f"sigma must be positive: {int(np.sum(s <= 0))} entries are <= 0")
    if n_bins < 2:
        raise ValueError(f"n_bins must be at least 2, got {n_bins}")
    z = np.sort((np.abs(e) / (s if e.ndim == 1 else s[:, None])).ravel())
    expected = np.linspace(0.0, 1.0, n_bins)
    bounds = ndtri(0.5 + expected / 2.0)
    observed = np.searchsorted(z, bounds, side="right") / z.size
    return expected, observed


def miscalibration_area(errors, sigma, n_bins: int = 100) -> float:
    """Area between the calibration curve and the diagonal (0 for perfect calibration).

    ``errors`` are residuals (prediction - reference; the sign does not matter), ``sigma``
    the predicted standard deviations. The curve is linear between the ``n_bins`` points and
    a segment that crosses the diagonal counts the two triangles it makes, as in
    uncertainty-toolbox.
    """
    expected, observed = calibration_curve(errors, sigma, n_bins)
    gap = observed - expected
    left, right = gap[:-1], gap[1:]
    width = np.diff(expected)
    same_side = left * right >= 0
    with np.errstate(invalid="ignore", divide="ignore"):
        crossing = 0.5 * (left**2 + right**2) / (np.abs(left) + np.abs(right))
    area = np.where(same_side, 0.5 * np.abs(left + right), crossing)
    return float(np.sum(width * area))


def gaussian_nll(errors, variance) -> float:
    """Mean negative log-likelihood of the errors under N(0, variance), per error component."""
    e, v = _pair(errors, variance, errors_ndim=(1, 2))
    if np.any(v <= 0):
        raise ValueError(f"variance must be positive: {int(np.sum(v <= 0))} entries are <= 0")
    squared = e**2 if e.ndim == 1 else np.sum(e**2, axis=1)
    n_components = 1 if e.ndim == 1 else e.shape[1]
    total = n_components * np.sum(np.log(2 * np.pi * v)) + np.sum(squared / v)
    return float(0.5 * total / e.size)


def calibrated_nll(errors, uncertainty, a: float, b: float, min_variance: float = 0.0) -> float:
    """cNLL of Tan et al. (2023, Eq. 14), averaged per error component, with ``sigma^2 = a U + b``.

    ``a`` and ``b`` come from validation data (:class:`mlipbias.uq.calibration.VarianceRecalibration`);
    variances below ``min_variance`` are raised to it.
    """
    u = _vector("uncertainty", uncertainty)
    return gaussian_nll(errors, np.maximum(a * u + b, min_variance))


# ------------------------------------------------------------------------------ accuracy


def accuracy(energy, energy_ref, n_atoms, forces=None, forces_ref=None) -> dict[str, float]:
    """Energy RMSE and MAE per atom (eV/atom) and force RMSE and MAE per component (eV/A)."""
    e = _vector("energy", energy)
    e_ref = _vector("energy_ref", energy_ref)
    n = _vector("n_atoms", n_atoms)
    if not e.shape == e_ref.shape == n.shape:
        raise ValueError(f"energy {e.shape}, energy_ref {e_ref.shape} and n_atoms {n.shape} differ in shape")
    if np.any(n < 1):
        raise ValueError("n_atoms must be >= 1 for every structure")
    per_atom = (e - e_ref) / n
    out = {
        "energy_rmse": float(np.sqrt(np.mean(per_atom**2))),
        "energy_mae": float(np.mean(np.abs(per_atom))),
    }
    if forces is not None or forces_ref is not None:
        f = _vector("forces", forces, (2,))
        f_ref = _vector("forces_ref", forces_ref, (2,))
        if f.shape != f_ref.shape or f.shape[1] != 3:
            raise ValueError(f"forces {f.shape} and forces_ref {f_ref.shape} must both be (n_atoms, 3)")
        diff = f - f_ref
        out["force_rmse"] = float(np.sqrt(np.mean(diff**2)))
        out["force_mae"] = float(np.mean(np.abs(diff)))
    return out


# ------------------------------------------------------------------------------ the table


@dataclass
class Predictions:
    """Predictions, references and uncertainties on one data set (eV, eV/A).

    Atoms of all structures are concatenated in ``forces``, ``forces_ref`` and
    ``atom_uncertainty``; ``n_atoms`` says how many belong to each structure.
    """

    energy: np.ndarray  # (n_structures,) predicted total energies
    energy_ref: np.ndarray  # (n_structures,) reference total energies
    n_atoms: np.ndarray  # (n_structures,)
    forces: np.ndarray | None = None  # (n_atoms_total, 3)
    forces_ref: np.ndarray | None = None  # (n_atoms_total, 3)
    energy_uncertainty: np.ndarray | None = None  # (n_structures,) of the total energy
    atom_uncertainty: np.ndarray | None = None  # (n_atoms_total,) force-component scale

    def __post_init__(self):
        if np.ndim(self.energy) != 1:
            raise ValueError(
                f"Predictions.energy has shape {np.shape(self.energy)}, expected (n_structures,)"
            )
        n_struct = np.shape(self.energy)[0]
        for name in ("energy_ref", "n_atoms", "energy_uncertainty"):
            value = getattr(self, name)
            if value is not None and np.shape(value) != (n_struct,):
                raise ValueError(f"Predictions.{name} has shape {np.shape(value)}, expected ({n_struct},)")
        n_total = int(np.sum(self.n_atoms))
        for name in ("forces", "forces_ref"):
            value = getattr(self, name)
            if value is not None and np.shape(value) != (n_total, 3):
                raise ValueError(f"Predictions.{name} has shape {np.shape(value)}, expected ({n_total}, 3)")
        if (self.forces is None) != (self.forces_ref is None):
            raise ValueError("Predictions needs both forces and forces_ref, or neither")
        if self.atom_uncertainty is not None:
            if self.forces is None:
                raise ValueError("Predictions.atom_uncertainty needs forces and forces_ref")
            if np.shape(self.atom_uncertainty) != (n_total,):
                raise ValueError(
                    f"Predictions.atom_uncertainty has shape {np.shape(self.atom_uncertainty)}, "
                    f"expected ({n_total},)"
                )

    def energy_residuals(self) -> np.ndarray:
        return np.asarray(self.energy, float) - np.asarray(self.energy_ref, float)

    def force_residuals(self) -> np.ndarray:
        return np.asarray(self.forces, float) - np.asarray(self.forces_ref, float)


def uncertainty_metrics(
    residuals,
    uncertainty,
    *,
    kind: str = "std",
    validation: tuple | None = None,
    percentile: float = 20.0,
    n_bins: int = 100,
) -> dict[str, float]:
    """Spearman, ROC-AUC, miscalibration area and cNLL of one uncertainty.

    ``residuals`` has shape (n,) or (n, d) (a force per row); ranking metrics use the row
    norm. ``kind`` says what U is: ``"std"`` (sigma = U, cNLL variance a U^2 + b),
    ``"variance"`` (sigma = sqrt(U), variance a U + b) or ``"score"`` (no Gaussian meaning,
    such as a GMM negative log-likelihood: variance a U + b with a >= 0, a U + b > 0).
    ``validation = (residuals, uncertainty)`` fits a, b; without it the cNLL entries are NaN.
    ``miscalibration_area`` uses the raw sigma (NaN for scores),
    ``miscalibration_area_recalibrated`` the sigma of the fitted variance.
    """
    from mlipbias.uq.calibration import VarianceRecalibration

    if kind not in UNCERTAINTY_KINDS:
        raise ValueError(f"kind must be one of {', '.join(UNCERTAINTY_KINDS)}, got {kind!r}")
    r, u = _pair(residuals, uncertainty, errors_ndim=(1, 2))
    magnitude = np.abs(r) if r.ndim == 1 else np.linalg.norm(r, axis=1)
    out = {"spearman": spearman(magnitude, u), "roc_auc": roc_auc(magnitude, u, percentile)}
    if kind == "std":
        out["miscalibration_area"] = miscalibration_area(r, u, n_bins)
    elif kind == "variance":
        out["miscalibration_area"] = miscalibration_area(r, np.sqrt(u), n_bins)
    else:
        out["miscalibration_area"] = float("nan")
    for key in ("miscalibration_area_recalibrated", "cnll", "cnll_a", "cnll_b"):
        out[key] = float("nan")
    if validation is not None:
        power = 2 if kind == "std" else 1  # the variance is linear in U^2 for a standard deviation
        r_val, u_val = _pair(*validation, errors_ndim=(1, 2))
        constraint = "positive_variance" if kind == "score" else "nonnegative"
        fit = VarianceRecalibration(constraint=constraint).fit(r_val, u_val**power)
        score = u**power
        out["cnll"] = fit.nll(r, score)
        out["cnll_a"], out["cnll_b"] = fit.a, fit.b
        out["miscalibration_area_recalibrated"] = miscalibration_area(r, np.sqrt(fit.variance(score)), n_bins)
    return out


def metrics_table(
    test: Predictions,
    validation: Predictions | None = None,
    *,
    kind: str = "std",
    percentile: float = 20.0,
    n_bins: int = 100,
) -> dict[str, dict[str, float]]:
    """The table of Tan et al. (2023) for energies and forces.

    Returns ``{"energy": {...}, "forces": {...}}`` (forces only when present) with
    ``rmse`` and ``mae`` (eV/atom for energies, eV/A per component for forces) and, when the
    uncertainty is given, the entries of :func:`uncertainty_metrics`. Energies are ranked by
    the absolute error of the total energy against ``energy_uncertainty``, forces by the norm
    of each atom's force error against ``atom_uncertainty``.
    """
    acc = accuracy(test.energy, test.energy_ref, test.n_atoms, test.forces, test.forces_ref)
    table: dict[str, dict[str, float]] = {"energy": {"rmse": acc["energy_rmse"], "mae": acc["energy_mae"]}}
    options = {"kind": kind, "percentile": percentile, "n_bins": n_bins}
    if test.energy_uncertainty is not None:
        val = None
        if validation is not None and validation.energy_uncertainty is not None:
            val = (validation.energy_residuals(), validation.energy_uncertainty)
        table["energy"].update(
            uncertainty_metrics(test.energy_residuals(), test.energy_uncertainty, validation=val, **options)
        )
    if test.forces is not None:
        table["forces"] = {"rmse": acc["force_rmse"], "mae": acc["force_mae"]}
        if test.atom_uncertainty is not None:
            val = None
            if validation is not None and validation.atom_uncertainty is not None:
                val = (validation.force_residuals(), validation.atom_uncertainty)
            table["forces"].update(
                uncertainty_metrics(test.force_residuals(), test.atom_uncertainty, validation=val, **options)
            )
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    """The table of :func:`metrics_table` as aligned text: one row per metric, one column per quantity.

    RMSE and MAE are in eV/atom for energies and eV/A per component for forces.
    """
    metrics: list[str] = []
    for column in table.values():
        metrics += [key for key in column if key not in metrics]
    width = max(len(m) for m in metrics)
    lines = ["metric".ljust(width) + "".join(name.rjust(12) for name in table)]
    for metric in metrics:
        cells = []
        for column in table.values():
            value = column.get(metric, float("nan"))
            cells.append(("n/a" if np.isnan(value) else f"{value:.4g}").rjust(12))
        lines.append(metric.ljust(width) + "".join(cells))
    return "\n".join(lines)
