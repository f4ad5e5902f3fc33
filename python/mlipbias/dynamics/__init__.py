"""Explorers for active learning: walkers that find where a model is uncertain.

:data:`EXPLORERS` maps a name to an explorer (see :mod:`mlipbias.dynamics.explorer` for the
interface: ``explore(model_path, start, settings, seed, training=None) -> Exploration``):

- ``md``: molecular dynamics, biased or not, NVT (Langevin) or NPT (Nose-Hoover chains + MTK), in
  ASE for any system (``engine: ase``) or in LAMMPS with ``pair_style mlip/bias`` for periodic
  cells (``engine: lammps``), stopping at a calibrated per-atom uncertainty threshold;
- ``perturb``: random perturbations of positions and cell (seed 002 Eqs. 32-34);
- ``adversarial``: Tan et al.'s (2023) adversarial sampling (Eqs. 15-16) from the walker's start
  against the model's training structures (:mod:`mlipbias.dynamics.adversarial`).

A new explorer is a function with the same signature added to :data:`EXPLORERS`; the checker of
its ``explore.options`` goes in :data:`OPTION_CHECKS`.
"""

from __future__ import annotations

from mlipbias.dynamics.explorer import Exploration, Explorer, ExplorerSettings, TrainingData


def explore_md(model_path: str, start, settings: ExplorerSettings, seed: int, training=None) -> Exploration:
    """MD in the engine of ``settings`` (ase or lammps)."""
    settings.check("settings")
    if settings.engine == "lammps":
        from mlipbias.dynamics.lammps_md import explore_lammps_md

        return explore_lammps_md(model_path, start, settings, seed)
    from mlipbias.dynamics.ase_md import explore_ase_md

    return explore_ase_md(model_path, start, settings, seed)


def explore_perturbations(
    model_path: str, start, settings: ExplorerSettings, seed: int, training=None
) -> Exploration:
    """Random perturbations (seed 002 Eqs. 32-34)."""
    settings.check("settings")
    from mlipbias.dynamics.perturb import explore_perturbations as run

    return run(model_path, start, settings, seed)


def explore_adversarial(
    model_path: str, start, settings: ExplorerSettings, seed: int, training: TrainingData | None = None
) -> Exploration:
    """Tan et al.'s adversarial sampling (Eqs. 15-16) against the training structures."""
    from mlipbias.dynamics.adversarial import explore_adversarial as run

    return run(model_path, start, settings, seed, training)


def _check_adversarial_options(options: dict, prefix: str) -> None:
    from mlipbias.dynamics.adversarial import adversarial_settings

    adversarial_settings(options, prefix=prefix)


EXPLORERS: dict[str, Explorer] = {
    "md": explore_md,
    "perturb": explore_perturbations,
    "adversarial": explore_adversarial,
}
# Checkers of explore.options per explorer (ValueError naming the key); explorers not listed take none.
OPTION_CHECKS = {"adversarial": _check_adversarial_options}


def check_options(name: str, options: dict, prefix: str = "explore.options") -> None:
    """ValueError naming ``prefix.key`` when ``options`` are not those of explorer ``name``."""
    if name in OPTION_CHECKS:
        OPTION_CHECKS[name](options, prefix)
    elif options:
        raise ValueError(f"config key {prefix}.{next(iter(options))}: explorer {name} takes no options")


def get_explorer(name: str) -> Explorer:
    """The explorer called ``name``, or a ValueError listing the known ones."""
    if name not in EXPLORERS:
        raise ValueError(f"unknown explorer {name!r}; known: {', '.join(EXPLORERS)}")
    return EXPLORERS[name]


__all__ = [
    "EXPLORERS",
    "Exploration",
    "Explorer",
    "ExplorerSettings",
    "TrainingData",
    "check_options",
    "explore_md",
    "get_explorer",
]
