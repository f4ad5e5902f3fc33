"""Behler-Parrinello and Gaussian-moment neural-network potentials with uncertainties.

- :class:`BPNN` (:mod:`mlipbias.models.network`): per-element MLPs for M ensemble members, with
  optional MVE or evidential heads; the math of ``docs/model_file.md``.
- :class:`GMNN` (:mod:`mlipbias.models.gmnn`): the Gaussian-moment network of seed 002, with the
  same interface (``model.kind: gmnn``).
- :class:`AtomsData` (:mod:`mlipbias.models.data`): descriptors computed once, labels, batches.
- :class:`MLIPModel`, :func:`save_model`, :func:`load_model` (:mod:`mlipbias.models.model`):
  energies, forces, stresses, uncertainties and their gradients; the ``.mlip`` file.
- :func:`train` and its settings (:mod:`mlipbias.models.training`).

Units: eV, Angstrom; stresses in eV/A^3 with ASE's sign.
"""

from mlipbias.models.data import AtomsData, Batch
from mlipbias.models.gmnn import GMNN
from mlipbias.models.model import METHODS, MLIPModel, Predictions, load_model, save_model
from mlipbias.models.network import BPNN
from mlipbias.models.training import (
    ModelSettings,
    TrainingResult,
    TrainingSettings,
    UncertaintySettings,
    calibrate,
    train,
)

__all__ = [
    "METHODS",
    "AtomsData",
    "BPNN",
    "Batch",
    "GMNN",
    "MLIPModel",
    "ModelSettings",
    "Predictions",
    "TrainingResult",
    "TrainingSettings",
    "UncertaintySettings",
    "calibrate",
    "load_model",
    "save_model",
    "train",
]
