"""Adversarial directions of approximate energy models (Cubuk & Schoenholz 2020).

For an approximate model E_app and an accurate reference E_acc, the adversarial direction of a
configuration R is A(R) = grad_R (E_acc - E_app)^2 = 2 (E_acc - E_app) (F_app - F_acc). When it is aligned
with the model's own force F_app (large abs(cos theta)), dynamics and relaxations under the model walk into
its errors. This package measures that on a dataset: cos(theta) per configuration, errors after
distortions along A or at random (Table 1), after one Newton step (Fig. 2a) and along gradient descent
(Fig. 2b), and abs(cos theta) against the energy above the local minimum (Fig. 1c). Units: eV, A, fs, amu;
errors in meV/atom.

Typical use::

    from mlipbias.adversarial import run_diagnosis
    results = run_diagnosis(model_calc, reference_calc, "test.db", out_dir="adv", gd_configs=100)

See docs/adversarial.md for every choice and the output format. The names below are imported on first use,
so the command line can read ``AdversarialSettings`` without loading numpy, ase and matplotlib.
"""

from __future__ import annotations

import importlib

# public name -> submodule defining it
_EXPORTS = {
    "adversarial_direction": "core",
    "bin_by_energy": "core",
    "cos_theta": "core",
    "distort": "core",
    "fit_element_offsets": "core",
    "newton_step": "core",
    "random_baseline": "core",
    "random_direction": "core",
    "CalculationError": "evaluator",
    "Evaluator": "evaluator",
    "geometry_key": "evaluator",
    "AdversarialSettings": "settings",
    "EXPERIMENTS": "settings",
    "configuration_quantities": "experiments",
    "cos_vs_energy": "experiments",
    "distortion_table": "experiments",
    "energy_above_minimum": "experiments",
    "evaluate_dataset": "experiments",
    "gradient_descent_rollout": "experiments",
    "newton_step_experiment": "experiments",
    "read_configurations": "experiments",
    "run_diagnosis": "experiments",
    "markdown_report": "report",
    "write_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__():
    return __all__
