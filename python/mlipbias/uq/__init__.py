"""Uncertainty quantification: metrics, calibration and batch selection.

Submodules (imported on demand, so ``import mlipbias.uq`` stays light):

- :mod:`mlipbias.uq.metrics`: Spearman, ROC-AUC (20th-percentile threshold), miscalibration
  area, calibrated NLL, energy and force RMSE/MAE, and the whole table (Tan et al. 2023, Sec. 2.3).
- :mod:`mlipbias.uq.calibration`: inductive conformal prediction (Zaverkin et al. 2024) and the
  ``sigma^2 = a U + b`` recalibration behind the cNLL (Tan et al. 2023, Eq. 13).
- :mod:`mlipbias.uq.selection`: batch selection max-unc, max-det and max-dist (Zaverkin et al. (2024),
  Eq. 24-27).

The uncertainty methods of the models (one module each, torch functions differentiable in the
descriptors, used by :class:`mlipbias.models.MLIPModel`; formulas in ``docs/model_file.md``):

- :mod:`mlipbias.uq.ensemble`: spread of the ensemble members (Tan et al. 2023, Eq. 4-5).
- :mod:`mlipbias.uq.mve`: mean-variance estimation heads and their Gaussian NLL.
- :mod:`mlipbias.uq.evidential`: deep evidential regression heads and their NIG loss.
- :mod:`mlipbias.uq.gmm`: Gaussian mixture on the last hidden layer (scikit-learn, BIC).
- :mod:`mlipbias.uq.gradient_features`: sketched gradient features, posterior and distance
  uncertainties (Zaverkin et al. 2024).

Uncertainties are standard deviations unless a function says otherwise: the energy
uncertainty in eV (of the total energy), per-atom uncertainties in eV/A (force component).
"""
