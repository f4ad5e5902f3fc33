"""The settings of a diagnosis: one frozen dataclass, validated on creation.

Kept free of numpy and ase so the command line can read its defaults without importing them.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

EXPERIMENTS = ("energy", "distortion", "newton", "gd")
ENERGY_REFERENCES = ("auto", "key", "relax", "lowest")
ENERGY_OFFSETS = ("none", "per-element")
NEWTON_VELOCITIES = ("rest", "dataset")


@dataclass(frozen=True)
class AdversarialSettings:
    """Every choice of a diagnosis, with the values of Cubuk & Schoenholz (2020) as defaults where
    the paper gives them.

    eps: total L2 norms (A) of the distortions of Table 1.
    direction_sign: +1 moves along +A (the squared error grows to first order), -1 along -A.
    seed: seeds the random distortion direction of each configuration
        (``SeedSequence([seed, dataset_index])``; one direction per configuration, used for every eps).
    newton_dt: time step (fs) of the Newton step of Fig. 2a.
    newton_velocities: "rest" (v = 0: x + F dt^2 / 2m, the paper's "moving the atoms for 1 fs with
        acceleration F/m") or "dataset" (x + v dt + F dt^2 / 2m with the velocities stored in the dataset).
    gd_steps: number of gradient-descent steps of Fig. 2b.
    gd_step_size: gamma (A^2/eV) of x <- x + gamma F_app; the paper does not give it. 0.01 is stable for
        force constants below 200 eV/A^2 (gamma k < 2) and moves an atom with a 1 eV/A force by 0.01 A.
    bin_size: samples per bin of mean abs(cos theta) against the energy above the minimum (paper: 50).
    energy_offset: "none" uses E_app as it is (Eq. 1; right for a model trained on the accurate data);
        "per-element" first fits per-element energies that align the two models' energy zeros, needed when
        they differ (an analytic potential against a quantum chemistry code).
    energy_reference: how the local-minimum energy E_min of each configuration is found (Fig. 1c).
        "key": ``atoms.info[e_min_key]`` (eV, total energy of the minimum the configuration was displaced
        from, computed with the accurate model). "relax": relax with the accurate model (FIRE, fixed cell)
        one configuration per value of ``atoms.info[minimum_key]``, or every configuration when that key is
        absent. "lowest": the lowest accurate energy among configurations of the same composition (a cheap
        approximation for displacement data). "auto": "key" when every configuration has it, else "relax".
    e_min_key, minimum_key: the dataset keys read above.
    relax_fmax, relax_steps: convergence (eV/A) and step limit of those relaxations.
    experiments: which of "energy" (cos vs the energy above the minimum), "distortion", "newton", "gd" to
        run; the per-configuration errors and cos(theta) are always computed.
    max_configs: use only the first N configurations of the dataset (None: all).
    distortion_configs, newton_configs, gd_configs: use only the first N of those for that experiment (the
        gradient descent costs gd_steps + 1 accurate evaluations per configuration).
    use_dataset_labels: take E_acc and F_acc of the undistorted configurations from the energies and forces
        stored in the dataset instead of calling the accurate model (checked against it on the first one).
    skip_failed: when a model evaluation fails (an SCF that does not converge on a distorted geometry, a NaN),
        leave that configuration out of that experiment and list it in ``results["failures"]`` instead of
        stopping the run.
    """

    eps: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5)
    direction_sign: int = 1
    seed: int = 0
    newton_dt: float = 1.0
    newton_velocities: str = "rest"
    gd_steps: int = 30
    gd_step_size: float = 0.01
    bin_size: int = 50
    energy_offset: str = "none"
    energy_reference: str = "auto"
    e_min_key: str = "e_min"
    minimum_key: str = "minimum_id"
    relax_fmax: float = 0.01
    relax_steps: int = 1000
    experiments: tuple[str, ...] = EXPERIMENTS
    max_configs: int | None = None
    distortion_configs: int | None = None
    newton_configs: int | None = None
    gd_configs: int | None = None
    use_dataset_labels: bool = False
    skip_failed: bool = False

    def __post_init__(self):
        eps = (self.eps,) if isinstance(self.eps, numbers.Real) else self.eps
        object.__setattr__(self, "eps", tuple(float(e) for e in eps) if _all_numbers(eps) else self.eps)
        if isinstance(self.experiments, str):
            object.__setattr__(self, "experiments", (self.experiments,))
        object.__setattr__(self, "experiments", tuple(self.experiments))
        checks = [
            (
                "eps",
                bool(self.eps) and _all_numbers(self.eps) and min(self.eps) >= 0,
                "finite numbers >= 0 A",
            ),
            ("direction_sign", self.direction_sign in (1, -1), "+1 or -1"),
            ("seed", _integer(self.seed, 0), "an integer >= 0"),
            ("newton_dt", _positive(self.newton_dt), "a positive time step in fs"),
            ("newton_velocities", self.newton_velocities in NEWTON_VELOCITIES, f"one of {NEWTON_VELOCITIES}"),
            ("gd_steps", _integer(self.gd_steps, 0), "an integer >= 0"),
            ("gd_step_size", _positive(self.gd_step_size), "a positive step in A^2/eV"),
            ("bin_size", _integer(self.bin_size, 1), "an integer >= 1"),
            ("energy_offset", self.energy_offset in ENERGY_OFFSETS, f"one of {ENERGY_OFFSETS}"),
            ("energy_reference", self.energy_reference in ENERGY_REFERENCES, f"one of {ENERGY_REFERENCES}"),
            ("e_min_key", isinstance(self.e_min_key, str) and self.e_min_key, "a key name"),
            ("minimum_key", isinstance(self.minimum_key, str) and self.minimum_key, "a key name"),
            ("relax_fmax", _positive(self.relax_fmax), "a positive force in eV/A"),
            ("relax_steps", _integer(self.relax_steps, 1), "an integer >= 1"),
            ("experiments", set(self.experiments) <= set(EXPERIMENTS), f"a subset of {EXPERIMENTS}"),
        ]
        for name in ("max_configs", "distortion_configs", "newton_configs", "gd_configs"):
            value = getattr(self, name)
            checks.append((name, value is None or _integer(value, 1), "None or an integer >= 1"))
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"setting {name} = {getattr(self, name)!r} is invalid: expected {expected}")


def _all_numbers(values) -> bool:
    try:
        return all(_number(v) for v in values)
    except TypeError:
        return False


def _number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _positive(x) -> bool:
    return _number(x) and x > 0


def _integer(x, minimum: int) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= minimum
