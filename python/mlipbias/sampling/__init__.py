"""Sampling new training structures where a model is uncertain.

- :func:`adversarial_samples` (:mod:`mlipbias.sampling.adversarial`): seed 003's adversarial sampling,
  gradient ascent of the Boltzmann-weighted uncertainty p(x) U(x) (Eqs. 15-16) from training
  structures, for PaiNN models, BP-NNs and GNN ensembles through one small interface
  (:mod:`mlipbias.sampling.adversaries`).

See ``docs/sampling.md``.
"""

from mlipbias.sampling.adversarial import (
    KCAL_PER_MOL,
    SEED003_AMMONIA,
    SEED003_SILICA,
    AdversarialResult,
    AdversarialSample,
    AdversarialSamplingSettings,
    adversarial_samples,
)
from mlipbias.sampling.adversaries import EnergyUncertainty, as_adversary

__all__ = [
    "KCAL_PER_MOL",
    "SEED003_AMMONIA",
    "SEED003_SILICA",
    "AdversarialResult",
    "AdversarialSample",
    "AdversarialSamplingSettings",
    "EnergyUncertainty",
    "adversarial_samples",
    "as_adversary",
]
