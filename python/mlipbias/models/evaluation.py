"""Evaluating a model on labelled data: the metrics table of Tan et al. (2023) for
every uncertainty method, and plots.

:func:`evaluate_methods` predicts energies, forces and each method's U and U_i, and computes with
:func:`mlipbias.uq.metrics.metrics_table` the energy and force RMSE/MAE, Spearman, ROC-AUC,
miscalibration area and (with calibration data) the calibrated NLL. :func:`write_plots` draws the
parity plots, the uncertainty-vs-error hexbins and the calibration curves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlipbias.models.data import AtomsData
from mlipbias.models.model import MLIPModel, Predictions
from mlipbias.uq.metrics import Predictions as MetricInputs
from mlipbias.uq.metrics import format_table, metrics_table

# Entries of the table that need a non-constant uncertainty (NaN when it is constant).
UNCERTAINTY_KEYS = (
    "spearman",
    "roc_auc",
    "miscalibration_area",
    "miscalibration_area_recalibrated",
    "cnll",
    "cnll_a",
    "cnll_b",
)


@dataclass
class Evaluation:
    """Predictions per method on the test data (and the calibration data), and the metrics table.

    ``table`` maps ``"energy"``/``"forces"``/``"stress"`` + method (e.g. ``"energy ensemble"``) to its
    metrics (stress: RMSE and MAE only, over the structures with a reference stress);
    ``coverage`` the fraction of test errors inside the model's calibrated ``U`` (energy) and
    ``U_i`` (forces) per method.
    """

    predictions: dict[str | None, Predictions]
    table: dict[str, dict[str, float]]
    coverage: dict[str, float] = field(default_factory=dict)


def _inputs(data: AtomsData, p: Predictions, forces: bool) -> MetricInputs:
    """The metric inputs; a constant uncertainty (nothing to rank) is left out."""

    def informative(u):
        return u if u is not None and np.ptp(u) > 0 else None

    return MetricInputs(
        energy=p.energy,
        energy_ref=data.energy,
        n_atoms=data.n_atoms,
        forces=p.forces if forces else None,
        forces_ref=data.forces if forces else None,
        energy_uncertainty=informative(p.uncertainty),
        atom_uncertainty=informative(p.atom_uncertainty) if forces else None,
    )


def _predict_all(model: MLIPModel, data: AtomsData, methods, forces: bool, progress: bool):
    """Predictions per method; forces computed once (with the ensemble, which needs member forces)."""
    out: dict[str | None, Predictions] = {}
    order = sorted(methods, key=lambda m: m != "ensemble")
    base = None
    for method in order or [None]:
        need_forces = forces and (base is None or method == "ensemble")
        p = model.predict(
            data,
            method,
            forces=need_forces,
            atom_uncertainty=forces and method is not None,
            progress=progress,
        )
        if base is None and need_forces:
            base = p
        if not need_forces and base is not None:
            p.forces, p.virial, p.stress = base.forces, base.virial, base.stress
        out[method] = p
    return out


def evaluate_methods(
    model: MLIPModel,
    data: AtomsData,
    methods: Sequence[str] | None = None,
    *,
    calibration: AtomsData | None = None,
    forces: bool | None = None,
    progress: bool = False,
) -> Evaluation:
    """Metrics of every method (default: all of the model's) on ``data``.

    ``calibration`` (labelled, e.g. the validation split) fits the cNLL variance ``a U^2 + b``.
    ``forces`` defaults to whether the data has reference forces and neighbour pairs.
    """
    from mlipbias.uq.calibration import force_rmse_per_atom

    methods = list(model.methods if methods is None else methods)
    for method in methods:
        if method not in model.methods:
            raise ValueError(
                f"uncertainty {method!r} is not in this model; it has: {', '.join(model.methods) or 'none'}"
            )
    if data.energy is None:
        raise ValueError("the evaluation data has no reference energies")
    if forces is None:
        forces = data.has_forces and data.neighbours is not None
    predictions = _predict_all(model, data, methods, forces, progress)
    cal_predictions = None
    if calibration is not None:
        cal_forces = forces and calibration.has_forces and calibration.neighbours is not None
        cal_predictions = _predict_all(model, calibration, methods, cal_forces, progress)
    table: dict[str, dict[str, float]] = {}
    coverage: dict[str, float] = {}
    for method in methods or [None]:
        p = predictions[method]
        val = None if cal_predictions is None else _inputs(calibration, cal_predictions[method], forces)
        inputs = _inputs(data, p, forces)
        if val is not None:  # a constant uncertainty on either side has no metrics
            val.energy_uncertainty = val.energy_uncertainty if inputs.energy_uncertainty is not None else None
            val.atom_uncertainty = val.atom_uncertainty if inputs.atom_uncertainty is not None else None
        result = metrics_table(inputs, val)
        for quantity, u in (("energy", inputs.energy_uncertainty), ("forces", inputs.atom_uncertainty)):
            if method is not None and u is None and quantity in result:
                result[quantity].update({key: float("nan") for key in UNCERTAINTY_KEYS})
        suffix = f" {method}" if method else ""
        table[f"energy{suffix}"] = result["energy"]
        if "forces" in result:
            table[f"forces{suffix}"] = result["forces"]
        stress = stress_accuracy(p, data) if forces else None
        if stress is not None:
            table[f"stress{suffix}"] = stress
        if method is not None:
            coverage[f"energy {method}"] = float(np.mean(np.abs(p.energy - data.energy) <= p.uncertainty))
            if forces:
                errors = force_rmse_per_atom(p.forces, data.forces)
                coverage[f"forces {method}"] = float(np.mean(errors <= p.atom_uncertainty))
    return Evaluation(predictions, table, coverage)


def stress_accuracy(p: Predictions, data: AtomsData) -> dict[str, float] | None:
    """RMSE and MAE of the stress components (eV/A^3) over the structures with a reference stress."""
    if p.stress is None or not data.has_stress:
        return None
    residuals = (p.stress - data.stress)[data.stress_mask]
    return {"rmse": float(np.sqrt(np.mean(residuals**2))), "mae": float(np.mean(np.abs(residuals)))}


def format_evaluation(evaluation: Evaluation) -> str:
    """One metrics table per method (rows metrics, columns energy and forces), with the coverage."""
    blocks = []
    for method in evaluation.predictions:
        suffix = f" {method}" if method else ""
        columns = {
            q: evaluation.table[f"{q}{suffix}"]
            for q in ("energy", "forces", "stress")
            if f"{q}{suffix}" in evaluation.table
        }
        text = f"uncertainty: {method or 'none'}\n" + format_table(columns)
        cells = [
            f"{q} {evaluation.coverage[f'{q} {method}']:.3f}"
            for q in ("energy", "forces")
            if f"{q} {method}" in evaluation.coverage
        ]
        if cells:
            text += "\nfraction of errors within the calibrated U: " + ", ".join(cells)
        blocks.append(text)
    units = (
        "(rmse, mae: eV/atom for energy, eV/A per component for forces, eV/A^3 per component for stress; "
        "cnll needs calibration data)"
    )
    return "\n\n".join(blocks) + "\n" + units


def json_table(table: dict[str, dict[str, float]]) -> dict:
    """The table with NaN (metrics that need calibration data) as None, for JSON."""
    return {
        k: {m: (None if isinstance(v, float) and np.isnan(v) else float(v)) for m, v in col.items()}
        for k, col in table.items()
    }


def write_plots(evaluation: Evaluation, data: AtomsData, directory: str | Path) -> list[Path]:
    """PNG figures: parity (energy per atom, force components), U vs |error| hexbins, calibration curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlipbias.uq.calibration import force_rmse_per_atom
    from mlipbias.uq.metrics import calibration_curve

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    first = next(iter(evaluation.predictions.values()))
    has_forces = first.forces is not None and data.forces is not None

    fig, axes = plt.subplots(1, 2 if has_forces else 1, figsize=(10 if has_forces else 5, 4.5), squeeze=False)
    e_ref, e_pred = data.energy / data.n_atoms, first.energy / data.n_atoms
    _parity(axes[0, 0], e_ref, e_pred, "energy (eV/atom)")
    if has_forces:
        _parity(axes[0, 1], data.forces.ravel(), first.forces.ravel(), "force component (eV/A)")
    fig.tight_layout()
    written.append(_save(fig, directory / "parity.png"))

    methods = [m for m in evaluation.predictions if m is not None]
    if not methods:
        return written
    rows = 2 if has_forces else 1
    fig, axes = plt.subplots(rows, len(methods), figsize=(4.2 * len(methods), 3.8 * rows), squeeze=False)
    for col, method in enumerate(methods):
        p = evaluation.predictions[method]
        _hexbin(axes[0, col], p.uncertainty, np.abs(p.energy - data.energy), f"{method}: energy", "eV")
        if has_forces:
            _hexbin(
                axes[1, col],
                p.atom_uncertainty,
                force_rmse_per_atom(p.forces, data.forces),
                f"{method}: forces",
                "eV/A",
            )
    fig.tight_layout()
    written.append(_save(fig, directory / "uncertainty_vs_error.png"))

    fig, axes = plt.subplots(1, rows, figsize=(5 * rows, 4.5), squeeze=False)
    for method in methods:
        p = evaluation.predictions[method]
        expected, observed = calibration_curve(p.energy - data.energy, p.uncertainty)
        axes[0, 0].plot(expected, observed, label=method)
        if has_forces:
            expected, observed = calibration_curve(p.forces - data.forces, p.atom_uncertainty)
            axes[0, 1].plot(expected, observed, label=method)
    for ax, title in zip(axes[0], ["energy", "forces"], strict=False):
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(
            xlabel="expected fraction inside the Gaussian interval", ylabel="observed fraction", title=title
        )
        ax.legend()
    fig.tight_layout()
    written.append(_save(fig, directory / "calibration.png"))
    return written


def _parity(ax, reference, predicted, label: str) -> None:
    lo, hi = float(min(reference.min(), predicted.min())), float(max(reference.max(), predicted.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.scatter(reference, predicted, s=3, alpha=0.5)
    rmse = float(np.sqrt(np.mean((predicted - reference) ** 2)))
    ax.set(xlabel=f"reference {label}", ylabel=f"predicted {label}", title=f"RMSE {rmse:.3g}")


def _hexbin(ax, uncertainty, error, title: str, unit: str) -> None:
    ax.set(xlabel=f"uncertainty U ({unit})", ylabel=f"|error| ({unit})", title=title)
    positive = (uncertainty > 0) & (error > 0)
    if not positive.any():
        ax.text(0.5, 0.5, "no positive U and error", ha="center", transform=ax.transAxes)
        return
    u, e = uncertainty[positive], error[positive]
    image = ax.hexbin(u, e, xscale="log", yscale="log", mincnt=1, gridsize=30, bins="log", cmap="viridis")
    ax.figure.colorbar(image, ax=ax, label="count")
    lo, hi = min(u.min(), e.min()), max(u.max(), e.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
