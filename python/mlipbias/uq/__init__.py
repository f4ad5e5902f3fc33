"""Uncertainty quantification: metrics, calibration and batch selection.

Submodules (imported on demand, so ``import mlipbias.uq`` stays light):

- :mod:`mlipbias.uq.metrics`: Spearman, ROC-AUC (20th-percentile threshold), miscalibration
  area, calibrated NLL, energy and force RMSE/MAE, and the whole table (seed 003, Sec. 2.3).
- :mod:`mlipbias.uq.calibration`: inductive conformal prediction (seed 002) and the
  ``sigma^2 = a U + b`` recalibration behind the cNLL (seed 003, Eq. 13).
- :mod:`mlipbias.uq.selection`: batch selection max-unc, max-det and max-dist (seed 002,
  Eq. 24-27).

Uncertainties are standard deviations unless a function says otherwise: the energy
uncertainty in eV (of the total energy), per-atom uncertainties in eV/A (force component).
"""
